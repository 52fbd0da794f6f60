"""The inference engine against the naive per-slice loop, on 3 mm phantoms and real (small) bundles.

Random-init networks are enough for the engine's contracts (equality with the
reference loop, geometry, progress, cancellation, out-of-memory fallback, bad
input); the shipped ``t1_to_t2`` bundle is checked for quality when present.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
from torch import nn

from napari_neurosynth.bundle import Model, load_model, save_bundle
from napari_neurosynth.errors import CancelledError, NeurosynthError
from napari_neurosynth.inference import (
    reference_synthesize,
    resolve_device,
    resolve_precision,
    synthesize,
    synthesize_volume,
)
from napari_neurosynth.io import Volume, read_volume, same_grid, write_volume
from napari_neurosynth.networks import build_network
from napari_neurosynth.preprocessing import intensity_scale

#: bf16 autocast vs fp32, max |difference| inside the brain for the small test networks
#: (normalised units; their outputs span ~3 units). Measured ~0.04-0.13; see docs/performance.md.
BF16_TOL = 0.25


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bundle(tmp_path, name="rnd", arch="resnet", inputs=("t1",), output="t2", context=1, task="cms", **args):
    torch.manual_seed(0)
    per = 2 * context + 1
    if arch == "resnet":
        net = build_network("resnet", in_channels=len(inputs) * per, base=4, n_blocks=1, **args)
    elif arch == "unet":
        net = build_network("unet", in_channels=len(inputs) * per, base=4, depth=2, **args)
    elif arch == "fusion":
        net = build_network("fusion", n_inputs=len(inputs), channels_per_input=per, base=4, n_blocks=1)
    else:
        net = build_network("mcsr", source_channels=per, lowres_channels=per, base=4, n_blocks=2)
    card = {
        "name": name,
        "task": task,
        "inputs": list(inputs),
        "output": output,
        "slicing": {"plane": "axial", "context": context},
    }
    return load_model(save_bundle(net, card, tmp_path / name))


def _slab(vol: Volume, k0: int = 24, k1: int = 40) -> Volume:
    """Axial slices ``k0:k1`` of ``vol`` with the matching affine (a small, fast test volume)."""
    affine = vol.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([0, 0, k0])
    return Volume(np.ascontiguousarray(vol.data[:, :, k0:k1]), affine, dict(vol.metadata))


@pytest.fixture(scope="module")
def slab(phantom3):
    """16 axial slices through the middle of the 3 mm phantom (every contrast and the masks)."""
    return {k: _slab(v) for k, v in phantom3.items() if k != "t2_lowres"}


@pytest.fixture(scope="module")
def t1(slab):
    return slab["t1"]


@pytest.fixture(scope="module")
def brain(slab):
    return slab["brain_mask"].data > 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def ref(model, t1):
    """The naive loop's result for ``model`` on ``t1``."""
    return reference_synthesize(model, t1)


def _padded(vol: Volume, p: int) -> Volume:
    """``vol`` inside a larger in-plane field of view (zeros around it), same world position."""
    data = np.pad(vol.data, ((p, p), (p, p), (0, 0)))
    affine = vol.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([p, p, 0])
    return Volume(data, affine, dict(vol.metadata))


# --------------------------------------------------------------------------- equality with the naive loop


@pytest.mark.parametrize("arch", ["resnet", "unet"])
def test_engine_fp32_equals_naive_loop(tmp_path, t1, arch):
    m = _bundle(tmp_path, arch=arch)
    ref = reference_synthesize(m, t1)
    out = synthesize(m, t1, device="cpu", crop=False, batch_size=4)
    assert out.shape == t1.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(ref).max() > 1e-2  # the comparison is not between two zero images


def test_multi_input_fusion_equals_naive_loop(tmp_path, slab):
    m = _bundle(tmp_path, arch="fusion", inputs=("t1", "t2"), output="flair", context=0)
    inputs = [slab["t1"], slab["t2"]]
    ref = reference_synthesize(m, inputs)
    out = synthesize(m, inputs, device="cpu", crop=False)
    assert np.abs(out - ref).max() < 1e-4


