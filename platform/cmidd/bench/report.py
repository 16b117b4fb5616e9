"""The human side of ``cmidd bench``: the Markdown report and the plots (accuracy vs IPC, curves, speed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..lam import CMI_SUFFIX


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(r: dict[str, Any]) -> str:
    """``bench.md``: the machine, the targets, then one section per suite that ran."""
    env = r["env"]
    lines = [
        f"# cmidd bench, {env['date']}",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {env['threads']} torch threads, device "
        f"`{env['device']}`{', ' + env['gpu'] if env.get('gpu') else ''}; torch {env['torch']}, ray {env['ray']}, "
        f"mlflow {env['mlflow']}. Suites: {', '.join(k for k in r['seconds'])} "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in r['seconds'].items())}).",
    ]
    if r.get("targets"):
        lines += ["", "## Targets", "", "| target | value | bound | met |", "|---|---:|---|---|"]
        for t in r["targets"]:
            lines.append(f"| {t['target']} | {_num(t['value'], '.4g')} | {t['bound']} | "
                         f"{'yes' if t['met'] else '**MISSED**'} |")
    if "speed" in r:
        lines += _speed_md(r["speed"], r["plan"])
    if "quality" in r:
        lines += _quality_md(r["quality"])
    for suite in ("reproduce", "ray", "search", "ensemble"):
        if suite in r:
            lines += ["", f"## {suite}", ""]
            s = r[suite]
            if "table" in s:
                lines.append(s["table"])
            else:
                lines += [f"- {k}: {v}" for k, v in s.items() if not isinstance(v, (dict, list))]
    if r.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in r["plots"])]
    return "\n".join(lines) + "\n"


def _speed_md(s: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    lines = [
        "", f"## Speed (median of {plan['repeats']} iterations after {plan['warmup']} warm-up; min and max)", "",
        "| setting | proxy | s/iter | min | max | bare fwd+bwd s | loop/bare | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in s["settings"]:
        t = row["s_per_iter"]
        bare = row.get("bare_s", {}).get("median")
        lines.append(
            f"| {row['setting']}{' (per image update)' if row['method'] == 'gm' else ''} | {row['proxy'] or '-'} | "
            f"{t['median']:.3f} | {t['min']:.3f} | {t['max']:.3f} | {_num(bare)} | "
            f"{_num(row.get('loop_over_bare'), '.2f')} | {row['peak_mem_mb']:.0f} |"
        )
    summary = {k: v for k, v in s.items() if k != "settings"}
    if summary:
        lines += [""] + [f"- `{k}`: {_num(v, '.3f')}" for k, v in summary.items()]
    return lines


def _quality_md(q: dict[str, Any]) -> list[str]:
    archs = list(q["archs"]) + (["ensemble"] if any(r["arch"] == "ensemble" for r in q["rows"]) else [])
    head = ["IPC", "set", *archs, "cross-arch mean", "CMI"]
    lines = [
        "", f"## Quality ({q['dataset']} {q['im_size']}x{q['im_size']}, test accuracy %, mean +- std over "
        f"{q['seeds']} seeds; lambda {q['lam']:g}, proxies {q['proxy_set']})", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2),
    ]
    cells: dict[tuple[int, str], dict[str, dict]] = {}
    for row in q["rows"]:
        cells.setdefault((row["ipc"], row["set"]), {})[row["arch"]] = row
    for (ipc, name), by_arch in cells.items():
        accs = [f"{_pct(by_arch[a]['acc_mean'])} +- {_pct(by_arch[a]['acc_std'])}" if a in by_arch else "-"
                for a in archs]
        cross = by_arch.get("cross_arch_mean", {}).get("acc_mean")
        cmi = q["cmi"].get(f"{name}/ipc{ipc}")
        lines.append(f"| {ipc} | {name} | " + " | ".join(accs) + f" | {_pct(cross)} | {_num(cmi, '.3e')} |")
    if q.get("diverged"):
        lines += ["", "Diverged (no rows): " + ", ".join(q["diverged"])]
    c = q["ceiling"]
    lines += ["", f"Full-data ceiling ({c['arch']}, {c['epochs']} epochs): {_pct(c['acc_mean'])} +- "
                  f"{_pct(c['acc_std'])} over {c['n']} seeds."]
    return lines


def plots(r: dict[str, Any], out: Path) -> list[Path]:
    """PNG files written under ``out``: accuracy vs IPC, the curves of one run, seconds per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    q = r.get("quality")
    if q and q.get("rows"):
        written.append(_accuracy_plot(q, out / "accuracy_vs_ipc.png"))
        curves = q.get("curves", {})
        key = next((k for k in reversed(list(curves)) if CMI_SUFFIX in k), next(iter(curves), None))
        if key:
            written.append(_curves_plot(key, curves[key], out / "curves.png"))
    rows = [row for row in r.get("reproduce", {}).get("rows", []) if row.get("curve")]
    if rows:
        written.append(_reproduce_plot(r["reproduce"], rows, out / "reproduce_curves.png"))
    s = r.get("speed")
    if s and s.get("settings"):
        written.append(_speed_plot(s["settings"], out / "speed.png"))
    return written


