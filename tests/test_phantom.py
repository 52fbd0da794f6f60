"""The MNI152 multi-contrast phantom v2: grids, reproducibility, MR physics at 1.5 and 3 T, deep grey nuclei,
head, lesion kinds and their visibility, acquisition options, errors, CLI, napari sample."""

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
from napari_neurosynth.phantom import (
    LESION_KIND_LABELS,
    LESION_LABEL_KINDS,
    LESION_LABELS,
    LESION_VISIBILITY,
    NUCLEI_LABELS,
    PROTOCOL_RANGES,
    SEQUENCES,
    TISSUES,
    TISSUES_BY_FIELD,
    flair_null_ti,
    lesion_visibility,
    make_protocol,
    tissue_signal,
)
from napari_neurosynth.phantom.anatomy import vessel_solids
from napari_neurosynth.phantom.template import TEMPLATE_ORIGIN, template_prefiltered

KEYS = {"t1", "t2", "pd", "flair", "brain_mask", "lesion_mask", "t2_lowres"}
IMAGES = ("t1", "t2", "pd", "flair")
REPO = Path(__file__).resolve().parents[1]
IRON_RICH = ("globus_pallidus", "substantia_nigra", "red_nucleus", "dentate")


@pytest.fixture(scope="module")
def tissues3():
    """Seed 0 at 3 mm, 3 T, with the tissue fractions (identical images to ``phantom3``)."""
    return make_phantom(seed=0, lesions=True, resolution=3.0, tissues=True)


@pytest.fixture(scope="module")
def tissues3_15():
    """The same subject at 1.5 T."""
    return make_phantom(seed=0, lesions=True, resolution=3.0, tissues=True, field_strength=1.5)


@pytest.fixture(scope="module")
def healthy2():
    """Seed 4 at 2 mm without lesions or noise: the nuclei and the T1 -> T2 relation."""
    return make_phantom(seed=4, lesions=False, resolution=2.0, tissues=True, noise=0.0, bias=0.0)


@pytest.fixture(scope="module")
def template3():
    """The undeformed template anatomy at 3 mm, noise-free: structures sit at their MNI coordinates."""
    return make_phantom(seed=0, lesions=False, resolution=3.0, noise=0.0, bias=0.0, deform=False, tissues=True)


def _median(volume, mask):
    assert mask.sum() >= 5, "too few voxels for a robust median"
    return float(np.median(volume.data[mask]))


def _pure(ph, tissue):
    """Voxels with > 90 % of one tissue, two voxels away from any lesion or nucleus."""
    near = ndi.binary_dilation((ph["lesion_mask"].data > 0) | (ph["nuclei"].data > 0), iterations=2)
    return (ph[tissue].data > 0.9) & ~near


def _at(volume, mm):
    """Value at the voxel nearest to world point ``mm``."""
    ijk = np.round(np.linalg.inv(volume.affine) @ np.r_[mm, 1.0])[:3].astype(int)
    return float(volume.data[tuple(ijk)])


# ----------------------------------------------------------------------------- grids


def test_keys_dtypes_and_shared_grid(phantom3):
    assert KEYS <= set(phantom3)
    t1 = phantom3["t1"]
    assert t1.shape == (66, 78, 63) and t1.spacing == (3.0, 3.0, 3.0)
    for key in IMAGES:
        assert phantom3[key].data.dtype == np.float32
        assert phantom3[key].data.min() >= 0 and np.isfinite(phantom3[key].data).all()
        assert phantom3[key].metadata["modality"] == key
        assert phantom3[key].metadata["sequence"]["TR_ms"] == SEQUENCES[key].tr
    for key in KEYS - {"t2_lowres"}:
        assert phantom3[key].shape == t1.shape
        np.testing.assert_array_equal(phantom3[key].affine, t1.affine)
        assert phantom3[key].metadata["seed"] == 0 and phantom3[key].metadata["resolution"] == 3.0
        assert phantom3[key].metadata["parameters"]["noise"] == 0.02
        assert phantom3[key].metadata["field_strength_T"] == 3.0
    assert phantom3["brain_mask"].data.dtype == np.uint8
    assert set(np.unique(phantom3["brain_mask"].data)) == {0, 1}
    assert phantom3["lesion_mask"].data.dtype == np.uint8
    assert set(np.unique(phantom3["lesion_mask"].data)) == {0, 1, 2, 3, 4, 5}
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
    # the skull and scalp differ too (their own thickness fields), outside the brain
    outside = ~ndi.binary_dilation(ma | mb, iterations=3)
    assert np.abs(a["t1"].data - b["t1"].data)[outside].mean() > 5
    # lesions are elsewhere too
    centres0 = [les["centre_mm"] for les in phantom3["lesion_mask"].metadata["lesions"]]
    centres1 = [les["centre_mm"] for les in other["lesion_mask"].metadata["lesions"]]
    assert centres0 != centres1


