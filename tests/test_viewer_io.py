"""The napari reader and writer through a real viewer: affines, world alignment, DICOM, Labels."""

from __future__ import annotations

import numpy as np
import pytest
from test_io import _blob_volume, make_dicom_series, oblique_direction

from napari_neurosynth import NeurosynthError, Volume, read_volume, write_volume
from napari_neurosynth.io import resample_to
from napari_neurosynth.viewer.layers import layer_to_volume, volume_to_layer_data
from napari_neurosynth.viewer.reader import get_reader
from napari_neurosynth.viewer.writer import write_image, write_labels

PLUGIN = "napari-neurosynth"
LANDMARK = np.array([4.0, -11.0, 17.0])  # RAS+ mm


@pytest.fixture
def subject(tmp_path):
    """One 'subject' on two grids: 2 mm oblique NIfTI and a 3 mm axis-aligned MHA resampled from it."""
    fine_affine = np.eye(4)
    fine_affine[:3, :3] = oblique_direction() @ np.diag([2.0, 2.0, 2.0])
    fine_affine[:3, 3] = LANDMARK - fine_affine[:3, :3] @ np.array([9.0, 11.0, 8.0])
    fine = _blob_volume(fine_affine, (20, 22, 18), LANDMARK, sigma=4.0)
    coarse_grid = Volume(np.zeros((14, 15, 13), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    coarse_grid.affine[:3, 3] = LANDMARK - 3.0 * np.array([6.0, 8.0, 5.0])
    coarse = resample_to(fine, coarse_grid)
    return {
        "fine": write_volume(fine, tmp_path / "t2_2mm.nii.gz"),
        "coarse": write_volume(coarse, tmp_path / "t2_3mm.mha"),
        "fine_vol": fine,
        "coarse_vol": coarse,
    }


def _peak_world(layer) -> np.ndarray:
    """World position of the intensity-weighted centroid of a layer's blob, via napari's transform."""
    data = np.asarray(layer.data, dtype=np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in data.shape], indexing="ij"), axis=-1)
    centroid = (idx * data[..., None]).reshape(-1, 3).sum(0) / data.sum()
    return np.array(layer.data_to_world(centroid))


def test_two_grids_overlay_in_world_space(make_napari_viewer, subject):
    viewer = make_napari_viewer()
    layers = viewer.open([str(subject["fine"]), str(subject["coarse"])], plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["t2_2mm", "t2_3mm"]
    fine, coarse = viewer.layers["t2_2mm"], viewer.layers["t2_3mm"]
    np.testing.assert_allclose(fine.affine.affine_matrix, subject["fine_vol"].affine, atol=1e-5)
    np.testing.assert_allclose(coarse.affine.affine_matrix, subject["coarse_vol"].affine, atol=1e-5)
    assert fine.metadata["source_path"] == str(subject["fine"])
    assert coarse.metadata["format"] == "metaimage"
    # the landmark voxel of each grid maps to the same world point
    for layer, vol in ((fine, subject["fine_vol"]), (coarse, subject["coarse_vol"])):
        landmark_idx = vol.index(LANDMARK)
        np.testing.assert_allclose(layer.data_to_world(landmark_idx), LANDMARK, atol=1e-4)
        np.testing.assert_allclose(layer.world_to_data(LANDMARK), landmark_idx, atol=1e-4)
    # and the anatomy (the blob) sits at the landmark in both layers
    np.testing.assert_allclose(_peak_world(fine), LANDMARK, atol=0.3)
    np.testing.assert_allclose(_peak_world(coarse), LANDMARK, atol=0.5)
    # the two layers' world extents overlap: napari puts them in one world
    assert viewer.dims.ndim == 3


def test_writer_saves_layer_geometry(make_napari_viewer, subject, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(subject["fine"]), plugin=PLUGIN)
    for ext in (".nii.gz", ".mha", ".nrrd", ".mgz"):
        out = tmp_path / f"saved{ext}"
        written = layer.save(str(out), plugin=PLUGIN)
        assert written == [str(out)]
        back = read_volume(out)
        np.testing.assert_allclose(back.affine, subject["fine_vol"].affine, atol=1e-4)
        np.testing.assert_array_equal(back.data, subject["fine_vol"].data)
    # a layer the user moved with napari's own transform saves where it is shown
    layer.translate = (5.0, 0.0, -2.0)
    moved = read_volume(write_image(str(tmp_path / "moved"), layer.data, layer._get_state())[0])
    assert moved.metadata["source_path"].endswith("moved.nii.gz")
    np.testing.assert_allclose(moved.world((0, 0, 0)), layer.data_to_world((0, 0, 0)), atol=1e-4)
    np.testing.assert_allclose(moved.world((3, 4, 5)), layer.data_to_world((3, 4, 5)), atol=1e-4)
    vol = layer_to_volume(layer)
    np.testing.assert_allclose(vol.world((3, 4, 5)), layer.data_to_world((3, 4, 5)), atol=1e-6)


def test_dicom_folder_opens_as_one_layer(make_napari_viewer, tmp_path):
    slices = make_dicom_series(tmp_path / "series")
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "series"), plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = layers[0]
    assert layer.name == "series"
    assert layer.data.shape == (64, 64, 4)
    expected = read_volume(tmp_path / "series").affine
    np.testing.assert_allclose(layer.affine.affine_matrix, expected)
    # pixel (column 10, row 50) of the third slice, from the DICOM header, in RAS
    from test_io import dicom_pixel_ras

    np.testing.assert_allclose(layer.data_to_world((10, 50, 2)), dicom_pixel_ras(slices[2], 10, 50), atol=2e-3)
    assert layer.metadata["dicom"]["n_files"] == 4


