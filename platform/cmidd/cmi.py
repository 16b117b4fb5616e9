"""Empirical class-aware CMI of a synthetic set under frozen proxy networks.

For a proxy f, ``p(x) = softmax(h(x) / T)`` where ``h`` is the penultimate feature vector (``space="features"``,
as the paper's code) or the class logits (``space="logits"``). For class y with images S_y the centroid is
``q_y = mean_{x in S_y} p(x)`` (computed from the synthetic set itself and *not* detached), and

    CMI_emp(S) = 1/|S| * sum_y sum_{x in S_y} KL(p(x) || q_y).

At IPC 1 each image is its own centroid, so CMI_emp is identically 0.

Example:
    >>> log_p = torch.log_softmax(torch.randn(6, 5), dim=1)
    >>> cmi_emp(log_p, torch.tensor([0, 0, 1, 1, 2, 2]), num_classes=3)  # a scalar >= 0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunks import apply_chunked, rows_independent, with_precision
from .registry import Registry

if TYPE_CHECKING:
    from .config import CMICfg


def cmi_emp(log_p: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Empirical CMI from per-sample log-probabilities, batched over classes (no Python loop).

    Args:
        log_p: (N, K) log-probabilities of each synthetic image (rows sum to 1 after ``exp``).
        labels: (N,) int64 class of each image.
        num_classes: number of classes C (classes without images are ignored).

    Returns:
        Scalar tensor: mean over the N images of KL(p_i || q_{y_i}), in nats.
    """
    assert log_p.dim() == 2 and labels.shape == log_p.shape[:1], "log_p (N,K) and labels (N,) expected"
    p = log_p.exp()
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(p.dtype)  # (C,)
    centroids = torch.zeros(num_classes, p.shape[1], dtype=p.dtype, device=p.device)
    centroids = centroids.index_add(0, labels, p) / counts[:, None]  # (C, K): q_y, gradients flow
    log_q = centroids.clamp_min(torch.finfo(p.dtype).tiny).log()[labels]  # (N, K)
    return (p * (log_p - log_q)).sum(dim=1).mean()


