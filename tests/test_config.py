"""Config validation: one clear line naming file, field, rule and value; overrides; every job file valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cmidd.config import JOB_KINDS, JOBS_DIR, DistillJob, apply_overrides, load_job, parse_job
from cmidd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, raw) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("path", sorted([*(ROOT / "jobs").glob("*.yaml"), *JOBS_DIR.glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_every_job_file_validates(path):
    job = load_job(path)
    assert job.kind in JOB_KINDS


@pytest.mark.parametrize("path", [*sorted((ROOT / "search_spaces").glob("*.yaml")), JOBS_DIR / "bench" / "search.yaml"],
                         ids=lambda p: p.name)
def test_every_search_space_file_validates(path):
    """Globbed (torchtune's test_configs): a new space file is checked without being listed here."""
    from cmidd.config import load_search

    cfg = load_search(path)
    assert cfg.params and cfg.base.kind == "distill"


def test_name_types_share_one_source_of_choices():
    """Every plug-in name field is checked against the same registry that ``cmidd ls`` lists."""
    from cmidd.catalog import catalog
    from cmidd.config import parse_job

    for field, kind in [("net.name", "nets"), ("method.name", "methods"), ("data.name", "datasets"),
                        ("proxies.set", "proxy-sets"), ("cmi.agg", "cmi-aggs")]:
        section, leaf = field.split(".")
        with pytest.raises(ConfigError, match=rf"{field}: unknown .*choices: {catalog()[kind].names()[0]}"):
            parse_job({section: {leaf: "nope"}}, "t")


@pytest.mark.parametrize(
    "raw, needles",
    [
        ({"data": {"name": "digitz"}}, ["data.name", "unknown dataset 'digitz'", "digits"]),
        ({"net": {"name": "ConvNetD9"}}, ["net.name", "unknown net", "choices"]),
        ({"method": {"name": "dmm"}}, ["method.name", "did you mean 'dm'"]),
        ({"cmi": {"lam": -1}}, ["cmi.lam", "greater than or equal to 0", "got -1"]),
        ({"cmi": {"agg": "median"}}, ["cmi.agg", "random"]),
        ({"methd": {"name": "dm"}}, ["methd", "unknown field"]),
        ({"ipc": 0}, ["ipc", "greater than or equal to 1"]),
        ({"eval": {"archs": ["ConvNet", "Foo"]}}, ["eval.archs", "unknown net 'Foo'"]),
        ({"cmi": {"space": "pixels"}}, ["cmi.space", "features", "logits"]),
        ({"ipc": 3, "cmi": {"subsample": 5}}, ["cmi.subsample <= ipc", "subsample=5"]),
        ({"kind": "train"}, ["kind", "distill", "pretrain-proxies"]),
    ],
)
def test_bad_input_names_field_rule_value(tmp_path, raw, needles):
    p = write(tmp_path, raw)
    with pytest.raises(ConfigError) as e:
        load_job(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p))
    for n in needles:
        assert n in msg, (n, msg)


def test_overrides_apply_and_parse_values(tmp_path):
    p = write(tmp_path, {"kind": "distill", "cmi": {"lam": 1}})
    job = load_job(p, ["cmi.lam=100", "ipc=1", "eval.archs=[LeNet, VGG11]", "data.root=~/x"])
    assert isinstance(job, DistillJob)
    assert job.cmi.lam == 100.0 and job.ipc == 1 and job.eval.archs == ["LeNet", "VGG11"]


def test_override_unknown_path_and_malformed(tmp_path):
    p = write(tmp_path, {})
    with pytest.raises(ConfigError, match="cmi.lamda: unknown field"):
        load_job(p, ["cmi.lamda=3"])
    with pytest.raises(ConfigError, match="must be key.path=value"):
        load_job(p, ["cmi.lam"])


def test_apply_overrides_does_not_mutate():
    raw = {"cmi": {"lam": 1}}
    out = apply_overrides(raw, ["cmi.lam=2"])
    assert raw["cmi"]["lam"] == 1 and out["cmi"]["lam"] == 2


