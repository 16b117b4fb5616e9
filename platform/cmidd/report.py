"""Plain-text tables for the terminal (results are also written as JSON)."""

from __future__ import annotations


def results_table(rows: list[dict], archs: list[str] | None = None) -> str:
    """Accuracy table: one line per set, one column per architecture, ``mean +- std`` in percent.

    Args:
        rows: dicts with set, arch, acc_mean, acc_std, n.
        archs: column order (default: order of first appearance).
    """
    sets = list(dict.fromkeys(r["set"] for r in rows))
    archs = archs or list(dict.fromkeys(r["arch"] for r in rows))
    cell = {(r["set"], r["arch"]): f"{100 * r['acc_mean']:5.1f} +- {100 * r['acc_std']:4.1f}" for r in rows}
    header = ["set", *archs, "mean"]
    lines = []
    for s in sets:
        accs = [r["acc_mean"] for r in rows if r["set"] == s]
        lines.append([s, *(cell.get((s, a), "-") for a in archs), f"{100 * sum(accs) / len(accs):5.1f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)
