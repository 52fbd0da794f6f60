"""Reference predictors that every shipped model card is compared against.

A synthesis model is only worth shipping if it beats what needs no learning
(the input itself) and what needs no spatial context (a per-voxel intensity
mapping). Both baselines work in the same normalised units as the models
(:func:`napari_neurosynth.preprocessing.intensity_scale`), so their metrics sit
beside the model's in the card's held-out table.

- :func:`input_standardised`: the input after intensity standardisation. For a
  model whose inputs include a low-resolution copy of the target contrast
  (``t2_lowres`` for MCSR) that copy is used, resampled onto the grid; this is
  the interpolation baseline of super-resolution. Otherwise the first input.
- :class:`IntensityLUT`: a lookup table from normalised input intensity to the
  mean normalised target intensity, learned from the training subjects. With one
  input it is a 1-D table over 64 bins; with several inputs it is a joint
  (N-D) histogram table over 32 bins per input, so the T1+T2 -> FLAIR and
  T1 + low-res T2 -> T2 baselines use both inputs. Empty bins take the value of
  the nearest filled bin; prediction interpolates linearly between bin centres.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import distance_transform_edt

from .errors import NeurosynthError
from .preprocessing import intensity_scale

__all__ = ["IntensityLUT", "LUTSummary", "baseline_input_index", "input_standardised"]


class LUTSummary(TypedDict):
    """:meth:`IntensityLUT.to_dict`: the table's shape and binning range per input, JSON-ready."""

    bins: int
    inputs: int
    upper: list[float]


def baseline_input_index(inputs: Sequence[str], output: str) -> int:
    """Which input :func:`input_standardised` uses: one of the output's contrast, else the first.

    Examples
    --------
    >>> baseline_input_index(["t1", "t2_lowres"], "t2")
    1
    >>> baseline_input_index(["t1", "t2"], "flair")
    0
    """
    for i, name in enumerate(inputs):
        if name == output or name.split("_")[0] == output:
            return i
    return 0


def input_standardised(source: ArrayLike, normalization: dict[str, Any] | None = None) -> NDArray[np.float32]:
    """The source volume divided by its :func:`intensity_scale` (the model's input units).

    Parameters
    ----------
    source : numpy.ndarray
        The input volume in scanner units (already on the target's grid).
    normalization : dict, optional
        The card's ``normalization`` entry.

    Examples
    --------
    >>> x = np.zeros((8, 8, 8), np.float32); x[2:6, 2:6, 2:6] = 300
    >>> y = input_standardised(x)
    >>> float(y.max()), y.dtype
    (1.0, dtype('float32'))
    """
    data = np.asarray(source, np.float32)
    return (data / intensity_scale(data, normalization)).astype(np.float32)


