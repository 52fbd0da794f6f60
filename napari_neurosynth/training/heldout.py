"""Held-out evaluation of a bundle against the two baselines, and the evaluation grid of the cards.

A model is judged on phantom subjects whose seeds were never used for training
or validation, through the real inference engine, against two baselines:

- ``input_standardised``: the input itself after intensity standardisation;
- ``intensity_lut``: a per-voxel lookup table from input intensities to the mean
  target, fitted on the training subjects' brain voxels. On a phantom whose T2 is
  a function of T1 it is as good as any network; it is what spatial context has
  to beat.

The *evaluation grid* (:data:`GRID`) repeats that on every combination of head
(whole head, skull-stripped), voxel size (1 mm, 2 mm, 1 x 1 x 3 mm) and
acquisition (3 T default protocol, 1.5 T, randomised protocol), and adds, per
lesion kind, the share of the acquired lesion contrast the synthesis keeps.
:func:`shipping_rule` turns a grid into the verdict the shipped cards carry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..data import PreparedSubject, Subject, load_subjects, prepare
from ..errors import NeurosynthError

METRIC_KEYS = ("psnr", "ssim", "mae", "nmse")

#: Axes of the evaluation grid: name -> make_phantom options.
GRID_HEADS: dict[str, dict[str, Any]] = {"whole_head": {"skull_strip": False}, "skull_stripped": {"skull_strip": True}}
GRID_RESOLUTIONS: dict[str, Any] = {"1mm": 1.0, "2mm": 2.0, "1x1x3mm": (1.0, 1.0, 3.0)}
GRID_FIELDS: dict[str, dict[str, Any]] = {
    "3T": {"field_strength": 3.0, "protocol": "default"},
    "1.5T": {"field_strength": 1.5, "protocol": "default"},
    "random_protocol": {"field_strength": 3.0, "protocol": "random"},
}

#: Shipping rule thresholds (issue 12): beat both baselines on PSNR and MAE in every cell,
#: the LUT by this many dB on average, skull-stripped within this of whole head, and keep
#: at least this share of the acquired contrast of every lesion kind visible on the inputs.
RULE_MEAN_GAIN_DB = 1.5
RULE_SKULL_STRIP_DB = 1.0
RULE_RETAINED = 0.5


def grid_cells(
    heads: Iterable[str] | None = None, resolutions: Iterable[str] | None = None, fields: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """The cells of the evaluation grid (all of them by default), each with its phantom options.

    Examples
    --------
    >>> cells = grid_cells()
    >>> len(cells), cells[0]["name"]
    (18, 'whole_head/1mm/3T')
    >>> grid_cells(["skull_stripped"], ["2mm"], ["1.5T"])[0]["options"]
    {'skull_strip': True, 'resolution': 2.0, 'field_strength': 1.5, 'protocol': 'default'}
    """
    out = []
    for h in heads or GRID_HEADS:
        for r in resolutions or GRID_RESOLUTIONS:
            for f in fields or GRID_FIELDS:
                for axis, table, key in (
                    ("head", GRID_HEADS, h),
                    ("resolution", GRID_RESOLUTIONS, r),
                    ("field", GRID_FIELDS, f),
                ):
                    if key not in table:
                        raise NeurosynthError(f"unknown grid {axis} {key!r}; use one of {', '.join(table)}")
                out.append(
                    {
                        "name": f"{h}/{r}/{f}",
                        "head": h,
                        "resolution": r,
                        "field": f,
                        "options": {**GRID_HEADS[h], "resolution": GRID_RESOLUTIONS[r], **GRID_FIELDS[f]},
                    }
                )
    return out


def fit_lut(prepared: Sequence[PreparedSubject], inputs: Sequence[str], output: str):
    """The :class:`~napari_neurosynth.baselines.IntensityLUT` baseline fitted on training subjects (brain voxels)."""
    from ..baselines import IntensityLUT

    return IntensityLUT().fit(
        [([s.arrays[m] for m in inputs], s.arrays[output]) for s in prepared], [s.mask for s in prepared]
    )


def _region_row(r: Mapping[str, Any]) -> dict:
    row = {f"{k}_brain": r[f"{k}_brain"] for k in METRIC_KEYS}
    if "psnr_lesion" in r:
        row.update({f"{k}_lesion": r[f"{k}_lesion"] for k in METRIC_KEYS})
    return row


def _raw_phantom_inputs(subj: Subject, inputs: Sequence[str]) -> list:
    """The acquired input volumes on their own grids (``t2_lowres`` before resampling)."""
    raw = subj.meta.get("raw_images") or {}
    return [raw.get(m, subj.images[m]) for m in inputs]


def _lesion_kinds(subj: Subject) -> dict[int, str]:
    """Lesion label -> kind name for a phantom subject (from its lesion mask's metadata or the phantom's table)."""
    from .. import phantom

    labels = subj.meta.get("lesion_labels") or getattr(phantom, "LESION_LABELS", {})
    return {int(k): str(v) for k, v in labels.items()}


def _visible_on(kind: str, inputs: Sequence[str], table: Mapping[str, Mapping[str, str]] | None) -> bool | None:
    """Is lesion ``kind`` conspicuous on any of ``inputs`` according to a phantom visibility table?"""
    if not table:
        return None
    contrasts = {m.split("_")[0] for m in inputs}  # t2_lowres shows what t2 shows
    for key, vis in table.items():
        if _kind_in(kind, [key]):
            return any(str(vis.get(c, "")).lower() not in ("", "invisible") for c in contrasts)
    return None


def _lesion_contrast(
    synth: np.ndarray, target: np.ndarray, subj: Subject, inputs: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """Per lesion kind: acquired and synthesized contrast against the surrounding normal tissue.

    Uses :func:`~napari_neurosynth.explain.lesion_fidelity`'s per-lesion contrasts
    (lesion mean minus the median of a ring of normal tissue, over that median) and
    sums them per kind, so that a kind's retained share is
    ``sum(synthesized) / sum(acquired)`` over its visible lesions: small, faint
    lesions weigh less than in a mean of per-lesion ratios.
    """
    from ..explain import lesion_fidelity

    if subj.lesion_mask is None or not subj.lesion_mask.any():
        return {}
    fid = lesion_fidelity(synth, target, lesion=subj.lesion_mask, mask=subj.mask(), normalize=False)
    kinds = _lesion_kinds(subj)
    table = subj.meta.get("lesion_visibility")  # for this subject's field strength and protocol
    sums: dict[str, dict[str, float]] = {}
    for les in fid["lesions"]:
        if les["status"] == "not visible":
            continue
        kind = kinds.get(int(les["label"]), f"label {les['label']}")
        acc = sums.setdefault(kind, {"acquired": 0.0, "synthesized": 0.0, "n": 0, "invisible_on_inputs": 0})
        if _visible_on(kind, inputs, table) is False:
            acc["invisible_on_inputs"] += 1
        acc["acquired"] += float(les["acquired"]["contrast"])
        acc["synthesized"] += float(les["synthesized"]["contrast"])
        acc["n"] += 1
    return sums


def _evaluate_subjects(
    model,
    subjects: Sequence[Subject],
    lut,
    progress: Callable[[float], None] | None = None,
    lesion_contrast: bool = False,
    predictions: dict | None = None,
) -> dict:
    """Model and baselines on ``subjects``: mean brain/lesion metrics, per-subject rows, lesion contrasts.

    ``predictions``, a dict, receives each subject's synthesized volume by subject name.
    """
    from ..baselines import baseline_input_index, input_standardised
    from ..inference import synthesize
    from ..metrics import evaluate
    from ..preprocessing import intensity_scale

    card = model.card
    inputs, output = list(card["inputs"]), card["output"]
    spec = card.get("normalization")
    rows: dict[str, list[dict]] = {"model": [], "input_standardised": [], "intensity_lut": []}
    per_subject = []
    contrast: dict[str, dict[str, float]] = {}
    for i, subj in enumerate(subjects):
        vols = [subj.images[m] for m in inputs]
        target = np.asarray(subj.images[output].data, np.float32)
        target = target / intensity_scale(target, spec)
        # the engine gets the acquired volumes on their own grids (t2_lowres included)
        synth = np.asarray(synthesize(model, _raw_phantom_inputs(subj, inputs), device="cpu"), np.float32)
        if predictions is not None:
            predictions[subj.name] = synth
        norm_inputs = [np.asarray(v.data, np.float32) / intensity_scale(np.asarray(v.data), spec) for v in vols]
        preds = {
            "model": synth,
            "input_standardised": input_standardised(vols[baseline_input_index(inputs, output)].data, spec),
            "intensity_lut": lut.predict(norm_inputs),
        }
        lesion = subj.lesion_mask if subj.lesion_mask is not None and subj.lesion_mask.any() else None
        entry: dict[str, Any] = {"subject": subj.name}
        for key, pred in preds.items():
            r = _region_row(evaluate(pred, target, mask=subj.mask(), lesion=lesion, kspace=False, normalize=False))
            rows[key].append(r)
            entry[key] = r
        if lesion_contrast:
            for kind, acc in _lesion_contrast(synth, target, subj, inputs).items():
                tot = contrast.setdefault(kind, {"acquired": 0.0, "synthesized": 0.0, "n": 0, "invisible_on_inputs": 0})
                for k in tot:
                    tot[k] += acc[k]
        per_subject.append(entry)
        if progress:
            progress((i + 1) / len(subjects))

    def mean(rs: list[dict]) -> dict:
        return {k: round(float(np.mean([r[k] for r in rs if k in r])), 4) for k in rs[0]}

    table = {k: mean(v) for k, v in rows.items()}
    m, b1, b2 = table["model"], table["input_standardised"], table["intensity_lut"]
    beats = all(m["psnr_brain"] > b["psnr_brain"] and m["mae_brain"] < b["mae_brain"] for b in (b1, b2))
    out: dict[str, Any] = {
        "held_out": m,
        "baselines": {"input_standardised": b1, "intensity_lut": b2},
        "beats_baselines": bool(beats),
        "per_subject": per_subject,
    }
    if lesion_contrast:
        out["lesion_contrast"] = {
            kind: {
                "retained": round(acc["synthesized"] / acc["acquired"], 3) if acc["acquired"] else None,
                "acquired_contrast": round(acc["acquired"] / max(1, acc["n"]), 4),
                "synthesized_contrast": round(acc["synthesized"] / max(1, acc["n"]), 4),
                "n_lesions": int(acc["n"]),
                # lesions of this kind that their subject's protocol leaves invisible on every input
                "invisible_on_inputs": int(acc["invisible_on_inputs"]),
            }
            for kind, acc in sorted(contrast.items())
        }
    return out


def evaluate_bundle(
    model,
    seeds: Sequence[int],
    resolution: float = 2.0,
    lut=None,
    train_data: str | None = None,
    train_resolution=None,
    progress=None,
) -> dict:
    """Held-out metrics of a bundle and both baselines on phantom subjects ``seeds``.

    The model runs through the real engine (:func:`napari_neurosynth.inference.synthesize`)
    on each phantom's acquired inputs; the acquired target is normalised the same
    way the engine normalises (``intensity_scale`` with the card's spec); metrics
    (:func:`napari_neurosynth.metrics.evaluate`) are computed inside the brain mask
    and inside the lesion mask and averaged over subjects.

    Parameters
    ----------
    model : Model or str
        A loaded bundle or its name/path.
    seeds : sequence of int
        Phantom seeds (must not be training seeds).
    resolution : float
        Phantom voxel size in mm.
    lut : IntensityLUT, optional
        The intensity-mapping baseline; fitted on the card's training data when omitted
        (``train_data``/``train_resolution`` override what the card says).

    Returns
    -------
    dict
        ``held_out`` (model), ``baselines`` (``input_standardised``, ``intensity_lut``),
        ``seeds``, ``resolution``, ``region``, ``per_subject``, ``beats_baselines``.
    """
    from ..bundle import load_model

    if not hasattr(model, "card"):
        model = load_model(model)
    card = model.card
    inputs, output = list(card["inputs"]), card["output"]
    if lut is None:
        lut = lut_from_card(card, train_data, train_resolution)
    subjects = load_subjects(f"phantom:{','.join(str(s) for s in seeds)}", [*inputs, output], resolution)
    result = _evaluate_subjects(model, subjects, lut, progress)
    return {
        "held_out": result["held_out"],
        "baselines": result["baselines"],
        "seeds": [int(s) for s in seeds],
        "resolution_mm": float(resolution),
        **_NOTES(inputs, output),
        "beats_baselines": result["beats_baselines"],
        "per_subject": result["per_subject"],
    }


def _NOTES(inputs: Sequence[str], output: str) -> dict:
    from ..baselines import baseline_input_index

    return {
        "region": "brain mask (and lesion mask, labels > 0) of each held-out phantom; mean over subjects",
        "target_normalization": "acquired target divided by intensity_scale(target, card normalization)",
        "baseline_notes": {
            "input_standardised": f"the input {inputs[baseline_input_index(inputs, output)]!r} after intensity "
            "standardisation (same normalisation as the model's inputs)",
            "intensity_lut": (
                "per-voxel lookup table from normalised input intensit"
                + ("y" if len(inputs) == 1 else "ies (joint histogram over all inputs)")
                + " to the mean normalised target, fitted on the training subjects' brain voxels"
            ),
        },
    }


def visible_lesion_kinds(inputs: Sequence[str]) -> list[str] | None:
    """Lesion kinds conspicuous on at least one of ``inputs``, from the phantom's visibility table.

    ``None`` when the phantom has no table (every kind is then held to the rule).
    """
    from .. import phantom

    table = getattr(phantom, "LESION_VISIBILITY", None)
    if not table:
        return None
    contrasts = {m.split("_")[0] for m in inputs}  # t2_lowres shows what t2 shows
    return sorted(
        kind
        for kind, vis in table.items()
        if any(str(vis.get(c, "")).lower() not in ("", "invisible", "iso", "isointense") for c in contrasts)
    )


def evaluate_grid(
    model,
    seeds: Sequence[int],
    lut=None,
    cells: Sequence[dict] | None = None,
    progress: Callable[[str], None] | None = None,
    train_data: str | None = None,
) -> dict:
    """The evaluation grid of a bundle: :func:`evaluate_bundle`'s table in every cell of :func:`grid_cells`.

    Parameters
    ----------
    model : Model or str
        A loaded bundle or its name/path.
    seeds : sequence of int
        Held-out phantom seeds; every cell uses the same seeds (the same anatomy under
        each acquisition, so cells differ only by acquisition).
    lut : IntensityLUT, optional
        Fitted on the card's training data when omitted.
    cells : list of dict, optional
        From :func:`grid_cells`; all 18 by default.
    progress : callable, optional
        Called with each cell's name as it starts.

    Returns
    -------
    dict
        ``cells`` (one entry per cell: ``name``, ``head``, ``resolution``, ``field``,
        ``held_out``, ``baselines``, ``beats_baselines``, ``lesion_contrast``),
        ``seeds``, ``summary`` and ``rule`` (:func:`shipping_rule`).
    """
    return evaluate_grids([model], seeds, None if lut is None else [lut], cells, progress, train_data)[0]


def evaluate_grids(
    models: Sequence,
    seeds: Sequence[int],
    luts: Sequence | None = None,
    cells: Sequence[dict] | None = None,
    progress: Callable[[str], None] | None = None,
    train_data: str | None = None,
) -> list[dict]:
    """:func:`evaluate_grid` for several bundles at once, building each cell's phantoms only once.

    A 1 mm phantom takes far longer to build than a small network takes to run on
    it, so the cell loop is outside the model loop; the training subjects behind
    the LUT baselines are likewise built once per training-data specification.
    """
    from ..bundle import load_model

    models = [m if hasattr(m, "card") else load_model(m) for m in models]
    if luts is None:
        cache: dict = {}
        luts = [lut_from_card(m.card, train_data, None, cache=cache) for m in models]
    mods: list[str] = []
    for m in models:
        for k in [*m.card["inputs"], m.card["output"]]:
            if k not in mods:
                mods.append(k)
    firsts = {m.card["inputs"][0] for m in models}
    if len(firsts) > 1:
        raise NeurosynthError("evaluate_grids: the models' first inputs differ; evaluate them separately")
    mods.sort(key=lambda k: k != next(iter(firsts)))  # the first input's grid is the reference
    results: list[list[dict]] = [[] for _ in models]
    for cell in cells or grid_cells():
        if progress:
            progress(cell["name"])
        opts = dict(cell["options"])
        res = opts.pop("resolution")
        subjects = load_subjects(f"phantom:{','.join(str(s) for s in seeds)}", mods, res, **opts)
        for k, (model, lut) in enumerate(zip(models, luts)):
            r = _evaluate_subjects(model, subjects, lut, lesion_contrast=True)
            results[k].append(
                {c: cell[c] for c in ("name", "head", "resolution", "field")}
                | {c: r[c] for c in ("held_out", "baselines", "beats_baselines", "lesion_contrast")}
            )
        del subjects
    grids = []
    for model, out_cells in zip(models, results):
        inputs, output = list(model.card["inputs"]), model.card["output"]
        grid = {"seeds": [int(s) for s in seeds], "cells": out_cells, **_NOTES(inputs, output)}
        grid["rule"] = shipping_rule(grid, visible_lesion_kinds(inputs))
        grid["summary"] = _summary(grid)
        grids.append(grid)
    return grids


def _summary(grid: dict) -> dict:
    cells = grid["cells"]

    def avg(key: str, who: str = "model") -> float:
        vals = [c["held_out"][key] if who == "model" else c["baselines"][who][key] for c in cells]
        return round(float(np.mean(vals)), 4)

    return {
        "model": {k: avg(k) for k in ("psnr_brain", "ssim_brain", "mae_brain")},
        "input_standardised": {k: avg(k, "input_standardised") for k in ("psnr_brain", "ssim_brain", "mae_brain")},
        "intensity_lut": {k: avg(k, "intensity_lut") for k in ("psnr_brain", "ssim_brain", "mae_brain")},
    }


def shipping_rule(grid: dict, visible_kinds: Sequence[str] | None = None) -> dict:
    """Check a grid against the shipping rule; ``passed`` is True only when every check holds.

    Checks: in every cell the model beats both baselines on brain PSNR and MAE;
    its brain PSNR is on average at least :data:`RULE_MEAN_GAIN_DB` above the LUT's;
    every skull-stripped cell is within :data:`RULE_SKULL_STRIP_DB` of its whole-head
    twin; every lesion kind in ``visible_kinds`` (conspicuous on the inputs) keeps
    at least :data:`RULE_RETAINED` of its acquired contrast in every cell.
    Kinds not in ``visible_kinds`` are listed as ``not_required`` (they cannot be
    synthesized from these inputs; the difference map is what must flag them).
    """
    cells = grid["cells"]
    by_name = {c["name"]: c for c in cells}
    failures: list[str] = []
    for c in cells:
        m = c["held_out"]
        for b, r in c["baselines"].items():
            if not (m["psnr_brain"] > r["psnr_brain"] and m["mae_brain"] < r["mae_brain"]):
                failures.append(f"{c['name']}: does not beat {b} on PSNR and MAE")
    gain = float(np.mean([c["held_out"]["psnr_brain"] - c["baselines"]["intensity_lut"]["psnr_brain"] for c in cells]))
    if gain < RULE_MEAN_GAIN_DB:
        failures.append(f"mean PSNR gain over the LUT {gain:.2f} dB < {RULE_MEAN_GAIN_DB} dB")
    gaps = []
    for c in cells:
        if c["head"] != "skull_stripped":
            continue
        twin = by_name.get(c["name"].replace("skull_stripped", "whole_head", 1))
        if twin is None:
            continue
        gap = twin["held_out"]["psnr_brain"] - c["held_out"]["psnr_brain"]
        gaps.append(gap)
        if abs(gap) > RULE_SKULL_STRIP_DB:
            failures.append(f"{c['name']}: skull-stripped {gap:+.2f} dB from whole head (> {RULE_SKULL_STRIP_DB} dB)")
    kinds = sorted({k for c in cells for k in (c.get("lesion_contrast") or {})})
    required = kinds if visible_kinds is None else [k for k in kinds if _kind_in(k, visible_kinds)]
    worst: dict[str, float | None] = {}
    exempt: list[str] = []
    for kind in kinds:
        vals = []
        for c in cells:
            lc = (c.get("lesion_contrast") or {}).get(kind)
            if not lc or lc["retained"] is None:
                continue
            if lc.get("invisible_on_inputs"):  # e.g. oedema under a random T1 protocol: not synthesizable there
                exempt.append(f"{kind} in {c['name']}")
                continue
            vals.append(lc["retained"])
        worst[kind] = round(min(vals), 3) if vals else None
        if kind in required and vals and min(vals) < RULE_RETAINED:
            failures.append(f"lesion kind {kind!r} keeps {min(vals):.2f} of its contrast (< {RULE_RETAINED})")
    return {
        "passed": not failures,
        "failures": failures,
        "mean_gain_over_lut_db": round(gain, 3),
        "max_skull_strip_gap_db": round(max((abs(g) for g in gaps), default=0.0), 3),
        "worst_retained_contrast": worst,
        "required_lesion_kinds": required,
        "not_required": [k for k in kinds if k not in required],
        "exempt_cells": exempt,
    }


def _kind_in(kind: str, visible: Sequence[str]) -> bool:
    """A lesion kind name from the labels (``"tumour core"``) matched against the visibility table's keys."""
    norm = kind.lower().replace(" ", "_").replace("-", "_")
    return any(norm == v.lower() or norm.startswith(v.lower()) or v.lower().startswith(norm) for v in visible)


def lut_from_card(
    card: dict, train_data: str | None = None, train_resolution=None, cache: dict | None = None
) -> object:
    """The LUT baseline refitted on the training data the card names (or ``train_data``).

    ``cache`` (a dict) keeps the loaded training subjects between calls for cards
    that name the same training data.
    """
    recipe = (card.get("training") or {}).get("recipe") or {}
    data = train_data or recipe.get("data_spec")
    res = train_resolution or recipe.get("resolution") or [2.0]
    if not data:
        raise NeurosynthError(
            f"model {card.get('name')!r}: its card does not say which data it was trained on; "
            "pass the training data (e.g. --train-data phantom:0-7) to fit the intensity-LUT baseline"
        )
    inputs, output = list(card["inputs"]), card["output"]
    resolutions = [tuple(r) if isinstance(r, list) else r for r in res]
    options = {k: v for k, v in (recipe.get("phantom_options") or {}).items() if v not in (None, "slab")}
    key = (
        data,
        tuple(resolutions),
        bool(recipe.get("randomize")),
        tuple(sorted(options.items())),
        None if str(data).startswith("phantom:") else tuple([*inputs, output]),
    )
    if cache is not None and key in cache:
        subs = cache[key]
    else:
        shared = cache is not None and str(data).startswith("phantom:")  # phantoms hold every modality
        subs = load_subjects(
            data,
            ["t1", "t2", "flair", "t2_lowres"] if shared else [*inputs, output],
            resolutions,
            randomize=bool(recipe.get("randomize")),
            **(options if str(data).startswith("phantom:") else {}),
        )
        if cache is not None:
            cache[key] = subs
    prepared = [
        prepare(s, [*inputs, output], card.get("normalization"), card["slicing"].get("plane", "axial")) for s in subs
    ]
    return fit_lut(prepared, inputs, output)
