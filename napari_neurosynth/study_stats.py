"""Statistics of reader-study ratings.

Works on any list of rating rows (dicts as returned by
:meth:`napari_neurosynth.ratings.RatingStore.ratings`), inside a study or not:

* MOS mean with a 95 % t confidence interval per condition and per rater;
* inter-rater agreement: ICC(2,1) and ICC(2,k) (Shrout & Fleiss 1979, two-way
  random effects, absolute agreement) over items rated by every rater, and
  Krippendorff's alpha (ordinal, via the ``krippendorff`` package), which also
  uses incompletely rated items;
* visual Turing test: accuracy of the real-vs-synthetic choice with a Wilson
  (or Clopper-Pearson) binomial interval and a two-sided binomial test against
  chance, overall and per condition;
* a rank test of each model's MOS against ``acquired``: Wilcoxon signed-rank on
  scores paired by (rater, case), and Mann-Whitney U on all scores;
* a PNG plot of the score distribution per condition with MOS and CI.

An *item* is a (study, case, condition) triple: the thing each rater scores.

Examples
--------
>>> rows = [
...     {"rater": r, "case_id": c, "condition": "acquired", "score": s}
...     for r, scores in {"a": [4, 5, 4], "b": [5, 5, 3]}.items()
...     for c, s in zip(["x", "y", "z"], scores)
... ]
>>> round(mos_table(rows)["acquired"]["mean"], 3)
4.333
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from .errors import NeurosynthError

#: The condition that holds real (acquired) images.
ACQUIRED = "acquired"


def _item(row: dict) -> tuple:
    return (row.get("study"), row["case_id"], row["condition"])


def _check_rows(rows: Iterable[dict]) -> list[dict]:
    rows = list(rows)
    for row in rows:
        for key in ("rater", "case_id", "condition", "score"):
            if key not in row:
                raise NeurosynthError(f"rating row lacks {key!r}: {row}")
    return [r for r in rows if r.get("is_current", 1) in (1, True, "1")]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, SD and a Student-t confidence interval of ``values``.

    Returns ``n``, ``mean``, ``sd``, ``ci_low``, ``ci_high`` (CI is NaN when n < 2,
    and collapses to the mean when all values are equal).

    Examples
    --------
    >>> r = mean_ci([3, 4, 5])
    >>> r["mean"], round(r["ci_low"], 3), round(r["ci_high"], 3)
    (4.0, 1.516, 6.484)
    """
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(x.std(ddof=1))
    if sd == 0:
        return {"n": n, "mean": mean, "sd": 0.0, "ci_low": mean, "ci_high": mean}
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high)}


