"""``make_phantom``: tissue fractions -> signals -> acquisition (protocol, motion, bias, noise, crops, low-res T2)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import NeurosynthError
from ..io import Volume
from .anatomy import GM_RESTRICTED, NUCLEI_LABELS, choroid_solids, eye_parts, nucleus_solids, render, vessel_solids
from .head import add_head
from .lesions import (
    LESION_LABEL_KINDS,
    LESION_LABELS,
    blob_region,
    lesion_contrast,
    lesion_visibility,
    parse_lesions,
    place_lesions,
    render_blob,
)
from .physics import M0, NUCLEI, check_field_strength, make_protocol, protocol_dict, tissue_signal, tissues_at
from .physics import Sequence as MRSequence
from .template import Grid, make_deformation, normalised_field, sample_brain, template_grid

PHANTOM_NAME = "napari-neurosynth MNI152 2009a phantom v2 (synthetic, not a real subject)"
_PARENCHYMA = frozenset({"gm", "wm", *NUCLEI})
_ORBIT = "orbit"
# GM probability above which a GM-restricted nucleus fills the voxel.
_GM_GATE = 0.4
# Label painting order (later wins where lesions overlap): plaque, black hole, haemorrhage, oedema, core.
_LABEL_TISSUES = (
    (3, ("plaque",)),
    (4, ("black_hole",)),
    (5, ("haemorrhage",)),
    (2, ("oedema",)),
    (1, ("tumour", "necrosis")),
)
#: Resolution limits (mm): the template is 1 mm; below 0.7 mm a grid adds voxels, not detail.
RESOLUTION_RANGE = (0.7, 8.0)
#: ``fov_crop="random"``: the most removed (mm) at each side (R-L: both sides; P, A; I, S).
RANDOM_CROP_MM = ((15.0, 15.0), (20.0, 20.0), (35.0, 15.0))
#: ``target_misalignment`` severities (issue 13, FGDL's setting): the T2 acquisition, and so ``t2_lowres``, is
#: moved against T1 by a per-subject rigid transform (each axis up to ``shift_mm`` and ``rotation_deg``, about the
#: brain's centre) composed with a smooth elastic displacement of at most ``elastic_mm``. At 80 mm from the centre
#: a rotation of 1 degree moves tissue by 1.4 mm, so ``high`` reaches about 6-7 mm at the cortex.
MISALIGNMENT_SEVERITIES: dict[str, dict[str, float]] = {
    "low": {"shift_mm": 1.0, "rotation_deg": 0.5, "elastic_mm": 0.5},
    "mid": {"shift_mm": 2.0, "rotation_deg": 1.5, "elastic_mm": 1.5},
    "high": {"shift_mm": 4.0, "rotation_deg": 3.0, "elastic_mm": 3.0},
}
#: How ``t2_lowres`` is made: thick axial slabs (slice thickening) or k-space centre cropping in plane (FGDL's).
LOWRES_MODES = ("slab", "kspace")


# --------------------------------------------------------------------------------------
# Tissue fractions as patches
# --------------------------------------------------------------------------------------


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]):
    """Slices of the overlap of regions ``a`` and ``b`` local to each, or None."""
    la, lb = [], []
    for sa, sb in zip(a, b):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if hi <= lo:
            return None
        la.append(slice(lo - sa.start, hi - sa.start))
        lb.append(slice(lo - sb.start, hi - sb.start))
    return tuple(la), tuple(lb)


class _Fractions:
    """Tissue fractions as patches ``[tissue, group, region, array]`` on one grid.

    Small structures (a nucleus, a plaque, a vessel segment) live on their own
    bounding box, so a 1 mm phantom does not carry dozens of full-size maps.
    A new structure either *replaces* a share of given tissues (a nucleus takes
    its place in the grey matter, a plaque in the white matter) or *fills* the
    voxel (a vessel pushes everything aside).
    """

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.patches: list[list] = []

    def add(self, tissue: str, group: str, region, frac: np.ndarray) -> None:
        self.patches.append([tissue, group, region, frac])

    def _hits(self, region, tissues=None, groups=None):
        for p in self.patches:
            if (tissues is None or p[0] in tissues) and (groups is None or p[1] in groups):
                inter = _intersect(p[2], region)
                if inter is not None:
                    yield p, inter[0], inter[1]

    def take(self, region, tissues=None, groups=None) -> np.ndarray:
        """Sum of the matching fractions on ``region``."""
        out = np.zeros(tuple(s.stop - s.start for s in region), np.float32)
        for p, lp, lr in self._hits(region, tissues, groups):
            out[lr] += p[3][lp]
        return out

    def replace(
        self, tissue: str, group: str, region, occ: np.ndarray, tissues=None, groups=None, free: bool = False
    ) -> np.ndarray:
        """Give ``tissue`` the share ``occ`` of the matching fractions (and of the empty room if ``free``)."""
        avail = self.take(region, tissues, groups)
        if free:
            avail += np.clip(1.0 - self.take(region), 0.0, 1.0)
        keep = 1.0 - occ
        for p, lp, lr in self._hits(region, tissues, groups):
            p[3][lp] *= keep[lr]
        frac = (occ * avail).astype(np.float32)
        self.add(tissue, group, region, frac)
        return frac

    def fill(self, tissue: str, group: str, region, occ: np.ndarray) -> None:
        """``tissue`` takes the share ``occ`` of the whole voxel; everything else shrinks."""
        keep = 1.0 - occ
        for p, lp, lr in self._hits(region):
            p[3][lp] *= keep[lr]
        self.add(tissue, group, region, occ.astype(np.float32))

    def full(self, tissues=None) -> np.ndarray:
        """The matching fractions summed on the whole grid."""
        out = np.zeros(self.shape, np.float32)
        for p in self.patches:
            if tissues is None or p[0] in tissues:
                out[p[2]] += p[3]
        return out


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def _spacing(resolution: Any) -> tuple[float, float, float]:
    if isinstance(resolution, str):
        parts = resolution.lower().replace(",", "x").split("x")
        resolution = parts[0] if len(parts) == 1 else parts
    values = [resolution] * 3 if np.ndim(resolution) == 0 else list(resolution)
    try:
        spacing = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise NeurosynthError(f"resolution must be a number of mm or three of them, got {resolution!r}") from None
    lo, hi = RESOLUTION_RANGE
    if len(spacing) != 3 or not all(math.isfinite(s) and lo <= s <= hi for s in spacing):
        raise NeurosynthError(
            f"resolution must be one voxel size or three (mm), each between {lo:g} and {hi:g} mm, got {resolution!r}"
        )
    return spacing[0], spacing[1], spacing[2]


def _check_args(seed, noise, bias, misalignment, lowres_factor) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NeurosynthError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value, hi in (("noise", noise, 1.0), ("bias", bias, 1.0), ("misalignment", misalignment, 20.0)):
        try:
            ok = math.isfinite(float(value)) and 0.0 <= float(value) <= hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise NeurosynthError(f"{name} must be between 0 and {hi:g}, got {value!r}")
    if (
        isinstance(lowres_factor, bool)
        or not isinstance(lowres_factor, (int, np.integer))
        or not (1 <= lowres_factor <= 16)
    ):
        raise NeurosynthError(f"lowres_factor must be an integer from 1 to 16, got {lowres_factor!r}")


def _crop_mm(fov_crop: Any, rng: np.random.Generator) -> tuple[tuple[float, float], ...] | None:
    """Millimetres removed at (start, end) of each axis, or None for the full field of view."""
    if fov_crop is None or fov_crop is False:
        return None
    if isinstance(fov_crop, str):
        if fov_crop.lower() != "random":
            raise NeurosynthError(f"fov_crop must be None, 'random', mm per side or per axis, got {fov_crop!r}")
        return tuple((float(rng.uniform(0, a)), float(rng.uniform(0, b))) for a, b in RANDOM_CROP_MM)
    try:
        arr = np.asarray(fov_crop, dtype=float)
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if arr.ndim == 0:
        arr = np.full((3, 2), float(arr))
    elif arr.shape == (3,):
        arr = np.repeat(arr[:, None], 2, axis=1)
    if arr.shape != (3, 2) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise NeurosynthError(
            "fov_crop must be None, 'random', millimetres per side (a number), per axis (3 numbers) "
            f"or per axis and side (3 pairs), all >= 0; got {fov_crop!r}"
        )
    return tuple((float(a), float(b)) for a, b in arr)


def _crop_grid(grid: Grid, crop_mm) -> tuple[Grid, list[list[float]]]:
    if crop_mm is None:
        return grid, [[0.0, 0.0]] * 3
    lo, hi = [], []
    for i, (a, b) in enumerate(crop_mm):
        lo.append(round(a / grid.spacing[i]))
        hi.append(round(b / grid.spacing[i]))
        left = (grid.shape[i] - lo[-1] - hi[-1]) * grid.spacing[i]
        if left < 60.0:
            raise NeurosynthError(f"fov_crop leaves {left:g} mm along axis {i}; keep at least 60 mm")
    done = [[lo[i] * grid.spacing[i], hi[i] * grid.spacing[i]] for i in range(3)]
    return grid.crop(tuple(lo), tuple(hi)), done


# --------------------------------------------------------------------------------------
# Acquisition effects
# --------------------------------------------------------------------------------------


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the complex signal plus complex Gaussian noise (Rician statistics)."""
    if sigma <= 0:
        return signal.astype(np.float32, copy=True)
    re = rng.standard_normal(signal.shape, dtype=np.float32)
    re *= np.float32(sigma)
    re += signal
    re *= re
    im = rng.standard_normal(signal.shape, dtype=np.float32)
    im *= np.float32(sigma)
    im *= im
    re += im
    return np.sqrt(re, out=re)


