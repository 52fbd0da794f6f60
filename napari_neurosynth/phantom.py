"""A physically grounded, seeded multi-contrast brain phantom.

Anatomy comes from the MNI152 2009a (symmetric) T1 template and its grey/white
matter probability maps that ``nilearn`` ships inside its wheel (no download).
Tissue fractions are mapped to T1-, T2-, PD-weighted and FLAIR images through the
spin-echo and inversion-recovery signal equations with literature relaxation
values at 3 T.  Each seed is a different "subject": a smooth random deformation
of the anatomy, its own lesions, noise, bias fields and (optionally) head motion
between the acquisitions.

This is a synthetic teaching and testing object, not a real subject. See
``docs/phantom.md`` for the model and the sources of every number.

Signal model
------------
Every voxel holds fractions ``f_t`` of tissues ``t`` (grey matter, white matter,
CSF, lesions, and outside the brain CSF rim, skull, diploe, scalp fat and skin)
summing to at most 1 (the rest is air).  Partial volume mixes the *signals* of the
tissues, not their relaxation rates: the transverse magnetisation of each tissue
is computed with its own T1/T2/PD and the signed sum is taken before the
magnitude, which is what a voxel containing several water compartments measures
(and what makes CSF/tissue boundaries on FLAIR behave like the real thing).

* spin echo (T1w, T2w, PDw):
  ``S = M0 * PD * (1 - exp(-TR/T1)) * exp(-TE/T2)``  (TE << TR)
* inversion recovery (FLAIR):
  ``S = M0 * PD * (1 - 2 exp(-TI/T1) + exp(-TR/T1)) * exp(-TE/T2)``, magnitude
  taken after the partial-volume sum; TI is chosen to null CSF for the given TR:
  ``TI = T1_csf * ln(2 / (1 + exp(-TR/T1_csf)))`` (-> ln2 * T1_csf for TR -> inf).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage as ndi

from .errors import NeurosynthError
from .io import Volume

__all__ = [
    "make_phantom",
    "TISSUES",
    "SEQUENCES",
    "LESION_KINDS",
    "LESION_LABELS",
    "tissue_signal",
    "flair_null_ti",
]


# --------------------------------------------------------------------------------------
# Physics: relaxation values and sequences
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters of one tissue at 3 T (times in ms, PD relative to water)."""

    t1: float
    t2: float
    pd: float
    source: str


#: Tissue parameters at 3 T.  Brain values are literature measurements; the
#: lesion values are chosen inside the published ranges to give the conspicuity a
#: radiologist expects; the head values outside the brain are coarse and only
#: have to make the image look like a head.
TISSUES: dict[str, Tissue] = {
    # Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human
    # brain at 3.0 tesla. J Magn Reson Imaging 1999;9:531-538 (frontal WM / cortical
    # GM: T1 832 / 1331 ms, T2 80 / 110 ms).  PD = water content relative to CSF,
    # e.g. Neeb et al. NeuroImage 2006;29:910-922 and Whittall et al. MRM
    # 1997;37:34-43 (WM ~0.69-0.71, GM ~0.80-0.83).
    "wm": Tissue(832.0, 80.0, 0.69, "Wansapura 1999 JMRI (T1, T2); Neeb 2006 / Whittall 1997 (PD)"),
    "gm": Tissue(1331.0, 110.0, 0.80, "Wansapura 1999 JMRI (T1, T2); Neeb 2006 / Whittall 1997 (PD)"),
    # CSF T1 at 3 T: Lu H, Nagae-Poetscher LM, et al. Routine clinical brain MRI
    # sequences for use at 3.0 Tesla. JMRI 2005;22:13-22 (4163 ms).  Bulk CSF T2 is
    # ~1.5-2.5 s in the literature; 2000 ms is a typical value.
    "csf": Tissue(4163.0, 2000.0, 1.00, "Lu 2005 JMRI (T1); typical bulk-CSF T2"),
    # Lesions.  Vasogenic oedema and tumour have longer T1 and T2 than WM (more free
    # water); quantitative glioma studies report oedema T1 ~1.3-1.8x and T2
    # ~1.8-2.5x NAWM (e.g. Blystad et al. PLoS One 2017;12:e0177135).  Values
    # below sit inside those ranges.
    "tumour": Tissue(1800.0, 150.0, 0.85, "within ranges of quantitative glioma MRI (e.g. Blystad 2017)"),
    "necrosis": Tissue(2500.0, 400.0, 0.95, "fluid-like necrotic centre; heuristic"),
    "oedema": Tissue(1500.0, 180.0, 0.88, "within ranges of peritumoral oedema (e.g. Blystad 2017)"),
    # MS-like plaque that is T2/FLAIR bright yet nearly iso-intense to WM on T1w:
    # modestly longer T1 (~1.2x WM) and longer T2 (~1.6x WM), with a water content
    # ~10% above NAWM (Laule et al. J Neurol 2004;251:284-293) whose extra PD
    # cancels the T1 lengthening at TR=500 ms.  T1w within ~1% of WM by design.
    "plaque": Tissue(1000.0, 130.0, 0.76, "tuned inside MS-lesion ranges (Laule 2004 water content)"),
    # Outside the brain (coarse, for looks): subcutaneous fat at 3 T, Gold GE et al.
    # Musculoskeletal MRI at 3.0 T: relaxation times and image contrast. AJR
    # 2004;183:343-351 (T1 ~380 ms, T2 ~70 ms); skeletal muscle / skin, Stanisz GJ
    # et al. T1, T2 relaxation and magnetization transfer in tissue at 3T. MRM
    # 2005;54:507-512 (muscle T1 1412 ms, T2 50 ms); cortical bone has T2 < 1 ms,
    # hence no spin-echo signal; diploe is fatty marrow (heuristic).
    "fat": Tissue(380.0, 70.0, 0.90, "Gold 2004 AJR (subcutaneous fat, 3 T)"),
    "skin": Tissue(1412.0, 50.0, 0.75, "Stanisz 2005 MRM (skeletal muscle, 3 T)"),
    "bone": Tissue(250.0, 0.5, 0.10, "cortical bone: T2 << TE, no signal (heuristic)"),
    "marrow": Tissue(550.0, 50.0, 0.70, "fatty diploic marrow (heuristic)"),
}


