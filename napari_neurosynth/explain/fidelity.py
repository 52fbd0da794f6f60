"""Lesion fidelity: is each lesion still there in the synthesis, and did the synthesis invent any?

:func:`lesion_fidelity` measures, per lesion, contrast and contrast-to-noise ratio
against the surrounding normal-appearing tissue in the acquired and in the
synthesized image, flags erased lesions, and finds invented ones among the
regions of the :func:`~napari_neurosynth.explain.difference_map`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from ..errors import NeurosynthError
from ..metrics import NORMALIZE_DEFAULT, ArrayOrVolume, Mask, as_array, check_same_grid, robust_sigma
from ._common import CONN26, affine_of, bool_mask, normalized_pair, spacing_of, voxel_mm3, world
from .difference import difference_map, disagreement_regions

__all__ = ["Contrast", "FidelityResult", "InventedRow", "LesionRow", "lesion_fidelity"]


class Contrast(TypedDict):
    """A region's level against its ring of normal tissue in one image."""

    mean: float
    ring_median: float
    ring_sd: float
    contrast: float
    cnr: float


class LesionRow(TypedDict):
    """One lesion of :func:`lesion_fidelity`."""

    id: int
    label: int
    voxels: int
    mm3: float | None
    centroid_world: list[float] | None
    acquired: Contrast
    synthesized: Contrast
    retained: float
    status: str
    erased: bool


class InventedRow(TypedDict):
    """A lesion-like region of the synthesis that the acquired image lacks."""

    region: int
    voxels: int
    mm3: float | None
    centroid_world: list[float] | None
    synthesized_contrast: float
    acquired_contrast: float
    direction: str


class FidelityResult(TypedDict):
    """What :func:`lesion_fidelity` returns (a plain dict at run time)."""

    lesions: list[LesionRow]
    invented: list[InventedRow]
    n_erased: int
    n_invented: int
    n_fragments_skipped: int