def _rigid(
    rng: np.random.Generator, amount: float, shift_mm: float | None = None
) -> tuple[np.ndarray, list[float], list[float]]:
    """A random rigid world transform: rotations (deg) within ``amount``, translations (mm) within ``shift_mm``."""
    angles = rng.uniform(-amount, amount, 3)
    shift_mm = amount if shift_mm is None else shift_mm
    shift = rng.uniform(-shift_mm, shift_mm, 3)
    rx, ry, rz = np.deg2rad(angles)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot = (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )
    centre = np.array([0.0, -18.0, 15.0])  # rotate about the middle of the brain
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = centre - rot @ centre + shift
    return m, [float(a) for a in angles], [float(s) for s in shift]


def check_severity(severity: Any) -> str | None:
    """``None`` or a :data:`MISALIGNMENT_SEVERITIES` name (case-insensitive); anything else is refused.

    Examples
    --------
    >>> check_severity("Mid"), check_severity(None)
    ('mid', None)
    >>> check_severity("extreme")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: target_misalignment must be None or one of low, mid, high, got 'extreme'
    """
    if severity is None or (isinstance(severity, str) and severity.lower() in ("none", "")):
        return None
    if not isinstance(severity, str) or severity.lower() not in MISALIGNMENT_SEVERITIES:
        raise NeurosynthError(
            f"target_misalignment must be None or one of {', '.join(MISALIGNMENT_SEVERITIES)}, got {severity!r}"
        )
    return severity.lower()


