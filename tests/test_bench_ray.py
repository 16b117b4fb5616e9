"""The Ray benchmark's timing arithmetic and its random data (the Ray runs themselves: ``cmidd bench``)."""

from __future__ import annotations

import pytest
import torch

from cmidd.bench._common import random_dataset, segments


def test_segments_time_consecutive_steps_after_warmup():
    # steps 1..7 end at t = 0, 10, 11, 13, 16, 20, 25: two warm-up steps, then steps of 1, 2, 3, 4, 5 s
    clock = [0.0, 10.0, 11.0, 13.0, 16.0, 20.0, 25.0]
    res = segments(clock, warmup=2, repeats=2, iterations=2)  # segments: steps 3-4, 5-6 (step 7 unused)
    assert res["per_repeat_s"] == [pytest.approx(1.5), pytest.approx(3.5)]
    assert (res["min_s"], res["max_s"], res["median_s"]) == (pytest.approx(1.5), pytest.approx(3.5), pytest.approx(2.5))


def test_random_dataset_is_cifar_shaped_and_seeded():
    a, b = random_dataset(per_class=3, seed=1), random_dataset(per_class=3, seed=1)
    assert a.train_x.shape == (30, 3, 32, 32) and a.class_counts().tolist() == [3] * 10
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, random_dataset(per_class=3).train_x)
