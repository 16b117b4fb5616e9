"""``cmidd run JOB.yaml``: run one job of any kind, tracked in MLflow unless ``--no-track``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from ..names import CROSS_ARCH_MEAN
from ..redact import redact
from ._args import add_address, add_json, add_no_track, add_resume, add_set, add_tracking_uri, json_stdout

# the job kinds (cmidd.config.JOB_KINDS; a test keeps them equal), spelled out here so --help imports no torch
KINDS = ("distill", "pretrain-proxies", "evaluate", "experts", "ensemble", "baseline")


EXAMPLES = """examples:
  cmidd run jobs/distill_dm_digits_ipc10.yaml                      # tracked in sqlite:///mlflow.db (here)
  cmidd run jobs/distill_dm_digits_ipc10.yaml --set method.iterations=20 --set eval.num_eval=1 --no-track
  cmidd run jobs/distill_dm_digits_ipc10.yaml --resume              # continue from the job's checkpoint
  cmidd run jobs/distill_dmcmi_digits_ipc10_2workers.yaml --address auto   # Ray Train on a running cluster
  cmidd run jobs/distill_dm_digits_ipc10.yaml --json | jq .result.metrics
"""


def add_parser(sub) -> None:
    """Add ``run`` to ``cmidd``'s subparsers."""
    import argparse

    r = sub.add_parser("run", help=f"run a job YAML ({' | '.join(KINDS)})",
                       description=f"Run a job YAML of any kind: {', '.join(KINDS)}.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("job", type=Path, help="the job file (jobs/*.yaml; `cmidd validate` checks one)")
    add_set(r, "override a field of the job (method.iterations=20, cmi.lam=100); repeatable")
    add_resume(r, "continue from the job's checkpoint")
    add_tracking_uri(r)
    add_address(r, "Ray cluster for jobs with scaling.workers > 1 (default: a local Ray on this machine)")
    either = r.add_mutually_exclusive_group()
    either.add_argument("--resume-run", default=None, metavar="RUN_ID",
                        help="continue this MLflow run from its last checkpoint (downloaded from MLflow)")
    add_no_track(either, "do not log to MLflow")
    add_json(r)
    r.set_defaults(fn=command)


def command(args) -> None:
    """Load the job (with ``--set``), run it through ``cmidd.app.execute`` and print what it produced."""
    from ..app import execute
    from ..config import load_job
    from ..runner import check_job_data, load_job_data

    job = load_job(args.job, args.set)
    with naming_file(args.job), json_stdout(args.json):  # data-dependent rules (a missing root) name the file too
        data = load_job_data(job)
        check_job_data(job, data)
        done = execute(job, track=not args.no_track, uri=args.tracking_uri, address=args.address,
                       resume=args.resume, resume_run_id=args.resume_run, data=data, resume_hint=resume_command(args))
    if args.json:
        import json

        from ..curves import strict

        print(json.dumps(strict({"run_id": done.run_id, "tracking_uri": redact(done.uri) if done.uri else None,
                                 "versions": done.versions, "result": done.result.to_json()}), default=str))
        return
    if done.run_id is not None:
        from ..app import open_store

        print(f"mlflow run: {done.run_id} ({redact(done.uri)})")
        print(redact(open_store(done.uri).run_hint(done.run_id)))
        for v in done.versions:
            alias = f" [{v['alias']}]" if v["alias"] else ""
            same = " (already registered: the same set, by content sha256)" if v.get("existing") else ""
            print(f"registered: {v['name']} version {v['version']}{alias}{same}")
    print_result(done.result)


def resume_command(args) -> str:
    """The ``cmidd run`` line that resumes this job (same file, ``--set`` and store), quoted for a shell; a password
    in the store's URI is shown as ``***`` (``redact``: give it again, or through ``MLFLOW_TRACKING_PASSWORD``)."""
    import shlex

    parts = ["cmidd", "run", str(args.job), *[a for s in args.set for a in ("--set", s)], "--resume"]
    if args.tracking_uri:
        parts += ["--tracking-uri", args.tracking_uri]
    return redact(shlex.join(parts))


@contextlib.contextmanager
def naming_file(path: Path) -> Iterator[None]:
    """Bad input about a field of the job found after loading (its data, its device) names the job file too.

    Errors about a flag (``--tracking-uri``, ``--resume``) or already naming the file pass unchanged.
    """
    try:
        yield
    except ConfigError as e:
        text = str(e)
        if str(path) in text or text.startswith("--"):
            raise
        raise type(e)(f"{path}: {text}") from e.__cause__


def print_result(result) -> None:
    """The result table, the other scalar metrics and the paths of a ``JobResult``."""
    from ..report import results_table

    if result.rows:
        print(results_table(result.rows))
    for k, v in result.metrics.items():
        if not k.startswith(("acc", "baseline")):
            print(f"{k}: {v:.4g}")
    if result.synset is not None:
        print(f"synthetic set: {result.outdir / 'synthetic'} (sha256 {result.synset.sha256()[:16]})")
    for d in result.draws:  # a baseline job's drawn sets
        print(f"random-real draw {d.draw}: {result.outdir / 'draws' / str(d.draw)} (sha256 {d.synset.sha256()[:16]})")
    if len(result.draws) > 1:
        m, s = (result.metrics.get(f"draws/{k}/{CROSS_ARCH_MEAN}") for k in ("mean", "std"))
        print(f"random-real over {len(result.draws)} draws: {CROSS_ARCH_MEAN} {m:.4f} +- {s:.4f} (sample std)")
    print(f"results: {result.outdir / 'result.json'}")
