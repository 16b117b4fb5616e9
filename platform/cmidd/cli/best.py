"""``cmidd best``: the best registered distilled set of a data set and IPC."""

from __future__ import annotations

import argparse
import json

from ..report import format_gain
from ._args import DEFAULT_METRIC, URI_HELP, add_dataset_ipc, add_tracking_uri, positive_int

EXAMPLES = """examples:
  cmidd best --dataset digits --ipc 10                                  # one answer per protocol
  cmidd best --dataset digits --ipc 10 --protocol default --json        # the protocol champion follows
  cmidd best --dataset digits --ipc 10 --protocol 3f0c1a9b2e --metric acc/ConvNetD2
  cmidd best --dataset digits --ipc 10 --protocol 3f0c1a9b2e --make-default
  cmidd best --pareto digits-pareto --max-ipc 5                         # a multi-objective search's front
  cmidd pull --dataset digits --ipc 10 --out sets/digits-ipc10          # the champion
  cmidd pull --dataset digits --ipc 10 --protocol 3f0c1a9b2e --out sets/p   # that protocol's champion
  cmidd pull --dataset digits --ipc 10 --version 3 --out sets/v3
  cmidd runs -n 10 --tracking-uri http://127.0.0.1:5000
"""  # shared by best, pull and runs


def add_parser(sub) -> None:
    """Add ``best`` to ``cmidd``'s subparsers."""
    b = sub.add_parser("best", help="the best registered distilled set of a data set and IPC, per protocol",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_ipc(b, required=False)
    b.add_argument("--pareto", default=None, metavar="SEARCH",
                   help="answer from the Pareto front of the multi-objective search SEARCH (search.objectives) "
                        "instead of the registry: the best set within --max-ipc / --max-seconds")
    b.add_argument("--max-ipc", type=positive_int, default=None, metavar="K",
                   help="with --pareto: at most K images per class")
    b.add_argument("--max-seconds", type=float, default=None, metavar="N",
                   help="with --pareto: at most N seconds of distillation (time/distill_s)")
    b.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"rank by this run metric, higher is better ({DEFAULT_METRIC})")
    b.add_argument("--protocol", default=None, metavar="ID|default",
                   help="answer for this evaluation protocol (an id or a unique prefix; default: the one "
                        "'champion' follows). Without it: one answer per protocol (--json: only if there is one)")
    b.add_argument("--make-default", action="store_true",
                   help="make --protocol the protocol that the alias 'champion' follows")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    add_tracking_uri(b, URI_HELP)
    b.set_defaults(fn=command)


def command(args) -> None:
    """Print the best version of one protocol, or of each protocol (``--json``: one JSON object)."""
    from ..errors import ConfigError
    from ..app import open_store

    if args.pareto is not None or args.max_ipc is not None or args.max_seconds is not None:
        return pareto_command(args)
    if args.dataset is None or args.ipc is None:
        raise ConfigError("--dataset and --ipc: both are required (unless --pareto SEARCH)")
    if args.make_default:
        if args.protocol is None:
            raise ConfigError("--make-default: needs --protocol ID (the protocol 'champion' should follow)")
        version = open_store(args.tracking_uri).make_default(args.dataset, args.ipc, args.protocol, args.metric)
        print(f"champion now follows protocol {args.protocol} (version {version})")
    if args.json or args.protocol is not None:  # one protocol, or a refusal naming them
        best = open_store(args.tracking_uri).best(args.dataset, args.ipc, args.metric, args.protocol)
        print(json.dumps(best, sort_keys=False) if args.json else format_best(best, args.metric))
        return
    answers = open_store(args.tracking_uri).best_per_protocol(args.dataset, args.ipc, args.metric)
    if len(answers) > 1:
        print(f"{answers[0]['name']}: versions scored under {len(answers)} evaluation protocols, never ranked "
              "together; one answer per protocol (--protocol ID for one)\n")
    print("\n\n".join(format_best(a, args.metric) for a in answers))


