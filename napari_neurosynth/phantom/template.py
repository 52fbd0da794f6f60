"""The MNI152 template, output grids, smooth random fields and the subject's deformation.

Anatomy comes from the MNI152 2009a (symmetric) T1 template and its grey/white
matter probability maps that ``nilearn`` ships inside its wheel (no download).
Each subject pulls the template back through a smooth deformation; everything
defined in template millimetres (tissue maps, deep grey nuclei, vessels, eyes)
moves with it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import NeurosynthError

# The template's 1 mm grid and field of view (voxel edges) in RAS mm.
TEMPLATE_SHAPE = (197, 233, 189)
TEMPLATE_ORIGIN = np.array([-98.0, -134.0, -72.0])  # world mm of voxel (0, 0, 0)
FOV_LO = np.array([-98.5, -134.5, -72.5])
FOV_HI = np.array([98.5, 98.5, 116.5])
# Resampled maps live on 4 mm blocks of the template for a quick "is there any brain here" test.
_BLOCK = 4

_MNI_FILES = {key: f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz" for key in ("t1", "gm", "wm")}


# --------------------------------------------------------------------------------------
# Template loading (cached)
# --------------------------------------------------------------------------------------


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 template and GM/WM probability maps shipped in nilearn's wheel.

    Read with nibabel straight from nilearn's package data (scaled to [0, 1] as
    ``nilearn.datasets.load_mni152_*`` do), because importing ``nilearn`` itself
    pulls in scikit-learn and pandas and costs seconds; falls back to nilearn's
    loaders when the files have moved.
    """
    import importlib.util
    import os

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        raise NeurosynthError(
            "the phantom needs nilearn (it ships the MNI152 template); install it with `pip install nilearn`"
        )
    folder = os.path.join(next(iter(spec.submodule_search_locations or [""])), "datasets", "data")
    paths = {key: os.path.join(folder, name) for key, name in _MNI_FILES.items()}
    imgs: dict[str, Any]
    if all(os.path.exists(p) for p in paths.values()):
        imgs = {key: nib.load(p) for key, p in paths.items()}
    else:  # pragma: no cover - depends on the installed nilearn layout
        from nilearn import datasets

        imgs = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    arrays = []
    for key in ("t1", "gm", "wm"):
        proxy = imgs[key].dataobj
        inter = getattr(proxy, "inter", 0.0)
        if getattr(proxy, "slope", 1.0) > 0 and (inter == 0 or np.isnan(inter)):
            # scaled / max(scaled) == raw / max(raw): skip nibabel's float64 scaling pass
            a = np.asarray(proxy.get_unscaled()).astype(np.float32)
        else:  # pragma: no cover
            a = np.asarray(proxy, dtype=np.float32)
        a /= a.max() or 1.0
        arrays.append(a)
    affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    if arrays[0].shape != TEMPLATE_SHAPE:
        raise NeurosynthError(f"unexpected MNI152 template shape {arrays[0].shape}; reinstall nilearn >= 0.10")
    return arrays[0], arrays[1], arrays[2], affine