def test_crop_is_independent_of_the_field_of_view(model, t1):
    """With crop=True the network sees the head's box, so extra empty field of view changes nothing.

    (Instance-normalised networks run on whole slices give results that depend on how
    much background the scan has; see docs/performance.md.)
    """
    a, b = _padded(t1, 20), _padded(t1, 32)
    out_a = synthesize(model, a, device="cpu")
    out_b = synthesize(model, b, device="cpu")
    inner_b = out_b[12:-12, 12:-12]
    assert np.abs(out_a - inner_b).max() < 1e-4
    # and the cropped run skips background: the border of the padded volume is exactly 0
    assert np.all(out_b[:5] == 0) and np.all(out_b[:, -5:] == 0)
    # inside the head it still synthesizes (not a blank)
    brain = np.pad(np.asarray(t1.data) > 0, ((20, 20), (20, 20), (0, 0)))
    assert np.abs(out_a[brain]).mean() > 1e-2


def test_bf16_autocast_within_documented_tolerance(model, t1, ref, brain):
    out = synthesize(model, t1, device="cpu", crop=False, precision="bf16")
    assert np.abs(out - ref)[brain].max() < BF16_TOL
    assert out.dtype == np.float32


# --------------------------------------------------------------------------- geometry


def test_output_on_first_input_grid_with_provenance(model, t1):
    vol = synthesize_volume(model, t1, device="cpu")
    assert same_grid(vol, t1)
    info = vol.metadata["inference"]
    assert vol.metadata["modality"] == "t2" and vol.metadata["model"] == "rnd"
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["seconds"] > 0
    assert info["slices_computed"] <= info["slices_total"] == t1.shape[2]


def test_slicing_axis_follows_the_affine(model, t1, ref):
    """The same head stored in another axis order gives the same synthesis, axis-permuted."""
    out = ref
    perm = (2, 0, 1)  # axial axis first, as DICOM-ordered volumes often are
    data = np.ascontiguousarray(np.transpose(t1.data, perm))
    affine = t1.affine.copy()
    affine[:, :3] = t1.affine[:, list(perm)]
    out_p = synthesize(model, Volume(data, affine), device="cpu", crop=False)
    assert np.abs(out_p - np.transpose(out, perm)).max() < 1e-4


def test_mcsr_lowres_input_is_resampled_automatically(tmp_path, phantom3, t1):
    m = _bundle(tmp_path, arch="mcsr", inputs=("t1", "t2_lowres"), task="mcsr", context=0)
    low = phantom3["t2_lowres"]  # its own grid: 4x thicker axial slices, covering the whole head
    assert not same_grid(low, t1)
    vol = synthesize_volume(m, [t1, low], device="cpu")
    assert same_grid(vol, t1) and np.isfinite(vol.data).all()
    assert vol.metadata["inference"]["resampled_inputs"] == [1]


def test_mismatched_grid_is_refused_then_resampled_on_request(tmp_path, slab):
    m = _bundle(tmp_path, arch="fusion", inputs=("t1", "t2"), output="flair", context=0)
    moved = _padded(slab["t2"], 4)
    with pytest.raises(NeurosynthError, match=r"different grid.*resample"):
        synthesize(m, [slab["t1"], moved], device="cpu")
    out = synthesize(m, [slab["t1"], moved], device="cpu", resample=True)
    direct = synthesize(m, [slab["t1"], slab["t2"]], device="cpu")
    assert out.shape == slab["t1"].shape
    # the padded T2 resampled back onto T1's grid is the same image: same synthesis
    assert np.abs(out - direct).max() < 1e-3


# --------------------------------------------------------------------------- progress and cancellation


def test_progress_is_monotonic_and_ends_at_one(model, t1):
    seen = []
    synthesize(model, t1, device="cpu", progress=seen.append, batch_size=3)
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(seen))
    assert len(seen) > 5  # reported per batch, not only at the end


