"""Where and why a synthesized volume disagrees with the acquired one.

- :func:`difference_map`: the signed difference *synthesized - acquired* as a
  z-map, normalised by the robust spread of the residual in normal-appearing
  brain tissue, so that disagreements (an erased or invented lesion) stand out
  against the generator's ordinary error.
- :func:`disagreement_regions`: the z-map thresholded into connected regions,
  with a table per region (size, mean z, world centroid, sign).
- :func:`lesion_fidelity`: per lesion, contrast and contrast-to-noise ratio
  against the surrounding normal-appearing tissue in the acquired and the
  synthesized image; flags erased lesions and invented ones.
- :func:`gradcam`: class-activation maps for an image-to-image generator, the
  score being the mean output inside a region of interest; HiResCAM
  (element-wise, the default) or the original Grad-CAM.
- :func:`uncertainty`: per-voxel spread of the synthesis under test-time
  augmentation (left-right flips, small in-plane shifts) and MC dropout when the
  network has dropout layers.

All functions take numpy arrays or :class:`~napari_neurosynth.io.Volume`; with
Volumes, sizes come out in mm3 and centroids in RAS+ millimetres.
See ``docs/compare-explain.md`` for the definitions and the rules.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import NeurosynthError
from .metrics import ArrayOrVolume, _normalize, as_array, check_same_grid

__all__ = [
    "difference_map",
    "disagreement_regions",
    "lesion_fidelity",
    "gradcam",
    "uncertainty",
    "robust_sigma",
    "roc_auc",
    "dice",
]

#: 26-connectivity: voxels touching by a face, an edge or a corner are one region.
_CONN26 = np.ones((3, 3, 3), bool)
#: MAD -> standard deviation for Gaussian noise.
_MAD_TO_SD = 1.4826


# --------------------------------------------------------------------------- helpers


def _affine_of(*xs: Any) -> np.ndarray | None:
    for x in xs:
        a = getattr(x, "affine", None)
        if a is not None:
            return np.asarray(a, float)
    return None


def _voxel_mm3(affine: np.ndarray | None) -> float | None:
    return None if affine is None else round(float(abs(np.linalg.det(affine[:3, :3]))), 6)


def _world(affine: np.ndarray | None, ijk: Sequence[float]) -> list[float] | None:
    if affine is None:
        return None
    return [float(v) for v in (affine @ np.r_[np.asarray(ijk, float), 1.0])[:3]]


def _bool_mask(m: ArrayOrVolume, ref: ArrayOrVolume, name: str, allow_empty: bool = False) -> np.ndarray:
    check_same_grid(m, ref, (name, "target"))
    mask = as_array(m, name)[0] != 0
    if not allow_empty and not mask.any():
        raise NeurosynthError(f"{name} is empty (no nonzero voxel)")
    return mask


def _normalized_pair(synth, target, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    check_same_grid(synth, target)
    s = as_array(synth, "synth")[0].astype(np.float64)
    t = as_array(target, "target")[0].astype(np.float64)
    if normalize:  # the same normalisation evaluate() applies
        s, t = _normalize(s), _normalize(t)
    return s, t


def robust_sigma(x: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)`` of ``x``: a centre and spread that ignore outliers."""
    med = float(np.median(x))
    return med, float(_MAD_TO_SD * np.median(np.abs(x - med)))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``.

    The Mann-Whitney U statistic with mid-ranks for ties
    (:func:`scipy.stats.rankdata`): the probability that a random positive
    scores above a random negative.
    """
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, float).ravel(), np.asarray(positive, bool).ravel()
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        raise NeurosynthError("ROC AUC needs both positive and negative voxels")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two masks (1.0 when both are empty)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    den = int(a.sum() + b.sum())
    return 1.0 if den == 0 else float(2 * np.logical_and(a, b).sum() / den)


# --------------------------------------------------------------------------- difference map


def _conditional_centre_spread(pred: np.ndarray, resid: np.ndarray, bins: int) -> tuple:
    """Median and robust SD of ``resid`` as smooth functions of ``pred``.

    Quantile bins of ``pred``; per bin the median and 1.4826 x MAD of ``resid``;
    linear interpolation between the bins' median ``pred`` (clamped at the ends).
    """
    edges = np.quantile(pred, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges[1:-1], pred, side="right"), 0, bins - 1)
    centres, meds, sds = [], [], []
    for i in range(bins):
        sel = which == i
        if sel.sum() < 20:  # too few voxels for a stable MAD: merge into the neighbours by skipping
            continue
        c, sd = robust_sigma(resid[sel])
        centres.append(float(np.median(pred[sel])))
        meds.append(c)
        sds.append(sd)
    if not centres:
        c, sd = robust_sigma(resid)
        return np.array([0.0]), np.array([c]), np.array([sd])
    order = np.argsort(centres)
    return np.asarray(centres)[order], np.asarray(meds)[order], np.asarray(sds)[order]


def _normalized_convolution(x: np.ndarray, weights: np.ndarray, sigma_vox, mode: str, min_weight: float) -> np.ndarray:
    """``G*(w x) / G*w``: Gaussian average of ``x`` over the voxels where ``weights`` is set.

    Holes (unset voxels) are filled from their surroundings and, at the edge of the
    set region, only set voxels count. Where ``G*w <= min_weight`` the result is 0.
    """
    num = ndi.gaussian_filter(np.where(weights, x, 0.0), sigma_vox, mode=mode)
    den = ndi.gaussian_filter(weights.astype(float), sigma_vox, mode=mode)
    return np.where(den > min_weight, num / np.maximum(den, min_weight), 0.0)


def _smooth_log_ratio(s: np.ndarray, t: np.ndarray, weights: np.ndarray, sigma_vox) -> np.ndarray:
    """Smooth field ``b`` with ``t ~ s * exp(b)``: normalised Gaussian convolution of ``log(t/s)``.

    Normalised convolution fills the holes left by excluded voxels (lesions,
    disagreements, background) from their surroundings.
    """
    floor = 0.05  # normalised units: below this the log-ratio is noise (background, dark CSF edges)
    ok = weights & (s > floor) & (t > floor)
    lr = np.zeros(s.shape)
    lr[ok] = np.log(t[ok] / s[ok])
    return _normalized_convolution(lr, ok, sigma_vox, mode="nearest", min_weight=1e-3)


def _masked_smooth(x: np.ndarray, inside: np.ndarray, sigma_vox) -> np.ndarray:
    """Gaussian smoothing of ``x`` restricted to ``inside`` by normalised convolution.

    Voxels near the mask's edge are averages of the voxels inside only, so the
    zeros outside do not pull them towards 0. Outside the mask the result is 0.
    """
    return np.where(inside, _normalized_convolution(x, inside, sigma_vox, mode="constant", min_weight=1e-6), 0.0)


def _zscore(s, t, brain, normal, spread, bins, r=None):
    """Robust z of the residual ``r`` (default ``s - t``), centre and spread conditional on ``s``."""
    r = s - t if r is None else r
    centres, meds, sds = _conditional_centre_spread(s[normal], r[normal], 1 if spread == "global" else max(1, int(bins)))
    # a zero spread (more than half the residual identical, e.g. a copy) falls back to the SD
    fallback = float(np.std(r[normal])) or 1.0
    sds = np.where(sds > 0, sds, fallback)
    z = np.zeros(r.shape, np.float32)
    sb = s[brain]
    z[brain] = ((r[brain] - np.interp(sb, centres, meds)) / np.interp(sb, centres, sds)).astype(np.float32)
    return z


def difference_map(
    synth: ArrayOrVolume,
    target: ArrayOrVolume,
    mask: ArrayOrVolume,
    *,
    lesion: ArrayOrVolume | None = None,
    normalize: bool = True,
    spread: str = "intensity",
    bins: int = 10,
    bias_mm: float | None = 10.0,
    smooth_mm: float | None = 0.0,
) -> np.ndarray:
    """The synthesized-minus-acquired difference as a z-map.

    ``r = s - t`` is the residual and ``N`` the *normal-appearing tissue*: the brain
    ``mask`` minus the ``lesion`` mask when one is given. With ``spread="global"``::

        z = (r - median(r_N)) / (1.4826 * MAD(r_N))

    With ``spread="intensity"`` (default) the median and MAD are taken among the
    normal-tissue voxels whose *synthesized* intensity is similar (``bins``
    quantile bins of ``s`` in ``N``, interpolated linearly between bins)::

        z = (r - m(s)) / sd(s)

    A generator's error is heteroscedastic: small where it predicts white matter,
    large at grey-matter/CSF edges. Conditioning on the prediction (not on the
    acquired value, which is what is under test) keeps ordinary edge errors at
    modest z while a voxel predicted as white matter but acquired much brighter
    stands out; the per-bin median is also a robust, piecewise-linear intensity match
    of synthesis to target, so a global or nonlinear intensity mismatch does not
    dominate the map. Median and MAD are robust, so even without a lesion mask a
    lesion-sized disagreement barely moves them.

    ``normalize=True`` (default) first scales both volumes with
    :func:`~napari_neurosynth.preprocessing.normalize_intensity` (99.5th foreground
    percentile -> 1). With ``bias_mm`` (default 10 mm) a smooth multiplicative
    intensity drift between the two (the acquired image's own bias field, which a
    synthesis from another contrast cannot know) is removed first: the log-ratio
    ``log(t / s)`` over normal tissue, smoothed by a Gaussian of ``bias_mm`` sigma
    (normalised convolution), re-estimated twice without the voxels with
    ``|z| >= 3``; the synthesis is multiplied by ``exp`` of that field. Lesions are
    focal and excluded, so they survive it. Positive z: the synthesis is brighter than the acquired
    image; negative: darker. Outside the brain mask z is 0.

    With ``smooth_mm`` (Gaussian sigma in mm; default 0, off) the voxel-wise z-map
    is smoothed inside the brain mask (normalised convolution, so the brain edge is
    not pulled towards the zeros outside) and standardised again as above, so ``z``
    is relative to the spread of the *smoothed* residual. It removes the voxel
    speckle of the acquired image's noise and lifts a faint, lesion-sized
    disagreement out of white noise; but on the shipped ``t1_to_t2`` at 1 mm the
    generator's spatially coherent error then dominates the tails, and at the
    default threshold 3.5 :func:`disagreement_regions` reports more false regions
    (measured in ``docs/compare-explain.md``), hence off by default.

    Parameters
    ----------
    synth, target : numpy.ndarray or Volume
        Synthesized and acquired volumes on one grid.
    mask : array or Volume
        Brain mask (nonzero = brain).
    lesion : array or Volume, optional
        Known lesions, excluded from the noise estimate (not from the map).
    normalize : bool
        Percentile-normalise both volumes first (see above).
    spread : {"intensity", "global"}
        Residual centre and spread conditional on the synthesized intensity, or global.
    bins : int
        Number of intensity bins for ``spread="intensity"``.
    bias_mm : float or None
        Gaussian sigma (mm; voxel size from the Volume's affine, 1 mm for bare
        arrays) of the smooth intensity-ratio field removed first; None: off.
    smooth_mm : float or None
        Gaussian sigma (mm, as ``bias_mm``) of the smoothing of the z-map before it
        is standardised again; 0 or None (default): voxel-wise, unsmoothed.

    Returns
    -------
    numpy.ndarray
        float32 z-map on the common grid.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = 1 + 0.05 * rng.standard_normal((20, 20, 20)); s = t + 0.05 * rng.standard_normal(t.shape)
    >>> s[8:12, 8:12, 8:12] += 1.0  # the synthesis invents a bright blob
    >>> z = difference_map(s, t, np.ones(t.shape), normalize=False, spread="global")
    >>> bool(z[8:12, 8:12, 8:12].min() > 5), bool(abs(np.median(z)) < 0.1)
    (True, True)
    """
    if spread not in ("intensity", "global"):
        raise NeurosynthError(f"spread must be 'intensity' or 'global', not {spread!r}")
    s, t = _normalized_pair(synth, target, normalize)
    brain = _bool_mask(mask, target, "brain mask")
    normal = brain.copy()
    if lesion is not None:
        normal &= ~_bool_mask(lesion, target, "lesion mask", allow_empty=True)
        if not normal.any():
            raise NeurosynthError("the lesion mask covers the whole brain mask: no normal tissue to estimate noise from")
    affine = _affine_of(target, synth, mask)
    spacing = [float(d) for d in np.linalg.norm(affine[:3, :3], axis=0)] if affine is not None else [1.0] * 3
    try:
        smooth_mm = float(smooth_mm or 0.0)
    except (TypeError, ValueError):
        smooth_mm = float("nan")
    if not np.isfinite(smooth_mm) or smooth_mm < 0:
        raise NeurosynthError("smooth_mm must be 0 (off) or a positive Gaussian sigma in mm")
    if bias_mm:
        # The synthesis inherits the *source's* shading, never the target's own
        # receiver-coil bias field, so the raw residual carries a smooth multiplicative
        # drift that has nothing to do with lesions. Estimate it as a smooth log-ratio
        # field over normal tissue, re-estimated without the voxels it flags, and
        # divide it out of the synthesis.
        sigma_vox = [float(bias_mm) / d for d in spacing]
        weights = normal.copy()
        s_raw = s
        for _ in range(3):
            s = s_raw * np.exp(_smooth_log_ratio(s_raw, t, weights, sigma_vox))
            weights = normal & (np.abs(_zscore(s, t, brain, normal, spread, bins)) < 3.0)
    z = _zscore(s, t, brain, normal, spread, bins)
    if smooth_mm:
        # Standardise per voxel first (the generator's error is heteroscedastic), then
        # average over a few mm inside the brain: uncorrelated acquisition noise averages
        # out, a lesion-sized disagreement does not. The smoothed map is standardised
        # again, so z is relative to the spread of the *smoothed* residual. (Smoothing the
        # centred residual instead, before the per-intensity spread, measured the same or worse.)
        zs = _masked_smooth(z.astype(np.float64), brain, [float(smooth_mm) / d for d in spacing])
        z = _zscore(s, t, brain, normal, spread, bins, r=zs)
    return z


def disagreement_regions(
    z: ArrayOrVolume,
    threshold: float = 3.5,
    *,
    grow: float | None = None,
    min_voxels: int = 4,
    min_mm3: float | None = None,
    affine: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Connected regions where the synthesis disagrees with the acquired image.

    Voxels with ``|z| >= threshold`` form 26-connected regions. With ``grow``
    (hysteresis thresholding) the regions also take in connected voxels of the
    same sign with ``|z| >= grow``, which recovers a lesion's partial-volume rim;
    it is off by default because at 26-connectivity a grow level near 2 lets
    spatially correlated residual noise percolate into large regions. Brighter
    and darker regions are labelled separately, so each region has one sign.
    Regions smaller than ``min_voxels`` (or ``min_mm3`` when given and the voxel
    size is known) are dropped.

    Parameters
    ----------
    z : numpy.ndarray or Volume
        A z-map from :func:`difference_map`.
    threshold : float
        Threshold on ``|z|``. The default 3.5 is Iglewicz and Hoaglin's (1993) outlier
        rule for the modified z-score ``0.6745 (x - median) / MAD``, which is what
        :func:`difference_map` computes.
    grow : float or None
        Optional growing threshold on ``|z|`` (at most ``threshold``; default off).
    min_voxels, min_mm3 : int, float
        Minimum region size.
    affine : numpy.ndarray, optional
        Index -> RAS+ mm (taken from ``z`` when it is a Volume).

    Returns
    -------
    labels : numpy.ndarray
        int32 label volume, 0 = background; label 1 is the largest region.
    table : list of dict
        One per label: ``label``, ``voxels``, ``mm3`` (None without an affine),
        ``mean_z``, ``peak_z`` (largest ``|z|``, signed), ``centroid_voxel``,
        ``centroid_world`` (RAS+ mm or None), ``sign`` (+1 / -1) and
        ``direction`` ("synthesis brighter" / "synthesis darker").

    Examples
    --------
    >>> z = np.zeros((10, 10, 10)); z[2:4, 2:4, 2:4] = -5; z[6:9, 6:9, 6:9] = 4
    >>> labels, table = disagreement_regions(z, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> [(r["label"], r["voxels"], r["mm3"], r["direction"]) for r in table]
    [(1, 27, 216.0, 'synthesis brighter'), (2, 8, 64.0, 'synthesis darker')]
    """
    data, aff = as_array(z, "z-map")
    data = data.astype(np.float64)
    affine = aff if affine is None else np.asarray(affine, float)
    if threshold <= 0:
        raise NeurosynthError("threshold must be positive")
    low = threshold if grow is None else min(float(grow), float(threshold))
    vox = _voxel_mm3(affine)
    min_size = int(min_voxels)
    if min_mm3 is not None:
        if vox is None:
            raise NeurosynthError("min_mm3 needs the voxel size: pass a Volume or affine=")
        min_size = max(min_size, int(np.ceil(min_mm3 / vox)))

    regions = []  # (voxel indices, sign)
    for sign in (1, -1):
        signed = sign * data
        cand, n = ndi.label(signed >= low, structure=_CONN26)
        if n == 0:
            continue
        seeded = np.unique(cand[signed >= threshold])
        seeded = seeded[seeded > 0]
        sizes = np.bincount(cand.ravel(), minlength=n + 1)
        objects = ndi.find_objects(cand)
        for lab in seeded:
            if sizes[lab] < min_size:
                continue
            sl = objects[lab - 1]
            local = np.argwhere(cand[sl] == lab) + [s.start for s in sl]
            regions.append((local, sign))

    regions.sort(key=lambda r: -len(r[0]))
    labels = np.zeros(data.shape, np.int32)
    table = []
    for i, (idx, sign) in enumerate(regions, start=1):
        ix = tuple(idx.T)
        labels[ix] = i
        vals = data[ix]
        centroid = idx.mean(0)
        peak = float(vals[np.argmax(np.abs(vals))])
        table.append(
            {
                "label": i,
                "voxels": int(len(idx)),
                "mm3": None if vox is None else float(len(idx) * vox),
                "mean_z": float(vals.mean()),
                "peak_z": peak,
                "centroid_voxel": [float(c) for c in centroid],
                "centroid_world": _world(affine, centroid),
                "sign": int(sign),
                "direction": "synthesis brighter" if sign > 0 else "synthesis darker",
            }
        )
    return labels, table