def test_integer_mask_opens_as_labels(make_napari_viewer, tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 3:6, 1:4] = 2
    write_volume(Volume(mask, affine), tmp_path / "lesion_mask.nii.gz")
    write_volume(Volume(mask.astype(np.float32), affine), tmp_path / "probability_mask.nii.gz")
    write_volume(Volume(mask.astype(np.int16), affine), tmp_path / "t1.nii.gz")
    viewer = make_napari_viewer()
    viewer.open(
        [str(tmp_path / n) for n in ("lesion_mask.nii.gz", "probability_mask.nii.gz", "t1.nii.gz")], plugin=PLUGIN
    )
    assert type(viewer.layers["lesion_mask"]).__name__ == "Labels"
    assert type(viewer.layers["probability_mask"]).__name__ == "Image"  # floats stay an image
    assert type(viewer.layers["t1"]).__name__ == "Image"  # integer but not a label name
    np.testing.assert_array_equal(viewer.layers["lesion_mask"].data, mask)
    np.testing.assert_allclose(viewer.layers["lesion_mask"].affine.affine_matrix, affine)


def test_get_reader_declines_what_it_cannot_open(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text("x")
    (tmp_path / "image.zarr").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "plain")) is None
    assert get_reader(str(tmp_path / "image.zarr")) is None
    assert get_reader([str(tmp_path / "notes.txt"), str(tmp_path / "x.nii.gz")]) is None
    assert callable(get_reader(str(tmp_path / "x.nii.gz")))


