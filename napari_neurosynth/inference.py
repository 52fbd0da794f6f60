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

Pre-processing is the card's slice plan (:class:`~napari_neurosynth.slicing.SlicePlan`),
the one that training, Grad-CAM and the reference loop use too: each input is
normalised by its :func:`~napari_neurosynth.slicing.input_scale`; the slicing axis is
:func:`~napari_neurosynth.preprocessing.slice_axis` of the first input's affine;
a 2.5-D model gets, per input in card order, slices ``s - context .. s + context``
with the edge slice repeated at the volume's ends; slices are zero-padded at the
bottom/right to a multiple of ``network.size_divisor`` and cropped back.

:func:`reference_synthesize` is the naive loop the engine is tested and
benchmarked against: one full slice at a time, fp32, no batching, written the
way public research code does it (pytorch-CycleGAN-and-pix2pix's ``test.py``).

Examples
--------
With a shipped bundle: ``synthesize("t1_to_t2", make_phantom(resolution=3.0)["t1"])``.
Any :class:`~napari_neurosynth.bundle.Model` works; here a tiny random 2.5-D network:

>>> import numpy as np, torch
>>> from pathlib import Path
>>> from napari_neurosynth.bundle import Model
>>> _ = torch.manual_seed(0)
>>> card = {"name": "tiny", "inputs": ["t1"], "output": "t2", "slicing": {"plane": "axial", "context": 1}}
>>> model = Model(card, torch.nn.Conv2d(3, 1, 3, padding=1), Path("."), "tiny")
>>> t1 = np.zeros((24, 24, 5), np.float32); t1[4:20, 4:20] = 100.0
>>> seen = []
>>> out = synthesize(model, t1, device="cpu", progress=seen.append)
>>> out.shape, out.dtype, seen[0], seen[-1]
((24, 24, 5), dtype('float32'), 0.0, 1.0)
>>> bool(np.abs(synthesize(model, t1, device="cpu", crop=False) - reference_synthesize(model, t1)).max() < 1e-5)
True
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.typing import NDArray

from .checks import check_mcsr_order, check_slice_extent, warn_constant
from .errors import CancelledError, NeurosynthError, NeurosynthWarning
from .io import Volume, check_finite, resample_to, same_grid
from .slicing import (
    CROP_MARGIN,
    CROP_QUANTUM,
    ModelLike,
    ModelRef,
    SlicePlan,
    input_scales,
    normalized_stack,
)

__all__ = [
    "CROP_MARGIN",
    "CROP_QUANTUM",
    "PRECISIONS",
    "CancelToken",
    "InferenceInfo",
    "InputVolume",
    "Inputs",
    "ModelRef",
    "ProgressCallback",
    "as_model",
    "prepare_inputs",
    "reference_synthesize",
    "resolve_device",
    "resolve_precision",
    "synthesize",
    "synthesize_volume",
]

#: Accepted spellings of ``precision`` -> torch dtype (``None`` = full fp32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
#: Largest batch tried on CPU: larger batches ran no faster on 2 cores and cost memory
#: (measured with the t1_to_t2 ResNet, see docs/performance.md).
CPU_MAX_BATCH = 4
#: Largest batch tried on a GPU (a BraTS volume's 155 axial slices fit in two batches).
GPU_MAX_BATCH = 128

#: Receives the fraction done, 0.0 first, increasing, 1.0 last.
ProgressCallback: TypeAlias = Callable[[float], object]
#: Checked before every batch: an Event that is set, or a callable returning True, cancels.
CancelToken: TypeAlias = threading.Event | Callable[[], bool] | None
#: One input: a Volume, or an array / tensor taken as on the first input's grid.
InputVolume: TypeAlias = Volume | NDArray[np.generic] | torch.Tensor
#: What :func:`synthesize` takes: one input, or a list of them in card order.
Inputs: TypeAlias = InputVolume | Sequence[InputVolume]


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

    def as_dict(self) -> dict[str, object]:
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
            raise NeurosynthError(
                "CUDA was requested but no CUDA GPU is usable here (or torch was built "
                "without CUDA); use --device cpu or auto"
            )
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


def _cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    is_set = getattr(cancel, "is_set", None)  # any Event-like object
    return bool(is_set() if callable(is_set) else cancel())


# --------------------------------------------------------------------------- inputs


def as_model(model: ModelRef) -> ModelLike:
    """``model`` as a :class:`~napari_neurosynth.bundle.Model`: loads a bundle name or folder.

    Shared by the engine and :mod:`napari_neurosynth.explain`, which must see the
    same network the engine runs.

    Examples
    --------
    >>> as_model(42)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: model must be a Model, a bundle name or a bundle folder, not int
    """
    from .bundle import Model, load_model

    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, (Model, ModelLike)) or (hasattr(model, "card") and hasattr(model, "network")):
        return model
    raise NeurosynthError(f"model must be a Model, a bundle name or a bundle folder, not {type(model).__name__}")