# --------------------------------------------------------------------------- lesion fidelity


def _ellipsoid(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    r = [max(1, int(np.floor(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing)) <= 1.0 + 1e-9


def _ring(region: np.ndarray, allowed: np.ndarray, spacing, ring_mm: float, min_voxels: int) -> np.ndarray:
    """Normal tissue around ``region``: within ``ring_mm`` of it but not touching it.

    The voxels touching the region (one 26-connected shell) are left out: at a few
    mm per voxel they mix lesion and tissue (partial volume) and would pull the
    ring towards the lesion. The outer radius is at least two voxels and doubles
    (up to 3 times) until the ring has ``min_voxels``.
    """
    radius = max(float(ring_mm), 2.0 * max(spacing))
    sl = ndi.find_objects(region.astype(np.uint8))[0]
    ring = np.zeros(region.shape, bool)
    for _ in range(4):
        # work in the region's bounding box (padded by the radius) to keep dilation cheap
        pad = [int(np.ceil(radius / s)) + 1 for s in spacing]
        box = tuple(slice(max(0, a.start - p), min(n, a.stop + p)) for a, p, n in zip(sl, pad, region.shape))
        local = region[box]
        outer = ndi.binary_dilation(local, structure=_ellipsoid(radius, spacing))
        inner = ndi.binary_dilation(local, structure=_CONN26)
        ring = np.zeros(region.shape, bool)
        ring[box] = outer & ~inner & allowed[box]
        if ring.sum() >= min_voxels:
            break
        radius *= 2.0
    return ring


def _contrast(img: np.ndarray, region: np.ndarray, ring: np.ndarray) -> dict:
    """Contrast and CNR of ``region`` against ``ring``; the ring's level and noise are robust
    (median and 1.4826 x MAD) because even a thin ring around a white-matter lesion
    catches some grey matter or CSF, which would inflate a standard deviation."""
    nan = float("nan")
    m = float(img[region].mean())
    rm, rs = robust_sigma(img[ring]) if ring.any() else (nan, nan)
    contrast = (m - rm) / rm if np.isfinite(rm) and rm != 0 else nan
    cnr = (m - rm) / rs if np.isfinite(rs) and rs > 0 else nan
    return {"mean": m, "ring_median": rm, "ring_sd": rs, "contrast": contrast, "cnr": cnr}


def lesion_fidelity(
    synth: ArrayOrVolume,
    target: ArrayOrVolume,
    lesion: ArrayOrVolume,
    mask: ArrayOrVolume,
    *,
    wm: ArrayOrVolume | None = None,
    normalize: bool = True,
    ring_mm: float = 6.0,
    erased_below: float = 0.3,
    attenuated_below: float = 0.7,
    min_cnr: float = 1.0,
    invented_contrast: float = 0.2,
    z: np.ndarray | None = None,
    z_threshold: float = 3.5,
    min_voxels: int = 4,
    min_lesion_voxels: int = 3,
    polarity: str | int = "auto",
) -> dict:
    """Is each lesion still there in the synthesis, and did it invent any?

    A *lesion* is a 26-connected component of one label value of ``lesion``
    (tumour core and oedema are separate lesions); fragments smaller than
    ``min_lesion_voxels`` are skipped (counted in ``n_fragments_skipped``). Its
    *ring* is the normal-appearing tissue within ``ring_mm`` (at least two voxels)
    of it, minus the one-voxel shell touching it (partial volume): inside the
    brain ``mask`` (and ``wm`` when given: surrounding white matter), outside every
    lesion; the ring is widened (x2, up to 3 times) until it has at least 10
    voxels. In each image, with the ring's level and noise taken robustly:

    - contrast = ``(mean(lesion) - median(ring)) / median(ring)``
    - CNR = ``(mean(lesion) - median(ring)) / (1.4826 * MAD(ring))``

    ``retained`` = synthesized contrast / acquired contrast. Status:
    ``"not visible"`` when the acquired ``|CNR| < min_cnr`` (nothing to lose),
    ``"erased"`` when ``retained < erased_below`` (default 0.3: less than 30 % of
    the contrast left, or its sign flipped), ``"attenuated"`` below
    ``attenuated_below`` (0.7), else ``"preserved"``.

    *Invented* lesions: regions of the thresholded difference map (``|z| >= z_threshold``)
    (:func:`disagreement_regions` of ``z``, computed here when not given) that do
    not touch the lesion mask, whose contrast against their own ring is at least
    ``invented_contrast`` (20 %) in magnitude in the synthesis, and less than
    ``erased_below`` times that in the acquired image, and whose contrast has the
    lesions' *polarity* in this contrast: lesion-like in the synthesis only.
    ``polarity="auto"`` takes the sign of the median acquired contrast of the
    visible lesions (bright on T2/FLAIR, so dark spots at a cortical edge are not
    called lesions); with no visible lesion both signs count; or pass +1 / -1.

    Returns
    -------
    dict
        ``lesions``: list of dicts (``id``, ``label``, ``voxels``, ``mm3``,
        ``centroid_world``, ``acquired`` and ``synthesized`` with ``mean``,
        ``ring_median``, ``ring_sd``, ``contrast``, ``cnr``; ``retained``,
        ``status``, ``erased``); ``invented``: list of dicts (``region``,
        ``voxels``, ``mm3``, ``centroid_world``, ``synthesized_contrast``,
        ``acquired_contrast``, ``direction``); ``n_erased``, ``n_invented``,
        ``n_fragments_skipped``.
    """
    s, t = _normalized_pair(synth, target, normalize)
    brain = _bool_mask(mask, target, "brain mask")
    labels = as_array(lesion, "lesion mask")[0]
    check_same_grid(lesion, target, ("lesion mask", "target"))
    any_lesion = labels != 0
    allowed = brain & ~any_lesion
    if wm is not None:
        allowed &= _bool_mask(wm, target, "white-matter mask")
    affine = _affine_of(target, synth, lesion, mask)
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0)) if affine is not None else (1.0, 1.0, 1.0)
    vox = _voxel_mm3(affine)

    lesions = []
    skipped = 0
    for value in np.unique(labels[any_lesion]):
        comp, n = ndi.label(labels == value, structure=_CONN26)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        for c in range(1, n + 1):
            if sizes[c] < min_lesion_voxels:
                skipped += 1
                continue
            region = comp == c
            ring = _ring(region, allowed, spacing, ring_mm, 10)
            acq, syn = _contrast(t, region, ring), _contrast(s, region, ring)
            idx = np.argwhere(region)
            retained = syn["contrast"] / acq["contrast"] if acq["contrast"] != 0 else float("nan")
            if not np.isfinite(acq["cnr"]) or abs(acq["cnr"]) < min_cnr:
                status = "not visible"
            elif not np.isfinite(retained) or retained < erased_below:
                status = "erased"
            elif retained < attenuated_below:
                status = "attenuated"
            else:
                status = "preserved"
            lesions.append(
                {
                    "id": len(lesions) + 1,
                    "label": int(value),
                    "voxels": int(region.sum()),
                    "mm3": None if vox is None else float(region.sum() * vox),
                    "centroid_world": _world(affine, idx.mean(0)),
                    "acquired": acq,
                    "synthesized": syn,
                    "retained": float(retained),
                    "status": status,
                    "erased": status == "erased",
                }
            )

    if z is None:
        z = difference_map(s, t, brain, lesion=any_lesion, normalize=False)
    reg_labels, table = disagreement_regions(z, z_threshold, min_voxels=min_voxels, affine=affine)
    if polarity == "auto":
        seen = [l["acquired"]["contrast"] for l in lesions if l["status"] != "not visible"]
        sign = int(np.sign(np.median(seen))) if seen else 0
    elif polarity in (1, -1, 0):
        sign = int(polarity)
    else:
        raise NeurosynthError(f"polarity must be 'auto', 1, -1 or 0, not {polarity!r}")
    near_lesion = ndi.binary_dilation(any_lesion, structure=_CONN26) if any_lesion.any() else any_lesion
    invented = []
    for row in table:
        region = reg_labels == row["label"]
        if (region & near_lesion).any():
            continue
        ring = _ring(region, brain & ~any_lesion & ~region, spacing, ring_mm, 10)
        cs, ct = _contrast(s, region, ring)["contrast"], _contrast(t, region, ring)["contrast"]
        lesion_like = np.isfinite(cs) and abs(cs) >= invented_contrast and (sign == 0 or np.sign(cs) == sign)
        if lesion_like and not (np.isfinite(ct) and abs(ct) >= erased_below * abs(cs)):
            invented.append(
                {
                    "region": row["label"],
                    "voxels": row["voxels"],
                    "mm3": row["mm3"],
                    "centroid_world": row["centroid_world"],
                    "synthesized_contrast": float(cs),
                    "acquired_contrast": float(ct),
                    "direction": row["direction"],
                }
            )
    return {
        "lesions": lesions,
        "invented": invented,
        "n_erased": sum(l["erased"] for l in lesions),
        "n_invented": len(invented),
        "n_fragments_skipped": skipped,
    }


# --------------------------------------------------------------------------- Grad-CAM / HiResCAM

#: Accepted ``method`` names.
CAM_METHODS = ("hirescam", "gradcam")


def _model_and_stacks(model: Any, inputs: Any):
    """Validate inputs against the card and build the engine's normalised slice stacks.

    Reuses the inference engine's own input checks and normalisation so the CAM is
    computed on exactly the tensors :func:`~napari_neurosynth.synthesize` feeds the
    network (per-input percentile scale, slicing axis from the first affine, 2.5-D
    context with repeated edge slices, zero padding at the bottom/right).
    """
    from . import inference

    model = inference.as_model(model)
    volumes, _ = inference.prepare_inputs(model, inputs)
    scales = inference.input_scales(model, volumes)
    slicing = model.card.get("slicing") or {}
    from .preprocessing import slice_axis

    axis = slice_axis(volumes[0].affine, slicing.get("plane", "axial"))
    context = int(slicing.get("context", 0))
    stacks = [np.moveaxis(v.data.astype(np.float32) / s, axis, 0) for v, s in zip(volumes, scales)]
    return model, volumes, stacks, axis, context


def _batch(stacks: list[np.ndarray], slices: Sequence[int], context: int, divisor: int):
    import torch
    import torch.nn.functional as F

    n, H, W = stacks[0].shape
    offs = np.arange(-context, context + 1)
    chans = [np.stack([st[np.clip(k + offs, 0, n - 1)] for k in slices]) for st in stacks]  # (B, 2c+1, H, W) each
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(chans, axis=1), dtype=np.float32))
    return F.pad(x, (0, (-W) % divisor, 0, (-H) % divisor))