def test_same_subject_at_every_resolution(phantom3):
    ph2 = make_phantom(seed=0, lesions=["tumour"], resolution=2.0)
    tumour3 = phantom3["lesion_mask"].metadata["lesions"][0]
    tumour2 = ph2["lesion_mask"].metadata["lesions"][0]
    assert tumour3["kind"] == tumour2["kind"] == "tumour"
    assert tumour3["centre_mm"] == tumour2["centre_mm"]


def test_no_deformation_gives_the_template_anatomy(template3):
    b = make_phantom(seed=5, lesions=False, resolution=3.0, noise=0.0, bias=0.0, deform=False)
    np.testing.assert_array_equal(template3["t1"].data, b["t1"].data)


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
    # at 1.5 T: the 1.5 T table
    t = TISSUES_BY_FIELD[1.5]["wm"]
    assert tissue_signal("wm", "t1", 1.5) == pytest.approx(t.pd * (1 - np.exp(-500 / t.t1)) * np.exp(-10 / t.t2))


def test_relaxation_tables_at_both_fields():
    t15, t3 = TISSUES_BY_FIELD[1.5], TISSUES_BY_FIELD[3.0]
    assert set(t15) == set(t3)
    for name in ("wm", "gm", "caudate", "putamen", "globus_pallidus", "thalamus", "fat", "muscle", "plaque"):
        assert t15[name].t1 < t3[name].t1, name  # T1 lengthens with B0
        assert t15[name].pd == t3[name].pd  # water content does not
    assert t15["csf"].t1 == t3["csf"].t1  # free water: nearly field independent
    # iron's share of R2 grows with B0: the iron-rich nuclei have a longer T2 at 1.5 T
    for name in IRON_RICH:
        assert t15[name].t2 > t3[name].t2, name
    # the issue's target: globus pallidus T2 ~45-55 ms at 3 T against WM ~70-80 ms
    assert 45 <= t3["globus_pallidus"].t2 <= 55 and 70 <= t3["wm"].t2 <= 80
    for name, tissue in t3.items():
        assert tissue.source, name  # every value says where it comes from


@pytest.mark.parametrize("field", [3.0, 1.5])
def test_tissue_contrast_orderings(field, tissues3, tissues3_15):
    ph = tissues3 if field == 3.0 else tissues3_15
    wm, gm, csf = (_pure(ph, t) for t in ("wm", "gm", "csf"))
    med = {c: {t: _median(ph[c], m) for t, m in (("wm", wm), ("gm", gm), ("csf", csf))} for c in IMAGES}
    assert med["t1"]["wm"] > 1.1 * med["t1"]["gm"] > 1.1 * med["t1"]["csf"]
    assert med["t2"]["csf"] > 1.3 * med["t2"]["gm"] > 1.3 * med["t2"]["wm"]
    assert med["pd"]["csf"] > 1.05 * med["pd"]["gm"] > 1.05 * med["pd"]["wm"]
    # FLAIR: CSF nulled, darker than both tissues (only noise and partial volume left)
    assert med["flair"]["csf"] < 0.25 * med["flair"]["wm"] < 0.25 * med["flair"]["gm"]
    # scanner-like scale: WM on T1 in the hundreds
    assert 300 < med["t1"]["wm"] < 1500