def _label(i: int, modality: str) -> str:
    return f"input {i + 1} ({modality})"


def prepare_inputs(model: ModelLike, inputs: Inputs, resample: bool = False) -> tuple[list[Volume], list[int]]:
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

    Examples
    --------
    >>> from pathlib import Path
    >>> from napari_neurosynth.bundle import Model
    >>> card = {"name": "fuse", "inputs": ["t1", "t2"], "output": "flair", "slicing": {"plane": "axial"}}
    >>> model = Model(card, torch.nn.Identity(), Path("."), "fuse")
    >>> vols, resampled = prepare_inputs(model, [np.ones((4, 4, 4)), np.ones((4, 4, 4))])
    >>> [v.shape for v in vols], resampled
    ([(4, 4, 4), (4, 4, 4)], [])
    >>> prepare_inputs(model, [np.ones((4, 4, 4))])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: model 'fuse' takes 2 input(s) (t1, t2, in that order) but 1 were given
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
            hint = (
                "take one volume (time point / channel) first"
                if data.ndim == 4
                else "give the whole 3-D volume, not a single slice"
                if data.ndim == 2
                else "give a 3-D volume"
            )
            raise NeurosynthError(
                f"{_label(i, name)} is {data.ndim}-D with shape {tuple(data.shape)}; "
                f"synthesis needs a 3-D volume: {hint}"
            )
        if min(data.shape) < 1:
            raise NeurosynthError(f"{_label(i, name)} has an empty shape {tuple(data.shape)}")
        if data.dtype == bool:
            raise NeurosynthError(
                f"{_label(i, name)} is a boolean mask, not an image; give the {name} scan's intensities"
            )
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise NeurosynthError(f"{_label(i, name)} has voxel type {data.dtype}; a real-valued image is needed")
        check_finite(vol, _label(i, name))
        volumes.append(vol)

    # inputs that would run but give a wrong image: swapped MCSR order; constant volumes (a warning)
    check_mcsr_order(card, volumes)
    warn_constant(volumes, names)
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


# --------------------------------------------------------------------------- memory


def _activation_bytes_per_pixel(
    net: torch.nn.Module, channels: int, divisor: int, device: torch.device, autocast: dict
) -> float:
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
    except Exception as exc:
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


@contextlib.contextmanager
def _strict_fp32(device: torch.device, precision: str) -> Iterator[None]:
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


def _run(
    model: ModelRef,
    inputs: Inputs,
    device: str | torch.device,
    progress: ProgressCallback | None,
    cancel: CancelToken,
    batch_size: int | str,
    precision: str | None,
    resample: bool,
    crop: bool,
    memory_budget: float | None,
    channels_last: bool | None,
) -> tuple[np.ndarray, InferenceInfo]:
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    with _strict_fp32(dev, prec):
        return _run_on(
            model, inputs, dev, prec, progress, cancel, batch_size, resample, crop, memory_budget, channels_last
        )