def _roi_mask(roi: Any, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The ROI as a boolean mask on the output grid (first input's grid)."""
    if isinstance(roi, tuple) and all(isinstance(r, (int, np.integer, slice)) for r in roi):
        # an index expression such as (slice(40, 50), slice(60, 70), 45)
        if len(roi) != len(shape):
            raise NeurosynthError(f"ROI index {roi!r} needs {len(shape)} entries, one per axis")
        for r, n in zip(roi, shape):
            lo, hi = (r, r + 1) if not isinstance(r, slice) else (r.start or 0, n if r.stop is None else r.stop)
            if lo < 0 or hi > n or lo >= hi:
                raise NeurosynthError(
                    f"ROI {roi!r} lies (partly) off the output grid of shape {shape}; mark a region inside the image"
                )
        mask = np.zeros(shape, bool)
        mask[roi] = True
        return mask
    data = np.asarray(getattr(roi, "data", roi))
    if data.shape != tuple(shape):
        raise NeurosynthError(
            f"ROI of shape {data.shape} is off the output grid (shape {tuple(shape)}); draw it on the synthesized layer"
        )
    r_aff = getattr(roi, "affine", None)
    if r_aff is not None and not np.allclose(np.asarray(r_aff, float), affine, atol=1e-3):
        raise NeurosynthError("ROI is on a different grid (affine) than the model's output; draw it on the synthesized layer")
    mask = data != 0
    if not mask.any():
        raise NeurosynthError("ROI is empty: mark at least one voxel of the synthesized image")
    return mask


def _resolve_layer(net, layer: str | None, example):
    """The module to explain: by dotted name, ``default_cam_layer``, or the last lowest-resolution conv."""
    import torch
    from torch import nn

    modules = dict(net.named_modules())
    if layer is None:
        layer = getattr(net, "default_cam_layer", "") or None
    if layer is not None:
        if layer not in modules or layer == "":
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise NeurosynthError(
                f"layer {layer!r} is not a submodule of the network; try one of: "
                + ", ".join(([getattr(net, "default_cam_layer", "")] if getattr(net, "default_cam_layer", "") else [])
                            + convs[-6:])
            )
        return layer, modules[layer]
    # No default declared: the last Conv2d among those with the smallest output (the bottleneck).
    sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=n: sizes.__setitem__(name, o.shape[-1] * o.shape[-2]))
             for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(example[:1])
    finally:
        for h in hooks:
            h.remove()
    if not sizes:
        raise NeurosynthError("the network has no Conv2d layer; pass layer= explicitly")
    smallest = min(sizes.values())
    name = [n for n, s in sizes.items() if s == smallest][-1]
    return name, modules[name]


def gradcam(
    model: Any,
    inputs: Any,
    roi: Any,
    layer: str | None = None,
    method: str = "hirescam",
    *,
    per_input: bool = False,
    batch_size: int = 8,
) -> np.ndarray | dict[str, np.ndarray]:
    """Which parts of the input drove the synthesized values inside ``roi``.

    The score is the mean of the network's output inside ``roi`` (a mask on the
    output grid, i.e. the first input's grid, typically a few voxels on one
    slice). Its gradient with respect to the activations ``A`` of ``layer`` gives
    the map:

    - ``method="hirescam"`` (default; Draelos and Carin 2020): ``sum_c dS/dA_c(x) * A_c(x)``,
      gradient times activation at each location.
    - ``method="gradcam"`` (Selvaraju et al. 2017): ``sum_c mean_x(dS/dA_c) * A_c(x)``,
      channel weights from spatially pooled gradients.

    For a dense (image-to-image) output the pooled weights of Grad-CAM light up
    every place where an important channel fires, far from the region asked about;
    HiResCAM keeps the gradient's location, so it only shows where the network
    actually looked (its map is exactly the first-order contribution of each
    location's features to the score), which is why it is the default.

    Only the slices the ROI touches are run (forward and backward). The
    layer-resolution map is upsampled (bilinear) to the slice, placed on the
    first input's grid, clipped at 0 (ReLU) and divided by its maximum, so values
    lie in [0, 1] (all zero if nothing contributes positively).

    Parameters
    ----------
    model : Model, str or path
        A loaded bundle or a bundle name / folder.
    inputs : Volume, ndarray or list of them
        As for :func:`~napari_neurosynth.synthesize` (card order).
    roi : array, Volume or tuple of indices
        Nonzero voxels (or an index expression such as ``(slice(30, 36), slice(40, 46), 25)``)
        on the output grid.
    layer : str, optional
        Dotted module name (see ``dict(model.network.named_modules())``). Default:
        the network's ``default_cam_layer`` (the residual trunk of the ResNet and
        fusion models, the first decoder stage of the U-Net, the MCSR fusion
        layer), else the last convolution at the lowest resolution.
        ``"input"`` attributes to the input voxels themselves.
    method : {"hirescam", "gradcam"}
        See above.
    per_input : bool
        Return one map per input modality (a dict keyed by the card's input names),
        computed at the input layer: each input's channels (its slice and its 2.5-D
        context slices, placed back on their own slices) summed. Implies ``layer="input"``.
        The maps share one scale (the largest value over all inputs is 1), so the
        input that mattered more shows brighter.
    batch_size : int
        Slices per forward/backward pass.

    Returns
    -------
    numpy.ndarray or dict of str to numpy.ndarray
        float32 on the first input's grid, values in [0, 1].

    Raises
    ------
    NeurosynthError
        Empty ROI, a ROI off the output grid, an unknown layer or method, bad inputs.

    Examples
    --------
    >>> cam = gradcam("t1_to_t2", ph["t1"], (slice(20, 26), slice(30, 36), 25))  # doctest: +SKIP
    """
    import torch
    from captum.attr import LayerGradCam, LayerGradientXActivation

    method = str(method).lower().replace("-", "")
    if method not in CAM_METHODS:
        raise NeurosynthError(f"unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}")
    model, volumes, stacks, axis, context = _model_and_stacks(model, inputs)
    shape = volumes[0].shape
    mask = _roi_mask(roi, shape, volumes[0].affine)
    roi_stack = np.moveaxis(mask, axis, 0)
    n_roi = int(roi_stack.sum())
    touched = np.flatnonzero(roi_stack.any(axis=(1, 2)))
    net = model.network
    net.eval()
    divisor = int(getattr(net, "size_divisor", 1) or 1)
    n, H, W = stacks[0].shape
    per_group = 2 * context + 1
    names = list(model.card["inputs"])
    at_input = per_input or layer == "input"

    class _RoiScore(torch.nn.Module):
        """The generator reduced to one number per slice: its output summed over the ROI / ROI size.

        Summed over the batch this is the mean output inside the whole ROI, so each
        slice's gradient is its share of that score."""

        def __init__(self, weights: torch.Tensor):
            super().__init__()
            self.net, self.weights = net, weights

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)[:, :1, :H, :W]
            return (y * self.weights).sum(dim=(1, 2, 3))

    if at_input:
        maps = np.zeros((len(names),) + stacks[0].shape, np.float64)
    else:
        maps = np.zeros((1,) + stacks[0].shape, np.float64)
        layer_name, module = _resolve_layer(net, layer, _batch(stacks, touched[:1], context, divisor))

    with torch.enable_grad():
        for start in range(0, len(touched), max(1, int(batch_size))):
            ks = touched[start:start + batch_size]
            x = _batch(stacks, ks, context, divisor)
            w = torch.from_numpy(roi_stack[ks][:, None].astype(np.float32) / n_roi)
            scorer = _RoiScore(w)
            if at_input:
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(scorer(x).sum(), x)
                if method == "hirescam":
                    contrib = grad * x  # element-wise: input x gradient
                else:
                    contrib = grad.mean(dim=(2, 3), keepdim=True) * x
                contrib = contrib[:, :, :H, :W].detach().numpy().astype(np.float64)
                for j in range(contrib.shape[1]):
                    g, off = divmod(j, per_group)
                    # a context channel is the neighbouring slice: put its share back there
                    dest = np.clip(ks + off - context, 0, n - 1)
                    np.add.at(maps[g], dest, contrib[:, j])
            else:
                if method == "hirescam":
                    attr = LayerGradientXActivation(scorer, module).attribute(x).sum(dim=1, keepdim=True)
                else:
                    attr = LayerGradCam(scorer, module).attribute(x, relu_attributions=False)
                if attr.dim() != 4:
                    raise NeurosynthError(f"layer {layer_name!r} does not output a (B, C, H, W) feature map; pick a conv layer")
                up = torch.nn.functional.interpolate(attr.detach(), size=x.shape[-2:], mode="bilinear", align_corners=False)
                maps[0, ks] += up[:, 0, :H, :W].numpy()

    maps = np.clip(maps, 0, None)  # ReLU: only what pushed the score up
    top = maps.max()
    if top > 0:
        maps /= top  # one scale for all inputs, so their maps can be compared

    def on_grid(m: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(m.astype(np.float32), 0, axis))

    if at_input and per_input:
        return {name: on_grid(maps[g]) for g, name in enumerate(names)}
    combined = maps.sum(axis=0)
    if combined.max() > 0:
        combined /= combined.max()
    return on_grid(combined)


