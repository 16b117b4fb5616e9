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


def _pm(gain: float, std: float | None) -> str:
    return f"{gain:+.1f}" + (f" +- {std:.1f}" if std is not None else "")


def gain_text(g: dict) -> str:
    """``+3.2 +- 0.8 pt (n=3)``: a gain entry (``gain``, ``gain_std``, ``n``) in one short cell (a version's tag,
    the demo's per-set line)."""
    return f"{_pm(g['gain'], g.get('gain_std'))} pt (n={g['n']})"


def format_draws(g: dict) -> str:
    """``+x.x +- y.y pt over n random-real draws (...)``: one version's paired gain (``cmidd.gain.paired_gain``
    with ``eval_seed``), saying what it is paired on and when it has no spread."""
    n = g["n"]
    what = (f"mean +- std over {n} random-real draws" if n > 1 else "1 random-real draw: no spread") + \
        (" (fewer than 3)" if 1 < n < 3 else "")
    own = ", the set's own init draw among them" if g.get("own_draw") else ""
    return f"{_pm(g['gain'], g['gain_std'])} pt ({what}, each scored with the set's eval seed {g['eval_seed']}{own})"


def format_gain(baseline: dict | None) -> str:
    """The gain line of ``best``'s ``baseline`` entry (``tracking._ranking.gain_over_random_real``), saying what
    it is: one version's gain over its paired draws, or, when the champion was picked from several versions, the
    mean over all of them with the champion's own (selected: biased upward) beside it; or why there is none."""
    if baseline is None:
        return "gain over random-real: - (no random-real draw under this protocol scored with the sets' eval seeds)"
    if baseline["over"] == "draws":
        return f"gain over random-real: {format_draws(baseline['champion'])}"
    n, k = baseline["n"], baseline["selected_from"]
    over = "1 version with paired draws: no spread" if n == 1 else f"mean +- std over {n} of the {k} versions"
    line = (f"gain over random-real: {_pm(baseline['gain'], baseline['gain_std'])} pt ({over} under this protocol, "
            "each paired with its own draws)")
    c = baseline.get("champion")
    if c is not None:
        line += f"; the champion's own {format_draws(c)} is the best of {k}: biased upward"
    return line


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
