"""FGDL (issue 13): misaligned phantoms, deformable alignment, label correction, the two-stage recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_neurosynth.baselines import IntensityLUT
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.fgdl import FGDLGenerator, PyramidAlign, RegistrationNet, flow_smoothness
from napari_neurosynth.networks import build_network, warp
from napari_neurosynth.phantom import MISALIGNMENT_SEVERITIES, make_phantom
from napari_neurosynth.training.misalignment import centroid_offsets, misaligned_subjects


@pytest.fixture(scope="module")
def moved():
    """One subject at 3 mm, aligned and with each severity (same anatomy, noise and bias)."""
    out = {"none": make_phantom(seed=5, resolution=3.0)}
    for sev in MISALIGNMENT_SEVERITIES:
        out[sev] = make_phantom(seed=5, resolution=3.0, target_misalignment=sev)
    return out


def test_target_misalignment_moves_only_t2_and_keeps_the_aligned_truth(moved):
    ref = moved["none"]
    for sev in MISALIGNMENT_SEVERITIES:
        ph = moved[sev]
        # the truth is the aligned acquisition itself: same noise, same bias, no motion
        np.testing.assert_array_equal(ph["t2_aligned"].data, ref["t2"].data)
        np.testing.assert_array_equal(ph["t1"].data, ref["t1"].data)
        np.testing.assert_array_equal(ph["flair"].data, ref["flair"].data)
        assert not np.array_equal(ph["t2"].data, ref["t2"].data)
        motion = ph["t2"].metadata["motion"]
        assert motion["severity"] == sev and ph["t2_lowres"].metadata["motion"] == motion
        assert "motion" not in ph["t2_aligned"].metadata
    disp = [moved[s]["t2"].metadata["motion"]["displacement_mm"]["brain_mean"] for s in ("low", "mid", "high")]
    assert disp[0] < disp[1] < disp[2], disp
    # stated in mm: the rigid part is bounded by the severity, the elastic part adds at most elastic_mm
    for sev, d in zip(("low", "mid", "high"), disp):
        s = MISALIGNMENT_SEVERITIES[sev]
        assert d < np.sqrt(3) * s["shift_mm"] + 80 * np.deg2rad(s["rotation_deg"]) * np.sqrt(3) + s["elastic_mm"]


def test_misalignment_is_a_real_motion_of_the_anatomy(moved):
    """The brain's T2 centroid moves by about the rigid shift (world mm), not by some other amount."""
    ref, ph = moved["none"], moved["high"]
    brain = ref["brain_mask"].data > 0
    spacing = np.asarray(ph["t2"].spacing)

    def centroid(img):
        w = np.where(brain | (ndi_dilate(brain)), img, 0.0)
        pts = np.argwhere(w > 0)
        return (pts * w[w > 0][:, None]).sum(0) / w[w > 0].sum() * spacing

    shift = np.asarray(ph["t2"].metadata["motion"]["translation_mm"])
    got = centroid(ph["t2"].data) - centroid(ref["t2"].data)
    # rotation about the brain's centre and the elastic field move the centroid little
    assert np.linalg.norm(got - shift) < 0.5 * np.linalg.norm(shift) + 1.0, (got, shift)


def ndi_dilate(mask):
    from scipy import ndimage as ndi

    return ndi.binary_dilation(mask, iterations=3)


