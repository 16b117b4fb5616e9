"""The METHODS registry (kept apart so method modules can import it without cycles)."""

from ..registry import Registry

METHODS: Registry = Registry("method")
