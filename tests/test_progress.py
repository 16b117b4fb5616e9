"""Progress lines: the time-left estimate, the rate limit, and the training callbacks that feed them."""

import logging

import torch

from cmidd.ensemble import train_seeds
from cmidd.evaluate import step_seconds
from cmidd.nets import create_net
from cmidd.progress import Progress, format_seconds
from cmidd.training import train_classifier


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 4.4, 59.6, 75.3, 3599, 3725)] == ["0s", "4s", "1m00s", "1m15s",
                                                                           "59m59s", "1h02m"]


def test_left_is_linear_in_units_and_none_before_any():
    clock = FakeClock()
    p = Progress("x", total=300, clock=clock)
    assert p.left(0) is None
    clock.t += 30.0  # 30 s for 100 of 300 units -> 60 s left
    assert abs(p.left(100) - 60.0) < 1e-9
    assert p.left(300) == 0.0
    assert "100/300" in p.line(100) and "elapsed 30s" in p.line(100) and "left ~1m00s" in p.line(100)


def test_rate_limit_and_last_line(caplog):
    clock = FakeClock()
    p = Progress("distill", total=10, every_s=5.0, clock=clock, logger=logging.getLogger("t"))
    logged = []
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(1, 11):
            clock.t += 1.0
            logged.append(p.update(i))
    # every 5 s: at t0+5 and t0+10 (which is also the last unit); nothing in between
    assert logged == [False] * 4 + [True] + [False] * 4 + [True]
    assert len(caplog.records) == 2 and "10/10" in caplog.records[-1].getMessage()


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 1, 8, 8, generator=g), torch.arange(12) % 3


def test_on_epoch_is_called_per_epoch_and_changes_nothing():
    x, y = _data()
    hp = dict(epochs=3, lr=0.1, momentum=0.9, weight_decay=5e-4, batch=5)
    nets = []
    seen = []
    for cb in (None, seen.append):
        torch.manual_seed(0)
        net = create_net("ConvNetD2", 1, 3, 8)
        train_classifier(net, x, y, gen=torch.Generator().manual_seed(1), on_epoch=cb, **hp)
        nets.append(net)
    assert seen == [1, 2, 3]
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


def test_train_seeds_reports_epochs_summed_over_seeds():
    x, y = _data()
    seen = []
    train_seeds(lambda: create_net("ConvNetD2", 1, 3, 8), [0, 1], x, y, epochs=2, lr=0.1, momentum=0.9,
                weight_decay=0.0, batch=12, batched=False, on_epoch=seen.append)
    assert seen == [1, 2, 3, 4]


def test_step_seconds_leaves_global_rng_alone():
    x, y = _data()
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    s = step_seconds(lambda: create_net("ConvNetD2", 1, 3, 8), x, y, 5, torch.device("cpu"))
    assert s > 0 and torch.equal(torch.random.get_rng_state(), before)