@dataclass(frozen=True)
class Sequence:
    """A 2-D spin-echo (``kind='se'``) or inversion-recovery (``kind='ir'``) sequence."""

    kind: str
    tr: float
    te: float
    ti: float | None = None


def flair_null_ti(t1: float, tr: float) -> float:
    """Inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1`` at ``tr``.

    Solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``.

    Examples
    --------
    >>> round(flair_null_ti(4163.0, 9000.0))
    2432
    >>> round(flair_null_ti(1000.0, 1e9) / 1000.0, 3)  # ln 2 * T1 for infinite TR
    0.693
    """
    return float(t1 * math.log(2.0 / (1.0 + math.exp(-tr / t1))))


#: Sequence parameters (ms).  PDw uses a long TR because CSF T1 at 3 T is ~4.2 s:
#: with TR=5000 ms CSF would still be iso-intense to GM.
SEQUENCES: dict[str, Sequence] = {
    "t1": Sequence("se", tr=500.0, te=10.0),
    "t2": Sequence("se", tr=5000.0, te=100.0),
    "pd": Sequence("se", tr=8000.0, te=10.0),
    "flair": Sequence("ir", tr=9000.0, te=100.0, ti=round(flair_null_ti(TISSUES["csf"].t1, 9000.0))),
}

#: Arbitrary scanner gain: M0 such that WM on T1w is ~800 units.
M0 = 3000.0

#: Lesion kinds accepted by ``make_phantom(lesions=[...])`` (with aliases).
LESION_KINDS = ("tumour", "plaque")
_KIND_ALIASES = {
    "tumour": "tumour", "tumor": "tumour", "tumours": "tumour", "tumors": "tumour",
    "glioma": "tumour", "oedema": "tumour", "edema": "tumour",
    "plaque": "plaque", "plaques": "plaque", "ms": "plaque",
}
#: Label values of ``lesion_mask``.
LESION_LABELS = {1: "tumour core", 2: "oedema", 3: "plaque"}


def tissue_signal(tissue: str | Tissue, sequence: str | Sequence) -> float:
    """Signed signal of pure ``tissue`` for ``sequence``, in units of M0.

    The sign matters only for inversion recovery, where partial-volume voxels
    sum signed magnetisations before the magnitude is taken.

    Examples
    --------
    >>> tissue_signal("wm", "t1") > tissue_signal("gm", "t1") > tissue_signal("csf", "t1")
    True
    >>> abs(tissue_signal("csf", "flair")) < 0.01
    True
    """
    t = TISSUES[tissue] if isinstance(tissue, str) else tissue
    s = SEQUENCES[sequence] if isinstance(sequence, str) else sequence
    decay = math.exp(-s.te / t.t2)
    if s.kind == "se":
        return t.pd * (1.0 - math.exp(-s.tr / t.t1)) * decay
    if s.kind == "ir":
        return t.pd * (1.0 - 2.0 * math.exp(-s.ti / t.t1) + math.exp(-s.tr / t.t1)) * decay
    raise ValueError(f"unknown sequence kind {s.kind!r}")


# --------------------------------------------------------------------------------------
# Template loading (cached)
# --------------------------------------------------------------------------------------

# The template's field of view (voxel edges) in RAS mm and its 1 mm affine.
_TEMPLATE_SHAPE = (197, 233, 189)


@functools.lru_cache(maxsize=1)
def _template_1mm() -> dict[str, np.ndarray]:
    """GM, WM, CSF fractions and head signed distance on the 1 mm MNI152 grid (float32)."""
    t1, gm, wm, affine = _load_mni152()
    # nilearn's brain mask is the (skull-stripped) template > 0.2; the template
    # has no scalp or skull, so those are modelled from a distance map below.
    mask = (t1 > 0.2).astype(np.float32)
    del t1
    gm = np.clip(gm, 0, 1)
    wm = np.clip(wm, 0, 1 - gm)
    csf = np.clip(mask - gm - wm, 0, 1)
    # Smooth hull of the brain (fills sulci at the surface) and its signed distance
    # (mm, > 0 outside): the skull and scalp are shells at fixed depths from it.
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