def test_cancel_from_another_thread_stops_within_one_batch(model, t1):
    cancel = threading.Event()
    first_batch = threading.Event()
    cancel_sent = threading.Event()
    seen = []

    def progress(f):
        seen.append(f)
        if f > 0:
            first_batch.set()
            cancel_sent.wait(10)  # let the other thread act before the next batch starts

    def canceller():
        first_batch.wait(30)
        cancel.set()
        cancel_sent.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    with pytest.raises(CancelledError, match="cancelled after 2 of"):
        synthesize(model, t1, device="cpu", progress=progress, cancel=cancel, batch_size=2)
    thread.join()
    assert len(seen) == 2 and seen[0] == 0.0 and 0 < seen[1] < 0.5  # one batch ran, then it stopped


def test_cancel_accepts_a_callable(model, t1):
    with pytest.raises(CancelledError):
        synthesize(model, t1, device="cpu", cancel=lambda: True)


# --------------------------------------------------------------------------- out of memory


class _OOMAbove(nn.Module):
    """Test double of a device with little memory: raises torch's OOM error for batches above ``limit``."""

    def __init__(self, net: nn.Module, limit: int):
        super().__init__()
        self.net, self.limit = net, limit
        self.size_divisor = net.size_divisor
        self.batches: list[int] = []

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} slices")
        self.batches.append(x.shape[0])
        return self.net(x)


def test_out_of_memory_halves_the_batch_and_still_matches(model, t1, ref):
    wrapped = Model(model.card, _OOMAbove(model.network, limit=3), model.path, model.name)
    vol = synthesize_volume(wrapped, t1, device="cpu", batch_size=16, crop=False)
    info = vol.metadata["inference"]
    assert info["oom_retries"] == 3 and info["batch_size"] == 2  # 16 -> 8 -> 4 -> 2
    assert np.abs(vol.data - ref).max() < 1e-4


def test_out_of_memory_with_one_slice_is_a_clear_error(model, t1):
    wrapped = Model(model.card, _OOMAbove(model.network, limit=0), model.path, model.name)
    with pytest.raises(NeurosynthError, match=r"out of memory.*one slice"):
        synthesize(wrapped, t1, device="cpu")


def test_memory_budget_sets_the_batch_size(model, t1):
    small = synthesize_volume(model, t1, device="cpu", memory_budget=1)
    large = synthesize_volume(model, t1, device="cpu", memory_budget=2**33)
    assert small.metadata["inference"]["batch_size"] == 1
    assert large.metadata["inference"]["batch_size"] > 1
    assert np.abs(small.data - large.data).max() < 1e-4


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda v: v.data[:, :, 10], r"2-D .*3-D volume"),
        (lambda v: np.stack([v.data, v.data], -1), r"4-D .*one volume"),
        (lambda v: np.where(np.arange(v.data.size).reshape(v.shape) == 7, np.nan, v.data), r"1 NaN/Inf"),
        (lambda v: np.where(np.arange(v.data.size).reshape(v.shape) < 3, np.inf, v.data), r"3 NaN/Inf"),
        (lambda v: np.zeros(v.shape, np.float32), r"input 1 \(t1\).*empty"),
        (lambda v: np.full(v.shape, 1j), r"real-valued"),
    ],
    ids=["2d", "4d", "nan", "inf", "empty", "complex"],
)
def test_bad_input_gives_its_message(model, t1, make, message):
    with pytest.raises(NeurosynthError, match=message):
        synthesize(model, make(t1), device="cpu")


def test_wrong_number_of_inputs(model, t1):
    with pytest.raises(NeurosynthError, match=r"takes 1 input\(s\) \(t1.*but 2 were given"):
        synthesize(model, [t1, t1], device="cpu")


def test_input_marked_with_another_modality(model, slab):
    flair = slab["flair"]
    with pytest.raises(NeurosynthError, match=r"marked as 'flair'.*expects t1"):
        synthesize(model, flair, device="cpu")


def test_bare_array_on_another_grid(tmp_path, slab):
    m = _bundle(tmp_path, arch="fusion", inputs=("t1", "t2"), output="flair", context=0)
    with pytest.raises(NeurosynthError, match=r"bare array .*pass it as a Volume"):
        synthesize(m, [slab["t1"], slab["t2"].data[:-2]], device="cpu", resample=True)


