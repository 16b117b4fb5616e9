"""``cmidd best``: the best registered distilled set of a data set and IPC."""

from __future__ import annotations

import argparse
import json

from ._args import DEFAULT_METRIC, URI_HELP, add_dataset_ipc, add_tracking_uri

EXAMPLES = """examples:
  cmidd best --dataset digits --ipc 10
  cmidd best --dataset digits --ipc 10 --metric acc/ConvNetD2 --json
  cmidd pull --dataset digits --ipc 10 --out sets/digits-ipc10          # the champion
  cmidd pull --dataset digits --ipc 10 --version 3 --out sets/v3
  cmidd runs -n 10 --tracking-uri http://127.0.0.1:5000
"""  # shared by best, pull and runs


def add_parser(sub) -> None:
    """Add ``best`` to ``cmidd``'s subparsers."""
    b = sub.add_parser("best", help="the best registered distilled set of a data set and IPC",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_ipc(b)
    b.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"rank by this run metric, higher is better ({DEFAULT_METRIC})")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    add_tracking_uri(b, URI_HELP)
    b.set_defaults(fn=command)


def command(args) -> None:
    """Print the best version (``--json``: one JSON object)."""
    from ..app import quiet_mlflow

    quiet_mlflow()
    from ..tracking import best_set

    best = best_set(args.dataset, args.ipc, args.metric, args.tracking_uri)
    print(json.dumps(best, sort_keys=False) if args.json else format_best(best, args.metric))


def format_best(best: dict, metric: str) -> str:
    """Human-readable lines for a ``best_set`` result."""
    p, m = best["params"], best["metrics"]
    alias = f" [{best['alias']}]" if best["alias"] else ""
    from ..lam import fmt_lam, lam_of

    proxies, lam = "none", lam_of(p, m)
    if lam != 0:
        ref = p.get("proxies.from_registry", "None")
        proxies = f"{ref} (registry)" if ref != "None" else p.get("proxies.set", "-")
    lines = [
        f"{best['name']} version {best['version']}{alias}",
        f"  run       {best['run_id']}",
        f"  method    {p.get('method.name', '-')}   lambda {fmt_lam(lam)}   proxy set {proxies}",
        f"  {metric} = {m[metric]:.4f}{_std(m, metric)}",
    ]
    for k in sorted(k for k in m if k.startswith("acc/") and k != metric):
        lines.append(f"  {k:<24} {m[k]:.4f}{_std(m, k)}")
    lines.append(f"  source    {best['source']}")
    return "\n".join(lines)


def _std(m: dict[str, float], key: str) -> str:
    """`` +- std`` of ``acc/X`` when ``acc_std/X`` was logged, else ""."""
    std = m.get(key.replace("acc/", "acc_std/", 1))
    return "" if std is None else f" +- {std:.4f}"
