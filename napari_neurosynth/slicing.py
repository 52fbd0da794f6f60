"""The slice plan: how a 2-D or 2.5-D slice model sees a volume.

One place decides what tensors a slice network is fed, and everything that runs
a slice network calls it: the inference engine (:func:`~napari_neurosynth.synthesize`),
the naive reference loop (:func:`~napari_neurosynth.inference.reference_synthesize`),
Grad-CAM (:func:`~napari_neurosynth.explain.gradcam`), the uncertainty map (through
the engine), training-time prediction and the training sampler. So a CAM explains
exactly the forward pass that produced the synthesized image, and a model is
evaluated on the tensors it was trained on.

The rules, from the model card:

* **Slicing axis**: :func:`~napari_neurosynth.preprocessing.slice_axis` of the
  first input's affine for the card's ``slicing.plane`` (:func:`slicing_axis`).
* **Normalisation**: each input is multiplied by ``1 / scale``, the scale being
  :func:`~napari_neurosynth.preprocessing.intensity_scale` under the card's
  ``normalization`` (:func:`input_scale`, :func:`normalize`). The engine applies it
  to each gathered batch rather than to a copy of the volume; the result is the same.
* **2.5-D context**: per input in card order, slices ``s - c .. s + c`` with the
  edge slice repeated at the volume's ends (:func:`context_indices`); channel
  ``g * (2c + 1) + (c + o)`` is input ``g`` at offset ``o``.
* **Padding**: zeros at the bottom/right up to a multiple of the network's
  ``size_divisor`` (:func:`padded_size`); outputs are cropped back.
* **Crop boxes**: optionally only the slices that hold head, each cropped to its
  head's bounding box plus a margin, grown to a few batchable sizes (:func:`crop_boxes`).
* **Batches**: ``(B, C, H, W)`` float32 (:func:`stack_batch`, :meth:`SlicePlan.batch`).

:class:`SlicePlan` bundles these for one set of input volumes; :func:`stack_batch`
and :func:`context_indices` are the building blocks for code that holds already
normalised ``(slices, H, W)`` stacks (training).

Examples
--------
>>> import numpy as np
>>> stack = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
>>> stack_batch([stack], [0], context=1).shape   # slice 0 with its neighbours -1 (repeated 0) and 1
(1, 3, 2, 2)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar, overload, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from .errors import NeurosynthError
from .preprocessing import foreground_mask, intensity_scale, slice_axis

if TYPE_CHECKING:
    from .bundle import Card
    from .io import Volume

__all__ = [
    "CROP_MARGIN",
    "CROP_QUANTUM",
    "Box",
    "ModelLike",
    "ModelRef",
    "SlicePlan",
    "context_indices",
    "crop_boxes",
    "input_scale",
    "input_scales",
    "normalize",
    "normalized_stack",
    "padded_size",
    "size_divisor",
    "slicing_axis",
    "stack_batch",
]

#: Extra voxels kept around each slice's head bounding box when cropping (in-plane).
CROP_MARGIN = 16
#: Crop boxes are grown to multiples of this (and of the network's size divisor), so the
#: slices of a volume fall into a few box sizes that batch together.
CROP_QUANTUM = 16

#: An in-plane box ``(y0, y1, x0, x1)`` on a slice (half-open, slicing axis removed).
Box: TypeAlias = tuple[int, int, int, int]
#: Something :func:`stack_batch` can stack: a numpy array or a torch tensor.
ArrayT = TypeVar("ArrayT", NDArray[np.float32], torch.Tensor)
#: Slice indices: a sequence of ints, an integer array or an integer tensor.
Indices: TypeAlias = Sequence[int] | NDArray[np.integer] | torch.Tensor


@runtime_checkable
class ModelLike(Protocol):
    """What the engine needs of a model: a card, a network and a name (a :class:`~napari_neurosynth.bundle.Model`)."""

    network: torch.nn.Module

    @property
    def card(self) -> Card: ...

    @property
    def name(self) -> str: ...


#: A model, or the name / folder of a bundle to load.
ModelRef: TypeAlias = ModelLike | str | os.PathLike[str]


# --------------------------------------------------------------------------- card rules


def slicing_axis(card: Mapping[str, object], affine: NDArray[np.floating]) -> int:
    """The array axis that steps through the card's slicing plane, for a volume with ``affine``.

    Examples
    --------
    >>> slicing_axis({"slicing": {"plane": "axial"}}, np.eye(4))
    2
    >>> slicing_axis({"slicing": {"plane": "coronal"}}, np.eye(4))
    1
    """
    slicing = card.get("slicing") or {}
    plane = str(slicing.get("plane", "axial")) if isinstance(slicing, Mapping) else "axial"
    return slice_axis(affine, plane)


def _neighbours_each_side(card: Mapping[str, object]) -> int:
    slicing = card.get("slicing") or {}
    n = slicing.get("context", 0) if isinstance(slicing, Mapping) else 0
    return int(n or 0)


def size_divisor(network: torch.nn.Module | None) -> int:
    """The network's ``size_divisor`` (slice sides must be multiples of it); 1 when it has none.

    Examples
    --------
    >>> size_divisor(torch.nn.Conv2d(1, 1, 3))
    1
    """
    return int(getattr(network, "size_divisor", 1) or 1)


def input_scale(data: NDArray[np.generic], normalization: Mapping[str, object] | None) -> float:
    """The divisor that maps ``data`` to normalised units under a card's ``normalization``.

    The one call of :func:`~napari_neurosynth.preprocessing.intensity_scale` behind every
    slice model's input: change normalisation there and synthesis, Grad-CAM and training follow.

    Examples
    --------
    >>> x = np.zeros((4, 4, 4), np.float32); x[1:3, 1:3, 1:3] = 200.0
    >>> input_scale(x, {"method": "percentile", "percentile": 99.5})
    200.0
    >>> input_scale(x, {"method": "none"})
    1.0
    """
    return intensity_scale(np.asarray(data), dict(normalization) if normalization else None)


def input_scales(card: Mapping[str, object], volumes: Sequence[Volume]) -> list[float]:
    """Each input's :func:`input_scale` under the card's normalisation; errors name the input.

    Examples
    --------
    >>> from napari_neurosynth.io import Volume
    >>> x = np.zeros((4, 4, 4), np.float32); x[1:3, 1:3, 1:3] = 50.0
    >>> input_scales({"inputs": ["t1"]}, [Volume(x, np.eye(4))])
    [50.0]
    """
    spec = card.get("normalization")
    names = list(card.get("inputs") or [])  # type: ignore[call-overload]
    out = []
    for i, vol in enumerate(volumes):
        try:
            out.append(input_scale(vol.data, spec if isinstance(spec, Mapping) else None))
        except NeurosynthError as exc:
            name = names[i] if i < len(names) else "?"
            raise NeurosynthError(f"input {i + 1} ({name}): {exc}") from None
    return out


def normalize(x: ArrayT, scale: float) -> ArrayT:
    """``x`` in normalised units: ``x * (1 / scale)`` (numpy arrays and tensors alike).

    Examples
    --------
    >>> normalize(np.array([0.0, 50.0, 100.0], np.float32), 100.0)
    array([0. , 0.5, 1. ], dtype=float32)
    """
    return x * (1.0 / float(scale))


def normalized_stack(data: NDArray[np.generic], axis: int, scale: float) -> NDArray[np.float32]:
    """``data`` as float32 in normalised units with the slicing ``axis`` first.

    Examples
    --------
    >>> normalized_stack(np.full((2, 3, 4), 10.0), axis=2, scale=10.0).shape
    (4, 2, 3)
    """
    return np.ascontiguousarray(normalize(np.moveaxis(_float32(data), axis, 0), scale), dtype=np.float32)


def _float32(data: NDArray[np.generic]) -> NDArray[np.float32]:
    """``data`` as native float32, without a copy when it already is."""
    return np.asarray(data, dtype=np.dtype(np.float32).newbyteorder("="))


# --------------------------------------------------------------------------- stacking


def context_indices(slices: Indices, context: int, n_slices: int) -> NDArray[np.intp]:
    """Slice indices ``s - context .. s + context`` of each slice ``s``, edges repeated: ``(B, 2c+1)``.

    The only place the 2.5-D neighbourhood is defined.

    Examples
    --------
    >>> context_indices([0, 2, 4], context=1, n_slices=5)
    array([[0, 0, 1],
           [1, 2, 3],
           [3, 4, 4]])
    >>> context_indices([3], context=0, n_slices=5)
    array([[3]])
    """
    s = np.asarray(slices.cpu() if isinstance(slices, torch.Tensor) else slices, dtype=np.intp).reshape(-1)
    if n_slices < 1:
        raise NeurosynthError("cannot take slices of an empty stack")
    if s.size and (s.min() < 0 or s.max() >= n_slices):
        raise NeurosynthError(f"slice index out of range 0..{n_slices - 1}: {s.min()}..{s.max()}")
    offsets = np.arange(-int(context), int(context) + 1, dtype=np.intp)
    return np.clip(s[:, None] + offsets[None, :], 0, n_slices - 1)


def padded_size(h: int, w: int, divisor: int) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``divisor`` (zero padding at the bottom/right).

    Examples
    --------
    >>> padded_size(30, 33, 4)
    (32, 36)
    """
    d = max(1, int(divisor))
    return h + (-h) % d, w + (-w) % d