# --------------------------------------------------------------------------- uncertainty


def _mc_dropout_copy(net):
    """A deep copy of ``net`` whose dropout layers sample even in eval mode (for MC dropout)."""
    import copy

    import torch
    from torch import nn

    class MCDropout(nn.Module):
        """Dropout that keeps sampling in eval mode (the engine puts networks in eval mode)."""

        def __init__(self, p: float, two_d: bool):
            super().__init__()
            self.p, self.two_d = p, two_d

        def forward(self, x):
            f = torch.nn.functional.dropout2d if self.two_d else torch.nn.functional.dropout
            return f(x, self.p, training=True)

    net = copy.deepcopy(net)
    n = 0
    for name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)) and child.p > 0:
                setattr(mod, child_name, MCDropout(child.p, isinstance(child, nn.Dropout2d)))
                n += 1
    return net, n


def uncertainty(
    model: Any,
    inputs: Any,
    *,
    shifts: Sequence[tuple[int, int]] = ((0, 0), (1, 2), (2, 1), (3, 3)),
    flips: bool = True,
    n_dropout: int = 8,
    device: str = "auto",
    return_mean: bool = False,
    seed: int = 0,
):
    """Per-voxel standard deviation of the synthesis under test-time perturbations.

    Test-time augmentation: every combination of a left-right flip (the array axis
    that points mostly along world x, when ``flips``) and an in-plane circular
    shift from ``shifts`` (voxels; a stride-2/4 generator is not shift-equivariant,
    so shifts expose aliasing-sensitive places) is applied to the inputs, the
    synthesis run and the transform undone. If the network has dropout layers,
    ``n_dropout`` further passes sample them (MC dropout, Gal and Ghahramani 2016).
    The shipped generators have no dropout, so for them only the augmentations count.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        The float32 standard deviation on the first input's grid, in the target's
        normalised units; with ``return_mean`` also the mean synthesis.
    """
    import copy

    import torch

    from . import inference
    from .io import Volume

    model = inference.as_model(model)
    volumes, _ = inference.prepare_inputs(model, inputs)
    first = volumes[0]
    axis = _slice_axis_of(model, first)
    lr = int(np.argmax(np.abs(first.affine[0, :3])))
    plane_axes = [a for a in range(3) if a != axis]
    samples = []
    for flip in ((False, True) if flips else (False,)):
        for dy, dx in shifts:
            def fwd(a: np.ndarray) -> np.ndarray:
                a = np.flip(a, lr) if flip else a
                return np.roll(a, (dy, dx), axis=plane_axes)

            def inv(a: np.ndarray) -> np.ndarray:
                a = np.roll(a, (-dy, -dx), axis=plane_axes)
                return np.flip(a, lr) if flip else a

            vols = [Volume(np.ascontiguousarray(fwd(v.data)), v.affine) for v in volumes]
            samples.append(inv(inference.synthesize(model, vols, device=device)))
    mc_net, n_drop = _mc_dropout_copy(model.network)
    if n_drop and n_dropout > 0:
        mc_model = copy.copy(model)
        mc_model.network = mc_net
        torch.manual_seed(seed)
        for _ in range(int(n_dropout)):
            samples.append(inference.synthesize(mc_model, volumes, device=device))
    stack = np.stack(samples).astype(np.float64)
    std = stack.std(axis=0).astype(np.float32)
    return (stack.mean(axis=0).astype(np.float32), std) if return_mean else std


def _slice_axis_of(model: Any, volume) -> int:
    from .preprocessing import slice_axis

    return slice_axis(volume.affine, (model.card.get("slicing") or {}).get("plane", "axial"))