def mos_table(rows: Iterable[dict], by: Sequence[str] = ("condition",), confidence: float = 0.95) -> dict:
    """MOS with CI grouped by ``by`` (row keys); keys are the group value (or tuple of values)."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for row in _check_rows(rows):
        key = tuple(row[k] for k in by)
        groups[key[0] if len(key) == 1 else key].append(row["score"])
    return {key: mean_ci(vals, confidence) for key, vals in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def ratings_matrix(rows: Iterable[dict], field: str = "score") -> tuple[np.ndarray, list, list]:
    """Raters x items matrix of ``field`` (NaN where a rater did not rate an item).

    Returns the matrix, the rater ids (rows) and the items (columns).
    """
    rows = [r for r in _check_rows(rows) if r.get(field) is not None]
    raters = sorted({r["rater"] for r in rows})
    items = sorted({_item(r) for r in rows}, key=lambda t: tuple(str(v) for v in t))
    ri = {r: i for i, r in enumerate(raters)}
    ii = {t: i for i, t in enumerate(items)}
    matrix = np.full((len(raters), len(items)), np.nan)
    for row in rows:  # rows are current ratings: one per rater and item
        matrix[ri[row["rater"]], ii[_item(row)]] = float(row[field])
    return matrix, raters, items


def icc2(targets_by_raters: np.ndarray) -> dict[str, float]:
    """ICC(2,1) and ICC(2,k) of a complete n-targets x k-raters matrix.

    Two-way random-effects ANOVA, absolute agreement (Shrout & Fleiss 1979,
    Psychol. Bull. 86:420, cases 2 and 2k). Written out because scipy has no
    ICC and the formulas are four lines of mean squares; the Shrout & Fleiss
    Table 2 example is in the tests.

    Examples
    --------
    >>> sf = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    >>> r = icc2(np.array(sf))
    >>> round(r["icc2_1"], 2), round(r["icc2_k"], 2)
    (0.29, 0.62)
    """
    x = np.asarray(targets_by_raters, dtype=float)
    if x.ndim != 2 or np.isnan(x).any():
        raise NeurosynthError("ICC needs a complete targets x raters matrix")
    n, k = x.shape
    if n < 2 or k < 2:
        return {"icc2_1": math.nan, "icc2_k": math.nan, "n_targets": n, "n_raters": k}
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()  # between targets
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()  # between raters
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    den1 = bms + (k - 1) * ems + k * (jms - ems) / n
    denk = bms + (jms - ems) / n
    return {
        "icc2_1": float((bms - ems) / den1) if den1 else math.nan,
        "icc2_k": float((bms - ems) / denk) if denk else math.nan,
        "n_targets": n,
        "n_raters": k,
    }


def _complete_block(matrix: np.ndarray) -> list[int]:
    """Raters (row indices) whose shared, completely rated items are the most.

    ICC needs a complete items x raters table. A rater who scored only a few
    items (a pilot, an import) would otherwise shrink it to nothing, so raters are
    dropped greedily while that increases the number of ratings in the complete
    table (items rated by all remaining raters x raters).
    """
    keep = list(range(matrix.shape[0]))

    def used(rows):  # ratings in the complete block of these raters
        return int((~np.isnan(matrix[rows])).all(axis=0).sum()) * len(rows) if rows else 0

    while len(keep) > 2:
        best = max(keep, key=lambda r: used([k for k in keep if k != r]))
        if used([k for k in keep if k != best]) <= used(keep):
            break
        keep.remove(best)
    return keep


def agreement(rows: Iterable[dict]) -> dict[str, Any]:
    """Inter-rater agreement of MOS: ICC(2,1), ICC(2,k) and Krippendorff's ordinal alpha.

    ICC uses the items every rater scored (raters with few ratings are left out
    when that keeps more items; ``icc_raters`` lists those used); alpha uses all
    items scored by at least two raters. Values are NaN when there is too little data (fewer than
    two raters, or no variation).
    """
    import krippendorff

    matrix, raters, items = ratings_matrix(rows)
    out: dict[str, Any] = {"n_raters": len(raters), "n_items": len(items)}
    keep = _complete_block(matrix)
    complete = matrix[np.ix_(keep, ~np.isnan(matrix[keep]).any(axis=0))] if keep else np.empty((0, 0))
    if complete.shape[0] >= 2 and complete.shape[1] >= 2:
        icc = icc2(complete.T)
    else:
        icc = {"icc2_1": math.nan, "icc2_k": math.nan, "n_targets": int(complete.shape[1])}
    out.update(
        icc2_1=icc["icc2_1"], icc2_k=icc["icc2_k"], icc_n_items=icc["n_targets"],
        icc_raters=[raters[i] for i in keep],
    )
    pairable = matrix[:, (~np.isnan(matrix)).sum(axis=0) >= 2] if matrix.size else matrix
    alpha = math.nan
    if pairable.size and len(raters) >= 2 and len(np.unique(pairable[~np.isnan(pairable)])) >= 2:
        # The ordinal metric depends on the whole scale, including levels nobody
        # used, so the domain is the 1-5 MOS scale (plus any other observed value).
        observed = np.unique(pairable[~np.isnan(pairable)])
        domain = np.union1d(np.arange(1, 6, dtype=float), observed)
        alpha = float(
            krippendorff.alpha(reliability_data=pairable, level_of_measurement="ordinal", value_domain=domain)
        )
    out.update(krippendorff_alpha_ordinal=alpha, alpha_n_items=int(pairable.shape[1]) if pairable.ndim == 2 else 0)
    return out


def proportion_ci(successes: int, trials: int, method: str = "wilson", confidence: float = 0.95) -> tuple[float, float]:
    """Binomial CI of a proportion (``method``: ``"wilson"`` or ``"exact"`` = Clopper-Pearson), via scipy.

    Examples
    --------
    >>> [round(v, 4) for v in proportion_ci(81, 263)]  # Newcombe 1998, Table I
    [0.2553, 0.3662]
    """
    if trials <= 0:
        return (math.nan, math.nan)
    method = {"clopper-pearson": "exact"}.get(method, method)
    if method not in ("wilson", "exact", "wilsoncc"):
        raise NeurosynthError(f"unknown CI method {method!r}; use wilson or clopper-pearson")
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method=method)
    return float(ci.low), float(ci.high)


def _accuracy(correct: list[bool], method: str) -> dict[str, Any]:
    n, k = len(correct), int(sum(correct))
    if n == 0:
        return {"n": 0, "correct": 0, "accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_vs_chance": math.nan}
    low, high = proportion_ci(k, n, method)
    p = float(stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue)
    return {
        "n": n, "correct": k, "accuracy": k / n, "ci_low": low, "ci_high": high,
        "p_vs_chance": p, "differs_from_chance": bool(p < 0.05),
    }


def turing_accuracy(rows: Iterable[dict], method: str = "wilson", acquired: str = ACQUIRED) -> dict[str, Any]:
    """Accuracy of real-vs-synthetic choices, overall and per condition.

    A choice is correct when ``"real"`` is chosen for ``acquired`` and
    ``"synthetic"`` for any other condition. Per synthetic condition,
    ``1 - accuracy`` is the rate at which raters were fooled.
    """
    chosen = [r for r in _check_rows(rows) if r.get("turing_choice") in ("real", "synthetic")]
    per: dict[str, list[bool]] = defaultdict(list)
    for row in chosen:
        per[row["condition"]].append((row["turing_choice"] == "real") == (row["condition"] == acquired))
    overall = _accuracy([c for v in per.values() for c in v], method)
    overall["method"] = method
    overall["by_condition"] = {cond: _accuracy(v, method) for cond, v in sorted(per.items())}
    return overall


def rank_tests(rows: Iterable[dict], acquired: str = ACQUIRED) -> dict[str, dict[str, Any]]:
    """MOS of each model vs ``acquired``: Wilcoxon signed-rank (paired) and Mann-Whitney U.

    Pairs are the same rater scoring the same case (in the same study) under
    both conditions. p-values are two-sided and not corrected for multiple models.
    """
    rows = _check_rows(rows)
    by_cond: dict[str, dict[tuple, float]] = defaultdict(dict)
    for row in rows:
        by_cond[row["condition"]][(row.get("study"), row["rater"], row["case_id"])] = float(row["score"])
    out: dict[str, dict[str, Any]] = {}
    if acquired not in by_cond:
        return out
    ref = by_cond[acquired]
    for cond, scores in sorted(by_cond.items()):
        if cond == acquired:
            continue
        keys = sorted(set(scores) & set(ref), key=str)
        diffs = np.array([scores[k] - ref[k] for k in keys])
        res: dict[str, Any] = {"n_pairs": len(keys), "median_difference": float(np.median(diffs)) if len(keys) else math.nan}
        if len(keys) >= 1 and np.any(diffs != 0):
            w = stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
            res.update(wilcoxon_statistic=float(w.statistic), wilcoxon_p=float(w.pvalue))
        else:
            res.update(wilcoxon_statistic=math.nan, wilcoxon_p=math.nan if not len(keys) else 1.0)
        a, b = list(scores.values()), list(ref.values())
        if a and b:
            u = stats.mannwhitneyu(a, b, alternative="two-sided")
            res.update(mannwhitney_u=float(u.statistic), mannwhitney_p=float(u.pvalue), n_model=len(a), n_acquired=len(b))
        out[cond] = res
    return out


def summarize(rows: Iterable[dict], ci_method: str = "wilson", acquired: str = ACQUIRED) -> dict[str, Any]:
    """All study statistics of current ratings as a JSON-serialisable dict.

    Keys: ``n_ratings``, ``raters``, ``conditions``, ``mos`` (per condition),
    ``mos_by_rater`` (``{rater: {condition: ...}}``), ``agreement``, ``turing``,
    ``rank_tests``. Sub-score means are under ``subscores`` when present.
    """
    rows = _check_rows(rows)
    if not rows:
        raise NeurosynthError("no ratings to summarise (check --db and --study)")
    by_rater: dict[str, dict] = defaultdict(dict)
    for (rater, cond), v in mos_table(rows, by=("rater", "condition")).items():
        by_rater[rater][cond] = v
    from .ratings import SUBSCORES

    subscores = {}
    for name in SUBSCORES:
        vals: dict[str, list] = defaultdict(list)
        for row in rows:
            if row.get(name) is not None:
                vals[row["condition"]].append(row[name])
        if vals:
            subscores[name] = {c: mean_ci(v) for c, v in sorted(vals.items())}
    summary = {
        "n_ratings": len(rows),
        "raters": sorted({r["rater"] for r in rows}),
        "studies": sorted({str(r.get("study")) for r in rows if r.get("study") is not None}),
        "conditions": sorted({r["condition"] for r in rows}),
        "mos": mos_table(rows),
        "mos_by_rater": dict(sorted(by_rater.items())),
        "subscores": subscores,
        "agreement": agreement(rows),
        "turing": turing_accuracy(rows, ci_method, acquired),
        "rank_tests": rank_tests(rows, acquired),
    }
    return _clean(summary)


def _clean(obj):
    """NaN -> None so the summary is valid JSON; numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_p(value) -> str:
    return "n/a" if value is None else "<0.0001" if value < 1e-4 else f"{value:.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text report of :func:`summarize`'s result."""
    lines = [
        f"{summary['n_ratings']} current ratings by {len(summary['raters'])} rater(s)"
        + (f" in study {', '.join(summary['studies'])}" if summary["studies"] else ""),
        "",
        "MOS per condition (mean, 95% CI, n):",
    ]
    for cond, m in summary["mos"].items():
        lines.append(f"  {cond:<24} {_fmt(m['mean'])}  [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]  n={m['n']}")
    lines.append("MOS per rater:")
    for rater, conds in summary["mos_by_rater"].items():
        parts = ", ".join(f"{c} {_fmt(m['mean'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]" for c, m in conds.items())
        lines.append(f"  {rater}: {parts}")
    for name, conds in summary.get("subscores", {}).items():
        parts = ", ".join(f"{c} {_fmt(m['mean'])}" for c, m in conds.items())
        lines.append(f"{name.replace('_', ' ')} (mean): {parts}")
    a = summary["agreement"]
    lines += [
        "",
        f"Agreement ({a['n_raters']} raters): ICC(2,1) = {_fmt(a['icc2_1'], 3)}, ICC(2,k) = {_fmt(a['icc2_k'], 3)} "
        f"on {a['icc_n_items']} items rated by {len(a['icc_raters'])} raters; Krippendorff's alpha (ordinal) = "
        f"{_fmt(a['krippendorff_alpha_ordinal'], 3)} on {a['alpha_n_items']} items",
    ]
    t = summary["turing"]
    if t["n"]:
        lines.append(
            f"Real-vs-synthetic accuracy: {_fmt(t['accuracy'], 3)} ({t['correct']}/{t['n']}), "
            f"95% CI ({t['method']}) [{_fmt(t['ci_low'], 3)}, {_fmt(t['ci_high'], 3)}], "
            f"p vs chance = {_fmt_p(t['p_vs_chance'])}"
            + (" (differs from chance)" if t["differs_from_chance"] else " (not different from chance)")
        )
        for cond, c in t["by_condition"].items():
            lines.append(
                f"  {cond:<24} {_fmt(c['accuracy'], 3)} ({c['correct']}/{c['n']}) "
                f"[{_fmt(c['ci_low'], 3)}, {_fmt(c['ci_high'], 3)}] p={_fmt_p(c['p_vs_chance'])}"
            )
    else:
        lines.append("Real-vs-synthetic: no choices recorded")
    if summary["rank_tests"]:
        lines.append(f"MOS vs {ACQUIRED} (two-sided, uncorrected):")
        for cond, r in summary["rank_tests"].items():
            lines.append(
                f"  {cond:<24} Wilcoxon p={_fmt_p(r.get('wilcoxon_p'))} (n pairs {r['n_pairs']}, "
                f"median diff {_fmt(r.get('median_difference'), 1)}); Mann-Whitney p={_fmt_p(r.get('mannwhitney_p'))}"
            )
    return "\n".join(lines)