def _run_on(
    model: ModelRef,
    inputs: Inputs,
    dev: torch.device,
    prec: str,
    progress: ProgressCallback | None,
    cancel: CancelToken,
    batch_size: int | str,
    resample: bool,
    crop: bool,
    memory_budget: float | None,
    channels_last: bool | None,
) -> tuple[NDArray[np.float32], InferenceInfo]:
    t_start = time.perf_counter()
    model = as_model(model)
    volumes, resampled = prepare_inputs(model, inputs, resample)
    net0 = model.network
    if getattr(net0, "spatial_dims", 2) == 3:
        scales = input_scales(model.card, volumes)
        return _run_3d(model, volumes, scales, dev, prec, progress, cancel, batch_size, t_start, resampled)

    # The slice plan: axis, normalisation, 2.5-D context, padding, crop boxes, batches.
    plan = SlicePlan.from_model(model, volumes, device=dev)
    axis, divisor = plan.axis, plan.divisor
    # a network may declare a smaller factor than its padding divisor (pix2pix U-Nets reach 1x1 by design)
    extent = int(getattr(net0, "extent_divisor", divisor) or divisor)
    check_slice_extent(volumes[0].shape, axis, extent, _label(0, model.card["inputs"][0]), model.name)
    shape = volumes[0].shape
    n_slices, (H, W) = plan.n_slices, plan.plane_shape
    todo, boxes = plan.crop_boxes(crop)
    sizes = np.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]], 1)
    # Work order: slices grouped by box size so that a batch is one tensor; largest boxes
    # first, so later (smaller) batches reuse freed memory instead of growing the heap.
    order = np.lexsort((todo, -sizes[:, 1], -sizes[:, 0]))
    todo, boxes, sizes = todo[order], boxes[order], sizes[order]
    n_todo = len(todo)

    # A private copy of the network on the device: the caller's Model stays untouched on the CPU.
    net = copy.deepcopy(net0).eval().to(dev)
    # channels_last pays on CPU too (oneDNN's blocked convolutions): ~1.2x on the shipped U-Nets.
    # Not for parameter-free wrappers (an ONNX session wants plain NCHW arrays).
    has_weights = any(True for _ in net.parameters())
    use_cl = (dev.type in ("cpu", "cuda") and has_weights) if channels_last is None else bool(channels_last)
    if use_cl:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    amp_dtype = PRECISIONS[prec]
    autocast: dict[str, Any] = {
        "device_type": dev.type,
        "dtype": amp_dtype or torch.float32,
        "enabled": amp_dtype is not None,
    }

    out = np.zeros(shape, np.float32)
    out_view = torch.from_numpy(out).movedim(axis, 0)  # writes land in ``out``
    out_dev = out_view if dev.type == "cpu" else torch.zeros((n_slices, H, W), device=dev)

    channels = plan.channels
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
    info = InferenceInfo(
        model.name,
        str(dev),
        prec,
        bs,
        n_slices,
        n_todo,
        union,
        resampled_inputs=resampled,
        box_sizes=len({(int(h), int(w)) for h, w in sizes}),
    )

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
            x = plan.batch(todo[done:end], boxes[done:end])
            if use_cl:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                with torch.autocast(**autocast):
                    y = net(x)
            except Exception as exc:
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
            y = plan.crop_output(y, (h, w)).float()
            for j, (s, b) in enumerate(zip(todo[done:end].tolist(), boxes[done:end].tolist())):
                out_dev[s, b[0] : b[1], b[2] : b[3]] = y[j]
            done = end
            report(done / n_todo if done < n_todo else 1.0)
    if dev.type != "cpu":
        out_view.copy_(out_dev.cpu())
    if n_todo == 0:
        report(1.0)
    info.seconds = time.perf_counter() - t_start
    return out, info


def _check_3d_patch(model: ModelLike, roi: Sequence[int], shape: Sequence[int]) -> None:
    """Refuse a window larger than the volume (MONAI would pad it silently) or off the size divisor."""
    from .external.monai_nets import check_patch

    check_patch(roi, shape, int(getattr(model.network, "size_divisor", 1) or 1), f"model {model.name!r}")


def _run_3d(
    model: ModelLike,
    volumes: Sequence[Volume],
    scales: Sequence[float],
    dev: torch.device,
    prec: str,
    progress: ProgressCallback | None,
    cancel: CancelToken,
    batch_size: int | str,
    t_start: float,
    resampled: list[int],
) -> tuple[NDArray[np.float32], InferenceInfo]:
    """Sliding-window inference for 3-D patch models (MONAI), Gaussian-blended windows.

    The card's ``slicing`` gives ``patch_size`` (default 96^3) and ``overlap``
    (default 0.25). Cancellation and progress are checked per window batch.
    """
    from monai.inferers import sliding_window_inference

    slicing = model.card.get("slicing") or {}
    roi = tuple(int(r) for r in slicing.get("patch_size", (96, 96, 96)))
    overlap = float(slicing.get("overlap", 0.25))
    shape = volumes[0].shape
    _check_3d_patch(model, roi, shape)
    net = copy.deepcopy(model.network).eval().to(dev)
    amp_dtype = PRECISIONS[prec]
    autocast: dict[str, Any] = {
        "device_type": dev.type,
        "dtype": amp_dtype or torch.float32,
        "enabled": amp_dtype is not None,
    }
    x = torch.stack([torch.from_numpy(normalized_stack(v.data, 0, s)) for v, s in zip(volumes, scales)])[None].to(dev)
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
            chunk = batch[start : start + state["bs"]]
            try:
                with torch.autocast(**autocast):
                    parts.append(net(chunk).float())
            except Exception as exc:
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
    assert isinstance(y, torch.Tensor)
    out = y[0, 0].float().cpu().numpy()
    if progress is not None:
        progress(1.0)
    info = InferenceInfo(
        model.name,
        str(dev),
        prec,
        state["bs"],
        n_win,
        n_win,
        None,
        state["oom"],
        time.perf_counter() - t_start,
        resampled,
    )
    return np.ascontiguousarray(out, np.float32), info


