"""The Synthesize dock widget, end to end on a 3 mm phantom with a real (tiny) bundle."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neurosynth.bundle import load_model
from napari_neurosynth.display import display_window
from napari_neurosynth.inference import synthesize
from napari_neurosynth.io import Volume
from napari_neurosynth.viewer.layers import layer_to_volume, viewer_grid, volume_to_layer_data

WAIT_MS = 60_000


@pytest.fixture
def models_dir(tmp_path_factory, monkeypatch, make_bundle):
    """Two small bundles (random weights; the widget's job is plumbing, not quality)."""
    root = tmp_path_factory.mktemp("models")
    make_bundle(
        root,
        card={
            "training": {"data": "napari-neurosynth phantom (seeds 0-3)", "phantom_only": True},
            "metrics": {"held_out": {"psnr": 21.5, "ssim": 0.81}, "baselines": {"identity": {"psnr": 12.0}}},
        },
    )
    make_bundle(root, "tiny_fusion", arch="fusion", inputs=("t1", "t2"), output="flair", context=0)
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", str(root))
    return root


def _add(viewer, vol: Volume, name: str, kind: str = "image"):
    data, kwargs, kind = volume_to_layer_data(vol, name=name, kind=kind)
    return viewer.add_image(data, **kwargs) if kind == "image" else viewer.add_labels(data, **kwargs)


def _wait(qtbot, widget, worker):
    """Wait until the widget's job has ended (its finished signal may already have fired)."""
    assert worker is not None, _errors()[-1:]
    qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT_MS)


def _errors():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


@pytest.fixture
def widget_viewer(make_napari_viewer, models_dir, phantom3):
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    viewer = make_napari_viewer()
    # Offset translation and anisotropic-looking affine come from the phantom itself.
    _add(viewer, phantom3["t1"], "T1")
    _add(viewer, phantom3["t2"], "T2")
    widget = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Synthesize")
    widget.set_model("tiny_t1_to_t2")
    return viewer, widget


def test_run_adds_layer_on_source_grid(widget_viewer, qtbot, phantom3):
    viewer, widget = widget_viewer
    assert widget.input_combos["t1"].layer().name == "T1"  # preselected by name
    assert widget.target_combo.layer().name == "T2"
    widget.set_device("cpu")
    worker = widget.run()
    assert worker is not None
    _wait(qtbot, widget, worker)
    layer = viewer.layers["T2 (synthesized: tiny_t1_to_t2)"]
    assert layer is widget.result_layer
    source = viewer.layers["T1"]
    np.testing.assert_allclose(layer.affine.affine_matrix, source.affine.affine_matrix)
    np.testing.assert_allclose(layer_to_volume(layer).affine, phantom3["t1"].affine)
    assert layer.data.shape == phantom3["t1"].shape
    # The widget's result is the engine's result on the same input.
    expected = synthesize(load_model("tiny_t1_to_t2"), phantom3["t1"], device="cpu")
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5, atol=1e-5)
    md = layer.metadata
    assert md["card"]["name"] == "tiny_t1_to_t2"
    assert md["device"] == "cpu" and md["seconds"] > 0
    assert md["source_layers"] == ["T1"]
    lo, hi = layer.contrast_limits
    assert lo <= np.percentile(layer.data, 50) < hi <= layer.data.max() + 1e-6
    assert (lo, hi) == pytest.approx(display_window(layer.data))
    assert "Added" in widget.status.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_synthesized_and_acquired_layers_share_the_display_rule(widget_viewer, qtbot, phantom3, monkeypatch):
    """A synthesis that equals the acquired image is shown with exactly the acquired layer's window.

    The acquired T2 (opened like any volume) and the synthesized layer both get their
    contrast limits from napari_neurosynth.display.display_window, so a difference
    between them on screen is a difference in the images, never in the windowing.
    """
    import napari_neurosynth.inference as inference

    viewer, widget = widget_viewer
    t2 = phantom3["t2"]

    def perfect_synthesis(model, volumes, **kwargs):
        return volumes[0].with_data(t2.data.copy())

    monkeypatch.setattr(inference, "synthesize_volume", perfect_synthesis)
    widget.set_device("cpu")
    _wait(qtbot, widget, widget.run())
    synthesized = widget.result_layer
    acquired = viewer.layers["T2"]
    assert tuple(synthesized.contrast_limits) == pytest.approx(tuple(acquired.contrast_limits), abs=0)
    assert tuple(acquired.contrast_limits) == pytest.approx(display_window(t2.data))
    # The same rule in other units gives the same picture: limits scale with the data.
    scaled = display_window(t2.data * 1000.0)
    assert scaled == pytest.approx(tuple(1000.0 * np.asarray(acquired.contrast_limits)), rel=1e-5)