def _accuracy_plot(q: dict[str, Any], path: Path) -> Path:
    """Accuracy of every set vs IPC on the first architecture, with the full-data ceiling."""
    import matplotlib.pyplot as plt

    arch = q["archs"][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(row["set"] for row in q["rows"]):
        pts = sorted((row["ipc"], row["acc_mean"], row["acc_std"]) for row in q["rows"]
                     if row["set"] == name and row["arch"] == arch)
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * (p[2] or 0) for p in pts],
                    marker="o", capsize=3, label=name)
    ax.axhline(100 * q["ceiling"]["acc_mean"], color="grey", ls="--", label="full data")
    ax.set(xscale="log", xlabel="images per class", ylabel=f"test accuracy % ({arch})",
           title=f"{q['dataset']}: accuracy vs IPC")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _curves_plot(key: str, c: dict[str, list], path: Path) -> Path:
    """The distillation loss (log scale) and, on a second axis, the CMI of one run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(c["step"], c["loss_dd"], label="loss_dd")
    ax.set(xlabel="iteration", ylabel="loss_dd", yscale="log", title=f"curves of {key}")
    cmi = [(s, v) for s, v in zip(c["step"], c["cmi"]) if v is not None and not math.isnan(v)]
    if cmi:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in cmi], [v for _, v in cmi], color="tab:red", label="cmi")
        ax2.set_ylabel("CMI", color="tab:red")
    return _save(fig, path)


def _reproduce_plot(rep: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy vs iteration of every reproduce run with a curve, one panel per IPC; published figures dashed
    in the run's colour, random-real dotted grey."""
    import matplotlib.pyplot as plt

    ipcs = sorted({row["ipc"] for row in rows})
    fig, axes = plt.subplots(1, len(ipcs), figsize=(6 * len(ipcs), 4), squeeze=False)
    for ax, ipc in zip(axes[0], ipcs):
        for row in (x for x in rows if x["ipc"] == ipc):
            steps, acc, std = zip(*row["curve"])
            line = ax.errorbar(steps, acc, yerr=[d or 0.0 for d in std], marker="o", capsize=3, label=row["variant"])
            if row.get("published") is not None:
                ax.axhline(row["published"], ls="--", lw=1, color=line[0].get_color())
        rnd = next((x for x in rep["rows"] if x["ipc"] == ipc and x["variant"] == "random-real"), None)
        if rnd and rnd.get("acc") is not None:
            ax.axhline(rnd["acc"], ls=":", color="grey", label="random-real")
        ax.set(xscale="log", xlabel="iteration", ylabel="test accuracy % (ConvNet)",
               title=f"{rep['dataset']} IPC {ipc}: {rep['label']} (dashed: published)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _speed_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Seconds per iteration of every speed setting (median, min-max bars; log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    ax.barh([row["setting"] for row in rows], [row["s_per_iter"]["median"] for row in rows],
            xerr=[[row["s_per_iter"]["median"] - row["s_per_iter"]["min"] for row in rows],
                  [row["s_per_iter"]["max"] - row["s_per_iter"]["median"] for row in rows]])
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="seconds per iteration (gm: per image update)", title="distillation speed")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