@functools.lru_cache(maxsize=1)
def template_1mm() -> dict[str, np.ndarray]:
    """GM, WM, CSF fractions (1 mm) and the head's signed distance (2 mm grid) of the template."""
    t1, gm, wm, affine = _load_mni152()
    # nilearn's brain mask is the (skull-stripped) template > 0.2; the template
    # has no scalp or skull, so those are modelled from a distance map.
    mask = (t1 > 0.2).astype(np.float32)
    del t1
    gm = np.clip(gm, 0, 1)
    wm = np.clip(wm, 0, 1 - gm)
    csf = np.clip(mask - gm - wm, 0, 1)
    # Smooth hull of the brain (fills sulci at the surface) and its signed distance
    # (mm, > 0 outside): skull and scalp are shells of varying thickness around it.
    # Computed on a 2 mm grid (block means of 2x2x2 voxels): the hull is smooth and
    # this makes the cold start ~8x cheaper than a 1 mm distance transform.
    n2 = [s // 2 for s in mask.shape]
    coarse = mask[: 2 * n2[0], : 2 * n2[1], : 2 * n2[2]].reshape(n2[0], 2, n2[1], 2, n2[2], 2).mean(axis=(1, 3, 5))
    hull = ndi.binary_fill_holes(ndi.gaussian_filter(coarse, 2.0) > 0.3)
    sd = 2.0 * (ndi.distance_transform_edt(~hull) - ndi.distance_transform_edt(hull))
    return {
        "gm": gm,
        "wm": wm,
        "csf": csf,
        # sd lives on the 2 mm grid: index i2 = (i1 - 0.5) / 2 in each axis
        "sd": np.clip(sd, -30, 60).astype(np.float32),
        "affine": affine,
    }


@functools.lru_cache(maxsize=6)
def template_prefiltered(spacing: tuple[float, float, float]) -> dict[str, Any]:
    """Template maps low-passed for sampling at ``spacing`` mm (anti-aliasing), with their support.

    A Gaussian with FWHM ~ the voxel size along each axis approximates the box
    average that a coarser voxel's partial-volume fraction really is.  ``support``
    marks the 4 mm blocks of the template (dilated by one) where any tissue is, so
    that resampling can skip the empty field of view around the brain.
    """
    base = template_1mm()
    sigma = [math.sqrt(max(s, 1.0) ** 2 - 1.0) / 2.355 for s in spacing]
    out: dict[str, Any] = dict(base)
    if any(s > 0 for s in sigma):
        for key in ("gm", "wm", "csf"):
            out[key] = ndi.gaussian_filter(base[key], sigma, mode="constant")
    total = out["gm"] + out["wm"] + out["csf"]
    nb = [-(-n // _BLOCK) for n in TEMPLATE_SHAPE]
    padded = np.zeros([n * _BLOCK for n in nb], bool)
    padded[: TEMPLATE_SHAPE[0], : TEMPLATE_SHAPE[1], : TEMPLATE_SHAPE[2]] = total > 1e-4
    blocks = padded.reshape(nb[0], _BLOCK, nb[1], _BLOCK, nb[2], _BLOCK).any(axis=(1, 3, 5))
    out["support"] = ndi.binary_dilation(blocks)
    idx = np.argwhere(out["support"])
    # world bounding box (mm) of the support
    out["support_box"] = (
        TEMPLATE_ORIGIN + idx.min(0) * _BLOCK - 1.0,
        TEMPLATE_ORIGIN + (idx.max(0) + 1) * _BLOCK + 1.0,
    )
    return out


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A RAS grid with a diagonal affine (index -> world mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # world mm of voxel (0, 0, 0)

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a

    @property
    def isotropic(self) -> bool:
        return max(self.spacing) - min(self.spacing) < 1e-9

    def axes(self, region: tuple[slice, ...] | None = None) -> list[np.ndarray]:
        """World coordinate (mm) of each index along each axis (of ``region``)."""
        out = []
        for i in range(3):
            idx = np.arange(self.shape[i]) if region is None else np.arange(region[i].start, region[i].stop)
            out.append(self.origin[i] + self.spacing[i] * idx)
        return out

    def region(self, lo_world, hi_world, pad: int = 1) -> tuple[slice, slice, slice] | None:
        """Index slices covering the world box ``[lo, hi]`` (plus ``pad`` voxels), or None if outside."""
        sl = []
        for i in range(3):
            a = math.floor((lo_world[i] - self.origin[i]) / self.spacing[i]) - pad
            b = math.ceil((hi_world[i] - self.origin[i]) / self.spacing[i]) + pad + 1
            a, b = max(a, 0), min(b, self.shape[i])
            if b <= a:
                return None
            sl.append(slice(a, b))
        return sl[0], sl[1], sl[2]

    def crop(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> Grid:
        """The grid without ``lo[i]`` voxels at the start and ``hi[i]`` at the end of axis ``i``."""
        n = [int(n - a - b) for n, a, b in zip(self.shape, lo, hi)]
        o = [float(o + a * s) for o, a, s in zip(self.origin, lo, self.spacing)]
        return Grid((n[0], n[1], n[2]), self.spacing, (o[0], o[1], o[2]))


def template_grid(spacing: tuple[float, float, float]) -> Grid:
    """The template's field of view at ``spacing`` mm, centred on the template's centre."""
    n0 = np.array(TEMPLATE_SHAPE)
    centre = TEMPLATE_ORIGIN + (n0 - 1) / 2.0
    s = np.asarray(spacing, float)
    n = np.maximum(np.round(n0 / s).astype(int), 1)
    origin = centre - (n - 1) / 2.0 * s
    return Grid(
        (int(n[0]), int(n[1]), int(n[2])),
        (float(s[0]), float(s[1]), float(s[2])),
        (float(origin[0]), float(origin[1]), float(origin[2])),
    )


# --------------------------------------------------------------------------------------
# Smooth random fields
# --------------------------------------------------------------------------------------


def dct_field(axes: list[np.ndarray], coeffs: np.ndarray) -> np.ndarray:
    """Evaluate a separable cosine (DCT) expansion on a grid.

    Low-frequency DCT bases are the usual model for smooth deformations and bias
    fields (as in SPM).  The tensor-product sum is contracted axis by axis with
    small matrix products, so a 1 mm field costs a single (nx, K) @ (K, ny*nz)
    product instead of K^3 full-volume passes.  The basis is defined on the
    template field of view in world mm, so a seed gives the same field at any
    resolution.

    Examples
    --------
    >>> c = np.zeros((2, 2, 2)); c[0, 0, 0] = 3.0
    >>> float(dct_field([np.zeros(1)] * 3, c)[0, 0, 0])  # the constant basis
    3.0
    """
    k = coeffs.shape
    bases = []
    for i, x in enumerate(axes):
        t = (x - FOV_LO[i]) / (FOV_HI[i] - FOV_LO[i])
        bases.append(np.cos(np.pi * np.outer(t, np.arange(k[i]))).astype(np.float32))
    c = coeffs.astype(np.float32)
    tmp = np.einsum("abc,zc->abz", c, bases[2])  # (Ka, Kb, nz)
    tmp = np.einsum("abz,yb->ayz", tmp, bases[1])  # (Ka, ny, nz)
    out = bases[0] @ tmp.reshape(k[0], -1)  # (nx, ny*nz)
    return out.reshape(len(axes[0]), len(axes[1]), len(axes[2]))


def random_coeffs(rng: np.random.Generator, order: int, constant: bool = True) -> np.ndarray:
    """Random DCT coefficients decaying with frequency (smoother fields)."""
    a, b, c = np.meshgrid(*(np.arange(order),) * 3, indexing="ij")
    freq = np.sqrt(a**2 + b**2 + c**2)
    coeffs = rng.standard_normal((order,) * 3) / (1.0 + freq) ** 2
    if not constant:
        coeffs[0, 0, 0] = 0.0
    return coeffs


_COARSE_FOV = [np.linspace(FOV_LO[i], FOV_HI[i], 24) for i in range(3)]


def unit_coeffs(rng: np.random.Generator, order: int) -> np.ndarray:
    """Random DCT coefficients of a field scaled to max |value| = 1 over the template field of view.

    Normalised on a fixed coarse grid, so the scale does not depend on resolution.
    """
    coeffs = random_coeffs(rng, order, constant=False)
    peak = float(np.abs(dct_field(_COARSE_FOV, coeffs)).max()) or 1.0
    return coeffs / peak


def normalised_field(axes, rng, order: int) -> np.ndarray:
    """A smooth random field scaled to max |value| = 1 on the template's field of view."""
    return dct_field(axes, unit_coeffs(rng, order))


def upsample_linear(a: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of ``a`` sampled every ``factors[i]`` voxels onto ``shape``.

    ``a`` must hold ``ceil((n - 1) / f) + 1`` samples along each axis.  Separable,
    with strided slices written in place, last axis first (the strided pass then
    runs on the smallest array), so it costs a few passes over the output instead
    of a per-voxel interpolation.

    Examples
    --------
    >>> upsample_linear(np.array([0.0, 2.0, 4.0]).reshape(3, 1, 1), (2, 1, 1), (5, 1, 1)).ravel()
    array([0., 1., 2., 3., 4.], dtype=float32)
    """
    out = np.asarray(a, np.float32)
    for axis in (2, 1, 0):
        f, n = factors[axis], shape[axis]
        if f == 1:
            continue
        new_shape = list(out.shape)
        new_shape[axis] = n
        res = np.empty(new_shape, np.float32)

        def sl(s, _axis=axis):
            idx = [slice(None)] * 3
            idx[_axis] = s
            return tuple(idx)

        for phase in range(f):
            m = len(range(phase, n, f))
            dst = res[sl(slice(phase, n, f))]
            if phase == 0:
                dst[...] = out[sl(slice(0, m))]
            else:
                w = np.float32(phase / f)
                np.multiply(out[sl(slice(0, m))], 1 - w, out=dst)
                dst += w * out[sl(slice(1, m + 1))]
        out = res
    return out


# --------------------------------------------------------------------------------------
# The subject's deformation
# --------------------------------------------------------------------------------------


@dataclass
class Deformation:
    """Pull-back ``x -> centre + scale (x - centre) + u(x)`` from subject to template (world mm)."""

    centre: np.ndarray  # world mm, centre of the global scaling
    scale: np.ndarray  # per-axis size factor of this subject
    coeffs: list[np.ndarray]  # DCT coefficients (mm) of the displacement, one per axis
    max_disp: float = 0.0  # bound (mm) of |u| over the field of view

    def pullback(self, axes: list[np.ndarray]) -> np.ndarray:
        """Template world coordinates (mm) of the grid ``axes``, shape ``(nx, ny, nz, 3)``, float32."""
        shape = tuple(len(a) for a in axes)
        out = np.empty((*shape, 3), np.float32)
        for i in range(3):
            view = [1, 1, 1]
            view[i] = shape[i]
            xi = self.centre[i] + self.scale[i] * (axes[i] - self.centre[i])
            out[..., i] = xi.astype(np.float32).reshape(view)
            if self.coeffs[i].size > 1:
                out[..., i] += dct_field(axes, self.coeffs[i])
        return out

    def template_box_to_world(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """A subject-space box that contains every point pulled back into the template box ``[lo, hi]``."""
        m = self.max_disp + 0.5
        a = self.centre + (np.asarray(lo) - m - self.centre) / self.scale
        b = self.centre + (np.asarray(hi) + m - self.centre) / self.scale
        return a, b


def make_deformation(rng: np.random.Generator, deform: bool) -> Deformation:
    """The subject: a head-size factor per axis and a smooth displacement field."""
    centre = np.array([0.0, -18.0, 15.0])
    if not deform:
        return Deformation(centre, np.ones(3), [np.zeros((1, 1, 1))] * 3, 0.0)
    # Head size varies by a few percent between adults; the local displacement by
    # a few mm (amplitude 2-4 mm, wavelengths of several cm).
    scale = 1.0 + rng.uniform(-0.05, 0.05, 3)
    amp = rng.uniform(2.0, 4.0)
    coeffs = [unit_coeffs(rng, 5) * amp for _ in range(3)]
    # The peak is normalised on a 24-point grid; allow for a finer grid's peak between its nodes.
    return Deformation(centre, scale, coeffs, float(amp * 1.25))


# --------------------------------------------------------------------------------------
# Sampling the template
# --------------------------------------------------------------------------------------


def sample_brain(grid: Grid, deformation: Deformation) -> tuple[tuple[slice, ...] | None, dict[str, np.ndarray]]:
    """GM, WM and CSF fractions of the deformed subject on the part of ``grid`` that holds brain.

    Returns the index region and the maps on it (float32).  Only voxels whose
    pull-back lands in the template's tissue support are interpolated: the brain
    fills ~a quarter of the field of view, and trilinear resampling is the most
    expensive step of the phantom.
    """
    maps = template_prefiltered(grid.spacing)
    lo, hi = deformation.template_box_to_world(*maps["support_box"])
    region = grid.region(lo, hi)
    if region is None:
        return None, {}
    pts = deformation.pullback(grid.axes(region))
    pts -= TEMPLATE_ORIGIN.astype(np.float32)  # template index (1 mm voxels)
    blk = np.floor_divide(pts, np.float32(_BLOCK)).astype(np.int32)
    nb = np.array(maps["support"].shape)
    inside = np.all((blk >= 0) & (blk < nb), axis=-1)
    np.clip(blk, 0, nb - 1, out=blk)
    keep = inside & maps["support"][blk[..., 0], blk[..., 1], blk[..., 2]]
    del blk, inside
    coords = pts[keep].T.astype(np.float64)  # (3, n) for map_coordinates
    del pts
    out = {}
    for key in ("gm", "wm", "csf"):
        arr = np.zeros(keep.shape, np.float32)
        arr[keep] = ndi.map_coordinates(maps[key], coords, order=1, mode="constant", cval=0.0, output=np.float32)
        out[key] = arr
    total = out["gm"] + out["wm"] + out["csf"]
    over = total > 1.0
    if over.any():  # interpolation can overshoot by a hair
        for key in ("gm", "wm", "csf"):
            out[key][over] /= total[over]
    return region, out


def sample_head_distance(grid: Grid, deformation: Deformation, extra=None):
    """Signed distance (mm, > 0 outside) from the deformed brain hull on ``grid``, plus smooth ``extra`` fields.

    The distance map is smooth, so it is interpolated on a grid of ~3 mm (every
    ``factors[i]`` voxels) and upsampled linearly: 27x fewer interpolations at 1 mm.
    Returns ``get(name)``, which upsamples one field on demand, the coarse fields
    themselves (``sd`` and those that ``extra(axes)`` returns) and ``factors``.
    """
    # ~3 mm nodes: the hull distance is smooth (its curvature radius is centimetres), so linear
    # interpolation between them is exact to ~0.05 mm
    f = [max(1, round(3.0 / s)) for s in grid.spacing]
    factors = (f[0], f[1], f[2])
    counts = [-(-(n - 1) // f) + 1 for n, f in zip(grid.shape, factors)]
    axes = [grid.origin[i] + grid.spacing[i] * factors[i] * np.arange(counts[i]) for i in range(3)]
    pts = deformation.pullback(axes)
    pts -= (TEMPLATE_ORIGIN + 0.5).astype(np.float32)  # to the 2 mm grid of the distance map
    pts *= np.float32(0.5)
    coarse = {
        "sd": ndi.map_coordinates(
            template_1mm()["sd"], np.moveaxis(pts, -1, 0), order=1, mode="nearest", output=np.float32
        )
    }
    del pts
    if extra is not None:
        coarse.update(extra(axes))

    def get(name: str) -> np.ndarray:
        return upsample_linear(coarse[name], factors, grid.shape)

    return get, coarse, factors
