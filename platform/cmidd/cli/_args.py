"""The flags that several subcommands share, each defined once, and the argument types of ``cmidd``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from ..errors import ConfigError
from ..names import CROSS_ARCH_MEAN

URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir)"
DEFAULT_METRIC = CROSS_ARCH_MEAN  # = tracking.DEFAULT_METRIC (cmidd.names is light: the parser needs no mlflow)


class AlreadyReported(ConfigError):
    """Bad input whose lines were already printed (``cmidd validate``): exit 2 without a further line."""


def add_set(p: argparse.ArgumentParser, help: str = "override a field", metavar: str = "KEY=VALUE") -> None:
    """``--set KEY=VALUE``, repeatable; the values land in ``args.set`` (a list, empty by default)."""
    p.add_argument("--set", action="append", default=[], metavar=metavar, help=help)


def add_tracking_uri(p: argparse.ArgumentParser, help: str = URI_HELP) -> None:
    """``--tracking-uri URI`` into ``args.tracking_uri`` (None: the command's default store)."""
    p.add_argument("--tracking-uri", default=None, help=help)


def add_address(p: argparse.ArgumentParser, help: str) -> None:
    """``--address auto|HOST:PORT`` into ``args.address`` (None: ``$RAY_ADDRESS``, else a local Ray)."""
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT", help=help)


def add_resume(p: argparse.ArgumentParser, help: str) -> None:
    """``--resume`` into ``args.resume``."""
    p.add_argument("--resume", action="store_true", help=help)


def add_no_track(p: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, help: str) -> None:
    """``--no-track`` into ``args.no_track``."""
    p.add_argument("--no-track", action="store_true", help=help)


def add_out(p: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    """``--out DIR`` into ``args.out`` (a Path; required when ``default`` is None)."""
    from pathlib import Path

    if default is None:
        p.add_argument("--out", required=True, type=Path, help=help)
    else:
        p.add_argument("--out", type=Path, default=Path(default), help=help)


def add_dataset_ipc(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--dataset NAME`` and ``--ipc K`` (the registered model ``distilled-<dataset>-ipc<k>``)."""
    p.add_argument("--dataset", required=required, default=None,
                   help="data set of the registered sets (digits; the model distilled-<dataset>-ipc<k>)")
    p.add_argument("--ipc", required=required, type=positive_int, default=None,
                   help="images per class of the registered sets (>= 1)")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def versions(text: str) -> list[int]:
    """An argparse type: comma-separated model version numbers (``1,2,3``), each >= 1."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated version numbers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated version numbers >= 1, got {text!r}")
    return out


def add_json(p) -> None:
    """``--json``: one JSON document on stdout (numbers as numbers); an error is ``{"error", "field"}`` with the same
    exit code."""
    p.add_argument("--json", action="store_true", help="print JSON (errors too: {\"error\": ..., \"field\": ...})")


@contextlib.contextmanager
def json_stdout(as_json: bool) -> Iterator[None]:
    """With ``--json``, whatever the work prints goes to stderr, so that stdout holds only the one JSON document the
    command prints after it."""
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        yield
