"""Tune the difference map's defaults (threshold, minimum size, smoothing) on phantom subjects.

For one shipped model (default ``t1_to_t2``) and a few phantom seeds it synthesizes the
model's output from its inputs, computes the z-map of synthesized minus acquired
exactly as the *Compare & Explain* widget does
(``difference_map(synth, target, brain_mask, lesion=lesion_mask, normalize=True,
smooth_mm=...)`` then ``disagreement_regions(...)``), and for every setting of a small
grid (threshold x minimum region size x smoothing) prints:

* ``false``: the share of all flagged volume that lies outside the lesion mask
  (pooled over the subjects: outside voxels / flagged voxels), and ``false+1``: the same
  with the lesions dilated by one voxel (a region that covers a lesion's
  partial-volume rim is not a false alarm there);
* ``regions``: regions per subject (mean), and ``off``: those touching no lesion;
* per lesion kind, lesions flagged / lesions (a *lesion* is a 26-connected component of
  one label, at least 3 voxels, as :func:`~napari_neurosynth.explain.lesion_fidelity`
  has it; it is *flagged* when a region overlaps it);
* ``erased``: lesions flagged / lesions that ``lesion_fidelity`` calls *erased*
  (acquired CNR >= 1 and under 30 % of the acquired contrast left in the synthesis):
  the disagreements the map exists to point at; ``cover``: the share of those erased
  lesions' volume that lies inside regions (does a region outline the lesion or mark a
  speck of it); ``atten.``: the same count for the lesions it calls *attenuated*
  (30-70 % of the contrast left);
* per subject, the weakest erased lesion's peak ``|z|``: how far the threshold could
  rise before a region misses it.

The seeds used to *choose* defaults must be training seeds (the shipped models train on
``phantom:0-11``), never held-out seeds (1000+) nor the demo subject (seed 0, 1 mm:
``napari_neurosynth.viewer.demo.run_demo``). ``--report`` prints the same figures for
named settings only, e.g. on the demo subject before and after a change of defaults.

Not a test: it prints a table. Run from the repository root::

    python benchmarks/tune_difference_map.py                       # t1_to_t2, seeds 1-4, 1 mm
    python benchmarks/tune_difference_map.py --model t1_to_flair --seeds 1-2
    python benchmarks/tune_difference_map.py --resolution 3 --seeds 1  # a quick look
    python benchmarks/tune_difference_map.py --seeds 0 --report 3.5,15,0 4.5,15,0  # the demo subject
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_neurosynth import load_model, make_phantom, synthesize
from napari_neurosynth.data import parse_seeds
from napari_neurosynth.explain import difference_map, disagreement_regions, lesion_fidelity
from napari_neurosynth.phantom.lesions import LESION_LABELS

CONN26 = np.ones((3, 3, 3), bool)
#: Lesion components smaller than this are skipped, as lesion_fidelity's default.
MIN_LESION_VOXELS = 3


def _setting(text: str) -> tuple[float, float, float]:
    """``"3.5,15,0"`` -> (threshold, min size mm3, smoothing sigma mm)."""
    try:
        t, m, s = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected THRESHOLD,MIN_MM3,SMOOTH_MM, not {text!r}") from None
    return t, m, s


def lesion_components(labels: np.ndarray) -> list[tuple[int, tuple[np.ndarray, ...]]]:
    """(label value, voxel index tuple) per 26-connected component of one label, >= 3 voxels.

    The same components, in the same order, as ``lesion_fidelity``'s ``lesions`` rows.
    """
    out = []
    for value in np.unique(labels[labels != 0]):
        comp, n = ndi.label(labels == value, structure=CONN26)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        objects = ndi.find_objects(comp)
        for c in range(1, n + 1):
            if sizes[c] < MIN_LESION_VOXELS:
                continue
            sl = objects[c - 1]
            idx = np.nonzero(comp[sl] == c)
            out.append((int(value), tuple(i + s.start for i, s in zip(idx, sl))))
    return out


class Subject:
    """One phantom subject: synthesis, lesions, fidelity status and the z-maps."""

    def __init__(self, model, seed: int, resolution: float, smooth: Iterable[float], lesion_mask: bool) -> None:
        t0 = time.monotonic()
        ph = make_phantom(seed=seed, lesions=True, resolution=resolution)
        inputs = [ph[name] for name in model.card["inputs"]]
        target = ph[model.card["output"]]
        synth = target.with_data(synthesize(model, inputs, device="cpu"))
        brain, lesion = ph["brain_mask"], ph["lesion_mask"]
        self.seed = seed
        self.vox_mm3 = float(abs(np.linalg.det(target.affine[:3, :3])))
        self.labels = np.asarray(lesion.data)
        self.any_lesion = self.labels != 0
        self.near_lesion = ndi.binary_dilation(self.any_lesion, structure=CONN26)
        self.lesions = lesion_components(self.labels)
        self.z = {
            float(s): difference_map(
                synth, target, brain, lesion=lesion if lesion_mask else None, normalize=True, smooth_mm=float(s)
            )
            for s in smooth
        }
        fid = lesion_fidelity(synth, target, lesion=lesion, mask=brain, normalize=True, z=self.z.get(0.0))
        rows = fid["lesions"]
        assert [(r["label"], r["voxels"]) for r in rows] == [(v, len(i[0])) for v, i in self.lesions]
        self.status = [r["status"] for r in rows]
        #: per lesion, the largest |z| inside it on the first z-map (unsmoothed when 0 is among the sigmas)
        z_first = self.z[min(self.z)]
        self.peak = [float(np.abs(z_first[idx]).max()) for _, idx in self.lesions]
        self.seconds = time.monotonic() - t0

    def measure(self, threshold: float, min_mm3s: Iterable[float], smooth: float) -> dict[float, dict]:
        """Figures per minimum size (mm3) at one threshold and smoothing."""
        labels, table = disagreement_regions(self.z[smooth], threshold, min_voxels=1)
        sizes = np.array([r["voxels"] for r in table], int)
        n = len(table)
        # per region: does it touch a lesion; per lesion: the regions overlapping it
        touches = np.zeros(n + 1, bool)
        touches[np.unique(labels[self.any_lesion])] = True
        outside = np.bincount(labels[~self.any_lesion].ravel(), minlength=n + 1)
        outside_rim = np.bincount(labels[~self.near_lesion].ravel(), minlength=n + 1)
        per_lesion = [labels[idx] for _, idx in self.lesions]
        out = {}
        for m in min_mm3s:
            keep = np.zeros(n + 1, bool)
            # as disagreement_regions(min_voxels=4, min_mm3=m), the widget's call
            keep[1:] = sizes >= max(4, int(np.ceil(m / self.vox_mm3 - 1e-9)))
            covered = [int(keep[ids].sum()) for ids in per_lesion]  # keep[0] is False: background
            out[m] = {
                "flagged_vox": int(sizes[keep[1:]].sum()),
                "outside_vox": int(outside[keep].sum()),
                "outside_rim_vox": int(outside_rim[keep].sum()),
                "regions": int(keep.sum()),
                "off_lesion": int((keep & ~touches).sum()),
                "lesions": [
                    (value, status, c > 0, c, len(ids))
                    for (value, _), status, c, ids in zip(self.lesions, self.status, covered, per_lesion)
                ],
            }
        return out


def summarize(per_subject: list[dict]) -> dict:
    """Pool one setting's figures over the subjects."""
    flagged = sum(r["flagged_vox"] for r in per_subject)
    kinds: dict[int, list[int]] = {}
    erased = [0, 0]
    attenuated = [0, 0]
    cover = [0, 0]
    for r in per_subject:
        for value, status, hit, covered, size in r["lesions"]:
            k = kinds.setdefault(value, [0, 0])
            k[0] += hit
            k[1] += 1
            if status == "erased":
                erased[0] += hit
                erased[1] += 1
                cover[0] += covered
                cover[1] += size
            elif status == "attenuated":
                attenuated[0] += hit
                attenuated[1] += 1
    return {
        "false": sum(r["outside_vox"] for r in per_subject) / flagged if flagged else float("nan"),
        "false_rim": sum(r["outside_rim_vox"] for r in per_subject) / flagged if flagged else float("nan"),
        "false_per_subject": [
            r["outside_vox"] / r["flagged_vox"] if r["flagged_vox"] else float("nan") for r in per_subject
        ],
        "regions": float(np.mean([r["regions"] for r in per_subject])),
        "off_lesion": float(np.mean([r["off_lesion"] for r in per_subject])),
        "kinds": kinds,
        "erased": erased,
        "attenuated": attenuated,
        "cover": cover[0] / cover[1] if cover[1] else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t1_to_t2")
    p.add_argument("--seeds", default="1-4", help="phantom seeds (training seeds to choose defaults; default 1-4)")
    p.add_argument("--resolution", type=float, default=1.0, help="voxel size in mm (default 1)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[3.0, 3.5, 4.0, 4.5, 5.0])
    p.add_argument(
        "--min-mm3",
        type=float,
        nargs="+",
        default=[4.0, 15.0, 30.0],
        help="minimum region sizes, mm3 (and never under 4 voxels, as the widget's call)",
    )
    p.add_argument("--smooth", type=float, nargs="+", default=[0.0, 1.0], help="z-map smoothing sigmas, mm (0: off)")
    p.add_argument(
        "--report", type=_setting, nargs="+", metavar="T,MM3,SMOOTH", help="only these settings, one line each"
    )
    p.add_argument("--no-lesion-mask", action="store_true", help="do not pass the lesion mask to difference_map")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", type=Path, help="also write the pooled figures as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.report:
        grid = sorted(set(args.report))
        smooth = sorted({s for _, _, s in grid})
    else:
        grid = [(t, m, s) for s in args.smooth for t in args.thresholds for m in args.min_mm3]
        smooth = sorted(set(args.smooth))
    model = load_model(args.model)
    seeds = parse_seeds(args.seeds)
    norm = (model.card.get("architecture") or {}).get("args", {}).get("norm", "instance (default)")
    print(
        f"model {args.model} (sha256 {model.card['weights']['sha256'][:12]}, norm {norm}); phantom seeds {seeds} "
        f"at {args.resolution:g} mm, whole head, 3 T default protocol; lesion mask "
        f"{'not ' if args.no_lesion_mask else ''}passed to difference_map"
    )
    subjects = []
    for seed in seeds:
        subj = Subject(model, seed, args.resolution, smooth, not args.no_lesion_mask)
        erased: dict[str, int] = {}
        for (value, _), status in zip(subj.lesions, subj.status):
            if status == "erased":
                erased[LESION_LABELS[value]] = erased.get(LESION_LABELS[value], 0) + 1
        what = ", ".join(f"{k} {v}" for k, v in erased.items()) or "none"
        weakest = min(
            ((p, LESION_LABELS[v]) for (v, _), st, p in zip(subj.lesions, subj.status, subj.peak) if st == "erased"),
            default=None,
        )
        weak = f"; weakest erased lesion peak |z| {weakest[0]:.1f} ({weakest[1]})" if weakest else ""
        print(
            f"  seed {seed}: {len(subj.lesions)} lesions, erased: {what}{weak} (z smoothing {min(subj.z):g} mm); "
            f"{subj.seconds:.0f} s",
            flush=True,
        )
        subjects.append(subj)

    kinds = sorted({v for s in subjects for v, _ in s.lesions})
    head = (
        f"{'thr':>4} {'mm3':>4} {'smooth':>6} | {'false':>5} {'false+1':>7} {'regions':>7} {'off':>5} | "
        + " ".join(f"{LESION_LABELS[k][:11]:>11}" for k in kinds)
        + f" | {'erased':>7} {'cover':>5} {'atten.':>7}"
    )
    print(head)
    print("-" * len(head))
    results = []
    by_key: dict[tuple[float, float], dict[float, list[dict]]] = {}
    for t, m, s in grid:
        by_key.setdefault((t, s), {}).setdefault(m, [])
    for (t, s), sizes in by_key.items():
        for subj in subjects:
            for m, r in subj.measure(t, list(sizes), s).items():
                sizes[m].append(r)
    for t, m, s in grid:
        summ = summarize(by_key[(t, s)][m])
        results.append({"threshold": t, "min_mm3": m, "smooth_mm": s, **summ})
        cells = " ".join(f"{summ['kinds'].get(k, [0, 0])[0]:>5}/{summ['kinds'].get(k, [0, 0])[1]:<5}" for k in kinds)
        e, a = summ["erased"], summ["attenuated"]
        print(
            f"{t:>4g} {m:>4g} {s:>6g} | {summ['false']:>5.3f} {summ['false_rim']:>7.3f} {summ['regions']:>7.1f} "
            f"{summ['off_lesion']:>5.1f} | {cells} | {e[0]:>3}/{e[1]:<3} {summ['cover']:>5.2f} {a[0]:>3}/{a[1]:<3}"
        )
    print(
        "false: flagged volume outside the lesion mask / all flagged volume (pooled); false+1: outside the lesions "
        "dilated by one voxel; regions, off: regions per subject, of them touching no lesion; per kind, erased "
        "and atten(uated, per lesion_fidelity): lesions flagged / lesions; cover: share of the erased lesions' "
        "volume inside regions"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"model": args.model, "seeds": seeds, "resolution_mm": args.resolution, "settings": results},
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