def _boxes_of(box: Box | NDArray[np.integer] | Sequence[Box] | None, n: int, h: int, w: int) -> NDArray[np.intp]:
    """``box`` as an ``(n, 4)`` array: one box for all slices, one per slice, or the whole slice."""
    if box is None:
        return np.tile(np.array([0, h, 0, w], np.intp), (n, 1))
    b = np.asarray(box, dtype=np.intp)
    if b.ndim == 1:
        b = np.tile(b, (n, 1))
    if b.shape != (n, 4):
        raise NeurosynthError(f"need one box (y0, y1, x0, x1) or one per slice ({n}), got shape {b.shape}")
    sizes = b[:, [1, 3]] - b[:, [0, 2]]
    if n and ((sizes != sizes[0]).any() or (sizes[0] <= 0).any()):
        raise NeurosynthError("the boxes of one batch must share one (positive) size")
    return b


@overload
def stack_batch(
    stacks: Sequence[NDArray[np.float32]],
    slices: Indices,
    context: int,
    divisor: int = 1,
    box: Box | NDArray[np.integer] | Sequence[Box] | None = None,
    *,
    size: tuple[int, int] | None = None,
    scales: Sequence[float] | None = None,
) -> NDArray[np.float32]: ...


@overload
def stack_batch(
    stacks: Sequence[torch.Tensor],
    slices: Indices,
    context: int,
    divisor: int = 1,
    box: Box | NDArray[np.integer] | Sequence[Box] | None = None,
    *,
    size: tuple[int, int] | None = None,
    scales: Sequence[float] | None = None,
) -> torch.Tensor: ...