def test_field_strength_changes_contrast_as_expected(tissues3, tissues3_15):
    wm = _pure(tissues3, "wm")
    # shorter T1 at 1.5 T: more recovery at TR 500, so WM is brighter on T1w (same gain)
    assert _median(tissues3_15["t1"], wm) > 1.08 * _median(tissues3["t1"], wm)
    # ... while T2w of WM hardly changes (T2 field independent, TR >> T1)
    assert _median(tissues3_15["t2"], wm) == pytest.approx(_median(tissues3["t2"], wm), rel=0.05)
    # iron darkening of the pallidum on T2w is weaker at 1.5 T
    gp = tissues3["nuclei"].data == 3
    ratio3 = _median(tissues3["t2"], gp) / _median(tissues3["t2"], wm)
    ratio15 = _median(tissues3_15["t2"], gp) / _median(tissues3_15["t2"], wm)
    assert ratio3 < ratio15 - 0.1
    assert tissues3_15["flair"].metadata["sequence"]["TI_ms"] == SEQUENCES["flair"].ti
    assert tissues3_15["t1"].metadata["field_strength_T"] == 1.5


# ----------------------------------------------------------------------------- deep grey nuclei


def test_every_nucleus_is_there_and_in_place(healthy2):
    nuclei = healthy2["nuclei"].data
    assert healthy2["nuclei"].metadata["labels"] == {str(k): v for k, v in NUCLEI_LABELS.items()}
    aff = healthy2["nuclei"].affine
    # expected |x| (mm), y and z ranges of each hemisphere's centroid in MNI space, least volume (ml) per side
    expect = {
        "caudate": (13, (-5, 20), (0, 22), 1.0),
        "putamen": (25, (-8, 12), (-8, 10), 1.8),
        "globus_pallidus": (19, (-12, 4), (-8, 6), 0.4),
        "thalamus": (11, (-26, -10), (0, 14), 2.5),
        "substantia_nigra": (11, (-24, -12), (-17, -6), 0.15),
        "red_nucleus": (5, (-25, -13), (-13, -3), 0.08),
        "dentate": (15, (-64, -48), (-42, -26), 0.4),
    }
    for label, name in NUCLEI_LABELS.items():
        x_abs, yr, zr, ml = expect[name]
        idx = np.argwhere(nuclei == label)
        world = idx * np.diag(aff)[:3] + aff[:3, 3]
        for side in (1, -1):
            half = world[np.sign(world[:, 0]) == side]
            assert len(half) * 8 / 1000 >= ml, (name, side)
            c = half.mean(axis=0)
            assert abs(abs(c[0]) - x_abs) < 5 and yr[0] < c[1] < yr[1] and zr[0] < c[2] < zr[1], (name, c)


def test_striatum_and_thalamus_follow_the_template_grey_matter(template3):
    """Caudate, putamen and thalamus are cut to the GM map; the pallidum (WM-like on that map) is not."""
    gm = template_prefiltered((3.0, 3.0, 3.0))["gm"]
    nuclei = template3["nuclei"]
    share = {}
    for label, name in NUCLEI_LABELS.items():
        world = np.argwhere(nuclei.data == label) * 3.0 + nuclei.affine[:3, 3]
        t = np.round(world - TEMPLATE_ORIGIN).astype(int)  # undeformed: template voxel = world mm
        share[name] = float((gm[t[:, 0], t[:, 1], t[:, 2]] >= 0.3).mean())
    for name in ("caudate", "putamen", "thalamus"):
        assert share[name] > 0.9, (name, share[name])
    assert share["globus_pallidus"] < 0.6


def test_iron_rich_nuclei_are_darker_than_white_matter_on_t2(tissues3, healthy2):
    for ph in (tissues3, healthy2):
        wm = _pure(ph, "wm")
        wm_t1, wm_t2 = _median(ph["t1"], wm), _median(ph["t2"], wm)
        for label, name in NUCLEI_LABELS.items():
            region = ph["nuclei"].data == label
            t1, t2 = _median(ph["t1"], region) / wm_t1, _median(ph["t2"], region) / wm_t2
            if name in IRON_RICH:
                assert t2 < 0.9, (name, t2)  # dark on T2w ...
                assert abs(t1 - 1) < 0.08, (name, t1)  # ... while close to WM on T1w
        gp = ph["nuclei"].data == 3
        assert _median(ph["t2"], gp) < 0.75 * wm_t2  # the pallidum's iron is plain to see


