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

from typing import Iterable, Sequence

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import distance_transform_edt

from .errors import NeurosynthError
from .preprocessing import intensity_scale


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


def input_standardised(source: np.ndarray, normalization: dict | None = None) -> np.ndarray:
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
    >>> float(input_standardised(x).max())
    1.0
    """
    data = np.asarray(source, np.float32)
    return (data / intensity_scale(data, normalization)).astype(np.float32)


class IntensityLUT:
    """Per-voxel intensity mapping (input intensity(ies) -> mean target intensity).

    Parameters
    ----------
    bins : int, optional
        Bins per input; default 64 for one input, 32 per input for several.
    upper : float
        Upper edge of the binned normalised intensity range (values above are
        clipped into the last bin); normalised images are ~1.0 at their bright end.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> src = rng.random((10, 10, 10)).astype(np.float32)
    >>> lut = IntensityLUT().fit([([src], 1.0 - src)])
    >>> round(float(np.abs(lut.predict([src]) - (1.0 - src)).mean()), 2)
    0.0
    """

    def __init__(self, bins: int | None = None, upper: float = 1.5):
        self.bins = bins
        self.upper = float(upper)
        self.table: np.ndarray | None = None
        self.centres: list[np.ndarray] = []

    def fit(self, pairs: Iterable[tuple[Sequence[np.ndarray], np.ndarray]], mask_list=None) -> "IntensityLUT":
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
        for (inputs, target), m in zip(pairs, masks):
            if len(inputs) != n_in:
                raise NeurosynthError("every IntensityLUT training pair needs the same number of inputs")
            sel = np.ones(np.shape(target), bool) if m is None else np.asarray(m, bool)
            idx = tuple(self._bin(np.asarray(x)[sel], bins) for x in inputs)
            np.add.at(total, idx, np.asarray(target, np.float64)[sel])
            np.add.at(count, idx, 1.0)
        if not count.any():
            raise NeurosynthError("IntensityLUT.fit saw no voxels (empty masks?)")
        filled = count > 0
        table = np.where(filled, total / np.maximum(count, 1), 0.0)
        # empty bins copy the nearest filled bin so prediction is defined everywhere
        _, nearest = distance_transform_edt(~filled, return_indices=True)
        self.table = table[tuple(nearest)]
        width = self.upper / bins
        self.centres = [np.arange(bins) * width + width / 2 for _ in range(n_in)]
        return self

    def _bin(self, x: np.ndarray, bins: int) -> np.ndarray:
        return np.clip((x / self.upper * bins).astype(np.int64), 0, bins - 1)

    def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
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

    def to_dict(self) -> dict:
        """JSON-serialisable form (for a card or a report)."""
        return {"bins": int(self.table.shape[0]), "inputs": int(self.table.ndim), "upper": self.upper}