def stack_batch(
    stacks: Sequence[NDArray[np.float32]] | Sequence[torch.Tensor],
    slices: Indices,
    context: int,
    divisor: int = 1,
    box: Box | NDArray[np.integer] | Sequence[Box] | None = None,
    *,
    size: tuple[int, int] | None = None,
    scales: Sequence[float] | None = None,
) -> NDArray[np.float32] | torch.Tensor:
    """The network input for ``slices``: ``(B, len(stacks) * (2 * context + 1), H', W')`` float32.

    Parameters
    ----------
    stacks : list of numpy.ndarray or list of torch.Tensor
        One ``(n_slices, H, W)`` stack per input, in card order, slicing axis first,
        normalised (or pass ``scales``). Tensors stay on their device and the batch is
        gathered there (one ``index_select`` per input when the batch shares a box).
    slices : sequence of int
        The slices to stack (any order, repeats allowed).
    context : int
        2.5-D neighbours on each side (:func:`context_indices`, edges repeated).
    divisor : int
        Pad (zeros, bottom/right) to multiples of this: the network's ``size_divisor``.
    box : (y0, y1, x0, x1), or one per slice, optional
        In-plane crop of each slice (all of one size); default the whole slice.
    size : (int, int), optional
        Zero-pad the (cropped) slices to this size first (a training patch), then to ``divisor``.
    scales : sequence of float, optional
        Per-input divisors applied with :func:`normalize` to the gathered voxels only
        (so raw volumes need no normalised copy).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The same kind as ``stacks``; channel ``g * (2c + 1) + (c + o)`` is input ``g`` at offset ``o``.

    Examples
    --------
    >>> a = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 3, 5), np.float32)
    >>> x = stack_batch([a, 10 * a], [0, 3], context=1, divisor=4)
    >>> x.shape
    (2, 6, 4, 8)
    >>> x[:, :, 0, 0].tolist()   # per slice: input 1 at s-1, s, s+1, then input 2
    [[0.0, 0.0, 1.0, 0.0, 0.0, 10.0], [2.0, 3.0, 3.0, 20.0, 30.0, 30.0]]
    >>> stack_batch([torch.from_numpy(a)], [1], context=0, box=(0, 2, 1, 4)).shape
    torch.Size([1, 1, 2, 3])
    """
    if not len(stacks):
        raise NeurosynthError("stack_batch needs at least one input stack")
    n, H, W = (int(v) for v in stacks[0].shape)
    for st in stacks:
        if tuple(st.shape) != (n, H, W):
            raise NeurosynthError(f"input stacks differ in shape: {tuple(st.shape)} vs {(n, H, W)}")
    idx = context_indices(slices, context, n)
    B = idx.shape[0]
    boxes = _boxes_of(box, B, H, W)
    h, w = (int(boxes[0, 1] - boxes[0, 0]), int(boxes[0, 3] - boxes[0, 2])) if B else (H, W)
    th, tw = (h, w) if size is None else (max(h, int(size[0])), max(w, int(size[1])))
    th, tw = padded_size(th, tw, divisor)
    ks = [1.0] * len(stacks) if scales is None else [float(s) for s in scales]
    same_box = bool(B == 0 or (boxes == boxes[0]).all())
    y0, y1, x0, x1 = (int(v) for v in boxes[0]) if B else (0, H, 0, W)
    k = idx.shape[1]

    if isinstance(stacks[0], torch.Tensor):
        tstacks: list[torch.Tensor] = [t for t in stacks if isinstance(t, torch.Tensor)]
        dev = tstacks[0].device
        if same_box:  # one crop for the whole batch: a single on-device gather per input
            tidx = torch.as_tensor(idx.reshape(-1), device=dev)
            x = torch.cat(
                [_scaled(st[:, y0:y1, x0:x1].index_select(0, tidx).view(B, k, h, w), s) for st, s in zip(tstacks, ks)],
                dim=1,
            )
        else:
            tidx2 = torch.as_tensor(idx, device=dev)
            x = torch.stack(
                [
                    torch.cat([_scaled(st[tidx2[i], b[0] : b[1], b[2] : b[3]], s) for st, s in zip(tstacks, ks)])
                    for i, b in enumerate(boxes.tolist())
                ]
            )
        x = x.float()
        if (th, tw) != (h, w):
            x = F.pad(x, (0, tw - w, 0, th - h))
        return x

    astacks = [np.asarray(st) for st in stacks]
    out = np.zeros((B, len(astacks) * k, th, tw), np.float32)
    for g, (st, s) in enumerate(zip(astacks, ks)):
        if same_box:
            out[:, g * k : (g + 1) * k, :h, :w] = _scaled(st[:, y0:y1, x0:x1][idx], s)
        else:
            for i, b in enumerate(boxes.tolist()):
                out[i, g * k : (g + 1) * k, :h, :w] = _scaled(st[idx[i], b[0] : b[1], b[2] : b[3]], s)
    return out


