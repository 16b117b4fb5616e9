"""The evaluation protocol (``cmidd.protocol``): a stable short id over exactly what makes scores comparable;
and the report's honesty rules (no std over one seed, architectures at chance marked)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from cmidd.config import EvalCfg, parse_job
from cmidd.errors import ConfigError
from cmidd.protocol import (CONSTANTS_DIGEST, TAG_ID, TAG_JSON, TAG_SUMMARY, VERSION, Protocol, constants_digest,
                            protocol_of_job)
from cmidd.report import at_chance, chance_warning, format_gain, results_table

from conftest import tiny_distill

BASE = {"archs": ["ConvNetD2", "VGG11BN"], "num_eval": 1, "epochs": 30, "epochs_by_arch": {"VGG11BN": 10},
        "dsa_strategy": "crop_scale_rotate"}


@pytest.fixture(scope="module")
def d8():
    from cmidd.data import load_dataset

    return load_dataset("digits")


def _p(data=None, **over) -> Protocol:
    from cmidd.data import load_dataset

    return Protocol.of(EvalCfg(**{**BASE, **over}), data or load_dataset("digits"))


def test_id_is_stable_short_hex_and_summary_reads(d8):
    p = _p(d8)
    assert len(p.id) == 10 and int(p.id, 16) >= 0
    assert p.id == _p(d8).id  # same fields, same id
    # pinned: a change of this value means every recorded protocol id changed (bump protocol.VERSION instead)
    assert p.id == "e365b24b41"  # the demo's quick protocol (8x8 digits, split 0)
    assert Protocol.from_json(p.canonical()) == p
    assert p.data == d8.digest and len(p.data) == 64
    assert p.summary == (f"digits data {d8.digest[:8]} 8px split 0 | ConvNetD2 30ep, VGG11BN 10ep | 1 seed | sgd "
                         "lr 0.01 decay 0.1 mom 0.9 wd 0.0005 batch 256 | dsa crop_rotate_scale/single")
    assert set(p.tags()) == {TAG_ID, TAG_SUMMARY, TAG_JSON} and p.tags()[TAG_ID] == p.id


@pytest.mark.parametrize("change", [
    {"archs": ["ConvNetD2"], "epochs_by_arch": {}}, {"epochs": 31}, {"epochs_by_arch": {"VGG11BN": 11}},
    {"num_eval": 2}, {"lr": 0.02}, {"lr_decay": 0.5}, {"momentum": 0.5}, {"weight_decay": 0.0}, {"batch": 128},
    {"dsa": False}, {"dsa_mode": "multi"}, {"dsa_strategy": "crop"},
])
def test_every_field_that_changes_a_score_changes_the_id(d8, change):
    assert _p(d8, **change).id != _p(d8).id


def test_fields_that_do_not_change_a_score_keep_the_id(d8):
    same = [_p(d8, batched="vmap"), _p(d8, every=5), _p(d8, ensemble=False), _p(d8, ece_bins=10),
            _p(d8, baselines=["random-real"])]
    assert {p.id for p in same} == {_p(d8).id}
    assert _p(d8, dsa=False, dsa_strategy="crop").id == _p(d8, dsa=False).id  # DSA off: its strategy is moot


def test_canonical_order_and_no_idle_fields(d8):
    """Issue 34: sets of names in any order, ``dsa: false`` vs strategy ``none``, one-group modes: one id each."""
    base = _p(d8)
    assert _p(d8, archs=["VGG11BN", "ConvNetD2"]).id == base.id  # eval.archs is a set
    assert _p(d8, dsa_strategy="rotate_crop_scale").id == base.id  # single mode: the groups are a multiset
    assert _p(d8, dsa_strategy="rotate_crop_scale", dsa_mode="multi").id != \
        _p(d8, dsa_strategy="crop_scale_rotate", dsa_mode="multi").id  # multi: the ops compose in order
    assert _p(d8, dsa_strategy="none").id == _p(d8, dsa=False).id == _p(d8, dsa_strategy="none", dsa_mode="multi").id
    assert _p(d8, dsa_strategy="crop", dsa_mode="multi").id == _p(d8, dsa_strategy="crop").id  # one group
    assert _p(d8, dsa_strategy="crop_crop_scale").id != _p(d8, dsa_strategy="crop_scale").id  # a multiset


def test_the_data_is_named_by_its_content(d8):
    from cmidd.data import load_dataset

    other = [load_dataset("mnist5k", im_size=8), load_dataset("digits", seed=1), load_dataset("digits", im_size=16)]
    assert len({_p(d).id for d in other} | {_p(d8).id}) == 4
    assert load_dataset("digits", seed=1).digest != d8.digest  # the split seed moves images between splits
    assert load_dataset("digits", im_size=16).digest == d8.digest  # raw content: the size is its own field
    assert d8.split_seed == 0 and _p(d8).split_seed == 0


def _imagefolder(root, shift: int):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (np.arange(48, dtype=np.int64).reshape(4, 4, 3) * (i + 1) + shift) % 256
                Image.fromarray(px.astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _mnist_files(root, seed: int):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28)
                                                          + rng.integers(0, 255, (n, 28, 28), dtype=np.uint8).tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n)
                                                          + (np.arange(n) % 10).astype(np.uint8).tobytes())
    return root


def test_folder_roots_are_hashed_and_their_split_seed_is_idle(tmp_path):
    """Two imagefolder (torchvision) roots of different images: two protocols; one copied elsewhere: the same
    one; the split seed, which such loaders ignore, changes nothing."""
    from cmidd.data import load_dataset

    a, b = _imagefolder(tmp_path / "a", 0), _imagefolder(tmp_path / "b", 7)
    shutil.copytree(a, tmp_path / "a2")
    fa, fb, fa2 = (load_dataset("imagefolder", root=r) for r in (a, b, tmp_path / "a2"))
    assert _p(fa).id != _p(fb).id and _p(fa).id == _p(fa2).id
    assert fa.split_seed is None and _p(load_dataset("imagefolder", root=a, seed=3)).id == _p(fa).id
    assert "split" not in _p(fa).summary
    m1, m2 = _mnist_files(tmp_path / "m1", 1), _mnist_files(tmp_path / "m2", 2)
    t1, t2 = load_dataset("mnist", root=m1), load_dataset("mnist", root=m2)
    assert _p(t1).id != _p(t2).id and _p(load_dataset("mnist", root=m1, seed=5)).id == _p(t1).id


def test_a_loader_without_a_digest_is_named_by_its_tensors(d8):
    import dataclasses

    bare = dataclasses.replace(d8, content_digest="")
    assert len(bare.digest) == 64 and bare.digest != d8.digest and bare.digest == bare.digest


def test_an_evaluation_constant_changed_without_a_version_bump_fails():
    """The constants no field names (DSA strengths, lr schedule, nets, loaders' constants) are pinned per
    protocol format VERSION: changing one means bump ``VERSION`` and record its digest in ``CONSTANTS_DIGEST``."""
    assert max(CONSTANTS_DIGEST) == VERSION
    assert len(set(CONSTANTS_DIGEST.values())) == len(CONSTANTS_DIGEST)  # each version its own constants
    assert constants_digest() == CONSTANTS_DIGEST[VERSION], (
        f"an evaluation constant changed (digest {constants_digest()}): bump cmidd.protocol.VERSION to "
        f"{VERSION + 1} and add {{{VERSION + 1}: '{constants_digest()}'}} to CONSTANTS_DIGEST")


def test_the_constants_digest_sees_a_changed_constant(monkeypatch):
    from cmidd import augment
    from cmidd.data import digits

    before = constants_digest()
    monkeypatch.setattr(augment, "FLIP_PROB", 0.4)
    assert constants_digest() != before
    monkeypatch.undo()
    monkeypatch.setattr(digits, "TEST_FRACTION", 0.25)
    assert constants_digest() != before


def test_a_protocol_of_an_older_format_is_refused(d8):
    old = json.loads(_p(d8).canonical())
    old["v"] = 1
    with pytest.raises(ConfigError, match="protocol format v2"):
        Protocol.from_json(json.dumps(old))


@pytest.mark.parametrize("over", [{}, {"dsa": False}, {"dsa_mode": "multi", "epochs_by_arch": {}}])
def test_a_protocol_gives_back_an_eval_block_that_scores_under_it(d8, over):
    p = _p(d8, **over)
    assert Protocol.of(p.eval_cfg(), d8) == p


def test_job_protocol_uses_the_loaded_image_size(tmp_path, d8):
    native = parse_job(tiny_distill(tmp_path))
    explicit = parse_job(tiny_distill(tmp_path, data__im_size=8))
    assert protocol_of_job(native, d8).id == protocol_of_job(explicit, d8).id
    assert protocol_of_job(parse_job({"kind": "pretrain-proxies"}), d8) is None  # scores nothing


def test_table_prints_no_std_over_one_seed_and_marks_chance():
    rows = [{"set": s, "arch": a, "acc_mean": acc, "acc_std": 0.0, "n": 1}
            for s, a, acc in [("dm", "ConvNetD2", 0.93), ("dm", "VGG11BN", 0.097),
                              ("dm+cmi", "ConvNetD2", 0.93), ("dm+cmi", "VGG11BN", 0.097)]]
    table = results_table(rows, ["ConvNetD2", "VGG11BN"], num_classes=10)
    assert "+-" not in table
    assert table.count("9.7 !") == 2 and "93.0 !" not in table
    assert at_chance(rows, 10) == {"VGG11BN": ["dm", "dm+cmi"]}
    line = chance_warning("VGG11BN", ["dm", "dm+cmi"], 10)
    assert line.startswith("warning: VGG11BN scored at chance") and "dm, dm+cmi" in line
    two = [{**r, "n": 2, "acc_std": 0.01} for r in rows]
    assert "93.0 +-  1.0" in results_table(two, num_classes=10)


def test_gain_line_says_what_the_gain_is():
    one = {"gain": 3.21, "gain_std": 1.04, "n": 3, "eval_seed": 0, "own_draw": True}
    line = format_gain({"over": "draws", "champion": one, **one})
    assert line == ("gain over random-real: +3.2 +- 1.0 pt (mean +- std over 3 random-real draws, each scored with "
                    "the set's eval seed 0, the set's own init draw among them)")
    lone = {"gain": -1.0, "gain_std": None, "n": 1, "eval_seed": 4, "own_draw": False}
    assert "-1.0 pt (1 random-real draw: no spread, each scored with the set's eval seed 4)" in \
        format_gain({"over": "draws", "champion": lone, **lone})
    many = format_gain({"over": "versions", "gain": 1.5, "gain_std": 0.5, "n": 2, "selected_from": 2, "champion": one})
    assert many.startswith("gain over random-real: +1.5 +- 0.5 pt (mean +- std over 2 of the 2 versions")
    assert "the champion's own +3.2 +- 1.0 pt" in many and "is the best of 2: biased upward" in many
    assert "no random-real draw" in format_gain(None)


def test_rescoring_refuses_data_that_are_not_the_protocols(tmp_path):
    """``cmidd evaluate --protocol`` loads the data from the source run's root: another folder's images are
    refused by the protocol's content digest instead of being scored under its id."""
    pytest.importorskip("mlflow")
    from cmidd.data import load_dataset
    from cmidd.tracking._rescore import protocol_data

    a, b = _imagefolder(tmp_path / "a", 0), _imagefolder(tmp_path / "b", 7)
    p = _p(load_dataset("imagefolder", root=a))
    assert protocol_data(p, str(a)).digest == p.data
    with pytest.raises(ConfigError, match=f"data.root: the data of protocol {p.id} have content digest"):
        protocol_data(p, str(b))
