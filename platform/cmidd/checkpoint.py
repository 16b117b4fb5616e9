"""The loop's checkpoint file: what it holds, its own checksum, and who may resume it.

``checkpoint.pt`` holds the stored images, the image optimizer's state, the step, the history (a dict), the
method's own state, the lambda the steps used and the config fields a resume must agree with (``resume_key``),
plus the sha256 of all of that (``checkpoint_digest``) in the same atomically written file. It is read with
``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError, IntegrityError
from .files import atomic_write

if TYPE_CHECKING:
    from .config import DistillJob

CHECKPOINT = "checkpoint.pt"


def resume_key(job: DistillJob) -> dict:
    """The config fields a checkpoint must agree with to be resumed."""
    d = job.model_dump(mode="json")
    return {k: d[k] for k in ("seed", "ipc", "data", "net", "method", "cmi", "proxies", "experts")}


def _feed(h, obj) -> None:
    """Feed ``obj`` (nested dicts, lists, tensors, numbers, text, None) into the hash ``h``, types and order kept."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().reshape(-1).contiguous()
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()};".encode())
    elif obj is None or isinstance(obj, (bool, int, str)):
        h.update(f"{type(obj).__name__[0]}{obj!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds no {type(obj).__name__}")


def checkpoint_digest(state: dict) -> str:
    """The sha256 of a checkpoint's content (every field but ``sha256``), independent of the file's layout."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A loop checkpoint's state (``weights_only``: nothing is unpickled), verified against its own checksum.

    Raises:
        IntegrityError: one line naming the file: it cannot be read (truncated, not a checkpoint), carries no
            checksum, or its content does not match the checksum it carries (a flipped byte).
    """
    fix = "nothing was overwritten; remove it to start over, or resume an MLflow run with --resume-run RUN_ID"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a garbled pickle, ...: torch's errors are many
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
        raise IntegrityError(f"{path}: is damaged and cannot be read as a checkpoint ({reason}); {fix}") from None
    if not isinstance(state, dict) or "sha256" not in state:
        raise IntegrityError(f"{path}: carries no checksum (written by an older cmidd or not a checkpoint); {fix}")
    got = checkpoint_digest(state)
    if got != state["sha256"]:
        raise IntegrityError(f"{path}: is damaged: its content's sha256 {got[:16]}... does not match the "
                             f"{str(state['sha256'])[:16]}... it was written with; {fix}")
    return state


def load_checkpoint(path: Path, job: DistillJob, device: torch.device | str = "cpu") -> dict:
    """A loop checkpoint's state, verified (``read_checkpoint``), after checking that ``job`` may resume it.

    Raises:
        IntegrityError: the file is damaged or carries no checksum.
        ConfigError: the checkpoint was written by a different config.
    """
    state = read_checkpoint(path, device)
    if state["key"] != resume_key(job):
        raise ConfigError(f"--resume: {path} was written by a different config; remove it or drop --resume")
    return state


def save_checkpoint(path: Path, syn, opt, step: int, history: dict, key: dict, method=None,
                     lam: float | None = None) -> None:
    """Atomic: write to a temp file, then rename, so a kill never leaves a torn checkpoint.

    The method's own state (MTT's learnable step size; {} for the others) travels with the images; the state's
    own sha256 (``checkpoint_digest``) travels in the same file, so the file and its checksum never disagree.
    """
    state = {
        "images": syn.detach().cpu(), "opt": opt.state_dict(), "step": step,
        "history": history, "key": key,
    }
    if method is not None:
        state["method"] = method.state_dict()
    if lam is not None:
        state["lam"] = float(lam)  # the weight the steps used: a resumed run goes on with the same one
    state["sha256"] = checkpoint_digest(state)  # over everything above, the lambda included
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())
