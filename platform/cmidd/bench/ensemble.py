"""The ``ensemble`` suite of ``cmidd bench``: S evaluation seeds of one net trained batched (torch.func vmap)
vs one after another. It reports, never asserts (the machine may be shared).

Example:
    >>> r = ensemble_speed(seeds=5, n_images=100, epochs=20)
    >>> r["speedup"]   # sequential seconds / batched seconds (median of ``repeats``)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..augment import DSAParams
from ..config import DSA_DEFAULT
from ..data import RealPool, load_dataset
from ..ensemble import train_seeds
from ..nets import create_net

if TYPE_CHECKING:
    from . import BenchPlan

SPEEDUP_BOUND = 2.0  # the target: batched training of 5 seeds at least twice as fast as sequential


def ensemble_speed(seeds: int = 5, n_images: int = 100, epochs: int = 20, arch: str = "ConvNet",
                   im_size: int | None = None, repeats: int = 3, dsa: bool = True, batch: int = 256,
                   device: str = "cpu", dataset: str = "digits") -> dict:
    """Time ``train_seeds`` on a set of ``n_images`` real images (ipc = n_images / classes), batched and
    sequential, alternating the two in each repeat; report the medians and their ratio.

    Both variants run the evaluation protocol's training (SGD momentum 0.9, wd 5e-4, lr 0.01 decayed once,
    DSA on unless ``dsa`` is False) with the same seeds, so they compute the same nets (``max_abs_diff``).

    Returns:
        {"arch", "seeds", "n_images", "epochs", "im_size", "device", "mode", "repeats", "batched_s",
        "sequential_s", "speedup", "max_abs_diff"}.
    """
    data = load_dataset(dataset, im_size=im_size)
    dev = torch.device(device)
    ipc = max(1, n_images // data.num_classes)
    pool = RealPool(data.train_x, data.train_y, data.num_classes, dev)
    x, y = pool.random_init(ipc, torch.Generator().manual_seed(0))
    hp = dict(epochs=epochs, lr=0.01, momentum=0.9, weight_decay=5e-4, batch=batch, lr_decay=0.1,
              dsa_params=DSAParams(strategy=DSA_DEFAULT) if dsa else None, device=dev)
    seed_list = list(range(seeds))

    def build():
        return create_net(arch, data.channels, data.num_classes, data.im_size)

    def timed(batched: bool):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        nets, mode = train_seeds(build, seed_list, x, y, batched=batched, **hp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, nets, mode

    train_seeds(build, seed_list[:2], x, y, **{**hp, "epochs": 1})  # warm-up (first vmap call, allocators)
    times_b, times_s = [], []
    for _ in range(repeats):
        tb, nets_b, mode = timed(True)
        ts, nets_s, _ = timed(False)
        times_b.append(tb)
        times_s.append(ts)
    diff = max(float((pb - ps).detach().abs().max()) for nb, ns in zip(nets_b, nets_s)
               for pb, ps in zip(nb.parameters(), ns.parameters()))
    b, s = statistics.median(times_b), statistics.median(times_s)
    return {"arch": arch, "seeds": seeds, "n_images": int(x.shape[0]), "epochs": epochs, "im_size": data.im_size,
            "device": str(dev), "mode": mode, "repeats": repeats, "batched_s": b, "sequential_s": s,
            "speedup": s / b, "max_abs_diff": diff}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Sequential over batched time of the seeds (the issue's bound: >= 2)."""
    return [{"target": "ensemble training, 5 ConvNet seeds on 100 images: sequential / batched time",
             "value": result["speedup"], "bound": f">= {SPEEDUP_BOUND:g}", "met": result["speedup"] >= SPEEDUP_BOUND}]


def table(r: dict[str, Any]) -> str:
    """The suite's one-paragraph summary."""
    return (f"{r['seeds']} seeds of {r['arch']} on {r['n_images']} images ({r['im_size']}x{r['im_size']}), "
            f"{r['epochs']} epochs, median of {r['repeats']}: batched ({r['mode']}) {r['batched_s']:.2f} s, "
            f"sequential {r['sequential_s']:.2f} s, speed-up {r['speedup']:.2f}x; largest weight difference "
            f"{r['max_abs_diff']:.1e}")


def suite(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """The ``ensemble`` suite: 5 seeds of ConvNet on a 100-image set, batched vs one after another."""
    r = ensemble_speed(seeds=5, n_images=100, epochs=plan.ensemble_epochs, repeats=max(1, plan.repeats // 2),
                       device=str(device))
    r["targets"] = targets(r)
    r["table"] = table(r)
    return r