def test_details_panel_and_devices(widget_viewer):
    import torch

    _, widget = widget_viewer
    text = widget.details.toPlainText()
    assert "T1 → T2" in text
    # A hand-written card (plain psnr/ssim, one baseline, no verdict) still gets its table.
    assert "phantom" in text.lower() and "21.5" in text and "0.810" in text and "identity" in text
    assert "Beats" not in text
    assert "tiny_t1_to_t2" in widget.model_combo.itemData(widget.model_combo.currentIndex(), 3)  # tooltip role
    idx = widget.device_combo.findData("cuda")
    assert widget.device_combo.model().item(idx).isEnabled() == torch.cuda.is_available()
    assert widget.device_combo.itemText(0).startswith("Auto (")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="not available"):
            widget.set_device("cuda")


def test_side_by_side_grid(widget_viewer, qtbot, phantom3):
    viewer, widget = widget_viewer
    _add(viewer, phantom3["pd"], "PD")
    worker = widget.run()
    _wait(qtbot, widget, worker)
    widget.side_by_side_check.setChecked(True)
    assert viewer_grid(viewer).enabled
    visible = [lay.name for lay in viewer.layers if lay.visible]
    assert visible == ["T1", "T2 (synthesized: tiny_t1_to_t2)", "T2"]
    assert tuple(viewer_grid(viewer).actual_shape(viewer.layers)) == (1, 3)
    # source | synthesized | acquired, left to right
    cols = [viewer_grid(viewer).position(viewer.layers.index(n), viewer.layers)[1] for n in visible]
    assert cols == [0, 1, 2]
    widget.side_by_side_check.setChecked(False)
    assert not viewer_grid(viewer).enabled
    assert viewer.layers["PD"].visible


def test_wrong_choices_notify_and_stay_usable(make_napari_viewer, models_dir, phantom3, qtbot):
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    viewer = make_napari_viewer()
    widget = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Synthesize")
    widget.set_model("tiny_t1_to_t2")
    # no layer at all
    n = len(_errors())
    assert widget.run() is None
    assert "No image layer" in _errors()[n]

    # two-input model with one image: the count does not fit
    _add(viewer, phantom3["t1"], "T1")
    widget.set_model("tiny_fusion")
    assert list(widget.input_combos) == ["t1", "t2"]
    n = len(_errors())
    assert widget.run() is None
    assert "needs 2 input(s)" in _errors()[n] and "T2" in _errors()[n]

    # same layer for both inputs
    widget.input_combos["t2"].set_layer("T1")
    n = len(_errors())
    assert widget.run() is None
    assert "more than one input" in _errors()[n]

    # mismatched grids: a T2 that is not on the T1 grid and does not overlap it
    far = Volume(phantom3["t2"].data, phantom3["t2"].affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    far.affine[:3, 3] += 500.0
    _add(viewer, far, "T2")
    widget.input_combos["t2"].set_layer("T2")
    n = len(_errors())
    worker = widget.run()
    if worker is not None:
        qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT_MS)
    assert any("different grid" in m for m in _errors()[n:]), _errors()[n:]
    assert not any("synthesized" in lay.name for lay in viewer.layers)
    assert widget.run_button.isEnabled()

    # and the widget still works afterwards
    widget.set_model("tiny_t1_to_t2")
    worker = widget.run()
    _wait(qtbot, widget, worker)
    assert "T2 (synthesized: tiny_t1_to_t2)" in viewer.layers


def test_cancel_leaves_no_layer(widget_viewer, qtbot):
    viewer, widget = widget_viewer
    n_layers = len(viewer.layers)
    n = len(_errors())
    worker = widget.run()
    widget.cancel()  # the engine checks between batches; cancelling at once must still stop it
    _wait(qtbot, widget, worker)
    assert len(viewer.layers) == n_layers
    assert any("cancelled" in m.lower() for m in _errors()[n:])
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    # a fresh run afterwards succeeds
    worker = widget.run()
    _wait(qtbot, widget, worker)
    assert len(viewer.layers) == n_layers + 1


def _table_rows(browser) -> list[list[tuple[str, bool]]]:
    """The first table of a QTextBrowser as (text, right-aligned) per cell, row by row."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QTextTable

    table = next(f for f in browser.document().rootFrame().childFrames() if isinstance(f, QTextTable))
    rows = []
    for r in range(table.rows()):
        cells = []
        for c in range(table.columns()):
            cursor = table.cellAt(r, c).firstCursorPosition()
            right = bool(int(cursor.blockFormat().alignment()) & int(Qt.AlignRight))
            cells.append((cursor.block().text(), right))
        rows.append(cells)
    return rows


@pytest.fixture
def shipped_widget(make_napari_viewer, qtbot):
    """The widget docked at napari's default dock width (340 px), on the shipped model cards."""
    from qtpy.QtCore import Qt

    from napari_neurosynth.bundle import list_models
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    if "t1_to_t2" not in list_models():
        pytest.skip("the shipped models/ folder is not on the search path")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    widget = SynthesizeWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Synthesize", area="right")
    widget.window().resizeDocks([dock], [340], Qt.Horizontal)  # the QMainWindow the dock lives in
    qtbot.waitExposed(widget)

    # PyQt5 applies resizeDocks only once the window is shown: ask again until the dock has the width
    def docked() -> bool:
        widget.window().resizeDocks([dock], [340], Qt.Horizontal)
        return abs(dock.width() - 340) <= 2

    qtbot.waitUntil(docked, timeout=5000)
    return widget