def test_t2_is_not_a_function_of_t1_inside_the_brain(healthy2):
    """The best per-voxel lookup table T1 -> T2 fails in the deep grey nuclei: context is needed."""
    brain = healthy2["brain_mask"].data > 0
    t1, t2 = healthy2["t1"].data[brain], healthy2["t2"].data[brain]
    nuclei = healthy2["nuclei"].data[brain] > 0
    edges = np.quantile(t1, np.linspace(0, 1, 129))
    b = np.clip(np.searchsorted(edges, t1) - 1, 0, 127)
    lut = np.bincount(b, t2, 128) / np.maximum(np.bincount(b, minlength=128), 1)
    resid = t2 - lut[b]
    rms_nuclei, rms_rest = np.sqrt(np.mean(resid[nuclei] ** 2)), np.sqrt(np.mean(resid[~nuclei] ** 2))
    assert rms_nuclei > 2.0 * rms_rest
    # and the iron-rich nuclei are systematically darker than the LUT predicts from their T1
    for label in (3, 5, 6):
        assert np.mean(resid[healthy2["nuclei"].data[brain] == label]) < -0.4 * np.std(t2)
    # the old three-class phantom's LUT explained noise-free T2 almost perfectly (R^2 0.999)
    assert 1 - np.mean(resid**2) / np.var(t2) < 0.99


# ----------------------------------------------------------------------------- head


def test_head_outside_the_brain(phantom3):
    """Scalp fat and diploe are bright on T1, cortical bone is dark, air is ~0 (noise only)."""
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


def test_skull_and_scalp_thickness_varies_over_the_head():
    ph = make_phantom(seed=3, lesions=False, resolution=2.0, noise=0.0, bias=0.0)
    brain = ph["brain_mask"].data > 0
    head = ndi.binary_fill_holes(ph["t1"].data > 30)
    aff = ph["t1"].affine
    k = round((30 - aff[2, 3]) / 2.0)  # axial slice 30 mm above the AC
    centre = np.linalg.inv(aff) @ [0, -18, 30, 1]
    depths = []
    for angle in np.deg2rad(np.arange(0, 360, 10)):
        d = np.array([np.cos(angle), np.sin(angle)])
        r = np.arange(0, 80, 0.25)
        ij = np.round(centre[:2] + r[:, None] * d).astype(int)
        ok = (ij >= 0).all(1) & (ij[:, 0] < brain.shape[0]) & (ij[:, 1] < brain.shape[1])
        b, h = brain[ij[ok, 0], ij[ok, 1], k], head[ij[ok, 0], ij[ok, 1], k]
        depths.append((r[ok][h].max() - r[ok][b].max()) * 2.0)
    depths = np.array(depths)
    assert 8 < np.median(depths) < 30  # CSF rim + skull + scalp: ~1-2 cm
    assert depths.max() - depths.min() > 6  # not a ring of fixed depth (temporalis, diploe, fat vary)


def test_eyes_vessels_and_choroid_plexus(template3):
    ph = template3  # undeformed: structures sit at their MNI coordinates
    wm = {c: _at(ph[c], (28, -20, 30)) for c in IMAGES}  # corona radiata
    for side in (1, -1):
        vitreous = {c: _at(ph[c], (32 * side, 56, -40)) for c in IMAGES}
        assert vitreous["t2"] > 2 * wm["t2"] and vitreous["t1"] < 0.6 * wm["t1"]  # fluid-like
        assert vitreous["flair"] < 0.3 * wm["flair"]  # nulled with CSF
        orbit_fat = _at(ph["t1"], (28 * side, 38, -37))
        assert orbit_fat > 1.2 * wm["t1"]  # orbital fat is bright on T1w
    # flow voids: near-zero signal on every spin-echo contrast in the dural sinuses (the arteries,
    # 1.5-2.3 mm in radius, are sub-voxel at 3 mm)
    sss, transverse = vessel_solids()[8], vessel_solids()[19]
    for point in ((sss.a + sss.b) / 2, (transverse.a + transverse.b) / 2):
        for c in IMAGES:
            assert _at(ph[c], point) < 0.35 * wm[c], (c, point)
    # choroid plexus: a FLAIR-visible tuft in the CSF-nulled atrium
    glomus = _at(ph["flair"], (25, -38, 12))
    assert glomus > 0.6 * wm["flair"]