def pareto_command(args) -> None:
    """``--pareto SEARCH``: the front's best set within the budget (``app.pareto_best``)."""
    from ..app import open_store, pareto_best
    from ..errors import ConfigError
    from ..lam import fmt_lam
    from ..names import DISTILL_SECONDS, IPC, set_of_model
    from ..search_report import fmt_objective

    if args.pareto is None:
        raise ConfigError("--max-ipc / --max-seconds: a budget needs --pareto SEARCH (a multi-objective search)")
    if args.max_seconds is not None and not 0 < args.max_seconds <= 1e9:
        raise ConfigError(f"--max-seconds: 0 < N <= 1e9 must hold, but got {args.max_seconds:g}")
    limits = {k: float(v) for k, v in ((IPC, args.max_ipc), (DISTILL_SECONDS, args.max_seconds)) if v is not None}
    best = pareto_best(open_store(args.tracking_uri), args.pareto, limits)
    if args.json:
        print(json.dumps(best, default=str))
        return
    budget = ", ".join(f"{k} <= {v:g}" for k, v in limits.items()) or "no budget"
    print(f"{args.pareto}: the best of {best['within']} front trial(s) within {budget} (front: {best['front_size']})")
    for o in best["objectives_spec"]:
        value = fmt_objective(o["metric"], best["objectives"][o["metric"]], best["objective_std"].get(o["metric"]))
        print(f"  {o['metric']:<24} {value}  ({o['mode']})")
    print(f"  trial     {best['trial_id']}   lambda {fmt_lam(best.get('lam_effective'))}")
    print(f"  run       {best['run_id']}")
    reg = best.get("registered")
    if reg:  # every front trial is registered (under the search's registration protocol)
        dataset, ipc = set_of_model(reg["name"])
        print(f"  version   {reg['name']} version {reg['version']}   "
              f"(cmidd pull --dataset {dataset} --ipc {ipc} --version {reg['version']} --out DIR)")


def format_best(best: dict, metric: str) -> str:
    """Human-readable lines for a ``best_set`` answer: protocol, run, method, scores, gain, runner-up, ties."""
    p, m = best["params"], best["metrics"]
    alias = f" [{', '.join(best['aliases'])}]" if best.get("aliases") else ""
    proto = best["protocol"]
    seeds = int(p.get("eval.num_eval", "2"))
    from ..lam import fmt_lam, lam_of

    proxies, lam = "none", lam_of(p, m)
    if lam != 0:
        ref = p.get("proxies.from_registry", "None")
        proxies = f"{ref} (registry)" if ref != "None" else p.get("proxies.set", "-")
    lines = [
        f"{best['name']} version {best['version']}{alias}",
        f"  protocol  {proto['id']}{' (default)' if best.get('default_protocol') else ''}: {proto['summary']}",
        f"  run       {best['run_id']}",
        f"  method    {best.get('label', p.get('method.name', '-'))}   lambda {fmt_lam(lam)}   proxy set {proxies}",
        f"  {metric} = {m[metric]:.4f}{_std(m, metric, seeds)}"
        + (f"  (mean over {', '.join(best['mean_over'])})" if best.get("mean_over") else ""),
        f"  {format_gain(best.get('baseline'))}",
    ]
    for k in sorted(k for k in m if k.startswith("acc/") and k != metric):
        lines.append(f"  {k:<24} {m[k]:.4f}{_std(m, k, seeds)}")
    ru = best.get("runner_up")
    if ru is not None:
        spread = f" +- {ru['std']:.4f}" if seeds > 1 else ""
        lines.append(f"  runner-up version {ru['version']} ({ru['method']}) {ru['value']:.4f}{spread}, "
                     f"{0.0 - 100 * ru['gap']:+.1f} pt")
    else:
        lines.append("  runner-up none (one version under this protocol)")
    if best.get("ties"):
        within = "within the seed std" if seeds > 1 else "equal score, one seed"
        lines.append(f"  ties      version {', '.join(str(t['version']) for t in best['ties'])} ({within}): "
                     "no clear best")
    lines.append(f"  source    {best['source']}")
    return "\n".join(lines)


def _std(m: dict[str, float], key: str, seeds: int = 2) -> str:
    """`` +- std`` of ``acc/X`` when ``acc_std/X`` was logged over more than one seed, else ""."""
    std = m.get(key.replace("acc/", "acc_std/", 1))
    return "" if std is None or seeds < 2 else f" +- {std:.4f}"
