"""Intensity normalisation and slicing geometry shared by training and inference.

Training and inference must normalise identically, so both call these functions
with the ``normalization`` and ``slicing`` entries of a model card.
"""

from __future__ import annotations

import numpy as np

from .errors import NeurosynthError

#: Default card entry: divide by a high percentile of the head's foreground.
DEFAULT_NORMALIZATION = {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}

_PLANE_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # R, A, S in RAS+


def foreground_mask(data: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels brighter than ``fraction`` of the 99th percentile: the head, roughly.

    Examples
    --------
    >>> x = np.zeros((4, 4, 4)); x[1:3, 1:3, 1:3] = 100
    >>> int(foreground_mask(x).sum())
    8
    """
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, bool)
    hi = np.percentile(data[finite], 99)
    if hi <= 0:
        return np.zeros(data.shape, bool)
    return finite & (data > fraction * hi)


def intensity_scale(data: np.ndarray, spec: dict | None = None) -> float:
    """The divisor that maps ``data`` to normalised units under ``spec``."""
    spec = {**DEFAULT_NORMALIZATION, **(spec or {})}
    if spec["method"] == "none":
        return 1.0
    if spec["method"] != "percentile":
        raise NeurosynthError(f"unknown intensity normalization {spec['method']!r}")
    fg = foreground_mask(data, spec["foreground_fraction"])
    if not fg.any():
        raise NeurosynthError("the volume is empty (no voxel above background): nothing to normalise")
    scale = float(np.percentile(data[fg], spec["percentile"]))
    if not np.isfinite(scale) or scale <= 0:
        raise NeurosynthError("cannot normalise: the volume has no positive foreground intensity")
    return scale


def normalize_intensity(data: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Scale ``data`` so the ``percentile``-th foreground percentile becomes 1.0.

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
