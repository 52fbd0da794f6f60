"""Image-similarity metrics for a synthesized volume against the acquired one.

:func:`evaluate` reports PSNR, SSIM, MAE and NMSE over the whole volume, inside a
brain mask and inside a lesion mask, plus an error profile over radial k-space
frequency bands. The band profile answers the survey's Challenge 3: a synthesis
can score a high PSNR/SSIM while being blurred, i.e. while losing the high spatial
frequencies that carry fine structure; the profile shows where in k-space the
error sits.

SSIM is implemented here with separable Gaussian filtering
(:func:`scipy.ndimage.gaussian_filter`) rather than taken from MONAI or
scikit-image because the masked variant needs the full SSIM *map* on a 3-D grid
(MONAI's ``SSIMMetric`` returns only the mean), and scikit-image is a test-only
dependency. The formulas and filter settings follow scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` exactly, and a test checks the agreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias, TypedDict, cast

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft
from scipy import ndimage as ndi

from .errors import NeurosynthError

if TYPE_CHECKING:
    from .io import Volume

#: A volume: a 3-D numpy array, or a :class:`~napari_neurosynth.io.Volume` (with its affine).
ArrayOrVolume: TypeAlias = "NDArray[np.generic] | Volume"
#: A boolean / label mask as numpy array.
Mask: TypeAlias = NDArray[np.bool_]
FloatArray: TypeAlias = NDArray[np.floating]

#: Gaussian window of SSIM (Wang et al. 2004; scikit-image's gaussian_weights=True).
SSIM_SIGMA = 1.5
#: The filter radius is ``int(truncate * sigma + 0.5)`` = 5 voxels: an 11-tap window.
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
#: MAD -> standard deviation for Gaussian noise.
MAD_TO_SD = 1.4826
#: The ``normalize`` default of :func:`evaluate`,
#: :func:`~napari_neurosynth.explain.difference_map` and
#: :func:`~napari_neurosynth.explain.lesion_fidelity`: a synthesis comes out in the
#: model's normalised units while the acquired image is in scanner units, so the
#: call a user makes first (``evaluate(synth, acquired)``) must put both on one scale.
#: Pass ``normalize=False`` for two volumes already in one unit (training's validation).
NORMALIZE_DEFAULT = True

__all__ = [
    "MAD_TO_SD",
    "NORMALIZE_DEFAULT",
    "ArrayOrVolume",
    "EvaluateResult",
    "KspaceBand",
    "RegionMetrics",
    "as_array",
    "check_same_grid",
    "dice",
    "evaluate",
    "export_result",
    "kspace_band_errors",
    "mae",
    "nmse",
    "psnr",
    "result_rows",
    "robust_sigma",
    "roc_auc",
    "ssim",
    "ssim_map",
]


#: The four similarity metrics, per region.
_METRIC_KEYS: tuple[Literal["psnr", "ssim", "mae", "nmse"], ...] = ("psnr", "ssim", "mae", "nmse")


class RegionMetrics(TypedDict):
    """One row of :func:`evaluate`'s ``regions``."""

    psnr: float
    ssim: float
    mae: float
    nmse: float
    data_range: float
    n_voxels: int


class KspaceBand(TypedDict):
    """One radial band of :func:`kspace_band_errors`."""

    band: int
    low: float
    high: float
    rel_error: float
    target_energy: float
    n_coefficients: int


class _EvaluateRequired(TypedDict):
    psnr: float
    ssim: float
    mae: float
    nmse: float
    regions: dict[str, RegionMetrics]
    kspace: list[KspaceBand]
    spacing: tuple[float, float, float]
    normalized: bool


class EvaluateResult(_EvaluateRequired, total=False):
    """What :func:`evaluate` returns (a plain dict at run time); the region keys only with their mask."""

    psnr_brain: float
    ssim_brain: float
    mae_brain: float
    nmse_brain: float
    psnr_lesion: float
    ssim_lesion: float
    mae_lesion: float
    nmse_lesion: float


# --------------------------------------------------------------------------- inputs


