"""The Synthesize and Compare & Explain widgets with each kind of model brought from elsewhere.

A pytorch-CycleGAN-and-pix2pix generator (a real ``.pth`` imported with ``neurosynth
models import pix2pix``), a MONAI 3-D BasicUNet bundle (``save_bundle``) and an ONNX
bundle (``neurosynth models export --format onnx``), each found by the widget's model
picker through ``$NEUROSYNTH_MODELS_PATH`` and run in a real napari viewer: Synthesize,
then Grad-CAM (slice-wise for pix2pix, in the 3-D window for MONAI) or, for ONNX, the
occlusion map with the reason Grad-CAM is unavailable.

``NEUROSYNTH_TEST_SCREENSHOTS=/some/folder`` saves a screenshot of each viewer there
(docs/make_byom_images.py makes the user guide's pictures with trained models).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_neurosynth.bundle import load_model, save_bundle
from napari_neurosynth.cli import main
from napari_neurosynth.external.pix2pix import build_pix2pix
from napari_neurosynth.inference import synthesize

PERCENTILE = {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1}
#: kind -> (bundle name, method key, the CAM layer's name prefix)
KINDS = {
    "pix2pix": ("byom_p2p", "gradcam", "Grad-CAM of T2 (synthesized: byom_p2p) ROI"),
    "monai3d": ("byom_monai3d", "gradcam", "Grad-CAM 3-D of T2 (synthesized: byom_monai3d) ROI"),
    "onnx": ("byom_onnx", "occlusion", "Occlusion (model-agnostic) of T2 (synthesized: byom_onnx) ROI"),
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Fewer threads: 5 engineers share 2 cores."""


