"""Training data: BraTS / IXI / CSV loaders, grids, sampling, baselines."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neurosynth.baselines import IntensityLUT, baseline_input_index, input_standardised
from napari_neurosynth.data import (
    SliceSampler,
    Subject,
    brats_subjects,
    ixi_subjects,
    load_subjects,
    manifest_subjects,
    parse_seeds,
    prepare,
)
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.io import Volume, write_volume


def _head(shape=(12, 14, 10), seed=0, value=100.0):
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[2:-2, 2:-2, 2:-2] = value + rng.normal(0, 5, (shape[0] - 4, shape[1] - 4, shape[2] - 4))
    return data


def _write(path, data, spacing=(2.0, 2.0, 2.0)):
    write_volume(Volume(data, np.diag([*spacing, 1.0])), path)


def test_brats_folder(tmp_path):
    for i in (1, 2):
        d = tmp_path / f"BraTS20_Training_00{i}"
        d.mkdir()
        for mod, val in (("t1", 100), ("t2", 300), ("flair", 200)):
            _write(d / f"BraTS20_Training_00{i}_{mod}.nii.gz", _head(seed=i, value=val))
        seg = np.zeros((12, 14, 10), np.uint8)
        seg[5:7, 5:7, 4:6] = 4
        _write(d / f"BraTS20_Training_00{i}_seg.nii.gz", seg)
    (tmp_path / "notes.txt").write_text("not an image")
    subjects = brats_subjects(tmp_path)
    assert [s.name for s in subjects] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    s = subjects[0]
    assert set(s.images) == {"t1", "t2", "flair"}
    assert (s.lesion_mask > 0).sum() == 8 and s.lesion_mask.max() == 4
    # skull-stripped: brain = nonzero T1
    assert s.brain_mask.sum() == np.count_nonzero(s.images["t1"].data)
    assert float(np.median(s.images["t2"].data[s.brain_mask])) == pytest.approx(300, abs=5)
    # load_subjects detects BraTS naming and checks the requested modalities
    assert len(load_subjects(tmp_path, ["t1", "flair"])) == 2
    with pytest.raises(NeurosynthError, match="no pd image"):
        load_subjects(tmp_path, ["t1", "pd"])


def test_ixi_folder_matches_ids_and_resamples(tmp_path):
    _write(tmp_path / "IXI002-Guys-0828-T1.nii.gz", _head(value=100))
    # T2 on a coarser grid covering the same field of view: it must be resampled onto T1
    _write(tmp_path / "IXI002-Guys-0828-T2.nii.gz", _head((6, 7, 5), value=300), spacing=(4.0, 4.0, 4.0))
    _write(tmp_path / "IXI012-HH-1211-T1.nii.gz", _head(value=110))
    _write(tmp_path / "IXI012-HH-1211-T2.nii.gz", _head(value=310))
    subjects = ixi_subjects(tmp_path)
    assert [s.name for s in subjects] == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert set(subjects[0].images) == {"t1", "t2"}
    loaded = load_subjects(tmp_path, ["t1", "t2"])
    t1, t2 = loaded[0].images["t1"], loaded[0].images["t2"]
    assert t2.shape == t1.shape and np.allclose(t2.affine, t1.affine)
    # IXI is not skull-stripped: the mask falls back to the head foreground
    assert loaded[0].brain_mask is None and loaded[0].mask().any()


def test_csv_manifest(tmp_path):
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "t1.nii.gz", _head(value=100))
    _write(tmp_path / "a" / "flair.nii.gz", _head(value=250))
    mask = np.zeros((12, 14, 10), np.uint8)
    mask[3:9, 3:11, 3:7] = 1
    _write(tmp_path / "a" / "mask.nii.gz", mask)
    csv = tmp_path / "subjects.csv"
    csv.write_text("subject,t1,flair,mask\nsubj-a,a/t1.nii.gz,a/flair.nii.gz,a/mask.nii.gz\n")
    (s,) = manifest_subjects(csv)
    assert s.name == "subj-a" and set(s.images) == {"t1", "flair"}
    assert s.brain_mask.sum() == mask.sum()
    assert len(load_subjects(csv, ["t1", "flair"])) == 1

    csv.write_text("subject,t1\nb,missing.nii.gz\n")
    with pytest.raises(NeurosynthError, match="missing file"):
        manifest_subjects(csv)
    csv.write_text("name,t1\nb,a/t1.nii.gz\n")
    with pytest.raises(NeurosynthError, match=r"lacks column\(s\) subject"):
        manifest_subjects(csv)


def test_bad_sources(tmp_path):
    with pytest.raises(NeurosynthError, match="no BraTS subjects"):
        load_subjects(tmp_path)
    with pytest.raises(NeurosynthError, match="cannot read training data"):
        load_subjects(tmp_path / "nope")
    with pytest.raises(NeurosynthError, match="no IXI subjects"):
        ixi_subjects(tmp_path)
    with pytest.raises(NeurosynthError, match="seeds"):
        parse_seeds("a-b")
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]


def _subject(seed=0, shape=(20, 24, 16)):
    rng = np.random.default_rng(seed)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    t1 = _head(shape, seed, 100)
    t2 = np.where(t1 > 0, 400 - t1, 0).astype(np.float32)
    brain = t1 > 0
    return Subject(
        f"s{seed}", {"t1": Volume(t1, aff), "t2": Volume(t2 + rng.random(shape).astype(np.float32), aff)}, brain, None
    )


def test_sampler_patches_come_from_the_brain_and_are_reproducible():
    prepared = [prepare(_subject(i), ["t1", "t2"]) for i in range(2)]
    # normalised exactly as the engine does: the median of the central foreground -> 1
    from napari_neurosynth.preprocessing import central_region, foreground_mask

    t1 = prepared[0].arrays["t1"]
    assert np.median(t1[central_region(foreground_mask(t1))]) == pytest.approx(1.0, abs=0.02)
    a = SliceSampler(prepared, ["t1"], "t2", context=1, patch=16, rng=np.random.default_rng(3)).batch(4)
    b = SliceSampler(prepared, ["t1"], "t2", context=1, patch=16, rng=np.random.default_rng(3)).batch(4)
    x, y, m = a
    assert x.shape == (4, 3, 16, 16) and y.shape == (4, 1, 16, 16) and m.shape == (4, 1, 16, 16)
    assert all(mi.sum() > 0 for mi in m)  # every patch holds brain
    assert np.array_equal(x, b[0]) and np.array_equal(y, b[1])
    from napari_neurosynth.slicing import stack_batch

    stack = np.arange(5)[:, None, None] * np.ones((5, 2, 2), np.float32)
    assert stack_batch([stack], [0], 1)[0, :, 0, 0].tolist() == [0, 0, 1]  # edge repeated


def test_baselines():
    s = _subject()
    norm = input_standardised(s.images["t1"].data)
    assert np.median(norm[s.brain_mask]) == pytest.approx(1.0, abs=0.05)
    assert baseline_input_index(["t1", "t2_lowres"], "t2") == 1
    assert baseline_input_index(["t1", "t2"], "flair") == 0
    prepared = [prepare(_subject(i), ["t1", "t2"]) for i in range(2)]
    lut = IntensityLUT().fit([([p.arrays["t1"]], p.arrays["t2"]) for p in prepared], [p.mask for p in prepared])
    test = prepare(_subject(5), ["t1", "t2"])
    pred = lut.predict([test.arrays["t1"]])
    err = np.abs(pred - test.arrays["t2"])[test.mask].mean()
    assert err < 0.05  # the inverse mapping is learned
    # two inputs -> joint 2-D table
    lut2 = IntensityLUT().fit([([p.arrays["t1"], p.arrays["t2"]], p.arrays["t2"]) for p in prepared])
    assert lut2.table.ndim == 2 and lut2.predict([test.arrays["t1"], test.arrays["t2"]]).shape == test.mask.shape
    with pytest.raises(NeurosynthError, match="2 input"):
        lut2.predict([test.arrays["t1"]])
