"""Plain-text tables for the terminal (results are also written as JSON)."""

from __future__ import annotations

ENSEMBLE = "ensemble"  # = evaluate.ENSEMBLE (kept here so that the report needs no torch)
CHANCE_FACTOR = 1.5  # an accuracy below 1.5x chance (1 / classes) counts as "at chance"
CHANCE_MARK = "!"


def at_chance(rows: list[dict], num_classes: int) -> dict[str, list[str]]:
    """The architectures that scored at chance (mean accuracy < ``CHANCE_FACTOR`` / classes), with the sets
    they did so on: {arch: [set, ...]} (ensemble rows are left out)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["arch"] != ENSEMBLE and r["acc_mean"] < CHANCE_FACTOR / num_classes:
            out.setdefault(r["arch"], []).append(r["set"])
    return out


def chance_warning(arch: str, sets: list[str], num_classes: int) -> str:
    """One warning line: ``arch`` scored at chance on ``sets``, so its column says nothing about them."""
    return (f"warning: {arch} scored at chance (< {100 * CHANCE_FACTOR / num_classes:.0f}%, chance "
            f"{100 / num_classes:.0f}%) on {', '.join(sets)}: its column ({CHANCE_MARK}) does not compare the "
            "sets; train it longer (eval.epochs_by_arch) or drop it")


def format_gain(baseline: dict | None) -> str:
    """``gain over random-real: +x.x pt (k std)`` from ``best``'s ``baseline`` entry, or why there is none."""
    if baseline is None:
        return "gain over random-real: - (no baseline run under this protocol)"
    k = baseline.get("k_std")
    spread = f"{k:.1f} std" if k is not None else "1 seed: no std"
    return f"gain over random-real: {baseline['gain']:+.1f} pt ({spread})"


def results_table(rows: list[dict], archs: list[str] | None = None, num_classes: int | None = None) -> str:
    """Accuracy table: one line per set, one column per architecture, ``mean +- std`` in percent.

    A cell over one seed shows the mean alone (a std over one seed is no spread). With ``num_classes``, a cell
    at chance (``at_chance``) is marked ``!``. Rows with arch ``ensemble`` (the averaged-softmax ensemble, see
    ``evaluate.EvalResult.rows``) are not averaged into ``mean``; they fill a last column ``ensemble``
    (accuracy % and ECE).

    Args:
        rows: dicts with set, arch, acc_mean, acc_std, n (ensemble rows also ece).
        archs: column order (default: order of first appearance).
        num_classes: mark cells at chance level.
    """
    ens = {r["set"]: r for r in rows if r["arch"] == ENSEMBLE}
    rows = [r for r in rows if r["arch"] != ENSEMBLE]
    sets = list(dict.fromkeys([*(r["set"] for r in rows), *ens]))
    archs = [a for a in archs or dict.fromkeys(r["arch"] for r in rows) if a != ENSEMBLE]
    chance = at_chance(rows, num_classes) if num_classes else {}
    cell = {(r["set"], r["arch"]): _cell(r, r["set"] in chance.get(r["arch"], ())) for r in rows}
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


def _cell(row: dict, marked: bool) -> str:
    """``mean +- std`` in percent (the mean alone over one seed), ``!`` appended when at chance."""
    text = f"{100 * row['acc_mean']:5.1f}"
    if row.get("n", 2) > 1:
        text += f" +- {100 * row['acc_std']:4.1f}"
    return text + (f" {CHANCE_MARK}" if marked else "")
