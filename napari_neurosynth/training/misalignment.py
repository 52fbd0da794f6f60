"""Held-out evaluation of MCSR models under target misalignment (issue 13, FGDL's claims).

The phantom's ``target_misalignment`` moves the T2 acquisition, and so
``t2_lowres``, against T1 (:data:`~napari_neurosynth.phantom.MISALIGNMENT_SEVERITIES`).
A model is judged against ``t2_aligned``, the same acquisition without the
motion: the output must be the target *on the source's grid and geometry*.

:func:`evaluate_misalignment` gives, per severity, brain PSNR/SSIM/MAE of each
model and of the two baselines (the resampled low-resolution input and the
intensity LUT fitted on the first model's training data), and the centroid
offsets (mm) of the ventricles and of the T2-visible lesions between each
prediction and the aligned truth (:func:`centroid_offsets`).
:func:`format_misalignment` prints the tables ``docs/models.md`` shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from ..data import Subject, load_subjects
from ..errors import NeurosynthError

SEVERITIES = ("none", "low", "mid", "high")
#: Lesion labels that show on T2 (tumour core, oedema, plaque); black holes and haemorrhage need not.
T2_LESION_LABELS = (1, 2, 3)
#: Objects smaller than this (mm^3) are skipped: their centroid is noise at 2 mm.
MIN_OBJECT_MM3 = 40.0
#: How far (mm) around an object its centroid is looked for: the largest displacement of ``high``.
SEARCH_MM = 8.0


def misaligned_subjects(
    seeds: Sequence[int], severity: str, resolution: float = 2.0, lowres_mode: str = "slab"
) -> list[Subject]:
    """Phantom subjects whose ``t2`` is the *aligned* truth and whose ``t2_lowres`` is misaligned by ``severity``.

    ``severity`` ``"none"`` gives the aligned phantom. Each subject's metadata holds
    its ``csf_fraction`` (for the ventricles) and the motion's displacement.
    """
    if severity not in SEVERITIES:
        raise NeurosynthError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}")
    options: dict[str, Any] = {"tissues": True}
    if severity != "none":
        options["target_misalignment"] = severity
    if lowres_mode != "slab":
        options["lowres_mode"] = lowres_mode
    mods = ["t1", "t2_lowres", "t2"] + (["t2_aligned"] if severity != "none" else [])
    subjects = load_subjects(f"phantom:{','.join(str(int(s)) for s in seeds)}", mods, resolution, **options)
    for s in subjects:
        if severity != "none":
            s.meta["motion"] = s.images["t2"].metadata.get("motion")
            s.images["t2"] = s.images.pop("t2_aligned")
    return subjects


def ventricle_mask(subject: Subject) -> NDArray[np.bool_]:
    """The lateral ventricles: the largest CSF component (fraction > 0.5) in the central half of the brain box."""
    csf = subject.meta.get("csf_fraction")
    if csf is None:
        raise NeurosynthError(f"subject {subject.name!r} has no CSF fraction; load it with tissues=True")
    brain = subject.mask()
    box = np.zeros_like(brain)
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    q = (hi - lo) // 4
    box[lo[0] + q[0] : hi[0] - q[0], lo[1] + q[1] : hi[1] - q[1], lo[2] + q[2] : hi[2] - q[2]] = True
    labels, n = ndi.label((np.asarray(csf) > 0.5) & brain & box)
    if n == 0:
        return np.zeros_like(brain)
    sizes = ndi.sum(np.ones_like(labels), labels, range(1, n + 1))
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def _objects(subject: Subject) -> list[tuple[str, NDArray[np.bool_]]]:
    spacing = np.asarray(subject.images["t1"].spacing, float)
    voxel = float(np.prod(spacing))
    out = [("ventricles", ventricle_mask(subject))]
    if subject.lesion_mask is not None:
        labels, n = ndi.label(np.isin(subject.lesion_mask, T2_LESION_LABELS))
        for i in range(1, n + 1):
            comp = labels == i
            if comp.sum() * voxel >= MIN_OBJECT_MM3:
                out.append((f"lesion {i}", comp))
    return [(name, m) for name, m in out if m.sum() * voxel >= MIN_OBJECT_MM3]


def _box(mask: NDArray[np.bool_]) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))


def centroid_offsets(prediction: NDArray[Any], truth: NDArray[Any], subject: Subject) -> dict[str, float | int | None]:
    """Mean centroid offset (mm) of the ventricles and of the T2-visible lesions, ``prediction`` vs ``truth``.

    Each object (from the phantom's masks, aligned with the source) is boxed
    with a margin of :data:`SEARCH_MM`, and the shift between prediction and truth
    in that box is found by phase correlation with sub-voxel refinement
    (scikit-image's ``phase_cross_correlation``, upsampling 10): how far the
    prediction moved the object, whatever its contrast.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_neurosynth.data import Subject
    >>> from napari_neurosynth.io import Volume
    >>> truth = np.zeros((30, 30, 30), np.float32); truth[10:16, 10:16, 10:16] = 1.0
    >>> les = (truth > 0).astype(np.uint8); brain = np.ones_like(les, bool)
    >>> subj = Subject("toy", {"t1": Volume(truth, np.diag([2.0, 2, 2, 1]))}, brain, les,
    ...                {"csf_fraction": np.zeros_like(truth)})
    >>> off = centroid_offsets(np.roll(truth, 1, axis=0), truth, subj)   # one voxel = 2 mm
    >>> off["lesions_mm"], off["n_lesions"], off["ventricles_mm"]
    (2.0, 1, None)
    """
    spacing = np.asarray(subject.images["t1"].spacing, float)
    grow = np.maximum(1, np.round(SEARCH_MM / spacing)).astype(int)
    structure = np.ones(tuple(2 * g + 1 for g in grow), bool)
    pred, true = np.asarray(prediction, np.float32), np.asarray(truth, np.float32)
    lesion_offsets, ventricles = [], None
    for name, obj in _objects(subject):
        box = _box(ndi.binary_dilation(obj, structure))
        a, b = true[box], pred[box]
        shift = phase_cross_correlation(a - a.mean(), b - b.mean(), upsample_factor=10, normalization=None)[0]
        d = np.asarray(shift, float) * spacing
        mm = float(np.sqrt((d**2).sum()))
        if name == "ventricles":
            ventricles = round(mm, 3)
        else:
            lesion_offsets.append(mm)
    return {
        "ventricles_mm": ventricles,
        "lesions_mm": round(float(np.mean(lesion_offsets)), 3) if lesion_offsets else None,
        "n_lesions": len(lesion_offsets),
    }


def evaluate_misalignment(
    models: Sequence[Any],
    seeds: Sequence[int],
    severities: Sequence[str] = SEVERITIES,
    resolution: float = 2.0,
    lowres_mode: str = "slab",
    train_data: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Each model and both baselines on held-out phantoms per misalignment severity.

    Parameters
    ----------
    models : sequence of Model
        MCSR bundles with the same inputs (``t1``, ``t2_lowres``) and output ``t2``.
    seeds : sequence of int
        Held-out phantom seeds.
    severities : sequence of str
        From :data:`SEVERITIES`.
    train_data : str, optional
        Training data of the LUT baseline (default: the first card's, with its phantom options).

    Returns
    -------
    dict
        ``severities``: severity -> ``{"displacement_mm", "rows": {predictor: metrics + centroid offsets}}``,
        predictors being each model's name, ``input_standardised`` and ``intensity_lut``; and ``seeds``,
        ``resolution_mm``, ``lowres_mode``.
    """
    from ..preprocessing import intensity_scale
    from .heldout import _evaluate_subjects, lut_from_card

    if not models:
        raise NeurosynthError("evaluate_misalignment needs at least one model")
    first = models[0].card
    for m in models:
        if list(m.card["inputs"]) != list(first["inputs"]) or m.card["output"] != first["output"]:
            raise NeurosynthError(f"model {m.name!r} does not take {first['inputs']} -> {first['output']}")
    lut = lut_from_card(first, train_data)
    out: dict[str, Any] = {
        "seeds": [int(s) for s in seeds],
        "resolution_mm": float(resolution),
        "lowres_mode": lowres_mode,
        "severities": {},
    }
    for sev in severities:
        if progress:
            progress(sev)
        subjects = misaligned_subjects(seeds, sev, resolution, lowres_mode)
        rows: dict[str, dict] = {}
        offsets: dict[str, list[dict]] = {}
        synthesized: dict[str, dict[str, NDArray[Any]]] = {}
        for m in models:
            res = _evaluate_subjects(m, subjects, lut, predictions=synthesized.setdefault(m.name, {}))
            rows[m.name] = dict(res["held_out"])
            rows.setdefault("input_standardised", dict(res["baselines"]["input_standardised"]))
            rows.setdefault("intensity_lut", dict(res["baselines"]["intensity_lut"]))
        spec = first.get("normalization")
        for subj in subjects:
            truth = np.asarray(subj.images["t2"].data, np.float32)
            truth = truth / intensity_scale(truth, spec)
            low = np.asarray(subj.images["t2_lowres"].data, np.float32)  # resampled onto the T1 grid
            preds = {"input_standardised": low / intensity_scale(low, spec)}
            for m in models:
                preds[m.name] = synthesized[m.name][subj.name]  # the engine ran once per model and subject
            for key, pred in preds.items():
                offsets.setdefault(key, []).append(centroid_offsets(pred, truth, subj))
        for key, offs in offsets.items():
            for k in ("ventricles_mm", "lesions_mm"):
                vals = [o[k] for o in offs if o[k] is not None]
                rows[key][f"offset_{k}"] = round(float(np.mean(vals)), 3) if vals else None
        disp = [(s.meta.get("motion") or {}).get("displacement_mm", {}).get("brain_mean", 0.0) for s in subjects]
        out["severities"][sev] = {"displacement_mm": round(float(np.mean(disp)), 3), "rows": rows}
    return out


def format_misalignment(result: Mapping[str, Any]) -> str:
    """Markdown: one table per severity (PSNR, SSIM, MAE in the brain; centroid offsets in mm)."""
    lines = [
        f"held-out phantom seeds {result['seeds']} at {result['resolution_mm']:g} mm, t2_lowres by "
        f"{result['lowres_mode']}; metrics against the aligned T2 (brain mask, mean over subjects)"
    ]
    for sev, block in result["severities"].items():
        lines += [
            "",
            f"severity {sev} (mean displacement in the brain {block['displacement_mm']:.2f} mm)",
            "",
            "| predictor | PSNR | SSIM | MAE | ventricle offset mm | lesion offset mm |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in block["rows"].items():

            def f(v: Any, fmt: str) -> str:
                return "-" if v is None else format(v, fmt)

            lines.append(
                f"| {name} | {r['psnr_brain']:.2f} | {r['ssim_brain']:.3f} | {r['mae_brain']:.4f} | "
                f"{f(r.get('offset_ventricles_mm'), '.2f')} | {f(r.get('offset_lesions_mm'), '.2f')} |"
            )
    return "\n".join(lines)
