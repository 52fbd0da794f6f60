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
- :class:`QuantileMap` and :class:`HistogramMatching`: the *unpaired* baselines,
  fitted on source voxels of some subjects and target voxels of others (no voxel
  correspondence), which an unpaired model (``t1_to_t2_unpaired``) must beat.
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

__all__ = [
    "HistogramMatching",
    "IntensityLUT",
    "LUTSummary",
    "QuantileMap",
    "baseline_input_index",
    "input_standardised",
]


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


# --------------------------------------------------------------------------- unpaired baselines

#: Quantile levels of the unpaired maps: 1001 (every 0.1 %), fine enough that the map's own
#: steps sit far below the phantom's noise.
_LEVELS = np.linspace(0.0, 1.0, 1001)


def _voxels(volumes: Iterable[ArrayLike], masks: Iterable[ArrayLike | None] | None) -> NDArray[np.float64]:
    vols = [np.asarray(v, np.float64) for v in volumes]
    ms = list(masks) if masks is not None else [None] * len(vols)
    if not vols or len(ms) != len(vols):
        raise NeurosynthError("the unpaired baselines need at least one volume (and one mask per volume)")
    out = np.concatenate([(v if m is None else v[np.asarray(m, bool)]).ravel() for v, m in zip(vols, ms)])
    if out.size == 0:
        raise NeurosynthError("the unpaired baselines got no voxels to fit on (empty masks?)")
    return out


class QuantileMap:
    """Unpaired intensity mapping: a source voxel's rank among source voxels -> that target quantile.

    Fitted on two *unpaired* sets (source voxels of some subjects, target voxels
    of others; no voxel correspondence), this is what an unpaired model must
    beat without learning anything spatial: ``y = Q_t(F_s(x))`` for an increasing
    map (histogram matching, :class:`HistogramMatching`), ``y = Q_t(1 - F_s(x))``
    for a decreasing one, with ``F_s`` the source's empirical distribution
    function and ``Q_t`` the target's quantile function (both on 1001 levels,
    linear in between). The data cannot tell the polarity (any monotone map of
    a distribution onto another exists both ways), so it is a parameter: given,
    or chosen on validation data with :meth:`choose_polarity`.

    Parameters
    ----------
    polarity : {"decreasing", "increasing"}
        Whether bright source maps to dark target (T1 -> T2 in the brain) or to bright.

    Examples
    --------
    A known decreasing map is recovered from two unpaired samples:

    >>> rng = np.random.default_rng(0)
    >>> t1_a, t1_b = rng.random(20000), rng.random(20000)        # two different "subjects"
    >>> qm = QuantileMap("decreasing").fit([t1_a], [np.exp(-2 * t1_b)])
    >>> x = np.array([0.1, 0.5, 0.9])
    >>> np.round(qm.predict(x), 2), np.round(np.exp(-2 * x), 2)
    (array([0.82, 0.37, 0.17], dtype=float32), array([0.82, 0.37, 0.17]))
    """

    def __init__(self, polarity: str = "decreasing") -> None:
        if polarity not in ("decreasing", "increasing"):
            raise NeurosynthError(f"polarity must be 'decreasing' or 'increasing', not {polarity!r}")
        self.polarity = polarity
        self.source_quantiles: NDArray[np.float64] | None = None
        self.target_quantiles: NDArray[np.float64] | None = None

    def fit(
        self,
        sources: Iterable[ArrayLike],
        targets: Iterable[ArrayLike],
        source_masks: Iterable[ArrayLike | None] | None = None,
        target_masks: Iterable[ArrayLike | None] | None = None,
    ) -> QuantileMap:
        """Learn both quantile functions from normalised source and target volumes (masked voxels only)."""
        self.source_quantiles = np.quantile(_voxels(sources, source_masks), _LEVELS)
        self.target_quantiles = np.quantile(_voxels(targets, target_masks), _LEVELS)
        return self

    def predict(self, source: ArrayLike) -> NDArray[np.float32]:
        """Map a normalised source volume (any shape) voxel by voxel; values outside the fitted range clamp."""
        if self.source_quantiles is None or self.target_quantiles is None:
            raise NeurosynthError(f"{type(self).__name__}.predict called before fit")
        x = np.asarray(source, np.float64)
        # rank = F_s(x), linear between the fitted quantiles (clamped to [0, 1] outside them)
        rank = np.interp(x, self.source_quantiles, _LEVELS)
        if self.polarity == "decreasing":
            rank = 1.0 - rank
        return np.interp(rank, _LEVELS, self.target_quantiles).astype(np.float32)

    def choose_polarity(self, source: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> dict[str, float]:
        """Set :attr:`polarity` to the one with the lower MAE on a *validation* pair; return both MAEs.

        Examples
        --------
        >>> rng = np.random.default_rng(1)
        >>> qm = QuantileMap("increasing").fit([rng.random(5000)], [rng.random(5000)])
        >>> v = rng.random(1000)
        >>> maes = qm.choose_polarity(v, 1.0 - v)
        >>> qm.polarity, maes["decreasing"] < 0.05 < maes["increasing"]
        ('decreasing', True)
        """
        sel = np.ones(np.shape(target), bool) if mask is None else np.asarray(mask, bool)
        t = np.asarray(target, np.float64)[sel]
        maes = {}
        for polarity in ("decreasing", "increasing"):
            self.polarity = polarity
            maes[polarity] = float(np.abs(self.predict(np.asarray(source)[sel]) - t).mean())
        self.polarity = min(maes, key=lambda k: maes[k])
        return maes


class HistogramMatching(QuantileMap):
    """Histogram matching fitted on unpaired sets: :class:`QuantileMap` with the polarity kept (increasing).

    The classic intensity standardisation (Nyul et al. 2000) generalised to two
    contrasts; it assumes that what is bright on the source is bright on the
    target, which T1 -> T2 violates, so it is the floor an unpaired model has to beat.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> hm = HistogramMatching().fit([rng.random(20000)], [2 * rng.random(20000)])
    >>> np.round(hm.predict(np.array([0.25, 0.75])), 1)
    array([0.5, 1.5], dtype=float32)
    """

    def __init__(self) -> None:
        super().__init__("increasing")
