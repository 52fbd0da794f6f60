"""The MNI152 multi-contrast phantom: grids, reproducibility, MR physics, lesions, noise, CLI, napari sample."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from napari_neurosynth import make_phantom, read_volume
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.phantom import SEQUENCES, TISSUES, flair_null_ti, tissue_signal

KEYS = {"t1", "t2", "pd", "flair", "brain_mask", "lesion_mask", "t2_lowres"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tissues3():
    """Seed 0 at 3 mm with the tissue fractions (identical images to ``phantom3``)."""
    return make_phantom(seed=0, lesions=True, resolution=3.0, tissues=True)


def _median(volume, mask):
    assert mask.sum() >= 5, "too few voxels for a robust median"
    return float(np.median(volume.data[mask]))


def _pure(ph, tissue):
    """Voxels with > 90 % of one tissue, two voxels away from any lesion."""
    near_lesion = ndi.binary_dilation(ph["lesion_mask"].data > 0, iterations=2)
    return (ph[tissue].data > 0.9) & ~near_lesion


# ----------------------------------------------------------------------------- grids


def test_keys_dtypes_and_shared_grid(phantom3):
    assert KEYS <= set(phantom3)
    t1 = phantom3["t1"]
    assert t1.shape == (66, 78, 63) and t1.spacing == (3.0, 3.0, 3.0)
    for key in ("t1", "t2", "pd", "flair"):
        assert phantom3[key].data.dtype == np.float32
        assert phantom3[key].data.min() >= 0 and np.isfinite(phantom3[key].data).all()
        assert phantom3[key].metadata["modality"] == key
    for key in KEYS - {"t2_lowres"}:
        assert phantom3[key].shape == t1.shape
        np.testing.assert_array_equal(phantom3[key].affine, t1.affine)
        assert phantom3[key].metadata["seed"] == 0 and phantom3[key].metadata["resolution"] == 3.0
        assert phantom3[key].metadata["parameters"]["noise"] == 0.02
    assert phantom3["brain_mask"].data.dtype == np.uint8
    assert set(np.unique(phantom3["brain_mask"].data)) == {0, 1}
    assert phantom3["lesion_mask"].data.dtype == np.uint8
    assert set(np.unique(phantom3["lesion_mask"].data)) == {0, 1, 2, 3}
    # RAS+: the affine is diagonal positive, centred on the MNI field of view
    assert np.all(np.diag(t1.affine)[:3] > 0)
    centre = t1.affine @ np.r_[(np.array(t1.shape) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], [0.0, -18.0, 22.0], atol=1e-6)
    # the brain occupies ~ the adult brain volume (1.2-1.9 l incl. ventricles / CSF)
    brain_ml = phantom3["brain_mask"].data.sum() * 27 / 1000
    assert 1200 < brain_ml < 2000


@pytest.mark.slow
def test_one_mm_grid_is_the_template_grid():
    ph = make_phantom(seed=0, lesions=False, resolution=1.0, noise=0.0, bias=0.0)
    assert ph["t1"].shape == (197, 233, 189)
    np.testing.assert_allclose(ph["t1"].affine[:3, 3], [-98.0, -134.0, -72.0])


def test_lowres_t2_has_thick_slices_at_the_right_place(phantom3):
    hi, low = phantom3["t2"], phantom3["t2_lowres"]
    assert low.data.dtype == np.float32
    assert low.spacing == pytest.approx((3.0, 3.0, 12.0))
    assert low.shape[:2] == hi.shape[:2] and low.shape[2] == -(-hi.shape[2] // 4)
    np.testing.assert_array_equal(low.affine[:3, :2], hi.affine[:3, :2])
    # world extent along S: both start at the same slice edge; low-res ends within one slab
    hi_lo = hi.affine[2, 3] - 1.5
    hi_hi = hi.affine[2, 3] + (hi.shape[2] - 1) * 3.0 + 1.5
    low_lo = low.affine[2, 3] - 6.0
    low_hi = low.affine[2, 3] + (low.shape[2] - 1) * 12.0 + 6.0
    assert low_lo == pytest.approx(hi_lo)
    assert 0 <= low_hi - hi_hi < 12.0
    # each slab is the mean of its four thin slices (independent noise, same anatomy)
    n = hi.shape[2] // 4
    slabs = hi.data[..., : 4 * n].reshape(*hi.shape[:2], n, 4).mean(-1)
    head = slabs > 0.1 * slabs.max()
    ratio = np.median(low.data[..., :n][head] / slabs[head])
    assert ratio == pytest.approx(1.0, abs=0.03)
    assert np.corrcoef(low.data[..., :n][head], slabs[head])[0, 1] > 0.97
    # the world position of a low-res voxel centre is the centre of its slab
    k = 5
    centre_low = (low.affine @ [0, 0, k, 1])[2]
    centre_hi = np.mean([(hi.affine @ [0, 0, 4 * k + j, 1])[2] for j in range(4)])
    assert centre_low == pytest.approx(centre_hi)


# ----------------------------------------------------------------------------- seeds


def test_same_seed_same_arrays(phantom3):
    again = make_phantom(seed=0, lesions=True, resolution=3.0)
    for key in KEYS:
        np.testing.assert_array_equal(again[key].data, phantom3[key].data)
        np.testing.assert_array_equal(again[key].affine, phantom3[key].affine)


def test_other_seed_is_another_subject(phantom3):
    other = make_phantom(seed=1, lesions=True, resolution=3.0)
    assert not np.array_equal(other["t1"].data, phantom3["t1"].data)
    # anatomy, not just noise: the noise-free images and the brain masks differ
    a = make_phantom(seed=0, lesions=False, resolution=3.0, noise=0.0, bias=0.0)
    b = make_phantom(seed=1, lesions=False, resolution=3.0, noise=0.0, bias=0.0)
    ma, mb = a["brain_mask"].data > 0, b["brain_mask"].data > 0
    dice = 2 * (ma & mb).sum() / (ma.sum() + mb.sum())
    assert 0.8 < dice < 0.99  # a few mm of deformation and a few % of head size
    assert (ma != mb).sum() > 1000
    assert np.abs(a["t1"].data - b["t1"].data).mean() > 20
    # lesions are elsewhere too
    centres0 = [l["centre_mm"] for l in phantom3["lesion_mask"].metadata["lesions"]]
    centres1 = [l["centre_mm"] for l in other["lesion_mask"].metadata["lesions"]]
    assert centres0 != centres1


def test_same_subject_at_every_resolution(phantom3):
    ph2 = make_phantom(seed=0, lesions=["tumour"], resolution=2.0)
    tumour3 = phantom3["lesion_mask"].metadata["lesions"][0]
    tumour2 = ph2["lesion_mask"].metadata["lesions"][0]
    assert tumour3["kind"] == tumour2["kind"] == "tumour"
    assert tumour3["centre_mm"] == tumour2["centre_mm"]


def test_no_deformation_gives_the_template_anatomy():
    a = make_phantom(seed=0, lesions=False, resolution=3.0, noise=0.0, bias=0.0, deform=False)
    b = make_phantom(seed=5, lesions=False, resolution=3.0, noise=0.0, bias=0.0, deform=False)
    np.testing.assert_array_equal(a["t1"].data, b["t1"].data)


# ----------------------------------------------------------------------------- physics


def test_signal_equations_match_the_stated_sequences():
    # the FLAIR inversion time nulls CSF for its TR
    flair = SEQUENCES["flair"]
    assert flair.ti == round(flair_null_ti(TISSUES["csf"].t1, flair.tr))
    assert 2000 < flair.ti < 2900
    assert abs(tissue_signal("csf", "flair")) < 1e-3
    # spin echo by hand for WM on T1w (TR 500, TE 10; T1 832, T2 80, PD 0.69)
    expected = 0.69 * (1 - np.exp(-500 / 832)) * np.exp(-10 / 80)
    assert tissue_signal("wm", "t1") == pytest.approx(expected)


def test_tissue_contrast_orderings(tissues3):
    ph = tissues3
    wm, gm, csf = (_pure(ph, t) for t in ("wm", "gm", "csf"))
    med = {c: {t: _median(ph[c], m) for t, m in (("wm", wm), ("gm", gm), ("csf", csf))} for c in SEQUENCES}
    assert med["t1"]["wm"] > 1.1 * med["t1"]["gm"] > 1.1 * med["t1"]["csf"]
    assert med["t2"]["csf"] > 1.3 * med["t2"]["gm"] > 1.3 * med["t2"]["wm"]
    assert med["pd"]["csf"] > 1.05 * med["pd"]["gm"] > 1.05 * med["pd"]["wm"]
    # FLAIR: CSF nulled, darker than both tissues (only noise and partial volume left)
    assert med["flair"]["csf"] < 0.25 * med["flair"]["wm"] < 0.25 * med["flair"]["gm"]
    # scanner-like scale: WM on T1 in the hundreds
    assert 300 < med["t1"]["wm"] < 1500


def _local_ratio(ph, contrast, region, wm_pure):
    """Median in ``region`` over median of the pure WM within 9 mm around it."""
    ring = ndi.binary_dilation(region, iterations=3) & wm_pure
    return _median(ph[contrast], region) / _median(ph[contrast], ring)


def test_plaques_bright_on_t2_and_flair_yet_isointense_on_t1(tissues3):
    ph = tissues3
    lesion = ph["lesion_mask"].data
    wm_pure = (ph["wm"].data > 0.9) & ~ndi.binary_dilation(lesion > 0, iterations=1)
    plaques = lesion == 3
    components, n = ndi.label(plaques)
    assert n >= 3
    # at 3 mm each plaque still covers several voxels
    sizes = ndi.sum(plaques, components, range(1, n + 1))
    assert sizes.min() >= 4
    assert _local_ratio(ph, "t2", plaques, wm_pure) > 1.3
    assert _local_ratio(ph, "flair", plaques, wm_pure) > 1.3
    assert abs(_local_ratio(ph, "t1", plaques, wm_pure) - 1.0) < 0.05
    # the radiologist's view of each plaque on its own: T2-bright, T1-isointense
    for i in range(1, n + 1):
        one = components == i
        assert _local_ratio(ph, "t2", one, wm_pure) > 1.2
        assert abs(_local_ratio(ph, "t1", one, wm_pure) - 1.0) < 0.1


def test_tumour_core_and_oedema_bright_on_t2_dark_on_t1(tissues3):
    ph = tissues3
    lesion = ph["lesion_mask"].data
    wm_pure = (ph["wm"].data > 0.9) & ~ndi.binary_dilation(lesion > 0, iterations=1)
    tumour = (lesion == 1) | (lesion == 2)
    for label in (1, 2):
        region = lesion == label
        assert region.sum() >= 10
        ring = ndi.binary_dilation(tumour, iterations=3) & wm_pure
        assert _median(ph["t2"], region) > 1.5 * _median(ph["t2"], ring)
        assert _median(ph["flair"], region) > 1.1 * _median(ph["flair"], ring)
        assert _median(ph["t1"], region) < 0.95 * _median(ph["t1"], ring)
    # oedema surrounds the core
    core = lesion == 1
    shell = ndi.binary_dilation(core, iterations=2) & ~core
    assert (lesion[shell] == 2).mean() > 0.3


def test_head_outside_the_brain(phantom3):
    """Scalp fat is bright on T1, the skull is dark, air is ~0 (noise only)."""
    t1 = phantom3["t1"].data
    brain = phantom3["brain_mask"].data > 0
    sigma = phantom3["t1"].metadata["noise_sigma"]
    outside = ~ndi.binary_dilation(brain, iterations=2)
    head = ndi.binary_fill_holes(ndi.gaussian_filter(t1, 1) > 8 * sigma) & outside
    assert head.sum() > 5000
    wm_level = np.median(t1[brain & (t1 > np.percentile(t1[brain], 70))])
    assert np.percentile(t1[head], 95) > 1.2 * wm_level  # fat
    assert np.percentile(t1[head], 5) < 0.2 * wm_level  # cortical bone
    corner = t1[:8, :8, -8:]
    assert corner.mean() < 3 * sigma


# ----------------------------------------------------------------------------- lesion options


def test_lesion_kinds():
    none = make_phantom(seed=2, lesions=False, resolution=4.0)
    assert not none["lesion_mask"].data.any()
    assert none["lesion_mask"].metadata["lesions"] == []
    plaque = make_phantom(seed=2, lesions=["plaque"], resolution=4.0)
    assert set(np.unique(plaque["lesion_mask"].data)) == {0, 3}
    tumour = make_phantom(seed=2, lesions=["tumor"], resolution=4.0)
    assert set(np.unique(tumour["lesion_mask"].data)) == {0, 1, 2}
    # the lesion choice does not change the noise realisation: in the air the two
    # images differ only by the noise level (set from each image's bright level)
    ratio = none["t1"].data[:5, :5, -5:] / plaque["t1"].data[:5, :5, -5:]
    assert ratio.std() < 1e-4 * ratio.mean()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lesions": ["cyst"]}, "unknown lesion kind"),
        ({"resolution": 0.1}, "resolution"),
        ({"seed": -1}, "seed"),
        ({"noise": -0.5}, "noise"),
        ({"lowres_factor": 0}, "lowres_factor"),
    ],
)
def test_bad_arguments_raise_a_clear_error(kwargs, match):
    with pytest.raises(NeurosynthError, match=match):
        make_phantom(**{"resolution": 4.0, **kwargs})


# ----------------------------------------------------------------------------- acquisition effects


def _head_centroid(volume):
    """World centroid (mm) of the head silhouette."""
    data = ndi.gaussian_filter(volume.data, 1.0)
    mask = ndi.binary_fill_holes(data > 0.15 * np.percentile(data, 99))
    idx = np.array(ndi.center_of_mass(mask))
    return (volume.affine @ np.r_[idx, 1.0])[:3]


def test_misalignment_moves_t2_only_when_asked(phantom3):
    # default: all contrasts share the anatomy's position
    assert "motion" not in phantom3["t2"].metadata
    np.testing.assert_allclose(_head_centroid(phantom3["t2"]), _head_centroid(phantom3["t1"]), atol=0.5)
    moved = make_phantom(seed=0, lesions=True, resolution=3.0, misalignment=4.0)
    np.testing.assert_array_equal(moved["t1"].data, phantom3["t1"].data)
    motion = moved["t2"].metadata["motion"]
    assert max(abs(v) for v in motion["rotation_deg"] + motion["translation_mm"]) <= 4.0
    world = np.array(motion["world_transform"])
    before = _head_centroid(phantom3["t2"])
    after = _head_centroid(moved["t2"])
    expected = world[:3, :3] @ before + world[:3, 3]
    assert np.linalg.norm(expected - before) > 1.5  # it really moved ...
    np.testing.assert_allclose(after, expected, atol=1.0)  # ... by the recorded rigid motion
    for key in ("pd", "flair"):
        assert "motion" in moved[key].metadata
    assert moved["t2_lowres"].metadata["motion"] == motion


def test_background_noise_is_rician(phantom3):
    t1 = phantom3["t1"]
    sigma = t1.metadata["noise_sigma"]
    d = t1.data
    corners = np.concatenate(
        [d[sx, sy, sz].ravel() for sx in (slice(0, 9), slice(-9, None)) for sy in (slice(0, 9), slice(-9, None))
         for sz in (slice(0, 9), slice(-9, None))]
    )
    assert corners.min() > 0
    # magnitude of complex Gaussian noise on zero signal: Rayleigh(sigma), mean sigma*sqrt(pi/2)
    assert corners.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)
    assert stats.kstest(corners, stats.rayleigh(scale=sigma).cdf).pvalue > 0.001
    assert stats.kstest(corners, stats.norm(corners.mean(), corners.std()).cdf).pvalue < 1e-6
    # a noise-free phantom has a truly black background
    clean = make_phantom(seed=0, lesions=False, resolution=4.0, noise=0.0)
    assert clean["t1"].data[:5, :5, -5:].max() == 0


def test_bias_field_is_smooth_and_bounded():
    flat = make_phantom(seed=3, lesions=False, resolution=4.0, noise=0.0, bias=0.0)
    biased = make_phantom(seed=3, lesions=False, resolution=4.0, noise=0.0, bias=0.2)
    head = flat["t1"].data > 0.05 * flat["t1"].data.max()
    field = biased["t1"].data[head] / flat["t1"].data[head]
    assert field.min() >= np.exp(-0.2) - 1e-4 and field.max() <= np.exp(0.2) + 1e-4
    assert field.max() / field.min() > 1.1
    # different per contrast
    field_t2 = biased["t2"].data[head] / flat["t2"].data[head]
    assert np.abs(field - field_t2).max() > 0.02


# ----------------------------------------------------------------------------- CLI


def test_cli_in_process(tmp_path, capsys):
    from napari_neurosynth.cli import main

    out = tmp_path / "ph"
    rc = main(["phantom", str(out), "--seed", "1", "--resolution", "4", "--lesions", "plaque", "--misalignment", "2"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{k}.nii.gz" for k in KEYS)
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == 7 and "t2_lowres.nii.gz" in printed
    ref = make_phantom(seed=1, lesions=["plaque"], resolution=4.0, misalignment=2.0)
    for key in KEYS:
        vol = read_volume(out / f"{key}.nii.gz")
        np.testing.assert_allclose(vol.affine, ref[key].affine, atol=1e-4)
        np.testing.assert_allclose(vol.data, ref[key].data, rtol=1e-6)
    assert set(np.unique(read_volume(out / "lesion_mask.nii.gz").data)) == {0, 3}


def test_cli_bad_lesion_kind_exits_2(tmp_path, capsys):
    from napari_neurosynth.cli import main

    assert main(["phantom", str(tmp_path / "x"), "--lesions", "cyst", "--resolution", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown lesion kind" in err and len(err.splitlines()) == 1


def test_cli_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("neurosynth")
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "neurosynth"
    out = tmp_path / "healthy"
    proc = subprocess.run(
        [str(exe), "phantom", str(out), "--seed", "3", "--resolution", "4", "--no-lesions"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.nii.gz" for k in KEYS)
    assert "lesions: none" in proc.stdout
    assert not read_volume(out / "lesion_mask.nii.gz").data.any()
    low = read_volume(out / "t2_lowres.nii.gz")
    assert low.spacing == pytest.approx((4.0, 4.0, 16.0))


# ----------------------------------------------------------------------------- napari


def test_sample_data_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-neurosynth", "phantom")
    images = [l for l in viewer.layers if l._type_string == "image"]
    labels = [l for l in viewer.layers if l._type_string == "labels"]
    assert sorted(l.name for l in images) == ["FLAIR", "PD", "T1", "T2"]
    assert sorted(l.name for l in labels) == ["brain mask", "lesions"]
    from napari_neurosynth.viewer.sample_data import SAMPLE_RESOLUTION

    r = SAMPLE_RESOLUTION
    shape = tuple(int(round(n / r)) for n in (197, 233, 189))
    expected = np.diag([r, r, r, 1.0])
    expected[:3, 3] = np.array([0.0, -18.0, 22.0]) - (np.array(shape) - 1) / 2 * r  # centred MNI field of view
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.affine.affine_matrix, expected)
        assert layer.data.shape == shape
    assert viewer.layers["T1"].visible and not viewer.layers["T2"].visible
    assert viewer.layers["lesions"].visible and not viewer.layers["brain mask"].visible
    lo, hi = viewer.layers["T1"].contrast_limits
    assert 0 <= lo < hi
    assert set(np.unique(viewer.layers["lesions"].data)) == {0, 1, 2, 3}