_MNI_FILES = {key: f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz" for key in ("t1", "gm", "wm")}


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
        raise NeurosynthError("the phantom needs nilearn (it ships the MNI152 template); install it with `pip install nilearn`")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    paths = {key: os.path.join(folder, name) for key, name in _MNI_FILES.items()}
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
    if arrays[0].shape != _TEMPLATE_SHAPE:
        raise NeurosynthError(f"unexpected MNI152 template shape {arrays[0].shape}; reinstall nilearn >= 0.10")
    return arrays[0], arrays[1], arrays[2], affine


@functools.lru_cache(maxsize=4)
def _template_prefiltered(resolution: float) -> dict[str, np.ndarray]:
    """Template maps low-passed for sampling at ``resolution`` mm (anti-aliasing).

    A Gaussian with FWHM ~ the voxel size approximates the box average that a
    coarser voxel's partial-volume fraction really is.
    """
    base = _template_1mm()
    if resolution <= 1.0:
        return base
    sigma = math.sqrt(resolution**2 - 1.0) / 2.355
    out = dict(base)
    for key in ("gm", "wm", "csf"):
        out[key] = ndi.gaussian_filter(base[key], sigma, mode="constant")
    return out


def _grid(resolution: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the output grid: the template's field of view at ``resolution``."""
    base_affine = _template_1mm()["affine"]
    n0 = np.array(_TEMPLATE_SHAPE)
    centre = base_affine[:3, :3] @ ((n0 - 1) / 2.0) + base_affine[:3, 3]
    n = np.maximum(np.round(n0 / resolution).astype(int), 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([resolution] * 3)
    affine[:3, 3] = centre - (n - 1) / 2.0 * resolution
    return tuple(int(v) for v in n), affine


def _axes_world(shape, affine) -> list[np.ndarray]:
    """World coordinate (mm) of each index along each axis of a diagonal affine."""
    return [affine[i, 3] + affine[i, i] * np.arange(shape[i]) for i in range(3)]


# --------------------------------------------------------------------------------------
# Smooth random fields
# --------------------------------------------------------------------------------------

_FOV_LO = np.array([-98.5, -134.5, -72.5])
_FOV_HI = np.array([98.5, 98.5, 116.5])


def _dct_field(axes: list[np.ndarray], coeffs: np.ndarray) -> np.ndarray:
    """Evaluate a separable cosine (DCT) expansion on a grid.

    Low-frequency DCT bases are the usual model for smooth deformations and bias
    fields (as in SPM).  The tensor-product sum is contracted axis by axis with
    small matrix products, so a 1 mm field costs a single (nx, K) @ (K, ny*nz)
    product instead of K^3 full-volume passes.  The basis is defined on the
    template field of view in world mm, so a seed gives the same field at any
    resolution.
    """
    k = coeffs.shape
    bases = []
    for i, x in enumerate(axes):
        t = (x - _FOV_LO[i]) / (_FOV_HI[i] - _FOV_LO[i])
        bases.append(np.cos(np.pi * np.outer(t, np.arange(k[i]))).astype(np.float32))
    c = coeffs.astype(np.float32)
    tmp = np.einsum("abc,zc->abz", c, bases[2])  # (Ka, Kb, nz)
    tmp = np.einsum("abz,yb->ayz", tmp, bases[1])  # (Ka, ny, nz)
    out = bases[0] @ tmp.reshape(k[0], -1)  # (nx, ny*nz)
    return out.reshape(len(axes[0]), len(axes[1]), len(axes[2]))


def _random_coeffs(rng: np.random.Generator, order: int, constant: bool = True) -> np.ndarray:
    """Random DCT coefficients decaying with frequency (smoother fields)."""
    a, b, c = np.meshgrid(*(np.arange(order),) * 3, indexing="ij")
    freq = np.sqrt(a**2 + b**2 + c**2)
    coeffs = rng.standard_normal((order,) * 3) / (1.0 + freq) ** 2
    if not constant:
        coeffs[0, 0, 0] = 0.0
    return coeffs


def _normalised_field(axes, rng, order: int) -> np.ndarray:
    """A smooth random field scaled to max |value| = 1 on the grid's field of view."""
    coeffs = _random_coeffs(rng, order, constant=False)
    # Normalise on a fixed coarse grid so the scale does not depend on resolution.
    coarse = [np.linspace(_FOV_LO[i], _FOV_HI[i], 24) for i in range(3)]
    peak = float(np.abs(_dct_field(coarse, coeffs)).max()) or 1.0
    return _dct_field(axes, coeffs / peak)


# --------------------------------------------------------------------------------------
# Anatomy: deformed tissue fractions on the output grid
# --------------------------------------------------------------------------------------


@dataclass
class _Deformation:
    centre: np.ndarray  # world mm, centre of the global scaling
    scale: np.ndarray  # per-axis size factor of this subject
    coeffs: list[np.ndarray]  # DCT coefficients (mm) of the displacement, one per axis


def _make_deformation(rng: np.random.Generator, deform: bool) -> _Deformation:
    centre = np.array([0.0, -18.0, 15.0])
    if not deform:
        return _Deformation(centre, np.ones(3), [np.zeros((1, 1, 1))] * 3)
    # Head size varies by a few percent between adults; the local displacement by
    # a few mm (amplitude 2-4 mm, wavelengths of several cm).
    scale = 1.0 + rng.uniform(-0.05, 0.05, 3)
    amp = rng.uniform(2.0, 4.0)
    coeffs = []
    coarse = [np.linspace(_FOV_LO[i], _FOV_HI[i], 24) for i in range(3)]
    for _ in range(3):
        c = _random_coeffs(rng, 5, constant=False)
        peak = float(np.abs(_dct_field(coarse, c)).max()) or 1.0
        coeffs.append(c * (amp / peak))
    return _Deformation(centre, scale, coeffs)


def _anatomy(resolution: float, deformation: _Deformation) -> dict[str, np.ndarray]:
    """Tissue fractions and head distance of the deformed subject on the output grid."""
    shape, affine = _grid(resolution)
    maps = _template_prefiltered(resolution)
    inv = np.linalg.inv(maps["affine"])
    axes = _axes_world(shape, affine)
    # Pull-back: output point x samples the template at c + S (x - c) + u(x).
    coords = []
    for i in range(3):
        xi = deformation.centre[i] + deformation.scale[i] * (axes[i] - deformation.centre[i])
        xi = (xi - maps["affine"][i, 3]) * inv[i, i]
        view = [1, 1, 1]
        view[i] = shape[i]
        ci = np.broadcast_to(xi.astype(np.float32).reshape(view), shape).copy()
        if deformation.coeffs[i].size > 1:
            ci += _dct_field(axes, deformation.coeffs[i]) * np.float32(inv[i, i])
        coords.append(ci)
    coords = np.stack(coords)
    out = {}
    for key in ("gm", "wm", "csf"):
        out[key] = ndi.map_coordinates(maps[key], coords, order=1, mode="constant", cval=0.0, output=np.float32)
    coords -= np.float32(0.5)  # to the 2 mm grid of the head distance map
    coords *= np.float32(0.5)
    out["sd"] = ndi.map_coordinates(maps["sd"], coords, order=1, mode="nearest", output=np.float32)
    del coords
    total = out["gm"] + out["wm"] + out["csf"]
    over = total > 1.0
    if over.any():  # interpolation can overshoot by a hair
        for key in ("gm", "wm", "csf"):
            out[key][over] /= total[over]
    out["affine"] = affine
    return out


# --------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------


def _parse_lesions(lesions) -> tuple[str, ...]:
    if lesions is True:
        return LESION_KINDS
    if lesions is False or lesions is None:
        return ()
    if isinstance(lesions, str):
        lesions = [s for s in lesions.replace(";", ",").split(",") if s.strip()]
    try:
        items = list(lesions)
    except TypeError:
        raise NeurosynthError(
            f"lesions must be True, False or a list of kinds from {', '.join(LESION_KINDS)}; got {lesions!r}"
        ) from None
    kinds = []
    for item in items:
        key = str(item).strip().lower()
        if key not in _KIND_ALIASES:
            raise NeurosynthError(f"unknown lesion kind {item!r}; choose from {', '.join(LESION_KINDS)}")
        if _KIND_ALIASES[key] not in kinds:
            kinds.append(_KIND_ALIASES[key])
    return tuple(k for k in LESION_KINDS if k in kinds)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotation_to(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose first column is ``direction`` (random roll about it)."""
    d = direction / (np.linalg.norm(direction) or 1.0)
    helper = _random_rotation(rng)[:, 0]
    e2 = helper - d * (helper @ d)
    e2 /= np.linalg.norm(e2) or 1.0
    return np.stack([d, e2, np.cross(d, e2)], axis=1)


@dataclass
class _Blob:
    """A smooth blobby solid: soft union of ellipsoids with a wavy surface."""

    centre: np.ndarray  # world mm
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (offset mm, radii mm, rotation)
    waves: list[tuple[np.ndarray, float, float]]  # (wave vector rad/mm, phase, amplitude mm)

    @property
    def extent(self) -> float:
        reach = max(np.linalg.norm(o) + r.max() for o, r, _ in self.lobes)
        return reach + sum(abs(a) for _, _, a in self.waves)

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, < 0 inside) at world points ``pts`` (..., 3)."""
        dists = []
        for offset, radii, rot in self.lobes:
            local = (pts - (self.centre + offset)) @ rot / radii
            dists.append((np.linalg.norm(local, axis=-1) - 1.0) * radii.min())
        d = dists[0]
        k = 0.3 * min(r.min() for _, r, _ in self.lobes)
        for other in dists[1:]:  # polynomial smooth minimum: blobby union
            h = np.clip(0.5 + 0.5 * (other - d) / k, 0.0, 1.0)
            d = other * (1 - h) + d * h - k * h * (1 - h)
        for vec, phase, amp in self.waves:
            d = d + amp * np.sin(pts @ vec + phase)
        return d


def _make_blob(rng, centre, radius, n_lobes, elongation=(1.0, 1.0), rotation=None, roughness=0.12) -> _Blob:
    lobes = []
    for i in range(n_lobes):
        radii = radius * np.array([rng.uniform(*elongation) if j == 0 else rng.uniform(0.7, 1.0) for j in range(3)])
        offset = np.zeros(3) if i == 0 else rng.normal(0, 0.35 * radius, 3)
        if i > 0:
            radii = radii * rng.uniform(0.5, 0.85)
        rot = rotation if (rotation is not None and i == 0) else _random_rotation(rng)
        lobes.append((offset, radii, rot))
    waves = []
    for _ in range(3):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        wavelength = radius * rng.uniform(0.8, 1.6)
        waves.append((direction * 2 * np.pi / wavelength, rng.uniform(0, 2 * np.pi), roughness * radius / 3))
    return _Blob(np.asarray(centre, float), lobes, waves)


def _render(blob: _Blob, shape, affine, out: np.ndarray, grow: float = 0.0, scale_waves: float = 1.0) -> None:
    """Max-composite the partial-volume occupancy of ``blob`` (dilated by ``grow`` mm) into ``out``."""
    res = float(affine[0, 0])
    reach = blob.extent + grow * (1 + scale_waves) + 2 * res
    inv = np.linalg.inv(affine)
    lo = np.floor(inv[:3, :3] @ (blob.centre - reach) + inv[:3, 3]).astype(int)
    hi = np.ceil(inv[:3, :3] @ (blob.centre + reach) + inv[:3, 3]).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        return
    axes = [affine[i, 3] + affine[i, i] * np.arange(lo[i], hi[i]) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    d = blob.distance(pts) - grow
    if grow and scale_waves:
        # Oedema spreads irregularly (finger-like along the white matter).
        rng_waves = [(v * 0.6, p + 1.0, a * 4.0 * scale_waves) for v, p, a in blob.waves]
        for vec, phase, amp in rng_waves:
            d = d + amp * np.sin(pts @ vec + phase)
    occ = np.clip(0.5 - d / res, 0.0, 1.0).astype(np.float32)
    sl = tuple(slice(lo[i], hi[i]) for i in range(3))
    np.maximum(out[sl], occ, out=out[sl])


def _place_lesions(rng_tumour, rng_plaque, kinds, deformation, resolution):
    """Choose lesion geometry (world mm) on a fixed 3 mm working grid.

    Placement does not depend on the output resolution, so one seed gives the same
    subject at every resolution.
    """
    work = _anatomy(3.0, deformation)
    aff = work["affine"]
    wm, csf, gm = work["wm"], work["csf"], work["gm"]
    brain = (wm + gm + csf) > 0.5
    axes = _axes_world(wm.shape, aff)
    zz = axes[2][None, None, :]
    xx = axes[0][:, None, None]
    wm_depth = ndi.distance_transform_edt(wm > 0.5) * 3.0
    brain_depth = ndi.distance_transform_edt(brain) * 3.0
    ventricles = (csf > 0.5) & (brain_depth > 15.0)
    vent_dist = ndi.distance_transform_edt(~ventricles) * 3.0
    cerebrum = (zz > -5.0) & (zz < 60.0)

    def world(idx):
        return aff[:3, :3] @ np.asarray(idx, float) + aff[:3, 3]

    placed = []
    tumour = None
    if "tumour" in kinds:
        rng = rng_tumour
        radius = rng.uniform(7.0, 13.0)
        oedema = rng.uniform(5.0, 11.0)
        cand = (wm > 0.8) & cerebrum & (np.abs(xx) > 18.0)
        depth_ok = cand & (wm_depth >= np.percentile(wm_depth[cand], 80))
        idx = np.argwhere(depth_ok if depth_ok.any() else cand)
        centre = world(idx[rng.integers(len(idx))]) + rng.uniform(-1.5, 1.5, 3)
        blob = _make_blob(rng, centre, radius, n_lobes=int(rng.integers(2, 5)), elongation=(1.0, 1.3))
        necrotic = bool(rng.random() < 0.6)
        tumour = {"blob": blob, "oedema_mm": oedema, "necrotic": necrotic}
        placed.append({"kind": "tumour", "centre_mm": [round(float(v), 1) for v in centre],
                       "radius_mm": round(float(radius), 1), "oedema_mm": round(float(oedema), 1),
                       "necrotic_centre": necrotic})
    plaques = []
    if "plaque" in kinds:
        rng = rng_plaque
        n = int(rng.integers(4, 9))
        periv = (wm > 0.8) & (vent_dist >= 3.0) & (vent_dist <= 12.0) & cerebrum
        deep = (wm > 0.8) & (wm_depth >= 4.0) & cerebrum
        periv_idx, deep_idx = np.argwhere(periv), np.argwhere(deep)
        # direction away from the ventricles (world axes = array axes on this RAS grid)
        grad = np.stack(np.gradient(vent_dist), axis=-1)
        tries = 0
        while len(plaques) < n and tries < 200:
            tries += 1
            periventricular = rng.random() < 0.6 and len(periv_idx)
            pool = periv_idx if periventricular else deep_idx
            if not len(pool):
                break
            ijk = pool[rng.integers(len(pool))]
            centre = world(ijk) + rng.uniform(-1.5, 1.5, 3)
            # Small plaques must still cover a few voxels on coarse grids.
            radius = max(rng.uniform(2.5, 7.0), 2.0 * resolution)
            if tumour is not None:
                gap = np.linalg.norm(centre - tumour["blob"].centre)
                if gap < tumour["blob"].extent + tumour["oedema_mm"] * 2 + radius + 10.0:
                    continue
            if any(np.linalg.norm(centre - p.centre) < 1.5 * (radius + p.lobes[0][1].max()) for p in plaques):
                continue
            rotation = None
            if periventricular:
                # Ovoid plaques perpendicular to the ventricle wall (Dawson's fingers).
                g = grad[tuple(ijk)]
                if np.linalg.norm(g) > 0:
                    rotation = _rotation_to(g, rng)
            blob = _make_blob(rng, centre, radius, n_lobes=1,
                              elongation=(1.2, 1.6) if rotation is not None else (1.0, 1.3),
                              rotation=rotation, roughness=0.1)
            plaques.append(blob)
            placed.append({"kind": "plaque", "centre_mm": [round(float(v), 1) for v in centre],
                           "radius_mm": round(float(radius), 1),
                           "location": "periventricular" if periventricular else "deep white matter"})
    return tumour, plaques, placed


# --------------------------------------------------------------------------------------
# Head outside the brain
# --------------------------------------------------------------------------------------

# Shells by depth (mm) from the brain hull: extra-axial CSF, skull inner table,
# diploe, outer table, scalp fat, skin.  Adult skull ~6-7 mm, scalp ~5-7 mm.
_SHELLS = (("csf", -np.inf, 1.5), ("bone", 1.5, 3.0), ("marrow", 3.0, 5.0), ("bone", 5.0, 6.5),
           ("fat", 6.5, 11.0), ("skin", 11.0, 13.0))


def _ramp(d: np.ndarray, res: float) -> np.ndarray:
    return np.clip(d / res + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# The phantom
# --------------------------------------------------------------------------------------


def _check_args(seed, resolution, noise, bias, misalignment, lowres_factor) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NeurosynthError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        resolution = float(resolution)
    except (TypeError, ValueError):
        raise NeurosynthError(f"resolution must be a number of mm, got {resolution!r}") from None
    if not (1.0 <= resolution <= 8.0):
        # the template is 1 mm: finer grids would add voxels, not detail
        raise NeurosynthError(f"resolution must be between 1 and 8 mm (the MNI152 template is 1 mm), got {resolution}")
    for name, value, hi in (("noise", noise, 1.0), ("bias", bias, 1.0), ("misalignment", misalignment, 20.0)):
        if not (np.isfinite(value) and 0.0 <= value <= hi):
            raise NeurosynthError(f"{name} must be between 0 and {hi:g}, got {value!r}")
    if isinstance(lowres_factor, bool) or not isinstance(lowres_factor, (int, np.integer)) or not (
        1 <= lowres_factor <= 16
    ):
        raise NeurosynthError(f"lowres_factor must be an integer from 1 to 16, got {lowres_factor!r}")


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


def _rigid(rng: np.random.Generator, amount: float) -> tuple[np.ndarray, list[float], list[float]]:
    """A random rigid world transform: rotations (deg) and translations (mm) within ``amount``."""
    angles = rng.uniform(-amount, amount, 3)
    shift = rng.uniform(-amount, amount, 3)
    rx, ry, rz = np.deg2rad(angles)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    centre = np.array([0.0, -18.0, 15.0])  # rotate about the middle of the brain
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = centre - rot @ centre + shift
    return m, [float(a) for a in angles], [float(s) for s in shift]


def make_phantom(
    seed: int = 0,
    lesions: bool | Iterable[str] = True,
    resolution: float = 1.0,
    *,
    noise: float = 0.02,
    bias: float = 0.15,
    misalignment: float = 0.0,
    lowres_factor: int = 4,
    deform: bool = True,
    tissues: bool = False,
) -> dict[str, Volume]:
    """Make a seeded multi-contrast brain phantom.

    Parameters
    ----------
    seed : int
        Subject seed.  The same seed gives identical arrays; another seed gives
        another anatomy (smooth deformation and head size), lesions, noise, bias
        and motion.  Anatomy and lesion positions do not depend on ``resolution``.
    lesions : bool or list of str
        ``True`` for all kinds (a tumour with core and oedema, and 4-8 MS-like
        plaques), ``False`` for none, or a list of kinds (``"tumour"``,
        ``"plaque"``).
    resolution : float
        Isotropic voxel size in mm (1-8; the template is 1 mm).  1 mm gives the template's 197x233x189
        grid.
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
    lowres_factor : int
        Slab thickness of ``t2_lowres`` in high-resolution slices (axial).
    deform : bool
        Apply the subject's random deformation (``False``: the template anatomy).
    tissues : bool
        Also return the (lesion-free part of the) tissue fractions ``gm``,
        ``wm`` and ``csf`` (float32, on the T1 grid).

    Returns
    -------
    dict of str to Volume
        ``t1``, ``t2``, ``pd``, ``flair`` (float32, scanner-like units, WM on T1
        ~800), ``brain_mask`` (uint8 0/1), ``lesion_mask`` (uint8: 1 tumour core,
        2 oedema, 3 plaque), all on one RAS grid, and ``t2_lowres`` (float32) on
        its own grid with ``lowres_factor``-times thicker axial slices.

    Raises
    ------
    NeurosynthError
        For out-of-range arguments or an unknown lesion kind.

    Examples
    --------
    >>> ph = make_phantom(seed=3, resolution=3.0)
    >>> ph["t1"].shape, ph["t1"].spacing
    ((66, 78, 63), (3.0, 3.0, 3.0))
    >>> ph["t2_lowres"].spacing
    (3.0, 3.0, 12.0)
    >>> sorted(int(v) for v in set(ph["lesion_mask"].data.ravel()))
    [0, 1, 2, 3]
    """
    _check_args(seed, resolution, noise, bias, misalignment, lowres_factor)
    seed = int(seed)
    resolution = float(resolution)
    lowres_factor = int(lowres_factor)
    kinds = _parse_lesions(lesions)
    # Independent streams, so e.g. turning lesions off does not change the noise.
    s_anat, s_head, s_tumour, s_plaque, s_bias, s_motion, s_noise, s_lowres = np.random.SeedSequence(seed).spawn(8)
    deformation = _make_deformation(np.random.default_rng(s_anat), deform)
    anat = _anatomy(resolution, deformation)
    affine = anat["affine"]
    shape = anat["gm"].shape
    axes = _axes_world(shape, affine)
    res = resolution
    f32 = np.float32

    # ---- lesions: occupancy fields, then tissue fractions that replace GM/WM
    tumour, plaques, placed = _place_lesions(
        np.random.default_rng(s_tumour), np.random.default_rng(s_plaque), kinds, deformation, resolution
    )
    gm, wm, csf = anat["gm"], anat["wm"], anat["csf"]
    frac: dict[str, np.ndarray] = {}
    if tumour is not None:
        s_core = np.zeros(shape, f32)
        s_oed = np.zeros(shape, f32)
        _render(tumour["blob"], shape, affine, s_core)
        _render(tumour["blob"], shape, affine, s_oed, grow=tumour["oedema_mm"])
        s_oed = np.clip(s_oed - s_core, 0, 1)
        parenchyma = gm + wm
        core = s_core * parenchyma
        if tumour["necrotic"]:
            s_nec = np.zeros(shape, f32)
            _render(tumour["blob"], shape, affine, s_nec, grow=-0.45 * tumour["blob"].lobes[0][1].min(),
                    scale_waves=0.0)
            s_nec = np.minimum(s_nec, s_core)
            frac["necrosis"] = s_nec * parenchyma
            core = (s_core - s_nec) * parenchyma
        frac["tumour"] = core
        # Vasogenic oedema is confined to white matter (spares the cortex).
        frac["oedema"] = s_oed * wm
        gm = gm * (1 - s_core)
        wm = wm * (1 - s_core - s_oed)
    if plaques:
        s_pl = np.zeros(shape, f32)
        for blob in plaques:
            _render(blob, shape, affine, s_pl)
        frac["plaque"] = s_pl * wm
        wm = wm * (1 - s_pl)
    frac.update(gm=gm, wm=wm, csf=csf)

    brain_mask = ((anat["gm"] + anat["wm"] + anat["csf"]) > 0.5).astype(np.uint8)
    lesion_mask = np.zeros(shape, np.uint8)
    for label, key in ((3, "plaque"), (2, "oedema"), (1, "tumour")):
        if key in frac:
            present = frac[key] if key != "tumour" else frac["tumour"] + frac.get("necrosis", 0)
            lesion_mask[present >= 0.5] = label
    lesion_mask[brain_mask == 0] = 0

    # ---- signals: partial-volume sum of signed tissue signals per contrast.
    # Accumulated tissue by tissue so that no more than a few full-size
    # fraction maps exist at once (a 1 mm grid is 8.7 M voxels).
    clean = {contrast: np.zeros(shape, f32) for contrast in SEQUENCES}

    def add(tissue: str, fraction: np.ndarray) -> None:
        for contrast, acc in clean.items():
            value = M0 * tissue_signal(tissue, contrast)
            if abs(value) > 1e-3:
                acc += f32(value) * fraction

    nonbrain = np.ones(shape, f32)
    for tissue, fraction in frac.items():
        add(tissue, fraction)
        nonbrain -= fraction
    np.clip(nonbrain, 0.0, 1.0, out=nonbrain)

    # ---- head outside the brain: shells at depths from the hull
    if deform:  # skull and scalp thickness vary by +-15 % over the head
        thickness = 1.0 + 0.15 * _normalised_field(axes, np.random.default_rng(s_head), 3)
        depth = anat["sd"] / thickness.astype(f32)
        del thickness
    else:
        depth = anat["sd"]
    inner = None  # occupancy of everything deeper than the current shell's outer edge
    for name, _, b in _SHELLS:
        outer = _ramp(depth - b, res).astype(f32)
        layer = (1.0 - outer) if inner is None else (inner - outer)
        layer *= nonbrain
        add(name, layer)
        inner = outer
    del depth, inner, layer, nonbrain
    for acc in clean.values():
        np.abs(acc, out=acc)

    params = {
        "seed": seed, "lesions": list(kinds), "resolution": resolution, "noise": float(noise),
        "bias": float(bias), "misalignment": float(misalignment), "lowres_factor": lowres_factor,
        "deform": bool(deform),
    }
    common = {"phantom": "napari-neurosynth MNI152 2009a phantom (synthetic, not a real subject)",
              "seed": seed, "resolution": resolution, "parameters": params}

    # ---- motion, bias, noise per contrast
    bias_streams = s_bias.spawn(len(SEQUENCES))
    motion_streams = s_motion.spawn(len(SEQUENCES))
    noise_streams = s_noise.spawn(len(SEQUENCES))
    out: dict[str, Volume] = {}
    t2_biased = None
    for i, (contrast, seq) in enumerate(SEQUENCES.items()):
        img = clean[contrast]
        bright = float(np.percentile(img[brain_mask > 0], 99)) if brain_mask.any() else float(img.max())
        motion = None
        if misalignment > 0 and contrast != "t1":
            world, angles, shift = _rigid(np.random.default_rng(motion_streams[i]), misalignment)
            # The subject moved by ``world``: the new image at x shows the old anatomy at world^-1 x.
            m = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
            img = ndi.affine_transform(img, m[:3, :3], m[:3, 3], order=1, mode="constant", cval=0.0,
                                       output=np.float32)
            motion = {"rotation_deg": angles, "translation_mm": shift,
                      "world_transform": [[float(v) for v in row] for row in world]}
        if bias > 0:
            field = _normalised_field(axes, np.random.default_rng(bias_streams[i]), 3)
            field *= f32(bias)
            np.exp(field, out=field)
            img = img * field
        if contrast == "t2":
            t2_biased = img
        data = _rician(img, noise * bright, np.random.default_rng(noise_streams[i]))
        meta = {**common, "modality": contrast, "sequence": _seq_dict(seq), "noise_sigma": noise * bright}
        if motion is not None:
            meta["motion"] = motion
        out[contrast] = Volume(data, affine.copy(), meta)
        if contrast == "t2":
            t2_sigma = noise * bright

    out["brain_mask"] = Volume(brain_mask, affine.copy(), {**common, "modality": "brain_mask"})
    out["lesion_mask"] = Volume(lesion_mask, affine.copy(), {
        **common, "modality": "lesion_mask", "labels": {str(k): v for k, v in LESION_LABELS.items()},
        "lesions": placed})

    # ---- low-resolution T2: thick axial slabs (mean over lowres_factor slices along S)
    f = lowres_factor
    n_low = -(-shape[2] // f)
    padded = np.zeros(shape[:2] + (n_low * f,), f32)  # slabs past the top are air
    padded[..., : shape[2]] = t2_biased
    low = padded.reshape(shape[0], shape[1], n_low, f).mean(axis=-1, dtype=f32)
    low = _rician(low, t2_sigma, np.random.default_rng(s_lowres))
    low_affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, f, (f - 1) / 2.0], [0, 0, 0, 1.0]])
    out["t2_lowres"] = Volume(low, low_affine, {**common, "modality": "t2", "sequence": _seq_dict(SEQUENCES["t2"]),
                                                "slab_factor": f, "noise_sigma": t2_sigma,
                                                **({"motion": out["t2"].metadata["motion"]}
                                                   if "motion" in out["t2"].metadata else {})})
    if tissues:
        for key in ("gm", "wm", "csf"):
            out[key] = Volume(frac[key].astype(f32), affine.copy(), {**common, "modality": f"{key}_fraction"})
    return out


def _seq_dict(seq: Sequence) -> dict:
    d = {"kind": "spin echo" if seq.kind == "se" else "inversion recovery", "TR_ms": seq.tr, "TE_ms": seq.te}
    if seq.ti is not None:
        d["TI_ms"] = seq.ti
    return d
