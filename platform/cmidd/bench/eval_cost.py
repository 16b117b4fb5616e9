"""Where evaluation time goes: seconds per training epoch of each net, threads x channels_last, side by side.

    python -m cmidd.bench.eval_cost ConvNetD2,VGG11BN 8,28 3      # archs, image sizes, epochs per repeat

Prints, per image size and net, the 1-thread epoch time (100 images, batch 256, crop_scale_rotate DSA;
median of 3 repeats) and the speed-up of each other variant, then test-set inference at batch 256/1024/4096.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from ..augment import DSAParams
from ..nets import create_net
from ..training import predict_proba, seeded_net, train_classifier

REPEATS = 3
DSA = DSAParams(strategy="crop_scale_rotate")


def epoch_seconds(arch: str, size: int, x: torch.Tensor, y: torch.Tensor, epochs: int, threads: int,
                  channels_last: bool) -> tuple[float, torch.nn.Module]:
    """Median seconds per training epoch of a fresh ``arch`` on ``x`` (``[N, 1, size, size]``); the last net.

    ``channels_last`` converts the net and the inputs; otherwise both stay NCHW-contiguous.
    """
    torch.set_num_threads(threads)
    ts = []
    for r in range(REPEATS):
        net = seeded_net(lambda: create_net(arch, 1, 10, size), 0, torch.device("cpu"))
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        xx = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        t = time.perf_counter()
        train_classifier(net, xx, y, epochs=epochs, lr=0.01, momentum=0.9, weight_decay=5e-4, batch=256,
                         gen=torch.Generator().manual_seed(r), dsa_params=DSA)
        ts.append((time.perf_counter() - t) / epochs)
    return statistics.median(ts), net


def predict_seconds(net: torch.nn.Module, xt: torch.Tensor, batch: int) -> float:
    """Median seconds of ``predict_proba`` over ``xt`` at ``batch``."""
    ts = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        predict_proba(net, xt, batch=batch)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def one_line(arch: str, size: int, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, epochs: int) -> str:
    """The epoch time of each (threads, channels_last) variant and the inference times, for one net and size."""
    res = {}
    for threads in (1, 2):
        for cl in (False, True):
            res[f"t{threads}{'_cl' if cl else ''}"], net = epoch_seconds(arch, size, x, y, epochs, threads, cl)
    torch.set_num_threads(2)
    pb = {b: predict_seconds(net, xt, b) for b in (256, 1024, 4096)}
    base = res["t1"]
    return (f"{size}px {arch}: epoch(100 imgs) t1 {base*1e3:.1f}ms; "
            + " ".join(f"{k} x{base/v:.2f}" for k, v in res.items() if k != "t1")
            + f" | predict 2000: b256 {pb[256]*1e3:.0f}ms b1024 x{pb[256]/pb[1024]:.2f} b4096 x{pb[256]/pb[4096]:.2f}")


def main(argv: list[str]) -> None:
    """``argv``: program, comma-separated archs, comma-separated image sizes, [epochs per repeat (3)]."""
    archs = argv[1].split(",")
    sizes = [int(s) for s in argv[2].split(",")]
    epochs = int(argv[3]) if len(argv) > 3 else 3
    g = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.randn(100, 1, size, size, generator=g)
        y = torch.arange(100) % 10
        xt = torch.randn(2000, 1, size, size, generator=g)
        for arch in archs:
            print(one_line(arch, size, x, y, xt, epochs), flush=True)


if __name__ == "__main__":
    main(sys.argv)