class IntensityLUT:
    """Per-voxel intensity mapping (input intensity(ies) -> mean target intensity).

    Parameters
    ----------
    bins : int, optional
        Bins per input; default 64 for one input, 32 per input for several.
    upper : float, optional
        Upper edge of the binned normalised intensity range (values above are
        clipped into the last bin). By default, per input, the 99.9th percentile of
        the fitted voxels: under the central-median normalisation brain tissue sits
        near 1 but CSF on T2 reaches 3-4, so no one fixed range suits every contrast.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> src = rng.random((10, 10, 10)).astype(np.float32)
    >>> lut = IntensityLUT().fit([([src], 1.0 - src)])
    >>> round(float(np.abs(lut.predict([src]) - (1.0 - src)).mean()), 2)
    0.0
    >>> lut.to_dict()   # upper: the 99.9th percentile of the fitted input
    {'bins': 64, 'inputs': 1, 'upper': [0.9972]}

    Two inputs give a joint table (32 bins each), here fitted inside a mask on a fixed range:

    >>> other = rng.random((10, 10, 10)).astype(np.float32)
    >>> mask = src > 0.2
    >>> joint = IntensityLUT(upper=1.0).fit([([src, other], src * other)], mask_list=[mask])
    >>> joint.table.shape, joint.predict([src, other]).shape, joint.to_dict()["upper"]
    ((32, 32), (10, 10, 10), [1.0, 1.0])
    >>> joint.predict([src])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: this IntensityLUT takes 2 input(s), got 1
    """

    def __init__(self, bins: int | None = None, upper: float | None = None) -> None:
        self.bins = bins
        self.upper = None if upper is None else float(upper)
        self.uppers: list[float] = []
        self.table: NDArray[np.float64] | None = None
        self.centres: list[NDArray[np.floating[Any]]] = []

    def fit(
        self,
        pairs: Iterable[tuple[Sequence[ArrayLike], ArrayLike]],
        mask_list: Iterable[ArrayLike | None] | None = None,
    ) -> IntensityLUT:
        """Learn the table from ``(inputs, target)`` pairs in normalised units.

        Parameters
        ----------
        pairs : iterable of (list of arrays, array)
            Each item: the normalised input volumes (same grid) and the normalised target.
        mask_list : iterable of arrays, optional
            Per-pair voxel masks to fit on (default: every voxel).
        """
        pairs = list(pairs)
        if not pairs:
            raise NeurosynthError("IntensityLUT.fit needs at least one (inputs, target) pair")
        n_in = len(pairs[0][0])
        bins = self.bins or (64 if n_in == 1 else 32)
        masks = list(mask_list) if mask_list is not None else [None] * len(pairs)
        shape = (bins,) * n_in
        total = np.zeros(shape, np.float64)
        count = np.zeros(shape, np.float64)
        sels = [
            np.ones(np.shape(target), bool) if m is None else np.asarray(m, bool)
            for (_, target), m in zip(pairs, masks)
        ]
        if any(len(inputs) != n_in for inputs, _ in pairs):
            raise NeurosynthError("every IntensityLUT training pair needs the same number of inputs")
        if self.upper is not None:
            self.uppers = [self.upper] * n_in
        else:
            self.uppers = []
            for j in range(n_in):
                vals = np.concatenate([np.asarray(inputs[j])[sel].ravel() for (inputs, _), sel in zip(pairs, sels)])
                hi = float(np.percentile(vals, 99.9)) if vals.size else 1.0
                self.uppers.append(hi if np.isfinite(hi) and hi > 0 else 1.0)
        for (inputs, target), sel in zip(pairs, sels):
            idx = tuple(self._bin(np.asarray(x)[sel], bins, up) for x, up in zip(inputs, self.uppers))
            np.add.at(total, idx, np.asarray(target, np.float64)[sel])
            np.add.at(count, idx, 1.0)
        if not count.any():
            raise NeurosynthError("IntensityLUT.fit saw no voxels (empty masks?)")
        filled = count > 0
        table = np.where(filled, total / np.maximum(count, 1), 0.0)
        # empty bins copy the nearest filled bin so prediction is defined everywhere
        _, nearest = distance_transform_edt(~filled, return_indices=True)
        self.table = table[tuple(nearest)]
        self.centres = [np.arange(bins) * (up / bins) + up / bins / 2 for up in self.uppers]
        return self

    @staticmethod
    def _bin(x: NDArray[Any], bins: int, upper: float) -> NDArray[np.int64]:
        return np.clip((x / upper * bins).astype(np.int64), 0, bins - 1)

    def predict(self, inputs: Sequence[ArrayLike]) -> NDArray[np.float32]:
        """Map normalised input volume(s) through the table (linear between bin centres)."""
        if self.table is None:
            raise NeurosynthError("IntensityLUT.predict called before fit")
        if len(inputs) != self.table.ndim:
            raise NeurosynthError(f"this IntensityLUT takes {self.table.ndim} input(s), got {len(inputs)}")
        shape = np.shape(inputs[0])
        pts = np.stack(
            [np.clip(np.asarray(x, np.float64).ravel(), c[0], c[-1]) for x, c in zip(inputs, self.centres)], -1
        )
        interp = RegularGridInterpolator(tuple(self.centres), self.table, method="linear")
        return interp(pts).reshape(shape).astype(np.float32)

    def to_dict(self) -> LUTSummary:
        """JSON-serialisable form (for a card or a report)."""
        if self.table is None:
            raise NeurosynthError("IntensityLUT.to_dict called before fit")
        return {
            "bins": int(self.table.shape[0]),
            "inputs": int(self.table.ndim),
            "upper": [round(u, 4) for u in self.uppers],
        }