def _target_motion(rng: np.random.Generator, severity: str, grid: Grid, brain: np.ndarray):
    """Sampling coordinates (voxel indices) of a rigid + elastic motion, and its metadata.

    The image acquired after the motion shows at world point ``p`` the anatomy at
    ``W^-1 p + e(p)``: ``W`` the rigid transform, ``e`` a smooth displacement (three
    cosine fields, the phantom's own deformation model, scaled to ``elastic_mm``).
    """
    sev = MISALIGNMENT_SEVERITIES[severity]
    world, angles, shift = _rigid(rng, sev["rotation_deg"], sev["shift_mm"])
    axes = grid.axes()
    inv = np.linalg.inv(world)
    coords = np.empty((3, *grid.shape), np.float32)
    # separable world coordinates: p = (x_i, y_j, z_k); q = inv[:3, :3] p + inv[:3, 3] + e(p)
    for a in range(3):
        q = np.full(grid.shape, inv[a, 3], np.float32)
        for b in range(3):
            shape = [1, 1, 1]
            shape[b] = -1
            q += np.float32(inv[a, b]) * axes[b].astype(np.float32).reshape(shape)
        q += normalised_field(axes, rng, 3).astype(np.float32) * np.float32(sev["elastic_mm"])
        coords[a] = (q - np.float32(axes[a][0])) / np.float32(grid.spacing[a])
    index = np.indices(grid.shape, dtype=np.float32)
    moved_mm = np.sqrt(sum(((coords[a] - index[a]) * grid.spacing[a]) ** 2 for a in range(3)))
    inside = moved_mm[brain] if brain.any() else moved_mm.ravel()
    meta = {
        "severity": severity,
        **{k: float(v) for k, v in sev.items()},
        "rotation_deg": angles,
        "translation_mm": shift,
        "world_transform": [[float(v) for v in row] for row in world],
        "displacement_mm": {
            "brain_mean": round(float(inside.mean()), 3),
            "brain_max": round(float(inside.max()), 3),
        },
    }
    return coords, meta


# --------------------------------------------------------------------------------------
# The subject: tissue fractions
# --------------------------------------------------------------------------------------


