"""The inference engine: run a model bundle over a whole volume, fast and safely.

:func:`synthesize` turns one or more input volumes into the model's output
contrast on the grid of the first input. Under it:

* **Device**: CUDA, then Apple MPS, then CPU unless one is named.
* **Precision**: bf16 autocast on GPUs that support it (fp16 otherwise), fp32 on
  CPU; ``torch.inference_mode`` throughout.
* **Batching**: slices are fed in batches; the batch size comes from an estimate
  of one slice's activation memory and the free device memory (or the
  ``memory_budget`` you give) and is *halved on out-of-memory* instead of
  failing.
* **Doing less**: with ``crop=True`` (default) the network only sees slices that
  contain head, each cropped to its own head bounding box plus a 16-voxel margin
  (box sizes rounded up to multiples of 16 so that slices batch together); the
  rest of the output is background (0). For instance-normalised generators (all
  of this package's) this is not only faster: the result no longer depends on how
  much empty field of view the scan has, and the network sees slices like the
  head-centred patches it was trained on. ``crop=False`` feeds whole slices and
  reproduces the naive loop exactly (see docs/performance.md for the difference).
* **Cancel and progress**: ``cancel`` (a :class:`threading.Event` or a callable)
  is checked before every batch and raises
  :class:`~napari_neurosynth.errors.CancelledError`; ``progress(fraction)``
  receives increasing values ending exactly at 1.0.

Pre-processing follows the card exactly as training does
(:mod:`napari_neurosynth.data`): each input is divided by
:func:`~napari_neurosynth.preprocessing.intensity_scale`; the slicing axis is
:func:`~napari_neurosynth.preprocessing.slice_axis` of the first input's affine;
a 2.5-D model gets, per input in card order, slices ``s - context .. s + context``
with the edge slice repeated at the volume's ends; slices are zero-padded at the
bottom/right to a multiple of ``network.size_divisor`` and cropped back.

:func:`reference_synthesize` is the naive loop the engine is tested and
benchmarked against: one full slice at a time, fp32, no batching, written the
way public research code does it (pytorch-CycleGAN-and-pix2pix's ``test.py``).

Examples
--------
>>> from napari_neurosynth import make_phantom, synthesize
>>> ph = make_phantom(seed=0, resolution=3.0)                       # doctest: +SKIP
>>> t2 = synthesize("t1_to_t2", ph["t1"], progress=print)           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CancelledError, NeurosynthError
from .io import Volume, check_finite, resample_to, same_grid
from .preprocessing import foreground_mask, intensity_scale, slice_axis

__all__ = [
    "InferenceInfo",
    "PRECISIONS",
    "reference_synthesize",
    "resolve_device",
    "resolve_precision",
    "synthesize",
    "synthesize_volume",
]

#: Accepted spellings of ``precision`` -> torch dtype (``None`` = full fp32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "float32": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
#: Largest batch tried on CPU: larger batches ran no faster on 2 cores and cost memory
#: (measured with the t1_to_t2 ResNet, see docs/performance.md).
CPU_MAX_BATCH = 4
#: Largest batch tried on a GPU (a BraTS volume's 155 axial slices fit in two batches).
GPU_MAX_BATCH = 128
#: Extra voxels kept around each slice's head bounding box when cropping (in-plane).
CROP_MARGIN = 16
#: Crop boxes are grown to multiples of this (and of the network's size divisor), so the
#: slices of a volume fall into a few box sizes that batch together.
CROP_QUANTUM = 16

ProgressCallback = Callable[[float], Any]
CancelToken = "threading.Event | Callable[[], bool] | None"


@dataclass
class InferenceInfo:
    """What a :func:`synthesize_volume` run did (also stored in the output's metadata)."""

    model: str
    device: str
    precision: str
    batch_size: int
    slices_total: int
    slices_computed: int
    crop_box: tuple[int, int, int, int] | None  # union of the per-slice boxes (y0, y1, x0, x1)
    oom_retries: int = 0
    seconds: float = 0.0
    resampled_inputs: list[int] = field(default_factory=list)
    box_sizes: int = 1  # distinct per-slice crop sizes (batches never mix sizes)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- devices and precision


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device``: ``"auto"`` picks CUDA, then MPS, then CPU.

    Raises
    ------
    NeurosynthError
        A named device that this machine or this torch build does not have.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise NeurosynthError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NeurosynthError("CUDA was requested but no CUDA GPU is usable here (or torch was built "
                                  "without CUDA); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NeurosynthError(f"{dev} was requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise NeurosynthError("MPS (Apple GPU) was requested but is not available; use --device cpu or auto")
    elif dev.type != "cpu":
        raise NeurosynthError(f"unsupported device {device!r}; use auto, cpu, cuda or mps")
    return dev


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Canonical precision name (``fp32``, ``bf16`` or ``fp16``) for ``device``.

    ``"auto"`` is bf16 on CUDA GPUs that support it (Ampere and later), fp16 on
    older CUDA GPUs and on MPS, and fp32 on CPU (CPU autocast is slower than fp32
    on most CPUs, and the engine must match the reference loop there).

    Examples
    --------
    >>> resolve_precision("auto", torch.device("cpu"))
    'fp32'
    >>> resolve_precision("bfloat16", torch.device("cpu"))
    'bf16'
    """
    if precision is None or str(precision).lower() == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "mps":
            return "fp16"
        return "fp32"
    key = str(precision).lower()
    if key not in PRECISIONS:
        raise NeurosynthError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    dtype = PRECISIONS[key]
    return "fp32" if dtype is None else ("bf16" if dtype == torch.bfloat16 else "fp16")


def _is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA, MPS or CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


# --------------------------------------------------------------------------- inputs


def as_model(model: Any):
    """``model`` as a :class:`~napari_neurosynth.bundle.Model`: loads a bundle name or folder.

    Shared by the engine and :mod:`napari_neurosynth.explain`, which must see the
    same network the engine runs.
    """
    from .bundle import Model, load_model

    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, Model) or (hasattr(model, "card") and hasattr(model, "network")):
        return model
    raise NeurosynthError(f"model must be a Model, a bundle name or a bundle folder, not {type(model).__name__}")


def _label(i: int, modality: str) -> str:
    return f"input {i + 1} ({modality})"


def prepare_inputs(model: Any, inputs: Any, resample: bool = False) -> tuple[list[Volume], list[int]]:
    """Check ``inputs`` against the model card; return them as Volumes on the first input's grid.

    Arrays are taken as lying on the first input's grid (a bare first array gets
    the identity affine). For MCSR models (card task ``mcsr``) every input after
    the first, the low-resolution target above all, is resampled (linear,
    SimpleITK) onto the first input's grid automatically; for other models a
    grid mismatch is an error unless ``resample=True``.

    Returns
    -------
    volumes, resampled
        The volumes in card order and the indices of those that were resampled.

    Raises
    ------
    NeurosynthError
        Wrong number of inputs, a modality recorded in a volume's metadata that
        differs from the card, a volume that is not 3-D, NaN/Inf voxels, an empty
        volume (no foreground), or mismatched grids.
    """
    card = model.card
    names = list(card["inputs"])
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(items) != len(names):
        raise NeurosynthError(
            f"model {model.name!r} takes {len(names)} input(s) ({', '.join(names)}, in that order) "
            f"but {len(items)} were given"
        )
    first_affine = items[0].affine if isinstance(items[0], Volume) else np.eye(4)
    volumes: list[Volume] = []
    for i, (item, name) in enumerate(zip(items, names)):
        if isinstance(item, Volume):
            vol = item
            declared = str(item.metadata.get("modality") or "").lower()
            # compare contrasts, not variants: a "t2" volume may feed a "t2_lowres" input
            if declared and declared.split("_")[0] != name.lower().split("_")[0]:
                raise NeurosynthError(
                    f"{_label(i, name)} is marked as {declared!r}; model {model.name!r} expects "
                    f"{', '.join(names)} in that order"
                )
        else:
            try:
                arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            except Exception as exc:  # e.g. a ragged list
                raise NeurosynthError(f"{_label(i, name)} is not an image array: {exc}") from None
            vol = Volume(arr, first_affine)
        data = vol.data
        if data.ndim != 3:
            hint = ("take one volume (time point / channel) first" if data.ndim == 4
                    else "give the whole 3-D volume, not a single slice" if data.ndim == 2 else "give a 3-D volume")
            raise NeurosynthError(f"{_label(i, name)} is {data.ndim}-D with shape {tuple(data.shape)}; "
                                  f"synthesis needs a 3-D volume: {hint}")
        if min(data.shape) < 1:
            raise NeurosynthError(f"{_label(i, name)} has an empty shape {tuple(data.shape)}")
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool) or np.iscomplexobj(data):
            raise NeurosynthError(f"{_label(i, name)} has voxel type {data.dtype}; a real-valued image is needed")
        check_finite(vol, _label(i, name))
        volumes.append(vol)

    resampled = []
    ref = volumes[0]
    auto = card.get("task") == "mcsr"
    for i in range(1, len(volumes)):
        vol = volumes[i]
        if same_grid(vol, ref):
            continue
        if not isinstance(items[i], Volume):
            raise NeurosynthError(
                f"{_label(i, names[i])} is a bare array of shape {vol.shape}, which does not fit the first input's "
                f"grid {ref.shape}; pass it as a Volume (with its affine) so it can be resampled"
            )
        if auto or resample:
            volumes[i] = resample_to(vol, ref, "linear")
            resampled.append(i)
        else:
            sp = ", ".join(f"{s:.3g}" for s in vol.spacing)
            rsp = ", ".join(f"{s:.3g}" for s in ref.spacing)
            raise NeurosynthError(
                f"{_label(i, names[i])} is on a different grid (shape {vol.shape}, spacing {sp} mm) than "
                f"{_label(0, names[0])} (shape {ref.shape}, spacing {rsp} mm); register the images, or resample "
                "onto the first input with resample=True (CLI: --resample)"
            )
    return volumes, resampled


def input_scales(model: Any, volumes: Sequence[Volume]) -> list[float]:
    """Each input's intensity divisor under the card's normalisation (errors name the input)."""
    out = []
    for i, vol in enumerate(volumes):
        try:
            out.append(intensity_scale(vol.data, model.card.get("normalization")))
        except NeurosynthError as exc:
            raise NeurosynthError(f"{_label(i, model.card['inputs'][i])}: {exc}") from None
    return out


def _float32(data: np.ndarray) -> np.ndarray:
    """``data`` as native float32, without a copy when it already is."""
    return np.asarray(data, dtype=np.dtype(np.float32).newbyteorder("="))


# --------------------------------------------------------------------------- geometry helpers


def _grow(lo: int, hi: int, size: int, quantum: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` inside ``[0, size)`` to a multiple of ``quantum``, centred; the whole axis if too big.

    Growing into the image beats zero-padding: the network sees true context.
    """
    need = math.ceil((hi - lo) / quantum) * quantum
    if need >= size:
        return 0, size
    lo = max(0, lo - (need - (hi - lo)) // 2)
    hi = lo + need
    if hi > size:
        lo, hi = size - need, size
    return lo, hi


def _crop_plan(first: np.ndarray, axis: int, fraction: float, quantum: int,
               margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices that hold head and each one's in-plane box ``(y0, y1, x0, x1)``.

    Each slice gets the bounding box of its own head cross-section plus ``margin``,
    grown to a multiple of ``quantum`` so that slices fall into a few box sizes that
    can be batched. The foreground is found on every second voxel (8x less work for
    the percentile over the volume; a head is many voxels wide) and the boxes grown
    by one voxel to cover the skipped ones.
    """
    view = np.moveaxis(first, axis, 0)
    n, H, W = view.shape
    fg = foreground_mask(view[::2, ::2, ::2], fraction)
    if not fg.any():  # a foreground too thin to survive subsampling: run everything
        return np.arange(n), np.tile([0, H, 0, W], (n, 1))
    rows = np.repeat(fg.any(axis=2), 2, axis=0)[:n]  # (n, ceil(H/2)) per original slice
    cols = np.repeat(fg.any(axis=1), 2, axis=0)[:n]
    # the skipped slices: a slice counts as head when a neighbour does
    rows[1:] |= rows[:-1].copy()
    rows[:-1] |= rows[1:].copy()
    cols[1:] |= cols[:-1].copy()
    cols[:-1] |= cols[1:].copy()
    todo = np.flatnonzero(rows.any(axis=1))
    boxes = np.empty((len(todo), 4), int)
    m = margin + 1  # + the subsampling's resolution
    for k, s in enumerate(todo):
        r, c = np.flatnonzero(rows[s]), np.flatnonzero(cols[s])
        y0, y1 = _grow(max(0, 2 * r[0] - m), min(H, 2 * r[-1] + 1 + m), H, quantum)
        x0, x1 = _grow(max(0, 2 * c[0] - m), min(W, 2 * c[-1] + 1 + m), W, quantum)
        boxes[k] = (y0, y1, x0, x1)
    return todo, boxes


# --------------------------------------------------------------------------- memory


def _activation_bytes_per_pixel(net: torch.nn.Module, channels: int, divisor: int, device: torch.device,
                                autocast: dict) -> float:
    """Estimate of live activation bytes per input pixel of one slice.

    Runs the network once on a small probe. On CUDA the allocator's peak is
    measured; elsewhere the largest module output is recorded with forward hooks
    and multiplied by 4 (input, output, a residual or skip tensor and the
    convolution workspace are alive together). Activation memory grows linearly
    with the slice area, so the probe scales to any slice size.
    """
    if device.type == "cuda":
        # peak of a 2-slice batch minus a 1-slice batch: the marginal cost of a slice,
        # free of fixed costs such as cuDNN workspaces
        side = max(128, 8 * divisor)
        peaks = []
        for b in (1, 2):
            probe = torch.zeros(b, channels, side, side, device=device)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast(**autocast):
                net(probe)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            del probe
        return max(1.0, peaks[1] - peaks[0], 0.25 * peaks[0]) / side**2
    side = max(32, 8 * divisor)
    probe = torch.zeros(1, channels, side, side, device=device)
    largest = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.autocast(**autocast):
            net(probe)
    finally:
        for h in handles:
            h.remove()
    return max(1.0, 4.0 * largest[0] / side**2)


def _probe(net: torch.nn.Module, channels: int, divisor: int, device: torch.device, autocast: dict) -> float:
    """:func:`_activation_bytes_per_pixel`, or infinity when even the probe runs out of memory."""
    try:
        with torch.inference_mode():
            return _activation_bytes_per_pixel(net, channels, divisor, device, autocast)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
        if not _is_oom(exc):
            raise
        _empty_cache(device)
        return math.inf


def _memory_available(device: torch.device, volume_bytes: int) -> float:
    """Bytes the engine may spend on activations on ``device``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return 0.6 * free
    if device.type == "mps":
        try:
            return 0.5 * max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):
            return 2.0 * 2**30
    import psutil

    # On the host keep the whole run under ~3x the volume: output (1x), the batch and
    # its activations (<= 1x); the inputs are read in place.
    return min(0.25 * psutil.virtual_memory().available, max(volume_bytes, 64 * 2**20))


# --------------------------------------------------------------------------- the engine


def _slice_tensor(volume: np.ndarray, axis: int, device: torch.device) -> torch.Tensor:
    """``volume`` as a torch tensor with the slicing axis first (a view on CPU; uploaded once on GPUs)."""
    t = torch.from_numpy(_float32(volume))
    if device.type != "cpu":
        t = t.to(device, non_blocking=True)
    return t.movedim(axis, 0)


@contextlib.contextmanager
def _strict_fp32(device: torch.device, precision: str):
    """On CUDA, ``fp32`` means IEEE fp32: TF32 convolutions and matmuls (torch's cuDNN
    default, ~1e-3 relative error) are switched off for the call and restored after."""
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run(model: Any, inputs: Any, device: str | torch.device, progress: ProgressCallback | None, cancel: Any,
         batch_size: int | str, precision: str | None, resample: bool, crop: bool, memory_budget: float | None,
         channels_last: bool | None) -> tuple[np.ndarray, InferenceInfo]:
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    with _strict_fp32(dev, prec):
        return _run_on(model, inputs, dev, prec, progress, cancel, batch_size, resample, crop, memory_budget,
                       channels_last)


def _run_on(model: Any, inputs: Any, dev: torch.device, prec: str, progress: ProgressCallback | None, cancel: Any,
            batch_size: int | str, resample: bool, crop: bool, memory_budget: float | None,
            channels_last: bool | None) -> tuple[np.ndarray, InferenceInfo]:
    t_start = time.perf_counter()
    model = as_model(model)
    card = model.card
    volumes, resampled = prepare_inputs(model, inputs, resample)
    scales = input_scales(model, volumes)
    first = volumes[0]
    slicing = card.get("slicing") or {}
    axis = slice_axis(first.affine, slicing.get("plane", "axial"))
    context = int(slicing.get("context", 0))
    net0 = model.network
    divisor = int(getattr(net0, "size_divisor", 1) or 1)
    if getattr(net0, "spatial_dims", 2) == 3:
        return _run_3d(model, volumes, scales, dev, prec, progress, cancel, batch_size, t_start, resampled)

    shape = first.shape
    n_slices = shape[axis]
    H, W = [s for k, s in enumerate(shape) if k != axis]
    if crop:
        frac = float((card.get("normalization") or {}).get("foreground_fraction", 0.1))
        quantum = divisor * math.ceil(CROP_QUANTUM / divisor)
        todo, boxes = _crop_plan(first.data, axis, frac, quantum, CROP_MARGIN)
    else:
        todo, boxes = np.arange(n_slices), np.tile([0, H, 0, W], (n_slices, 1))
    sizes = np.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]], 1)
    # Work order: slices grouped by box size so that a batch is one tensor; largest boxes
    # first, so later (smaller) batches reuse freed memory instead of growing the heap.
    order = np.lexsort((todo, -sizes[:, 1], -sizes[:, 0]))
    todo, boxes, sizes = todo[order], boxes[order], sizes[order]
    n_todo = len(todo)

    # A private copy of the network on the device: the caller's Model stays untouched on the CPU.
    net = copy.deepcopy(net0).eval().to(dev)
    use_cl = (dev.type == "cuda") if channels_last is None else bool(channels_last)
    if use_cl:
        net = net.to(memory_format=torch.channels_last)
    amp_dtype = PRECISIONS[prec]
    autocast = {"device_type": dev.type, "dtype": amp_dtype or torch.float32, "enabled": amp_dtype is not None}

    stacks = [_slice_tensor(v.data, axis, dev) for v in volumes]
    inv_scales = [1.0 / s for s in scales]
    offsets = np.arange(-context, context + 1)
    # (n_todo, 2c+1) neighbour indices, edges repeated as in training (data.context_stack)
    neighbours = torch.as_tensor(np.clip(todo[:, None] + offsets[None, :], 0, n_slices - 1), device=dev)
    out = np.zeros(shape, np.float32)
    out_view = torch.from_numpy(out).movedim(axis, 0)  # writes land in ``out``
    out_dev = out_view if dev.type == "cpu" else torch.zeros((n_slices, H, W), device=dev)

    channels = len(volumes) * (2 * context + 1)
    max_area = int(max(((h + (-h) % divisor) * (w + (-w) % divisor) for h, w in sizes), default=1))
    if batch_size in (None, "auto"):
        per_slice = _probe(net, channels, divisor, dev, autocast) * max_area + 8 * channels * max_area
        budget = memory_budget if memory_budget is not None else _memory_available(dev, out.nbytes)
        cap = CPU_MAX_BATCH if dev.type == "cpu" else GPU_MAX_BATCH
        bs = int(max(1, min(cap, n_todo, budget // per_slice)))
        bs = math.ceil(n_todo / math.ceil(n_todo / bs)) if n_todo else bs  # even batches: 78+77, not 128+27
    else:
        bs = int(batch_size)
        if bs < 1:
            raise NeurosynthError(f"batch_size must be a positive integer or 'auto', not {batch_size!r}")
        if memory_budget is not None:  # explicit size wins, but an explicit budget still caps it
            bs = int(max(1, min(bs, memory_budget // (_probe(net, channels, divisor, dev, autocast) * max_area))))
    union = None
    if crop and n_todo:
        union = (int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max()))
    info = InferenceInfo(model.name, str(dev), prec, bs, n_slices, n_todo, union, resampled_inputs=resampled,
                         box_sizes=len({(int(h), int(w)) for h, w in sizes}))

    def report(fraction: float) -> None:
        if progress is not None:
            progress(float(fraction))

    done = 0
    report(0.0)
    with torch.inference_mode():
        while done < n_todo:
            if _cancelled(cancel):
                raise CancelledError(f"synthesis cancelled after {done} of {n_todo} slices")
            h, w = (int(v) for v in sizes[done])
            end = done + 1
            while end < min(n_todo, done + bs) and sizes[end, 0] == h and sizes[end, 1] == w:
                end += 1
            same_box = bool((boxes[done:end] == boxes[done]).all())
            if same_box:  # one crop for the whole batch: a single gather per input
                y0, y1, x0, x1 = (int(v) for v in boxes[done])
                idx = neighbours[done:end].reshape(-1)
                x = torch.cat([st[:, y0:y1, x0:x1].index_select(0, idx).view(end - done, -1, h, w) * k
                               for st, k in zip(stacks, inv_scales)], dim=1)
            else:
                x = torch.stack([
                    torch.cat([st[neighbours[i], b[0]:b[1], b[2]:b[3]] * k for st, k in zip(stacks, inv_scales)])
                    for i, b in zip(range(done, end), boxes[done:end].tolist())
                ])
            pad_h, pad_w = (-h) % divisor, (-w) % divisor
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
            if use_cl:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                with torch.autocast(**autocast):
                    y = net(x)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not _is_oom(exc):
                    raise
                del x
                _empty_cache(dev)
                if bs == 1:
                    raise NeurosynthError(
                        f"out of memory on {dev} even with one slice per batch; free memory or use --device cpu"
                    ) from None
                bs = max(1, bs // 2)
                info.oom_retries += 1
                info.batch_size = bs
                continue
            y = y[:, 0, :h, :w].float()
            for j, (s, b) in enumerate(zip(todo[done:end].tolist(), boxes[done:end].tolist())):
                out_dev[s, b[0]:b[1], b[2]:b[3]] = y[j]
            done = end
            report(done / n_todo if done < n_todo else 1.0)
    if dev.type != "cpu":
        out_view.copy_(out_dev.cpu())
    if n_todo == 0:
        report(1.0)
    info.seconds = time.perf_counter() - t_start
    return out, info


def _run_3d(model, volumes, scales, dev, prec, progress, cancel, batch_size, t_start, resampled):
    """Sliding-window inference for 3-D patch models (MONAI), Gaussian-blended windows.

    The card's ``slicing`` gives ``patch_size`` (default 96^3) and ``overlap``
    (default 0.25). Cancellation and progress are checked per window batch.
    """
    from monai.inferers import sliding_window_inference

    slicing = model.card.get("slicing") or {}
    roi = tuple(int(r) for r in slicing.get("patch_size", (96, 96, 96)))
    overlap = float(slicing.get("overlap", 0.25))
    shape = volumes[0].shape
    net = copy.deepcopy(model.network).eval().to(dev)
    amp_dtype = PRECISIONS[prec]
    autocast = {"device_type": dev.type, "dtype": amp_dtype or torch.float32, "enabled": amp_dtype is not None}
    x = torch.stack([torch.from_numpy(_float32(v.data)) / s for v, s in zip(volumes, scales)])[None].to(dev)
    # number of windows MONAI will visit, for the progress fraction
    n_win = 1
    for size, r in zip(shape, roi):
        r = min(r, size)
        step = max(1, int(r * (1 - overlap)))
        n_win *= 1 if size <= r else math.ceil((size - r) / step) + 1
    bs = 4 if batch_size in (None, "auto") else int(batch_size)
    state = {"done": 0, "bs": bs, "oom": 0}

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        if _cancelled(cancel):
            raise CancelledError(f"synthesis cancelled after {state['done']} of {n_win} windows")
        parts, start = [], 0
        while start < batch.shape[0]:
            chunk = batch[start:start + state["bs"]]
            try:
                with torch.autocast(**autocast):
                    parts.append(net(chunk).float())
            except Exception as exc:  # noqa: BLE001
                if not _is_oom(exc) or state["bs"] == 1:
                    raise
                _empty_cache(dev)
                state["bs"] //= 2
                state["oom"] += 1
                continue
            start += chunk.shape[0]
        state["done"] += batch.shape[0]
        if progress is not None:
            progress(min(state["done"] / n_win, 0.999))
        return torch.cat(parts)

    if progress is not None:
        progress(0.0)
    with torch.inference_mode():
        y = sliding_window_inference(x, roi, bs, predictor, overlap=overlap, mode="gaussian")
    out = y[0, 0].float().cpu().numpy()
    if progress is not None:
        progress(1.0)
    info = InferenceInfo(model.name, str(dev), prec, state["bs"], n_win, n_win, None, state["oom"],
                         time.perf_counter() - t_start, resampled)
    return np.ascontiguousarray(out, np.float32), info


def synthesize(
    model: Any,
    inputs: Any,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    *,
    cancel: Any = None,
    batch_size: int | str = "auto",
    precision: str | None = "auto",
    resample: bool = False,
    crop: bool = True,
    memory_budget: float | None = None,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Synthesize the model's output contrast from ``inputs``, on the first input's grid.

    Parameters
    ----------
    model : Model, str or path
        A loaded :class:`~napari_neurosynth.bundle.Model`, a bundle name or a bundle folder.
    inputs : Volume, ndarray, or list of them
        One per card input, in card order. Arrays are taken as on the first input's grid.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
        ``"auto"`` takes CUDA, then MPS, then CPU.
    progress : callable, optional
        Called with the fraction done (0.0 first, increasing, 1.0 last).
    cancel : threading.Event or callable, optional
        Checked before every batch; when set (or returning True) the run stops and
        raises :class:`~napari_neurosynth.errors.CancelledError`.
    batch_size : int or "auto"
        Slices per batch. ``"auto"`` estimates one slice's activation memory and fills
        60% of the free GPU memory (at most 128 slices), or up to 4 slices on CPU.
        Either way the batch is halved on out-of-memory and the batch retried.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast dtype. ``"auto"``: bf16 (or fp16) on GPUs, fp32 on CPU.
    resample : bool
        Resample inputs on other grids onto the first input's grid (linear) instead of
        refusing them. MCSR models always resample their low-resolution input.
    crop : bool
        Run only on slices that contain head, each cropped to its head's bounding box
        plus a 16-voxel margin; elsewhere the output is 0. Faster, and independent of
        the empty field of view around the head. ``False`` runs every full slice,
        exactly like :func:`reference_synthesize`.
    memory_budget : float, optional
        Bytes the batch's activations may use; overrides the free-memory estimate (for
        shared GPUs, and to test the out-of-memory path).
    channels_last : bool, optional
        NHWC memory layout; default on CUDA (tensor cores), off on CPU (no measured gain
        on the shipped models).

    Returns
    -------
    numpy.ndarray
        float32, shape of the first input, in the target's normalised units.

    Raises
    ------
    NeurosynthError
        Bad inputs (count, modality, dimensionality, NaN/Inf, empty, mismatched grids),
        an unavailable device, or out-of-memory with a batch of one slice.
    CancelledError
        ``cancel`` was set.

    Examples
    --------
    >>> import threading
    >>> stop = threading.Event()
    >>> out = synthesize("t1_to_t2", t1_volume, device="auto", progress=print, cancel=stop)  # doctest: +SKIP
    """
    out, _info = _run(model, inputs, device, progress, cancel, batch_size, precision, resample, crop,
                      memory_budget, channels_last)
    return out


def synthesize_volume(model: Any, inputs: Any, device: str | torch.device = "auto",
                      progress: ProgressCallback | None = None, **kwargs: Any) -> Volume:
    """Like :func:`synthesize` but return a :class:`Volume` on the first input's grid with provenance.

    ``metadata`` holds ``modality`` (the card's output), ``model``, ``card`` (name,
    task, inputs, output, architecture, phantom-only flag), ``inference`` (device,
    precision, batch size, slices computed, out-of-memory retries, seconds) and
    ``source_path`` of the first input when known. Keyword arguments are those of
    :func:`synthesize`.
    """
    model = as_model(model)
    out, info = _run(model, inputs, device, progress, kwargs.pop("cancel", None), kwargs.pop("batch_size", "auto"),
                     kwargs.pop("precision", "auto"), kwargs.pop("resample", False), kwargs.pop("crop", True),
                     kwargs.pop("memory_budget", None), kwargs.pop("channels_last", None))
    if kwargs:
        raise TypeError(f"unexpected argument(s): {', '.join(kwargs)}")
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    first = items[0]
    affine = first.affine if isinstance(first, Volume) else np.eye(4)
    card = model.card
    meta = {
        "modality": card["output"],
        "synthesized": True,
        "model": model.name,
        "card": {
            "name": model.name, "task": card.get("task"), "inputs": list(card["inputs"]),
            "output": card["output"], "architecture": (card.get("architecture") or {}).get("name"),
            "version": card.get("version"), "phantom_only": bool(getattr(model, "phantom_only", False)),
        },
        "inference": info.as_dict(),
    }
    if isinstance(first, Volume) and first.metadata.get("source_path"):
        meta["source_path"] = first.metadata["source_path"]
    return Volume(out, np.array(affine, float), meta)


# --------------------------------------------------------------------------- the naive reference


def reference_synthesize(model: Any, inputs: Any, resample: bool = False,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """The naive baseline: one full slice at a time, fp32, on ``device`` (CPU by default).

    Written the way public research code runs a trained generator over a volume
    (pytorch-CycleGAN-and-pix2pix's ``test.py``: ``model.eval()``, then for every
    slice build a one-slice tensor, ``with torch.no_grad(): fake = netG(real)``,
    copy the result back). It shares the card's pre-processing with the engine
    (validation, normalisation, slicing axis, 2.5-D context with repeated edge
    slices, zero padding to ``size_divisor`` at the bottom/right) so the two can
    be compared voxel for voxel; it is the reference :func:`synthesize` is tested
    and benchmarked against.
    """
    model = as_model(model)
    volumes, _ = prepare_inputs(model, inputs, resample)
    scales = input_scales(model, volumes)
    slicing = model.card.get("slicing") or {}
    axis = slice_axis(volumes[0].affine, slicing.get("plane", "axial"))
    context = int(slicing.get("context", 0))
    dev = resolve_device(device)
    net = model.network if dev.type == "cpu" else copy.deepcopy(model.network).to(dev)
    net.eval()
    divisor = int(getattr(net, "size_divisor", 1) or 1)
    normalised = [np.moveaxis(v.data.astype(np.float32) / s, axis, 0) for v, s in zip(volumes, scales)]
    n, H, W = normalised[0].shape
    out = np.zeros((n, H, W), np.float32)
    for s in range(n):
        channels = []
        for vol in normalised:
            for off in range(-context, context + 1):
                channels.append(vol[min(max(s + off, 0), n - 1)])
        real = torch.from_numpy(np.stack(channels)[None].astype(np.float32)).to(dev)
        real = F.pad(real, (0, (-W) % divisor, 0, (-H) % divisor))
        with torch.no_grad():
            fake = net(real)
        out[s] = fake[0, 0, :H, :W].cpu().numpy()
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))
