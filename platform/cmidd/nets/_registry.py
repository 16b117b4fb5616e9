"""The ``NETS`` registry, kept apart from ``__init__`` so family modules can import it without cycles."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry

# A factory takes ``channels``, ``num_classes``, ``im_size`` and keyword overrides and returns a module with
# ``embed``, ``classifier`` and ``feat_dim``.
NETS: Registry[Callable[..., nn.Module]] = Registry("net")