def test_device_and_precision_choices():
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(NeurosynthError, match="CUDA was requested"):
            resolve_device("cuda")
    with pytest.raises(NeurosynthError, match="unknown device"):
        resolve_device("tpu9")
    with pytest.raises(NeurosynthError, match="unknown precision"):
        resolve_precision("int3", torch.device("cpu"))


# --------------------------------------------------------------------------- 3-D patch models


class _Tiny3D(nn.Sequential):
    """A real 3-D convolutional network (the engine dispatches on ``spatial_dims``)."""

    spatial_dims = 3
    size_divisor = 1

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1))


def test_3d_sliding_window_matches_whole_volume_and_reports(t1, tmp_path):
    net = _Tiny3D().eval()
    norm = {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}
    x = torch.from_numpy(t1.data / np.float32(intensity_scale(t1.data, norm)))
    with torch.no_grad():
        whole = net(x[None, None].float())[0, 0].numpy()
    # windows no larger than the volume (a larger one is refused; see test_external_models.py)
    for patch, tol in ((list(t1.shape), 1e-5), ([32, 32, min(32, t1.shape[2])], 0.02)):
        card = {
            "name": "tiny3d",
            "task": "cms",
            "inputs": ["t1"],
            "output": "t2",
            "normalization": norm,
            "slicing": {"plane": "axial", "context": 0, "patch_size": patch, "overlap": 0.25},
        }
        seen = []
        out = synthesize(Model(card, net, tmp_path, "tiny3d"), t1, device="cpu", progress=seen.append)
        assert out.shape == t1.shape
        # one window: exact; 32^3 windows: MONAI's blending differs only near window borders
        assert np.abs(out - whole).mean() < tol * np.abs(whole).mean() + 1e-6
        assert seen[-1] == 1.0 and all(b >= a for a, b in itertools.pairwise(seen))
    assert len(seen) > 3  # progress per window batch


# --------------------------------------------------------------------------- CLI


def _write_subjects(root, t1, n=2):
    for i in range(n):
        d = root / f"sub{i}"
        d.mkdir(parents=True)
        write_volume(t1, d / f"sub{i}_t1.nii.gz")
    return root


