"""Progress bars (tqdm): when they show, what they show (ETA, notes), that they stay off stdout, and the training
callbacks that feed them."""

import io
import json
import logging

import pytest
import torch
import yaml

from cmidd import progress
from cmidd.ensemble import train_seeds
from cmidd.evaluate import step_seconds
from cmidd.nets import create_net
from cmidd.progress import BarSafeHandler, Progress, shown
from cmidd.training import train_classifier


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def setting():
    yield progress.show
    progress.show(None)


def test_shown_on_a_terminal_unless_told(setting):
    setting(None)
    assert shown(Tty()) and not shown(io.StringIO())
    setting(True)
    assert shown(io.StringIO())
    setting(False)
    assert not shown(Tty())


def test_a_bar_shows_counts_percent_note_and_time_left(setting):
    setting(None)
    out = Tty()
    with Progress("distill dm", total=10, file=out) as p:
        for i in range(1, 11):
            p.update(i, note=f"loss_dd {i / 10:.1f}")
    text = out.getvalue()
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("distill dm: 100%|") and "10/10" in last and "loss_dd 1.0" in last
    assert "[00:00<00:00, loss_dd 1.0]" in last  # elapsed < time left, then the note


def test_cost_units_show_percent_and_resume_starts_at_initial(setting):
    setting(True)
    out = io.StringIO()  # not a terminal, but asked for
    p = Progress("eval 4 models", total=8.0, counts=False, file=out)
    p.update(2.0, note="model 1/4")
    p.close()
    assert "eval 4 models:  25%|" in out.getvalue() and "/8" not in out.getvalue()
    out = io.StringIO()
    Progress("distill dm", total=20, initial=5, file=out).close()
    assert "5/20" in out.getvalue()


def test_off_writes_nothing(setting):
    setting(None)
    out = io.StringIO()
    p = Progress("x", total=3, file=out)
    p.update(3)
    p.close()
    assert not p.active and out.getvalue() == ""


def test_log_lines_pass_through_the_bar_safe_handler():
    out = io.StringIO()
    handler = BarSafeHandler(out)
    handler.setFormatter(logging.Formatter("[cmidd] %(message)s"))
    logger = logging.getLogger("test_progress.handler")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("proxy %s: test acc %.2f", "ConvNetD1", 0.5)
    assert out.getvalue() == "[cmidd] proxy ConvNetD1: test acc 0.50\n"


def test_cli_progress_goes_to_stderr_and_json_stays_one_document(capsys, tmp_path, setting):
    """``--progress`` with ``--json``: the bars of proxy pre-training, distillation and evaluation on stderr, one JSON
    document on stdout."""
    from conftest import tiny_distill

    from cmidd.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_distill(tmp_path, method__iterations=3, cmi__lam=1.0)))
    assert main(["-q", "--progress", "run", str(job), "--no-track", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["result"]["kind"] == "distill"
    err = captured.err
    for phase in ("pre-train 1 proxies: 100%", "distill dm: 100%", "eval 1 models: 100%"):
        assert phase in err
    assert main(["-q", "run", str(job), "--no-track", "--json", "--set", "output.dir=" + str(tmp_path / "j2")]) == 0
    captured = capsys.readouterr()
    assert "%|" not in captured.err  # -q, and stderr is no terminal: no bar


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
