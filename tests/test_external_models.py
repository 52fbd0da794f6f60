"""Bring your own model: pytorch-CycleGAN-and-pix2pix checkpoints, MONAI networks, ONNX bundles.

Every model here is a real file on disk (a ``.pth`` written by ``torch.save``, a
safetensors bundle, a ``model.onnx`` exported by torch) loaded the way a user loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_neurosynth.bundle import load_model, save_bundle, verify_bundle
from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.external.pix2pix import NETG, build_pix2pix
from napari_neurosynth.inference import synthesize
from napari_neurosynth.slicing import input_scale

PERCENTILE = {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Fewer threads: 5 engineers share 2 cores."""


def _random_weights(net: torch.nn.Module, seed: int) -> None:
    """Random weights and batch-norm statistics, as a trained checkpoint would have (not the init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen))
                else:
                    t.copy_(0.2 * torch.randn(t.shape, generator=gen))


def _pix2pix_checkpoint(
    tmp_path: Path, net_g: str, norm: str, dropout: bool, seed: int = 0
) -> tuple[Path, torch.nn.Module]:
    net = build_pix2pix(net_g, input_nc=1, output_nc=1, ngf=4, norm=norm, use_dropout=dropout)
    _random_weights(net, seed)
    path = tmp_path / f"{net_g}_{norm}_latest_net_G.pth"
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, path)  # the original's save_networks
    return path, net.eval()


def _direct_pix2pix(net: torch.nn.Module, t1: np.ndarray, k: int, scale: float, divisor: int) -> np.ndarray:
    """pix2pix's own test path on one axial slice: [0, 1] -> [-1, 1], forward, tanh -> [0, 1]."""
    sl = np.clip(t1[:, :, k] / scale, 0, 1).astype(np.float32)
    h, w = sl.shape
    ph, pw = h + (-h) % divisor, w + (-w) % divisor
    x = torch.full((1, 1, ph, pw), -1.0)  # zero padding in [0, 1] is -1 on the network's side
    x[0, 0, :h, :w] = torch.from_numpy(sl) * 2 - 1
    with torch.no_grad():
        y = net(x)[0, 0, :h, :w]
    return ((y + 1) / 2).numpy()


# --------------------------------------------------------------------------- pix2pix


@pytest.mark.parametrize("net_g", list(NETG))
def test_pix2pix_import_matches_direct_forward(tmp_path, phantom3, net_g):
    norm, dropout = {
        "resnet_9blocks": ("instance", False),
        "resnet_6blocks": ("batch", True),
        "unet_256": ("batch", True),
        "unet_128": ("none", False),
    }[net_g]
    ckpt, net = _pix2pix_checkpoint(tmp_path, net_g, norm, dropout)
    args = ["models", "import", "pix2pix", str(ckpt), "--netG", net_g, "--norm", norm]
    args += ["--input", "t1", "--output", "t2", "-o", str(tmp_path / "bundle")]
    assert main(args + ([] if dropout else ["--no-dropout"])) == 0
    model = load_model(tmp_path / "bundle")
    card = model.card
    assert card["architecture"] == {
        "source": "pix2pix",
        "name": net_g,
        "args": {"input_nc": 1, "output_nc": 1, "ngf": 4, "norm": norm, "use_dropout": dropout},
    }
    assert card["intensity_transform"] == {"input": [0.0, 1.0], "network": [-1.0, 1.0], "clip": True}
    # the weights file holds the original's keys, unchanged
    from safetensors.torch import load_file

    assert sorted(load_file(tmp_path / "bundle" / "weights.safetensors")) == sorted(net.state_dict())
    t1 = phantom3["t1"].data
    out = synthesize(model, phantom3["t1"], device="cpu", crop=False)
    k = t1.shape[2] // 2
    direct = _direct_pix2pix(net, t1, k, input_scale(t1, PERCENTILE), model.size_divisor)
    assert float(np.abs(out[:, :, k] - direct).max()) <= 1e-4
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0  # tanh undone: the [0, 1] range