def _ellipsoid(radius_mm: float, spacing: Sequence[float]) -> Mask:
    r = [max(1, int(np.floor(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist2 = np.zeros([2 * k + 1 for k in r])
    for g, s in zip(grids, spacing):
        dist2 = dist2 + (g * s / radius_mm) ** 2
    return np.asarray(dist2 <= 1.0 + 1e-9)


def _ring(region: Mask, allowed: Mask, spacing: Sequence[float], ring_mm: float, min_voxels: int) -> Mask:
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
        inner = ndi.binary_dilation(local, structure=CONN26)
        ring = np.zeros(region.shape, bool)
        ring[box] = outer & ~inner & allowed[box]
        if ring.sum() >= min_voxels:
            break
        radius *= 2.0
    return ring


def _contrast(img: NDArray[np.float64], region: Mask, ring: Mask) -> Contrast:
    """Contrast and CNR of ``region`` against ``ring``; the ring's level and noise are robust
    (median and 1.4826 x MAD) because even a thin ring around a white-matter lesion
    catches some grey matter or CSF, which would inflate a standard deviation."""
    nan = float("nan")
    m = float(img[region].mean())
    rm, rs = robust_sigma(img[ring]) if ring.any() else (nan, nan)
    contrast = (m - rm) / rm if np.isfinite(rm) and rm != 0 else nan
    cnr = (m - rm) / rs if np.isfinite(rs) and rs > 0 else nan
    return Contrast(mean=m, ring_median=rm, ring_sd=rs, contrast=contrast, cnr=cnr)


def lesion_fidelity(
    synth: ArrayOrVolume,
    target: ArrayOrVolume,
    *,
    lesion: ArrayOrVolume,
    mask: ArrayOrVolume,
    wm: ArrayOrVolume | None = None,
    normalize: bool = NORMALIZE_DEFAULT,
    ring_mm: float = 6.0,
    erased_below: float = 0.3,
    attenuated_below: float = 0.7,
    min_cnr: float = 1.0,
    invented_contrast: float = 0.2,
    z: NDArray[np.floating] | None = None,
    z_threshold: float = 3.5,
    min_voxels: int = 4,
    min_lesion_voxels: int = 3,
    polarity: str | int = "auto",
) -> FidelityResult:
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

    Parameters
    ----------
    synth, target : numpy.ndarray or Volume
        Synthesized and acquired volumes on one grid.
    lesion : array or Volume
        Lesion label volume (keyword-only, like ``mask``: the two are easy to swap).
    mask : array or Volume
        Brain mask.
    normalize : bool
        Percentile-normalise both volumes first (default True, as in
        :func:`~napari_neurosynth.metrics.evaluate` and :func:`difference_map`).

    Returns
    -------
    FidelityResult
        A dict: ``lesions``: list of dicts (``id``, ``label``, ``voxels``, ``mm3``,
        ``centroid_world``, ``acquired`` and ``synthesized`` with ``mean``,
        ``ring_median``, ``ring_sd``, ``contrast``, ``cnr``; ``retained``,
        ``status``, ``erased``); ``invented``: list of dicts (``region``,
        ``voxels``, ``mm3``, ``centroid_world``, ``synthesized_contrast``,
        ``acquired_contrast``, ``direction``); ``n_erased``, ``n_invented``,
        ``n_fragments_skipped``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = 1 + 0.02 * rng.standard_normal((24, 24, 24)); brain = np.ones(t.shape, bool)
    >>> lesion = np.zeros(t.shape, np.uint8); lesion[10:14, 10:14, 10:14] = 1
    >>> t[lesion > 0] += 0.5                      # bright on the acquired image ...
    >>> s = 1 + 0.02 * rng.standard_normal(t.shape)  # ... and missing from the synthesis
    >>> r = lesion_fidelity(s, t, lesion=lesion, mask=brain, normalize=False)
    >>> r["lesions"][0]["status"], r["n_erased"]
    ('erased', 1)
    """
    s, t = normalized_pair(synth, target, normalize)
    brain = bool_mask(mask, target, "brain mask")
    labels = as_array(lesion, "lesion mask")[0]
    check_same_grid(lesion, target, ("lesion mask", "target"))
    any_lesion = labels != 0
    allowed = brain & ~any_lesion
    if wm is not None:
        allowed &= bool_mask(wm, target, "white-matter mask")
    affine = affine_of(target, synth, lesion, mask)
    spacing = spacing_of(affine)
    vox = voxel_mm3(affine)

    lesions: list[LesionRow] = []
    skipped = 0
    for value in np.unique(labels[any_lesion]):
        comp, n = ndi.label(labels == value, structure=CONN26)
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
                LesionRow(
                    id=len(lesions) + 1,
                    label=int(value),
                    voxels=int(region.sum()),
                    mm3=None if vox is None else float(region.sum() * vox),
                    centroid_world=world(affine, idx.mean(0)),
                    acquired=acq,
                    synthesized=syn,
                    retained=float(retained),
                    status=status,
                    erased=status == "erased",
                )
            )

    if z is None:
        z = difference_map(s, t, brain, lesion=any_lesion, normalize=False)
    reg_labels, table = disagreement_regions(z, z_threshold, min_voxels=min_voxels, affine=affine)
    if polarity == "auto":
        seen = [les["acquired"]["contrast"] for les in lesions if les["status"] != "not visible"]
        sign = int(np.sign(np.median(seen))) if seen else 0
    elif polarity in (1, -1, 0):
        sign = int(polarity)
    else:
        raise NeurosynthError(f"polarity must be 'auto', 1, -1 or 0, not {polarity!r}")
    near_lesion = ndi.binary_dilation(any_lesion, structure=CONN26) if any_lesion.any() else any_lesion
    invented: list[InventedRow] = []
    for row in table:
        region = reg_labels == row["label"]
        if (region & near_lesion).any():
            continue
        ring = _ring(region, brain & ~any_lesion & ~region, spacing, ring_mm, 10)
        cs, ct = _contrast(s, region, ring)["contrast"], _contrast(t, region, ring)["contrast"]
        lesion_like = np.isfinite(cs) and abs(cs) >= invented_contrast and (sign == 0 or np.sign(cs) == sign)
        if lesion_like and not (np.isfinite(ct) and abs(ct) >= erased_below * abs(cs)):
            invented.append(
                InventedRow(
                    region=row["label"],
                    voxels=row["voxels"],
                    mm3=row["mm3"],
                    centroid_world=row["centroid_world"],
                    synthesized_contrast=float(cs),
                    acquired_contrast=float(ct),
                    direction=row["direction"],
                )
            )
    return FidelityResult(
        lesions=lesions,
        invented=invented,
        n_erased=sum(les["erased"] for les in lesions),
        n_invented=len(invented),
        n_fragments_skipped=skipped,
    )