def test_models_are_frozen_and_roundtrip():
    job = parse_job({"kind": "distill", "ipc": 3})
    with pytest.raises(ValidationError):
        job.ipc = 4
    again = parse_job(job.model_dump(mode="json"))
    assert again == job


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_job(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_job(tmp_path / "nope.yaml")


def _models(model, seen=None):
    """``model`` and every config model nested in its fields."""
    import typing

    from pydantic import BaseModel

    seen = seen if seen is not None else {}
    if model in seen:
        return seen
    seen[model] = None

    def walk(tp) -> None:  # through Optional, Annotated and unions (the method block: one model per method)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            _models(tp, seen)
        for arg in typing.get_args(tp):
            walk(arg)

    for info in model.model_fields.values():
        walk(info.annotation)
    return seen


def test_every_number_has_a_declared_range():
    """Issue 33: each int and float field of every job and search model has an upper bound (le/lt), so that a seed
    of 2**70 or an lr of 1e308 is refused at load; and each bound is enforced."""
    import typing

    import annotated_types

    from cmidd.config import JOB_MODELS, SearchCfg

    models = {}
    for m in (*JOB_MODELS.values(), SearchCfg):
        models.update(_models(m))
    unbounded, checked = [], 0
    for model in models:
        for name, info in model.model_fields.items():
            kinds = {a for a in (info.annotation, *typing.get_args(info.annotation)) if a in (int, float)}
            if not kinds:
                continue
            checked += 1
            if not any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in info.metadata):
                unbounded.append(f"{model.__name__}.{name}")
    assert checked >= 60 and not unbounded, (checked, unbounded)
    from cmidd.config import METHOD_CONFIGS

    assert {METHOD_CONFIGS.get(n) for n in METHOD_CONFIGS.names()} <= set(models)  # every method's model walked


def test_paths_are_expanded_and_checked(tmp_path, monkeypatch):
    """``~`` is the home folder (not a folder named ``~``); empty, root and over-long paths are refused."""
    monkeypatch.setenv("HOME", str(tmp_path))
    raw = {"kind": "distill", "output": {"dir": "~/runs/x"}, "proxies": {"dir": "~/p"}, "data": {"root": "~/d"}}
    job = parse_job(raw)
    assert job.output.dir == tmp_path / "runs" / "x" and job.proxies.dir == tmp_path / "p"
    assert job.data.root == tmp_path / "d"
    for bad, needle in (("", "empty"), ("/", "filesystem root"), ("/tmp/../..", "filesystem root"),
                        ("x" * 5000, "at most 1024 characters"), ("a/" + "b" * 256, "at most 255 bytes")):
        with pytest.raises(ConfigError, match=f"output.dir: .*{needle}"):
            parse_job({"kind": "distill", "output": {"dir": bad}}, "job.yaml")


def test_yaml_shape_limits_accept_the_shipped_files_and_refuse_bombs(tmp_path):
    """Every shipped job and space stays well inside the shape limits; an alias bomb and 10,000-deep nesting are
    refused in well under a second (they hung or raised RecursionError before)."""
    import time

    from cmidd.config._load import MAX_DEPTH, MAX_VALUES, _check_shape

    REPO = Path(__file__).resolve().parents[1]
    for path in [*sorted((REPO / "jobs").glob("*.yaml")), *sorted((REPO / "search_spaces").glob("*.yaml")),
                 *sorted(JOBS_DIR.rglob("*.yaml"))]:
        _check_shape(path.read_text(), str(path))  # raises if not
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"at most {MAX_VALUES:,} values"):
        _check_shape(bomb, "bomb.yaml")
    with pytest.raises(ConfigError, match=f"at most {MAX_DEPTH} mappings"):
        _check_shape("x: " + "[" * 10000 + "]" * 10000, "deep.yaml")
    assert time.perf_counter() - t0 < 5
    # the expanded count is exact: 4 aliases of a 3-value list = 1 + 4 * 4 nodes, below the limit; a bomb just over
    _check_shape("a: &a [1, 2, 3]\nb: [*a, *a, *a, *a]\n", "ok.yaml")
    over = "a: &a [" + ", ".join(["1"] * 999) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    with pytest.raises(ConfigError, match="alias bomb"):
        _check_shape(over, "over.yaml")