def test_pix2pix_wrong_keys_listed_and_no_bundle(tmp_path, capsys):
    ckpt, _ = _pix2pix_checkpoint(tmp_path, "resnet_6blocks", "instance", dropout=False)
    dest = tmp_path / "bundle"
    # trained with dropout off, imported with dropout on: block indices shift
    rc = main(["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "instance",
               "--input", "t1", "--output", "t2", "-o", str(dest)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "missing keys (12): model.10.conv_block.6.weight" in err
    assert "unexpected keys (12): model.10.conv_block.5.weight" in err
    assert "--no-dropout" in err
    assert not dest.exists() and not list(tmp_path.glob(".bundle*"))
    rc = main(["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "batch",
               "--no-dropout", "--input", "t1", "--output", "t2", "-o", str(dest)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "missing keys (" in err and "running_mean" in err
    assert not dest.exists()


def test_booby_trapped_pickle_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    script = (
        "import os, torch\n"
        "class Trap:\n"
        f"    def __reduce__(self): return (os.makedirs, ({str(marker)!r},))\n"
        f"torch.save({{'model.1.weight': torch.zeros(4, 1, 7, 7), 'trap': Trap()}}, {str(tmp_path / 'evil.pth')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert not marker.exists()
    rc = main(["models", "import", "pix2pix", str(tmp_path / "evil.pth"), "--netG", "resnet_9blocks",
               "--norm", "instance", "--input", "t1", "--output", "t2", "-o", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "refusing evil.pth: it holds Python objects other than tensors" in err
    assert not marker.exists() and not (tmp_path / "b").exists()
    # a pickle where a bundle is expected is refused without being opened
    with pytest.raises(NeurosynthError, match="refusing to load evil.pth: it is a pickle-based checkpoint"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_import_refuses_existing_bundle_without_force(tmp_path, capsys):
    ckpt, _ = _pix2pix_checkpoint(tmp_path, "resnet_6blocks", "instance", dropout=False)
    dest = tmp_path / "bundle"
    base = ["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "instance",
            "--no-dropout", "--input", "t1", "--output", "t2", "-o", str(dest)]  # fmt: skip
    assert main(base) == 0
    assert main(base) == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert main([*base, "--force"]) == 0
    assert verify_bundle(dest)["ok"]


# --------------------------------------------------------------------------- MONAI


def _basic_unet_3d(tmp_path: Path, patch: list[int]) -> Path:
    from monai.networks.nets import BasicUNet

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(0)
    net = BasicUNet(**args)
    card = {
        "name": "monai3d",
        "task": "cms",
        "inputs": ["t1"],
        "output": "t2",
        "architecture": {"source": "monai", "name": "BasicUNet", "args": args},
        "normalization": PERCENTILE,
        "slicing": {"plane": "axial", "context": 0, "patch_size": patch, "overlap": 0.25},
    }
    return save_bundle(net, card, tmp_path / "monai3d")


def test_monai_basicunet_3d_equals_sliding_window_inference(tmp_path, phantom3):
    from monai.inferers import sliding_window_inference

    model = load_model(_basic_unet_3d(tmp_path, [32, 32, 32]))
    t1 = phantom3["t1"]
    seen: list[float] = []
    out = synthesize(model, t1, device="cpu", progress=seen.append)
    x = torch.from_numpy(t1.data / np.float32(input_scale(t1.data, PERCENTILE))).float()[None, None]
    with torch.no_grad():
        direct = sliding_window_inference(x, (32, 32, 32), 4, model.network, overlap=0.25, mode="gaussian")
    assert out.shape == t1.shape
    assert float(np.abs(out - direct[0, 0].numpy()).max()) <= 1e-5
    assert seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) > 3


def test_monai_3d_uncertainty_and_gradcam(tmp_path, phantom3):
    from napari_neurosynth.explain import gradcam, uncertainty

    model = load_model(_basic_unet_3d(tmp_path, [32, 32, 32]))
    t1 = phantom3["t1"]
    std = uncertainty(model, t1, shifts=((0, 0), (1, 1)), flips=False, device="cpu")
    assert std.shape == t1.shape and float(std.max()) > 0
    c = [s // 2 for s in t1.shape]
    roi = (slice(c[0] - 2, c[0] + 2), slice(c[1] - 2, c[1] + 2), c[2])
    cam = gradcam(model, t1, roi)
    assert cam.shape == t1.shape and float(cam.max()) == 1.0 and float(cam.min()) >= 0.0
    # the map lies around the ROI: a 3-D network's receptive field is local
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert max(abs(int(p) - q) for p, q in zip(peak, c)) < 24


def test_monai_bad_cards(tmp_path, phantom3):
    folder = _basic_unet_3d(tmp_path, [32, 32, 32])
    card = json.loads((folder / "card.json").read_text())
    card["architecture"]["name"] = "subprocess.Popen"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match="MONAI architecture 'subprocess.Popen' is not allow-listed"):
        load_model(folder)
    big = load_model(_basic_unet_3d(tmp_path / "big", [96, 96, 96]))
    with pytest.raises(NeurosynthError, match=r"the 3-D patch \(96, 96, 96\) is larger than the volume"):
        synthesize(big, phantom3["t1"], device="cpu")


# --------------------------------------------------------------------------- ONNX


@pytest.fixture
def torch_bundle(tmp_path):
    ckpt, _ = _pix2pix_checkpoint(tmp_path, "resnet_6blocks", "batch", dropout=False)
    dest = tmp_path / "p2p"
    assert main(["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "batch",
                 "--no-dropout", "--input", "t1", "--output", "t2", "-o", str(dest)]) == 0  # fmt: skip
    return dest


def test_onnx_export_round_trip(tmp_path, phantom3, torch_bundle):
    out_dir = tmp_path / "p2p_onnx"
    assert main(["models", "export", str(torch_bundle), "--format", "onnx", "-o", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "card.json", "model.onnx"]
    onnx_model = load_model(out_dir)
    assert onnx_model.card["onnx"]["layout"] == "NCHW" and onnx_model.card["architecture"]["source"] == "onnx"
    t1 = phantom3["t1"]
    expected = synthesize(load_model(torch_bundle), t1, device="cpu")
    got = synthesize(onnx_model, t1, device="cpu")
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert verify_bundle(out_dir)["ok"]


def test_onnx_explain_offers_occlusion_not_gradcam(tmp_path, phantom3, torch_bundle):
    from napari_neurosynth.explain import gradcam, occlusion_map

    out_dir = tmp_path / "o"
    assert main(["models", "export", str(torch_bundle), "--format", "onnx", "-o", str(out_dir)]) == 0
    onnx_model, torch_model = load_model(out_dir), load_model(torch_bundle)
    t1 = phantom3["t1"]
    c = [s // 2 for s in t1.shape]
    roi = (slice(c[0] - 2, c[0] + 2), slice(c[1] - 2, c[1] + 2), c[2])
    with pytest.raises(NeurosynthError, match="Grad-CAM needs gradients, which the ONNX model"):
        gradcam(onnx_model, t1, roi)
    occ = occlusion_map(onnx_model, t1, roi)
    assert occ.shape == t1.shape and float(occ.max()) == 1.0
    assert float(occ[:, :, c[2] + 1].max()) == 0.0  # only the ROI's slice (context 0)
    peak = np.unravel_index(int(np.argmax(occ)), occ.shape)
    assert abs(int(peak[0]) - c[0]) < 16 and abs(int(peak[1]) - c[1]) < 16
    # the same experiment on the torch model it came from gives the same map
    assert float(np.abs(occlusion_map(torch_model, t1, roi) - occ).max()) < 5e-3


def test_onnx_3d_export_round_trip(tmp_path, phantom3):
    folder = _basic_unet_3d(tmp_path, [32, 32, 32])
    assert main(["models", "export", str(folder), "--format", "onnx", "-o", str(tmp_path / "o3")]) == 0
    t1 = phantom3["t1"]
    a = synthesize(load_model(folder), t1, device="cpu")
    b = synthesize(load_model(tmp_path / "o3"), t1, device="cpu")
    assert float(np.abs(a - b).max()) <= 1e-4


def _onnx_of(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), path, input_names=["input"], output_names=["output"], dynamo=False)


def test_onnx_wrong_rank_and_names(tmp_path, torch_bundle):
    out_dir = tmp_path / "o"
    assert main(["models", "export", str(torch_bundle), "--format", "onnx", "-o", str(out_dir)]) == 0
    card = json.loads((out_dir / "card.json").read_text())
    # a graph taking a rank-3 input where the card says NCHW
    _onnx_of(torch.nn.Conv1d(1, 1, 3, padding=1), torch.zeros(1, 1, 16), out_dir / "model.onnx")
    import hashlib

    card["weights"]["sha256"] = hashlib.sha256((out_dir / "model.onnx").read_bytes()).hexdigest()
    (out_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match=r"has rank 3 .* layout NCHW needs rank 4"):
        load_model(out_dir)
    card["onnx"]["input_name"] = "image"
    (out_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(NeurosynthError, match="the ONNX graph has no input 'image' \\(it has input\\)"):
        load_model(out_dir)


def test_onnx_missing_onnxruntime_names_the_extra(tmp_path, torch_bundle):
    out_dir = tmp_path / "o"
    assert main(["models", "export", str(torch_bundle), "--format", "onnx", "-o", str(out_dir)]) == 0
    # a real interpreter in which onnxruntime cannot be imported
    code = "import sys; sys.modules['onnxruntime'] = None\nfrom napari_neurosynth.cli import main\n"
    code += f"sys.exit(main(['models', 'verify', {str(out_dir)!r}]))"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'napari-neurosynth[onnx]'" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- the widgets


def _kind_bundle(kind: str, root: Path) -> tuple[str, str]:
    """A bundle of ``kind`` in ``root``; returns its name and the CAM method the Explain tab should use."""
    if kind == "pix2pix":
        root.mkdir(exist_ok=True)
        ckpt, _ = _pix2pix_checkpoint(root, "resnet_6blocks", "instance", dropout=False)
        assert main(["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "instance",
                     "--no-dropout", "--input", "t1", "--output", "t2", "--name", "p2p",
                     "-o", str(root / "p2p")]) == 0  # fmt: skip
        ckpt.unlink()
        return "p2p", "HiResCAM"
    if kind == "monai3d":
        _basic_unet_3d(root, [32, 32, 32])
        return "monai3d", "HiResCAM"
    name, _ = _kind_bundle("pix2pix", root / "src")
    onnx_dir = root / "p2p_onnx"
    assert main(["models", "export", str(root / "src" / name), "--format", "onnx", "-o", str(onnx_dir)]) == 0
    card = json.loads((onnx_dir / "card.json").read_text())
    card["name"] = "p2p_onnx"
    (onnx_dir / "card.json").write_text(json.dumps(card))
    import shutil

    shutil.rmtree(root / "src")
    return "p2p_onnx", "Occlusion (model-agnostic)"


@pytest.mark.parametrize("kind", ["pix2pix", "monai3d", "onnx"])
def test_widgets_with_each_kind(kind, make_napari_viewer, phantom3, qtbot, tmp_path_factory, monkeypatch):
    from napari_neurosynth.explain import gradcam, occlusion_map
    from napari_neurosynth.viewer.compare_widget import CompareExplainWidget
    from napari_neurosynth.viewer.layers import volume_to_layer_data
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    root = tmp_path_factory.mktemp("models")
    name, method = _kind_bundle(kind, root)
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", str(root))
    viewer = make_napari_viewer()
    for vol, label in ((phantom3["t1"], "T1"), (phantom3["t2"], "T2")):
        data, kwargs, _ = volume_to_layer_data(vol, name=label)
        viewer.add_image(data, **kwargs)
    synth_w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(synth_w, name="Synthesize")
    synth_w.set_model(name)
    synth_w.set_device("cpu")
    worker = synth_w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not synth_w.job.running, timeout=60_000)
    synth = viewer.layers[f"T2 (synthesized: {name})"]
    np.testing.assert_allclose(synth.data, synthesize(load_model(name), phantom3["t1"], device="cpu"), atol=1e-5)

    w = CompareExplainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Compare & Explain")
    assert w.method_combo.currentText() == method
    if kind == "onnx":
        assert "Grad-CAM needs gradients" in w.model_label.text() and w.cam_button.text() == "Explain ROI (occlusion)"
    k = phantom3["t1"].shape[2] // 2
    viewer.dims.order = (2, 0, 1)
    viewer.dims.set_current_step(2, k)
    roi = w.add_roi_layer()
    i0, j0 = (s // 2 - 2 for s in phantom3["t1"].shape[:2])
    roi.add_rectangles(np.array([[i0, j0, k], [i0, j0 + 4, k], [i0 + 4, j0 + 4, k], [i0 + 4, j0, k]], float))
    mask = w.roi_mask()
    worker = w.explain_roi()
    assert worker is not None
    qtbot.waitUntil(lambda: not w.job.running, timeout=60_000)
    cam = w.cam_layer
    assert cam.name.startswith(method) and cam.data.shape == phantom3["t1"].shape
    direct = (
        occlusion_map(load_model(name), phantom3["t1"], mask)
        if kind == "onnx"
        else gradcam(load_model(name), phantom3["t1"], mask, method="hirescam")
    )
    np.testing.assert_allclose(cam.data, direct, atol=1e-5)
    assert cam.data.max() == pytest.approx(1.0)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    out = os.environ.get("NEUROSYNTH_TEST_SCREENSHOTS")
    if out:  # for a person to look at: NEUROSYNTH_TEST_SCREENSHOTS=/some/folder pytest ...
        from PIL import Image

        Path(out).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot).save(Path(out) / f"widgets_{kind}.png")
    assert shot.ndim == 3 and shot[..., :3].std() > 10  # something drawn, not a blank window
