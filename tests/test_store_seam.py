"""The store seam (cmidd.store): the CLI never imports the tracking wing, the core imports no platform library,
and a second store (an in-memory one, below: its one class is all a new store needs) is accepted by the app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import tiny_distill

PKG = Path(__file__).resolve().parents[1] / "platform" / "cmidd"
LIBRARIES = ("mlflow", "ray", "optuna")
NOT_CORE = ("cli", "bench", "ray", "tracking")  # the app layer's packages and the two platform wings


def imported(path: Path, source: str | None = None) -> set[str]:
    """Every module a file imports, anywhere in it (functions and ``TYPE_CHECKING`` blocks too), as absolute
    names (``from ..tracking import x`` in cmidd/cli/best.py -> ``cmidd.tracking``)."""
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    package = parts[:-1]  # a module's package; an __init__'s own package
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if not node.module)
    return out


def _under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def test_the_cli_never_imports_the_tracking_wing_nor_mlflow():
    files = sorted((PKG / "cli").glob("*.py"))
    assert len(files) >= 10
    bad = {f.name: sorted(m for m in imported(f) if _under(m, "cmidd.tracking") or _under(m, "mlflow"))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_walker_sees_lazy_and_type_checking_imports():
    """The checks can fail: a lazy or annotation-only import of the tracking wing (or of a library) is found."""
    where = PKG / "cli" / "best.py"
    lazy = "def command(args):\n    from ..tracking import best_set\n"
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import tracking\n"
    assert "cmidd.tracking" in imported(where, lazy)
    assert "cmidd.tracking" in imported(where, typed)
    assert "mlflow.tracking" in imported(where, "def f():\n    import mlflow.tracking\n")
    assert "cmidd.ray" in imported(PKG / "runner.py", "from .ray import run_job\n")  # ours, not the library
    assert "cmidd.app" in imported(where)  # what best.py imports now


def test_the_core_imports_neither_mlflow_ray_nor_optuna():
    core = [f for f in PKG.rglob("*.py")
            if f.relative_to(PKG).parts[0] not in NOT_CORE and f.relative_to(PKG) != Path("app.py")]
    assert PKG / "store.py" in core and PKG / "runner.py" in core and PKG / "config" / "job.py" in core
    bad = {str(f.relative_to(PKG)): sorted(m for m in imported(f) if any(_under(m, lib) for lib in LIBRARIES))
           for f in core}
    assert {k: v for k, v in bad.items() if v} == {}


def test_mlflow_store_is_a_store_with_workflows(tmp_path):
    from cmidd.app import open_store
    from cmidd.store import Store, Workflows

    store = open_store(f"sqlite:///{tmp_path / 'm.db'}")
    assert isinstance(store, Store) and isinstance(store, Workflows)
    assert not hasattr(store, "ensemble_from_search")  # an ensemble is the app's job, run in any store
    assert store.uri == f"sqlite:///{tmp_path / 'm.db'}"
    assert type(store).__module__ == "cmidd.tracking.store"


# ---- a second store: everything it needs is this one class ---------------------------------------------------

class MemoryStore:
    """A ``cmidd.store.Store`` in a dict: runs, versions (one per distilled set), champions by the metric."""

    uri = "memory://"

    def __init__(self) -> None:
        self.run_rows: list[dict] = []
        self.versions: list[dict] = []  # {"name", "version", "run_id", "synset", "metrics", "protocol"}
        self.default: dict[str, str] = {}

    def track(self, job, loop, *, resume_run_id=None, resume=False, hooks=None, data=None, experiment=None,
              resume_hint=None, parent_run_id=None, tags=None):
        from types import SimpleNamespace

        from cmidd.runner import run_job

        run_id = f"mem-{len(self.run_rows) + 1}"
        self.run_rows.append({"run_id": run_id, "experiment": experiment or job.name, "kind": job.kind,
                              "status": "RUNNING", "tags": dict(tags or {})})
        result = run_job(job, hooks, resume, data, loop=loop)
        self.run_rows[-1].update(status="FINISHED", metrics=dict(result.metrics))
        registered = []
        if result.synset is not None and job.kind in ("distill", "ensemble"):
            name = f"distilled-{job.data.name}-ipc{result.synset.ipc}"
            version = 1 + sum(v["name"] == name for v in self.versions)
            self.versions.append({"name": name, "version": version, "run_id": run_id, "synset": result.synset,
                                  "metrics": dict(result.metrics), "protocol": "p0"})
            registered.append({"name": name, "version": version, "alias": None})
        return SimpleNamespace(result=result, run_id=run_id, uri=self.uri, versions=registered)

    def log_report(self, experiment, run_name, params, metrics, folder, files):
        self.run_rows.append({"run_id": f"mem-{len(self.run_rows) + 1}", "experiment": experiment, "kind": "report",
                              "status": "FINISHED", "metrics": dict(metrics)})
        return self.run_rows[-1]["run_id"]

    def parent_run(self, experiment, run_name, kind, dataset, **tags):
        import contextlib

        @contextlib.contextmanager
        def run():
            self.run_rows.append({"run_id": f"mem-{len(self.run_rows) + 1}", "experiment": experiment, "kind": kind,
                                  "status": "RUNNING", "tags": dict(tags)})
            row = self.run_rows[-1]
            try:
                yield row["run_id"]
            except BaseException:
                row["status"] = "FAILED"
                raise
            row["status"] = "FINISHED"
        return run()

    def log_summary(self, run_id, files, metrics, tags=None):
        row = next(r for r in self.run_rows if r["run_id"] == run_id)
        row.setdefault("metrics", {}).update(metrics)
        row["tags"].update(tags or {})
        row["files"] = [Path(f).name for f in files if Path(f).is_file()]

    def tag_gains(self, answer):
        return []

    def runs(self, n=20, experiment=None):
        rows = [r for r in self.run_rows if experiment is None or r["experiment"] == experiment]
        return rows[::-1][:n]

    def run_hint(self, run_id):
        return f"memory store: run {run_id}"

    def _version(self, dataset, ipc, version=None, alias=None):
        from cmidd.errors import UnknownNameError

        name = f"distilled-{dataset}-ipc{ipc}"
        if version is None:
            return self.best(dataset, ipc)["_record"]
        found = [v for v in self.versions if v["name"] == name and v["version"] == version]
        if not found:
            raise UnknownNameError(f"{name}: no version {version}")
        return found[0]

    def load_set(self, dataset, ipc, version=None, alias=None):
        return self._version(dataset, ipc, version, alias)["synset"]

    def pull(self, dataset, ipc, out, version=None, alias=None, protocol=None):
        return self._version(dataset, ipc, version, alias)["synset"].save(out)

    def search_sets(self, parent_run_id, top, into):
        from cmidd.errors import UnknownNameError

        raise UnknownNameError(f"--from-search: this store keeps no searches ({parent_run_id})")

    def version_sets(self, dataset, ipc, versions, into):
        from types import SimpleNamespace

        folders = [self.pull(dataset, ipc, Path(into) / f"v{v}", version=v) for v in versions]
        return SimpleNamespace(folders=folders, sources=[f"distilled-{dataset}-ipc{ipc}/{v}" for v in versions],
                               tags={"ensemble.from_versions": ",".join(map(str, versions))})

    def best(self, dataset, ipc, metric="acc/cross_arch_mean", protocol=None):
        from cmidd.errors import UnknownNameError

        name = f"distilled-{dataset}-ipc{ipc}"
        mine = [v for v in self.versions if v["name"] == name and metric in v["metrics"]
                and protocol in (None, "default", v["protocol"])]
        if not mine:
            raise UnknownNameError(f"no registered model {name!r} with {metric}")
        top = max(mine, key=lambda v: (v["metrics"][metric], -v["version"]))
        return {"name": name, "version": top["version"], "run_id": top["run_id"], "metric": metric,
                "value": top["metrics"][metric], "metrics": top["metrics"], "protocol": {"id": top["protocol"]},
                "_record": top}

    def best_per_protocol(self, dataset, ipc, metric="acc/cross_arch_mean"):
        pids = dict.fromkeys(v["protocol"] for v in self.versions)
        return [self.best(dataset, ipc, metric, pid) for pid in pids]

    def make_default(self, dataset, ipc, protocol, metric="acc/cross_arch_mean"):
        self.default[f"distilled-{dataset}-ipc{ipc}"] = protocol
        return self.best(dataset, ipc, metric, protocol)["version"]


def test_the_app_runs_a_tracked_job_on_a_second_store(tmp_path, digits):
    import torch

    from cmidd.app import execute, load_set, rescore, search_answers
    from cmidd.config import parse_job
    from cmidd.errors import ConfigError
    from cmidd.store import Store, Workflows

    store = MemoryStore()
    assert isinstance(store, Store) and not isinstance(store, Workflows)
    job = parse_job(tiny_distill(tmp_path))
    done = execute(job, track=True, store=store, data=digits)
    assert done.run_id == "mem-1" and done.uri == "memory://"
    assert done.versions == [{"name": "distilled-digits-ipc2", "version": 1, "alias": None}]
    assert store.runs()[0]["status"] == "FINISHED"
    # the registered set comes back through the app's load_set, the champion of the store
    ds = load_set("digits/2", store=store)
    assert len(ds) == done.result.synset.images.shape[0] == 20
    assert torch.equal(ds.labels, done.result.synset.labels)
    answers = search_answers(store, [{"name": "distilled-digits-ipc2", "version": 1, "protocol": "p0"}])
    assert [(a["name"], a["version"], a["run_id"]) for a in answers] == [("distilled-digits-ipc2", 1, "mem-1")]
    # what only the MLflow store does today (it evaluates sets itself) is refused with one line, not half-run
    with pytest.raises(ConfigError, match=r"^evaluate: the store memory:// cannot run it"):
        rescore(store, "digits", 2, "p0")
    assert len(store.run_rows) == 1


def test_an_ensemble_is_a_job_the_app_runs_in_any_store(tmp_path, digits):
    """``cmidd ensemble`` on the second store: the store fetches the sources, ``execute`` runs the ensemble job."""
    import torch

    from cmidd.app import ensemble, execute
    from cmidd.config import EvalCfg, parse_job
    from cmidd.ensemble import combine_sets

    store = MemoryStore()
    sets = []
    for seed in (0, 1):
        raw = tiny_distill(tmp_path / f"s{seed}") | {"seed": seed}
        sets.append(execute(parse_job(raw), track=True, store=store, data=digits).result.synset)
    ev = EvalCfg(archs=["ConvNetD1"], num_eval=1, epochs=2)
    from cmidd.errors import ConfigError

    for bad in ([1], [1, 1], None):  # the app's rule, whatever the store: refused before anything runs
        with pytest.raises(ConfigError, match=r"^--versions: need two or more distinct versions, got "):
            ensemble(store, "concat", ev, seed=0, dataset="digits", ipc=2, versions=bad)
    assert len(store.run_rows) == 2
    r = ensemble(store, "concat", ev, seed=0, dataset="digits", ipc=2, versions=[1, 2])
    assert r.synset.ipc == 4 and r.run_id == "mem-3" and r.version == {"name": "distilled-digits-ipc4",
                                                                       "version": 1, "alias": None}
    assert r.sources == ["distilled-digits-ipc2/1", "distilled-digits-ipc2/2"]
    ref = combine_sets(sets, "concat", None, r.sources)  # the runner's combination, made here directly
    assert torch.equal(r.synset.images, ref.images) and torch.equal(r.synset.labels, ref.labels)
    run = store.run_rows[-1]
    assert run["kind"] == "ensemble" and run["experiment"] == "ensemble-digits" and run["status"] == "FINISHED"
    assert run["tags"] == {"ensemble.from_versions": "1,2"} and "acc/cross_arch_mean" in run["metrics"]


# functions that score or combine sets: the tracking wing records what jobs of the runner return, it calls none
SCORING = {"evaluate", "combine_sets", "random_real_set", "baseline_set"}
SCORING_MODULES = ("cmidd.evaluate", "cmidd.ensemble", "cmidd.training", "cmidd.scoring")


def scoring_calls(path: Path, source: str | None = None) -> list[str]:
    """The scoring functions a file calls (by name, ``f(...)`` or ``mod.f(...)``) and the scoring modules it
    imports."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    calls = [n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))]
    mods = imported(path, source)
    return sorted({c for c in calls if c in SCORING} | {m for m in mods if m in SCORING_MODULES})


def test_the_tracking_wing_never_evaluates_a_set():
    files = sorted((PKG / "tracking").glob("*.py"))
    assert len(files) >= 15
    bad = {f.name: scoring_calls(f) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}
    # the check can fail: an evaluation written back into the wing is found
    where = PKG / "tracking" / "_rescore.py"
    written_back = "from ..evaluate import evaluate\nres = evaluate(x, y, data, ev, 0, 'cpu')\n"
    assert scoring_calls(where, written_back) == ["cmidd.evaluate", "evaluate"]
    assert scoring_calls(where, "import cmidd.runner as r\ns = r.random_real_set(data, 2, 0)\n") == ["random_real_set"]


def test_only_the_app_imports_the_tracking_wing():
    """The demo, the bench and the CLI reach MLflow through a Store (``app.open_store``); app.py alone joins."""
    files = [f for f in PKG.rglob("*.py") if f.relative_to(PKG).parts[0] != "tracking"]
    assert PKG / "demo.py" in files and PKG / "bench" / "search.py" in files
    bad = sorted(str(f.relative_to(PKG)) for f in files if any(_under(m, "cmidd.tracking") for m in imported(f)))
    assert bad == ["app.py"]
