"""explain: z-map, disagreement regions, lesion fidelity, Grad-CAM / HiResCAM, uncertainty."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_neurosynth import load_model, make_phantom, synthesize
from napari_neurosynth.bundle import Model
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.explain import (
    dice,
    difference_map,
    disagreement_regions,
    gradcam,
    lesion_fidelity,
    roc_auc,
    uncertainty,
)
from napari_neurosynth.io import Volume
from napari_neurosynth.networks import build_network

PLAQUE = 3  # lesion_mask label of the T1-isointense, T2-bright plaque


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plaque_case():
    """The acceptance case: a 3 mm phantom with plaques only, and the shipped t1_to_t2 synthesis."""
    ph = make_phantom(seed=0, lesions=["plaque"], resolution=3.0, tissues=True)
    model = load_model("t1_to_t2")
    synth = ph["t2"].with_data(synthesize(model, ph["t1"], device="cpu"))
    return ph, model, synth


def _card(inputs, arch, context=0):
    return {
        "name": "scratch",
        "version": "0",
        "task": "cms",
        "inputs": list(inputs),
        "output": "t2",
        "architecture": arch,
        "normalization": {"method": "percentile", "percentile": 99.5, "foreground_fraction": 0.1},
        "slicing": {"plane": "axial", "context": context},
    }


def _model(name, inputs=("t1",), context=0, seed=0, **args):
    """A real (untrained, seeded) generator from build_network wrapped as a Model."""
    torch.manual_seed(seed)
    net = build_network(name, **args).eval()
    return Model(_card(inputs, net.architecture, context), net, Path("."), "scratch")


def _mass_near(cam, centre, radius):
    idx = np.indices(cam.shape)
    d = np.sqrt(sum((i - c) ** 2 for i, c in zip(idx, centre)))
    return float(cam[d <= radius].sum() / cam.sum())


# --------------------------------------------------------------------------- z-map and regions


def test_zmap_is_robustly_standardised_and_ignores_global_scale():
    rng = np.random.default_rng(0)
    t = 500.0 + 50 * ndi.gaussian_filter(rng.random((30, 30, 30)), 2)
    t += rng.normal(0, 5, t.shape)
    brain = np.zeros(t.shape, bool)
    brain[3:27, 3:27, 3:27] = True
    synth = t / t[brain].max() + rng.normal(0, 0.01, t.shape)  # normalised units, unlike t
    synth[10:14, 10:14, 10:14] += 0.3  # invented bright blob
    z = difference_map(synth, t, brain)
    normal = brain.copy()
    normal[9:15, 9:15, 9:15] = False
    assert abs(np.median(z[normal])) < 0.05
    assert 0.9 < 1.4826 * np.median(np.abs(z[normal])) < 1.1
    assert z[10:14, 10:14, 10:14].min() > 5  # synthesis brighter -> positive
    assert np.all(z[~brain] == 0)
    # Without normalisation the 500x scale mismatch swamps the blob.
    blob = np.zeros(t.shape, bool)
    blob[10:14, 10:14, 10:14] = True
    assert roc_auc(z[brain], blob[brain]) > 0.99
    z_global = difference_map(synth, t, brain, spread="global")
    assert z_global[blob].min() > 5 and roc_auc(z_global[brain], blob[brain]) > 0.99
    # With neither normalisation nor the smooth intensity-ratio correction the mismatch swamps it ...
    z_raw = difference_map(synth, t, brain, normalize=False, bias_mm=None)
    assert roc_auc(z_raw[brain], blob[brain]) < 0.9
    # ... while the ratio field alone (it absorbs a global scale too) already recovers it.
    z_ratio = difference_map(synth, t, brain, normalize=False)
    assert roc_auc(z_ratio[brain], blob[brain]) > 0.99


def _neighbour_corr(z, inside):
    """Correlation of z between face neighbours along axis 0 inside a mask: 0 for speckle, -> 1 when smooth."""
    both = inside[:-1] & inside[1:]
    return float(np.corrcoef(z[:-1][both], z[1:][both])[0, 1])


def test_smoothing_lifts_a_faint_blob_out_of_white_noise_up_to_the_brain_edge():
    rng = np.random.default_rng(0)
    t = 1 + 0.05 * rng.standard_normal((30, 30, 30))
    s = t + 0.05 * rng.standard_normal(t.shape)
    brain = np.zeros(t.shape, bool)
    brain[3:27, 3:27, 3:27] = True
    blob = np.zeros(t.shape, bool)
    blob[3:9, 10:16, 10:16] = True  # touches the brain mask's face at index 3
    s[blob] += 0.12  # ~1.7 noise SDs per voxel: invisible voxel by voxel
    kw = dict(normalize=False, spread="global", bias_mm=None)
    z0 = difference_map(s, t, brain, **kw)
    z = difference_map(s, t, brain, smooth_mm=1.5, **kw)
    # smoothing 0 (or None) is the unsmoothed map, bit for bit
    np.testing.assert_array_equal(difference_map(s, t, brain, smooth_mm=0, **kw), z0)
    np.testing.assert_array_equal(difference_map(s, t, brain, smooth_mm=None, **kw), z0)
    assert np.all(z[~brain] == 0) and np.isfinite(z).all()
    # re-standardised: z is relative to the spread of the smoothed residual
    normal = brain & ~ndi.binary_dilation(blob, iterations=3)
    assert abs(np.median(z[normal])) < 0.1 and 0.9 < 1.4826 * np.median(np.abs(z[normal] - np.median(z[normal]))) < 1.1
    assert np.mean(np.abs(z[normal]) >= 3.5) < 0.005
    assert np.median(z0[blob]) < 3 and np.median(z[blob]) > 3 * np.median(z0[blob])
    assert roc_auc(np.abs(z0[brain]), blob[brain]) < 0.95 < 0.99 < roc_auc(np.abs(z[brain]), blob[brain])
    # normalised convolution: the blob's layer on the brain edge is not pulled towards the zeros outside
    assert np.median(z[3][blob[3]]) > 0.95 * np.median(z[blob])  # zero padding: ~0.78
    labels, _ = disagreement_regions(z)
    assert dice(labels > 0, blob) > 0.5 > dice(disagreement_regions(z0)[0] > 0, blob)
    # millimetres, not voxels: 3 mm on a 2 mm grid is 1.5 voxels
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    z_mm = difference_map(Volume(s, aff), Volume(t, aff), Volume(brain.astype(np.uint8), aff), smooth_mm=3.0, **kw)
    np.testing.assert_allclose(z_mm, z, atol=1e-6)
    with pytest.raises(NeurosynthError, match="smooth_mm"):
        difference_map(s, t, brain, smooth_mm=-1.0, **kw)


def test_smoothing_keeps_the_erased_plaques_and_trades_speckle_for_coherence(plaque_case):
    """On the shipped t1_to_t2 at 3 mm: a mild smoothing keeps every plaque and their AUC,
    outside the brain stays 0, and the map becomes spatially coherent (no voxel speckle)."""
    ph, _, synth = plaque_case
    t2, brain, lesion = ph["t2"], ph["brain_mask"].data > 0, ph["lesion_mask"].data == PLAQUE
    plaques, n_plaques = ndi.label(lesion, np.ones((3, 3, 3)))
    z0 = difference_map(synth, t2, ph["brain_mask"])
    auc0, corr0 = roc_auc(np.abs(z0[brain]), lesion[brain]), _neighbour_corr(z0, brain)
    for sigma in (1.0, 1.5):
        z = difference_map(synth, t2, ph["brain_mask"], smooth_mm=sigma)
        auc, corr = roc_auc(np.abs(z[brain]), lesion[brain]), _neighbour_corr(z, brain)
        labels, table = disagreement_regions(Volume(z, t2.affine))
        print(
            f"smooth_mm={sigma}: plaque AUC {auc:.4f} (unsmoothed {auc0:.4f}), neighbour correlation "
            f"{corr:.3f} ({corr0:.3f}), Dice {dice(labels > 0, lesion):.3f}, regions {len(table)}"
        )
        assert auc >= auc0 - 0.002
        assert all((labels[plaques == i] > 0).any() for i in range(1, n_plaques + 1))
        assert np.all(z[~brain] == 0)
        assert corr >= corr0
    assert corr > corr0 + 0.1  # at 1.5 mm (half a voxel) the speckle is visibly gone


def test_regions_table_world_units_sign_and_order():
    affine = np.array([[2.0, 0, 0, -10], [0, 2, 0, 20], [0, 0, 3, 5], [0, 0, 0, 1]])
    z = np.zeros((20, 20, 20), np.float32)
    z[2:4, 2:4, 2:4] = -6  # 8 voxels, darker
    z[10:13, 10:13, 10:13] = 4.5  # 27 voxels, brighter
    z[10:13, 10:13, 13] = 2.5  # rim: joins the bright region by hysteresis only
    z[17, 17, 17] = 9  # single voxel: below the minimum size
    labels, table = disagreement_regions(Volume(z, affine), threshold=3, grow=2, min_voxels=4)
    assert [r["label"] for r in table] == [1, 2]
    big, small = table
    assert big["voxels"] == 36 and big["mm3"] == pytest.approx(36 * 12.0)
    assert big["sign"] == 1 and big["direction"] == "synthesis brighter"
    assert small["voxels"] == 8 and small["direction"] == "synthesis darker" and small["mean_z"] == pytest.approx(-6)
    assert small["centroid_world"] == pytest.approx([-10 + 2 * 2.5, 20 + 2 * 2.5, 5 + 3 * 2.5])
    assert labels[17, 17, 17] == 0 and (labels == 1).sum() == 36
    # no growing: the rim is left out; mm3 threshold needs a voxel size
    _, table2 = disagreement_regions(Volume(z, affine), threshold=3, grow=None, min_voxels=1)
    assert [r["voxels"] for r in table2] == [27, 8, 1]
    with pytest.raises(NeurosynthError, match="voxel size"):
        disagreement_regions(z, min_mm3=50)


def test_difference_map_rejects_bad_input():
    t = np.ones((8, 8, 8))
    with pytest.raises(NeurosynthError, match="different grids"):
        difference_map(t[:-1], t, t)
    with pytest.raises(NeurosynthError, match="empty"):
        difference_map(t, t, np.zeros_like(t))
    bad = t.copy()
    bad[1, 1, 1] = np.inf
    with pytest.raises(NeurosynthError, match="NaN or Inf"):
        difference_map(bad, t, t)


def test_lesion_fidelity_flags_invented_and_keeps_preserved(phantom3):
    t2, brain, lesion = phantom3["t2"], phantom3["brain_mask"], phantom3["lesion_mask"]
    rng = np.random.default_rng(0)
    synth = ndi.gaussian_filter(t2.data, 0.4) + rng.normal(0, 5, t2.shape)  # a faithful, smoother copy
    # invent a bright "lesion" in a homogeneous patch of brain far from the real ones
    mean = ndi.uniform_filter(t2.data.astype(float), 3)
    var = ndi.uniform_filter(t2.data.astype(float) ** 2, 3) - mean**2
    far = ndi.binary_erosion(brain.data > 0, iterations=3) & (ndi.distance_transform_edt(lesion.data == 0) > 6)
    # in white matter (the darker half of the brain on T2, away from the iron-dark nuclei), not in cortex
    # next to CSF, where the ring's own contrast would hide the blob
    t2_brain = t2.data[brain.data > 0]
    wm_like = (mean > np.percentile(t2_brain, 15)) & (mean < np.median(t2_brain))
    centre = np.unravel_index(np.argmin(np.where(far & wm_like, var / mean**2, np.inf)), t2.shape)
    blob = np.zeros(t2.shape, bool)
    blob[tuple(slice(c - 1, c + 2) for c in centre)] = True
    synth[blob] *= 1.8
    result = lesion_fidelity(t2.with_data(synth), t2, lesion=lesion, mask=brain)
    assert result["n_erased"] == 0
    statuses = {les["status"] for les in result["lesions"]}
    assert statuses <= {"preserved", "not visible"} and "preserved" in statuses
    assert all(les["retained"] > 0.7 for les in result["lesions"] if les["status"] == "preserved")
    # every lesion kind of the phantom is measured (its label values, whatever kinds it has)
    assert {les["label"] for les in result["lesions"]} == {int(v) for v in np.unique(lesion.data) if v}
    hit = [
        r
        for r in result["invented"]
        if np.linalg.norm(np.array(r["centroid_world"]) - (t2.affine @ np.r_[centre, 1])[:3]) < 6
    ]
    assert len(hit) == 1 and hit[0]["synthesized_contrast"] > 0.2 and hit[0]["direction"] == "synthesis brighter"


# --------------------------------------------------------------------------- acceptance: erased plaque


def test_t1_to_t2_misses_t1_isointense_plaque_and_the_zmap_finds_it(plaque_case):
    ph, _, synth = plaque_case
    t2, brain, lesion = ph["t2"], ph["brain_mask"].data > 0, ph["lesion_mask"].data == PLAQUE
    assert lesion.sum() > 50
    z = difference_map(synth, t2, ph["brain_mask"])
    auc = roc_auc(np.abs(z[brain]), lesion[brain])
    labels, table = disagreement_regions(Volume(z, t2.affine))
    d = dice(labels > 0, lesion)
    print(
        f"plaque ROC AUC |z| = {auc:.4f}, AUC -z = {roc_auc(-z[brain], lesion[brain]):.4f}, "
        f"Dice = {d:.3f}, regions = {len(table)}"
    )
    assert auc >= 0.95
    # the phantom-v2 t1_to_t2 gives Dice 0.46 at the default threshold (0.5+ with the v1 model)
    assert d >= 0.4
    # the regions over the plaques say "synthesis darker" (the plaque is missing)
    over = [r for r in table if (lesion & (labels == r["label"])).any()]
    assert over and all(r["direction"] == "synthesis darker" for r in over)

    fid = lesion_fidelity(synth, t2, lesion=ph["lesion_mask"], mask=ph["brain_mask"], wm=ph["wm"].data > 0.5)
    visible = [les for les in fid["lesions"] if les["status"] != "not visible"]
    print(
        "plaque fidelity (acquired -> synthesized contrast, status):",
        [
            (round(les["acquired"]["contrast"], 2), round(les["synthesized"]["contrast"], 2), les["status"])
            for les in fid["lesions"]
        ],
        "invented:",
        fid["n_invented"],
    )
    assert visible and all(les["erased"] for les in visible)
    assert all(les["acquired"]["contrast"] > 0.2 and les["acquired"]["cnr"] > 2 for les in visible)
    assert all(abs(les["synthesized"]["contrast"]) < 0.3 * les["acquired"]["contrast"] for les in visible)
    assert fid["n_erased"] == len(visible) and fid["n_invented"] == 0  # nothing lesion-like was made up


# --------------------------------------------------------------------------- Grad-CAM / HiResCAM


def test_cam_maps_are_on_the_input_grid_in_unit_range(phantom3):
    t1 = phantom3["t1"]
    model = _model("resnet", in_channels=1, base=8, n_blocks=2)
    roi = (slice(30, 34), slice(38, 42), 30)
    for method in ("hirescam", "gradcam"):
        cam = gradcam(model, t1, roi, method=method)  # default layer: the ResNet's "trunk"
        assert cam.shape == t1.shape and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        assert cam[..., :30].max() == 0 and cam[..., 31:].max() == 0  # only the ROI's slice is explained


def test_gradcam_layers_per_input_and_errors(phantom3):
    t1, t2 = phantom3["t1"], phantom3["t2"]
    fusion = _model("fusion", inputs=("t1", "t2"), context=1, n_inputs=2, channels_per_input=3, base=8, n_blocks=1)
    roi = np.zeros(t1.shape, bool)
    roi[30:33, 38:41, 30] = True
    maps = gradcam(fusion, [t1, t2], roi, per_input=True)
    assert set(maps) == {"t1", "t2"}
    assert max(m.max() for m in maps.values()) == pytest.approx(1.0)  # one scale shared by the inputs
    for m in maps.values():
        assert m.shape == t1.shape and m.max() > 0
        # 2.5-D context: the neighbouring input slices get their own share, nothing further away
        assert m[..., 29:32].sum() > 0 and m[..., :29].max() == 0 and m[..., 32:].max() == 0
    # a network without default_cam_layer: the last convolution at the lowest resolution
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
    )
    plain_model = Model(_card(["t1"], {"name": "custom", "args": {}}), plain.eval(), Path("."), "plain")
    assert gradcam(plain_model, t1, roi).max() == pytest.approx(1.0)
    unet = _model("unet", in_channels=1, base=8, depth=2)
    cam = gradcam(unet, t1, roi, layer="encoders.1")
    assert cam.max() == pytest.approx(1.0)
    with pytest.raises(NeurosynthError, match="not a submodule"):
        gradcam(unet, t1, roi, layer="no.such.layer")
    with pytest.raises(NeurosynthError, match="empty"):
        gradcam(unet, t1, np.zeros(t1.shape, bool))
    with pytest.raises(NeurosynthError, match="off the output grid"):
        gradcam(unet, t1, np.ones((10, 10, 10), bool))
    with pytest.raises(NeurosynthError, match="off the output grid"):
        gradcam(unet, t1, (slice(60, 80), slice(0, 5), 3))
    with pytest.raises(NeurosynthError, match="unknown CAM method"):
        gradcam(unet, t1, roi, method="saliency")


@pytest.mark.parametrize("layer", ["input", "encoders.1"])
def test_gradcam_forward_pass_is_the_synthesis(phantom3, layer):
    """Grad-CAM runs the network on the slice plan's batches: the output it scores is
    exactly what synthesize() produces (crop=False) on the same slices, here for a
    2.5-D, two-input U-Net whose size divisor (4) forces padding of the 3 mm slices."""
    t1, t2 = phantom3["t1"], phantom3["t2"]
    model = _model("unet", inputs=("t1", "t2"), context=1, in_channels=6, base=8, depth=2)
    assert model.network.size_divisor == 4 and t1.shape[0] % 4 and t1.shape[1] % 4
    k = t1.shape[2] // 2
    roi = np.zeros(t1.shape, bool)
    roi[30:34, 38:42, k - 1 : k + 2] = True  # three slices, one batch
    captured = []
    hook = model.network.register_forward_hook(lambda _m, inp, out: captured.append((inp[0].detach(), out.detach())))
    try:
        gradcam(model, [t1, t2], roi, layer=layer)
    finally:
        hook.remove()
    # the last forward is the scored batch (captum may run more than one; the layer search runs one slice)
    x, y = captured[-1]
    assert tuple(x.shape[:2]) == (3, 6) and x.shape[-2] % 4 == 0 and x.shape[-1] % 4 == 0
    H, W = t1.shape[:2]
    out = synthesize(model, [t1, t2], device="cpu", crop=False)
    np.testing.assert_allclose(y[:, 0, :H, :W].numpy(), np.moveaxis(out[..., k - 1 : k + 2], 2, 0), atol=1e-5, rtol=0)


def test_trained_cam_is_local_and_fails_model_randomization(plaque_case):
    """HiResCAM of the shipped t1_to_t2 stays near the ROI (Grad-CAM spreads), and it changes when
    the weights are randomized (the model-randomization check of Adebayo et al. 2018)."""
    ph, model, _ = plaque_case
    t1 = ph["t1"]
    k = t1.shape[2] // 2
    roi = (slice(30, 34), slice(38, 42), k)
    centre = (31.5, 39.5, k)
    hires = gradcam(model, t1, roi)
    pooled = gradcam(model, t1, roi, method="gradcam")
    near_hi, near_gc = _mass_near(hires, centre, 8), _mass_near(pooled, centre, 8)
    print(f"CAM mass within 8 voxels (24 mm) of the ROI: HiResCAM {near_hi:.3f}, Grad-CAM {near_gc:.3f}")
    assert near_hi > 0.5
    assert near_hi > 2 * near_gc

    randomized = copy.copy(model)
    torch.manual_seed(123)
    arch = model.card["architecture"]
    randomized.network = build_network(arch["name"], **arch["args"]).eval()
    rand = gradcam(randomized, t1, roi)
    r = float(np.corrcoef(hires[..., k].ravel(), rand[..., k].ravel())[0, 1])
    print(f"trained vs randomized HiResCAM correlation: {r:.3f}")
    assert r < 0.5


# --------------------------------------------------------------------------- uncertainty


def test_uncertainty_tta_and_mc_dropout(phantom3):
    # a block of the head keeps this quick: each sample is a full synthesis
    t1 = phantom3["t1"]
    t1 = Volume(np.ascontiguousarray(t1.data[8:56, 12:64, 26:34]), t1.affine)
    brain = phantom3["brain_mask"].data[8:56, 12:64, 26:34] > 0
    model = _model("resnet", in_channels=1, base=8, n_blocks=1)
    std = uncertainty(model, t1, shifts=((0, 0), (2, 1)))
    assert std.shape == t1.shape and std.dtype == np.float32 and np.isfinite(std).all()
    assert std[brain].mean() > 0
    # a network with dropout gets MC-dropout samples on top of the augmentations
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Dropout2d(0.5),
        torch.nn.Conv2d(8, 1, 3, padding=1),
    ).eval()
    drop = Model(_card(["t1"], {"name": "custom", "args": {}}), net, Path("."), "dropout")
    mean, std_mc = uncertainty(drop, t1, shifts=((0, 0),), flips=False, n_dropout=3, return_mean=True)
    assert std_mc[brain].mean() > 0 and mean.shape == t1.shape
    std_none = uncertainty(drop, t1, shifts=((0, 0),), flips=False, n_dropout=0)
    assert np.all(std_none == 0)  # one deterministic pass: no spread
