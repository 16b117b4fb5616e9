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


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor on ``device`` (as ``dtype``) without a host sync on CUDA: pinned memory, non-blocking copy.

    A plain ``.to("cuda")`` from pageable memory waits for the stream (a host sync per call: the DSA parameters and
    the drawn indices were most of the ~40 syncs per iteration, docs/gpu.md); the pinned block is not reused before
    its copy is done (torch's caching host allocator records the copy). Elsewhere a plain ``.to``.
    """
    if dtype is not None:
        t = t.to(dtype)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