def test_cli_single_subject(tmp_path, t1, model):
    from napari_neurosynth.cli import main

    write_volume(t1, tmp_path / "t1.nii.gz")
    rc = main(
        [
            "synthesize",
            str(tmp_path / "t1.nii.gz"),
            "--model",
            str(model.path),
            "-o",
            str(tmp_path / "out.nii.gz"),
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert rc == 0
    out = read_volume(tmp_path / "out.nii.gz")
    assert same_grid(out, t1)
    assert np.abs(out.data - synthesize(model, read_volume(tmp_path / "t1.nii.gz"), device="cpu")).max() < 1e-4


def test_cli_batch_folder_carries_on_past_a_bad_subject(tmp_path, t1, model, capsys):
    from napari_neurosynth.cli import main

    data = _write_subjects(tmp_path / "data", t1)
    (data / "sub9").mkdir()
    (data / "sub9" / "sub9_t1.nii.gz").write_bytes(b"not a nifti" * 20)  # corrupt
    (data / "sub8").mkdir()
    write_volume(t1.with_data(np.zeros(t1.shape, np.float32)), data / "sub8" / "sub8_t1.nii.gz")
    rc = main(["synthesize", "--batch", str(data), "--model", str(model.path), "-o", str(tmp_path / "out"), "-q"])
    assert rc == 1
    # each output has its provenance sidecar (napari_neurosynth.cohort)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["sub0_t2_synth.json", "sub0_t2_synth.nii.gz", "sub1_t2_synth.json", "sub1_t2_synth.nii.gz"]
    err = capsys.readouterr().err
    assert "2 subject(s) failed" in err and "sub9: cannot read" in err and "sub8: input 1 (t1)" in err


def test_cli_batch_glob_and_csv(tmp_path, t1, model):
    from napari_neurosynth.cli import main

    data = _write_subjects(tmp_path / "data", t1)
    rc = main(
        [
            "synthesize",
            "--batch",
            str(data / "*" / "*_t1.nii.gz"),
            "--model",
            str(model.path),
            "-o",
            str(tmp_path / "g"),
            "-q",
        ]
    )
    assert rc == 0 and len(list((tmp_path / "g").glob("*.nii.gz"))) == 2
    (tmp_path / "list.csv").write_text("subject,t1\nalpha,data/sub0/sub0_t1.nii.gz\nbeta,data/missing_t1.nii.gz\n")
    rc = main(
        [
            "synthesize",
            "--batch",
            str(tmp_path / "list.csv"),
            "--model",
            str(model.path),
            "-o",
            str(tmp_path / "c"),
            "-q",
        ]
    )
    assert rc == 1 and [p.name for p in (tmp_path / "c").glob("*.nii.gz")] == ["alpha_t2_synth.nii.gz"]


def test_cli_usage_errors_exit_2(tmp_path, model, capsys):
    from napari_neurosynth.cli import main

    assert main(["synthesize", "--model", str(model.path), "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert "either INPUT files" in capsys.readouterr().err
    assert (
        main(["synthesize", "--batch", str(tmp_path / "nothing.csv"), "--model", str(model.path), "-o", str(tmp_path)])
        == 2
    )


# --------------------------------------------------------------------------- GPU and the shipped model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_precision_close_to_cpu_and_oom_budget(model, t1, ref, brain):
    vol = synthesize_volume(model, t1, device="cuda", crop=False)
    assert vol.metadata["inference"]["precision"] in ("bf16", "fp16")
    assert np.abs(vol.data - ref)[brain].max() < BF16_TOL
    fp32 = synthesize(model, t1, device="cuda", crop=False, precision="fp32")
    assert np.abs(fp32 - ref).max() < 1e-3
    small = synthesize_volume(model, t1, device="cuda", memory_budget=1)
    assert small.metadata["inference"]["batch_size"] == 1


def test_shipped_t1_to_t2_beats_the_input_baseline(phantom3):
    from napari_neurosynth.bundle import list_models
    from napari_neurosynth.metrics import psnr
    from napari_neurosynth.preprocessing import intensity_scale

    if "t1_to_t2" not in list_models():
        pytest.skip("shipped t1_to_t2 bundle not trained yet")
    m = load_model("t1_to_t2")
    out = synthesize(m, phantom3["t1"], device="cpu")
    spec = m.card.get("normalization")
    t2 = phantom3["t2"].data / intensity_scale(phantom3["t2"].data, spec)
    t1n = phantom3["t1"].data / intensity_scale(phantom3["t1"].data, spec)
    brain = phantom3["brain_mask"].data > 0
    assert psnr(out, t2, brain) > psnr(t1n, t2, brain) + 3.0
    # cropping (the default) agrees with whole slices inside the brain, within the tolerance
    # documented in docs/performance.md (measured: mean 0.000-0.001, PSNR equal within 0.1 dB)
    full = synthesize(m, phantom3["t1"], device="cpu", crop=False)
    assert np.abs(out - full)[brain].mean() < 0.01
    assert psnr(out, t2, brain) > psnr(full, t2, brain) - 0.5


# --------------------------------------------------------------------------- the slice plan


def _naive_stack(stacks, slices, c, divisor):
    """Test oracle (the loop the plan replaced): per slice, per input, offsets -c..c, edges repeated, padded."""
    n, H, W = stacks[0].shape
    out = []
    for s in slices:
        chans = [st[min(max(s + o, 0), n - 1)] for st in stacks for o in range(-c, c + 1)]
        x = np.stack(chans)
        out.append(np.pad(x, ((0, 0), (0, (-H) % divisor), (0, (-W) % divisor))))
    return np.stack(out).astype(np.float32)


def test_stack_batch_numpy_and_tensor_agree_with_the_naive_stacking():
    from napari_neurosynth.slicing import context_indices, stack_batch

    rng = np.random.default_rng(0)
    stacks = [rng.random((7, 10, 13)).astype(np.float32) for _ in range(2)]
    slices = [0, 3, 6, 6]
    ref = _naive_stack(stacks, slices, 2, 4)
    x_np = stack_batch(stacks, slices, 2, divisor=4)
    x_t = stack_batch([torch.from_numpy(s) for s in stacks], np.array(slices), 2, divisor=4)
    assert isinstance(x_np, np.ndarray) and isinstance(x_t, torch.Tensor)
    np.testing.assert_array_equal(x_np, ref)
    np.testing.assert_array_equal(x_t.numpy(), ref)
    assert context_indices([0, 6], 2, 7).tolist() == [[0, 0, 0, 1, 2], [4, 5, 6, 6, 6]]
    # a shared box, per-slice boxes of one size, a training patch size, scales applied on the fly
    box = (2, 7, 3, 9)
    sub = [s[:, 2:7, 3:9] for s in stacks]
    np.testing.assert_array_equal(stack_batch(stacks, slices, 1, box=box), _naive_stack(sub, slices, 1, 1))
    boxes = np.array([[0, 5, 0, 6], [5, 10, 7, 13]])
    per = stack_batch([torch.from_numpy(s) for s in stacks], [1, 2], 0, box=boxes)
    np.testing.assert_array_equal(per[1, 0].numpy(), stacks[0][2, 5:10, 7:13])
    patch = stack_batch(stacks, [1], 1, box=box, size=(8, 8))
    assert patch.shape == (1, 6, 8, 8) and not patch[:, :, 5:].any() and not patch[:, :, :, 6:].any()
    scaled = stack_batch(stacks, slices, 0, scales=[2.0, 4.0])
    np.testing.assert_allclose(scaled[:, 1], stacks[1][slices] / 4.0, rtol=1e-6)
    with pytest.raises(NeurosynthError, match="out of range"):
        stack_batch(stacks, [7], 0)
    with pytest.raises(NeurosynthError, match=r"one .*size"):
        stack_batch(stacks, [1, 2], 0, box=np.array([[0, 5, 0, 6], [0, 6, 0, 6]]))


def test_slice_plan_is_the_card_preprocessing(slab):
    """The plan's batch is the card's rule written out: per-input percentile scale, slicing
    axis from the affine, 2.5-D context with repeated edges, zero padding to the divisor."""
    from napari_neurosynth.slicing import SlicePlan, slicing_axis

    card = {
        "inputs": ["t1", "t2"],
        "slicing": {"plane": "axial", "context": 1},
        "normalization": {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1},
    }
    vols = [slab["t1"], slab["t2"]]
    plan = SlicePlan.from_card(card, vols, divisor=8)
    axis = slicing_axis(card, vols[0].affine)
    assert plan.axis == axis == 2 and plan.channels == 6 and plan.n_slices == vols[0].shape[2]
    normed = [
        np.moveaxis(v.data.astype(np.float32) / intensity_scale(v.data, card["normalization"]), axis, 0) for v in vols
    ]
    slices = [0, 5, plan.n_slices - 1]
    np.testing.assert_allclose(plan.batch(slices).numpy(), _naive_stack(normed, slices, 1, 8), rtol=1e-6, atol=1e-7)
    todo, boxes = plan.crop_boxes(crop=True)
    H, W = plan.plane_shape
    hs, ws = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    assert len(todo) and ((hs % 8 == 0) | (hs == H)).all() and ((ws % 8 == 0) | (ws == W)).all()  # batchable sizes
    all_todo, whole = plan.crop_boxes(crop=False)
    assert all_todo.tolist() == list(range(plan.n_slices)) and (whole == [0, H, 0, W]).all()
    # the same rule on a volume stored with another axis order: the plan follows the affine
    perm = Volume(np.ascontiguousarray(np.moveaxis(vols[0].data, 2, 0)), vols[0].affine[:, [2, 0, 1, 3]])
    p2 = SlicePlan.from_card({**card, "inputs": ["t1"]}, [perm])
    assert p2.axis == 0 and p2.n_slices == plan.n_slices