def _scaled(x: ArrayT, scale: float) -> ArrayT:
    return x if scale == 1.0 else normalize(x, scale)


# --------------------------------------------------------------------------- crop boxes


def _grow(lo: int, hi: int, size: int, quantum: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` inside ``[0, size)`` to a multiple of ``quantum``, centred; the whole axis if too big.

    Growing into the image beats zero-padding: the network sees true context.

    Examples
    --------
    >>> _grow(10, 20, 100, 16)
    (7, 23)
    >>> _grow(0, 90, 100, 16), _grow(0, 90, 95, 16)
    ((0, 96), (0, 95))
    """
    need = math.ceil((hi - lo) / quantum) * quantum
    if need >= size:
        return 0, size
    lo = max(0, lo - (need - (hi - lo)) // 2)
    hi = lo + need
    if hi > size:
        lo, hi = size - need, size
    return lo, hi


def crop_boxes(
    first: NDArray[np.generic],
    axis: int,
    fraction: float = 0.1,
    quantum: int = CROP_QUANTUM,
    margin: int = CROP_MARGIN,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Slices that hold head and each one's in-plane box ``(y0, y1, x0, x1)``.

    Each slice gets the bounding box of its own head cross-section plus ``margin``,
    grown to a multiple of ``quantum`` so that slices fall into a few box sizes that
    can be batched. The foreground (:func:`~napari_neurosynth.preprocessing.foreground_mask`
    with ``fraction``) is found on every second voxel (8x less work for the percentile
    over the volume; a head is many voxels wide) and the boxes grown by one voxel to
    cover the skipped ones.

    Examples
    --------
    >>> vol = np.zeros((128, 128, 6), np.float32); vol[40:80, 48:88, 1:4] = 1.0
    >>> todo, boxes = crop_boxes(vol, axis=2)   # slice 4 counts: the head is found on every second slice
    >>> todo.tolist(), boxes[0].tolist()
    ([1, 2, 3, 4], [20, 100, 28, 108])
    """
    view = np.moveaxis(first, axis, 0)
    n, H, W = view.shape
    fg = foreground_mask(view[::2, ::2, ::2], fraction)
    if not fg.any():  # a foreground too thin to survive subsampling: run everything
        return np.arange(n, dtype=np.intp), np.tile(np.array([0, H, 0, W], np.intp), (n, 1))
    rows = np.repeat(fg.any(axis=2), 2, axis=0)[:n]  # (n, ceil(H/2)) per original slice
    cols = np.repeat(fg.any(axis=1), 2, axis=0)[:n]
    # the skipped slices: a slice counts as head when a neighbour does
    rows[1:] |= rows[:-1].copy()
    rows[:-1] |= rows[1:].copy()
    cols[1:] |= cols[:-1].copy()
    cols[:-1] |= cols[1:].copy()
    todo = np.flatnonzero(rows.any(axis=1)).astype(np.intp)
    boxes = np.empty((len(todo), 4), np.intp)
    m = margin + 1  # + the subsampling's resolution
    for k, s in enumerate(todo):
        r, c = np.flatnonzero(rows[s]), np.flatnonzero(cols[s])
        y0, y1 = _grow(max(0, 2 * r[0] - m), min(H, 2 * r[-1] + 1 + m), H, quantum)
        x0, x1 = _grow(max(0, 2 * c[0] - m), min(W, 2 * c[-1] + 1 + m), W, quantum)
        boxes[k] = (y0, y1, x0, x1)
    return todo, boxes


# --------------------------------------------------------------------------- the plan


@dataclass
class SlicePlan:
    """How one set of input volumes is fed to a slice network, from the model card.

    Build it with :meth:`from_model` (or :meth:`from_card`); then :meth:`batch` gives
    network inputs for any slices, :meth:`crop_boxes` the engine's work list,
    :meth:`crop_output` cuts a network output back to the slice and :meth:`to_grid`
    puts a ``(n_slices, H, W)`` result back on the volume's grid.

    Attributes
    ----------
    axis : int
        Array axis of the volumes that steps through slices.
    context : int
        2.5-D neighbours on each side.
    divisor : int
        Slices are zero-padded to multiples of this.
    scales : list of float
        Per-input intensity divisors (normalised = raw / scale).
    stacks : list of torch.Tensor
        The raw input voxels as float32, slicing axis first, on the plan's device
        (views of the volumes on CPU; uploaded once to a GPU). Normalised per batch.
    fraction : float
        The card's foreground fraction (for :meth:`crop_boxes`).
    first : numpy.ndarray or None
        The first input's voxels as given (slicing axis first, a view), for :meth:`crop_boxes`.

    Examples
    --------
    >>> from napari_neurosynth.io import Volume
    >>> card = {"inputs": ["t1"], "slicing": {"plane": "axial", "context": 1}, "normalization": {"method": "none"}}
    >>> vol = Volume(np.random.default_rng(0).random((6, 7, 5)).astype(np.float32), np.eye(4))
    >>> plan = SlicePlan.from_card(card, [vol], divisor=4)
    >>> plan.axis, plan.n_slices, plan.plane_shape, plan.channels
    (2, 5, (6, 7), 3)
    >>> x = plan.batch([0, 4])
    >>> tuple(x.shape)
    (2, 3, 8, 8)
    >>> net = torch.nn.Conv2d(3, 1, 3, padding=1)
    >>> with torch.no_grad():
    ...     y = plan.crop_output(net(x))
    >>> plan.to_grid(np.zeros((5, 6, 7), np.float32)).shape, tuple(y.shape)
    ((6, 7, 5), (2, 6, 7))
    """

    axis: int
    context: int
    divisor: int
    scales: list[float]
    stacks: list[torch.Tensor]
    fraction: float = 0.1
    first: NDArray[np.generic] | None = None

    @classmethod
    def from_card(
        cls,
        card: Mapping[str, object],
        volumes: Sequence[Volume],
        *,
        divisor: int = 1,
        device: torch.device | str = "cpu",
    ) -> SlicePlan:
        """The plan for ``volumes`` (validated, on one grid, card order) under ``card``."""
        if not volumes:
            raise NeurosynthError("the slice plan needs at least one input volume")
        axis = slicing_axis(card, volumes[0].affine)
        scales = input_scales(card, volumes)
        dev = torch.device(device)
        stacks = []
        for v in volumes:
            t = torch.from_numpy(_float32(v.data))
            if dev.type != "cpu":
                t = t.to(dev, non_blocking=True)
            stacks.append(t.movedim(axis, 0))
        norm = card.get("normalization") or {}
        frac = float(norm.get("foreground_fraction", 0.1)) if isinstance(norm, Mapping) else 0.1
        first = np.moveaxis(np.asarray(volumes[0].data), axis, 0)
        return cls(axis, _neighbours_each_side(card), max(1, int(divisor)), scales, stacks, frac, first)

    @classmethod
    def from_model(
        cls, model: ModelLike, volumes: Sequence[Volume], *, device: torch.device | str = "cpu"
    ) -> SlicePlan:
        """:meth:`from_card` with the model's card and its network's ``size_divisor``."""
        return cls.from_card(model.card, volumes, divisor=size_divisor(model.network), device=device)

    @property
    def n_slices(self) -> int:
        """Number of slices along :attr:`axis`."""
        return int(self.stacks[0].shape[0])

    @property
    def plane_shape(self) -> tuple[int, int]:
        """In-plane shape ``(H, W)`` of one slice (before padding)."""
        return int(self.stacks[0].shape[1]), int(self.stacks[0].shape[2])

    @property
    def channels(self) -> int:
        """Network input channels: inputs x (2 * context + 1)."""
        return len(self.stacks) * (2 * self.context + 1)

    @property
    def device(self) -> torch.device:
        return self.stacks[0].device

    def neighbours(self, slices: Indices) -> NDArray[np.intp]:
        """:func:`context_indices` of ``slices`` in this volume: ``(B, 2c+1)``."""
        return context_indices(slices, self.context, self.n_slices)

    def batch(self, slices: Indices, box: Box | NDArray[np.integer] | Sequence[Box] | None = None) -> torch.Tensor:
        """Normalised, context-stacked, padded network input for ``slices``: ``(B, C, H', W')`` on the device."""
        return stack_batch(self.stacks, slices, self.context, self.divisor, box, scales=self.scales)

    def crop_output(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """First output channel of a network output, cut back to ``size`` (default the slice): ``(B, h, w)``."""
        h, w = self.plane_shape if size is None else size
        return y[:, 0, :h, :w]

    def crop_boxes(self, crop: bool = True) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """The slices to run and their boxes: :func:`crop_boxes` with sizes a multiple of the divisor,
        or (``crop=False``) every slice, whole."""
        n, (H, W) = self.n_slices, self.plane_shape
        if not crop:
            return np.arange(n, dtype=np.intp), np.tile(np.array([0, H, 0, W], np.intp), (n, 1))
        quantum = self.divisor * math.ceil(CROP_QUANTUM / self.divisor)
        first = self.first if self.first is not None else self.stacks[0].cpu().numpy()
        return crop_boxes(first, 0, self.fraction, quantum, CROP_MARGIN)

    def to_grid(self, stack: NDArray[np.float32]) -> NDArray[np.float32]:
        """A ``(n_slices, H, W)`` result back on the volumes' grid (slicing axis in place)."""
        return np.ascontiguousarray(np.moveaxis(stack, 0, self.axis))
