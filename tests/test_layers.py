"""The layers of platform/cmidd, checked by walking every module's AST (no import is executed).

core      config/, data/, nets/, methods/, augment, cmi, distill, evaluate, runner, ... : imports no layer
          above it;
platform  tracking/ (MLflow), ray/ (Ray Train and Ray Tune + Optuna; it also picks the plain or Ray Train loop
          for a job): imports no app module;
app       cli/ (one module per subcommand), bench/ (one module per suite), app (the composition root: loop
          and tracking chosen per job), demo: may import any cmidd module.
The two platform wings, tracking/ and ray/, may not import each other (only the app layer joins them).
Whatever the layer, app included: ``cmidd.ray.*`` is the only importer of ray and optuna, ``cmidd.tracking.*``
the only importer of mlflow, not even inside a function. Module-level imports (outside ``if TYPE_CHECKING:``)
form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "platform" / "cmidd"
PLATFORM = {"tracking", "ray"}  # packages (cmidd.tracking.*, cmidd.ray.*) and modules
APP = {"cli", "bench", "app", "demo"}
HOME = {"ray": "cmidd.ray", "optuna": "cmidd.ray", "mlflow": "cmidd.tracking"}  # library -> its only importer
RANK = {"core": 0, "platform": 1, "app": 2}


def layer_of(module: str) -> str:
    """``cmidd.nets.convnet`` -> 'core'; ``cmidd.ray.tune`` -> 'platform'; ``cmidd.bench.speed`` -> 'app'."""
    if module == "cmidd":  # the package's front door (cmidd.load_set) hands over to the app layer
        return "app"
    top = module.split(".")[1] if module.count(".") else ""
    if top in PLATFORM:
        return "platform"
    if top in APP:
        return "app"
    return "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, at module level) for every import in the file; TYPE_CHECKING blocks skipped."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for c in child.orelse:
                    visit(ast.Module(body=[c], type_ignores=[]), top)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append((target, top))
                if not child.module:  # `from . import x`: x is a module
                    found.extend((f"{target}.{a.name}", top) for a in child.names)
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def inside(module: str, package: str) -> bool:
    """``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def violations(modules: dict[str, Path]) -> list[str]:
    """Every import from a lower layer to a higher one, or of ray / optuna / mlflow outside its home package."""
    bad = []
    for mod, path in modules.items():
        mine = layer_of(mod)
        for target, _ in imports(path):
            home = HOME.get(target.split(".")[0])
            if home is not None and not inside(mod, home):
                bad.append(f"{mod} ({mine}) imports {target}")
            elif target.startswith("cmidd.") and RANK[layer_of(target)] > RANK[mine]:
                bad.append(f"{mod} ({mine}) imports {target} ({layer_of(target)})")
    return bad


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:  # `from .x import name` -> the module `x`
        target = target.rpartition(".")[0]
    return target or None


def cycles(modules: dict[str, Path], lazy: bool = False) -> list[list[str]]:
    """Cycles of imports between cmidd modules (a package's own __init__ is not an edge).

    ``lazy``: count imports inside functions too (a deferred import hides a cycle; it does not remove it).
    """
    graph = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, top in imports(path):
            dst = _resolve(target, modules) if (top or lazy) and target.startswith("cmidd") else None
            if dst and dst != mod and not mod.startswith(dst + "."):
                graph[mod].add(dst)
    found, state = [], {}

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    return found


def test_no_import_goes_up_a_layer():
    assert violations(all_modules()) == []


WINGS = ("cmidd.tracking", "cmidd.ray")  # the two platform wings: only the app layer joins them


def wing_crossings(modules: dict[str, Path], src: str, dst: str) -> list[str]:
    """Imports (module level or deferred) from wing ``src`` into wing ``dst``."""
    return [f"{mod} imports {target}" for mod, path in modules.items() if inside(mod, src)
            for target, _ in imports(path) if inside(target, dst)]


def test_the_tracking_wing_imports_nothing_of_the_ray_wing():
    """tracked_run takes the loop it is given (app passes cmidd.ray.pick_loop(job)); it failed on b670dcf with
    'cmidd.tracking._run imports cmidd.ray'."""
    assert wing_crossings(all_modules(), *WINGS) == []


def test_the_ray_wing_imports_nothing_of_the_tracking_wing():
    """The search's MLflow records live in cmidd.tracking._search, its trials run a SearchTrial that cmidd.app hands
    to cmidd.ray.tune; it failed on a85f114 with 'cmidd.ray._register imports cmidd.tracking' (and _search_report,
    tune)."""
    assert wing_crossings(all_modules(), *reversed(WINGS)) == []


def test_module_level_imports_have_no_cycle():
    assert cycles(all_modules()) == []


def test_no_cycle_hides_behind_a_deferred_import():
    """config -> plug-ins is the only direction: the plug-ins import config names under TYPE_CHECKING only."""
    assert cycles(all_modules(), lazy=True) == []


