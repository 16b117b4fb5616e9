"""Bad input never runs: each malformed job, search space or ``--set`` is one line naming the file and the field,
exit code 2, nothing written (no output folder, no proxies, no ``mlflow.db``: so no MLflow run either).

Each case runs the real ``cmidd`` entry point (``cmidd.cli.main``) in a fresh working folder, tracked on a sqlite
store in that folder, and compares the folder before and after. ``CASES`` is the table the issues asked for (the
39 malformed inputs of issue 28 and more: 82; issue 33's 67: YAML shape, declared ranges, paths, a user's or a busy
output folder, memory, resources); ``test_count`` keeps it from shrinking.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

from cmidd.cli import main

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "kind": "distill", "name": "tiny", "seed": 0, "ipc": 2,
    "data": {"name": "digits"},
    "net": {"name": "ConvNetD1", "width": 16},
    "method": {"name": "dm", "iterations": 4, "batch_real": 16},
    "cmi": {"lam": 0},
    "proxies": {"set": "convnet-x1", "epochs": 1, "dir": "out/proxies"},
    "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2},
    "output": {"dir": "out/job", "checkpoint_every": 2},
}
BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)


def over(**changes) -> str:
    """BASE with ``a__b=value`` changes (``None`` deletes the key), as YAML text."""
    raw = copy.deepcopy(BASE)
    for k, v in changes.items():
        node = raw
        *parents, leaf = k.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if v is None:
            node.pop(leaf, None)
        else:
            node[leaf] = v
    return yaml.safe_dump(raw, sort_keys=False)


def search_text(**changes) -> str:
    """search_spaces/digits_dmcmi.yaml with ``a__b=value`` changes, storage in the working folder."""
    raw = yaml.safe_load((REPO / "search_spaces" / "digits_dmcmi.yaml").read_text())
    raw["storage"] = "out/search"
    raw["base"]["output"]["dir"] = "out/trial"
    for k, v in changes.items():
        node = raw
        *parents, leaf = k.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return yaml.safe_dump(raw, sort_keys=False)


def bomb(levels: int = 9, key: str = "x") -> str:
    """A YAML alias bomb: ``levels`` lines, each a list of ten aliases of the line before (10**levels values)."""
    lines = [f"{key}0: &{key}0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"{key}{i}: &{key}{i} [" + ", ".join([f"*{key}{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


INLINE_BOMB = "{" + ", ".join(["a0: &a0 [a, a, a, a, a, a, a, a, a, a]"] + [
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]) + "}"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


LONG = "d" * 5000
ROOT = "/"
# environment variables a case runs with (the memory limit)
CASE_ENV = {"memory-net-width": {"CMIDD_MEMORY_LIMIT_GB": "1"},
            "memory-ipc": {"CMIDD_MEMORY_LIMIT_GB": "0.0001"},
            "memory-limit-not-a-number": {"CMIDD_MEMORY_LIMIT_GB": "lots"},
            "search-memory-ipc": {"CMIDD_MEMORY_LIMIT_GB": "0.0001"}}

# (id, command, file content (text or bytes; None = no file), extra arguments, the field the line must name)
CASES = [
    # -- the file itself
    ("empty-file", "run", "", [], "<root>"),
    ("only-a-comment", "run", "# a job\n", [], "<root>"),
    ("top-level-list", "run", "- kind: distill\n- ipc: 2\n", [], "<root>"),
    ("top-level-scalar", "run", "distill\n", [], "<root>"),
    ("binary-bytes", "run", bytes(range(256)) * 4, [], "<file>"),
    ("binary-png-header", "run", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), [], "<file>"),
    ("utf16-text", "run", BASE_TEXT.encode("utf-16"), [], "<file>"),
    ("unclosed-bracket", "run", BASE_TEXT + "extra: [a, b\n", [], "invalid YAML"),
    ("tab-indent", "run", "kind: distill\nmethod:\n\titerations: 3\n", [], "invalid YAML"),
    ("python-tag", "run", "kind: !!python/object/apply:os.system ['true']\n", [], "invalid YAML"),
    ("duplicate-top-key", "run", BASE_TEXT + "ipc: 3\n", [], "ipc: each key must be given once"),
    ("duplicate-nested-key", "run", BASE_TEXT.replace("  iterations: 4\n", "  iterations: 4\n  iterations: 9\n"), [],
     "method.iterations: each key must be given once"),
    ("non-text-key", "run", BASE_TEXT + "1: 2\n", [], "field names must be text"),
    ("missing-file", "run", None, [], "<file>"),
    # -- types: no bool as int, no text as number, no float as int, no bool from an int
    ("ipc-true", "run", over(ipc=True), [], "ipc: Input should be a valid integer"),
    ("ipc-string", "run", over(ipc="10"), [], "ipc: Input should be a valid integer"),
    ("ipc-float", "run", over(ipc=2.5), [], "ipc: Input should be a valid integer"),
    ("ipc-integral-float", "run", over(ipc=2.0), [], "ipc: Input should be a valid integer"),
    ("ipc-zero", "run", over(ipc=0), [], "ipc: Input should be greater than or equal to 1"),
    ("iterations-true", "run", over(method__iterations=True), [], "method.iterations"),
    ("num-eval-false", "run", over(eval__num_eval=False), [], "eval.num_eval"),
    ("seed-negative", "run", over(seed=-1), [], "seed"),
    ("dsa-int-as-bool", "run", over(method__dsa=1), [], "method.dsa: Input should be a valid boolean"),
    ("dsa-text-as-bool", "run", over(method__dsa="on"), [], "method.dsa: Input should be a valid boolean"),
    ("lr-img-true", "run", over(method__lr_img=True), [], "method.lr_img: Input should be a valid number"),
    # -- non-finite floats
    ("lr-img-inf", "run", over(method__lr_img=math.inf), [], "method.lr_img: Input should be a finite number"),
    ("lr-img-nan", "run", over(method__lr_img=math.nan), [], "method.lr_img: Input should be a finite number"),
    ("lam-inf", "run", over(cmi__lam=math.inf), [], "cmi.lam"),
    ("temperature-nan", "run", over(cmi__temperature=math.nan), [], "cmi.temperature"),
    ("momentum-minus-inf", "run", over(method__momentum=-math.inf), [], "method.momentum"),
    ("cpus-per-worker-inf", "run", over(scaling={"cpus_per_worker": math.inf}), [], "scaling.cpus_per_worker"),
    ("eval-lr-nan", "run", over(eval__lr=math.nan), [], "eval.lr"),
    # -- fields and values
    ("unknown-top-field", "run", over(iterations=3), [], "iterations: unknown field"),
    ("unknown-nested-field", "run", over(method__iteratons=3), [], "method.iteratons: unknown field"),
    ("field-of-another-method", "run", over(method__outer_loop=3), [],
     "method.outer_loop: unknown field for method dm (a field of method gm, idc)"),
    ("unknown-method", "run", over(method__name="dx"), [], "method.name: unknown method 'dx'"),
    ("unknown-kind", "run", over(kind="train"), [], "kind: must be one of"),
    ("bad-name", "run", over(name="my job/1"), [], "name: String should match pattern"),
    ("unknown-dataset", "run", over(data__name="imagenet"), [], "data.name: unknown dataset"),
    ("unknown-net", "run", over(net__name="ConvNetX"), [], "net.name: unknown net"),
    ("empty-archs", "run", over(eval__archs=[]), [], "eval.archs"),
    ("archs-not-a-list", "run", over(eval__archs="ConvNetD1"), [], "eval.archs"),
    ("section-is-a-number", "run", over(method=5), [], "method"),
    ("unknown-device", "run", over(device="tpu"), [], "device"),
    ("subsample-over-ipc", "run", over(cmi__subsample=5), [], "cmi.subsample"),
    ("im-size-too-small", "run", over(data__im_size=3), [], "data.im_size"),
    ("unknown-dsa-op", "run", over(method__dsa_strategy="blur_crop"), [], "method.dsa_strategy"),
    ("epochs-by-arch-not-listed", "run", over(eval__epochs_by_arch={"VGG11": 2}), [], "eval.epochs_by_arch"),
    ("proxies-dir-and-registry", "run", over(proxies__from_registry="convnet-x1"), [], "proxies"),
    ("evaluate-nothing", "run", "kind: evaluate\nname: e\noutput: {dir: out/job}\n", [],
     "set synset or eval.baselines"),
    # -- paths
    ("output-dir-is-a-file", "run", over(output__dir="afile"), [], "output.dir: must be a folder, but it is a file"),
    ("output-dir-under-a-file", "run", over(output__dir="afile/job"), [], "output.dir: must be a folder"),
    ("proxies-dir-is-a-file", "run", over(proxies__dir="afile"), [], "proxies.dir: must be a folder"),
    # -- data-dependent rules (checked after loading the data, before anything is written)
    ("ipc-too-large", "run", over(ipc=500), [], "ipc: ipc <= smallest class size must hold"),
    ("cifar-root-missing", "run", over(data={"name": "cifar10", "root": "no/such/cifar"}), [], "data.root"),
    ("imagefolder-root-missing", "run", over(data={"name": "imagefolder", "root": "no/such/folder"}), [],
     "data.root"),
    # -- --set
    ("set-unclosed-list", "run", BASE_TEXT, ["--set", "eval.archs=[ConvNetD2"], "--set eval.archs"),
    ("set-unclosed-map", "run", BASE_TEXT, ["--set", "method={iterations: 2"], "--set method"),
    ("set-no-equals", "run", BASE_TEXT, ["--set", "ipc"], "--set: must be key.path=value"),
    ("set-no-key", "run", BASE_TEXT, ["--set", "=5"], "--set: must be key.path=value"),
    ("set-empty-part", "run", BASE_TEXT, ["--set", "method..lr_img=1"], "--set: must be key.path=value"),
    ("set-through-a-value", "run", BASE_TEXT, ["--set", "ipc.x=1"], "ipc.x: 'ipc' is not a section"),
    ("set-ipc-true", "run", BASE_TEXT, ["--set", "ipc=true"], "ipc: Input should be a valid integer"),
    ("set-lr-inf", "run", BASE_TEXT, ["--set", "method.lr_img=.inf"], "method.lr_img"),
    ("set-unknown-field", "run", BASE_TEXT, ["--set", "method.lr=1"], "method.lr: unknown field"),
    # -- search spaces (rejected before the storage folder or a parent run exists)
    ("search-grace-over-iterations", "search", search_text(), ["--set", "base.method.iterations=10"],
     "search.asha.grace_period: grace_period <= max_t must hold"),
    ("search-grace-over-max-t", "search", search_text(search__asha={"grace_period": 20, "max_t": 10}), [],
     "search.asha.grace_period"),
    ("search-max-t-over-iterations", "search", search_text(search__asha={"grace_period": 20, "max_t": 600}), [],
     "search.asha.max_t"),
    ("search-unknown-metric", "search", search_text(search__metric="accuracy"), [], "search.metric"),
    ("search-empty-file", "search", "", [], "<root>"),
    ("search-duplicate-key", "search", search_text() + "register_top_k: 1\n", [], "register_top_k: each key"),
    ("search-budget-inf", "search", search_text(search__time_budget_s=math.inf), [], "search.time_budget_s"),
    ("search-samples-true", "search", search_text(search__num_samples=True), [], "search.num_samples"),
    ("search-loguniform-from-0", "search", search_text(params={"cmi.lam": {"loguniform": [0.0, 10.0]}}), [],
     "params.cmi.lam"),
    ("search-float-range-on-int", "search", search_text(params={"ipc": {"uniform": [2.0, 10.0]}}), [],
     "params.ipc"),
    ("search-unknown-param", "search", search_text(params={"cmi.lambda": {"choice": [1, 2]}}), [],
     "params.cmi.lambda"),
    ("search-storage-is-a-file", "search", search_text(storage="afile"), [], "storage: must be a folder"),
    ("search-bad-set", "search", search_text(), ["--set", "base.eval.archs=[ConvNetD2"], "--set eval.archs"),
    ("search-ipc-choice-too-large", "search", search_text(params={"ipc": {"choice": [5, 500]}}), [],
     "ipc: ipc <= smallest class size must hold"),
    ("search-data-root-missing", "search", search_text(base__data={"name": "cifar10", "root": "no/such"},
                                                       base__net={"name": "ConvNet"}), [], "data.root"),
    ("search-storage-holds-a-search", "search", search_text(storage="busy"), [], "storage: "),
    # -- cmidd validate
    ("validate-empty", "validate", "", [], "<root>"),
    ("validate-search-bad-param", "validate", search_text(params={"ipc": {"choice": []}}), [], "params.ipc"),
    ("validate-binary", "validate", bytes(range(128, 256)), [], "<file>"),
    # -- issue 33: the YAML's shape (refused before PyYAML builds it)
    ("alias-bomb", "run", BASE_TEXT + bomb(), [], "<file>: must expand to at most"),
    ("alias-bomb-under-a-field", "run", bomb(key="b") + BASE_TEXT.replace("archs:\n  - ConvNetD1", "archs: *b8"), [],
     "an alias bomb"),
    ("alias-bomb-small-levels", "run", BASE_TEXT + bomb(levels=6), [], "<file>: must expand to at most"),
    ("nesting-10000-deep", "run", BASE_TEXT + f"x: {nested(10000)}\n", [], "<file>: must nest at most 8"),
    ("nesting-9-deep", "run", BASE_TEXT + f"x: {nested(9)}\n", [], "<file>: must nest at most 8"),
    ("nesting-deep-mappings", "run", BASE_TEXT + "x: " + "{a: " * 40 + "1" + "}" * 40 + "\n", [], "must nest at most"),
    ("file-over-1-mib", "run", BASE_TEXT + "#" * (1 << 20) + "\n", [], "<file>: must be at most 1024 KiB"),
    ("set-alias-bomb", "run", BASE_TEXT, ["--set", f"eval.archs={INLINE_BOMB}"], "--set eval.archs: must expand"),
    ("set-nesting-deep", "run", BASE_TEXT, ["--set", f"eval.archs={nested(50)}"], "--set eval.archs: must nest"),
    ("search-alias-bomb", "search", search_text() + bomb(), [], "<file>: must expand to at most"),
    ("search-nesting-deep", "search", search_text() + f"x: {nested(10000)}\n", [], "<file>: must nest at most"),
    ("validate-alias-bomb", "validate", bomb(), [], "<file>: must expand to at most"),
    ("validate-nesting-deep", "validate", f"x: {nested(10000)}\n", [], "<file>: must nest at most"),
    # -- issue 33: every number has a declared range
    ("seed-2-pow-70", "run", over(seed=2**70), [], "seed: Input should be less than or equal to 4294967295"),
    ("seed-2-pow-32", "run", over(seed=2**32), [], "seed: Input should be less than or equal to"),
    ("split-seed-2-pow-64", "run", over(data__split_seed=2**64), [], "data.split_seed"),
    ("lr-img-1e308", "run", over(method__lr_img=1e308), [], "method.lr_img: Input should be less than or equal"),
    ("lam-1e308", "run", over(cmi__lam=1e308), [], "cmi.lam: Input should be less than or equal"),
    ("alpha-1e9", "run", over(cmi__lam=0, cmi__alpha=1e9), [], "cmi.alpha"),
    ("temperature-1e308", "run", over(cmi__temperature=1e308), [], "cmi.temperature"),
    ("net-width-1e6", "run", over(net__width=10**6), [], "net.width: Input should be less than or equal to 4096"),
    ("net-width-5000", "run", over(net__width=5000), [], "net.width"),
    ("net-depth-100", "run", over(net__depth=100), [], "net.depth"),
    ("iterations-1e12", "run", over(method__iterations=10**12), [], "method.iterations"),
    ("batch-real-1e9", "run", over(method__batch_real=10**9), [], "method.batch_real"),
    ("lr-net-1e6", "run", over(method__name="gm", method__lr_net=1e6), [], "method.lr_net"),
    ("eval-epochs-1e12", "run", over(eval__epochs=10**12), [], "eval.epochs"),
    ("eval-epochs-by-arch-1e12", "run", over(eval__epochs_by_arch={"ConvNetD1": 10**12}), [],
     "eval.epochs_by_arch.ConvNetD1"),
    ("num-eval-1e6", "run", over(eval__num_eval=10**6), [], "eval.num_eval"),
    ("eval-weight-decay-1e3", "run", over(eval__weight_decay=1e3), [], "eval.weight_decay"),
    ("ece-bins-1e9", "run", over(eval__ece_bins=10**9), [], "eval.ece_bins"),
    ("ipc-1e9", "run", over(ipc=10**9), [], "ipc: Input should be less than or equal"),
    ("workers-1e6", "run", over(scaling={"workers": 10**6}), [], "scaling.workers"),
    ("cpus-per-worker-1e308", "run", over(scaling={"cpus_per_worker": 1e308}), [], "scaling.cpus_per_worker"),
    ("checkpoint-every-1e12", "run", over(output__checkpoint_every=10**12), [], "output.checkpoint_every"),
    ("proxies-epochs-1e9", "run", over(proxies__epochs=10**9), [], "proxies.epochs"),
    ("experts-num-1e9", "run", over(experts={"num": 10**9}), [], "experts.num"),
    ("set-seed-2-pow-70", "run", BASE_TEXT, ["--set", f"seed={2**70}"], "seed: Input should be less than or equal"),
    ("set-lr-img-1e308", "run", BASE_TEXT, ["--set", "method.lr_img=1.0e+308"], "method.lr_img"),
    ("search-seed-2-pow-70", "search", search_text(search__seed=2**70), [], "search.seed"),
    ("search-samples-1e9", "search", search_text(search__num_samples=10**9), [], "search.num_samples"),
    ("search-gpus-1000", "search", search_text(resources={"gpus": 1000.0}), [], "resources.gpus"),
    ("search-choice-width-1e6", "search", search_text(params={"net.width": {"choice": [16, 10**6]}}), [],
     "params.net.width"),
    # -- issue 33: paths expanded and checked at validation
    ("output-dir-empty", "run", over(output__dir=""), [], "output.dir: must be a path, but it is empty"),
    ("output-dir-root", "run", over(output__dir=ROOT), [], "output.dir: must not be a filesystem root"),
    ("output-dir-dotdot-to-root", "run", over(output__dir="/../.."), [], "output.dir: must not be a filesystem root"),
    ("output-dir-5000-chars", "run", over(output__dir=LONG), [], "output.dir: must be at most 1024 characters"),
    ("output-dir-part-300", "run", over(output__dir="out/" + "p" * 300), [], "output.dir: each part must be at most"),
    ("proxies-dir-empty", "run", over(proxies__dir=""), [], "proxies.dir: must be a path"),
    ("proxies-dir-root", "run", over(proxies__dir=ROOT), [], "proxies.dir: must not be a filesystem root"),
    ("experts-dir-5000-chars", "run", over(experts={"dir": LONG}), [], "experts.dir: must be at most"),
    ("data-root-empty", "run", over(data={"name": "cifar10", "root": ""}), [], "data.root: must be a path"),
    ("set-output-dir-root", "run", BASE_TEXT, ["--set", "output.dir=/"], "output.dir: must not be a filesystem root"),
    ("set-output-dir-5000", "run", BASE_TEXT, ["--set", f"output.dir={LONG}"], "output.dir: must be at most"),
    ("search-storage-root", "search", search_text(storage=ROOT), [], "storage: must not be a filesystem root"),
    ("search-storage-5000", "search", search_text(storage=LONG), [], "storage: must be at most"),
    ("evaluate-synset-empty", "run", "kind: evaluate\nname: e\nsynset: ''\noutput: {dir: out/job}\n", [],
     "synset: must be a path"),
    # -- issue 33: folders that are not cmidd's, or held by another job (checked before the store is touched)
    ("output-dir-holds-user-files", "run", over(output__dir="userdir"), [],
     "output.dir: userdir holds files cmidd did not write"),
    ("output-dir-holds-a-result-json", "run", over(output__dir="userresult"), [], "output.dir: userresult holds files"),
    ("output-dir-held-by-another-job", "run", over(output__dir="held"), [],
     "output.dir: held is in use by another cmidd job"),
    ("output-dir-held-no-track", "run", over(output__dir="held"), ["--no-track"], "output.dir: held is in use"),
    # -- issue 33: memory estimated before allocation ($CMIDD_MEMORY_LIMIT_GB), resources the cluster cannot meet
    ("memory-net-width", "run", over(net__width=4096), [], "net.width: the job needs an estimated"),
    ("memory-ipc", "run", over(ipc=100, net__width=1), [], "ipc: the job needs an estimated"),
    ("memory-limit-not-a-number", "run", BASE_TEXT, [], "CMIDD_MEMORY_LIMIT_GB: must be a positive number"),
    ("search-memory-ipc", "search", search_text(base__ipc=100, base__net={"name": "ConvNetD1", "width": 1},
                                                params={"cmi.lam": {"loguniform": [0.1, 10.0]}}), [],
     "ipc: the job needs an estimated"),
    ("search-gpu-without-a-gpu", "search", search_text(resources={"gpus": 1.0}), [],
     "resources.gpus: one trial needs 1 GPUs, but the Ray cluster has 0"),
    ("search-cpus-over-the-machine", "search", search_text(resources={"cpus": 1000.0}), [],
     "resources.cpus: one trial needs 1000 CPUs, but the Ray cluster has"),
]


def test_count():
    assert len(CASES) >= 82 + 67 and len({c[0] for c in CASES}) == len(CASES)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")}


@pytest.mark.parametrize("name, command, content, extra, field", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, capsys, request, name, command, content, extra, field):
    from filelock import FileLock

    from cmidd.outdir import LOCK, MARKER

    if name == "search-gpu-without-a-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in CASE_ENV.get(name, {}).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "userdir" / "synthetic").mkdir(parents=True)  # a user's folders, with their own files
    (tmp_path / "userdir" / "notes.txt").write_text("mine\n")
    (tmp_path / "userdir" / "synthetic" / "mine.pt").write_bytes(b"mine")
    (tmp_path / "userresult").mkdir()
    (tmp_path / "userresult" / "result.json").write_text("{}")
    (tmp_path / "held").mkdir()  # a cmidd folder another job holds
    (tmp_path / "held" / MARKER).write_text("cmidd\n")
    held = FileLock(tmp_path / "held" / LOCK, timeout=0)
    held.acquire()
    request.addfinalizer(held.release)
    (tmp_path / "afile").write_text("a file, not a folder\n")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "parent_run_id").write_text("0" * 32)
    job = tmp_path / ("space.yaml" if command == "search" else "job.yaml")
    if isinstance(content, bytes):
        job.write_bytes(content)
    elif content is not None:
        job.write_text(content)
    before = _tree(tmp_path)
    args = {"run": ["run", str(job), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            "search": ["search", str(job), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
            "validate": ["validate", str(job)]}[command]
    code = main(args + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert str(job) in err[0], err[0]  # names the file
    assert field in err[0], err[0]  # names the field (and the rule)
    assert _tree(tmp_path) == before  # nothing written: no output folder, no proxies, no mlflow.db (no run)


def test_cuda_without_a_gpu_names_the_file(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(over(device="cuda"))
    assert main(["run", str(job), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(job) in err[0] and "device" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