def _pix2pix_bundle(root: Path, name: str) -> Path:
    """A resnet_6blocks generator with random weights, saved as the original repository saves it, imported."""
    net = build_pix2pix("resnet_6blocks", input_nc=1, output_nc=1, ngf=4, norm="instance", use_dropout=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.dtype.is_floating_point:
                t.copy_(0.2 * torch.randn(t.shape, generator=gen))
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "latest_net_G.pth"
    torch.save(net.state_dict(), ckpt)
    dest = root / name
    assert main(["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "instance",
                 "--no-dropout", "--input", "t1", "--output", "t2", "--name", name, "-o", str(dest)]) == 0  # fmt: skip
    ckpt.unlink()
    return dest


def _monai3d_bundle(root: Path, name: str) -> Path:
    from monai.networks.nets import BasicUNet

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(0)
    card = {
        "name": name,
        "task": "cms",
        "inputs": ["t1"],
        "output": "t2",
        "architecture": {"source": "monai", "name": "BasicUNet", "args": args},
        "normalization": PERCENTILE,
        "slicing": {"plane": "axial", "context": 0, "patch_size": [32, 32, 32], "overlap": 0.25},
    }
    return save_bundle(BasicUNet(**args), card, root / name)


def _onnx_bundle(root: Path, name: str) -> Path:
    src = _pix2pix_bundle(root / "src", "src_p2p")
    dest = root / name
    assert main(["models", "export", str(src), "--format", "onnx", "-o", str(dest)]) == 0
    card = json.loads((dest / "card.json").read_text())
    card["name"] = name  # the exported card keeps the source's name; the picker lists bundles by name
    (dest / "card.json").write_text(json.dumps(card))
    shutil.rmtree(root / "src")
    return dest


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom")
    _pix2pix_bundle(root, KINDS["pix2pix"][0])
    _monai3d_bundle(root, KINDS["monai3d"][0])
    _onnx_bundle(root, KINDS["onnx"][0])
    return root


def _roi_centre(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return shape[0] // 2, shape[1] // 2 + 4, shape[2] // 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_synthesize_and_explain_each_kind(kind, models_root, make_napari_viewer, phantom3, qtbot, monkeypatch):
    from napari_neurosynth.explain import gradcam, occlusion_map
    from napari_neurosynth.viewer.compare_widget import CompareExplainWidget
    from napari_neurosynth.viewer.layers import volume_to_layer_data
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    name, _method, cam_prefix = KINDS[kind]
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", str(models_root))
    t1 = phantom3["t1"]
    viewer = make_napari_viewer()
    for vol, label in ((t1, "T1"), (phantom3["t2"], "T2")):
        data, kwargs, _ = volume_to_layer_data(vol, name=label)
        viewer.add_image(data, **kwargs)
    t1_layer = viewer.layers["T1"]

    # --- Synthesize: the picker lists all three kinds, the run gives the engine's output in T1's world space
    synth_w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(synth_w, name="Synthesize")
    listed = {synth_w.model_combo.itemText(i) for i in range(synth_w.model_combo.count())}
    assert {n for n, _, _ in KINDS.values()} <= listed
    synth_w.set_model(name)
    synth_w.set_device("cpu")
    assert synth_w.run() is not None
    qtbot.waitUntil(lambda: not synth_w.job.running, timeout=60_000)
    synth = viewer.layers[f"T2 (synthesized: {name})"]
    assert synth is synth_w.result_layer and synth.metadata["card"]["name"] == name
    np.testing.assert_allclose(synth.data, synthesize(load_model(name), t1, device="cpu"), atol=1e-5)
    np.testing.assert_allclose(synth.affine.affine_matrix, t1_layer.affine.affine_matrix, atol=1e-9)
    np.testing.assert_allclose(synth.data_to_world((3, 4, 5)), t1_layer.data_to_world((3, 4, 5)), atol=1e-9)

    # --- Compare & Explain: the method offered for the kind, and the reason when Grad-CAM is out
    w = CompareExplainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Compare & Explain")
    w.synth_combo.set_layer(synth)
    gradcam_item = w.method_combo.model().item(w.method_combo.findData("gradcam"))
    if kind == "onnx":
        assert w.method_combo.currentData() == "occlusion" and not gradcam_item.isEnabled()
        assert "Grad-CAM unavailable: " in w.model_label.text()
        assert "gradients" in w.model_label.text() and w.cam_button.text() == "Explain ROI (occlusion)"
    else:
        assert gradcam_item.isEnabled() and w.cam_button.text() == "Explain ROI (Grad-CAM)"
        w.method_combo.setCurrentIndex(w.method_combo.findData("gradcam"))
    ci, cj, k = _roi_centre(t1.shape)
    viewer.dims.order = (2, 0, 1)
    viewer.dims.set_current_step(2, k)
    roi = w.add_roi_layer()
    roi.add_rectangles(np.array([[ci - 2, cj - 2, k], [ci - 2, cj + 2, k], [ci + 2, cj + 2, k], [ci + 2, cj - 2, k]]))
    roi.mode = "pan_zoom"
    mask = w.roi_mask()
    assert mask.sum() > 0 and set(np.nonzero(mask)[2]) == {k}  # the rectangle, on the current slice only
    assert w.explain_roi() is not None
    qtbot.waitUntil(lambda: not w.job.running, timeout=60_000)
    cam = w.cam_layer
    assert cam.name.startswith(cam_prefix), cam.name
    assert cam.metadata["kind"] == ("occlusion" if kind == "onnx" else "gradcam")
    assert cam.metadata["explains"] == synth.name
    np.testing.assert_allclose(cam.affine.affine_matrix, t1_layer.affine.affine_matrix, atol=1e-9)
    direct = (
        occlusion_map(load_model(name), t1, mask)
        if kind == "onnx"
        else gradcam(load_model(name), t1, mask, method="gradcam")
    )
    np.testing.assert_allclose(cam.data, direct, atol=1e-5)
    assert float(cam.data.max()) == pytest.approx(1.0) and float(cam.data.min()) >= 0.0
    slices_with_map = set(np.nonzero(cam.data.reshape(-1, cam.data.shape[2]).max(0) > 0)[0])
    if kind == "monai3d":
        from napari_neurosynth.explain.cam3d import explain_window

        window = explain_window(mask, (32, 32, 32), 16)  # the card's patch, BasicUNet's divisor
        assert all(w.start <= c < w.stop for w, c in zip(window, (ci, cj, k)))  # around the ROI
        outside = cam.data.copy()
        outside[window] = 0
        assert outside.max() == 0 and len(slices_with_map) > 3  # the 3-D window, not one slice
    else:
        assert slices_with_map == {k}  # a slice model (context 0): the ROI's own slice
    # world millimetres: the ROI drawn on the synthesized layer and the viewer's slice agree
    roi_world = np.asarray(roi.data_to_world(roi.data[0].mean(0)))
    np.testing.assert_allclose(roi_world, synth.data_to_world((ci, cj, k)), atol=1e-6)
    np.testing.assert_allclose(roi_world, cam.data_to_world((ci, cj, k)), atol=1e-6)
    assert roi_world[2] == pytest.approx(viewer.dims.point[2])

    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 10  # something drawn, not a blank window
    out = os.environ.get("NEUROSYNTH_TEST_SCREENSHOTS")
    if out:  # for a person to look at
        from PIL import Image

        Path(out).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot).save(Path(out) / f"byom_{kind}.png")
