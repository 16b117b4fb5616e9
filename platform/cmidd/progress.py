"""Progress bars with elapsed time and an estimate of the time left (``tqdm``), on stderr.

A bar is shown when stderr is a terminal, or when asked (``show(True)``: ``cmidd --progress``), and never with
``show(False)`` (``cmidd -q``, ``--no-progress``). It never writes to stdout, so ``--json`` output stays one
document. Log lines written through ``BarSafeHandler`` (the CLI's) do not tear a bar.

The estimate is linear in *cost units*: after ``done`` of ``total`` units in ``elapsed`` seconds, the time left is
``elapsed * (total - done) / done`` (``smoothing=0``: tqdm's average over the whole phase). Callers choose units
whose cost is about constant (distillation iterations; evaluation epochs weighted by the measured cost of one
training step of each architecture), so the estimate is right from the first update.

Example::

    with Progress("distill dm", total=300) as p:
        for it in range(300):
            ...
            p.update(it + 1, note=f"loss_dd {loss:.4f}")
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from tqdm import tqdm

_SHOW: bool | None = None  # None: on a terminal only


def show(on: bool | None) -> None:
    """Show bars always (True), never (False), or only when the stream is a terminal (None, the default)."""
    global _SHOW
    _SHOW = on


def shown(stream: IO[str]) -> bool:
    """Whether a bar on ``stream`` is shown (``show``'s setting, else: ``stream`` is a terminal)."""
    if _SHOW is not None:
        return _SHOW
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# percent rather than n/total: evaluation counts seconds of measured cost, not whole items
_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
_FORMAT_UNITS = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


class Progress:
    """A bar over ``total`` units: ``update(done)`` moves it to ``done`` (absolute), ``note`` after it.

    Args:
        what: the phase, e.g. ``"distill dm"`` or ``"eval 4 models"``.
        total: the units of the whole phase (> 0).
        initial: units already done (a resumed phase).
        counts: show ``done/total`` (whole items); False for cost units (seconds), shown as percent only.
        file: the stream (default: ``sys.stderr`` when the bar is made).
        every_s: the least seconds between two redraws when the stream is not a terminal (a log file).
    """

    def __init__(self, what: str, total: float, initial: float = 0, counts: bool = True,
                 file: IO[str] | None = None, every_s: float = 10.0) -> None:
        assert total > 0, f"Progress total must be > 0, got {total}"
        file = file if file is not None else sys.stderr
        tty = bool(getattr(file, "isatty", None) and file.isatty())
        self.bar = tqdm(total=total, initial=initial, desc=what, file=file, disable=not shown(file),
                        leave=None, smoothing=0, mininterval=0.5 if tty else every_s, dynamic_ncols=tty,
                        ncols=None if tty else 100, bar_format=_FORMAT if counts else _FORMAT_UNITS)

    @property
    def active(self) -> bool:
        """Whether the bar is drawn (else updates cost nothing)."""
        return not self.bar.disable

    def update(self, done: float, note: str = "") -> None:
        """Move the bar to ``done`` units, with ``note`` after the times."""
        if self.bar.disable:
            return
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BarSafeHandler(logging.StreamHandler):
    """A ``logging`` handler whose lines do not tear a progress bar (written through ``tqdm.write``, which clears
    the bars, writes the line and draws them again)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own contract: a failing handler reports, never raises
            self.handleError(record)
