"""Time the inference engine against the naive per-slice loop, in one process.

The input is BraTS-sized (240 x 240 x 155 voxels of 1 mm): the 1 mm phantom
(197 x 233 x 189, MNI152 2009a grid) centre-padded in-plane and centre-cropped
axially, as BraTS pads/crops its SRI24-registered volumes. The model is the shipped
``t1_to_t2`` bundle unless ``--model`` names another.

For each device (CPU, and CUDA when present) it runs, interleaved so that a
machine shared with other jobs slows all alike:

* ``naive``: :func:`napari_neurosynth.inference.reference_synthesize`, one full
  slice at a time in fp32, as pytorch-CycleGAN-and-pix2pix's ``test.py`` does;
* ``engine``: :func:`napari_neurosynth.inference.synthesize` with its defaults
  (batched, cropped to the head, ``inference_mode``, AMP on GPU);
* ``engine-full``: the engine with ``crop=False`` (whole slices, like the naive loop),
  which separates what batching buys from what cropping buys.

and prints seconds per volume (best of ``--repeats``), slices per second, the
speed-up over the naive loop, peak host memory (RSS above the level before the
call, sampled every 2 ms; and numpy's peak from ``tracemalloc``) and peak GPU
memory (``torch.cuda.max_memory_allocated``), plus how far the engine's output is
from the naive loop's and PSNR of both against the acquired T2.

Run::

    python benchmarks/bench_inference.py                  # CPU, and CUDA if present
    python benchmarks/bench_inference.py --device cpu --repeats 3 --json cpu.json
    python benchmarks/bench_inference.py --quick --device cpu   # 2 mm, one repeat: a before/after check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
import tracemalloc

import numpy as np
import psutil
import torch

from napari_neurosynth.bundle import Model, load_model
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.inference import reference_synthesize, synthesize, synthesize_volume
from napari_neurosynth.io import Volume
from napari_neurosynth.metrics import psnr
from napari_neurosynth.slicing import input_scale

BRATS_SHAPE = (240, 240, 155)


def brats_shape(resolution: float = 1.0) -> tuple[int, int, int]:
    """The BraTS field of view (240 x 240 x 155 mm) on a ``resolution`` mm grid."""
    a, b, c = (round(n / resolution) for n in BRATS_SHAPE)
    return a, b, c


def pad_crop(vol: Volume, shape: tuple[int, int, int]) -> Volume:
    """Centre-pad with zeros / centre-crop ``vol`` to ``shape``, keeping its world position."""
    data = np.asarray(vol.data)
    offset = np.zeros(3)
    for ax, target in enumerate(shape):
        size = data.shape[ax]
        if size < target:
            before = (target - size) // 2
            widths = [(0, 0)] * 3
            widths[ax] = (before, target - size - before)
            data = np.pad(data, widths)
            offset[ax] = -before
        elif size > target:
            start = (size - target) // 2
            data = np.take(data, np.arange(start, start + target), axis=ax)
            offset[ax] = start
    affine = vol.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ offset
    return Volume(np.ascontiguousarray(data), affine, dict(vol.metadata))


def brats_sized_subject(seed: int = 0, skull_stripped: bool = True, resolution: float = 1.0) -> dict[str, Volume]:
    """T1, T2 and brain mask of a 1 mm phantom on a 240 x 240 x 155 grid.

    BraTS distributes skull-stripped volumes, so by default the phantom is
    skull-stripped as BraTS's are (``make_phantom(skull_strip=True)``: zero outside the
    brain); ``skull_stripped=False`` keeps the whole head (scalp and skull), which
    leaves the engine's cropping less to skip.
    """
    from napari_neurosynth import make_phantom

    ph = make_phantom(seed=seed, resolution=resolution, skull_strip=skull_stripped)
    shape = brats_shape(resolution)
    return {k: pad_crop(ph[k], shape) for k in ("t1", "t2", "brain_mask")}


def head_psnr(model: Model, seed: int, resolution: float, device: str) -> dict[str, float]:
    """The engine's brain PSNR against the acquired T2 on the skull-stripped and the whole-head
    phantom of one subject: a model that holds up gives nearly the same figure for both."""
    spec = model.card.get("normalization")
    out = {}
    for stripped in (True, False):
        s = brats_sized_subject(seed, skull_stripped=stripped, resolution=resolution)
        brain = s["brain_mask"].data > 0
        syn = synthesize(model, s["t1"], device=device)
        target = s["t2"].data / input_scale(s["t2"].data, spec)
        out["skull-stripped" if stripped else "whole head"] = float(psnr(syn, target, brain))
    return out


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a background thread."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


def untrained_stand_in() -> Model:
    """The shipped t1_to_t2 architecture with random weights (only when the bundle is missing)."""
    from napari_neurosynth.networks import build_network

    torch.manual_seed(0)
    net = build_network("unet", in_channels=3, base=16, depth=3).eval()
    card = {
        "name": "t1_to_t2 (untrained stand-in)",
        "task": "cms",
        "inputs": ["t1"],
        "output": "t2",
        "architecture": net.architecture,
        "slicing": {"plane": "axial", "context": 1},
        "normalization": {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1},
    }
    return Model(card, net, None, card["name"])


def run_once(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    gpu = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return out, dt, mem.peak, gpu


def numpy_peak(fn) -> int:
    """Peak bytes of Python/numpy allocations during ``fn()`` (torch's own allocator is not traced)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_device(model: Model, subject: dict[str, Volume], device: str, repeats: int) -> dict:
    dev = torch.device(device)
    t1, t2 = subject["t1"], subject["t2"]
    brain = subject["brain_mask"].data > 0
    n_slices = t1.shape[2]
    methods = {
        "naive": lambda: reference_synthesize(model, t1, device=device),
        "engine": lambda: synthesize(model, t1, device=device),
        "engine-full": lambda: synthesize(model, t1, device=device, crop=False),
    }
    # Warm-up: oneDNN/cuDNN kernels are built per input shape on first use. The naive loop
    # and engine-full use one slice shape (a thin slab covers it); the cropped engine uses
    # a dozen box sizes, so it warms up on the whole volume. Timings and memory below are
    # then steady state; the one-time set-up is reported separately.
    mid = t1.shape[2] // 2
    slab = Volume(np.ascontiguousarray(t1.data[:, :, mid - 4 : mid + 4]), t1.affine)
    reference_synthesize(model, slab, device=device)
    synthesize(model, slab, device=device, crop=False)
    _, first_call_s, first_call_rss, _ = run_once(lambda: synthesize(model, t1, device=device), dev)
    times = {k: [] for k in methods}
    rss = {k: 0 for k in methods}
    gpu = {k: 0 for k in methods}
    outputs = {}
    for _ in range(repeats):
        for name, fn in methods.items():  # interleaved: a busy machine slows every method alike
            out, dt, peak, gpu_peak = run_once(fn, dev)
            times[name].append(dt)
            rss[name] = max(rss[name], peak)
            gpu[name] = max(gpu[name], gpu_peak)
            outputs[name] = out
    info = synthesize_volume(model, t1, device=device).metadata["inference"]
    np_peak = {k: numpy_peak(methods[k]) for k in ("naive", "engine")} if dev.type == "cpu" else {}
    spec = model.card.get("normalization")
    target = t2.data / input_scale(t2.data, spec)
    naive = outputs["naive"]
    result = {
        "device": device,
        "precision": info["precision"],
        "batch_size": info["batch_size"],
        "slices_computed": info["slices_computed"],
        "crop_box": info["crop_box"],
        "crop_box_sizes": info["box_sizes"],
        "engine_first_call": {"seconds": first_call_s, "peak_host_rss_mb": first_call_rss / 2**20},
        "methods": {},
        "max_abs_diff_engine_full_vs_naive": float(np.abs(outputs["engine-full"] - naive).max()),
        "max_abs_diff_engine_vs_naive_in_brain": float(np.abs(outputs["engine"] - naive)[brain].max()),
        "mean_abs_diff_engine_vs_naive_in_brain": float(np.abs(outputs["engine"] - naive)[brain].mean()),
        "psnr_brain_vs_acquired_t2": {k: float(psnr(v, target, brain)) for k, v in outputs.items()},
    }
    for name in methods:
        best = min(times[name])
        result["methods"][name] = {
            "seconds_per_volume": best,
            "all_seconds": times[name],
            "slices_per_second": n_slices / best,
            "speedup_vs_naive": min(times["naive"]) / best,
            "peak_host_rss_mb": rss[name] / 2**20,
            "peak_numpy_mb": np_peak[name] / 2**20 if name in np_peak else None,
            "peak_gpu_mb": gpu[name] / 2**20 if dev.type == "cuda" else None,
        }
    return result


def hardware() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    hw = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores_available": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            hw["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
    return hw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="t1_to_t2", help="bundle name or folder (default: t1_to_t2)")
    parser.add_argument(
        "--device",
        action="append",
        choices=["cpu", "cuda"],
        help="device(s) to time (default: cpu, and cuda when available)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default: 2 CPU, 5 GPU)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 2 mm phantom on the BraTS field of view (120 x 120 x 78) and 1 repeat: a minute on a laptop CPU",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--with-skull",
        action="store_true",
        help="keep scalp and skull (BraTS volumes are skull-stripped; default: stripped like them)",
    )
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="if the bundle is missing, time its architecture with random weights",
    )
    args = parser.parse_args(argv)

    try:
        model = load_model(args.model)
    except NeurosynthError as exc:
        if not args.allow_untrained:
            print(f"bench_inference: {exc} (train it, or pass --allow-untrained)", file=sys.stderr)
            return 2
        model = untrained_stand_in()
        print("NOTE: bundle missing; timing the t1_to_t2 architecture with random weights", file=sys.stderr)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    head = "whole head" if args.with_skull else "skull-stripped like BraTS"
    resolution = 2.0 if args.quick else 1.0
    shape = brats_shape(resolution)
    print(
        f"building the BraTS-sized phantom ({resolution:g} mm, {'x'.join(map(str, shape))}, {head})...", file=sys.stderr
    )
    subject = brats_sized_subject(args.seed, skull_stripped=not args.with_skull, resolution=resolution)
    vol_mb = subject["t1"].data.size * 4 / 2**20
    model_mb = sum(p.numel() * p.element_size() for p in model.network.parameters()) / 2**20
    report = {
        "hardware": hardware(),
        "model": model.name,
        "shape": list(shape),
        "resolution_mm": resolution,
        "input": head,
        "volume_float32_mb": vol_mb,
        "model_mb": model_mb,
        "results": [],
    }
    print(f"model {model.name} ({model_mb:.2f} MB of weights), volume {shape} = {vol_mb:.1f} MB float32, {head}")
    print(f"hardware: {json.dumps(report['hardware'])}")
    for device in devices:
        repeats = args.repeats or (1 if args.quick else 5 if device == "cuda" else 2)
        r = bench_device(model, subject, device, repeats)
        report["results"].append(r)
        print(
            f"\n== {device} ({r['precision']}, batch {r['batch_size']}, {r['slices_computed']} of "
            f"{shape[2]} slices computed, {r['crop_box_sizes']} crop sizes within {r['crop_box']}) =="
        )
        print(
            f"{'method':<12} {'s/volume':>9} {'slices/s':>9} {'speed-up':>9} {'host RSS MB':>12} "
            f"{'numpy MB':>9} {'GPU MB':>8}"
        )
        for name, m in r["methods"].items():
            npk = "-" if m["peak_numpy_mb"] is None else f"{m['peak_numpy_mb']:.0f}"
            gpk = "-" if m["peak_gpu_mb"] is None else f"{m['peak_gpu_mb']:.0f}"
            print(
                f"{name:<12} {m['seconds_per_volume']:>9.3f} {m['slices_per_second']:>9.1f} "
                f"{m['speedup_vs_naive']:>8.2f}x {m['peak_host_rss_mb']:>12.0f} {npk:>9} {gpk:>8}"
            )
        eng = r["methods"]["engine"]
        print(
            f"engine's first call in this process (kernel set-up included): "
            f"{r['engine_first_call']['seconds']:.3f} s, host RSS {r['engine_first_call']['peak_host_rss_mb']:.0f} MB"
        )
        budget = 3 * vol_mb + model_mb
        print(
            f"engine-full vs naive: max |diff| {r['max_abs_diff_engine_full_vs_naive']:.2e}; "
            f"engine (cropped) vs naive in brain: max {r['max_abs_diff_engine_vs_naive_in_brain']:.3f}, "
            f"mean {r['mean_abs_diff_engine_vs_naive_in_brain']:.4f}"
        )
        print(
            "PSNR in brain vs acquired T2: "
            + ", ".join(f"{k} {v:.2f} dB" for k, v in r["psnr_brain_vs_acquired_t2"].items())
        )
        if device == "cpu":
            ok = eng["peak_host_rss_mb"] <= budget
            print(
                f"engine peak host memory {eng['peak_host_rss_mb']:.0f} MB vs budget 3 x volume + model = "
                f"{budget:.0f} MB: {'within' if ok else 'OVER'}"
            )
    heads = head_psnr(model, args.seed, resolution, devices[0])
    report["brain_psnr_by_head"] = heads
    gap = heads["whole head"] - heads["skull-stripped"]
    print(
        f"\nengine brain PSNR vs acquired T2: skull-stripped {heads['skull-stripped']:.2f} dB, "
        f"whole head {heads['whole head']:.2f} dB (gap {gap:+.2f} dB; "
        f"{'within' if abs(gap) <= 1.0 else 'OUTSIDE'} the 1 dB the shipping rule allows)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
