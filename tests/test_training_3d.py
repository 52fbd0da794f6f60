"""``neurosynth train --dims 3``: a MONAI 3-D patch model trained a few steps, exported and run.

The bundle it writes is an ordinary MONAI card (``architecture.source = "monai"``,
``slicing.patch_size`` and ``overlap``), so the engine runs it with
``sliding_window_inference``; its output must equal that function called directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_neurosynth.bundle import load_model
from napari_neurosynth.cli import main
from napari_neurosynth.inference import synthesize
from napari_neurosynth.slicing import input_scale


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Fewer threads: 5 engineers share 2 cores."""


def test_train_dims3_bundle_equals_sliding_window_inference(tmp_path, phantom3, capsys):
    from monai.inferers import sliding_window_inference

    out = tmp_path / "t1_to_t2_3d"
    argv = ["train", "--name", "t1_to_t2_3d", "--dims", "3", "--inputs", "t1", "--output", "t2",
            "--arch-args", "base=4", "--patch", "32", "--batch", "2", "--epochs", "1", "--steps", "3",
            "--data", "phantom:0", "--val-data", "phantom:900", "--resolution", "3", "--flips",
            "--device", "cpu", "--no-progress", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"]["source"] == "monai" and card["architecture"]["name"] == "BasicUNet"
    assert card["architecture"]["args"]["features"] == [4, 4, 8, 16, 32, 4]
    assert card["architecture"]["args"]["spatial_dims"] == 3
    assert card["slicing"] == {"plane": "axial", "context": 0, "patch_size": [32, 32, 32], "overlap": 0.25}
    assert card["training"]["recipe"]["dims"] == 3 and card["training"]["recipe"]["steps"] == 3
    assert "val_psnr" in card["training"]["history"][-1]
    assert "--dims 3" in card["training"]["command"]

    model = load_model(out)
    t1 = phantom3["t1"]
    got = synthesize(model, t1, device="cpu")
    x = torch.from_numpy(t1.data / np.float32(input_scale(t1.data, card["normalization"]))).float()[None, None]
    with torch.no_grad():
        direct = sliding_window_inference(x, (32, 32, 32), 4, model.network, overlap=0.25, mode="gaussian")
    assert got.shape == t1.shape
    assert float(np.abs(got - direct[0, 0].numpy()).max()) <= 1e-5
    assert float(np.abs(got).max()) > 0  # a trained network, not zeros


def test_train_dims3_refuses_what_it_cannot_train(tmp_path, capsys):
    base = ["train", "--name", "m", "--dims", "3", "--data", "phantom:0", "--resolution", "3"]
    base += ["-o", str(tmp_path / "m")]
    assert main([*base, "--mode", "unpaired"]) == 2
    assert "--dims 3 trains paired 3-D patch models" in capsys.readouterr().err
    assert main([*base, "--arch", "unet"]) == 2
    assert "leave out --arch" in capsys.readouterr().err
    assert main([*base, "--patch", "40", "--epochs", "1", "--steps", "1"]) == 2  # BasicUNet needs multiples of 16
    err = capsys.readouterr().err
    assert "multiple of 16" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
