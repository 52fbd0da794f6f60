"""Reading like a radiologist in a real viewer: linked tri-planar views, window/level, flicker, reading window."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

from napari_neurosynth.display import display_window
from napari_neurosynth.io import Volume
from napari_neurosynth.viewer.layers import volume_to_layer_data
from napari_neurosynth.viewer.review import PLANES, ReviewWindow, text_overlay
from napari_neurosynth.windowing import limits_to_window_level, preset_window, relative_window


def _add(viewer, vol: Volume, name: str, kind: str = "image"):
    data, kwargs, kind = volume_to_layer_data(vol, name=name, kind=kind)
    return viewer.add_image(data, **kwargs) if kind == "image" else viewer.add_labels(data, **kwargs)


@pytest.fixture
def review(make_napari_viewer, phantom3, qtbot):
    """T2 and a 'synthesized' T2 in other units (x 0.01) with a z-map-like overlay, in a review window."""
    viewer = make_napari_viewer()
    t2 = phantom3["t2"]
    acquired = _add(viewer, t2, "T2")
    synth_vol = t2.with_data((t2.data * 0.01).astype(np.float32))
    synth_vol.metadata.update(synthesized=True, modality="t2")
    synth = _add(viewer, synth_vol, "T2 (synthesized: fake)")
    regions = _add(viewer, phantom3["lesion_mask"], "disagreement regions", kind="labels")
    window = ReviewWindow(viewer, synth, acquired, overlays=[regions], mask=phantom3["brain_mask"].data > 0)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield viewer, window, synth, acquired
    window.close()


def _linked_images(viewer, window):
    return [viewer.layers["T2"], viewer.layers["T2 (synthesized: fake)"], *window.synth_copies, *window.acquired_copies]


def test_three_views_follow_the_crosshair(review):
    viewer, window, synth, _ = review
    assert [v.title for v in window.views] == list(PLANES)
    # each view shows its plane: the world axis not displayed is S (axial), A (coronal), R (sagittal)
    assert [tuple(v.dims.not_displayed) for v in window.views] == [(2,), (1,), (0,)]
    for view in window.views:
        names = [lay.name for lay in view.layers]
        assert {"T2", "T2 (synthesized: fake)", "disagreement regions", "crosshair"} <= set(names)

    centre = synth.data_to_world(np.asarray(synth.data.shape) // 3)
    target = tuple(float(v) for v in centre)
    window.set_point(target)
    for view in [*window.views, viewer]:
        np.testing.assert_allclose(view.dims.point, target, atol=1.6)  # snapped to the 3 mm grid
    # the crosshair's lines pass through the point in every view
    for crosshair in window.crosshairs:
        starts = crosshair.layer.data[:, 0]
        for axis in range(3):
            others = [a for a in range(3) if a != axis]
            np.testing.assert_allclose(starts[axis, others], np.asarray(window.views[0].dims.point)[others])

    # scrolling one view (its slice slider) moves the others and the user's viewer
    coronal = window.views[1]
    moved = list(coronal.dims.point)
    moved[1] += 9.0
    coronal.dims.point = moved
    for view in [*window.views, viewer]:
        assert view.dims.point[1] == pytest.approx(coronal.dims.point[1])
    # and the user's viewer moves the views
    viewer.dims.point = (target[0] - 6.0, *viewer.dims.point[1:])
    assert all(v.dims.point[0] == pytest.approx(viewer.dims.point[0]) for v in window.views)

    # a click on the axial canvas jumps every view there
    view, qt_view = window.views[0], window.qt_views[0]
    canvas = qt_view.canvas.native
    before = tuple(view.dims.point)
    pos = QPointF(canvas.width() * 0.3, canvas.height() * 0.6)
    for kind, buttons in ((QEvent.MouseButtonPress, Qt.LeftButton), (QEvent.MouseButtonRelease, Qt.NoButton)):
        screen = QPointF(canvas.mapToGlobal(pos.toPoint()))
        event = QMouseEvent(kind, pos, screen, Qt.LeftButton, buttons, Qt.NoModifier)
        QApplication.sendEvent(canvas, event)
    after = tuple(view.dims.point)
    assert after[2] == pytest.approx(before[2])  # the axial slice stays
    assert after[:2] != pytest.approx(before[:2])  # R and A move to the click
    for other in [*window.views[1:], viewer]:
        np.testing.assert_allclose(other.dims.point, after, atol=1.6)


def test_preset_and_drag_change_every_linked_window(review, phantom3):
    viewer, window, synth, acquired = review
    mask = phantom3["brain_mask"].data > 0
    window.apply_preset("brain")
    expected_acq = preset_window(phantom3["t2"].data, "brain", "t2", mask)
    expected_syn = preset_window(synth.data, "brain", "t2", mask)
    assert expected_acq[0] > 0  # the brain window lifts its low end
    for layer in _linked_images(viewer, window):
        expected = expected_syn if "synth" in layer.name else expected_acq
        np.testing.assert_allclose(layer.contrast_limits, expected, rtol=1e-5)

    window.apply_preset("soft")
    np.testing.assert_allclose(viewer.layers["T2"].contrast_limits, display_window(phantom3["t2"].data, mask))

    # right-drag 100 px right and 50 px up on the sagittal canvas: wider window, higher level, everywhere
    start_acq = limits_to_window_level(tuple(acquired.contrast_limits))
    qt_view = window.qt_views[2]
    canvas = qt_view.canvas.native
    p0 = QPointF(canvas.width() / 2, canvas.height() / 2)
    p1 = QPointF(p0.x() + 100, p0.y() - 50)
    steps = [
        (QEvent.MouseButtonPress, p0, Qt.RightButton),
        (QEvent.MouseMove, QPointF(p0.x() + 50, p0.y() - 25), Qt.RightButton),
        (QEvent.MouseMove, p1, Qt.RightButton),
        (QEvent.MouseButtonRelease, p1, Qt.NoButton),
    ]
    for kind, pos, buttons in steps:
        button = Qt.NoButton if kind == QEvent.MouseMove else Qt.RightButton
        event = QMouseEvent(kind, pos, QPointF(canvas.mapToGlobal(pos.toPoint())), button, buttons, Qt.NoModifier)
        QApplication.sendEvent(canvas, event)
        QApplication.processEvents()
    w_acq, l_acq = limits_to_window_level(tuple(acquired.contrast_limits))
    assert w_acq == pytest.approx(start_acq[0] * (1 + 100 / 256), rel=0.02)
    assert l_acq == pytest.approx(start_acq[1] + start_acq[0] * 50 / 256, rel=0.02)
    # the synthesized image (other units) moved by the same relative amount, in every view
    soft = display_window(phantom3["t2"].data, mask)
    rel = relative_window(tuple(acquired.contrast_limits), soft)
    # 100 px wider and 50 px higher: the low end stays, the high end rises by 100/256 of the window
    assert rel == pytest.approx((0.0, 1 + 100 / 256), abs=0.02)
    for layer in _linked_images(viewer, window):
        ref = display_window(np.asarray(layer.data), mask)
        np.testing.assert_allclose(relative_window(tuple(layer.contrast_limits), ref), rel, rtol=1e-4)
    assert text_overlay(window.views[2]).text.startswith("W ")  # shown on screen

    # unlinked: a change of one layer leaves the others
    window.link_check.setChecked(False)
    before = list(synth.contrast_limits)
    acquired.contrast_limits = [0.0, 10.0]
    assert list(synth.contrast_limits) == before


def test_flicker_swaps_the_visible_layer(review, qtbot):
    _, window, synth, acquired = review
    assert window.showing == "synthesized"
    assert all(s.visible and not a.visible for s, a in zip(window.synth_copies, window.acquired_copies))
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    qtbot.keyClick(window, Qt.Key_F)
    assert window.showing == "acquired"
    assert all(a.visible and not s.visible for s, a in zip(window.synth_copies, window.acquired_copies))
    # same window: the acquired copies keep the linked limits of the acquired layer
    assert all(list(a.contrast_limits) == list(acquired.contrast_limits) for a in window.acquired_copies)
    assert window.flicker() == "synthesized"

    window.checker_check.setChecked(True)
    assert len(window.checker_layers) == 3
    board = window.checker_layers[0].data
    # tile (0, 0, 0) is the synthesized image, tile (0, 0, 1) the acquired, both rescaled to [0, 1] by their windows
    syn = np.asarray(synth.data) / synth.contrast_limits[1]
    acq = np.asarray(acquired.data) / acquired.contrast_limits[1]
    np.testing.assert_allclose(board[:8, :8, :8], syn[:8, :8, :8], atol=1e-5)
    np.testing.assert_allclose(board[:8, :8, 8:16], acq[:8, :8, 8:16], atol=1e-5)
    window.checker_check.setChecked(False)
    assert all("checkerboard" not in [lay.name for lay in v.layers] for v in window.views)


def test_reading_window_reveals_no_condition(make_napari_viewer, qtbot, tmp_path, phantom3):
    from qtpy.QtWidgets import QDockWidget
    from test_study import make_study_folder
    from test_study_widget import MODEL_NAMES

    from napari_neurosynth.study import create_study
    from napari_neurosynth.viewer.study_widget import ReaderStudyWidget

    folder = make_study_folder(tmp_path / "vols", n_cases=2)
    study = create_study(folder, study_id="blind", seed=3, references=["t1"], turing=True)
    path = study.save(tmp_path / "study.yaml")
    viewer = make_napari_viewer(show=True)
    mine = _add(viewer, phantom3["t2"], "T2 (synthesized: t1_to_t2)")  # the user's own layer, named by its model
    widget = ReaderStudyWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Reader Study")
    qtbot.waitUntil(widget.isVisible, timeout=5_000)
    docks = [d for d in widget.window().findChildren(QDockWidget) if d.isVisible()]
    assert len(docks) >= 3  # layer list, layer controls, Reader Study
    assert widget.reading_check.isChecked()  # on by default
    widget.rater_edit.setText("dr-a")
    widget.study_edit.setText(str(path))
    widget.db_edit.setText(str(tmp_path / "r.sqlite"))
    assert widget.start()
    qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)

    reading = widget.reading_window
    assert reading.isVisible()
    secrets = [*MODEL_NAMES, *study.conditions, "sub-0", ".nii", str(tmp_path)]
    texts = [reading.windowTitle(), reading.view.title]
    for layer in reading.view.layers:
        texts += [layer.name, repr(layer.metadata), str(layer.source.path), str(layer.source.reader_plugin)]
    # hanging order: the test image, then its references
    assert [layer.name for layer in reading.view.layers] == ["Image", "Reference: t1"]
    assert tuple(reading.view.dims.order) == (2, 1, 0)  # axial, as a reader expects
    assert not [f"{s!r} in {t!r}" for t in texts for s in secrets if s in t]
    # the user's viewer shows no panel that names layers: only the Reader Study dock stays
    shown = [d for d in widget.window().findChildren(QDockWidget) if d.isVisible()]
    assert len(shown) == 1 and shown[0].isAncestorOf(widget)
    assert not mine.visible and len(viewer.layers) == 1  # the study's images are not in the user's viewer

    # keys act in the reading window: 4, then the Turing answers by click, Enter saves
    reading.activateWindow()
    qtbot.waitUntil(reading.isActiveWindow, timeout=5_000)
    qtbot.keyClick(reading, Qt.Key_4)
    assert widget.score_group.checkedId() == 4
    widget.synthetic_button.click()
    widget.confidence_group.button(3).click()
    qtbot.keyClick(reading, Qt.Key_Return)
    assert widget.session.progress[0] == 1

    # ending the session restores the user's viewer
    widget.stop()
    assert widget.reading_window is None
    assert mine.visible and [layer.name for layer in viewer.layers] == [mine.name]
    assert [d for d in widget.window().findChildren(QDockWidget) if d.isVisible()] == docks


def test_compare_widget_opens_the_review(make_napari_viewer, qtbot, phantom3):
    from napari_neurosynth.viewer.compare_widget import CompareExplainWidget

    viewer = make_napari_viewer()
    t2 = _add(viewer, phantom3["t2"], "T2")
    _add(viewer, phantom3["brain_mask"], "brain_mask", kind="labels")
    _add(viewer, phantom3["lesion_mask"], "lesion_mask", kind="labels")
    vol = phantom3["t2"].with_data(phantom3["t2"].data * 0.9)
    vol.metadata.update(synthesized=True, modality="t2")
    synth = _add(viewer, vol, "T2 (synthesized: fake)")
    widget = CompareExplainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare & Explain")
    widget.synth_combo.set_layer(synth)
    widget.target_combo.set_layer(t2)
    widget.lesion_combo.set_layer(viewer.layers["lesion_mask"])
    widget.review_button.click()
    review = widget.review_window
    assert review is not None and review.isVisible()
    for view in review.views:
        assert [lay.name for lay in view.layers] == ["T2", "T2 (synthesized: fake)", "lesion_mask", "crosshair"]
    assert review.mask is not None and review.mask.sum() == int((phantom3["brain_mask"].data > 0).sum())
    review.close()
