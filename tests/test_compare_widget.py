"""The Compare & Explain dock widget on a 3 mm phantom: metrics, z-map, regions, Grad-CAM."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_neurosynth import explain
from napari_neurosynth.io import Volume
from napari_neurosynth.metrics import evaluate
from napari_neurosynth.viewer.layers import layer_to_volume, viewer_camera, volume_to_layer_data

WAIT_MS = 60_000


@pytest.fixture
def models_dir(tmp_path_factory, monkeypatch, make_bundle):
    root = tmp_path_factory.mktemp("models")
    make_bundle(root, card={"training": {"data": "napari-neurosynth phantom", "phantom_only": True}})
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", str(root))
    return root


def _add(viewer, vol: Volume, name: str, kind: str = "image"):
    data, kwargs, kind = volume_to_layer_data(vol, name=name, kind=kind)
    return viewer.add_image(data, **kwargs) if kind == "image" else viewer.add_labels(data, **kwargs)


def _messages():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def _wait(qtbot, widget, worker):
    """Wait until the widget's job has ended (its finished signal may already have fired)."""
    assert worker is not None, _messages()[-1:]
    qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT_MS)


@pytest.fixture
def fake_synth(phantom3):
    """The acquired T2 with noise and an invented bright blob: a 'synthesis' with a known flaw."""
    t2 = phantom3["t2"]
    rng = np.random.default_rng(0)
    data = t2.data + 0.02 * t2.data.max() * rng.standard_normal(t2.shape).astype(np.float32)
    brain = np.argwhere(phantom3["brain_mask"].data > 0)
    centre = brain[len(brain) // 3]
    sl = tuple(slice(c - 2, c + 2) for c in centre)
    data[sl] += 0.8 * t2.data.max()
    vol = t2.with_data(data.astype(np.float32))
    vol.metadata.update(synthesized=True, modality="t2")
    return vol, centre


@pytest.fixture
def compare_viewer(make_napari_viewer, phantom3, fake_synth):
    from napari_neurosynth.viewer.compare_widget import CompareExplainWidget

    viewer = make_napari_viewer()
    _add(viewer, phantom3["t2"], "T2")
    _add(viewer, phantom3["brain_mask"], "brain_mask", kind="labels")
    _add(viewer, phantom3["lesion_mask"], "lesion_mask", kind="labels")
    _add(viewer, fake_synth[0], "T2 (synthesized: fake)")
    widget = CompareExplainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare & Explain")
    return viewer, widget


def test_layer_choices_preselected(compare_viewer, phantom3):
    _, w = compare_viewer
    assert w.synth_combo.layer().name == "T2 (synthesized: fake)"
    assert w.target_combo.layer().name == "T2"
    assert w.mask_combo.layer().name == "brain_mask"
    assert w.lesion_combo.layer().name == "lesion_mask"
    # a choice the user made survives layers coming and going
    viewer = w.viewer
    _add(viewer, phantom3["pd"], "PD")
    w.target_combo.set_layer("PD")
    _add(viewer, phantom3["flair"], "FLAIR")
    viewer.layers.remove("brain_mask")
    assert w.target_combo.layer().name == "PD"
    assert w.mask_combo.layer() is None and "brain_mask" not in [
        w.mask_combo.itemText(i) for i in range(w.mask_combo.count())
    ]


def test_metrics_table_equals_evaluate_and_exports(compare_viewer, qtbot, phantom3, fake_synth, tmp_path):
    _, w = compare_viewer
    _wait(qtbot, w, w.compute_metrics())
    expected = evaluate(
        fake_synth[0], phantom3["t2"], mask=phantom3["brain_mask"], lesion=phantom3["lesion_mask"], normalize=True
    )
    rows = {r["region"]: r for r in w.metrics_table.rows}
    assert set(rows) == {"global", "brain", "lesion"}
    for region in rows:
        for key in ("psnr", "ssim", "mae", "nmse"):
            assert rows[region][key] == pytest.approx(expected["regions"][region][key], rel=1e-9)
    # what the user reads in the cell is that value, rounded
    assert w.metrics_table.cell_text(1, "psnr") == f"{expected['regions']['brain']['psnr']:.4g}"
    assert len(w.kspace_table.rows) == len(expected["kspace"])
    assert w.fidelity_table.rows and {r["status"] for r in w.fidelity_table.rows} <= {
        "preserved",
        "attenuated",
        "erased",
        "not visible",
    }
    # copy as TSV
    w.metrics_table.copy()
    from qtpy.QtWidgets import QApplication

    tsv = QApplication.clipboard().text().splitlines()
    assert tsv[0].split("\t")[:5] == ["region", "psnr", "ssim", "mae", "nmse"] and len(tsv) == 4
    # export CSV and JSON
    w.export_metrics(tmp_path / "m.csv")
    with open(tmp_path / "m.csv") as fh:
        got = list(csv.DictReader(fh))
    assert float(got[0]["ssim"]) == pytest.approx(expected["ssim"], rel=1e-9)
    w.export_metrics(tmp_path / "m.json")
    payload = json.loads((tmp_path / "m.json").read_text())
    assert payload["metrics"]["psnr_brain"] == pytest.approx(expected["psnr_brain"], rel=1e-9)
    assert payload["layers"]["acquired"] == "T2"
    assert len(payload["lesion_fidelity"]["lesions"]) == len(w.fidelity_table.rows)


def test_difference_map_regions_and_jump(compare_viewer, qtbot, phantom3, fake_synth):
    viewer, w = compare_viewer
    _wait(qtbot, w, w.add_difference_map())
    z_layer = viewer.layers["z-map: T2 (synthesized: fake) vs T2"]
    cmap = z_layer.colormap  # diverging, centred on zero (transparent there), blue below, red above
    assert cmap.map([0.5])[0][3] == 0.0 and cmap.map([0.0])[0][2] == 1.0 and cmap.map([1.0])[0][0] == 1.0
    assert tuple(z_layer.contrast_limits) == (-5.0, 5.0)
    np.testing.assert_allclose(z_layer.affine.affine_matrix, viewer.layers["T2"].affine.affine_matrix)
    expected = explain.difference_map(
        fake_synth[0], phantom3["t2"], phantom3["brain_mask"], lesion=phantom3["lesion_mask"]
    )
    np.testing.assert_allclose(z_layer.data, expected, atol=1e-6)
    assert w.smooth_spin.value() == 0 and z_layer.metadata["smooth_mm"] == 0
    regions = viewer.layers["disagreement regions"]
    assert regions.data.max() == len(w.region_table.rows) >= 1
    # the invented blob is found, as a brighter region
    centre = fake_synth[1]
    blob_label = regions.data[tuple(centre)]
    assert blob_label > 0
    row = next(r for r in w.region_table.rows if r["label"] == blob_label)
    assert row["direction"] == "synthesis brighter"
    # clicking the row goes to the region's slice and centre
    index = w.region_table.rows.index(row)
    w.region_table.table.cellClicked.emit(index, 0)
    axis = viewer.dims.not_displayed[0]
    world = regions.data_to_world(row["centroid_voxel"])
    assert viewer.dims.point[axis] == pytest.approx(world[axis], abs=3.0)  # within one 3 mm slice
    np.testing.assert_allclose(
        viewer_camera(viewer).center[-2:], np.asarray(world)[list(viewer.dims.displayed)], atol=1e-3
    )
    assert regions.selected_label == blob_label

    # smoothing: the same z-map function with smooth_mm, recorded on the layers, the blob still found
    w.smooth_spin.setValue(1.5)
    _wait(qtbot, w, w.add_difference_map())
    z_layer = viewer.layers["z-map: T2 (synthesized: fake) vs T2"]
    smoothed = explain.difference_map(
        fake_synth[0], phantom3["t2"], phantom3["brain_mask"], lesion=phantom3["lesion_mask"], smooth_mm=1.5
    )
    np.testing.assert_allclose(z_layer.data, smoothed, atol=1e-6)
    assert not np.allclose(smoothed, expected)
    assert z_layer.metadata["smooth_mm"] == 1.5 and viewer.layers["disagreement regions"].metadata["smooth_mm"] == 1.5
    assert viewer.layers["disagreement regions"].data[tuple(centre)] > 0
    assert "smoothed, σ 1.5 mm" in w.status.text()


def test_wrong_choices_notify(compare_viewer, qtbot, phantom3):
    viewer, w = compare_viewer
    # no brain mask for the z-map
    w.mask_combo.set_layer(None)
    n = len(_messages())
    assert w.add_difference_map() is None
    assert "brain mask" in _messages()[n]
    # same layer twice
    w.target_combo.set_layer("T2 (synthesized: fake)")
    n = len(_messages())
    assert w.compute_metrics() is None
    assert "same layer" in _messages()[n]
    # mismatched grids: reported from the worker, no table, widget usable
    t2 = phantom3["t2"]
    _add(viewer, Volume(t2.data[:-2], t2.affine), "T2 cropped")
    w.target_combo.set_layer("T2 cropped")
    n = len(_messages())
    _wait(qtbot, w, w.compute_metrics())
    assert "different grids" in " ".join(_messages()[n:])
    assert not w.metrics_table.rows and w.metrics_button.isEnabled()
    # Grad-CAM without a model-made layer
    n = len(_messages())
    assert w.explain_roi() is None
    assert "model" in _messages()[n]
    # export before computing
    with pytest.raises(Exception, match="No metrics"):
        w.export_metrics("x.csv")


def test_end_to_end_synthesize_then_explain(make_napari_viewer, models_dir, phantom3, qtbot):
    """Synthesize from the widget, then metrics, regions, Grad-CAM on a drawn rectangle, uncertainty."""
    from napari_neurosynth.bundle import load_model
    from napari_neurosynth.viewer.compare_widget import CompareExplainWidget
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    viewer = make_napari_viewer()
    _add(viewer, phantom3["t1"], "T1")
    _add(viewer, phantom3["t2"], "T2")
    _add(viewer, phantom3["brain_mask"], "brain_mask", kind="labels")
    synth_w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(synth_w, name="Synthesize")
    synth_w.set_model("tiny_t1_to_t2")
    synth_w.set_device("cpu")
    _wait(qtbot, synth_w, synth_w.run())
    synth = viewer.layers["T2 (synthesized: tiny_t1_to_t2)"]

    w = CompareExplainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Compare & Explain")
    assert w.synth_combo.layer() is synth and w.target_combo.layer().name == "T2"
    assert w.lesion_combo.layer() is None
    _wait(qtbot, w, w.compute_metrics())
    expected = evaluate(layer_to_volume(synth), phantom3["t2"], mask=phantom3["brain_mask"], normalize=True)
    assert w.metrics_table.rows[0]["psnr"] == pytest.approx(expected["psnr"], rel=1e-9)
    _wait(qtbot, w, w.add_difference_map())
    assert "disagreement regions" in viewer.layers

    # Grad-CAM for a rectangle drawn on the current slice
    assert w.cam_layer_combo.currentData() == load_model("tiny_t1_to_t2").network.default_cam_layer
    assert w.method_combo.currentText() == "HiResCAM"
    # look at axial slices (array axis 2 is S in the phantom's RAS grid), as a reader would
    k = phantom3["t1"].shape[2] // 2
    viewer.dims.order = (2, 0, 1)
    viewer.dims.set_current_step(2, k)
    roi = w.add_roi_layer()
    i0, j0 = (s // 2 - 2 for s in phantom3["t1"].shape[:2])
    roi.add_rectangles(np.array([[i0, j0, k], [i0, j0 + 4, k], [i0 + 4, j0 + 4, k], [i0 + 4, j0, k]], float))
    mask = w.roi_mask()
    assert mask.sum() == 25 and mask[:, :, k].sum() == 25
    # a Labels ROI painted on two slices counts only on the slice in view
    painted = np.zeros(phantom3["t1"].shape, np.uint8)
    painted[i0 : i0 + 3, j0 : j0 + 3, k] = 1
    painted[i0 : i0 + 3, j0 : j0 + 3, k + 5] = 1
    _add(viewer, phantom3["t1"].with_data(painted), "ROI labels", kind="labels")
    w.roi_combo.set_layer("ROI labels")
    labels_mask = w.roi_mask()
    assert labels_mask.sum() == 9 and labels_mask[:, :, k].sum() == 9
    w.roi_combo.set_layer(roi)

    _wait(qtbot, w, w.explain_roi())
    cam = w.cam_layer
    assert cam.name.startswith("HiResCAM of T2 (synthesized: tiny_t1_to_t2) ROI")
    assert cam.blending == "additive" and cam.opacity == 0.5 and cam.colormap.name == "inferno"
    np.testing.assert_allclose(cam.affine.affine_matrix, viewer.layers["T1"].affine.affine_matrix)
    assert cam.data.shape == phantom3["t1"].shape
    assert 0.0 <= cam.data.min() and cam.data.max() == pytest.approx(1.0)
    direct = explain.gradcam(load_model("tiny_t1_to_t2"), phantom3["t1"], mask, method="hirescam")
    np.testing.assert_allclose(cam.data, direct, atol=1e-5)

    _wait(qtbot, w, w.add_uncertainty_map())
    unc = w.uncertainty_layer
    assert unc.data.shape == phantom3["t1"].shape and unc.data.min() >= 0
