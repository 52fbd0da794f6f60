"""Unpaired T1 -> T2: structure losses, unpaired baselines, the invented-lesion check, a tiny training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_neurosynth import losses as L
from napari_neurosynth.baselines import HistogramMatching, QuantileMap
from napari_neurosynth.cli import main as cli_main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.training import TrainConfig
from napari_neurosynth.training.unpaired import evaluate_unpaired, format_unpaired, invented_regions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def t1_slices(phantom3):
    """A few brain slices of the 3 mm phantom's T1 in normalised units, (B, 1, H, W)."""
    t1 = np.asarray(phantom3["t1"].data, np.float32)
    t1 = t1 / np.percentile(t1[t1 > 0], 99)
    mid = t1.shape[2] // 2
    x = torch.from_numpy(np.stack([t1[:, :, mid + k] for k in (-2, 0, 2)])[:, None].copy())
    return L.LowPass(1.0)(x)  # anatomy, not noise: a one-pixel shift of white noise is already total change


@pytest.mark.parametrize("name", ["mind", "gc"])
def test_structure_loss_ignores_contrast_and_sees_shifts(t1_slices, name):
    """A T1 -> T2-like inversion (monotone decreasing, non-linear) costs far less than moving the anatomy."""
    loss = L.STRUCTURE_LOSSES[name]
    x = t1_slices
    inverted = torch.exp(-2.0 * x)  # monotone, decreasing, not affine
    same = float(loss(x, x))
    contrast = float(loss(x, inverted))
    shifts = [float(loss(x, torch.roll(x, k, -1))) for k in (1, 2, 4)]
    assert same < 1e-5
    assert float(loss(x, 1.5 - 0.7 * x)) < 1e-4  # affine inversion: exactly invariant
    assert contrast < 0.5 * shifts[0], (contrast, shifts)
    assert shifts[0] < shifts[1] < shifts[2], shifts  # grows with the shift
    # and it has a gradient for the generator
    y = inverted.clone().requires_grad_(True)
    loss(x, torch.roll(y, 1, -1)).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_intensity_term_sees_level_and_scale_not_place(t1_slices):
    """The 1-D Wasserstein term: what the instance-normalised discriminator misses, and nothing spatial."""
    x = t1_slices
    mask = x > 0.2
    moved = torch.roll(x, 5, -1)
    assert float(L.quantile_matching_loss(x, torch.flip(x, (0,)), mask, torch.flip(mask, (0,)))) < 1e-6
    assert float(L.quantile_matching_loss(moved, x)) < 1e-6  # a shift keeps every value
    assert abs(float(L.quantile_matching_loss(x + 0.3, x, mask, mask)) - 0.3) < 1e-5
    assert float(L.quantile_matching_loss(0.6 * x, x, mask, mask)) > 0.1  # a compressed range costs
    empty = torch.zeros_like(mask)  # no brain in the batch: all voxels are compared
    assert float(L.quantile_matching_loss(x, x, empty, empty)) < 1e-6


def test_quantile_map_recovers_a_decreasing_map_from_unpaired_sets():
    rng = np.random.default_rng(0)
    f = lambda v: 3.0 * np.exp(-1.5 * v)  # noqa: E731 - the known decreasing T1 -> T2 map
    src = [rng.gamma(4.0, 0.2, 30000) for _ in range(2)]  # two "even" subjects' T1
    tgt = [f(rng.gamma(4.0, 0.2, 30000)) for _ in range(2)]  # two *other* subjects' T2
    qm = QuantileMap("increasing").fit(src, tgt)
    val = rng.gamma(4.0, 0.2, 5000)
    maes = qm.choose_polarity(val, f(val))  # polarity from a validation pair, not given
    assert qm.polarity == "decreasing" and maes["decreasing"] < 0.02 < maes["increasing"]
    x = np.linspace(0.3, 1.5, 7)
    np.testing.assert_allclose(qm.predict(x), f(x), atol=0.03)
    hm = HistogramMatching().fit(src, tgt)  # keeps the polarity: the wrong answer here
    assert np.abs(hm.predict(x) - f(x)).mean() > 0.3
    with pytest.raises(NeurosynthError):
        QuantileMap("sideways")