# ----------------------------------------------------------------------------- lesions


def _ring_ratio(ph, contrast, region, wm_pure):
    """Median in ``region`` over median of the pure WM within 9 mm around it."""
    ring = ndi.binary_dilation(region, iterations=3) & wm_pure
    return _median(ph[contrast], region) / _median(ph[contrast], ring)


@pytest.mark.parametrize("field", [3.0, 1.5])
def test_every_lesion_kind_looks_as_its_visibility_table_says(field, tissues3, tissues3_15):
    ph = tissues3 if field == 3.0 else tissues3_15
    lesion = ph["lesion_mask"].data
    wm_pure = (ph["wm"].data > 0.9) & ~ndi.binary_dilation(lesion > 0, iterations=1)
    table = ph["lesion_mask"].metadata["visibility"]
    assert table == lesion_visibility(field)
    for label, kind in LESION_LABEL_KINDS.items():
        region = lesion == label
        assert region.sum() >= 5, kind
        ref = ndi.binary_dilation((lesion == 1) | (lesion == 2), iterations=0) if label in (1, 2) else region
        for c in IMAGES:
            ratio = _median(ph[c], region) / _median(ph[c], ndi.binary_dilation(ref, iterations=3) & wm_pure)
            expected = table[kind][c]
            if expected == "bright":
                assert ratio > 1.08, (kind, c, ratio)
            elif expected == "dark":
                assert ratio < 0.93, (kind, c, ratio)
            else:
                assert abs(ratio - 1) < 0.06, (kind, c, ratio)


def test_lesion_kinds_have_the_conspicuity_a_radiologist_expects(tissues3):
    ph = tissues3
    lesion = ph["lesion_mask"].data
    wm_pure = (ph["wm"].data > 0.9) & ~ndi.binary_dilation(lesion > 0, iterations=1)
    ratio = {
        (kind, c): _ring_ratio(ph, c, lesion == label, wm_pure)
        for label, kind in LESION_LABEL_KINDS.items()
        for c in IMAGES
    }
    # T1-isointense, T2/FLAIR-bright plaque: what a T1 -> T2 model cannot see
    assert abs(ratio["plaque", "t1"] - 1) < 0.05 and ratio["plaque", "t2"] > 1.3 and ratio["plaque", "flair"] > 1.3
    # chronic black hole: darker than WM on T1w, bright on T2w
    assert ratio["black_hole", "t1"] < 0.85 and ratio["black_hole", "t2"] > 1.5
    # subacute haematoma (methaemoglobin): brighter than WM on T1w and on T2w
    assert ratio["haemorrhage", "t1"] > 1.5 and ratio["haemorrhage", "t2"] > 1.5
    # each plaque on its own: T2-bright, T1-isointense, and still several voxels at 3 mm
    components, n = ndi.label(lesion == 3)
    assert n >= 3
    for i in range(1, n + 1):
        one = components == i
        assert one.sum() >= 4
        assert _ring_ratio(ph, "t2", one, wm_pure) > 1.2
        assert abs(_ring_ratio(ph, "t1", one, wm_pure) - 1.0) < 0.1


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


def test_visibility_table_is_machine_readable():
    assert set(LESION_VISIBILITY) == set(LESION_LABEL_KINDS.values())
    assert set(LESION_LABELS) == set(LESION_LABEL_KINDS) == {1, 2, 3, 4, 5}
    assert {label for labels in LESION_KIND_LABELS.values() for label in labels} == set(LESION_LABELS)
    for _kind, row in LESION_VISIBILITY.items():
        assert set(row) == set(IMAGES)
        assert set(row.values()) <= {"bright", "dark", "invisible"}
    assert LESION_VISIBILITY["plaque"] == {"t1": "invisible", "t2": "bright", "pd": "bright", "flair": "bright"}
    assert LESION_VISIBILITY["black_hole"]["t1"] == "dark" and LESION_VISIBILITY["haemorrhage"]["t1"] == "bright"
    assert LESION_VISIBILITY["oedema"]["t1"] == "dark"  # visibly hypointense on the input: must be kept