def test_the_walk_can_fail(tmp_path):
    """A deliberate bad tree: the core importing mlflow and the Tune module, the app layer and the wrong platform
    package importing ray / optuna / mlflow, and a two-module cycle."""
    pkg = tmp_path / "cmidd"
    (pkg / "ray").mkdir(parents=True)
    (pkg / "tracking").mkdir()
    (pkg / "bench").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ray" / "__init__.py").write_text("import ray\n")  # the Ray library, from its home package: fine
    (pkg / "tracking" / "__init__.py").write_text("import mlflow\nfrom mlflow import MlflowClient\n")  # fine
    (pkg / "cmi.py").write_text("def f():\n    import mlflow\n    from .ray.tune import run_search\n")
    (pkg / "ray" / "tune.py").write_text("import optuna\nfrom ..cli import main\n\ndef f():\n    import mlflow\n")
    (pkg / "tracking" / "_run.py").write_text("import ray.train\n")
    (pkg / "bench" / "__init__.py").write_text("")
    (pkg / "bench" / "search.py").write_text("import ray\nfrom ray import tune\n\ndef f():\n    import optuna\n")
    (pkg / "cli.py").write_text("from .ray import connect\nfrom .tracking import client\n"  # fine
                                "from mlflow.entities import Run\n")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "c.py").write_text("def f():\n    from . import d\n")
    (pkg / "d.py").write_text("from .c import f\n")
    (pkg / "b.py").write_text("from .a import x\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .cli import main\n")
    global PKG
    saved, PKG = PKG, pkg
    try:
        mods = all_modules()
        bad = violations(mods)
        cyc = cycles(mods)
        lazy = cycles(mods, lazy=True)
    finally:
        PKG = saved
    assert "cmidd.cmi (core) imports mlflow" in bad
    assert "cmidd.cmi (core) imports cmidd.ray.tune (platform)" in bad
    assert "cmidd.ray.tune (platform) imports cmidd.cli (app)" in bad
    assert "cmidd.ray.tune (platform) imports mlflow" in bad  # the Ray package is no mlflow importer
    assert "cmidd.tracking._run (platform) imports ray.train" in bad  # nor the tracking package a ray one
    assert {"cmidd.bench.search (app) imports ray", "cmidd.bench.search (app) imports optuna",
            "cmidd.cli (app) imports mlflow.entities"} <= set(bad)  # the app layer goes through ray/ and tracking/
    assert not any(v.startswith(("cmidd.ray ", "cmidd.tracking ")) for v in bad)  # each library at home: fine
    assert "cmidd.ray.tune (platform) imports optuna" not in bad
    assert [v for v in bad if v.startswith("cmidd.cli ")] == ["cmidd.cli (app) imports mlflow.entities"]
    assert not any(v.startswith("cmidd.b ") for v in bad)  # TYPE_CHECKING imports are annotations only
    assert cyc == [["cmidd.a", "cmidd.b", "cmidd.a"]]
    assert lazy == [["cmidd.a", "cmidd.b", "cmidd.a"], ["cmidd.c", "cmidd.d", "cmidd.c"]]


@pytest.mark.parametrize("mod,layer", [("cmidd.nets.convnet", "core"), ("cmidd.ray.tune", "platform"),
                                       ("cmidd.ray", "platform"), ("cmidd.tracking._run", "platform"),
                                       ("cmidd.runner", "core"), ("cmidd.bench.speed", "app"), ("cmidd.bench", "app"),
                                       ("cmidd.cli.run", "app"), ("cmidd.app", "app"), ("cmidd.demo", "app"),
                                       ("cmidd.benchmark", "core")])
def test_layer_names(mod, layer):
    assert layer_of(mod) == layer


def _two_worker_job(tmp_path):
    from cmidd.config import parse_job

    return parse_job({"kind": "distill", "name": "w2", "ipc": 1, "data": {"name": "digits"},
                      "net": {"name": "ConvNetD2"}, "method": {"name": "dm", "iterations": 1, "dsa": False},
                      "scaling": {"workers": 2}, "output": {"dir": str(tmp_path / "w2")}})


def test_launch_picks_the_ray_loop_only_for_several_workers(tmp_path):
    from cmidd import ray as launch
    from cmidd.distill import distill
    from cmidd.ray.train import distill_distributed

    job = _two_worker_job(tmp_path)
    assert launch.pick_loop(job) is distill_distributed
    assert launch.pick_loop(job.model_copy(update={"scaling": job.scaling.model_copy(update={"workers": 1})})) \
        is distill


def test_app_asks_for_ray_only_for_several_workers(tmp_path):
    from cmidd.app import needs_ray

    job = _two_worker_job(tmp_path)
    assert needs_ray(job)
    assert not needs_ray(job.model_copy(update={"scaling": job.scaling.model_copy(update={"workers": 1})}))


def test_core_runner_refuses_several_workers_without_the_ray_loop(tmp_path):
    from cmidd.errors import ConfigError
    from cmidd.runner import run_job

    with pytest.raises(ConfigError, match=r"scaling\.workers: > 1 needs the Ray Train loop"):
        run_job(_two_worker_job(tmp_path))
    assert not (tmp_path / "w2").exists()  # nothing half-written


def test_no_private_name_is_imported_across_modules():
    """``from .x import _name`` couples a module to another's internals: a shared helper gets a public name."""
    bad = []
    for mod, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                bad += [f"{mod}: from {'.' * node.level}{node.module or ''} import {a.name}"
                        for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert bad == []


@pytest.mark.parametrize("lib,home", sorted(HOME.items()))
def test_each_platform_library_is_imported_by_its_package_only(lib, home):
    """mlflow only inside ``cmidd.tracking``, ray and optuna only inside ``cmidd.ray``: every layer, the app
    layer (``cli``, ``bench``, ``app``, ``demo``) included, reaches them through those packages."""
    bad = [f"{mod} imports {target}" for mod, path in all_modules().items() if not inside(mod, home)
           for target, _ in imports(path) if target.split(".")[0] == lib]
    assert bad == []
