"""Every distill run draws curves.png and writes strict JSON (no bare NaN)."""

from __future__ import annotations

import json
import math

from cmidd.config import parse_job
from cmidd.curves import accuracy_points, strict
from cmidd.runner import run_job

from conftest import tiny_distill


def test_strict_replaces_every_non_finite_float():
    v = {"a": [1.0, math.nan, {"b": math.inf}], "c": (-math.inf, 2), "d": "nan"}
    assert strict(v) == {"a": [1.0, None, {"b": None}], "c": [None, 2], "d": "nan"}


def test_accuracy_points_take_every_evaluation_and_the_final_one():
    evals = [{"step": 2, "acc/A": 0.5, "acc_std/A": 0.1, "acc/cross_arch_mean": 0.5}]
    pts = accuracy_points(evals, 4, {"acc/A": 0.75, "acc_std/A": math.nan, "acc/B": 0.25})
    assert pts == {"A": [(2, 50.0, 10.0), (4, 75.0, 0.0)], "B": [(4, 25.0, 0.0)]}


def test_a_distill_run_writes_curves_and_strict_json(digits, tmp_path):
    job = parse_job(tiny_distill(tmp_path, eval__every=2))  # lambda 0: every cmi value is NaN in the history
    result = run_job(job, data=digits)
    png = result.outdir / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = (result.outdir / "history.json").read_text()
    assert "NaN" not in text
    history = json.loads(text)
    assert history["cmi"] == [None] * 4 and len(history["evals"]) == 1
    json.loads((result.outdir / "result.json").read_text())  # strict too


def test_comparison_figure(tmp_path):
    from cmidd.curves import draw_comparison

    rows = [{"set": s, "arch": a, "acc_mean": m, "acc_std": 0.01} for s, m in (("random-real", 0.9), ("dm", 0.95))
            for a in ("ConvNetD2", "VGG11BN")] + [{"set": "dm", "arch": "ensemble", "acc_mean": 0.96, "acc_std": 0}]
    png = draw_comparison(rows, tmp_path / "c.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
