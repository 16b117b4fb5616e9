"""Config validation: one clear line naming file, field, rule and value; overrides; every job file valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cmidd.config import JOB_KINDS, DistillJob, apply_overrides, load_job, parse_job
from cmidd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, raw) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_file_validates(path):
    job = load_job(path)
    assert job.kind in JOB_KINDS


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
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
