"""Detection statistics of reader studies: Turing-test and LROC AUCs, bootstrap CIs, iMRMC export.

Two receiver-operating tasks come out of a study with typed answers:

* **Turing** (real vs synthetic): every image read is a case; truth is 1 for a
  synthetic condition, 0 for the acquired one; the rating is the reader's
  suspicion that the image is synthetic on a 1-10 scale built from the choice and
  its 1-5 confidence (``real``, confidence 5 -> 1 ... ``synthetic``, confidence 5 ->
  10). Per model condition the AUC compares that model's images (positives) with
  the acquired images (negatives): 0.5 means readers cannot tell them apart,
  which is what a generator aims for.
* **LROC** (lesion localisation): every case read under a condition is a case;
  truth is 1 when its ground-truth mask holds a lesion; the rating is the
  case's LROC-ready score of :mod:`napari_neurosynth.localization` (a detection
  counts only where a mark hits the lesion).

For each task and *modality* (a condition; ``session/condition`` in a crossover
study) the AUC is the Mann-Whitney statistic (ties count one half) per reader,
averaged over readers. Its 95 % CI is a percentile bootstrap that resamples
readers and cases (subjects: all images of a subject go together) with
replacement, each independently: the two-way random-effects bootstrap of MRMC
analysis (it overstates the variance slightly, Gallas et al. 2009; iMRMC, fed
with :func:`write_imrmc`, gives the unbiased U-statistic analysis).

Examples
--------
A reader who calls every synthetic image synthetic (confidence 4) and every
acquired image real has AUC 1 for that model:

>>> rows = [{"rater": r, "case_id": c, "condition": cond, "turing": choice, "turing_confidence": 4}
...         for r in ("a", "b") for c in ("s1", "s2", "s3")
...         for cond, choice in (("acquired", "real"), ("model", "synthetic"))]
>>> result = turing_auc(rows, n_boot=200)["model"]
>>> result.auc, result.ci_low, result.n_readers, result.n_cases
(1.0, 1.0, 2, 6)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .atomic import atomic_write_text
from .errors import NeurosynthError

__all__ = [
    "AUCResult",
    "ScoreRow",
    "auc",
    "format_auc_table",
    "imrmc_text",
    "localisation_tables",
    "lroc_auc",
    "lroc_scores",
    "plot_auc",
    "reader_averaged_auc",
    "turing_auc",
    "turing_scores",
    "write_imrmc",
]

ACQUIRED = "acquired"


@dataclass(frozen=True)
class ScoreRow:
    """One reader's rating of one case under one modality, with the case's truth (1 positive, 0 negative).

    ``cluster`` groups cases the bootstrap draws together (a subject's images).
    """

    reader: str
    case: str
    modality: str
    score: float
    truth: int
    cluster: str = ""


@dataclass(frozen=True)
class AUCResult:
    """Reader-averaged AUC of one modality, with its bootstrap 95 % CI and per-reader AUCs."""

    auc: float
    ci_low: float
    ci_high: float
    per_reader: dict[str, float] = field(default_factory=dict)
    n_readers: int = 0
    n_cases: int = 0
    n_positive: int = 0
    n_negative: int = 0
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auc(positives: Sequence[float] | NDArray[Any], negatives: Sequence[float] | NDArray[Any]) -> float:
    """Area under the ROC curve: P(positive > negative) + P(tie) / 2 (the Mann-Whitney U / (n1 n0)).

    Examples
    --------
    >>> auc([3, 4, 5], [1, 2]), auc([1, 2], [1, 2]), auc([1], [2])
    (1.0, 0.5, 0.0)
    >>> auc([], [1])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: an AUC needs positive and negative cases (got 0 and 1)
    """
    pos = np.asarray(positives, dtype=float)
    neg = np.asarray(negatives, dtype=float)
    if not len(pos) or not len(neg):
        raise NeurosynthError(f"an AUC needs positive and negative cases (got {len(pos)} and {len(neg)})")
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return float(kernel.mean())


def reader_averaged_auc(
    rows: Iterable[ScoreRow], n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, AUCResult]:
    """Per modality: the reader-averaged AUC and its reader-and-case bootstrap CI.

    Each reader's AUC uses the cases that reader scored; readers without both a
    positive and a negative case are left out. A bootstrap replicate draws
    readers and case clusters with replacement (the same draw for every modality,
    so modalities stay paired); a replicate whose draw holds no positive or no
    negative case is drawn again.

    Examples
    --------
    A constructed study whose answer is known: reader ``a`` ranks all positives
    above all negatives (AUC 1), reader ``b`` ranks them at random (AUC 0.5 by
    construction: every score tied), so the reader average is 0.75:

    >>> rows = [ScoreRow("a", f"c{i}", "m", float(i), int(i >= 5)) for i in range(10)]
    >>> rows += [ScoreRow("b", f"c{i}", "m", 1.0, int(i >= 5)) for i in range(10)]
    >>> r = reader_averaged_auc(rows, n_boot=500)["m"]
    >>> r.auc, r.per_reader, bool(r.ci_low <= 0.75 <= r.ci_high)
    (0.75, {'a': 1.0, 'b': 0.5}, True)
    """
    rows = list(rows)
    if not rows:
        raise NeurosynthError("no scores to compute an AUC from")
    readers = sorted({r.reader for r in rows})
    clusters = sorted({r.cluster or r.case for r in rows})
    cluster_index = {c: i for i, c in enumerate(clusters)}
    truth: dict[str, int] = {}
    for row in rows:
        if truth.setdefault(row.case, int(row.truth)) != int(row.truth):
            raise NeurosynthError(f"case {row.case!r} has two truths (0 and 1); each case has one")
    rng = np.random.default_rng(seed)
    n_boot = max(0, int(n_boot))
    draws_r = rng.integers(0, len(readers), size=(n_boot, len(readers)))
    draws_c = rng.integers(0, len(clusters), size=(n_boot, len(clusters)))
    results: dict[str, AUCResult] = {}
    for modality in dict.fromkeys(r.modality for r in rows):
        mine = [r for r in rows if r.modality == modality]
        pos_cases = sorted({r.case for r in mine if r.truth == 1})
        neg_cases = sorted({r.case for r in mine if r.truth == 0})
        if not pos_cases or not neg_cases:
            continue
        p_index = {c: i for i, c in enumerate(pos_cases)}
        n_index = {c: i for i, c in enumerate(neg_cases)}
        pos = np.full((len(readers), len(pos_cases)), np.nan)
        neg = np.full((len(readers), len(neg_cases)), np.nan)
        for r in mine:
            table, index = (pos, p_index) if r.truth == 1 else (neg, n_index)
            table[readers.index(r.reader), index[r.case]] = r.score
        # kernel[r, i, j] = 1, 1/2 or 0 for positive i vs negative j; valid where both were scored.
        valid = ~np.isnan(pos)[:, :, None] & ~np.isnan(neg)[:, None, :]
        kernel = np.where(valid, (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :]), 0.0)
        valid_f = valid.astype(float)
        pos_cluster = np.array([cluster_index[_cluster(mine, c)] for c in pos_cases])
        neg_cluster = np.array([cluster_index[_cluster(mine, c)] for c in neg_cases])

        def averaged(
            reader_w: NDArray[Any],
            pos_w: NDArray[Any],
            neg_w: NDArray[Any],
            kernel: NDArray[Any] = kernel,
            valid_f: NDArray[Any] = valid_f,
        ) -> float:
            # Each case weighted by how often the bootstrap drew it (1 for the point estimate).
            num = np.einsum("i,rij,j->r", pos_w, kernel, neg_w)
            den = np.einsum("i,rij,j->r", pos_w, valid_f, neg_w)
            ok = (den > 0) & (reader_w > 0)
            if not ok.any():
                return float("nan")
            return float(np.sum(reader_w[ok] * num[ok] / den[ok]) / np.sum(reader_w[ok]))

        ones_r = np.ones(len(readers))
        point = averaged(ones_r, np.ones(len(pos_cases)), np.ones(len(neg_cases)))
        per_reader = {}
        for k, reader in enumerate(readers):
            w = np.zeros(len(readers))
            w[k] = 1
            value = averaged(w, np.ones(len(pos_cases)), np.ones(len(neg_cases)))
            if np.isfinite(value):
                per_reader[reader] = value
        boots = []
        for b in range(n_boot):
            cluster_w = np.bincount(draws_c[b], minlength=len(clusters)).astype(float)
            reader_w = np.bincount(draws_r[b], minlength=len(readers)).astype(float)
            value = averaged(reader_w, cluster_w[pos_cluster], cluster_w[neg_cluster])
            if np.isfinite(value):
                boots.append(value)
        alpha = (1 - confidence) / 2
        low, high = (
            (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if boots else (np.nan, np.nan)
        )
        results[modality] = AUCResult(
            auc=point,
            ci_low=low,
            ci_high=high,
            per_reader=per_reader,
            n_readers=len(per_reader),
            n_cases=len(pos_cases) + len(neg_cases),
            n_positive=len(pos_cases),
            n_negative=len(neg_cases),
            n_boot=len(boots),
        )
    return results


def _cluster(rows: list[ScoreRow], case: str) -> str:
    for r in rows:
        if r.case == case:
            return r.cluster or r.case
    return case


# -- the Turing task ---------------------------------------------------------------------------
def _suspicion(choice: object, confidence: object) -> float | None:
    """Synthetic-suspicion on 1-10 from a real/synthetic choice and its 1-5 confidence."""
    if choice not in ("real", "synthetic") or not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
        return None
    c = int(confidence)
    return float(5 + c) if choice == "synthetic" else float(6 - c)


def turing_scores(rows: Iterable[Mapping[str, Any]], acquired: str = ACQUIRED) -> list[ScoreRow]:
    """Turing-task scores from answer dicts (``rater, case_id, condition, turing, turing_confidence``).

    Ratings-table rows (``turing_choice``) work too. Each model condition is a
    modality whose negatives are the acquired images of the same cases.

    Examples
    --------
    >>> turing_scores([{"rater": "a", "case_id": "c1", "condition": "acquired", "turing": "real",
    ...                 "turing_confidence": 5},
    ...                {"rater": "a", "case_id": "c1", "condition": "model", "turing_choice": "synthetic",
    ...                 "turing_confidence": 2}])
    [ScoreRow(reader='a', case='c1/acquired', modality='model', score=1.0, truth=0, cluster='c1'), \
ScoreRow(reader='a', case='c1/model', modality='model', score=7.0, truth=1, cluster='c1')]
    """
    rows = list(rows)
    models = sorted({str(r["condition"]) for r in rows if r["condition"] != acquired})
    out: list[ScoreRow] = []
    for row in rows:
        choice = row.get("turing", row.get("turing_choice"))
        score = _suspicion(choice, row.get("turing_confidence"))
        if score is None:
            continue
        modality = session_modality(row)
        condition = str(row["condition"])
        case = f"{row['case_id']}/{condition}"
        prefix = modality[: -len(condition)] if modality.endswith(condition) else ""
        if condition == acquired:
            out += [ScoreRow(str(row["rater"]), case, prefix + m, score, 0, str(row["case_id"])) for m in models]
        else:
            out.append(ScoreRow(str(row["rater"]), case, modality, score, 1, str(row["case_id"])))
    return out


def turing_auc(
    rows: Iterable[Mapping[str, Any]], acquired: str = ACQUIRED, n_boot: int = 2000, seed: int = 0
) -> dict[str, AUCResult]:
    """Reader-averaged Turing-task AUC per model condition (see the module docstring)."""
    return reader_averaged_auc(turing_scores(rows, acquired), n_boot=n_boot, seed=seed)


def session_modality(row: Mapping[str, Any]) -> str:
    """The modality of an answer: its condition, prefixed by the reading session in a crossover study."""
    session = row.get("reading_session") or ""
    return f"{session}/{row['condition']}" if session else str(row["condition"])


def answers_by_item(answers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Typed answer rows (one per question) folded into one dict per read: rater, session, case, condition, answers."""
    reads: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for a in answers:
        key = (str(a["rater"]), str(a.get("reading_session") or ""), str(a["case_id"]), str(a["condition"]))
        read = reads.setdefault(
            key, {"rater": key[0], "reading_session": key[1], "case_id": key[2], "condition": key[3]}
        )
        read[str(a["question"])] = a["value"]
    return list(reads.values())


# -- the localisation task ---------------------------------------------------------------------
def localisation_tables(
    study: Any, answers: Iterable[Mapping[str, Any]], question: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per mark, one per lesion and one per case read, for a localisation question.

    Parameters
    ----------
    study : Study
        With a ``lesion_mask`` per case.
    answers : iterable of dict
        :meth:`RatingStore.answers` rows (current ones).
    question : str, optional
        The localisation question's id (default: the study's first one).

    Returns
    -------
    (marks, lesions, cases)
        Lists of dicts, ready for :func:`napari_neurosynth.export.write_csv`.
    """
    from .io import read_volume
    from .localization import LesionTruth

    localisation = [q for q in study.questions if q.type == "localisation"]
    if not localisation:
        raise NeurosynthError(f"study {study.id!r} has no localisation question")
    q = next((x for x in localisation if x.id == question), None) if question else localisation[0]
    if q is None:
        raise NeurosynthError(
            f"study {study.id!r} has no localisation question {question!r} "
            f"(it has {', '.join(x.id for x in localisation)})"
        )
    truths: dict[str, LesionTruth] = {}
    marks_out: list[dict[str, Any]] = []
    lesions_out: list[dict[str, Any]] = []
    cases_out: list[dict[str, Any]] = []
    for a in answers:
        if a["question"] != q.id or a["value"] is None:
            continue
        case = study.case(str(a["case_id"]))
        if case.lesion_mask is None:
            raise NeurosynthError(f"case {case.id!r} of study {study.id!r} has no lesion_mask to score marks against")
        if case.id not in truths:
            truths[case.id] = LesionTruth(read_volume(case.lesion_mask))
        truth = truths[case.id]
        score = truth.score(a["value"], q.margin_mm)
        read = {
            "rater": a["rater"],
            "reading_session": a.get("reading_session") or "",
            "case_id": case.id,
            "condition": a["condition"],
        }
        for m in score.marks:
            marks_out.append(
                {
                    **read,
                    "mark": m.index + 1,
                    "x_mm": m.x,
                    "y_mm": m.y,
                    "z_mm": m.z,
                    "confidence": m.confidence,
                    "hit": int(m.hit),
                    "lesion": m.lesion if m.hit else None,
                    "distance_mm": round(m.distance_mm, 3) if np.isfinite(m.distance_mm) else None,
                }
            )
        for les in score.lesions:
            lesions_out.append(
                {
                    **read,
                    "lesion": les.lesion,
                    "voxels": les.voxels,
                    "volume_mm3": round(les.volume_mm3, 3),
                    "centroid_x_mm": round(les.centroid_mm[0], 3),
                    "centroid_y_mm": round(les.centroid_mm[1], 3),
                    "centroid_z_mm": round(les.centroid_mm[2], 3),
                    "found": int(les.found),
                    "confidence": les.confidence,
                }
            )
        cases_out.append(
            {
                **read,
                "abnormal": int(score.abnormal),
                "n_lesions": truth.n_lesions,
                "n_found": sum(les.found for les in score.lesions),
                "n_marks": len(score.marks),
                "n_false_marks": score.n_false_marks,
                "max_confidence": score.max_confidence,
                "top_mark_hit": int(score.top_mark_hit),
                "lroc_score": score.lroc_score,
            }
        )
    return marks_out, lesions_out, cases_out


def lroc_scores(case_rows: Iterable[Mapping[str, Any]]) -> list[ScoreRow]:
    """LROC-task scores from the case rows of :func:`localisation_tables`."""
    return [
        ScoreRow(
            str(r["rater"]),
            str(r["case_id"]),
            session_modality(r),
            float(r["lroc_score"]),
            int(r["abnormal"]),
            str(r["case_id"]),
        )
        for r in case_rows
    ]


def lroc_auc(
    study: Any, answers: Iterable[Mapping[str, Any]], question: str | None = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, AUCResult]:
    """Reader-averaged AUC of the LROC-ready score per modality, with bootstrap CIs."""
    _, _, cases = localisation_tables(study, answers, question)
    return reader_averaged_auc(lroc_scores(cases), n_boot=n_boot, seed=seed)


# -- iMRMC -------------------------------------------------------------------------------------
def _imrmc_id(value: str, what: str) -> str:
    text = str(value).strip()
    if not text or any(ch in text for ch in ",\n\r"):
        raise NeurosynthError(f"{what} {value!r} cannot be written to an iMRMC file (empty, or holds a comma)")
    return text


def imrmc_text(rows: Iterable[ScoreRow], description: str = "") -> str:
    """The iMRMC input file for score rows.

    iMRMC (FDA/DIDSR) reads a free-text study description holding the experiment
    size (``NR:``, ``N0:``, ``N1:``, ``NM:``), then a line ``BEGIN DATA:`` and one
    comma-separated row per observation: ``readerID,caseID,modalityID,score``, and
    one truth row per case with reader ``-1`` and modality ``0``:
    ``-1,caseID,0,truth`` (1 diseased/positive, 0 not).

    Examples
    --------
    >>> rows = [ScoreRow("a", "c1", "model", 7.0, 1), ScoreRow("a", "c2", "model", 2.0, 0)]
    >>> print(imrmc_text(rows, "demo"))
    demo
    NR: 1
    N0: 1
    N1: 1
    NM: 1
    <BLANKLINE>
    BEGIN DATA:
    -1,c1,0,1
    -1,c2,0,0
    a,c1,model,7
    a,c2,model,2
    <BLANKLINE>
    """
    rows = list(rows)
    if not rows:
        raise NeurosynthError("no scores to write to an iMRMC file")
    truth: dict[str, int] = {}
    for r in rows:
        if r.reader == "-1":
            raise NeurosynthError("reader id -1 is iMRMC's truth marker; rename that reader")
        if truth.setdefault(r.case, int(r.truth)) != int(r.truth):
            raise NeurosynthError(f"case {r.case!r} has two truths; iMRMC needs one per case")
    seen: set[tuple[str, str, str]] = set()
    lines = [line for line in description.splitlines() if line.strip() != "BEGIN DATA:"]
    lines += [
        f"NR: {len({r.reader for r in rows})}",
        f"N0: {sum(1 for t in truth.values() if t == 0)}",
        f"N1: {sum(1 for t in truth.values() if t == 1)}",
        f"NM: {len({r.modality for r in rows})}",
        "",
        "BEGIN DATA:",
    ]
    # Sorted, so that one study always gives one file (diffable, reproducible).
    lines += [f"-1,{_imrmc_id(case, 'case id')},0,{t}" for case, t in sorted(truth.items())]
    for r in sorted(rows, key=lambda r: (r.reader, r.modality, r.case)):
        key = (r.reader, r.case, r.modality)
        if key in seen:
            raise NeurosynthError(f"reader {r.reader!r} has two scores of case {r.case!r} in modality {r.modality!r}")
        seen.add(key)
        lines.append(
            f"{_imrmc_id(r.reader, 'reader id')},{_imrmc_id(r.case, 'case id')},"
            f"{_imrmc_id(r.modality, 'modality')},{r.score:g}"
        )
    return "\n".join(lines) + "\n"


def write_imrmc(path: str | os.PathLike[str], rows: Iterable[ScoreRow], description: str = "") -> Path:
    """Write :func:`imrmc_text` to ``path`` atomically; return the path."""
    path = Path(path)
    try:
        atomic_write_text(path, imrmc_text(rows, description))
    except OSError as exc:
        raise NeurosynthError(f"cannot write iMRMC file {path}: {exc.strerror}") from None
    return path


# -- reporting -------------------------------------------------------------------------------------
def format_auc_table(title: str, results: Mapping[str, AUCResult]) -> str:
    """A few lines of text: AUC with its CI per modality.

    Examples
    --------
    >>> print(format_auc_table("Turing AUC", {"model": AUCResult(0.62, 0.5, 0.74, {"a": 0.62}, 1, 20, 10, 10, 2000)}))
    Turing AUC (reader-averaged, 95% CI by reader+case bootstrap):
      model                    0.620 [0.500, 0.740]  (1 readers, 10+/10- cases)
    """
    lines = [f"{title} (reader-averaged, 95% CI by reader+case bootstrap):"]
    if not results:
        lines.append("  (no modality with both positive and negative cases)")
    for modality, r in results.items():
        lines.append(
            f"  {modality:<24} {r.auc:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]  "
            f"({r.n_readers} readers, {r.n_positive}+/{r.n_negative}- cases)"
        )
    return "\n".join(lines)


def plot_auc(results: Mapping[str, Mapping[str, AUCResult]], path: str | os.PathLike[str]) -> Path:
    """Save one panel per task: reader-averaged AUC per condition with its 95 % CI and each reader's AUC.

    Examples
    --------
    >>> import tempfile
    >>> r = {"Turing": {"model": AUCResult(0.6, 0.5, 0.7, {"a": 0.55, "b": 0.65}, 2, 10, 5, 5, 100)}}
    >>> plot_auc(r, Path(tempfile.mkdtemp()) / "auc.png").read_bytes()[:4]
    b'\\x89PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .study_stats import plot_format, save_plot

    path = Path(path).expanduser()
    fmt = plot_format(path)
    tasks = {task: res for task, res in results.items() if res}
    if not tasks:
        raise NeurosynthError("no AUC to plot (no task has both positive and negative cases)")
    width = max(6.0, sum(1.2 * len(r) + 1.5 for r in tasks.values()))
    fig = Figure(figsize=(width, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for k, (task, res) in enumerate(tasks.items()):
        ax = fig.add_subplot(1, len(tasks), k + 1)
        names = list(res)
        x = np.arange(len(names))
        means = np.array([res[n].auc for n in names])
        err = np.vstack(
            [
                np.nan_to_num(means - [res[n].ci_low for n in names]),
                np.nan_to_num([res[n].ci_high for n in names] - means),
            ]
        )
        ax.bar(x, means, width=0.55, color="#67a9cf", edgecolor="0.3")
        ax.errorbar(x, means, yerr=err, fmt="none", color="black", capsize=5, elinewidth=1.6)
        for i, n in enumerate(names):
            values = list(res[n].per_reader.values())
            ax.scatter(
                np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=14, color="0.2", zorder=3
            )
        ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(x, [f"{n}\n({res[n].n_readers} readers)" for n in names], fontsize=8)
        ax.set_ylabel("AUC")
        ax.set_title(f"{task} AUC, 95% CI")
    fig.tight_layout()
    return save_plot(fig, path, fmt)