def _add_tumour(fr: _Fractions, grid: Grid, tumour: dict) -> None:
    blob, grow = tumour["blob"], tumour["oedema_mm"]
    region = blob_region(blob, grid, grow=grow)
    if region is None:
        return
    s_core = render_blob(blob, grid, region)
    s_oed = np.clip(render_blob(blob, grid, region, grow=grow) - s_core, 0.0, 1.0)
    if tumour["necrotic"]:
        s_nec = np.minimum(
            render_blob(blob, grid, region, grow=-0.45 * blob.lobes[0][1].min(), scale_waves=0.0), s_core
        )
        fr.replace("necrosis", "brain", region, s_nec, tissues=_PARENCHYMA)
        # what is left of the core, as a share of what necrosis left
        s_core = np.clip((s_core - s_nec) / np.maximum(1.0 - s_nec, 1e-6), 0.0, 1.0)
    fr.replace("tumour", "brain", region, s_core, tissues=_PARENCHYMA)
    # Vasogenic oedema is confined to white matter (spares the cortex).
    fr.replace("oedema", "brain", region, s_oed, tissues={"wm"})


def _tissue_fractions(grid: Grid, deformation, placement, rngs, deform: bool):
    """All tissue fractions of the subject on ``grid`` and its brain mask (from the template alone)."""
    fr = _Fractions(grid.shape)
    brain_mask = np.zeros(grid.shape, np.uint8)
    region, maps = sample_brain(grid, deformation)
    if region is not None:
        for key in ("gm", "wm", "csf"):
            fr.add(key, "brain", region, maps[key])
        brain_mask[region] = (maps["gm"] + maps["wm"] + maps["csf"]) > 0.5
    # Deep grey nuclei replace GM and WM with a ~1 mm soft border.  The striatum and thalamus are
    # cut to the template's grey-matter map: the deep grey matter has GM probabilities of only
    # ~0.4-0.7 there, so the map gates where the nucleus is (GM > ~0.4: fully) rather than
    # capping its share; the internal capsule between them stays white matter.
    jitter = rngs["nuclei"] if deform else None
    for name in NUCLEI:
        for reg, occ in render(nucleus_solids(name, jitter), grid, deformation, soften=1.0):
            if name in GM_RESTRICTED:
                occ = occ * np.clip(fr.take(reg, {"gm"}, {"brain"}) / _GM_GATE, 0.0, 1.0)
            fr.replace(name, "brain", reg, occ, tissues=_PARENCHYMA)  # later nuclei win overlaps
    for reg, occ in render(choroid_solids(), grid, deformation):
        fr.replace("choroid_plexus", "brain", reg, occ, tissues={"csf"})
    # Lesions replace the parenchyma (tumour, haematoma) or the white matter (MS lesions).
    if placement.tumour is not None:
        _add_tumour(fr, grid, placement.tumour)
    if placement.haemorrhage is not None:
        reg = blob_region(placement.haemorrhage, grid)
        if reg is not None:
            fr.replace("haemorrhage", "brain", reg, render_blob(placement.haemorrhage, grid, reg), tissues=_PARENCHYMA)
    for kind, blobs in (("plaque", placement.plaques), ("black_hole", placement.black_holes)):
        for blob in blobs:
            reg = blob_region(blob, grid)
            if reg is not None:
                fr.replace(kind, "brain", reg, render_blob(blob, grid, reg), tissues={"wm"})
    # Large vessels push everything aside; the orbits only take room the brain leaves.
    for reg, occ in render(vessel_solids(), grid, deformation):
        fr.fill("flow", "vessel", reg, occ)
    for tissue, solids in eye_parts():
        for reg, occ in render(solids, grid, deformation):
            fr.replace(tissue, _ORBIT, reg, occ, groups={_ORBIT}, free=True)
    return fr, brain_mask


def _lesion_mask(fr: _Fractions, brain_mask: np.ndarray) -> np.ndarray:
    mask = np.zeros(fr.shape, np.uint8)
    for label, tissues in _LABEL_TISSUES:
        if any(p[0] in tissues for p in fr.patches):
            mask[fr.full(set(tissues)) >= 0.5] = label
    mask[brain_mask == 0] = 0
    return mask


def _nuclei_map(fr: _Fractions) -> np.ndarray:
    out = np.zeros(fr.shape, np.uint8)
    for label, name in NUCLEI_LABELS.items():
        out[fr.full({name}) >= 0.5] = label
    return out


