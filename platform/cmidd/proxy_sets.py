"""Proxy-set recipes: which architectures, seeds and pre-training epochs a named proxy set holds.

A leaf module (it imports only the registry), so that config validation can check a set's name without
importing the proxy zoo's training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .registry import Registry

if TYPE_CHECKING:
    from .config import ProxiesCfg


@dataclass(frozen=True)
class ProxySpec:
    """One proxy: an architecture, the seed of its training run, and the epoch it is taken at."""

    arch: str
    seed: int
    epochs: int


PROXY_SETS: Registry[Callable[[], list[ProxySpec]]] = Registry("proxy set")


def _same_arch(arch: str, n: int, epochs: int = 40) -> list[ProxySpec]:
    return [ProxySpec(arch, s, epochs) for s in range(n)]


# Paper: ResNet18 proxies, SGD 40 epochs. Sets mixing architectures and stages serve the ensemble studies.
PROXY_SETS.register("convnet-x1")(lambda: _same_arch("ConvNet", 1))
PROXY_SETS.register("convnet-x2")(lambda: _same_arch("ConvNet", 2))
PROXY_SETS.register("convnet-x4")(lambda: _same_arch("ConvNet", 4))
PROXY_SETS.register("convnet-x8")(lambda: _same_arch("ConvNet", 8))
PROXY_SETS.register("resnet18-x2")(lambda: _same_arch("ResNet18", 2))
PROXY_SETS.register("resnet18-x4")(lambda: _same_arch("ResNet18", 4))
PROXY_SETS.register("mixed-x4")(
    lambda: [ProxySpec(a, 0, 40) for a in ("ConvNet", "ResNet18", "VGG11", "AlexNet")]
)
PROXY_SETS.register("convnet-stages-x4")(lambda: [ProxySpec("ConvNet", 0, e) for e in (5, 10, 20, 40)])
# Architectures x training stages: an early (10) and a late (40) snapshot of one run per architecture.
PROXY_SETS.register("mixed-stages-x8")(
    lambda: [ProxySpec(a, 0, e) for a in ("ConvNet", "ResNet18", "VGG11", "AlexNet") for e in (10, 40)]
)


def describe(name: str) -> str:
    """One line about a proxy set: how many proxies, and per architecture its seeds and epochs (stages).

    Example:
        >>> describe("convnet-stages-x4")
        '4 proxies: ConvNet (seed 0; epochs 5,10,20,40)'
    """
    specs = PROXY_SETS.get(name)()
    parts = []
    for arch in dict.fromkeys(s.arch for s in specs):
        mine = [s for s in specs if s.arch == arch]
        seeds = sorted({s.seed for s in mine})
        epochs = sorted({s.epochs for s in mine})
        if len(seeds) == 1:
            seed_txt = f"seed {seeds[0]}"
        elif seeds == list(range(seeds[0], seeds[-1] + 1)):
            seed_txt = f"seeds {seeds[0]}-{seeds[-1]}"
        else:
            seed_txt = f"seeds {','.join(map(str, seeds))}"
        parts.append(f"{arch} ({seed_txt}; epochs {','.join(map(str, epochs))})")
    return f"{len(specs)} prox{'y' if len(specs) == 1 else 'ies'}: " + ", ".join(parts)


def proxy_specs(cfg: ProxiesCfg) -> list[ProxySpec]:
    """The set's specs; ``cfg.epochs`` rescales the epochs so that the longest equals it."""
    specs = PROXY_SETS.get(cfg.set)()
    if cfg.epochs is None:
        return specs
    top = max(s.epochs for s in specs)
    return [ProxySpec(s.arch, s.seed, max(1, round(s.epochs * cfg.epochs / top))) for s in specs]
