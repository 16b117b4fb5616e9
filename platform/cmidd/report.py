"""Plain-text tables for the terminal (results are also written as JSON)."""

from __future__ import annotations

ENSEMBLE = "ensemble"  # = evaluate.ENSEMBLE (kept here so that the report needs no torch)


def results_table(rows: list[dict], archs: list[str] | None = None) -> str:
    """Accuracy table: one line per set, one column per architecture, ``mean +- std`` in percent.

    Rows with arch ``ensemble`` (the averaged-softmax ensemble, see ``evaluate.EvalResult.rows``) are not
    averaged into ``mean``; they fill a last column ``ensemble`` (accuracy % and ECE).

    Args:
        rows: dicts with set, arch, acc_mean, acc_std, n (ensemble rows also ece).
        archs: column order (default: order of first appearance).
    """
    ens = {r["set"]: r for r in rows if r["arch"] == ENSEMBLE}
    rows = [r for r in rows if r["arch"] != ENSEMBLE]
    sets = list(dict.fromkeys([*(r["set"] for r in rows), *ens]))
    archs = [a for a in archs or dict.fromkeys(r["arch"] for r in rows) if a != ENSEMBLE]
    cell = {(r["set"], r["arch"]): f"{100 * r['acc_mean']:5.1f} +- {100 * r['acc_std']:4.1f}" for r in rows}
    header = ["set", *archs, "mean", *([ENSEMBLE] if ens else [])]
    lines = []
    for s in sets:
        accs = [r["acc_mean"] for r in rows if r["set"] == s]
        mean = f"{100 * sum(accs) / len(accs):5.1f}" if accs else "-"
        extra = []
        if ens:
            e = ens.get(s)
            extra = [f"{100 * e['acc_mean']:5.1f} (ece {e.get('ece', float('nan')):.3f})" if e else "-"]
        lines.append([s, *(cell.get((s, a), "-") for a in archs), mean, *extra])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)
