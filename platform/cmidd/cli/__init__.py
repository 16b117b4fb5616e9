"""The ``cmidd`` command: the parser, one module per subcommand, and the only place that picks exit codes.

Exit codes: 0 ok; 2 bad input (one line, nothing written); 1 runtime failure; 130 interrupted.

Each subcommand module has ``add_parser(sub)``, which adds its parser with ``fn=command``; ``command(args)``
prints its output and returns nothing, or raises a ``CmiddError`` that ``main`` turns into one line and an
exit code. The flags several subcommands share are defined once, in ``_args``. Importing this package
imports neither torch nor mlflow: every command imports what it needs when it runs.

Example:
    >>> from cmidd.cli import main
    >>> main(["validate", "jobs/distill_dm_digits_ipc10.yaml"])
    0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from .. import __version__
from ..errors import CmiddError, ConfigError
from ..redact import RedactingFilter, redact
from . import bench, best, demo, ensemble, evaluate, ls, pull, run, runs, search, validate
from ._args import AlreadyReported

EXAMPLES = """examples:
  cmidd demo                                   # the main job: digits, DM vs DM+CMI vs random-real
  cmidd demo --quick --out runs/demo-quick     # the same at toy size (< 3 min)
  cmidd run jobs/distill_dm_digits_ipc10.yaml --set cmi.lam=100 --set ipc=1
  cmidd run jobs/distill_dm_digits_ipc10.yaml --resume
  cmidd run jobs/distill_dmcmi_digits_ipc10_2workers.yaml --address auto   # Ray Train on a running cluster
  cmidd validate jobs/*.yaml
  cmidd search search_spaces/digits_dmcmi.yaml [--resume] [--address auto]   # Ray Tune + Optuna over lambda, ...
  cmidd ls nets 'ConvNet*'
  cmidd best --dataset digits --ipc 10                   # the best set per evaluation protocol
  cmidd best --dataset digits --ipc 10 --protocol default --json
  cmidd pull --dataset digits --ipc 10 --alias champion --out runs/best
  cmidd evaluate --dataset digits --ipc 10 --protocol 73def0cc9f   # re-score every set under one protocol
  cmidd runs
  cmidd bench --quick --out runs/bench-quick   # speed + quality report (< 10 min)
  cmidd bench --suite speed --device cuda
  cmidd ensemble --from-search RUN_ID --top 3 --mode concat
"""

# the subcommands, in the order of ``cmidd --help``
COMMANDS = (run, validate, ls, search, demo, bench, best, pull, evaluate, runs, ensemble)

# (exception, exit code), most specific first: the first match decides
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (CmiddError, 1),
    (KeyboardInterrupt, 130),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``cmidd`` parser: ``-q`` and one subparser per module of ``COMMANDS``."""
    p = argparse.ArgumentParser(
        prog="cmidd", description="Dataset distillation with a class-aware CMI regularizer.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars with the time left, on stderr: --progress shows them even when stderr is not a "
                        "terminal (a log file), --no-progress never (default: on a terminal, and not with -q)")
    p.add_argument("-V", "--version", action="version", version=f"cmidd {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def exit_code(error: BaseException) -> int | None:
    """The exit code of an error ``main`` reports, or None for one it lets through."""
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), None)


def _report(error: BaseException, as_json: bool = False) -> None:
    if as_json and not isinstance(error, AlreadyReported):  # the same exit code; the message as a JSON object
        print(json.dumps({"error": "interrupted" if isinstance(error, KeyboardInterrupt) else redact(error),
                          "field": getattr(error, "field", None), "type": type(error).__name__}))
    elif isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
    elif not isinstance(error, AlreadyReported):
        print(f"error: {redact(error)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cmidd`` console script; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 ok; 2 bad input; 1 runtime failure; 130 interrupted (argparse itself exits 2 on a bad flag).
    """
    from ..progress import BarSafeHandler, show

    args = build_parser().parse_args(argv)
    show(args.progress if args.progress is not None else (False if args.quiet else None))
    logging.basicConfig(  # log lines through tqdm.write: they do not tear a progress bar
        level=logging.WARNING if args.quiet else logging.INFO, format="[cmidd] %(message)s",
        handlers=[BarSafeHandler(sys.stderr)],
    )
    for handler in logging.getLogger().handlers:  # cmidd's and urllib3's lines: no credentials (MLflow never
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):  # sees them: ``resolve_uri``)
            handler.addFilter(RedactingFilter())
    warnings.formatwarning = lambda msg, cat, *a, **k: f"[cmidd] warning: {redact(msg)}\n"
    try:
        args.fn(args)
    except (CmiddError, KeyboardInterrupt) as e:
        _report(e, getattr(args, "json", False))
        return exit_code(e)
    return 0