def _volumes(seed=0, shape=(30, 30, 30)):
    rng = np.random.default_rng(seed)
    t = 1.0 + 0.05 * rng.standard_normal(shape)
    return t, t + 0.05 * rng.standard_normal(shape), t + 0.05 * rng.standard_normal(shape)


def test_invented_lesion_check_finds_a_planted_blob_and_ignores_acquired_lesions():
    t, paired, s = _volumes()
    brain = np.ones(t.shape, bool)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    s[5:8, 5:9, 5:10] += 1.0  # 3 x 4 x 5 voxels of 1 mm: 60 mm^3, bright
    s[20:22, 20:22, 20:22] -= 1.0  # 8 mm^3: below 50 mm^3
    found = invented_regions(s, paired, t, brain, None, aff)
    assert [(r["mm3"], r["sign"]) for r in found] == [(60.0, 1)]
    # the same blob inside an acquired lesion is not an invention
    lesion = np.zeros(t.shape, np.uint8)
    lesion[5:8, 5:9, 5:10] = 2
    assert invented_regions(s, paired, t, brain, lesion, aff) == []
    # nor is it when the paired model shows it too
    p2 = paired.copy()
    p2[5:8, 5:9, 5:10] += 1.0
    assert invented_regions(s, p2, t, brain, None, aff) == []
    # voxel volume comes from the affine: at 2 mm the 60-voxel blob is 480 mm^3
    assert invented_regions(s, paired, t, brain, None, np.diag([2.0, 2.0, 2.0, 1.0]))[0]["mm3"] == 480.0


def test_structure_options_are_checked():
    with pytest.raises(NeurosynthError, match="--structure"):
        TrainConfig(mode="unpaired", context=0, structure="ssim").check()
    with pytest.raises(NeurosynthError, match="--lambda-structure"):
        TrainConfig(mode="unpaired", context=0, lambda_structure=-1).check()
    with pytest.raises(NeurosynthError, match="--lambda-intensity"):
        TrainConfig(mode="unpaired", context=0, lambda_intensity=-1).check()


def test_tiny_unpaired_training_with_structure_writes_card_and_is_judged(tmp_path, capsys):
    out = tmp_path / "u"
    args = ["train", "--name", "unp_tiny", "--mode", "unpaired", "--inputs", "t1", "--output", "t2"]
    args += ["--context", "0", "--arch-args", "base=4,n_blocks=1", "--disc-base", "4", "--patch", "32"]
    args += ["--batch", "2", "--lambda-cycle", "2", "--lambda-structure", "5", "--structure", "mind"]
    args += ["--lambda-intensity", "1"]
    args += ["--data", "phantom:0-1", "--val-data", "phantom:2", "--resolution", "3", "--epochs", "2"]
    args += ["--steps", "2", "--keep-best", "--threads", "1", "--no-progress", "--out", str(out)]
    assert cli_main(args) == 0
    card = json.loads((out / "card.json").read_text())
    losses = card["training"]["recipe"]["losses"]
    assert losses["structure"] == "mind" and losses["lambda_structure"] == 5.0
    assert "--lambda-structure 5" in card["training"]["command"]
    assert losses["lambda_intensity"] == 1.0
    assert {"structure", "intensity"} <= set(card["training"]["history"][-1])
    # the unpaired rule runs end to end (here against itself as the "paired" model, one 3 mm cell)
    cell = {"name": "whole_head/3mm/3T", "head": "whole_head", "resolution": "3mm", "field": "3T"}
    cell["options"] = {"skull_strip": False, "resolution": 3.0, "field_strength": 3.0, "protocol": "default"}
    report = evaluate_unpaired(out, out, [1000], cells=[cell])
    (row,) = report["cells"][0]["per_subject"]
    assert row["unpaired"] == row["paired"] and row["invented"] == []  # the same model invents nothing new
    assert report["conditions"]["within_paired"]["largest_gap_db"] == 0.0
    assert report["baselines"]["polarity"] == "decreasing"  # chosen on the validation subject
    qm, hm = row["quantile_map"], row["histogram_matching"]
    assert qm["psnr_brain"] > hm["psnr_brain"] + 5  # T1 -> T2 inverts the contrast
    text = format_unpaired(report)
    assert "| whole_head/3mm/3T | quantile_map |" in text and "unpaired shipping rule:" in text
