"""Intensity normalisation and slicing geometry shared by training and inference.

Training and inference must normalise identically, so both call these functions
with the ``normalization`` and ``slicing`` entries of a model card.
"""

from __future__ import annotations

import numpy as np

from .errors import NeurosynthError

#: Default card entry: divide by the median of the central part of the foreground (see
#: :func:`intensity_scale`), which is brain tissue in a whole head and in a skull-stripped image alike.
DEFAULT_NORMALIZATION = {"method": "central_median", "central_fraction": 0.5, "foreground_fraction": 0.1}

#: Normalisation methods a card may name.
NORMALIZATION_METHODS = ("central_median", "percentile", "none")

_PLANE_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # R, A, S in RAS+


def foreground_mask(data: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels brighter than ``fraction`` of the 99th percentile of the nonzero voxels: the head, roughly.

    Exact zeros (padding, the outside of a skull-stripped image) do not take part
    in the percentile, so padding a volume with zeros does not move the threshold,
    nor anything computed on the foreground (the normalisation scale, crop boxes).

    Examples
    --------
    >>> x = np.zeros((4, 4, 4)); x[1:3, 1:3, 1:3] = 100
    >>> int(foreground_mask(x).sum())
    8
    >>> int(foreground_mask(np.pad(x, 20)).sum())
    8
    """
    finite = np.isfinite(data)
    counted = finite & (data != 0)
    if not counted.any():
        return np.zeros(data.shape, bool)
    hi = np.percentile(data[counted], 99)
    if hi <= 0:
        return np.zeros(data.shape, bool)
    return finite & (data > fraction * hi)


def central_region(fg: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """``fg`` restricted to the central ``fraction`` of its bounding box along every axis.

    The head's outer layers (scalp, fat, skull) and the cortex lie near the box's
    faces; its central half holds deep white matter, the ventricles and the deep
    grey nuclei, whether or not the image is skull-stripped.

    Examples
    --------
    >>> fg = np.zeros((8, 8, 8), bool); fg[0:8, 2:6, 2:6] = True
    >>> int(central_region(fg).sum())  # 4 x 2 x 2 of the 8 x 4 x 4 box
    16
    """
    out = np.zeros_like(fg, dtype=bool)
    if not fg.any():
        return out
    box = []
    for axis in range(fg.ndim):
        hits = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != axis)))
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        half = 0.5 * fraction * (hi - lo)
        mid = 0.5 * (lo + hi)
        box.append(slice(int(np.floor(mid - half)), max(int(np.ceil(mid + half)), int(np.floor(mid - half)) + 1)))
    out[tuple(box)] = fg[tuple(box)]
    return out


def intensity_scale(data: np.ndarray, spec: dict | None = None) -> float:
    """The divisor that maps ``data`` to normalised units under ``spec`` (a card's ``normalization``).

    Methods:

    - ``"central_median"`` (the default): the median of the foreground voxels in the
      central half of the foreground's bounding box (:func:`central_region`). That
      region is brain in a whole-head image and in a skull-stripped one, so both
      normalise alike: on the phantom the two scales agree within 2 % for T1, T2,
      PD and FLAIR, where the 99.5th percentile of the foreground (scalp fat is the
      brightest tissue on T1) halves when the scalp is removed. A median, not the
      histogram's mode (WhiteStripe's choice), because with grey and white matter
      peaks of similar height the mode jumps between them (measured: up to 14 %).
    - ``"percentile"``: the ``percentile``-th percentile of the foreground (cards
      trained before the central median).
    - ``"none"``: 1.

    Raises
    ------
    NeurosynthError
        An unknown method, or a volume with no foreground (nothing to normalise).

    Examples
    --------
    >>> x = np.zeros((20, 20, 20), np.float32); x[2:18, 2:18, 2:18] = 50; x[6:14, 6:14, 6:14] = 100
    >>> intensity_scale(x), intensity_scale(x, {"method": "percentile", "percentile": 99.5})
    (100.0, 100.0)
    >>> skull_stripped = x.copy(); skull_stripped[x < 100] = 0
    >>> intensity_scale(skull_stripped)
    100.0
    """
    spec = {**DEFAULT_NORMALIZATION, **(spec or {})}
    method = spec["method"]
    if method == "none":
        return 1.0
    if method not in NORMALIZATION_METHODS:
        raise NeurosynthError(
            f"unknown intensity normalization {method!r}; use one of {', '.join(NORMALIZATION_METHODS)}"
        )
    fg = foreground_mask(data, float(spec.get("foreground_fraction", 0.1)))
    if not fg.any():
        raise NeurosynthError("the volume is empty (no voxel above background): nothing to normalise")
    if method == "percentile":
        scale = float(np.percentile(data[fg], float(spec.get("percentile", 99.5))))
    else:
        centre = central_region(fg, float(spec.get("central_fraction", 0.5)))
        scale = float(np.median(data[centre if centre.any() else fg]))
    if not np.isfinite(scale) or scale <= 0:
        raise NeurosynthError("cannot normalise: the volume has no positive foreground intensity")
    return scale


def normalize_intensity(data: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """``data`` divided by its :func:`intensity_scale` under ``spec``, as float32.

    Examples
    --------
    >>> x = np.zeros((10, 10, 10), np.float32); x[2:8, 2:8, 2:8] = 500
    >>> float(normalize_intensity(x).max())
    1.0
    """
    return (np.asarray(data, np.float32) / intensity_scale(data, spec)).astype(np.float32)


def slice_axis(affine: np.ndarray, plane: str = "axial") -> int:
    """The array axis that steps through ``plane`` slices, read from the affine.

    For a volume stored RAS-ordered (nibabel canonical), axial slices are along
    axis 2; for a DICOM-ordered or oblique volume the axis is whichever array
    axis points mostly along the plane's normal.

    Examples
    --------
    >>> slice_axis(np.diag([1, 1, 1, 1.0]), "axial")
    2
    >>> slice_axis(np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]), "axial")
    1
    """
    if plane not in _PLANE_WORLD_AXIS:
        raise NeurosynthError(f"unknown slicing plane {plane!r}; use one of {sorted(_PLANE_WORLD_AXIS)}")
    direction = np.asarray(affine, float)[:3, :3]
    direction = direction / np.linalg.norm(direction, axis=0, keepdims=True)
    return int(np.argmax(np.abs(direction[_PLANE_WORLD_AXIS[plane]])))
