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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypedDict, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from .atomic import atomic_path
from .errors import NeurosynthError

__all__ = [
    "ACQUIRED",
    "Accuracy",
    "Agreement",
    "ICC",
    "Item",
    "MeanCI",
    "RankTest",
    "Row",
    "Summary",
    "TuringResult",
    "agreement",
    "format_summary",
    "icc2",
    "mean_ci",
    "mos_table",
    "plot_distributions",
    "plot_format",
    "proportion_ci",
    "rank_tests",
    "ratings_matrix",
    "summarize",
    "turing_accuracy",
]

#: The condition that holds real (acquired) images.
ACQUIRED = "acquired"

#: A rating row: at least ``rater``, ``case_id``, ``condition`` and ``score``
#: (a :class:`~napari_neurosynth.ratings.RatingRow`, or a plain dict).
Row: TypeAlias = Mapping[str, Any]
#: What raters score: ``(study, case id, condition)``.
Item: TypeAlias = tuple[Any, Any, Any]


class MeanCI(TypedDict):
    """:func:`mean_ci`: mean, SD and Student-t CI (NaN where undefined; None in :func:`summarize`)."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


class ICC(TypedDict):
    """:func:`icc2`: ICC(2,1) and ICC(2,k) and the table size."""

    icc2_1: float
    icc2_k: float
    n_targets: int
    n_raters: int


class Agreement(TypedDict):
    """:func:`agreement`: inter-rater agreement of MOS."""

    n_raters: int
    n_items: int
    icc2_1: float
    icc2_k: float
    icc_n_items: int
    icc_raters: list[str]
    krippendorff_alpha_ordinal: float
    alpha_n_items: int


class _AccuracyFields(TypedDict):
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    p_vs_chance: float


class Accuracy(_AccuracyFields, total=False):
    """Accuracy of real-vs-synthetic choices with its binomial CI (``differs_from_chance`` only when n > 0)."""

    differs_from_chance: bool


class TuringResult(Accuracy):
    """:func:`turing_accuracy`: overall accuracy, the CI method, and the same per condition."""

    method: str
    by_condition: dict[str, Accuracy]


class RankTest(TypedDict, total=False):
    """:func:`rank_tests`, per model: Wilcoxon signed-rank (paired) and Mann-Whitney U against ``acquired``."""

    n_pairs: int
    median_difference: float
    wilcoxon_statistic: float
    wilcoxon_p: float
    mannwhitney_u: float
    mannwhitney_p: float
    n_model: int
    n_acquired: int


class _SummaryFields(TypedDict):
    n_ratings: int
    raters: list[str]
    studies: list[str]
    conditions: list[str]
    mos: dict[str, MeanCI]
    mos_by_rater: dict[str, dict[str, MeanCI]]
    subscores: dict[str, dict[str, MeanCI]]
    agreement: Agreement
    turing: TuringResult
    rank_tests: dict[str, RankTest]


class Summary(_SummaryFields, total=False):
    """:func:`summarize`: every statistic, JSON-ready (non-finite numbers are ``None``, keys are strings).

    ``plot`` is added by ``neurosynth study summary --plot``.
    """

    plot: str


def _item(row: Row) -> Item:
    return (row.get("study"), row["case_id"], row["condition"])


def _check_rows(rows: Iterable[Row]) -> list[Row]:
    rows = list(rows)
    for row in rows:
        for key in ("rater", "case_id", "condition", "score"):
            if key not in row:
                raise NeurosynthError(f"rating row lacks {key!r}: {row}")
    return [r for r in rows if r.get("is_current", 1) in (1, True, "1")]


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> MeanCI:
    """Mean, SD and a Student-t confidence interval of ``values``.

    Returns ``n``, ``mean``, ``sd``, ``ci_low``, ``ci_high`` (CI is NaN when n < 2,
    and collapses to the mean when all values are equal).

    Examples
    --------
    >>> r = mean_ci([3, 4, 5])
    >>> r["mean"], round(r["ci_low"], 3), round(r["ci_high"], 3)
    (4.0, 1.516, 6.484)
    >>> mean_ci([4, 4]), mean_ci([2])["ci_low"]
    ({'n': 2, 'mean': 4.0, 'sd': 0.0, 'ci_low': 4.0, 'ci_high': 4.0}, nan)
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