def test_reader_raises_neurosynth_error_for_broken_file(make_napari_viewer, tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    reader = get_reader(str(tmp_path / "broken.nii.gz"))
    with pytest.raises(NeurosynthError, match=r"cannot read broken.nii.gz as nifti"):
        reader(str(tmp_path / "broken.nii.gz"))
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"cannot read broken.nii.gz as nifti"):
        viewer.open(str(tmp_path / "broken.nii.gz"), plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_volume_to_layer_data_labels_from_float_mask():
    vol = Volume(np.array([[[0.0, 1.0], [2.0, 0.0]]] * 2, np.float32), np.eye(4))
    data, kwargs, kind = volume_to_layer_data(vol, name="mask", kind="labels")
    assert kind == "labels" and data.dtype == np.uint8
    assert kwargs["name"] == "mask"
    np.testing.assert_array_equal(kwargs["affine"], np.eye(4))
    with pytest.raises(NeurosynthError, match="whole-number"):
        volume_to_layer_data(vol.with_data(vol.data + 0.5), kind="labels")


def test_opened_and_sample_images_share_the_display_window(phantom3, tmp_path):
    """Every image layer the plugin makes gets its contrast limits from the one core rule."""
    from napari_neurosynth.display import display_window
    from napari_neurosynth.viewer.sample_data import phantom_sample

    sample = {kw["name"]: kw for _, kw, kind in phantom_sample(seed=0, resolution=3.0) if kind == "image"}
    for name, key in (("T1", "t1"), ("T2", "t2"), ("PD", "pd"), ("FLAIR", "flair")):
        assert tuple(sample[name]["contrast_limits"]) == pytest.approx(display_window(phantom3[key].data)), name
    path = tmp_path / "t2.nii.gz"
    write_volume(phantom3["t2"], path)
    ((data, kwargs, kind),) = get_reader(str(path))(str(path))
    assert kind == "image"
    assert tuple(kwargs["contrast_limits"]) == pytest.approx(display_window(data))
    assert tuple(kwargs["contrast_limits"]) == pytest.approx(tuple(sample["T2"]["contrast_limits"]), rel=1e-4)


def test_axial_view_is_radiological_on_screen(make_napari_viewer, tmp_path):
    """A block at the patient's right-anterior shows up top-left in the radiological axial view."""
    from napari_neurosynth.viewer.layers import set_anatomical_view

    data = np.zeros((20, 24, 10), np.float32)  # RAS-aligned: axis 0 = R, axis 1 = A, axis 2 = S
    data[14:19, 17:22, :] = 1.0  # right (high i) and anterior (high j)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # a LAS file: i runs to the patient's left
    affine[0, 3] = 19.0
    write_volume(Volume(data[::-1].copy(), affine), tmp_path / "las.nii.gz")
    viewer = make_napari_viewer(show=True)
    viewer.open(str(tmp_path / "las.nii.gz"), plugin=PLUGIN)
    set_anatomical_view(viewer, "axial")
    shot = viewer.screenshot(str(tmp_path / "axial.png"), canvas_only=True)
    bright = shot[..., :3].mean(-1) > 128
    rows, cols = np.nonzero(bright)
    h, w = bright.shape
    assert rows.size > 0
    assert rows.mean() < h / 2 and cols.mean() < w / 2  # anterior up, patient's right on screen left
    set_anatomical_view(viewer, "axial", radiological=False)
    shot = viewer.screenshot(canvas_only=True)
    rows, cols = np.nonzero(shot[..., :3].mean(-1) > 128)
    assert rows.mean() < h / 2 and cols.mean() > w / 2  # neurological: right on the right


def test_labels_writer_keeps_integers_and_geometry(make_napari_viewer, tmp_path):
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-30.0, 20.0, 5.0)
    mask = np.zeros((6, 7, 5), np.uint8)
    mask[1:3, 2:5, 1:4] = 3
    write_volume(Volume(mask, affine), tmp_path / "seg.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "seg.nii.gz"), plugin=PLUGIN)
    assert type(layer).__name__ == "Labels"
    (out,) = write_labels(str(tmp_path / "seg_copy.nrrd"), layer.data, layer._get_state())
    back = read_volume(out)
    assert back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)


def test_qt_binding_follows_qt_api(qapp):
    """qtpy, napari and pytest-qt all run on the binding QT_API names (PyQt6 by default, PyQt5 in CI's second run)."""
    import os

    import qtpy
    from pytestqt.qt_compat import qt_api

    wanted = os.environ["QT_API"].lower()
    assert qtpy.API_NAME.lower() == wanted
    assert qt_api.pytest_qt_api == wanted
    assert type(qapp).__module__.split(".")[0].lower() == wanted