def test_lesion_kinds():
    none = make_phantom(seed=2, lesions=False, resolution=4.0)
    assert not none["lesion_mask"].data.any()
    assert none["lesion_mask"].metadata["lesions"] == []
    for kinds, labels in (
        (["plaque"], {0, 3}),
        (["tumor"], {0, 1, 2}),
        (["black hole"], {0, 4}),
        (["hemorrhage"], {0, 5}),
        ("ms, blood", {0, 3, 5}),
    ):
        ph = make_phantom(seed=2, lesions=kinds, resolution=4.0)
        assert set(np.unique(ph["lesion_mask"].data)) == labels, kinds
        if kinds == ["plaque"]:
            plaque = ph
    # the lesion choice does not change the noise realisation: in the air the two
    # images differ only by the noise level (set from each image's bright level)
    ratio = none["t1"].data[:5, :5, -5:] / plaque["t1"].data[:5, :5, -5:]
    assert ratio.std() < 1e-4 * ratio.mean()


# ----------------------------------------------------------------------------- acquisition options


def test_skull_strip_is_zero_outside_the_brain(phantom3):
    stripped = make_phantom(seed=0, lesions=True, resolution=3.0, skull_strip=True)
    brain = stripped["brain_mask"].data > 0
    np.testing.assert_array_equal(brain, phantom3["brain_mask"].data > 0)
    for key in IMAGES:
        assert np.all(stripped[key].data[~brain] == 0), key
        # the same acquisition inside the brain: identical voxels
        np.testing.assert_array_equal(stripped[key].data[brain], phantom3[key].data[brain])
        assert stripped[key].metadata["skull_stripped"] is True
    low = stripped["t2_lowres"]
    f = 4
    n = -(-brain.shape[2] // f)
    padded = np.zeros((*brain.shape[:2], n * f), bool)
    padded[..., : brain.shape[2]] = brain
    any_brain = padded.reshape(*brain.shape[:2], n, f).any(-1)
    assert np.all(low.data[~any_brain] == 0) and (low.data[any_brain] > 0).mean() > 0.95


def test_anisotropic_voxels():
    ph = make_phantom(seed=1, lesions=["plaque"], resolution=(2, 2, 4))
    assert ph["t1"].spacing == (2.0, 2.0, 4.0)
    assert ph["t1"].shape == (98, 116, 47)
    np.testing.assert_allclose(np.diag(ph["t1"].affine)[:3], [2.0, 2.0, 4.0])
    for key in KEYS - {"t2_lowres"}:
        np.testing.assert_array_equal(ph[key].affine, ph["t1"].affine)
    assert ph["t2_lowres"].spacing == pytest.approx((2.0, 2.0, 16.0))
    assert ph["t1"].metadata["resolution"] == [2.0, 2.0, 4.0]
    # centred on the same field of view as the isotropic grids
    centre = ph["t1"].affine @ np.r_[(np.array(ph["t1"].shape) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], [0.0, -18.0, 22.0], atol=1e-6)
    # the same subject: plaques at the same places as on an isotropic grid
    iso = make_phantom(seed=1, lesions=["plaque"], resolution=4.0)
    assert [p["centre_mm"] for p in ph["lesion_mask"].metadata["lesions"]] == [
        p["centre_mm"] for p in iso["lesion_mask"].metadata["lesions"]
    ]
    assert (ph["lesion_mask"].data == 3).sum() > 10


def test_fov_crop_keeps_volumes_consistent(template3):
    crop = make_phantom(
        seed=0, lesions=False, resolution=3.0, noise=0.0, bias=0.0, deform=False, fov_crop=[[9, 12], [0, 30], [15, 3]]
    )
    assert crop["t1"].metadata["fov_crop_mm"] == [[9.0, 12.0], [0.0, 30.0], [15.0, 3.0]]
    lo, hi = np.array([3, 0, 5]), np.array([4, 10, 1])
    full = template3["t1"]
    assert crop["t1"].shape == tuple(np.array(full.shape) - lo - hi)
    np.testing.assert_allclose(crop["t1"].affine[:3, 3], full.affine[:3, 3] + 3.0 * lo)
    sub = tuple(slice(a, n - b) for a, b, n in zip(lo, hi, full.shape))
    np.testing.assert_array_equal(crop["brain_mask"].data, template3["brain_mask"].data[sub])
    for key in IMAGES:
        a, b = crop[key].data, template3[key].data[sub]
        brain = crop["brain_mask"].data > 0
        np.testing.assert_allclose(a[brain], b[brain], rtol=1e-4, atol=1e-2)  # the brain: voxel for voxel
        assert np.median(np.abs(a - b)) < 1e-3 and np.abs(a - b).mean() < 0.01 * b.mean()  # the head: ~
    low = crop["t2_lowres"]
    assert low.shape[:2] == crop["t2"].shape[:2]
    assert low.affine[2, 3] - 6.0 == pytest.approx(crop["t2"].affine[2, 3] - 1.5)
    # a seeded random crop, recorded in the metadata
    r1 = make_phantom(seed=7, lesions=False, resolution=4.0, fov_crop="random")
    r2 = make_phantom(seed=7, lesions=False, resolution=4.0, fov_crop="random")
    r3 = make_phantom(seed=8, lesions=False, resolution=4.0, fov_crop="random")
    assert r1["t1"].shape == r2["t1"].shape and r1["t1"].metadata["fov_crop_mm"] == r2["t1"].metadata["fov_crop_mm"]
    assert r1["t1"].metadata["fov_crop_mm"] != r3["t1"].metadata["fov_crop_mm"]
    np.testing.assert_array_equal(r1["t1"].data, r2["t1"].data)


def test_random_protocol_is_seeded_clinical_and_recorded():
    a = make_phantom(seed=5, lesions=False, resolution=4.0, protocol="random")
    b = make_phantom(seed=5, lesions=False, resolution=4.0, protocol="random")
    c = make_phantom(seed=6, lesions=False, resolution=4.0, protocol="random")
    np.testing.assert_array_equal(a["t2"].data, b["t2"].data)
    seqs = {k: a[k].metadata["sequence"] for k in IMAGES}
    assert seqs != {k: c[k].metadata["sequence"] for k in IMAGES}
    for key, seq in seqs.items():
        lo, hi = PROTOCOL_RANGES[key]["tr"]
        assert lo <= seq["TR_ms"] <= hi
        lo, hi = PROTOCOL_RANGES[key]["te"]
        assert lo <= seq["TE_ms"] <= hi
        assert a[key].metadata["protocol"] == {k: a[k].metadata["sequence"] for k in IMAGES}
    null = flair_null_ti(TISSUES["csf"].t1, seqs["flair"]["TR_ms"])
    assert abs(seqs["flair"]["TI_ms"] / null - 1) <= 0.031  # CSF nulled within a few percent
    # the images follow the protocol: T1w at the drawn TR/TE matches the equation for WM
    default = make_phantom(seed=5, lesions=False, resolution=4.0)
    assert not np.allclose(a["t1"].data, default["t1"].data)
    # a dict overrides single sequences; FLAIR's TI follows its TR
    custom = make_phantom(
        seed=5, lesions=False, resolution=4.0, protocol={"t1": {"tr": 650, "te": 15}, "flair": {"tr": 10000}}
    )
    assert custom["t1"].metadata["sequence"] == {"kind": "spin echo", "TR_ms": 650.0, "TE_ms": 15.0}
    assert custom["flair"].metadata["sequence"]["TI_ms"] == round(flair_null_ti(TISSUES["csf"].t1, 10000))
    assert custom["t2"].metadata["sequence"]["TR_ms"] == SEQUENCES["t2"].tr
    assert make_protocol({"base": "random", "pd": {"te": 20}}, np.random.default_rng(1))["pd"].te == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lesions": ["cyst"]}, "unknown lesion kind"),
        ({"resolution": 0.5}, "resolution"),
        ({"resolution": 9}, "resolution"),
        ({"resolution": (1, 1, 9)}, "resolution"),
        ({"resolution": (1, 1)}, "resolution"),
        ({"seed": -1}, "seed"),
        ({"noise": -0.5}, "noise"),
        ({"lowres_factor": 0}, "lowres_factor"),
        ({"field_strength": 7}, "field_strength must be 1.5 or 3.0"),
        ({"field_strength": "high"}, "field_strength"),
        ({"protocol": "fast"}, "protocol"),
        ({"protocol": {"t1": {"tr": 10, "te": 20}}}, r"TR \(10 ms\) must be longer than TE"),
        ({"protocol": {"t1": {"tr": 500, "te": 500}}}, "must be longer than TE"),
        ({"protocol": {"flair": {"ti": 9500}}}, "must be longer than TI"),
        ({"protocol": {"t1": {"ti": 300}}}, "spin echo has no TI"),
        ({"protocol": {"dwi": {"tr": 3000}}}, "unknown sequence"),
        ({"protocol": {"t2": {"flip": 90}}}, "unknown parameter"),
        ({"fov_crop": -5}, "fov_crop"),
        ({"fov_crop": "tight"}, "fov_crop"),
        ({"fov_crop": 90}, "keep at least 60 mm"),
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
        [
            d[sx, sy, sz].ravel()
            for sx in (slice(0, 9), slice(-9, None))
            for sy in (slice(0, 9), slice(-9, None))
            for sz in (slice(0, 9), slice(-9, None))
        ]
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


def test_cli_acquisition_options(tmp_path, capsys):
    from napari_neurosynth.cli import main

    out = tmp_path / "brats"
    rc = main(
        [
            "phantom",
            str(out),
            "--seed",
            "2",
            "--resolution",
            "4x4x6",
            "--field-strength",
            "1.5",
            "--protocol",
            "random",
            "--skull-strip",
            "--fov-crop",
            "8",
        ]
    )
    assert rc == 0
    assert "1.5 T, skull-stripped" in capsys.readouterr().out
    ref = make_phantom(
        seed=2, resolution=(4, 4, 6), field_strength=1.5, protocol="random", skull_strip=True, fov_crop=8
    )
    for key in ("t1", "flair", "lesion_mask"):
        vol = read_volume(out / f"{key}.nii.gz")
        np.testing.assert_allclose(vol.affine, ref[key].affine, atol=1e-4)
        np.testing.assert_allclose(vol.data, ref[key].data, rtol=1e-6)
    custom = tmp_path / "custom"
    assert main(["phantom", str(custom), "--resolution", "6", "--no-lesions", "--protocol", '{"t1": {"tr": 650}}']) == 0


@pytest.mark.parametrize(
    "args, match",
    [
        (["--lesions", "cyst"], "unknown lesion kind"),
        (["--field-strength", "7"], "field_strength"),
        (["--protocol", '{"t1": {"tr": 5}}'], "longer than TE"),
        (["--resolution", "0.2"], "resolution"),
        (["--resolution", "2xfoo"], "resolution"),
    ],
)
def test_cli_bad_option_exits_2(tmp_path, capsys, args, match):
    from napari_neurosynth.cli import main

    assert main(["phantom", str(tmp_path / "x"), "--resolution", "4", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_cli_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("neurosynth")
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "neurosynth"
    out = tmp_path / "healthy"
    proc = subprocess.run(
        [str(exe), "phantom", str(out), "--seed", "3", "--resolution", "4", "--no-lesions"],
        capture_output=True,
        text=True,
        timeout=120,
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
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    labels = [layer for layer in viewer.layers if layer._type_string == "labels"]
    assert sorted(layer.name for layer in images) == ["FLAIR", "PD", "T1", "T2"]
    assert sorted(layer.name for layer in labels) == ["brain mask", "lesions"]
    from napari_neurosynth.viewer.sample_data import SAMPLE_RESOLUTION

    r = SAMPLE_RESOLUTION
    shape = tuple(round(n / r) for n in (197, 233, 189))
    expected = np.diag([r, r, r, 1.0])
    expected[:3, 3] = np.array([0.0, -18.0, 22.0]) - (np.array(shape) - 1) / 2 * r  # centred MNI field of view
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.affine.affine_matrix, expected)
        assert layer.data.shape == shape
    assert viewer.layers["T1"].visible and not viewer.layers["T2"].visible
    assert viewer.layers["lesions"].visible and not viewer.layers["brain mask"].visible
    lo, hi = viewer.layers["T1"].contrast_limits
    assert 0 <= lo < hi
    assert set(np.unique(viewer.layers["lesions"].data)) == {0, 1, 2, 3, 4, 5}
