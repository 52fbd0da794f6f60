"""The shipping rule of an *unpaired* model (``t1_to_t2_unpaired``): :func:`evaluate_unpaired`.

A model trained without a single paired subject is judged fairly only against
what also needs no pairs, and against what pairs buy. On held-out phantom
subjects, in every evaluated cell (by default whole head and skull-stripped at
2 mm, 3 T), three conditions must all hold:

1. **It beats the unpaired baselines** on brain PSNR and MAE:
   :class:`~napari_neurosynth.baselines.HistogramMatching` and the (decreasing)
   :class:`~napari_neurosynth.baselines.QuantileMap`, both fitted on the same
   unpaired halves the model was trained on (T1 of the even training subjects,
   T2 of the odd ones, brain voxels, the engine's normalisation). The quantile
   map's polarity is chosen on the validation subject (phantom seed 900), never
   on the held-out seeds.
2. **Its brain PSNR is within** :data:`PAIRED_GAP_DB` **of the paired model's**.
3. **It invents no lesion**: :func:`invented_regions` finds no region of
   ``|z| >= 3.5`` and ``>= 50 mm^3`` outside the acquired lesions that the paired
   model's output does not also have, on at least 2 of 3 held-out subjects
   (z from the product's own :func:`~napari_neurosynth.explain.difference_map`).

Every model runs through the real inference engine on the acquired inputs, and
the target is normalised the way the engine normalises, as in :mod:`.heldout`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

from ..errors import NeurosynthError

__all__ = [
    "INVENTED_MIN_MM3",
    "INVENTED_Z",
    "PAIRED_GAP_DB",
    "evaluate_unpaired",
    "fit_unpaired_baselines",
    "format_unpaired",
    "invented_regions",
]

#: Condition 2: the unpaired model's brain PSNR may trail the paired model's by at most this.
PAIRED_GAP_DB = 3.0
#: Condition 3: a disagreement region counts from this ``|z|`` (Iglewicz and Hoaglin's outlier rule,
#: :func:`~napari_neurosynth.explain.disagreement_regions`' default) and this volume.
INVENTED_Z = 3.5
INVENTED_MIN_MM3 = 50.0
#: Condition 3 fails when this share of the held-out subjects (2 of 3) has an invented region.
INVENTED_SUBJECT_SHARE = 2 / 3
#: A region is the paired model's too when at least this share of its voxels is flagged there (same sign).
SHARED_FRACTION = 0.5
#: The validation subject (never a held-out seed) on which the quantile map's polarity is chosen.
VALIDATION_SEED = 900

PREDICTORS = ("unpaired", "paired", "histogram_matching", "quantile_map")
_METRICS = ("psnr_brain", "ssim_brain", "mae_brain")


def invented_regions(
    synth: ArrayLike,
    paired: ArrayLike,
    target: ArrayLike,
    brain: ArrayLike,
    lesion: ArrayLike | None,
    affine: ArrayLike | None = None,
    threshold: float = INVENTED_Z,
    min_mm3: float = INVENTED_MIN_MM3,
) -> list[dict[str, Any]]:
    """Disagreement regions of ``synth`` that the ``paired`` synthesis does not share, outside the lesions.

    Both syntheses get the product's z-map against the acquired ``target``
    (:func:`~napari_neurosynth.explain.difference_map`, acquired lesions excluded
    from its noise estimate, volumes already in the engine's normalised units so
    ``normalize=False``). Voxels with ``|z| >= threshold`` outside the acquired
    lesions, grown by one voxel (a lesion's partial-volume rim is not an invention),
    form 26-connected regions, bright and dark ones separately
    (:func:`scipy.ndimage.label`); a region counts when it has at least ``min_mm3``
    (voxel volume from ``affine``) and fewer than :data:`SHARED_FRACTION` of its
    voxels are flagged with the same sign on the paired model's map.

    Parameters
    ----------
    synth, paired, target : numpy.ndarray
        The unpaired and the paired syntheses and the acquired target, one grid.
    brain : numpy.ndarray
        Brain mask.
    lesion : numpy.ndarray or None
        Acquired lesion labels (nonzero = lesion).
    affine : numpy.ndarray, optional
        Index -> mm (4 x 4); identity (1 mm voxels) when omitted.

    Returns
    -------
    list of dict
        One entry per invented region: ``voxels``, ``mm3``, ``sign``, ``peak_z``,
        ``shared_with_paired`` (the flagged share on the paired map).

    Examples
    --------
    A 64 mm^3 blob invented by the synthesis is found; one inside a lesion is not:

    >>> rng = np.random.default_rng(0)
    >>> t = 1 + 0.05 * rng.standard_normal((24, 24, 24))
    >>> p = t + 0.05 * rng.standard_normal(t.shape)
    >>> s = t + 0.05 * rng.standard_normal(t.shape)
    >>> s[4:8, 4:8, 4:8] += 1.0
    >>> [r["mm3"] for r in invented_regions(s, p, t, np.ones(t.shape), None)]
    [64.0]
    >>> les = np.zeros(t.shape, int); les[3:9, 3:9, 3:9] = 1
    >>> invented_regions(s, p, t, np.ones(t.shape), les)
    []
    """
    from ..explain import difference_map
    from ..io import Volume

    aff = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    target = np.asarray(target, np.float32)
    brain_mask = np.asarray(brain, bool)
    les = np.zeros(target.shape, bool) if lesion is None else np.asarray(lesion) > 0
    ref = Volume(target, aff)  # the affine gives difference_map its bias-field scale in mm

    def zmap(x: ArrayLike) -> np.ndarray:
        return difference_map(
            Volume(np.asarray(x, np.float32), aff), ref, brain_mask, lesion=les if les.any() else None, normalize=False
        )

    z_s, z_p = zmap(synth), zmap(paired)
    outside = brain_mask & ~ndi.binary_dilation(les, np.ones((3, 3, 3), bool)) if les.any() else brain_mask
    mm3 = float(abs(np.linalg.det(aff[:3, :3])))
    found = []
    for sign in (1, -1):
        labels, n = ndi.label((sign * z_s >= threshold) & outside, np.ones((3, 3, 3), bool))
        if not n:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        shared = np.bincount(labels.ravel(), weights=(sign * z_p >= threshold).ravel(), minlength=n + 1)
        peaks = ndi.maximum(sign * z_s, labels, np.arange(1, n + 1))
        for k in range(1, n + 1):
            volume = float(sizes[k]) * mm3
            frac = float(shared[k]) / float(sizes[k])
            if volume >= min_mm3 and frac < SHARED_FRACTION:
                found.append(
                    {
                        "voxels": int(sizes[k]),
                        "mm3": round(volume, 1),
                        "sign": sign,
                        "peak_z": round(float(peaks[k - 1]) * sign, 2),
                        "shared_with_paired": round(frac, 3),
                    }
                )
    return sorted(found, key=lambda r: -r["mm3"])


def _split_halves(card: dict, train_data: str | None, train_resolution) -> tuple[list, list, dict]:
    """The card's training subjects, prepared as the trainer prepares them, split as it splits them."""
    from ..data import load_subjects, prepare

    recipe = (card.get("training") or {}).get("recipe") or {}
    data = train_data or recipe.get("data_spec")
    if not data:
        raise NeurosynthError(
            f"model {card.get('name')!r}: its card does not say which data it was trained on; "
            "pass --train-data (e.g. phantom:0-11) to fit the unpaired baselines"
        )
    res = train_resolution or recipe.get("resolution") or [2.0]
    resolutions = [tuple(r) if isinstance(r, list) else r for r in res]
    source, target = card["inputs"][0], card["output"]
    subs = load_subjects(data, [source, target], resolutions, randomize=bool(recipe.get("randomize")))
    plane = card["slicing"].get("plane", "axial")
    prepared = [prepare(s, [source, target], card.get("normalization"), plane) for s in subs]
    # the Trainer's unpaired split: even subjects give the source, odd ones the target
    return prepared[0::2], prepared[1::2], recipe


def fit_unpaired_baselines(
    card: dict, train_data: str | None = None, train_resolution=None, val_data: str | None = None
) -> dict[str, Any]:
    """Histogram matching and the quantile map, fitted on the card's unpaired halves.

    The quantile map's polarity is the one with the lower brain MAE on the
    validation subject (``val_data``, phantom seed 900 by default, loaded as the
    trainer loads it), which is model selection, not a look at the held-out seeds.

    Returns
    -------
    dict
        ``histogram_matching``, ``quantile_map`` (fitted objects), ``polarity``,
        ``polarity_mae`` (validation MAE per polarity), ``fitted_on``.
    """
    from ..baselines import HistogramMatching, QuantileMap
    from ..data import load_subjects, prepare

    half_a, half_b, recipe = _split_halves(card, train_data, train_resolution)
    source, target = card["inputs"][0], card["output"]
    args = ([s.arrays[source] for s in half_a], [s.arrays[target] for s in half_b])
    masks = ([s.mask for s in half_a], [s.mask for s in half_b])
    hm = HistogramMatching().fit(*args, *masks)
    qm = QuantileMap("decreasing").fit(*args, *masks)
    res = (train_resolution or recipe.get("resolution") or [2.0])[0]
    val = load_subjects(
        val_data or f"phantom:{VALIDATION_SEED}",
        [source, target],
        tuple(res) if isinstance(res, list) else res,
        randomize=bool(recipe.get("randomize")),
    )
    plane = card["slicing"].get("plane", "axial")
    v = prepare(val[0], [source, target], card.get("normalization"), plane)
    maes = qm.choose_polarity(v.arrays[source], v.arrays[target], v.mask)
    return {
        "histogram_matching": hm,
        "quantile_map": qm,
        "polarity": qm.polarity,
        "polarity_mae": {k: round(m, 4) for k, m in maes.items()},
        "fitted_on": f"{source} of subjects {len(half_a)} even, {target} of {len(half_b)} odd training subjects "
        f"({recipe.get('data_spec') or train_data}), brain voxels",
    }


def _mean(rows: Sequence[dict]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in _METRICS}


def evaluate_unpaired(
    model,
    paired,
    seeds: Sequence[int],
    cells: Sequence[dict] | None = None,
    train_data: str | None = None,
    progress: Callable[[str], None] | None = None,
    baselines: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The unpaired shipping rule on held-out phantom subjects: metrics, invented lesions, verdict.

    Parameters
    ----------
    model, paired : Model or str
        The unpaired bundle and the paired bundle it is compared with.
    seeds : sequence of int
        Held-out phantom seeds (1000-1002 for the shipped cards).
    cells : list of dict, optional
        From :func:`~.heldout.grid_cells`; by default whole head and skull-stripped at 2 mm, 3 T.
    train_data : str, optional
        Overrides the card's training data for the unpaired baselines.
    baselines : dict, optional
        From :func:`fit_unpaired_baselines` (fitted here when omitted).

    Returns
    -------
    dict
        ``cells`` (per cell: ``mean`` per predictor, ``per_subject`` rows with
        each predictor's metrics and the invented regions), ``conditions`` (the
        three checks with their margins), ``ships``, ``seeds``, ``baselines``.
    """
    from ..bundle import load_model
    from ..data import load_subjects
    from ..inference import synthesize
    from ..metrics import evaluate
    from ..preprocessing import intensity_scale
    from .heldout import _raw_phantom_inputs, grid_cells

    model = model if hasattr(model, "card") else load_model(model)
    paired = paired if hasattr(paired, "card") else load_model(paired)
    card = model.card
    source, output = card["inputs"][0], card["output"]
    if list(card["inputs"]) != list(paired.card["inputs"]) or paired.card["output"] != output:
        raise NeurosynthError(
            f"the paired model {paired.name!r} ({' + '.join(paired.card['inputs'])} -> {paired.card['output']}) "
            f"does not do the unpaired model's task ({source} -> {output})"
        )
    if progress:
        progress("fitting the unpaired baselines")
    fitted = baselines or fit_unpaired_baselines(card, train_data)
    cells = list(cells or grid_cells(["whole_head", "skull_stripped"], ["2mm"], ["3T"]))
    out_cells = []
    for cell in cells:
        if progress:
            progress(cell["name"])
        opts = dict(cell["options"])
        res = opts.pop("resolution")
        subjects = load_subjects(f"phantom:{','.join(str(s) for s in seeds)}", [source, output], res, **opts)
        per_subject = []
        for subj in subjects:
            raw = np.asarray(subj.images[output].data, np.float32)
            lesion = subj.lesion_mask if subj.lesion_mask is not None and subj.lesion_mask.any() else None
            brain = subj.mask()
            src = np.asarray(subj.images[source].data, np.float32)
            src = src / intensity_scale(src, card.get("normalization"))
            preds, targets = {}, {}
            for key, m in (("unpaired", model), ("paired", paired)):
                preds[key] = np.asarray(synthesize(m, _raw_phantom_inputs(subj, [source]), device="cpu"), np.float32)
                targets[key] = raw / intensity_scale(raw, m.card.get("normalization"))
            for key in ("histogram_matching", "quantile_map"):
                preds[key] = fitted[key].predict(src)
                targets[key] = targets["unpaired"]
            entry: dict[str, Any] = {"subject": subj.name}
            for key in PREDICTORS:
                r = evaluate(preds[key], targets[key], mask=brain, lesion=lesion, kspace=False, normalize=False)
                entry[key] = {
                    "psnr_brain": float(r["psnr_brain"]),
                    "ssim_brain": float(r["ssim_brain"]),
                    "mae_brain": float(r["mae_brain"]),
                }
            entry["invented"] = invented_regions(
                preds["unpaired"], preds["paired"], targets["unpaired"], brain, lesion, subj.images[output].affine
            )
            per_subject.append(entry)
        out_cells.append(
            {
                **{c: cell[c] for c in ("name", "head", "resolution", "field")},
                "mean": {k: _mean([e[k] for e in per_subject]) for k in PREDICTORS},
                "per_subject": per_subject,
            }
        )
        del subjects
    conditions = _conditions(out_cells)
    return {
        "seeds": [int(s) for s in seeds],
        "model": model.name,
        "paired": paired.name,
        "cells": out_cells,
        "conditions": conditions,
        "ships": all(c["passed"] for c in conditions.values()),
        "baselines": {k: fitted[k] for k in ("polarity", "polarity_mae", "fitted_on")},
        "region": "brain mask of each held-out phantom; targets normalised as the engine normalises",
    }


def _conditions(cells: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """The three checks of the unpaired shipping rule, each with its worst-cell margin."""
    beat = []
    for c in cells:
        m = c["mean"]["unpaired"]
        for b in ("histogram_matching", "quantile_map"):
            r = c["mean"][b]
            beat.append((m["psnr_brain"] - r["psnr_brain"], r["mae_brain"] - m["mae_brain"], c["name"], b))
    worst_psnr = min(beat, key=lambda t: t[0])
    worst_mae = min(beat, key=lambda t: t[1])
    gaps = [(c["mean"]["paired"]["psnr_brain"] - c["mean"]["unpaired"]["psnr_brain"], c["name"]) for c in cells]
    worst_gap = max(gaps)
    invented = []
    for c in cells:
        n = sum(1 for e in c["per_subject"] if e["invented"])
        limit = math.ceil(INVENTED_SUBJECT_SHARE * len(c["per_subject"]))
        invented.append((n, limit, len(c["per_subject"]), c["name"]))
    worst_inv = max(invented, key=lambda t: t[0] - t[1])
    return {
        "beats_unpaired_baselines": {
            "passed": all(p > 0 and a > 0 for p, a, _, _ in beat),
            "worst_psnr_margin_db": round(worst_psnr[0], 2),
            "worst_psnr_against": f"{worst_psnr[3]} in {worst_psnr[2]}",
            "worst_mae_margin": round(worst_mae[1], 4),
            "worst_mae_against": f"{worst_mae[3]} in {worst_mae[2]}",
        },
        "within_paired": {
            "passed": worst_gap[0] <= PAIRED_GAP_DB,
            "largest_gap_db": round(worst_gap[0], 2),
            "allowed_db": PAIRED_GAP_DB,
            "margin_db": round(PAIRED_GAP_DB - worst_gap[0], 2),
            "cell": worst_gap[1],
        },
        "invents_no_lesion": {
            "passed": all(n < limit for n, limit, _, _ in invented),
            "subjects_with_invented_regions": {name: f"{n} of {tot}" for n, _, tot, name in invented},
            "fails_from": f"{worst_inv[1]} of {worst_inv[2]} subjects",
        },
    }


def format_unpaired(report: dict[str, Any]) -> str:
    """The unpaired rule's report as markdown: per-cell and per-subject tables, invented regions, verdict.

    Examples
    --------
    >>> row = {"psnr_brain": 20.0, "ssim_brain": 0.8, "mae_brain": 0.05}
    >>> subj = {"subject": "phantom-1000", "invented": [], **{k: row for k in PREDICTORS}}
    >>> cell = {"name": "whole_head/2mm/3T", "mean": {k: row for k in PREDICTORS}, "per_subject": [subj]}
    >>> rep = {"seeds": [1000], "model": "u", "paired": "p", "cells": [cell], "ships": False,
    ...        "conditions": _conditions([cell]), "baselines": {"polarity": "decreasing"}}
    >>> print(format_unpaired(rep).splitlines()[4])
    | whole_head/2mm/3T | unpaired | 20.00 | 0.800 | 0.0500 | 20.00 / 0.800 / 0.0500 |
    """
    subjects = [e["subject"] for e in report["cells"][0]["per_subject"]] if report["cells"] else []
    lines = [
        f"unpaired model {report['model']!r} against the paired {report['paired']!r} and the unpaired baselines, "
        f"held-out phantom seeds {report['seeds']} (brain mask; quantile map polarity "
        f"{report['baselines'].get('polarity')}, chosen on validation seed {VALIDATION_SEED})",
        "",
        "| cell | predictor | PSNR | SSIM | MAE | " + " | ".join(f"{s} PSNR / SSIM / MAE" for s in subjects) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(subjects),
    ]
    for c in report["cells"]:
        for key in PREDICTORS:
            m = c["mean"][key]
            per = " | ".join(
                f"{e[key]['psnr_brain']:.2f} / {e[key]['ssim_brain']:.3f} / {e[key]['mae_brain']:.4f}"
                for e in c["per_subject"]
            )
            lines.append(
                f"| {c['name']} | {key} | {m['psnr_brain']:.2f} | {m['ssim_brain']:.3f} | {m['mae_brain']:.4f} | "
                f"{per} |"
            )
    lines += ["", "| cell | subject | invented regions | largest (mm^3) |", "|---|---|---:|---:|"]
    for c in report["cells"]:
        for e in c["per_subject"]:
            big = max((r["mm3"] for r in e["invented"]), default=0.0)
            lines.append(f"| {c['name']} | {e['subject']} | {len(e['invented'])} | {big:g} |")
    cond = report["conditions"]
    b, p, i = cond["beats_unpaired_baselines"], cond["within_paired"], cond["invents_no_lesion"]
    lines += [
        "",
        f"1. beats the unpaired baselines (PSNR and MAE, every cell): {'yes' if b['passed'] else 'NO'} "
        f"(worst PSNR margin {b['worst_psnr_margin_db']:+.2f} dB against {b['worst_psnr_against']}; "
        f"worst MAE margin {b['worst_mae_margin']:+.4f} against {b['worst_mae_against']})",
        f"2. brain PSNR within {p['allowed_db']:g} dB of the paired model: {'yes' if p['passed'] else 'NO'} "
        f"(largest gap {p['largest_gap_db']:.2f} dB in {p['cell']}; margin {p['margin_db']:+.2f} dB)",
        f"3. invents no lesion (fails from {i['fails_from']} with a region): {'yes' if i['passed'] else 'NO'} ("
        + "; ".join(f"{k}: {v}" for k, v in i["subjects_with_invented_regions"].items())
        + ")",
        "unpaired shipping rule: " + ("PASSED" if report["ships"] else "FAILED"),
    ]
    return "\n".join(lines)
