"""A distill job's memory, estimated before anything is allocated, and refused above a limit.

The estimate counts what the job cannot do without (it errs low; it is not a measurement):

- the synthetic set: classes x ipc x channels x im_size**2 float32 values, three times (the images, their
  gradient, the optimizer's momentum), plus the training images it decodes into (``method.factor``);
- the DD net (``net.width``, ``net.depth``; 128 and 3 when not set): its 3x3 conv weights, three times again;
- the activations one class's forward and backward keep: (``method.batch_real`` + the set's images of one class)
  x width x im_size**2 values per block, twice (the activation and its gradient).

The limit is ``$CMIDD_MEMORY_LIMIT_GB`` (GiB), by default this machine's physical memory (the GPU's with
``device: cuda``). ``check_memory`` runs with the data-dependent rules (``runner.check_job_data``), before any
folder, store or run exists.
"""

from __future__ import annotations

import os

from .errors import ConfigError

LIMIT_ENV = "CMIDD_MEMORY_LIMIT_GB"
GIB = 1024**3
FLOAT = 4  # bytes of a float32


def estimate(job, num_classes: int, channels: int, im_size: int) -> dict[str, float]:
    """Bytes per part of a distill job: ``set`` (ipc x channels x size), ``net`` (weights, by width) and
    ``activations`` (one class's batch through the net)."""
    width = job.net.width or 128
    depth = job.net.depth or 3
    pixels = im_size * im_size
    stored = num_classes * job.ipc * channels * pixels
    decoded = stored * job.method.factor**2 if job.method.factor > 1 else 0
    weights = depth * width * width * 9 + channels * width * 9
    batch = job.method.batch_real + job.ipc * job.method.factor**2
    return {"set": FLOAT * (3 * stored + decoded), "net": FLOAT * 3 * weights,
            "activations": FLOAT * 2 * batch * width * pixels * depth}


def limit_bytes(device: str = "cpu") -> float:
    """The memory a job may take: ``$CMIDD_MEMORY_LIMIT_GB`` GiB, else this machine's (the GPU's on cuda).

    Raises:
        ConfigError: the variable is not a positive finite number.
    """
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise ConfigError(f"{LIMIT_ENV}: must be a positive number of GiB, but got {text!r}")
        return value * GIB
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


_FIELDS = {"set": "ipc", "net": "net.width", "activations": "method.batch_real"}  # the field that drives each part


def check_memory(job, num_classes: int, channels: int, im_size: int, device: str = "cpu") -> None:
    """Refuse a distill job whose estimated memory exceeds the limit, naming the field of its largest part.

    Raises:
        ConfigError: ``<field>: the job needs an estimated X GiB (set .., net .., activations ..), more than the
            limit of Y GiB ($CMIDD_MEMORY_LIMIT_GB)``.
    """
    parts = estimate(job, num_classes, channels, im_size)
    need, limit = sum(parts.values()), limit_bytes(device)
    if need <= limit:
        return
    big = max(parts, key=parts.get)
    detail = ", ".join(f"{k} {v / GIB:.3g}" for k, v in parts.items())
    raise ConfigError(
        f"{_FIELDS[big]}: the job needs an estimated {need / GIB:.3g} GiB ({detail}; ipc={job.ipc}, "
        f"{channels}x{im_size}x{im_size} images, {num_classes} classes, net.width={job.net.width or 128}), more than "
        f"the limit of {limit / GIB:.3g} GiB ({LIMIT_ENV}); lower {_FIELDS[big]} or raise the limit")
