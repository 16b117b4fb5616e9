"""Progress lines with elapsed time and an estimate of the time left, at a bounded rate.

The estimate is linear in *cost units*: after ``done`` of ``total`` units in ``elapsed`` seconds, the time left is
``elapsed * (total - done) / done``. Callers choose units whose cost is about constant (distillation iterations;
evaluation epochs weighted by the measured cost of one training step of each architecture), so the estimate is
right from the first update. Lines go to ``logging`` (the CLI prints them on stderr); the core never prints.

Example::

    p = Progress("distill dm", total=300)
    for it in range(300):
        ...
        p.update(it + 1, note=f"loss {loss:.4f}")
"""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


def format_seconds(s: float) -> str:
    """``75.3`` -> ``'1m15s'``, ``3725`` -> ``'1h02m'``, ``4.2`` -> ``'4s'`` (seconds, rounded)."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Logs ``<what>: <done>/<total> [<note>], elapsed <t>, left ~<t>`` at most every ``every_s`` seconds.

    Args:
        what: the task, e.g. ``"distill dm"`` or ``"eval VGG11BN"``.
        total: the units of the whole task (> 0).
        every_s: the least number of seconds between two lines, and before the first (the last update always logs).
        clock: seconds, monotonic (``time.perf_counter``; tests pass a fake one).
        logger: where lines go.
        fmt: formats ``done``/``total`` for the line (default: integers).
    """

    def __init__(self, what: str, total: float, every_s: float = 10.0, clock: Callable[[], float] = time.perf_counter,
                 logger: logging.Logger = log, fmt: Callable[[float, float], str] | None = None) -> None:
        assert total > 0, f"Progress total must be > 0, got {total}"
        self.what, self.total, self.every_s, self.clock, self.logger = what, total, every_s, clock, logger
        self.fmt = fmt or (lambda d, t: f"{int(d)}/{int(t)}")
        self.t0 = clock()
        self._last = self.t0  # the first line after every_s: the first units carry warm-up costs
        self.lines = 0

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self, done: float) -> float | None:
        """Estimated seconds left after ``done`` units (None before any unit is done)."""
        if done <= 0:
            return None
        return self.elapsed() * max(0.0, self.total - done) / done

    def line(self, done: float, note: str = "") -> str:
        left = self.left(done)
        eta = "?" if left is None else f"~{format_seconds(left)}"
        extra = f" {note}" if note else ""
        return f"{self.what}: {self.fmt(done, self.total)}{extra}, elapsed {format_seconds(self.elapsed())}, " \
               f"left {eta}"

    def update(self, done: float, note: str = "", force: bool = False) -> bool:
        """Log a line if ``every_s`` passed since the last one, or at the end, or if ``force``; True if logged."""
        now = self.clock()
        due = now - self._last >= self.every_s or done >= self.total or force
        if not due:
            return False
        self._last = now
        self.lines += 1
        self.logger.info("%s", self.line(done, note))
        return True