def as_array(x: ArrayOrVolume | None, name: str = "image") -> tuple[NDArray[np.generic], NDArray[np.float64] | None]:
    """Return ``(data, affine)`` for a Volume, or ``(array, None)`` for an array.

    Raises :class:`NeurosynthError` unless the data is a finite 3-D array.

    Examples
    --------
    >>> data, affine = as_array(np.zeros((2, 3, 4)))
    >>> data.shape, affine
    ((2, 3, 4), None)
    >>> as_array(np.zeros((2, 3)), "mask")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: mask must be a 3-D volume, got 2-D shape (2, 3)
    """
    if x is None:
        raise NeurosynthError(f"{name} is missing")
    affine = getattr(x, "affine", None)
    data = np.asarray(getattr(x, "data", x))
    if data.ndim != 3:
        raise NeurosynthError(f"{name} must be a 3-D volume, got {data.ndim}-D shape {data.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.number):
        raise NeurosynthError(f"{name} must hold numbers, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise NeurosynthError(f"{name} has {n} NaN or Inf voxels; fix or mask them before comparing")
    return data, (None if affine is None else np.asarray(affine, float))


def check_same_grid(a: ArrayOrVolume, b: ArrayOrVolume, names: tuple[str, str] = ("synth", "target")) -> None:
    """Raise :class:`NeurosynthError` unless ``a`` and ``b`` share one voxel grid.

    Shapes must be equal; when both carry an affine (Volumes), the affines must
    agree to 1e-3 mm (:func:`napari_neurosynth.io.same_grid`).

    Examples
    --------
    >>> check_same_grid(np.zeros((4, 4, 4)), np.ones((4, 4, 4)))
    >>> check_same_grid(np.zeros((4, 4, 4)), np.ones((4, 4, 5)))
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: synth and target are on different grids (shapes (4, 4, 4) vs (4, 4, 5))...
    """
    da, aa = as_array(a, names[0])
    db, ab = as_array(b, names[1])
    if da.shape != db.shape:
        raise NeurosynthError(
            f"{names[0]} and {names[1]} are on different grids (shapes {da.shape} vs {db.shape}); "
            "resample one onto the other first"
        )
    if aa is not None and ab is not None:
        from .io import Volume, same_grid

        same = same_grid(Volume(da, aa), Volume(db, ab))
        if not same:
            raise NeurosynthError(
                f"{names[0]} and {names[1]} have the same shape but different affines "
                "(voxel spacing, origin or orientation differ); resample one onto the other first"
            )


def _mask(m: ArrayOrVolume | None, ref: ArrayOrVolume, name: str) -> Mask | None:
    if m is None:
        return None
    check_same_grid(m, ref, (name, "target"))
    mask = as_array(m, name)[0] != 0
    if not mask.any():
        raise NeurosynthError(f"{name} is empty (no nonzero voxel)")
    return mask


def _normalize(x: NDArray[np.generic]) -> NDArray[np.float64]:
    """The normalisation of ``normalize=True``: the package's default
    (:data:`~napari_neurosynth.preprocessing.DEFAULT_NORMALIZATION`), the same for both images."""
    from .preprocessing import normalize_intensity

    return normalize_intensity(x).astype(np.float64)


# --------------------------------------------------------------------------- metrics


def data_range_of(target: NDArray[np.generic], mask: Mask | None = None) -> float:
    """``max - min`` of the target (inside ``mask`` when given): PSNR/SSIM's data range.

    Examples
    --------
    >>> data_range_of(np.array([[[1.0, 3.0], [2.0, 7.0]]]))
    6.0
    """
    vals = target[mask] if mask is not None else target
    rng = float(np.max(vals) - np.min(vals))
    if rng <= 0:
        raise NeurosynthError("the target is constant inside the region: PSNR/SSIM are undefined")
    return rng


def psnr(
    synth: NDArray[np.generic], target: NDArray[np.generic], mask: Mask | None = None, data_range: float | None = None
) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(R^2 / MSE)``.

    ``R`` defaults to ``target.max() - target.min()`` inside ``mask``; the MSE is
    taken inside ``mask``. Identical images give ``inf``.

    Examples
    --------
    >>> t = np.linspace(0, 1, 1000).reshape(10, 10, 10)
    >>> round(psnr(t + 0.01, t), 1)
    40.0
    """
    s, t = np.asarray(synth, np.float64), np.asarray(target, np.float64)
    R = data_range_of(t, mask) if data_range is None else float(data_range)
    d = (s - t)[mask] if mask is not None else (s - t)
    mse = float(np.mean(d * d))
    return float("inf") if mse == 0 else float(10.0 * np.log10(R * R / mse))


def ssim_map(synth: NDArray[np.generic], target: NDArray[np.generic], data_range: float) -> NDArray[np.float64]:
    """The local SSIM map (3-D Gaussian window, sigma 1.5, population covariances).

    Examples
    --------
    >>> t = np.random.default_rng(0).random((12, 12, 12))
    >>> float(ssim_map(t, t, 1.0).min())
    1.0
    """
    s, t = np.asarray(synth, np.float64), np.asarray(target, np.float64)

    def f(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(ndi.gaussian_filter(x, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect"), np.float64)

    ux, uy = f(s), f(t)
    vx = f(s * s) - ux * ux
    vy = f(t * t) - uy * uy
    vxy = f(s * t) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(
    synth: NDArray[np.generic], target: NDArray[np.generic], mask: Mask | None = None, data_range: float | None = None
) -> float:
    """Mean structural similarity.

    Without a mask: the mean of the SSIM map after cropping the filter radius
    (5 voxels) at each border, exactly like scikit-image. With a mask: the mean
    of the (uncropped) SSIM map inside the mask. ``data_range`` defaults to the
    target's ``max - min`` inside ``mask``.

    Examples
    --------
    >>> t = np.random.default_rng(0).random((16, 16, 16))
    >>> ssim(t, t), round(ssim(t, 1 - t), 2)
    (1.0, -0.98)
    """
    t = np.asarray(target, np.float64)
    R = data_range_of(t, mask) if data_range is None else float(data_range)
    smap = ssim_map(synth, t, R)
    if mask is not None:
        return float(smap[mask].mean())
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(smap.shape) <= 2 * pad:
        raise NeurosynthError(f"volume {smap.shape} is too small for SSIM's 11-voxel window")
    return float(smap[tuple(slice(pad, -pad) for _ in smap.shape)].mean())


def mae(synth: NDArray[np.generic], target: NDArray[np.generic], mask: Mask | None = None) -> float:
    """Mean absolute error (inside ``mask`` when given), in the images' units.

    Examples
    --------
    >>> mae(np.full((2, 2, 2), 3.0), np.full((2, 2, 2), 1.0))
    2.0
    """
    d = np.abs(np.asarray(synth, np.float64) - np.asarray(target, np.float64))
    return float(d[mask].mean() if mask is not None else d.mean())


def nmse(synth: NDArray[np.generic], target: NDArray[np.generic], mask: Mask | None = None) -> float:
    """Normalised MSE ``||s - t||^2 / ||t||^2`` (inside ``mask`` when given).

    Examples
    --------
    >>> nmse(np.full((2, 2, 2), 1.5), np.full((2, 2, 2), 1.0))
    0.25
    """
    s, t = np.asarray(synth, np.float64), np.asarray(target, np.float64)
    if mask is not None:
        s, t = s[mask], t[mask]
    den = float(np.sum(t * t))
    if den == 0:
        raise NeurosynthError("the target is all zero inside the region: NMSE is undefined")
    return float(np.sum((s - t) ** 2) / den)


def kspace_band_errors(
    synth: NDArray[np.generic],
    target: NDArray[np.generic],
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_bands: int = 8,
    mask: Mask | None = None,
) -> list[KspaceBand]:
    """Relative error per radial band of the 3-D Fourier transform.

    Both volumes are transformed (after zeroing outside ``mask``, when given, so
    background noise does not dominate); the radial spatial frequency
    ``|k|`` (cycles/mm, from ``spacing``) is split into ``n_bands`` equal-width
    bands from DC to the Nyquist frequency of the coarsest axis,
    ``1 / (2 * max(spacing))``. The last band also collects the corners of
    k-space beyond that radius, and its ``high`` is the largest radius present.

    Returns
    -------
    list of dict
        One per band: ``band`` (0 = lowest), ``low`` and ``high`` (cycles/mm),
        ``rel_error`` = ``||F(s) - F(t)|| / ||F(t)||`` over the band (NaN for a band
        that holds no coefficient),
        ``target_energy`` (the band's share of the target's spectral energy) and
        ``n_coefficients``.

    Examples
    --------
    >>> t = np.random.default_rng(0).random((16, 16, 16))
    >>> [round(b["rel_error"], 6) for b in kspace_band_errors(t, t, n_bands=2)]
    [0.0, 0.0]
    """
    s, t = np.asarray(synth, np.float64), np.asarray(target, np.float64)
    most = max(1, max(t.shape) // 2)  # distinct radial frequencies along the longest axis
    if not 1 <= n_bands <= most:
        raise NeurosynthError(
            f"the number of k-space bands must be between 1 and {most} for a volume of shape {t.shape}, not {n_bands}"
        )
    if mask is not None:
        s, t = s * mask, t * mask
    fs, ft = sp_fft.fftn(s), sp_fft.fftn(t)
    grids = np.meshgrid(*[sp_fft.fftfreq(n, d=float(d)) for n, d in zip(t.shape, spacing)], indexing="ij", sparse=True)
    radius = np.sqrt(sum(g * g for g in grids))
    nyquist = 1.0 / (2.0 * max(float(d) for d in spacing))
    edges = np.linspace(0.0, nyquist, n_bands + 1)
    band = np.clip(np.digitize(radius, edges[1:-1], right=False), 0, n_bands - 1)
    err2 = np.abs(fs - ft) ** 2
    tgt2 = np.abs(ft) ** 2
    err_b = np.bincount(band.ravel(), weights=err2.ravel(), minlength=n_bands)
    tgt_b = np.bincount(band.ravel(), weights=tgt2.ravel(), minlength=n_bands)
    cnt_b = np.bincount(band.ravel(), minlength=n_bands)
    total = float(tgt_b.sum()) or 1.0
    out: list[KspaceBand] = []
    for i in range(n_bands):
        high = float(radius.max()) if i == n_bands - 1 else float(edges[i + 1])
        if cnt_b[i] == 0:  # no coefficient falls in this band: its error is undefined, not zero
            rel = float("nan")
        else:
            rel = float(np.sqrt(err_b[i] / tgt_b[i])) if tgt_b[i] > 0 else (0.0 if err_b[i] == 0 else float("inf"))
        out.append(
            {
                "band": i,
                "low": float(edges[i]),
                "high": high,
                "rel_error": rel,
                "target_energy": float(tgt_b[i] / total),
                "n_coefficients": int(cnt_b[i]),
            }
        )
    return out


def _region_metrics(
    s: NDArray[np.float64], t: NDArray[np.float64], mask: Mask | None, data_range: float, smap: NDArray[np.float64]
) -> RegionMetrics:
    if mask is None:
        pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
        inner = tuple(slice(pad, -pad) if n > 2 * pad else slice(None) for n in smap.shape)
        ssim_v = float(smap[inner].mean())
    else:
        ssim_v = float(smap[mask].mean())
    return {
        "psnr": psnr(s, t, mask, data_range),
        "ssim": ssim_v,
        "mae": mae(s, t, mask),
        "nmse": nmse(s, t, mask),
        "data_range": data_range,
        "n_voxels": int(mask.sum()) if mask is not None else int(t.size),
    }


def evaluate(
    synth: ArrayOrVolume,
    target: ArrayOrVolume,
    *,
    mask: ArrayOrVolume | None = None,
    lesion: ArrayOrVolume | None = None,
    normalize: bool = NORMALIZE_DEFAULT,
    n_bands: int = 8,
    kspace: bool = True,
) -> EvaluateResult:
    """Compare a synthesized volume with the acquired target.

    Metrics, each computed globally, inside the brain ``mask`` and inside the
    ``lesion`` mask (any nonzero label):

    - **PSNR** (dB) = ``10 log10(R^2 / MSE)``.
    - **SSIM**: 3-D, Gaussian window (sigma 1.5 voxels, 11 taps), K1 = 0.01,
      K2 = 0.03, population covariances, as in Wang et al. 2004 and
      scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False)``. The global value is the mean of the SSIM
      map with a 5-voxel border cropped (as scikit-image does); the regional
      values are the mean of the SSIM map inside the region.
    - **MAE** = mean ``|s - t|``; **NMSE** = ``||s - t||^2 / ||t||^2``.

    **Data range** ``R`` for PSNR and SSIM: the global row uses the target's
    ``max - min`` over the whole volume; the brain and lesion rows use the
    target's ``max - min`` *inside the brain mask* (a lesion's own intensity range
    is too narrow to serve as a peak). Without a brain mask the lesion row uses the
    global range. Each row reports the ``data_range`` it used.

    Parameters
    ----------
    synth, target : numpy.ndarray or Volume
        The synthesized and acquired volumes, on the same grid.
    mask : array or Volume, optional
        Brain mask (nonzero = brain). Keyword-only, like ``lesion``.
    lesion : array or Volume, optional
        Lesion mask or label volume (nonzero = lesion).
    normalize : bool
        Put both volumes through
        :func:`napari_neurosynth.preprocessing.normalize_intensity` first (the
        package's default normalisation, each image by its own scale), so an acquired image in scanner units can
        be compared with a synthesis in normalised units. Default True
        (:data:`NORMALIZE_DEFAULT`, shared with the difference map and lesion
        fidelity); pass False for two volumes already in one unit.
    n_bands : int
        Number of radial k-space bands for the error profile.
    kspace : bool
        Compute the k-space band profile (the slowest part; off for quick
        validation loops).

    Returns
    -------
    EvaluateResult
        A dict: ``psnr``, ``ssim``, ``mae``, ``nmse`` (global); ``psnr_brain`` ...
        ``nmse_brain`` and ``psnr_lesion`` ... ``nmse_lesion`` when the masks are
        given; ``regions`` mapping ``"global"``, ``"brain"``, ``"lesion"`` to dicts
        of the four metrics plus ``data_range`` and ``n_voxels``; ``kspace``: the
        list from :func:`kspace_band_errors` (computed inside the brain mask when
        given); ``spacing`` and ``normalized``.

    Raises
    ------
    NeurosynthError
        Mismatched grids, non-3-D input, NaN/Inf voxels, empty masks.

    Examples
    --------
    >>> t = np.random.default_rng(0).random((16, 16, 16))
    >>> r = evaluate(t, t)
    >>> r["psnr"], r["ssim"], r["mae"]
    (inf, 1.0, 0.0)
    >>> brain = np.zeros(t.shape, bool); brain[4:12, 4:12, 4:12] = True
    >>> r = evaluate(t + 0.01, t, mask=brain, normalize=False, kspace=False)
    >>> sorted(r["regions"]), round(r["mae_brain"], 6)
    (['brain', 'global'], 0.01)
    """
    check_same_grid(synth, target)
    s_raw, s_aff = as_array(synth, "synth")
    t_raw, t_aff = as_array(target, "target")
    brain = _mask(mask, target, "brain mask")
    les = _mask(lesion, target, "lesion mask")
    s = s_raw.astype(np.float64)
    t = t_raw.astype(np.float64)
    if normalize:
        s, t = _normalize(s), _normalize(t)
    aff = t_aff if t_aff is not None else s_aff
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    if aff is not None:
        sx, sy, sz = (float(x) for x in np.linalg.norm(aff[:3, :3], axis=0))
        spacing = (sx, sy, sz)

    r_global = data_range_of(t)
    r_brain = data_range_of(t, brain) if brain is not None else r_global
    smaps = {r_global: ssim_map(s, t, r_global)}
    if r_brain not in smaps:
        smaps[r_brain] = ssim_map(s, t, r_brain)

    regions: dict[str, RegionMetrics] = {"global": _region_metrics(s, t, None, r_global, smaps[r_global])}
    if brain is not None:
        regions["brain"] = _region_metrics(s, t, brain, r_brain, smaps[r_brain])
    if les is not None:
        regions["lesion"] = _region_metrics(s, t, les, r_brain, smaps[r_brain])

    out: dict[str, object] = {k: regions["global"][k] for k in _METRIC_KEYS}
    for name in ("brain", "lesion"):
        if name in regions:
            out.update({f"{k}_{name}": regions[name][k] for k in _METRIC_KEYS})
    out.update(
        regions=regions,
        kspace=kspace_band_errors(s, t, spacing, n_bands, brain) if kspace else [],
        spacing=spacing,
        normalized=bool(normalize),
    )
    return cast(EvaluateResult, out)


# --------------------------------------------------------------------------- robust statistics, detection, overlap


def robust_sigma(x: NDArray[np.generic]) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)`` of ``x``: a centre and spread that ignore outliers.

    Examples
    --------
    >>> robust_sigma(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    (3.0, 1.4826)
    """
    v = np.asarray(x, np.float64)
    med = float(np.median(v))
    return med, float(MAD_TO_SD * np.median(np.abs(v - med)))


def roc_auc(scores: NDArray[np.generic], positive: NDArray[np.generic]) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``.

    The Mann-Whitney U statistic with mid-ranks for ties
    (:func:`scipy.stats.rankdata`): the probability that a random positive
    scores above a random negative.

    Examples
    --------
    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75
    """
    from scipy.stats import rankdata

    sc, pos = np.asarray(scores, float).ravel(), np.asarray(positive, bool).ravel()
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        raise NeurosynthError("ROC AUC needs both positive and negative voxels")
    ranks = rankdata(sc)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def dice(a: NDArray[np.generic], b: NDArray[np.generic]) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two masks (1.0 when both are empty).

    Examples
    --------
    >>> dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.5
    """
    ma, mb = np.asarray(a) != 0, np.asarray(b) != 0
    den = int(ma.sum() + mb.sum())
    return 1.0 if den == 0 else float(2 * np.logical_and(ma, mb).sum() / den)


# --------------------------------------------------------------------------- export

#: Columns of :func:`result_rows` (the CSV of ``neurosynth evaluate --csv``).
RESULT_COLUMNS = (
    "kind", "name", "n_voxels", "psnr", "ssim", "mae", "nmse", "data_range",
    "band", "low_cycles_per_mm", "high_cycles_per_mm", "rel_error", "target_energy",
)  # fmt: skip


def result_rows(result: EvaluateResult) -> list[dict[str, object]]:
    """:func:`evaluate`'s result as flat rows: one per region (``kind="region"``), one per k-space band.

    Examples
    --------
    >>> t = np.random.default_rng(0).random((16, 16, 16))
    >>> rows = result_rows(evaluate(t, t, n_bands=2))
    >>> [(r["kind"], r["name"]) for r in rows]
    [('region', 'global'), ('kspace', 'band 0'), ('kspace', 'band 1')]
    """
    rows: list[dict[str, object]] = []
    for name, r in result["regions"].items():
        rows.append({"kind": "region", "name": name, **{k: r[k] for k in _METRIC_KEYS}, "n_voxels": r["n_voxels"],
                     "data_range": r["data_range"]})  # fmt: skip
    for b in result.get("kspace", []):
        rows.append(
            {
                "kind": "kspace",
                "name": f"band {b['band']}",
                "band": b["band"],
                "low_cycles_per_mm": b["low"],
                "high_cycles_per_mm": b["high"],
                "rel_error": b["rel_error"],
                "target_energy": b["target_energy"],
            }
        )
    return rows


def export_result(result: EvaluateResult, path: str | Path, **extra: object) -> Path:
    """Write :func:`evaluate`'s result: ``.json`` gets everything (plus ``extra``), any other suffix the
    :func:`result_rows` as CSV.

    Non-finite numbers follow :mod:`napari_neurosynth.export`'s one rule: ``null`` in
    JSON, an empty cell in CSV (so the PSNR of identical images, ``inf``, is ``null``).

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> t = np.random.default_rng(0).random((16, 16, 16))
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "m.json"
    >>> json.loads(export_result(evaluate(t, t, kspace=False), out).read_text())["psnr"] is None
    True
    """
    from .export import write_csv, write_json

    path = Path(path)
    if path.suffix.lower() == ".json":
        return write_json({**result, **extra}, path)
    write_csv(result_rows(result), path, RESULT_COLUMNS)
    return path