def _clean_images(fr: _Fractions, grid: Grid, deformation, seqs, field: float, rng_head) -> dict[str, np.ndarray]:
    """Noise-free images: the partial-volume sum of every tissue's signed signal, then the magnitude."""
    table = tissues_at(field)
    cache: dict[str, np.ndarray] = {}

    def signal(tissue: str) -> np.ndarray:
        if tissue not in cache:
            cache[tissue] = np.array([M0 * tissue_signal(table[tissue], s) for s in seqs.values()], np.float32)
        return cache[tissue]

    clean = {c: np.zeros(grid.shape, np.float32) for c in seqs}
    for tissue, _, region, frac in fr.patches:
        for value, img in zip(signal(tissue), clean.values()):
            if abs(value) > 1e-3:
                img[region] += value * frac
    nonbrain = 1.0 - fr.full()
    np.clip(nonbrain, 0.0, 1.0, out=nonbrain)
    add_head(clean, grid, deformation, rng_head, nonbrain, signal)
    for img in clean.values():
        np.abs(img, out=img)
    return clean


# --------------------------------------------------------------------------------------
# The phantom
# --------------------------------------------------------------------------------------


def make_phantom(
    seed: int = 0,
    lesions: bool | Iterable[str] = True,
    resolution: float | Sequence[float] = 1.0,
    *,
    field_strength: float = 3.0,
    protocol: str | dict | None = None,
    skull_strip: bool = False,
    fov_crop: str | float | Sequence | None = None,
    noise: float = 0.02,
    bias: float = 0.15,
    misalignment: float = 0.0,
    target_misalignment: str | None = None,
    lowres_factor: int = 4,
    lowres_mode: str = "slab",
    deform: bool = True,
    tissues: bool = False,
) -> dict[str, Volume]:
    """Make a seeded multi-contrast brain phantom.

    Parameters
    ----------
    seed : int
        Subject seed.  The same seed (and options) gives identical arrays; another
        seed gives another anatomy (smooth deformation, head size, nuclei, skull),
        lesions, noise, bias and motion.  Anatomy and lesion positions do not depend
        on ``resolution``, ``fov_crop`` or the acquisition options.
    lesions : bool or list of str
        ``True`` for all kinds (a tumour with core and oedema, 4-8 T1-isointense
        MS-like plaques, 1-3 T1-hypointense "black holes" and a T1-hyperintense
        subacute haematoma), ``False`` for none, or a list of kinds from
        ``"tumour"``, ``"plaque"``, ``"black_hole"``, ``"haemorrhage"``.
    resolution : float or 3 floats
        Voxel size in mm, isotropic or per axis (R, A, S), e.g. ``(1, 1, 3)`` for
        thick axial slices; each 0.7-8 mm.  1 mm gives the template's 197x233x189 grid.
    field_strength : float
        1.5 or 3.0 (tesla): the relaxation table (T1 shorter at 1.5 T, less iron
        darkening on T2).
    protocol : None, "default", "random" or dict
        Sequence parameters: the default TR/TE/TI, a per-subject draw within
        clinical ranges (seeded by ``seed``), or per-sequence overrides such as
        ``{"t1": {"tr": 600, "te": 12}}`` (see :func:`make_protocol`).
    skull_strip : bool
        BraTS-like images: exactly zero outside ``brain_mask`` (``t2_lowres``:
        outside the brain's slabs).
    fov_crop : None, "random", float or sequence
        Crop the field of view: mm removed at every side (a number), per axis (3
        numbers) or per axis and side (3 pairs, start/end in array order R-L, P-A,
        I-S), or ``"random"`` (seeded; up to 15 mm R/L, 20 mm A/P, 35 mm inferior,
        15 mm superior).  Every volume is cropped alike and keeps a correct affine.
    noise : float
        Rician noise: sigma of the complex Gaussian noise as a fraction of each
        contrast's bright level (99th percentile of the noise-free brain).
    bias : float
        Amplitude of the smooth multiplicative bias field (per contrast):
        the field lies within ``[exp(-bias), exp(bias)]``.
    misalignment : float
        Maximum rigid motion, in degrees about each axis and mm along each axis,
        of the T2, PD and FLAIR acquisitions relative to T1 (0: none).  Masks are
        aligned with T1.
    target_misalignment : None, "low", "mid" or "high"
        FGDL's setting: the T2 acquisition (and so ``t2_lowres``) moves against T1 by a
        per-subject rigid transform plus a smooth elastic displacement of the severity's
        size in mm (:data:`MISALIGNMENT_SEVERITIES`); it replaces ``misalignment`` for
        T2.  ``t2`` is then the misaligned acquisition, as a real study has it, and
        ``t2_aligned`` the same acquisition without the motion (ground truth for
        evaluation).  Its metadata ``motion`` gives the transform and the displacement
        in the brain (mean and max, mm).
    lowres_factor : int
        Resolution factor of ``t2_lowres``: slab thickness in high-resolution slices
        (``lowres_mode="slab"``) or the in-plane k-space reduction (``"kspace"``).
    lowres_mode : "slab" or "kspace"
        ``"slab"``: thick axial slices (the mean of ``lowres_factor`` slices).
        ``"kspace"``: each axial slice keeps only the central ``1 / lowres_factor`` of
        k-space along both in-plane axes (FGDL's degradation; voxels ``lowres_factor``
        times larger in plane, Gibbs ringing included), magnitude with Rician noise.
    deform : bool
        Apply the subject's random anatomy (``False``: the template anatomy with
        mid-range skull and scalp).
    tissues : bool
        Also return the (lesion-free part of the) tissue fractions ``gm``, ``wm``
        and ``csf`` (float32) and the deep grey ``nuclei`` label map (uint8,
        :data:`NUCLEI_LABELS`).

    Returns
    -------
    dict of str to Volume
        ``t1``, ``t2``, ``pd``, ``flair`` (float32, scanner-like units, WM on T1
        ~800), ``brain_mask`` (uint8 0/1), ``lesion_mask`` (uint8: 1 tumour core,
        2 oedema, 3 plaque, 4 black hole, 5 haemorrhage), all on one RAS grid, and
        ``t2_lowres`` (float32) on its own grid with ``lowres_factor``-times thicker
        axial slices (or larger in-plane voxels), and ``t2_aligned`` with
        ``target_misalignment``.  Each image's metadata records its ``sequence`` and the whole
        ``protocol``; ``lesion_mask.metadata`` holds ``labels``, ``label_kinds``,
        ``visibility`` and ``contrast`` for this field strength and protocol.

    Raises
    ------
    NeurosynthError
        For out-of-range arguments, an unknown lesion kind, field strength or
        protocol, or TR <= TE / TR <= TI.

    Examples
    --------
    >>> ph = make_phantom(seed=3, resolution=3.0)
    >>> ph["t1"].shape, ph["t1"].spacing
    ((66, 78, 63), (3.0, 3.0, 3.0))
    >>> ph["t2_lowres"].spacing
    (3.0, 3.0, 12.0)
    >>> sorted(int(v) for v in set(ph["lesion_mask"].data.ravel()))
    [0, 1, 2, 3, 4, 5]
    >>> make_phantom(seed=3, resolution=(2, 2, 4), lesions=False)["t1"].spacing
    (2.0, 2.0, 4.0)
    """
    _check_args(seed, noise, bias, misalignment, lowres_factor)
    severity = check_severity(target_misalignment)
    if lowres_mode not in LOWRES_MODES:
        raise NeurosynthError(f"lowres_mode must be one of {', '.join(LOWRES_MODES)}, got {lowres_mode!r}")
    seed = int(seed)
    spacing = _spacing(resolution)
    field = check_field_strength(field_strength)
    lowres_factor = int(lowres_factor)
    kinds = parse_lesions(lesions)
    # Independent streams, so e.g. turning lesions off does not change the noise, and the
    # acquisition options do not change the anatomy.  The first eight are those of v1.
    ss = np.random.SeedSequence(seed).spawn(14)
    (
        s_anat,
        s_head,
        s_tumour,
        s_plaque,
        s_bias,
        s_motion,
        s_noise,
        s_lowres,
        s_black,
        s_haem,
        s_nuclei,
        s_protocol,
        s_crop,
        s_target_motion,
    ) = ss
    rng = np.random.default_rng
    seqs = make_protocol(protocol, rng(s_protocol), field)
    crop_mm = _crop_mm(fov_crop, rng(s_crop))
    deformation = make_deformation(rng(s_anat), deform)
    grid, cropped = _crop_grid(template_grid(spacing), crop_mm)
    mean_spacing = float(np.prod(spacing) ** (1 / 3))
    placement = place_lesions(
        {"tumour": rng(s_tumour), "plaque": rng(s_plaque), "black_hole": rng(s_black), "haemorrhage": rng(s_haem)},
        kinds,
        deformation,
        min_radius=2.0 * mean_spacing,
    )

    fr, brain_mask = _tissue_fractions(grid, deformation, placement, {"nuclei": rng(s_nuclei)}, deform)
    lesion_mask = _lesion_mask(fr, brain_mask)
    extra = {}
    if tissues:
        for key in ("gm", "wm", "csf"):
            extra[key] = fr.full({key})
        extra["nuclei"] = _nuclei_map(fr)
    clean = _clean_images(fr, grid, deformation, seqs, field, rng(s_head) if deform else None)
    del fr

    affine = grid.affine
    axes = grid.axes()
    iso = grid.isotropic
    protocol_meta = {c: protocol_dict(s) for c, s in seqs.items()}
    params = {
        "seed": seed,
        "lesions": list(kinds),
        "resolution": spacing[0] if iso else list(spacing),
        "field_strength": field,
        "protocol": protocol if isinstance(protocol, (str, type(None))) else "custom",
        "skull_strip": bool(skull_strip),
        "fov_crop": None if crop_mm is None else cropped,
        "noise": float(noise),
        "bias": float(bias),
        "misalignment": float(misalignment),
        "target_misalignment": severity,
        "lowres_factor": lowres_factor,
        "lowres_mode": lowres_mode,
        "deform": bool(deform),
    }
    common = {
        "phantom": PHANTOM_NAME,
        "seed": seed,
        "resolution": params["resolution"],
        "field_strength_T": field,
        "skull_stripped": bool(skull_strip),
        "protocol": protocol_meta,
        "parameters": params,
    }
    if crop_mm is not None:
        common["fov_crop_mm"] = cropped

    target_motion = None
    if severity is not None:
        target_motion = _target_motion(rng(s_target_motion), severity, grid, brain_mask > 0)
    out, t2_biased, t2_sigma = _acquire(
        clean,
        seqs,
        brain_mask,
        affine,
        axes,
        common,
        noise,
        bias,
        misalignment,
        skull_strip,
        {"bias": s_bias, "motion": s_motion, "noise": s_noise},
        target_motion,
    )
    del clean
    out["brain_mask"] = Volume(brain_mask, affine.copy(), {**common, "modality": "brain_mask"})
    out["lesion_mask"] = Volume(
        lesion_mask,
        affine.copy(),
        {
            **common,
            "modality": "lesion_mask",
            "labels": {str(k): v for k, v in LESION_LABELS.items()},
            "label_kinds": {str(k): v for k, v in LESION_LABEL_KINDS.items()},
            "visibility": lesion_visibility(field, seqs_to_protocol(seqs)),
            "contrast": lesion_contrast(field, seqs_to_protocol(seqs)),
            "lesions": placement.placed,
        },
    )
    out["t2_lowres"] = (_lowres if lowres_mode == "slab" else _lowres_kspace)(
        t2_biased,
        t2_sigma,
        brain_mask if skull_strip else None,
        lowres_factor,
        affine,
        {
            **common,
            "modality": "t2",
            "sequence": protocol_dict(seqs["t2"]),
            **({"motion": out["t2"].metadata["motion"]} if "motion" in out["t2"].metadata else {}),
        },
        rng(s_lowres),
    )
    for key, data in extra.items():
        modality = "nuclei_labels" if key == "nuclei" else f"{key}_fraction"
        meta = {**common, "modality": modality}
        if key == "nuclei":
            meta["labels"] = {str(k): v for k, v in NUCLEI_LABELS.items()}
        out[key] = Volume(data, affine.copy(), meta)
    return out


