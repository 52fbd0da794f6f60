"""Sanity checks on what goes into a model: inputs that run but would give a wrong image.

:func:`~napari_neurosynth.inference.prepare_inputs` already refuses what cannot run
(wrong count, 2-D, NaN/Inf, mismatched grids). The checks here catch inputs that
*would* run and silently produce nonsense:

* MCSR inputs given in swapped order (the low-resolution image first), recognised
  by their grids: the "super-resolved" output would land on the coarse grid;
* volumes too small for the network, whose deepest feature map would be a single
  pixel (instance norm then fails deep inside torch);
* constant or near-constant inputs, which carry no anatomy: a warning, not an error,
  because a blank test volume is a legitimate thing to run.

Examples
--------
>>> import numpy as np
>>> from napari_neurosynth.io import Volume
>>> constant_warnings([Volume(np.ones((8, 8, 8)), np.eye(4))], ["t1"])
['input 1 (t1) is constant (every voxel is 1); the output will carry no anatomy']
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import NeurosynthError, NeurosynthWarning
from .io import Volume

__all__ = [
    "MIN_FEATURE_SIDE",
    "check_mcsr_order",
    "check_slice_extent",
    "constant_warnings",
    "warn_constant",
]

#: The deepest feature map must keep at least this many pixels per side: instance
#: and batch norm need more than one spatial element, and a 1-pixel bottleneck has
#: no spatial context left to synthesise from.
MIN_FEATURE_SIDE = 2

# A foreground whose spread is below this fraction of its mean level is "near-constant".
_NEAR_CONSTANT = 1e-3


def _label(i: int, name: str) -> str:
    return f"input {i + 1} ({name})"


def _voxel_volume(volume: Volume) -> float:
    return float(abs(np.linalg.det(volume.affine[:3, :3])))


def check_mcsr_order(card: Mapping[str, Any], volumes: Sequence[Volume]) -> None:
    """Refuse MCSR inputs whose grids show they were given in swapped order.

    An MCSR card lists the high-resolution source first and the low-resolution
    target after it. When a later input has clearly *smaller* voxels than the first
    (by more than 1.5x in volume), the low-resolution image was given first.

    Examples
    --------
    >>> import numpy as np
    >>> card = {"task": "mcsr", "inputs": ["t1", "t2_lowres"]}
    >>> hi = Volume(np.zeros((8, 8, 32)), np.eye(4))
    >>> lo = Volume(np.zeros((8, 8, 8)), np.diag([1.0, 1.0, 4.0, 1.0]))
    >>> check_mcsr_order(card, [hi, lo])
    >>> check_mcsr_order(card, [lo, hi])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: the MCSR inputs look swapped: input 1 (t1) has 4 mm^3 voxels ...
    """
    if card.get("task") != "mcsr" or len(volumes) < 2:
        return
    names = list(card.get("inputs", []))
    v0 = _voxel_volume(volumes[0])
    for i in range(1, len(volumes)):
        vi = _voxel_volume(volumes[i])
        if vi > 0 and v0 > 1.5 * vi:
            raise NeurosynthError(
                f"the MCSR inputs look swapped: {_label(0, names[0])} has {v0:.3g} mm^3 voxels but "
                f"{_label(i, names[i])} has {vi:.3g} mm^3; give the high-resolution {names[0]} first and the "
                f"low-resolution {names[i]} after it"
            )


def check_slice_extent(shape: Sequence[int], axis: int, divisor: int, what: str, model: str) -> None:
    """Refuse a volume whose slices are too small for a network that downsamples by ``divisor``.

    Examples
    --------
    >>> check_slice_extent((64, 64, 3), 2, 4, "input 1 (t1)", "t1_to_t2")
    >>> check_slice_extent((4, 4, 3), 2, 4, "input 1 (t1)", "t1_to_t2")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: input 1 (t1) has 4 x 4 voxel slices; model 't1_to_t2' needs ...
    """
    plane = [int(s) for k, s in enumerate(shape[:3]) if k != axis]
    need = MIN_FEATURE_SIDE * max(1, int(divisor))
    if min(plane) < need:
        raise NeurosynthError(
            f"{what} has {plane[0]} x {plane[1]} voxel slices; model {model!r} needs at least {need} x {need} "
            f"(its network downsamples each slice {divisor}-fold). Open the whole volume, not a crop"
        )


def _format(value: float) -> str:
    return f"{value:.6g}"


def constant_warnings(volumes: Sequence[Volume], names: Sequence[str]) -> list[str]:
    """Messages for inputs that are constant, or whose foreground is near-constant.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ok = Volume(rng.random((8, 8, 8)), np.eye(4))
    >>> head = rng.random((8, 8, 8)) > 0.5
    >>> flat = Volume(np.where(head, 100.0 + 1e-3 * rng.random((8, 8, 8)), 0.0), np.eye(4))
    >>> constant_warnings([ok, flat], ["t1", "t2"])
    ['input 2 (t2) is near-constant (its foreground varies by 0.00029% of its level); ...']
    """
    messages = []
    for i, (vol, name) in enumerate(zip(volumes, names)):
        data = np.asarray(vol.data)
        if data.size == 0:
            continue
        lo, hi = float(data.min()), float(data.max())
        if lo == hi:
            messages.append(
                f"{_label(i, name)} is constant (every voxel is {_format(lo)}); the output will carry no anatomy"
            )
            continue
        fg = data[data != 0]
        if fg.size < 2:
            continue
        fg = fg.astype(np.float64)
        level = abs(float(fg.mean()))
        spread = float(fg.std())
        if level > 0 and spread < _NEAR_CONSTANT * level and math.isfinite(spread):
            messages.append(
                f"{_label(i, name)} is near-constant (its foreground varies by {100 * spread / level:.2g}% of its "
                "level); the output will carry little anatomy"
            )
    return messages


def warn_constant(volumes: Sequence[Volume], names: Sequence[str]) -> list[str]:
    """:func:`constant_warnings`, each also issued as a :class:`NeurosynthWarning`."""
    messages = constant_warnings(volumes, names)
    for message in messages:
        warnings.warn(message, NeurosynthWarning, stacklevel=3)
    return messages
