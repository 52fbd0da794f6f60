"""Screenshots of the user guide's "Bring your own model" section (docs/images/08-10_byom_*.png).

Run from the repository root (a display is needed; without one use Xvfb):

    xvfb-run -a .venv/bin/python docs/make_byom_images.py --monai3d PATH_TO_A_3D_BUNDLE

Three bundles of the three foreign kinds, each run through the Synthesize and the
Compare & Explain widgets on a held-out phantom (seed 1000, 2 mm):

- **pix2pix**: a ``resnet_6blocks`` generator in pytorch-CycleGAN-and-pix2pix's own
  layout and input convention ([0, 1] -> [-1, 1], tanh), trained here for a few
  hundred L1 steps on phantom slices (a picture of random weights would show
  nothing), saved with ``torch.save(net.state_dict())`` and imported with
  ``neurosynth models import pix2pix``; Grad-CAM of the ROI;
- **MONAI 3-D**: the ``--monai3d`` bundle (``neurosynth train --dims 3``, see
  docs/models.md); Grad-CAM 3-D in the sliding window around the ROI;
- **ONNX**: the shipped ``t1_to_t2`` exported with ``neurosynth models export
  --format onnx``; the occlusion map, with the reason Grad-CAM is unavailable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
SHOTS = {
    "pix2pix": "08_byom_pix2pix_gradcam.png",
    "monai3d": "09_byom_monai3d_gradcam3d.png",
    "onnx": "10_byom_onnx_occlusion.png",
}


def train_pix2pix_checkpoint(path: Path, steps: int = 200) -> Path:
    """A small pix2pix ``resnet_6blocks`` (ngf 16, instance norm) fitted with L1 on phantom T1 -> T2 slices."""
    import torch

    from napari_neurosynth.data import SliceSampler, load_subjects, prepare
    from napari_neurosynth.external.importer import PIX2PIX_NORMALIZATION, PIX2PIX_TRANSFORM
    from napari_neurosynth.external.pix2pix import build_pix2pix
    from napari_neurosynth.external.transform import IntensityTransform

    torch.manual_seed(0)
    subjects = load_subjects("phantom:0-3", ["t1", "t2"], [2.0])
    prepared = [prepare(s, ["t1", "t2"], PIX2PIX_NORMALIZATION, "axial") for s in subjects]
    sampler = SliceSampler(prepared, ["t1"], "t2", 0, 64, np.random.default_rng(0))
    net = build_pix2pix("resnet_6blocks", input_nc=1, output_nc=1, ngf=16, norm="instance", use_dropout=False)
    # the convention the importer records: what the original repository's data loader does
    model = IntensityTransform(net, tuple(PIX2PIX_TRANSFORM["input"]), tuple(PIX2PIX_TRANSFORM["network"]), True)
    opt = torch.optim.Adam(net.parameters(), 2e-3, betas=(0.5, 0.999))
    for _ in range(steps):
        x, y, _m = sampler.batch(4)
        loss = torch.nn.functional.l1_loss(model(torch.from_numpy(x)), torch.from_numpy(y).clamp(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)  # pytorch-CycleGAN-and-pix2pix's save_networks
    return path


def make_bundles(root: Path, monai3d: Path) -> dict[str, str]:
    """The three bundles in ``root`` (for ``$NEUROSYNTH_MODELS_PATH``); kind -> bundle name."""
    from napari_neurosynth.cli import main

    ckpt = train_pix2pix_checkpoint(root / "latest_net_G.pth")
    args = ["models", "import", "pix2pix", str(ckpt), "--netG", "resnet_6blocks", "--norm", "instance"]
    args += ["--no-dropout", "--input", "t1", "--output", "t2", "--name", "pix2pix_t1_to_t2"]
    if main([*args, "-o", str(root / "pix2pix_t1_to_t2")]) != 0:
        raise SystemExit("pix2pix import failed")
    ckpt.unlink()
    if main(["models", "export", "t1_to_t2", "--format", "onnx", "-o", str(root / "t1_to_t2_onnx")]) != 0:
        raise SystemExit("ONNX export failed")
    card_path = root / "t1_to_t2_onnx" / "card.json"
    card = json.loads(card_path.read_text())
    card["name"] = "t1_to_t2_onnx"  # the picker lists bundles by their card name
    card_path.write_text(json.dumps(card, indent=2))
    name3d = json.loads((monai3d / "card.json").read_text())["name"]
    shutil.copytree(monai3d, root / name3d)
    return {"pix2pix": "pix2pix_t1_to_t2", "monai3d": name3d, "onnx": "t1_to_t2_onnx"}


def shoot(kind: str, name: str, out: Path, seed: int = 1000, resolution: float = 2.0) -> Path:
    """One viewer: phantom, Synthesize with ``name``, Explain the largest tumour core's region; a screenshot."""
    import napari

    from napari_neurosynth.viewer.compare_widget import CompareExplainWidget
    from napari_neurosynth.viewer.demo import _grab, _largest_lesion, _raise_dock, _settle, _wait
    from napari_neurosynth.viewer.layers import set_anatomical_view
    from napari_neurosynth.viewer.sample_data import phantom_sample
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    viewer = napari.Viewer(title=f"napari-neurosynth: bring your own model ({kind})")
    viewer.window.resize(1600, 1000)
    for data, kwargs, layer_kind in phantom_sample(seed=seed, resolution=resolution):
        if kwargs.get("name") in ("T1", "T2", "lesions"):
            getattr(viewer, f"add_{layer_kind}")(data, **kwargs)
    set_anatomical_view(viewer, "axial")
    t1, lesions = viewer.layers["T1"], viewer.layers["lesions"]
    found = _largest_lesion(np.asarray(lesions.data), 1) or _largest_lesion(np.asarray(lesions.data) > 0, 1)
    if found is None:
        raise SystemExit("the phantom has no lesion")
    lesion, centre = found
    viewer.dims.set_point(2, float(t1.data_to_world(centre)[2]))

    synth_w, compare_w = SynthesizeWidget(viewer), CompareExplainWidget(viewer)
    viewer.window.add_dock_widget(synth_w, name="Synthesize", area="right")
    viewer.window.add_dock_widget(compare_w, name="Compare & Explain", area="right", tabify=True)
    _settle(0.5)
    window = synth_w.window()
    synth_w.set_model(name)
    synth_w.set_device("cpu")
    synth_w.input_combos["t1"].set_layer(t1)
    if synth_w.run() is None:
        raise SystemExit(f"Synthesize refused {name}")
    _wait(synth_w.job, 600, "synthesis")
    synth = synth_w.result_layer

    _raise_dock(compare_w)
    compare_w.synth_combo.set_layer(synth)
    if kind != "onnx":
        compare_w.method_combo.setCurrentIndex(compare_w.method_combo.findData("gradcam"))
    roi = compare_w.add_roi_layer()
    k = centre[2]
    ii, jj = np.nonzero(lesion[:, :, k])
    i0, i1, j0, j1 = ii.min() - 2, ii.max() + 2, jj.min() - 2, jj.max() + 2
    roi.add_rectangles(np.array([[i0, j0, k], [i0, j1, k], [i1, j1, k], [i1, j0, k]], float))
    roi.mode = "pan_zoom"
    if compare_w.explain_roi() is None:
        raise SystemExit(f"Explain refused {name}")
    _wait(compare_w.job, 600, "explain")
    for layer in viewer.layers:
        layer.visible = layer.name in {"T1", roi.name} or layer is compare_w.cam_layer
    compare_w.tabs.setCurrentIndex(2)  # Explain
    out.mkdir(parents=True, exist_ok=True)
    path = _grab(viewer, window, out / SHOTS[kind], zoom=1.3)
    print(f"{path}: {synth.name}; {compare_w.cam_layer.name}; model: {compare_w.model_label.text()}")
    viewer.close()
    return path


def main() -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--monai3d", type=Path, required=True, help="a MONAI 3-D bundle folder (neurosynth train --dims 3)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = make_bundles(Path(tmp), args.monai3d.expanduser().resolve())
        os.environ["NEUROSYNTH_MODELS_PATH"] = tmp
        for kind, name in names.items():
            shoot(kind, name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