def seqs_to_protocol(seqs: dict[str, MRSequence]) -> dict[str, MRSequence]:
    """A protocol dict (for :func:`make_protocol`) that reproduces ``seqs`` exactly."""
    return {name: seq for name, seq in seqs.items()}


def _acquire(
    clean, seqs, brain_mask, affine, axes, common, noise, bias, misalignment, skull_strip, streams, target_motion=None
):
    """Motion, bias and Rician noise per contrast; skull stripping last (as a BraTS pipeline does).

    With ``target_motion`` T2 is acquired twice from the same bias field and noise
    stream: moved (``t2``) and in place (``t2_aligned``), so the two differ by the
    motion alone.
    """
    bias_streams = streams["bias"].spawn(len(seqs))
    motion_streams = streams["motion"].spawn(len(seqs))
    noise_streams = streams["noise"].spawn(len(seqs))
    brain = brain_mask > 0
    out: dict[str, Volume] = {}
    t2_biased, t2_sigma = None, 0.0
    for i, (contrast, seq) in enumerate(seqs.items()):
        img = clean[contrast]
        bright = float(np.percentile(img[brain], 99)) if brain.any() else float(img.max())
        motion = None
        versions = [(contrast, img)]
        if contrast == "t2" and target_motion is not None:
            coords, motion = target_motion
            moved = ndi.map_coordinates(img, coords, order=1, mode="constant", cval=0.0, output=np.float32)
            versions = [("t2", moved), ("t2_aligned", img)]
        elif misalignment > 0 and contrast != "t1":
            world, angles, shift = _rigid(np.random.default_rng(motion_streams[i]), misalignment)
            # The subject moved by ``world``: the new image at x shows the old anatomy at world^-1 x.
            m = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
            img = ndi.affine_transform(img, m[:3, :3], m[:3, 3], order=1, mode="constant", cval=0.0, output=np.float32)
            versions = [(contrast, img)]
            motion = {
                "rotation_deg": angles,
                "translation_mm": shift,
                "world_transform": [[float(v) for v in row] for row in world],
            }
        field = None
        if bias > 0:
            field = normalised_field(axes, np.random.default_rng(bias_streams[i]), 3)
            field *= np.float32(bias)
            np.exp(field, out=field)
        sigma = noise * bright
        for key, image in versions:
            if field is not None:
                image = image * field  # the coil's field: fixed in the scanner, so not moved with the head
            if key == "t2":
                t2_biased, t2_sigma = image, sigma
            data = _rician(image, sigma, np.random.default_rng(noise_streams[i]))
            if skull_strip:
                data[~brain] = 0.0
            meta = {**common, "modality": "t2" if key == "t2_aligned" else key, "sequence": protocol_dict(seq)}
            meta["noise_sigma"] = sigma
            if motion is not None and key != "t2_aligned":
                meta["motion"] = motion
            if key == "t2_aligned":
                meta["ground_truth"] = "t2 without the target misalignment (same bias field and noise)"
            out[key] = Volume(data, affine.copy(), meta)
    return out, t2_biased, t2_sigma