def proxy_log_probs(
    proxy: nn.Module,
    x: Tensor,
    space: Literal["features", "logits"] = "features",
    temperature: float = 1.0,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> Tensor:
    """(N, K) log-softmax of a proxy's penultimate features (``features``) or logits (``logits``).

    With a graph to the images, on CPU, the proxy runs in chunks of rows (``cmidd.chunks``) when its rows are
    independent (a frozen proxy's are). ``bf16``: the proxy under bfloat16 autocast, its output cast back to
    float32 before the softmax.
    """
    net = proxy.embed if space == "features" else proxy
    fn = with_precision(net, precision, x.device.type)
    h = apply_chunked(fn, x) if rows_independent(proxy) else fn(x)
    return F.log_softmax(h / temperature, dim=1)


@torch.no_grad()
def measure_cmi(synset_images, labels, proxies: list[nn.Module], num_classes: int, cfg: CMICfg) -> float:
    """CMI of a set averaged over *all* proxies (a measurement, not the training aggregation), computed on the
    proxies' device (the set may be anywhere)."""
    device = next(proxies[0].parameters()).device
    synset_images, labels = synset_images.to(device), labels.to(device)
    vals = [
        float(cmi_emp(proxy_log_probs(p, synset_images, cfg.space, cfg.temperature), labels, num_classes))
        for p in proxies
    ]
    return sum(vals) / len(vals)


# ---------------------------------------------------------------------------------------------------
# Aggregation over a proxy ensemble: each picks which proxies to use and how to combine their CMI values.
# An aggregator is fn(values_of, n_proxies, k, gen) -> Tensor, where values_of(indices) -> (len,) CMI values.

Aggregator = Callable[[Callable[[list[int]], Tensor], int, int, torch.Generator], Tensor]
AGGREGATORS: Registry[Aggregator] = Registry("cmi aggregator")


def _sample(n: int, k: int, gen: torch.Generator) -> list[int]:
    return torch.randperm(n, generator=gen)[: min(k, n)].tolist()


@AGGREGATORS.register("random")
def _agg_random(values_of, n, k, gen):
    """One proxy drawn uniformly per application, as the paper's code (an expectation by resampling)."""
    return values_of(_sample(n, 1, gen))[0]


@AGGREGATORS.register("mean")
def _agg_mean(values_of, n, k, gen):
    """Mean over k proxies drawn without replacement (k >= n: all proxies)."""
    return values_of(_sample(n, k, gen)).mean()


@AGGREGATORS.register("max")
def _agg_max(values_of, n, k, gen):
    """Worst case over k proxies drawn without replacement (k >= n: all proxies)."""
    return values_of(_sample(n, k, gen)).max()


def subsample_per_class(num_classes: int, ipc: int, m: int, gen: torch.Generator) -> Tensor:
    """Indices of m random images per class in a class-ordered set of ``num_classes * ipc`` images.

    Returns:
        (num_classes * m,) int64 indices, class-ordered.
    """
    keys = torch.rand(num_classes, ipc, generator=gen)
    pick = keys.argsort(dim=1)[:, :m]  # (C, m)
    return (pick + torch.arange(num_classes)[:, None] * ipc).reshape(-1)


class CMIRegularizer:
    """CMI of a synthetic set aggregated over an in-memory ensemble of frozen proxies.

    Proxies are built and loaded once, set to eval mode and frozen; each application runs one forward
    pass of the chosen proxy (or of k proxies) over the synthetic images. No disk I/O happens here.

    Args:
        proxies: frozen networks exposing ``embed(x)`` and ``forward(x)``; in a data-parallel worker, None
            for the proxies another worker holds: their values count 0 here (the workers' terms are summed,
            which is exact for the linear aggregators ``mean`` and ``random``).
        num_classes: C.
        agg: name in ``AGGREGATORS`` (random | mean | max).
        k: proxies per application for ``mean`` / ``max``.
        space: ``features`` (softmax over penultimate features) or ``logits``.
        temperature: softmax temperature T.
        subsample: images per class the CMI sees (None = all), to bound its cost at large IPC.
        precision: ``fp32`` or ``bf16`` (the proxies' forward/backward under bfloat16 autocast).
    """

    def __init__(
        self,
        proxies: list[nn.Module],
        num_classes: int,
        agg: str = "random",
        k: int = 1,
        space: Literal["features", "logits"] = "features",
        temperature: float = 1.0,
        subsample: int | None = None,
        precision: Literal["fp32", "bf16"] = "fp32",
    ) -> None:
        if not proxies:
            raise ValueError("CMIRegularizer needs at least one proxy")
        self.proxies = [freeze(p) if p is not None else None for p in proxies]
        self.num_classes = num_classes
        self.aggregate = AGGREGATORS.get(agg)
        self.k, self.space, self.temperature, self.subsample = k, space, temperature, subsample
        self.precision = precision

    def __call__(self, images: Tensor, labels: Tensor, gen: torch.Generator, groups: int | None = None) -> Tensor:
        """CMI of class-ordered ``images`` (C*ipc, ...) with ``labels`` (C*ipc,); differentiable in images.

        ``groups``: how many classes ``images`` holds (default all ``num_classes``; 1 for IDC's class-by-class
        steps, whose CMI is that class's mean KL to its own centroid).
        """
        if self.subsample is not None:
            groups = groups or self.num_classes
            ipc = images.shape[0] // groups
            if self.subsample < ipc:
                idx = subsample_per_class(groups, ipc, self.subsample, gen).to(images.device)
                images, labels = images[idx], labels[idx]

        def value(i: int) -> Tensor:
            if self.proxies[i] is None:  # held by another worker
                return images.new_zeros(())
            log_p = proxy_log_probs(self.proxies[i], images, self.space, self.temperature, self.precision)
            return cmi_emp(log_p, labels, self.num_classes)

        def values_of(indices: list[int]) -> Tensor:
            return torch.stack([value(i) for i in indices])

        return self.aggregate(values_of, len(self.proxies), self.k, gen)


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients: a proxy is a fixed function of the images."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
