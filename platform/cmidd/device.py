"""Which torch device a job runs on."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' needs a CUDA GPU, and none is available (got 'cuda'); use cpu or auto")
    return torch.device(name)