def _lowres(t2: np.ndarray, sigma: float, brain_mask, f: int, affine, meta, rng) -> Volume:
    """Thick axial slabs: the mean of ``f`` slices along S (after motion and bias), with its own noise."""
    shape = t2.shape
    n_low = -(-shape[2] // f)

    def slabs(a):
        padded = np.zeros((*shape[:2], n_low * f), np.float32)  # slabs past the top are air
        padded[..., : shape[2]] = a
        return padded.reshape(shape[0], shape[1], n_low, f).mean(axis=-1, dtype=np.float32)

    if brain_mask is not None:
        t2 = np.where(brain_mask > 0, t2, np.float32(0.0))
    low = _rician(slabs(t2), sigma, rng)
    if brain_mask is not None:
        low[slabs(brain_mask.astype(np.float32)) <= 0] = 0.0  # skull-stripped: zero outside the brain's slabs
    low_affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, f, (f - 1) / 2.0], [0, 0, 0, 1.0]])
    return Volume(low, low_affine, {**meta, "slab_factor": f, "noise_sigma": sigma})


def _lowres_kspace(t2: np.ndarray, sigma: float, brain_mask, f: int, affine, meta, rng) -> Volume:
    """Keep the central ``1/f`` of each axial slice's k-space along both in-plane axes (FGDL's degradation).

    The cropped spectrum's inverse DFT samples the band-limited image every
    ``n / m`` voxels from voxel 0 (``m = n // f`` kept frequencies), which the
    affine states exactly; ``norm="forward"`` keeps intensities.  Rician noise of
    the same sigma is added to the complex image before the magnitude is taken.
    """
    n0, n1 = t2.shape[:2]
    m0, m1 = max(1, n0 // f), max(1, n1 // f)
    if brain_mask is not None:
        t2 = np.where(brain_mask > 0, t2, np.float32(0.0))
    spec = np.fft.fftshift(np.fft.fft2(t2, axes=(0, 1), norm="forward"), axes=(0, 1))
    a0, a1 = n0 // 2 - m0 // 2, n1 // 2 - m1 // 2
    kept = np.fft.ifftshift(spec[a0 : a0 + m0, a1 : a1 + m1], axes=(0, 1))
    low = np.fft.ifft2(kept, axes=(0, 1), norm="forward")
    if sigma > 0:
        low = low + sigma * (rng.standard_normal(low.shape) + 1j * rng.standard_normal(low.shape))
    data = np.abs(low).astype(np.float32)
    s0, s1 = n0 / m0, n1 / m1
    if brain_mask is not None:
        footprint = ndi.zoom(brain_mask.astype(np.float32), (1 / s0, 1 / s1, 1), order=1, grid_mode=True)
        footprint = footprint[:m0, :m1]
        if footprint.shape != data.shape:  # zoom may round one short
            footprint = np.pad(footprint, [(0, a - b) for a, b in zip(data.shape, footprint.shape)])
        data[footprint <= 0] = 0.0
    low_affine = affine @ np.diag([s0, s1, 1.0, 1.0])
    return Volume(data, low_affine, {**meta, "kspace_factor": f, "noise_sigma": sigma})
