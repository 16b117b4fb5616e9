"""Where evaluation time goes: seconds per training epoch of each net, threads x channels_last, side by side.

    python -m cmidd.bench_eval_cost ConvNetD2,VGG11BN 8,28 3      # archs, image sizes, epochs per repeat

Prints, per image size and net, the 1-thread epoch time (100 images, batch 256, crop_scale_rotate DSA;
median of 3 repeats) and the speed-up of each other variant, then test-set inference at batch 256/1024/4096.
"""
import statistics
import sys
import time

import torch

from cmidd.augment import DSAParams
from cmidd.nets import create_net
from cmidd.training import predict_proba, seeded_net, train_classifier


def main(argv: list[str]) -> None:
    archs = argv[1].split(",")
    sizes = [int(s) for s in argv[2].split(",")]
    reps, ep = 3, int(argv[3]) if len(argv) > 3 else 3
    dsa = DSAParams(strategy="crop_scale_rotate")
    g = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.randn(100, 1, size, size, generator=g)
        y = torch.arange(100) % 10
        xt = torch.randn(2000, 1, size, size, generator=g)
        for arch in archs:
            res = {}
            for threads in (1, 2):
                for cl in (False, True):
                    torch.set_num_threads(threads)
                    ts = []
                    for r in range(reps):
                        net = seeded_net(lambda: create_net(arch, 1, 10, size), 0, torch.device("cpu"))
                        xx = x
                        if cl:
                            net = net.to(memory_format=torch.channels_last)
                        xx = x.contiguous(memory_format=torch.channels_last)
                        t = time.perf_counter()
                        train_classifier(net, xx, y, epochs=ep, lr=0.01, momentum=0.9, weight_decay=5e-4, batch=256,
                                         gen=torch.Generator().manual_seed(r), dsa_params=dsa)
                        ts.append((time.perf_counter() - t) / ep)
                    res[f"t{threads}{'_cl' if cl else ''}"] = statistics.median(ts)
            torch.set_num_threads(2)
            pb = {}
            for b in (256, 1024, 4096):
                ts = []
                for r in range(reps):
                    t = time.perf_counter()
                    predict_proba(net, xt, batch=b)
                    ts.append(time.perf_counter() - t)
                pb[b] = statistics.median(ts)
            base = res["t1"]
            print(f"{size}px {arch}: epoch(100 imgs) t1 {base*1e3:.1f}ms; " +
                  " ".join(f"{k} x{base/v:.2f}" for k, v in res.items() if k != "t1") +
                  f" | predict 2000: b256 {pb[256]*1e3:.0f}ms b1024 x{pb[256]/pb[1024]:.2f} "
                  f"b4096 x{pb[256]/pb[4096]:.2f}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv)
