"""Where a DM(+CMI) iteration's time goes, phase by phase, against the FLOP floor of the same machine.

The phases are the ones ``DM.loss`` + the CMI regularizer + the image step run, called one by one with the
same functions (CIFAR-shaped random data, ConvNet-3 w128 instance norm, ResNet18 proxy, batch_real 256, DSA
single mode). Each conv-net phase also gets its FLOPs (``torch.utils.flop_counter``) and the time those FLOPs
take at the fp32 matmul rate measured in this process (4096^2 matmul, same threads): the floor that a
direct-convolution fp32 implementation cannot beat. Median of ``--repeats`` after one warm-up::

    PYTHONPATH=platform .venv/bin/python tools/speed_profile.py --ipc 10 50 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cmidd.augment import DSAParams, dsa_classes
from cmidd.chunks import apply_chunked, embed_nograd
from cmidd.cmi import cmi_emp, freeze, proxy_log_probs
from cmidd.data import RealPool
from cmidd.methods.dm import dm_loss
from cmidd.nets import create_net
from cmidd.training import draw_seed

C, SIZE, BATCH_REAL = 10, 32, 256
STRATEGY = "color_crop_cutout_flip_scale_rotate"


def matmul_gflops(n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops(fn) -> float:
    with FlopCounterMode(display=False) as m:
        fn()
    return m.get_total_flops() / 1e9


def profile(net: torch.nn.Module, proxy: torch.nn.Module, ipc: int, repeats: int, cmi: bool,
            precision: str) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(C * (BATCH_REAL + 16), 3, SIZE, SIZE, generator=gen)
    pool = RealPool(x, torch.arange(C).repeat_interleave(BATCH_REAL + 16), C, torch.device("cpu"))
    params = DSAParams(strategy=STRATEGY, mode="single")
    syn = torch.randn(C * ipc, 3, SIZE, SIZE, generator=gen, requires_grad=True)
    syn_y = torch.arange(C).repeat_interleave(ipc)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    times: dict[str, list[float]] = {}

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        times.setdefault(name, []).append(now - t)
        return now

    for _ in range(repeats + 1):
        t = time.perf_counter()
        real, real_y = pool.sample_all(BATCH_REAL, gen)
        seeds = [draw_seed(gen) for _ in range(C)]
        t = lap("sample real", t)
        real = dsa_classes(real, real_y, seeds, params)
        s = dsa_classes(syn, syn_y, seeds, params)
        t = lap("DSA (real + syn)", t)
        real_emb = embed_nograd(net, real)
        t = lap("ConvNet fwd, real, no grad", t)
        syn_emb = apply_chunked(net.embed, s)
        loss = dm_loss(real_emb, real_y, syn_emb, syn_y, C)
        t = lap("ConvNet fwd, syn, graph", t)
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=False)
        t = lap("ConvNet bwd, syn", t)
        if cmi:
            c = cmi_emp(proxy_log_probs(proxy, syn, precision=precision), syn_y, C)
            t = lap("ResNet18 fwd, syn, graph", t)
            c.backward()
            t = lap("ResNet18 bwd, syn", t)
        opt.step()
        lap("image step", t)
    return {k: v[1:] for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the proxy's (cmi.precision)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rate = matmul_gflops()
    net = create_net("ConvNet", 3, C, SIZE).requires_grad_(False)
    proxy = freeze(create_net("ResNet18", 3, C, SIZE))
    one = torch.randn(1, 3, SIZE, SIZE, requires_grad=True)
    conv_f = flops(lambda: net.embed(one.detach()))
    conv_fb = flops(lambda: net.embed(one).sum().backward())
    res_f = flops(lambda: proxy.embed(one.detach()))
    res_fb = flops(lambda: proxy.embed(one).sum().backward())
    print(f"fp32 matmul rate, {args.threads} threads: {rate:.0f} GFLOP/s; per image: ConvNet fwd {conv_f:.3f} "
          f"GFLOP, fwd+bwd {conv_fb:.3f}; ResNet18 fwd {res_f:.3f}, fwd+bwd {res_fb:.3f}")
    for ipc in args.ipc:
        n_syn = C * ipc
        gflop = {"ConvNet fwd, real, no grad": conv_f * C * BATCH_REAL, "ConvNet fwd, syn, graph": conv_f * n_syn,
                 "ConvNet bwd, syn": (conv_fb - conv_f) * n_syn, "ResNet18 fwd, syn, graph": res_f * n_syn,
                 "ResNet18 bwd, syn": (res_fb - res_f) * n_syn}
        times = profile(net, proxy, ipc, args.repeats, cmi=True, precision=args.precision)
        print(f"\nIPC {ipc}, DM+CMI (proxy {args.precision}), median of {args.repeats}:")
        print("| phase | s | GFLOP | floor s | s / floor |")
        print("|---|---:|---:|---:|---:|")
        total = floor_total = 0.0
        for name, v in times.items():
            med = statistics.median(v)
            total += med
            g = gflop.get(name)
            floor = g / rate if g else None
            floor_total += floor or 0.0
            cells = (f"{g:.0f} | {floor:.2f} | {med / floor:.2f}" if g else "- | - | -")
            print(f"| {name} | {med:.3f} | {cells} |")
        print(f"| total | {total:.3f} | | {floor_total:.2f} | {total / floor_total:.2f} |")


if __name__ == "__main__":
    main()