def synthesize(
    model: ModelRef,
    inputs: Inputs,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    *,
    cancel: CancelToken = None,
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
        NHWC memory layout; default on for networks with weights, on CPU (oneDNN, ~1.2x
        on the shipped batch-norm U-Nets) and CUDA (tensor cores).

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
    A tiny pointwise network (``synthesize("t1_to_t2", t1_volume)`` runs a shipped bundle the same way):

    >>> import threading
    >>> from pathlib import Path
    >>> from napari_neurosynth.bundle import Model
    >>> card = {"name": "x2", "inputs": ["t1"], "output": "t2", "slicing": {"plane": "axial", "context": 0},
    ...         "normalization": {"method": "none"}}
    >>> net = torch.nn.Conv2d(1, 1, 1, bias=False); _ = torch.nn.init.constant_(net.weight, 2.0)
    >>> model = Model(card, net, Path("."), "x2")
    >>> t1 = np.ones((20, 20, 3), np.float32)
    >>> float(synthesize(model, t1, device="cpu", crop=False).max())
    2.0
    >>> stop = threading.Event(); stop.set()
    >>> synthesize(model, t1, device="cpu", cancel=stop)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.CancelledError: synthesis cancelled after 0 of 3 slices
    """
    out, _info = _run(
        model, inputs, device, progress, cancel, batch_size, precision, resample, crop, memory_budget, channels_last
    )
    return out


def synthesize_volume(
    model: ModelRef,
    inputs: Inputs,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> Volume:
    """Like :func:`synthesize` but return a :class:`Volume` on the first input's grid with provenance.

    ``metadata`` holds ``modality`` (the card's output), ``model``, ``card`` (name,
    task, inputs, output, architecture, phantom-only flag), ``inference`` (device,
    precision, batch size, slices computed, out-of-memory retries, seconds) and
    ``source_path`` of the first input when known. Keyword arguments are those of
    :func:`synthesize`.

    Examples
    --------
    >>> from pathlib import Path
    >>> from napari_neurosynth.bundle import Model
    >>> card = {"name": "id", "inputs": ["t1"], "output": "t2", "slicing": {"plane": "axial", "context": 0}}
    >>> model = Model(card, torch.nn.Identity(), Path("."), "id")
    >>> vol = Volume(np.ones((16, 16, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> out = synthesize_volume(model, vol, device="cpu")
    >>> out.spacing, out.metadata["modality"], out.metadata["inference"]["slices_computed"]
    ((2.0, 2.0, 3.0), 't2', 4)
    """
    model = as_model(model)
    unexpected = set(kwargs) - {
        "cancel",
        "batch_size",
        "precision",
        "resample",
        "crop",
        "memory_budget",
        "channels_last",
    }
    if unexpected:
        raise NeurosynthError(f"synthesize_volume got unexpected argument(s): {', '.join(sorted(unexpected))}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NeurosynthWarning)
        out, info = _run(
            model,
            inputs,
            device,
            progress,
            kwargs.pop("cancel", None),
            kwargs.pop("batch_size", "auto"),
            kwargs.pop("precision", "auto"),
            kwargs.pop("resample", False),
            kwargs.pop("crop", True),
            kwargs.pop("memory_budget", None),
            kwargs.pop("channels_last", None),
        )
    # the input warnings travel with the output (CLI and widgets show them) and are re-issued once
    notes = []
    for w in caught:
        if issubclass(w.category, NeurosynthWarning):
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    first = items[0]
    affine = first.affine if isinstance(first, Volume) else np.eye(4)
    card = model.card
    meta = {
        "modality": card["output"],
        "synthesized": True,
        "model": model.name,
        "card": {
            "name": model.name,
            "task": card.get("task"),
            "inputs": list(card["inputs"]),
            "output": card["output"],
            "architecture": (card.get("architecture") or {}).get("name"),
            "version": card.get("version"),
            "phantom_only": bool(getattr(model, "phantom_only", False)),
        },
        "inference": info.as_dict(),
    }
    if notes:
        meta["warnings"] = notes
    if isinstance(first, Volume) and first.metadata.get("source_path"):
        meta["source_path"] = first.metadata["source_path"]
    return Volume(out, np.array(affine, float), meta)


# --------------------------------------------------------------------------- the naive reference


def reference_synthesize(
    model: ModelRef, inputs: Inputs, resample: bool = False, device: str | torch.device = "cpu"
) -> NDArray[np.float32]:
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
    dev = resolve_device(device)
    net = model.network if dev.type == "cpu" else copy.deepcopy(model.network).to(dev)
    net.eval()
    # The plan stays on the host and each slice is uploaded on its own, as a data loader would.
    plan = SlicePlan.from_model(model, volumes, device="cpu")
    n, (H, W) = plan.n_slices, plan.plane_shape
    out = np.zeros((n, H, W), np.float32)
    for s in range(n):
        real = plan.batch([s]).to(dev)  # one slice: normalised, with its 2.5-D context, padded
        with torch.no_grad():
            fake = net(real)
        out[s] = plan.crop_output(fake)[0].cpu().numpy()
    return plan.to_grid(out)