def test_kspace_lowres_keeps_world_geometry_and_intensity():
    hi = make_phantom(seed=2, resolution=3.0, lesions=False)
    lo = make_phantom(seed=2, resolution=3.0, lesions=False, lowres_mode="kspace", lowres_factor=2)["t2_lowres"]
    assert lo.shape[:2] == (hi["t2"].shape[0] // 2, hi["t2"].shape[1] // 2) and lo.shape[2] == hi["t2"].shape[2]
    assert lo.metadata["kspace_factor"] == 2

    def world_centroid(vol):
        data = np.asarray(vol.data, float)
        pts = np.argwhere(data > 0.3 * data.max())
        w = data[data > 0.3 * data.max()]
        ijk = (pts * w[:, None]).sum(0) / w.sum()
        return vol.affine[:3, :3] @ ijk + vol.affine[:3, 3]

    # the same head in world mm, within a fraction of the low-res voxel (6 mm)
    assert np.linalg.norm(world_centroid(lo) - world_centroid(hi["t2"])) < 1.5
    ratio = float(np.asarray(lo.data).mean() / np.asarray(hi["t2"].data).mean())
    assert 0.9 < ratio < 1.1
    with pytest.raises(NeurosynthError, match="lowres_mode"):
        make_phantom(seed=2, resolution=4.0, lowres_mode="sinc")
    with pytest.raises(NeurosynthError, match="target_misalignment"):
        make_phantom(seed=2, resolution=4.0, target_misalignment="huge")


def _smooth_image(rng, size=48):
    from scipy import ndimage as ndi

    img = ndi.gaussian_filter(rng.random((size, size)), 2.5)
    return (img - img.mean()) / img.std()


def test_deformable_alignment_recovers_a_known_shift():
    """Trained on one toy pair, the pyramid's offsets equal the shift that made the pair (in pixels)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    size, shift = 48, (2.0, -1.5)  # x (width), y (height)
    ref = torch.from_numpy(_smooth_image(rng, size)).float()[None, None]
    off = torch.zeros(1, 2, size, size)
    off[:, 0], off[:, 1] = -shift[0], -shift[1]
    moving = warp(ref, off)  # moving(p) = ref(p - shift): the content moved by +shift
    pyramid = lambda t: [t, torch.nn.functional.avg_pool2d(t, 2), torch.nn.functional.avg_pool2d(t, 4)]  # noqa: E731
    align = PyramidAlign([1, 1, 1])
    # the residual conv after sampling can absorb a sub-pixel shift by itself (a derivative filter);
    # frozen at zero here, so the test reads what the offsets alone learned
    for p in align.post.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in align.parameters() if p.requires_grad], 1e-2)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    for _ in range(200):
        aligned, offsets = align(pyramid(ref), pyramid(moving))
        loss = sum((a - r)[inner].abs().mean() for a, r in zip(aligned, pyramid(ref)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    found = offsets[0][inner].mean(dim=(0, 2, 3)).detach().numpy()
    np.testing.assert_allclose(found, shift, atol=0.15)
    before = (moving - ref)[inner].abs().mean()
    assert float((aligned[0].detach() - ref)[inner].abs().mean()) < 0.3 * float(before)


def test_label_correction_lowers_the_target_source_misalignment(moved):
    """The registration network, trained as FGDL's stage 1 does, brings the misaligned T2 label onto the source."""
    torch.manual_seed(0)
    ph = moved["high"]
    brain = ph["brain_mask"].data > 0
    scale = float(np.median(ph["t2_aligned"].data[brain]))
    t1 = ph["t1"].data / float(np.median(ph["t1"].data[brain]))
    truth, label = ph["t2_aligned"].data / scale, ph["t2"].data / scale
    # "fixed" stands in for the CMS output: T2 contrast in T1's geometry (a LUT from T1, fitted on this subject)
    fixed = IntensityLUT().fit([([t1], truth)], [brain]).predict([t1])
    slices = [k for k in range(brain.shape[2]) if brain[..., k].sum() > 300]
    as_batch = lambda a: torch.from_numpy(np.ascontiguousarray(a[..., slices].transpose(2, 0, 1)[:, None])).float()  # noqa: E731
    f, y, t, m = as_batch(fixed), as_batch(label), as_batch(truth), as_batch(brain.astype(np.float32))
    reg = RegistrationNet(base=8)
    opt = torch.optim.Adam(reg.parameters(), 1e-3)
    for _ in range(120):
        idx = torch.randint(len(slices), (6,))
        corrected, flow = reg(f[idx], y[idx])
        loss = (corrected - f[idx]).abs().mean() + 10.0 * flow_smoothness(flow)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        corrected, flow = reg(f, y)

    def err(a):
        return float(((a - t).abs() * m).sum() / m.sum())

    before, after = err(y), err(corrected)
    assert after < 0.85 * before, (before, after)
    assert float(flow.abs().mean()) > 0.2  # it did move the label


def test_fgdl_generator_stages_train_what_they_should(tmp_path):
    """Stage 1 changes the CMS base only; stage 2 leaves the CMS base (and the registration) untouched."""
    from napari_neurosynth.training.config import TrainConfig
    from napari_neurosynth.training.loop import Trainer

    cfg = TrainConfig(
        mode="mcsr",
        name="tiny_fgdl",
        inputs=["t1", "t2_lowres"],
        output="t2",
        data="phantom:0-1",
        resolution=[4.0],
        architecture="fgdl",
        arch_args={"base": 4, "n_blocks": 1},
        context=0,
        patch=32,
        batch=2,
        epochs=2,
        steps_per_epoch=2,
        lr=1e-3,
        lambda_ssim=1.0,
        lambda_diff=1.0,
        target_misalignment="mixed",
        stage1_fraction=0.5,
    )
    tr = Trainer(cfg, log=lambda m: None)
    G = tr.G
    snap = lambda mods: [p.detach().clone() for m in mods for p in m.parameters()]  # noqa: E731
    cms, sr = G.cms_modules(), [G.sr_stem, G.modulate, G.sr_head, G.align]
    cms0, sr0 = snap(cms), snap(sr)
    tr.fit(progress=False, stop_after=1)  # stage 1
    cms1, sr1, reg1 = snap(cms), snap(sr), snap([tr.R])
    assert any(not torch.equal(a, b) for a, b in zip(cms0, cms1))
    assert all(torch.equal(a, b) for a, b in zip(sr0, sr1))  # no gradient reaches the SR branch yet
    assert any(float(p.abs().max()) > 0 for p in snap([tr.R.flow]))
    tr.fit(progress=False)  # stage 2
    assert all(torch.equal(a, b) for a, b in zip(cms1, snap(cms)))
    assert all(torch.equal(a, b) for a, b in zip(reg1, snap([tr.R])))
    assert any(not torch.equal(a, b) for a, b in zip(sr1, snap(sr)))
    assert [round(r["stage"]) for r in tr.history] == [1, 2]
    # validation compares with the aligned truth of the validation subject
    assert "val_psnr" in tr.history[-1]


def test_fgdl_bundle_runs_in_the_engine_on_the_source_grid(tmp_path):
    """CLI training to a bundle; the engine's output lies on T1's grid and the card names the recipe."""
    from napari_neurosynth.bundle import load_model
    from napari_neurosynth.cli import main
    from napari_neurosynth.inference import synthesize

    out = tmp_path / "fgdl"
    rc = main(
        [
            "train", "--name", "tiny_fgdl", "--mode", "mcsr", "--arch", "fgdl", "--arch-args",
            "base=4,n_blocks=1,deformable=true", "--inputs", "t1", "t2_lowres", "--output", "t2",
            "--context", "0", "--patch", "32", "--batch", "2", "--epochs", "2", "--steps", "1",
            "--data", "phantom:0-1", "--resolution", "4", "--target-misalignment", "mid", "--disc", "patchgan",
            "--no-progress", "--threads", "1", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"]["name"] == "fgdl"
    recipe = card["training"]["recipe"]
    assert recipe["fgdl"]["discriminator"].startswith("conditional PatchGAN")
    assert recipe["phantom_options"]["target_misalignment"] == "mid"
    model = load_model(out)
    subj = misaligned_subjects([1001], "mid", resolution=4.0)[0]
    raw = subj.meta["raw_images"]
    pred = synthesize(model, [raw["t1"], raw["t2_lowres"]], device="cpu")
    assert pred.shape == raw["t1"].shape
    assert np.isfinite(np.asarray(pred)).all()


def test_centroid_offsets_see_a_shift_of_the_ventricles():
    subj = misaligned_subjects([1001], "none", resolution=3.0)[0]
    truth = np.asarray(subj.images["t2"].data, np.float32)
    same = centroid_offsets(truth, truth, subj)
    assert same["ventricles_mm"] == 0.0 and same["n_lesions"] >= 1
    shifted = centroid_offsets(np.roll(truth, 2, axis=1), truth, subj)  # 6 mm along A
    assert 4.5 < shifted["ventricles_mm"] < 7.5
    assert shifted["lesions_mm"] > 2.0


def test_fgdl_architecture_is_built_by_name_and_checked():
    net = build_network("fgdl", source_channels=3, lowres_channels=3, base=4, n_blocks=1)
    assert isinstance(net, FGDLGenerator) and net.in_channels == 6
    with pytest.raises(NeurosynthError, match="offset_groups"):
        build_network("fgdl", base=4, offset_groups=3)
    from napari_neurosynth.training.config import TrainConfig

    with pytest.raises(NeurosynthError, match="--mode mcsr"):
        TrainConfig(mode="paired", architecture="fgdl").check()