def test_shipped_card_metrics_readable_at_dock_width(shipped_widget, qtbot):
    from qtpy.QtCore import QUrl
    from qtpy.QtGui import QTextTable

    from napari_neurosynth.viewer.synthesize_widget import _DETAILS_MAX, ALL_METRICS_LINK

    widget = shipped_widget
    widget.set_model("t1_to_t2")
    card = widget.card
    model, lut = card["metrics"]["held_out"], card["metrics"]["baselines"]["intensity_lut"]
    text = widget.details.toPlainText()
    # Brain PSNR to 0.1 dB as in the card, the LUT baseline beside it, the shipping verdict.
    assert f"{model['psnr_brain']:.1f}" == "25.0"
    rows = _table_rows(widget.details)
    assert [cell for cell, _ in rows[0]] == ["", "PSNR↑", "SSIM↑", "MAE↓"]
    assert [cell for cell, _ in rows[1]] == [
        "model",
        f"{model['psnr_brain']:.1f}",
        f"{model['ssim_brain']:.3f}",
        f"{model['mae_brain']:.3f}",
    ]
    assert [cell for cell, _ in rows[3]] == [
        "intensity LUT",
        f"{lut['psnr_brain']:.1f}",
        f"{lut['ssim_brain']:.3f}",
        f"{lut['mae_brain']:.3f}",
    ]
    assert rows[2][0][0] == "input (standardised)"
    assert all(right for row in rows for _, right in row[1:])  # numbers right-aligned
    assert not any(right for row in rows[1:] for _, right in row[:1])  # names left-aligned
    # the phantom-v2 bundle is below the LUT at 2 mm, and the panel says so
    assert card["metrics"]["beats_baselines"] is False
    assert "Beats both baselines: no" in text
    assert "seeds 1000, 1001 at 2 mm" in text
    # Lesion and NMSE figures are not lost: in the tooltip, and behind "More metrics".
    assert "Lesion mask" not in text and f"{model['nmse_brain']:.4f}" not in text
    tip = widget.details.toolTip()
    assert f"{model['psnr_lesion']:.1f}" in tip and f"{model['nmse_brain']:.4f}" in tip
    widget.details.anchorClicked.emit(QUrl(ALL_METRICS_LINK))
    expanded = widget.details.toPlainText()
    assert "Lesion mask" in expanded and f"{lut['nmse_lesion']:.4f}" in expanded and "Fewer metrics" in expanded
    widget.details.anchorClicked.emit(QUrl(ALL_METRICS_LINK))
    assert "Lesion mask" not in widget.details.toPlainText()

    # Every shipped card fits at the dock width without scroll bars, and the panel stays bounded.
    for name in ("t1_to_t2", "t1_to_flair", "t1t2_to_flair", "t2_mcsr_x4"):
        widget.set_model(name)
        details = widget.details
        qtbot.waitUntil(lambda d=details: d.document().size().height() <= d.viewport().height(), timeout=5000)
        assert details.verticalScrollBar().maximum() == 0, name
        assert details.horizontalScrollBar().maximum() == 0, name
        assert 150 < details.height() <= _DETAILS_MAX, (name, details.height())
        # the metrics table is not clipped on the right (the panel has no horizontal scroll bar)
        doc = details.document()
        table = next(f for f in doc.rootFrame().childFrames() if isinstance(f, QTextTable))
        assert doc.documentLayout().frameBoundingRect(table).right() <= details.viewport().width(), name


def test_constant_input_runs_with_a_warning_notification(make_napari_viewer, models_dir, qtbot, phantom3):
    """A constant volume is synthesized (it is legitimate input) but the user is told it carries no anatomy."""
    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    viewer = make_napari_viewer()
    _add(viewer, phantom3["t1"].with_data(np.full(phantom3["t1"].shape, 5.0, np.float32)), "T1")
    widget = SynthesizeWidget(viewer)
    widget.set_model("tiny_t1_to_t2")
    widget.set_device("cpu")
    _wait(qtbot, widget, widget.run())
    assert widget.result_layer is not None
    shown = [m for m in _errors() if "is constant" in m]
    assert shown and "every voxel is 5" in shown[-1]