def mos_table(rows: Iterable[Row], by: Sequence[str] = ("condition",), confidence: float = 0.95) -> dict[Any, MeanCI]:
    """MOS with CI grouped by ``by`` (row keys); keys are the group value (or tuple of values).

    Examples
    --------
    >>> scores = {"a": {"x": (5, 3), "y": (4, 2), "z": (5, 4), "w": (3, 3)},
    ...           "b": {"x": (4, 3), "y": (4, 1), "z": (5, 3), "w": (2, 2)}}
    >>> rows = [{"rater": r, "case_id": c, "condition": cond, "score": s}
    ...         for r, cases in scores.items() for c, pair in cases.items()
    ...         for cond, s in zip(("acquired", "model"), pair)]
    >>> {cond: (m["n"], m["mean"]) for cond, m in mos_table(rows).items()}
    {'acquired': (8, 4.0), 'model': (8, 2.625)}
    >>> list(mos_table(rows, by=("rater", "condition")))
    [('a', 'acquired'), ('a', 'model'), ('b', 'acquired'), ('b', 'model')]
    """
    groups: dict[Any, list[float]] = defaultdict(list)
    for row in _check_rows(rows):
        key = tuple(row[k] for k in by)
        groups[key[0] if len(key) == 1 else key].append(row["score"])
    return {key: mean_ci(vals, confidence) for key, vals in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def ratings_matrix(rows: Iterable[Row], field: str = "score") -> tuple[NDArray[np.float64], list[Any], list[Item]]:
    """Raters x items matrix of ``field`` (NaN where a rater did not rate an item).

    Returns the matrix, the rater ids (rows) and the items (columns).

    Examples
    --------
    >>> rows = [{"rater": "a", "case_id": "x", "condition": "acquired", "score": 4},
    ...         {"rater": "b", "case_id": "x", "condition": "acquired", "score": 5},
    ...         {"rater": "b", "case_id": "y", "condition": "acquired", "score": 2}]
    >>> matrix, raters, items = ratings_matrix(rows)
    >>> matrix
    array([[ 4., nan],
           [ 5.,  2.]])
    >>> raters, items
    (['a', 'b'], [(None, 'x', 'acquired'), (None, 'y', 'acquired')])
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


def icc2(targets_by_raters: ArrayLike) -> ICC:
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
    >>> icc2([[1, 2]])["icc2_1"]   # one target: undefined
    nan
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


def _complete_block(matrix: NDArray[np.float64]) -> list[int]:
    """Raters (row indices) whose shared, completely rated items are the most.

    ICC needs a complete items x raters table. A rater who scored only a few
    items (a pilot, an import) would otherwise shrink it to nothing, so raters are
    dropped greedily while that increases the number of ratings in the complete
    table (items rated by all remaining raters x raters).
    """
    keep = list(range(matrix.shape[0]))

    def used(rows: list[int]) -> int:  # ratings in the complete block of these raters
        return int((~np.isnan(matrix[rows])).all(axis=0).sum()) * len(rows) if rows else 0

    while len(keep) > 2:
        best = max(keep, key=lambda r: used([k for k in keep if k != r]))
        if used([k for k in keep if k != best]) <= used(keep):
            break
        keep.remove(best)
    return keep


def agreement(rows: Iterable[Row]) -> Agreement:
    """Inter-rater agreement of MOS: ICC(2,1), ICC(2,k) and Krippendorff's ordinal alpha.

    ICC uses the items every rater scored (raters with few ratings are left out
    when that keeps more items; ``icc_raters`` lists those used); alpha uses all
    items scored by at least two raters. Values are NaN when there is too little data (fewer than
    two raters, or no variation).

    Examples
    --------
    >>> scores = {"a": {"x": (5, 3), "y": (4, 2), "z": (5, 4), "w": (3, 3)},
    ...           "b": {"x": (4, 3), "y": (4, 1), "z": (5, 3), "w": (2, 2)}}
    >>> rows = [{"rater": r, "case_id": c, "condition": cond, "score": s}
    ...         for r, cases in scores.items() for c, pair in cases.items()
    ...         for cond, s in zip(("acquired", "model"), pair)]
    >>> a = agreement(rows)
    >>> round(a["icc2_1"], 3), round(a["icc2_k"], 3), round(a["krippendorff_alpha_ordinal"], 3)
    (0.804, 0.892, 0.8)
    >>> a["icc_raters"], a["icc_n_items"], a["alpha_n_items"]
    (['a', 'b'], 8, 8)
    """
    import krippendorff

    matrix, raters, items = ratings_matrix(rows)
    keep = _complete_block(matrix)
    rows_kept = np.asarray(keep, dtype=np.intp)
    complete = matrix[np.ix_(rows_kept, ~np.isnan(matrix[keep]).any(axis=0))] if keep else np.empty((0, 0))
    if complete.shape[0] >= 2 and complete.shape[1] >= 2:
        icc = icc2(complete.T)
    else:
        icc = {"icc2_1": math.nan, "icc2_k": math.nan, "n_targets": int(complete.shape[1]), "n_raters": len(keep)}
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
    return {
        "n_raters": len(raters),
        "n_items": len(items),
        "icc2_1": icc["icc2_1"],
        "icc2_k": icc["icc2_k"],
        "icc_n_items": icc["n_targets"],
        "icc_raters": [raters[i] for i in keep],
        "krippendorff_alpha_ordinal": alpha,
        "alpha_n_items": int(pairable.shape[1]) if pairable.ndim == 2 else 0,
    }


def proportion_ci(successes: int, trials: int, method: str = "wilson", confidence: float = 0.95) -> tuple[float, float]:
    """Binomial CI of a proportion (``method``: ``"wilson"`` or ``"exact"`` = Clopper-Pearson), via scipy.

    Examples
    --------
    >>> [round(v, 4) for v in proportion_ci(81, 263)]  # Newcombe 1998, Table I
    [0.2553, 0.3662]
    >>> [round(v, 4) for v in proportion_ci(81, 263, method="clopper-pearson")]
    [0.2527, 0.3676]
    >>> proportion_ci(0, 0)
    (nan, nan)
    """
    if trials <= 0:
        return (math.nan, math.nan)
    method = {"clopper-pearson": "exact"}.get(method, method)
    if method not in ("wilson", "exact", "wilsoncc"):
        raise NeurosynthError(f"unknown CI method {method!r}; use wilson or clopper-pearson")
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method=method)
    return float(ci.low), float(ci.high)


def _accuracy(correct: list[bool], method: str) -> Accuracy:
    n, k = len(correct), int(sum(correct))
    if n == 0:
        return {
            "n": 0,
            "correct": 0,
            "accuracy": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p_vs_chance": math.nan,
        }
    low, high = proportion_ci(k, n, method)
    p = float(stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue)
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n,
        "ci_low": low,
        "ci_high": high,
        "p_vs_chance": p,
        "differs_from_chance": bool(p < 0.05),
    }


def turing_accuracy(rows: Iterable[Row], method: str = "wilson", acquired: str = ACQUIRED) -> TuringResult:
    """Accuracy of real-vs-synthetic choices, overall and per condition.

    A choice is correct when ``"real"`` is chosen for ``acquired`` and
    ``"synthetic"`` for any other condition. Per synthetic condition,
    ``1 - accuracy`` is the rate at which raters were fooled.

    Examples
    --------
    >>> rows = [{"rater": "a", "case_id": c, "condition": cond, "score": 3, "turing_choice": choice}
    ...         for c, cond, choice in [("x", "acquired", "real"), ("y", "acquired", "real"),
    ...                                 ("x", "model", "real"), ("y", "model", "synthetic")]]
    >>> t = turing_accuracy(rows)
    >>> t["n"], t["correct"], t["accuracy"], t["method"], t["differs_from_chance"]
    (4, 3, 0.75, 'wilson', False)
    >>> {cond: c["accuracy"] for cond, c in t["by_condition"].items()}   # raters fooled half the time by model
    {'acquired': 1.0, 'model': 0.5}
    """
    chosen = [r for r in _check_rows(rows) if r.get("turing_choice") in ("real", "synthetic")]
    per: dict[str, list[bool]] = defaultdict(list)
    for row in chosen:
        per[row["condition"]].append((row["turing_choice"] == "real") == (row["condition"] == acquired))
    overall = _accuracy([c for v in per.values() for c in v], method)
    return {
        **overall,
        "method": method,
        "by_condition": {cond: _accuracy(v, method) for cond, v in sorted(per.items())},
    }


def rank_tests(rows: Iterable[Row], acquired: str = ACQUIRED) -> dict[str, RankTest]:
    """MOS of each model vs ``acquired``: Wilcoxon signed-rank (paired) and Mann-Whitney U.

    Pairs are the same rater scoring the same case (in the same study) under
    both conditions. p-values are two-sided and not corrected for multiple models.

    Examples
    --------
    >>> scores = {"a": {"x": (5, 3), "y": (4, 2), "z": (5, 4), "w": (3, 3)},
    ...           "b": {"x": (4, 3), "y": (4, 1), "z": (5, 3), "w": (2, 2)}}
    >>> rows = [{"rater": r, "case_id": c, "condition": cond, "score": s}
    ...         for r, cases in scores.items() for c, pair in cases.items()
    ...         for cond, s in zip(("acquired", "model"), pair)]
    >>> r = rank_tests(rows)["model"]
    >>> r["n_pairs"], r["median_difference"], r["wilcoxon_p"], round(r["mannwhitney_p"], 4)
    (8, -1.5, 0.03125, 0.0232)
    >>> rank_tests([row for row in rows if row["condition"] == "model"])   # nothing to compare with
    {}
    """
    rows = _check_rows(rows)
    by_cond: dict[str, dict[tuple[Any, Any, Any], float]] = defaultdict(dict)
    for row in rows:
        by_cond[row["condition"]][(row.get("study"), row["rater"], row["case_id"])] = float(row["score"])
    out: dict[str, RankTest] = {}
    if acquired not in by_cond:
        return out
    ref = by_cond[acquired]
    for cond, scores in sorted(by_cond.items()):
        if cond == acquired:
            continue
        keys = sorted(set(scores) & set(ref), key=str)
        diffs = np.array([scores[k] - ref[k] for k in keys])
        res: RankTest = {"n_pairs": len(keys), "median_difference": float(np.median(diffs)) if len(keys) else math.nan}
        if len(keys) >= 1 and np.any(diffs != 0):
            w = stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
            res["wilcoxon_statistic"] = float(w.statistic)
            res["wilcoxon_p"] = float(w.pvalue)
        else:
            res["wilcoxon_statistic"] = math.nan
            res["wilcoxon_p"] = math.nan if not len(keys) else 1.0
        a, b = list(scores.values()), list(ref.values())
        if a and b:
            u = stats.mannwhitneyu(a, b, alternative="two-sided")
            res["mannwhitney_u"] = float(u.statistic)
            res["mannwhitney_p"] = float(u.pvalue)
            res["n_model"] = len(a)
            res["n_acquired"] = len(b)
        out[cond] = res
    return out


def summarize(rows: Iterable[Row], ci_method: str = "wilson", acquired: str = ACQUIRED) -> Summary:
    """All study statistics of current ratings as a JSON-serialisable dict.

    Keys: ``n_ratings``, ``raters``, ``conditions``, ``mos`` (per condition),
    ``mos_by_rater`` (``{rater: {condition: ...}}``), ``agreement``, ``turing``,
    ``rank_tests``. Sub-score means are under ``subscores`` when present.
    NaN and infinite numbers become ``None`` (valid JSON).

    Examples
    --------
    >>> import json
    >>> rows = [{"rater": r, "case_id": c, "condition": "acquired", "score": 4, "realism": 4}
    ...         for r in ("a", "b") for c in ("x", "y")]
    >>> s = summarize(rows)
    >>> s["n_ratings"], s["raters"], s["mos"]["acquired"]["mean"], s["subscores"]["realism"]["acquired"]["n"]
    (4, ['a', 'b'], 4.0, 4)
    >>> s["agreement"]["icc2_1"], s["turing"]["n"], s["rank_tests"]   # no variation, no choices, no model
    (None, 0, {})
    >>> json.loads(json.dumps(s)) == s
    True
    >>> summarize([])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: no ratings to summarise (check --db and --study)
    """
    rows = _check_rows(rows)
    if not rows:
        raise NeurosynthError("no ratings to summarise (check --db and --study)")
    by_rater: dict[str, dict[str, MeanCI]] = defaultdict(dict)
    for (rater, cond), v in mos_table(rows, by=("rater", "condition")).items():
        by_rater[rater][cond] = v
    from .ratings import SUBSCORES

    subscores: dict[str, dict[str, MeanCI]] = {}
    for name in SUBSCORES:
        vals: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            if row.get(name) is not None:
                vals[row["condition"]].append(row[name])
        if vals:
            subscores[name] = {c: mean_ci(v) for c, v in sorted(vals.items())}
    summary: Summary = {
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
    return cast(Summary, _clean(summary))


def _clean(obj: object) -> Any:
    """NaN -> None so the summary is valid JSON; numpy scalars -> Python (:func:`.export.jsonable`)."""
    from .export import jsonable

    return jsonable(obj)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_p(value: float | None) -> str:
    return "n/a" if value is None else "<0.0001" if value < 1e-4 else f"{value:.4f}"


def format_summary(summary: Summary) -> str:
    """A plain-text report of :func:`summarize`'s result.

    Examples
    --------
    >>> scores = {"a": {"x": (5, 3), "y": (4, 2), "z": (5, 4), "w": (3, 3)},
    ...           "b": {"x": (4, 3), "y": (4, 1), "z": (5, 3), "w": (2, 2)}}
    >>> rows = [{"rater": r, "case_id": c, "condition": cond, "score": s}
    ...         for r, cases in scores.items() for c, pair in cases.items()
    ...         for cond, s in zip(("acquired", "model"), pair)]
    >>> print(format_summary(summarize(rows)))
    16 current ratings by 2 rater(s)
    <BLANKLINE>
    MOS per condition (mean, 95% CI, n):
      acquired                 4.00  [3.11, 4.89]  n=8
      model                    2.62  [1.86, 3.39]  n=8
    MOS per rater:
      a: acquired 4.25 [2.73, 5.77], model 3.00 [1.70, 4.30]
      b: acquired 3.75 [1.75, 5.75], model 2.25 [0.73, 3.77]
    <BLANKLINE>
    Agreement (2 raters): ICC(2,1) = 0.804, ICC(2,k) = 0.892 on 8 items rated by 2 raters; ... = 0.800 on 8 items
    Real-vs-synthetic: no choices recorded
    MOS vs acquired (two-sided, uncorrected):
      model                    Wilcoxon p=0.0312 (n pairs 8, median diff -1.5); Mann-Whitney p=0.0232
    """
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
        parts = ", ".join(
            f"{c} {_fmt(m['mean'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]" for c, m in conds.items()
        )
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


def plot_format(path: str | os.PathLike[str]) -> str:
    """The matplotlib format for a plot file name; an unknown extension is refused.

    Examples
    --------
    >>> plot_format("mos.PNG"), plot_format("out/mos.svg")
    ('png', 'svg')
    >>> plot_format("mos.xyz")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: cannot save a plot as mos.xyz: choose an extension among ...
    """
    from matplotlib.backend_bases import FigureCanvasBase

    p = Path(path)
    known = FigureCanvasBase.get_supported_filetypes()
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in known:
        raise NeurosynthError(f"cannot save a plot as {p.name}: choose an extension among {', '.join(sorted(known))}")
    return fmt


def save_plot(fig: Any, path: Path, fmt: str) -> Path:
    """Write a matplotlib figure atomically as ``fmt``; a write error is one line naming the file."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt)
    except OSError as exc:
        raise NeurosynthError(f"cannot write plot {path}: {exc.strerror}") from None
    return path


def plot_distributions(rows: Iterable[Row], path: str | os.PathLike[str]) -> Path:
    """Save a PNG of the score distribution per condition, with MOS and 95 % CI.

    Uses matplotlib's object API on an Agg canvas (no global pyplot state, safe
    off the GUI thread).

    Examples
    --------
    >>> import tempfile
    >>> rows = [{"rater": "a", "case_id": c, "condition": cond, "score": s}
    ...         for c, cond, s in [("x", "acquired", 5), ("y", "acquired", 4), ("x", "model", 2), ("y", "model", 3)]]
    >>> png = plot_distributions(rows, Path(tempfile.mkdtemp()) / "mos.png")
    >>> png.read_bytes()[:4]
    b'\\x89PNG'
    """
    path = Path(path).expanduser()
    fmt = plot_format(path)
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
        ax.bar(
            x,
            fractions[:, s],
            bottom=bottom,
            color=colors[s],
            edgecolor="0.3",
            linewidth=0.5,
            width=0.6,
            label=str(s + 1),
        )
        bottom += fractions[:, s]
    ax.set_ylabel("fraction of ratings")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, [f"{c}\n(n={table[c]['n']})" for c in conds])
    ax2 = ax.twinx()
    means = np.array([table[c]["mean"] for c in conds])
    low = np.array([table[c]["ci_low"] for c in conds])
    high = np.array([table[c]["ci_high"] for c in conds])
    err = np.vstack([np.nan_to_num(means - low), np.nan_to_num(high - means)])
    ax2.errorbar(
        x,
        means,
        yerr=err,
        fmt="D",
        color="black",
        markerfacecolor="white",
        markersize=7,
        elinewidth=1.8,
        capsize=5,
        label="MOS, 95% CI",
    )
    ax2.set_ylim(0.5, 5.5)
    ax2.set_ylabel("MOS")
    ax.legend(title="score", loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize=8)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.12, 0.35), fontsize=8)
    ax.set_title("Score distribution per condition")
    fig.tight_layout()
    return save_plot(fig, path, fmt)
