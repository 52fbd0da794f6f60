"""The Reader Study dock widget in a real napari viewer, driven with key presses."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QLineEdit, QPushButton
from test_study import make_study_folder

from napari_neurosynth.display import display_window, prepare_display
from napari_neurosynth.ratings import RatingStore
from napari_neurosynth.study import create_study, load_study, presentation_order
from napari_neurosynth.viewer.layers import viewer_grid
from napari_neurosynth.viewer.study_widget import ReaderStudyWidget

MODEL_NAMES = ("t1_to_t2", "unet_t2")


@pytest.fixture
def study_path(tmp_path):
    folder = make_study_folder(tmp_path / "vols", n_cases=2)
    study = create_study(folder, study_id="blind-pilot", seed=3, references=["t1"], turing=True, subscores=["realism"])
    return study.save(tmp_path / "study.yaml")


def _start(viewer, qtbot, study_path, db, rater="dr-a"):
    widget = ReaderStudyWidget(viewer)
    widget.reading_check.setChecked(False)  # in-viewer mode: these tests inspect viewer.layers (see test_review.py)
    viewer.window.add_dock_widget(widget, name="Reader Study")
    widget.rater_edit.setText(rater)
    widget.study_edit.setText(str(study_path))
    widget.db_edit.setText(str(db))
    assert widget.start()
    qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)
    window = widget.window()  # the viewer's QMainWindow, once docked
    if window.isVisible():  # keys reach shortcuts of the active window, as for a rater at work
        window.activateWindow()
        window.raise_()
        qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    return widget


def _leaks(viewer, widget, tmp_path) -> list[str]:
    """Every piece of text the rater can see or inspect that could name the condition or file."""
    secrets = [*MODEL_NAMES, "acquired", "sub-0", ".nii", str(tmp_path)]
    texts = [viewer.title, widget.window().windowTitle()]
    for layer in viewer.layers:
        texts += [layer.name, repr(layer.metadata), str(layer.source.path), str(layer.source.reader_plugin)]
    for child in widget.findChildren((QLabel, QPushButton)):
        texts.append(child.text())
    return [f"{s!r} in {t!r}" for t in texts for s in secrets if s in t]


def _answer_extras(widget):
    """Sub-score and Turing answers by click (the study asks for them)."""
    widget.subscore_groups["realism"].button(3).click()
    widget.synthetic_button.click()
    widget.confidence_group.button(2).click()


def test_blinded_rating_with_keys_and_resume(make_napari_viewer, qtbot, study_path, tmp_path):
    viewer = make_napari_viewer(show=True)
    db = tmp_path / "ratings.sqlite"
    widget = _start(viewer, qtbot, study_path, db)
    study = load_study(study_path)
    order = presentation_order(study, "dr-a")
    assert widget.session.items == order
    canvas = viewer.window._qt_viewer.canvas.native  # napari has no public handle on the canvas widget

    # blinded: neutral layer names; image and reference shown side by side
    # hanging order: the test image, then its references
    assert [layer.name for layer in viewer.layers] == ["Image", "Reference: t1"]
    assert not _leaks(viewer, widget, tmp_path)
    image = viewer.layers["Image"]
    assert image.metadata == {} and image.source.path is None
    assert tuple(image.contrast_limits) == (0.0, 1.0)
    assert widget.progress_label.text().startswith("Image 1 of 6")

    # item 1: score with key "4" while the canvas has focus, Enter saves and moves on
    first_data = image.data.copy()
    canvas.setFocus()
    _answer_extras(widget)
    qtbot.keyClick(canvas, Qt.Key_4)
    assert widget.score_group.checkedId() == 4
    qtbot.keyClick(canvas, Qt.Key_Return)
    qtbot.waitUntil(lambda: widget.loaded and widget.session.position == 1, timeout=10_000)
    # hanging order: the test image, then its references
    assert [layer.name for layer in viewer.layers] == ["Image", "Reference: t1"]
    assert not np.array_equal(viewer.layers["Image"].data, first_data)  # the next volume is on screen
    assert tuple(viewer.layers["Image"].contrast_limits) == (0.0, 1.0)
    assert widget.score_group.checkedId() == -1  # a fresh item starts unanswered

    # item 2: keys while the widget has focus
    widget.setFocus()
    _answer_extras(widget)
    qtbot.keyClick(widget, Qt.Key_2)
    assert widget.score_group.checkedId() == 2
    qtbot.keyClick(widget, Qt.Key_Enter)  # keypad Enter
    qtbot.waitUntil(lambda: widget.loaded and widget.session.position == 2, timeout=10_000)
    assert widget.progress_label.text() == "Image 3 of 6 · 2/6 rated"
    assert not _leaks(viewer, widget, tmp_path)

    # typing a digit into the comment field is text, not a score
    widget.comment_edit.setFocus()
    qtbot.keyClicks(widget.comment_edit, "5 mm")
    assert widget.comment_edit.text() == "5 mm" and widget.score_group.checkedId() == -1

    # Enter in a text field of another dock widget is not "save and next"
    other = QLineEdit()
    viewer.window.add_dock_widget(other, name="another plugin")
    other.setFocus()
    qtbot.waitUntil(other.hasFocus, timeout=5_000)
    widget.choose_score(1)
    qtbot.keyClick(other, Qt.Key_Return)
    assert widget.session.position == 2 and widget.score_group.checkedId() == 1
    widget._set_group(widget.score_group, None)

    # Enter without a score saves nothing and stays put
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key_Return)
    assert widget.session.position == 2 and "Choose a score" in widget.status_label.text()

    # going back shows the saved answers; a changed score becomes a new row
    widget.previous()
    qtbot.waitUntil(lambda: widget.loaded and widget.session.position == 1, timeout=10_000)
    assert widget.score_group.checkedId() == 2 and widget.synthetic_button.isChecked()
    qtbot.keyClick(canvas, Qt.Key_3)
    qtbot.keyClick(canvas, Qt.Key_Return)
    qtbot.waitUntil(lambda: widget.loaded and widget.session.position == 2, timeout=10_000)

    with RatingStore(db) as store:
        rows = store.ratings(history=True)
    assert [(r["case_id"], r["condition"]) for r in rows] == [order[0], order[1], order[1]]
    assert [(r["score"], r["is_current"]) for r in rows] == [(4, 1), (2, 0), (3, 1)]
    assert rows[2]["supersedes"] == rows[1]["id"]
    assert all(r["rater"] == "dr-a" and r["study"] == "blind-pilot" for r in rows)
    assert all(r["realism"] == 3 and r["turing_choice"] == "synthetic" and r["turing_confidence"] == 2 for r in rows)
    assert all(r["seconds_on_case"] > 0 for r in rows)

    # the rater closes and comes back: same order, same place
    widget.stop()
    assert len(viewer.layers) == 0
    again = _start(viewer, qtbot, study_path, db)
    assert again.session.items == order and again.session.position == 2
    assert "Resumed" in again.status_label.text()
    assert again.progress_label.text() == "Image 3 of 6 · 2/6 rated"
    again.stop()


def test_display_is_neutral_across_conditions(study_path):
    """Every condition goes through the same display window (the viewer's one rule); values end up alike."""
    rng = np.random.default_rng(0)
    raw = rng.gamma(2.0, 300.0, size=(10, 10, 10)).astype(np.float32)
    a, limits_a = prepare_display(raw, (0.5, 99.5), blinded=True)
    b, limits_b = prepare_display(raw / 3000.0, (0.5, 99.5), blinded=True)  # other units
    assert limits_a == limits_b == (0.0, 1.0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.dtype == np.float32
    shown, limits = prepare_display(raw, (0.5, 99.5), blinded=False)
    # Unblinded, an image keeps its values and gets the window every compared layer gets.
    assert shown is raw and limits == pytest.approx(display_window(raw, percentiles=(0.5, 99.5)))


def test_unblinded_shows_names_and_errors_are_messages(make_napari_viewer, qtbot, tmp_path):
    folder = make_study_folder(tmp_path / "vols", n_cases=1, reference=None)
    study = create_study(folder, study_id="open", blinded=False)
    path = study.save(tmp_path / "open.yaml")
    viewer = make_napari_viewer()
    widget = ReaderStudyWidget(viewer)

    # nothing entered yet / a missing study file / an unwritable database: messages, no session
    assert not widget.start()
    assert "rater ID" in widget.status_label.text()
    widget.rater_edit.setText("dr-z")
    widget.study_edit.setText(str(tmp_path / "nope.yaml"))
    assert not widget.start() and "does not exist" in widget.status_label.text()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    widget.study_edit.setText(str(path))
    widget.db_edit.setText(str(blocker / "r.sqlite"))
    assert not widget.start() and "writable path" in widget.status_label.text()
    assert widget.session is None and not widget.rating_box.isEnabled()

    db = tmp_path / "r.sqlite"
    widget.db_edit.setText(str(db))
    assert widget.start()
    qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)
    case_id, condition = widget.session.current
    assert widget.item_label.text() == f"Case {case_id} · {condition}"
    assert [layer.name for layer in viewer.layers] == [f"{condition} · {case_id}"]
    assert list(widget.questions_panel.rows) == ["mos", "comment"]  # no sub-scores, no Turing question

    # the database becomes locked by another program: the rating is refused with a
    # message, the choice stays on screen, and it saves once the lock is gone
    widget.session.store.timeout = 0.2
    widget.session.store._conn.execute("PRAGMA busy_timeout = 200")
    blocker_conn = sqlite3.connect(db, isolation_level=None)
    blocker_conn.execute("BEGIN EXCLUSIVE")
    widget.choose_score(5)
    assert widget.save_and_next() is None
    assert "Not saved" in widget.status_label.text() and widget.score_group.checkedId() == 5
    assert widget.session.position == 0
    blocker_conn.execute("ROLLBACK")
    blocker_conn.close()
    assert widget.save_and_next() is not None
    with RatingStore(db) as store:
        assert [(r["case_id"], r["condition"], r["score"]) for r in store.ratings()] == [(case_id, condition, 5)]

    # rate the remaining two; the end of the study is announced
    for score in (2, 3):
        qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)
        widget.choose_score(score)
        assert widget.save_and_next() is not None
    assert "All 3 images rated" in widget.status_label.text()
    assert widget.progress_label.text() == "Image 3 of 3 · 3/3 rated"
    widget.stop()


def test_other_open_layers_are_hidden_during_a_session(make_napari_viewer, qtbot, study_path, tmp_path):
    # A radiologist who had the acquired T2 and a synthesized T2 open must not see
    # them beside the blinded image; they come back when the session ends.
    viewer = make_napari_viewer(show=True)
    acquired = viewer.add_image(np.ones((8, 8, 8), np.float32), name="T2 acquired")
    synthesized = viewer.add_image(np.ones((8, 8, 8), np.float32), name="T2 (synthesized: t1_to_t2)")
    hidden_before = viewer.add_image(np.ones((8, 8, 8), np.float32), name="PD", visible=False)
    widget = _start(viewer, qtbot, study_path, tmp_path / "ratings.sqlite")
    visible = [layer.name for layer in viewer.layers if layer.visible]
    assert visible == ["Image", "Reference: t1"]
    widget.stop()
    assert acquired.visible and synthesized.visible and not hidden_before.visible
    assert not viewer_grid(viewer).enabled
