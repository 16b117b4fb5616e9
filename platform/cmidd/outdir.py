"""An output folder is owned by one job at a time, and cmidd writes only into folders that are its own.

``owned(folder)`` is held for the whole of a job:

- the folder must be new (cmidd creates it), empty, or carry cmidd's marker file ``.cmidd-output`` (written
  when cmidd first claims a folder): a user's folder of other files is refused, so nothing of theirs is
  overwritten or deleted;
- a lock (``.cmidd-output.lock``, ``filelock``: an OS lock, released when its holder dies, even by SIGKILL) is
  held until the job ends: a second job on the same folder is refused at once instead of interleaving its files
  with the first's;
- a folder the claim created and the job never wrote into is removed again (bad input found late writes nothing).

Claims nest within one process (``tracked_run`` claims, then ``run_job`` inside it).

Example:
    >>> with owned(job.output.dir):
    ...     (job.output.dir / "result.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import ConfigError

MARKER = ".cmidd-output"
LOCK = ".cmidd-output.lock"
_OWN = {MARKER, LOCK}
_HELD: dict[Path, int] = {}  # folders this process holds -> nesting depth


def is_ours(folder: Path) -> bool:
    """Whether cmidd may write into ``folder``: it does not exist, is empty, or carries the marker."""
    if not folder.exists():
        return True
    return folder.is_dir() and ((folder / MARKER).is_file() or not any(folder.iterdir()))


def _claim(folder: Path, field: str) -> bool:
    """Create ``folder`` (or check it is ours) and mark it; True when this call created it."""
    if not is_ours(folder):
        raise ConfigError(f"{field}: {folder} holds files cmidd did not write (it carries no {MARKER}); cmidd "
                          f"writes only into a folder it created: choose a new or empty folder (one an earlier "
                          f"cmidd wrote: add the file {MARKER} to it)")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.is_file():
        marker.write_text("This folder is written by cmidd (a job's output); cmidd only writes into folders "
                          "that carry this file.\n")
    return created


@contextlib.contextmanager
def owned(folder: str | Path, field: str = "output.dir") -> Iterator[Path]:
    """Hold ``folder`` for one job: claimed (created or checked, marked) and locked until the block ends.

    Raises:
        ConfigError: the folder holds files cmidd did not write, or another job holds it (naming ``field``).
    """
    folder = Path(folder)
    key = folder.absolute()
    if key in _HELD:  # nested: this process already holds it
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    created = _claim(folder, field)
    lock = FileLock(folder / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{field}: {folder} is in use by another cmidd job (it holds {folder / LOCK}); wait for "
                          f"that job to end or choose another {field}") from None
    _HELD[key] = 1
    try:
        yield folder
    finally:
        del _HELD[key]
        untouched = created and {p.name for p in folder.iterdir()} <= _OWN
        if untouched:
            (folder / MARKER).unlink(missing_ok=True)
        lock.release()
        if untouched:
            (folder / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
