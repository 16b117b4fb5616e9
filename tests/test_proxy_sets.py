"""Proxy ensembles: sets mixing architectures and training stages, described by ``cmidd ls proxy-sets``."""

from __future__ import annotations

from cmidd.config import ProxiesCfg
from cmidd.proxy_sets import PROXY_SETS, describe, proxy_specs


def test_mixed_stages_set_spans_four_archs_at_an_early_and_a_late_epoch():
    specs = proxy_specs(ProxiesCfg(set="mixed-stages-x8"))
    assert {s.arch for s in specs} == {"ConvNet", "ResNet18", "VGG11", "AlexNet"}
    for arch in ("ConvNet", "ResNet18", "VGG11", "AlexNet"):
        mine = [s for s in specs if s.arch == arch]
        assert sorted(s.epochs for s in mine) == [10, 40] and {s.seed for s in mine} == {0}  # one run, 2 stages
    # an epochs override rescales the stages and keeps early < late
    short = proxy_specs(ProxiesCfg(set="mixed-stages-x8", epochs=8))
    assert sorted({s.epochs for s in short}) == [2, 8]


def test_ls_proxy_sets_describes_every_set(capsys):
    from cmidd.cli import main

    assert main(["ls", "proxy-sets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == PROXY_SETS.names()
    by_name = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines}
    assert by_name["convnet-x1"] == "1 proxy: ConvNet (seed 0; epochs 40)"
    assert by_name["convnet-x4"] == "4 proxies: ConvNet (seeds 0-3; epochs 40)"
    assert by_name["mixed-stages-x8"].startswith("8 proxies: ConvNet (seed 0; epochs 10,40), ResNet18")
    assert describe("convnet-stages-x4") == "4 proxies: ConvNet (seed 0; epochs 5,10,20,40)"