def plot_distributions(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Save a PNG of the score distribution per condition, with MOS and 95 % CI.

    Uses matplotlib's object API on an Agg canvas (no global pyplot state, safe
    off the GUI thread).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _check_rows(rows)
    if not rows:
        raise NeurosynthError("no ratings to plot")
    table = mos_table(rows)
    conds = list(table)
    counts = np.zeros((len(conds), 5))
    for row in rows:
        counts[conds.index(row["condition"]), int(row["score"]) - 1] += 1
    fractions = counts / counts.sum(axis=1, keepdims=True)

    fig = Figure(figsize=(max(6.0, 1.3 * len(conds) + 3), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#b2182b", "#ef8a62", "#f7f7f7", "#67a9cf", "#2166ac"]
    bottom = np.zeros(len(conds))
    x = np.arange(len(conds))
    for s in range(5):
        ax.bar(x, fractions[:, s], bottom=bottom, color=colors[s], edgecolor="0.3", linewidth=0.5, width=0.6, label=str(s + 1))
        bottom += fractions[:, s]
    ax.set_ylabel("fraction of ratings")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, [f"{c}\n(n={table[c]['n']})" for c in conds])
    ax2 = ax.twinx()
    means = np.array([table[c]["mean"] for c in conds])
    low = np.array([table[c]["ci_low"] for c in conds])
    high = np.array([table[c]["ci_high"] for c in conds])
    err = np.vstack([np.nan_to_num(means - low), np.nan_to_num(high - means)])
    ax2.errorbar(x, means, yerr=err, fmt="D", color="black", markerfacecolor="white", markersize=7, elinewidth=1.8, capsize=5, label="MOS, 95% CI")
    ax2.set_ylim(0.5, 5.5)
    ax2.set_ylabel("MOS")
    ax.legend(title="score", loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize=8)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.12, 0.35), fontsize=8)
    ax.set_title("Score distribution per condition")
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise NeurosynthError(f"cannot write plot {path}: {exc.strerror}") from None
    return path
