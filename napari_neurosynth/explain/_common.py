"""Shared helpers of the explain modules: geometry of Volumes, masks, the normalised pair."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import NeurosynthError
from ..metrics import ArrayOrVolume, Mask, _normalize, as_array, check_same_grid

#: 26-connectivity: voxels touching by a face, an edge or a corner are one region.
CONN26 = np.ones((3, 3, 3), bool)


def affine_of(*xs: object) -> NDArray[np.float64] | None:
    """The affine of the first argument that has one (a Volume), else None.

    Examples
    --------
    >>> from napari_neurosynth.io import Volume
    >>> float(affine_of(np.zeros((2, 2, 2)), Volume(np.zeros((2, 2, 2)), np.diag([2.0, 2, 2, 1])))[0, 0])
    2.0
    """
    for x in xs:
        a = getattr(x, "affine", None)
        if a is not None:
            return np.asarray(a, float)
    return None


def voxel_mm3(affine: NDArray[np.floating] | None) -> float | None:
    """Voxel volume in mm3 of ``affine`` (None without one).

    Examples
    --------
    >>> voxel_mm3(np.diag([2.0, 2.0, 3.0, 1.0]))
    12.0
    """
    return None if affine is None else round(float(abs(np.linalg.det(affine[:3, :3]))), 6)


def spacing_of(affine: NDArray[np.floating] | None) -> tuple[float, float, float]:
    """Voxel spacing (mm) of ``affine``; 1 mm per axis without one."""
    if affine is None:
        return (1.0, 1.0, 1.0)
    sx, sy, sz = (float(d) for d in np.linalg.norm(affine[:3, :3], axis=0))
    return (sx, sy, sz)


def world(affine: NDArray[np.floating] | None, ijk: Sequence[float] | NDArray[np.floating]) -> list[float] | None:
    """RAS+ millimetres of voxel coordinates ``ijk`` (None without an affine)."""
    if affine is None:
        return None
    return [float(v) for v in (affine @ np.r_[np.asarray(ijk, float), 1.0])[:3]]


def bool_mask(m: ArrayOrVolume, ref: ArrayOrVolume, name: str, allow_empty: bool = False) -> Mask:
    """``m != 0`` after checking it lies on ``ref``'s grid; an empty mask is an error unless allowed."""
    check_same_grid(m, ref, (name, "target"))
    mask: Mask = as_array(m, name)[0] != 0
    if not allow_empty and not mask.any():
        raise NeurosynthError(f"{name} is empty (no nonzero voxel)")
    return mask


def normalized_pair(
    synth: ArrayOrVolume, target: ArrayOrVolume, normalize: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Synthesis and target as float64 on one grid, normalised as :func:`~napari_neurosynth.metrics.evaluate`
    does when ``normalize``."""
    check_same_grid(synth, target)
    s = as_array(synth, "synth")[0].astype(np.float64)
    t = as_array(target, "target")[0].astype(np.float64)
    if normalize:  # the same normalisation evaluate() applies
        s, t = _normalize(s), _normalize(t)
    return s, t
