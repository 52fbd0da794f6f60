"""The reader's side of a v2 reader study in a real viewer: hanging protocol, typed questions by keyboard,
localisation clicks, answer policy and audit, time on case, crossover washout, blinding of both modes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import yaml
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication, QDockWidget, QLabel, QLineEdit, QPushButton

from napari_neurosynth.io import write_volume
from napari_neurosynth.ratings import RatingStore
from napari_neurosynth.viewer.study_widget import MARKS_NAME, ReaderStudyWidget
from napari_neurosynth.windowing import hanging_display

MODELS = ("t1_to_t2",)
CONDITIONS = ("acquired", "t1_to_t2")

#: One question of every type; keys: 1-5, r/s, 1-5, 1-4 toggles, typed, y/n, clicks + 1-5, typed.
QUESTIONS = [
    {"id": "mos", "type": "likert", "prompt": "Overall image quality",
     "anchors": {1: "non-diagnostic", 5: "excellent"}},
    {"id": "turing", "type": "choice", "prompt": "Real or synthetic?", "options": ["real", "synthetic"],
     "keys": {"r": "real", "s": "synthetic"}},
    {"id": "turing_confidence", "type": "likert", "prompt": "Confidence"},
    {"id": "artefacts", "type": "multiple_choice", "prompt": "Artefacts",
     "options": ["motion", "aliasing", "blur", "none"], "required": False},
    {"id": "lesion_count", "type": "number", "prompt": "How many lesions?", "min": 0, "max": 50, "step": 1},
    {"id": "diagnostic", "type": "yes_no", "prompt": "Diagnostic quality?"},
    {"id": "lesions", "type": "localisation", "prompt": "Click each lesion", "margin_mm": 3, "max_marks": 5},
    {"id": "comment", "type": "text", "prompt": "Comment", "required": False},
]  # fmt: skip


def write_study(root, phantom, *, hanging=True, answers=None, sessions=None, questions=QUESTIONS, n_cases=2):
    """Phantom volumes per condition (the 'model' is a dimmed copy) and a v2 study file; returns its path."""
    t2, t1, lesion = phantom["t2"], phantom["t1"], phantom["lesion_mask"]
    cases = []
    for i in range(n_cases):
        case = f"sub-{i + 1:02d}"
        paths = {}
        for cond, vol in (("acquired", t2), ("t1_to_t2", t2.with_data(t2.data * (0.8 + 0.1 * i))), ("t1", t1)):
            paths[cond] = root / cond / f"{case}.nii.gz"
            paths[cond].parent.mkdir(parents=True, exist_ok=True)
            write_volume(vol, paths[cond])
        mask = root / "truth" / f"{case}.nii.gz"
        mask.parent.mkdir(parents=True, exist_ok=True)
        write_volume(lesion.with_data((lesion.data > 0).astype(np.uint8)), mask)
        cases.append(
            {
                "id": case,
                "conditions": {c: str(paths[c].relative_to(root)) for c in CONDITIONS},
                "references": {"t1": str(paths["t1"].relative_to(root))},
                "lesion_mask": str(mask.relative_to(root)),
            }
        )
    data = {"study": "v2-pilot", "seed": 5, "blinded": True, "questions": questions, "cases": cases}
    if hanging:
        data["hanging"] = {
            "images": [{"image": "test", "preset": "brain", "contrast": "t2"}, {"image": "t1", "preset": "soft"}],
            "planes": ["axial", "coronal", "sagittal"],
            "linked": True,
            "windowing": "fixed",
        }
    if answers is not None:
        data["answers"] = answers
    if sessions is not None:
        data["sessions"] = sessions
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start(viewer, qtbot, path, db, reading=True, rater="dr-a", **kwargs):
    widget = ReaderStudyWidget(viewer, **kwargs)
    viewer.window.add_dock_widget(widget, name="Reader Study")
    widget.reading_check.setChecked(reading)
    widget.rater_edit.setText(rater)
    widget.study_edit.setText(str(path))
    widget.db_edit.setText(str(db))
    assert widget.start(), widget.status_label.text()
    qtbot.waitUntil(lambda: widget.loaded, timeout=15_000)
    window = widget.reading_window if reading else widget.window()
    window.activateWindow()
    window.raise_()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    return widget, window


def wait_item(qtbot, widget, position):
    qtbot.waitUntil(lambda: widget.loaded and widget.session.position == position, timeout=15_000)


def texts_of(*widgets) -> list[str]:
    """Every text a reader can see or hover over in these windows."""
    out = []
    for root in widgets:
        out += [root.windowTitle(), root.toolTip()]
        for child in root.findChildren((QLabel, QPushButton, QLineEdit)):
            out += [child.text(), child.toolTip()]
            if isinstance(child, QLineEdit):
                out.append(child.placeholderText())
    return out


def layer_texts(views) -> list[str]:
    out = []
    for view in views:
        out.append(view.title)
        for layer in view.layers:
            out += [layer.name, repr(layer.metadata), str(layer.source.path), str(layer.source.reader_plugin)]
            if hasattr(layer, "features"):
                out.append(repr(layer.features))
    return out


def leaks(texts, tmp_path) -> list[str]:
    secrets = [*MODELS, *CONDITIONS, "sub-0", ".nii", str(tmp_path)]
    return [f"{s!r} in {t!r}" for t in texts for s in secrets if s in t]


def click(qt_view, fx=0.5, fy=0.5):
    """A left click (press and release, no move) at a fraction of the canvas."""
    canvas = qt_view.canvas.native
    pos = QPointF(canvas.width() * fx, canvas.height() * fy)
    for kind, buttons in ((QEvent.MouseButtonPress, Qt.LeftButton), (QEvent.MouseButtonRelease, Qt.NoButton)):
        event = QMouseEvent(
            kind, pos, QPointF(canvas.mapToGlobal(pos.toPoint())), Qt.LeftButton, buttons, Qt.NoModifier
        )
        QApplication.sendEvent(canvas, event)
    QApplication.processEvents()


def right_drag(qt_view, dx=120, dy=-60):
    canvas = qt_view.canvas.native
    p0 = QPointF(canvas.width() / 2, canvas.height() / 2)
    p1 = QPointF(p0.x() + dx, p0.y() + dy)
    for kind, pos, buttons in (
        (QEvent.MouseButtonPress, p0, Qt.RightButton),
        (QEvent.MouseMove, p1, Qt.RightButton),
        (QEvent.MouseButtonRelease, p1, Qt.NoButton),
    ):
        button = Qt.NoButton if kind == QEvent.MouseMove else Qt.RightButton
        event = QMouseEvent(kind, pos, QPointF(canvas.mapToGlobal(pos.toPoint())), button, buttons, Qt.NoModifier)
        QApplication.sendEvent(canvas, event)
        QApplication.processEvents()


def keys(qtbot, target, *sequence):
    for key in sequence:
        if isinstance(key, str):
            qtbot.keyClicks(QApplication.focusWidget() or target, key)
        elif isinstance(key, tuple):
            qtbot.keyClick(QApplication.focusWidget() or target, *key)
        else:
            qtbot.keyClick(QApplication.focusWidget() or target, key)


def answer_all_by_keys(qtbot, window, mos=4):
    """A keyboard-only reader: every question type, in order, then Enter."""
    digit = getattr(Qt, f"Key_{mos}")
    keys(qtbot, window, digit, Qt.Key_S, Qt.Key_3)  # likert (moves on), choice (moves on), likert (moves on)
    keys(qtbot, window, Qt.Key_1, Qt.Key_3, Qt.Key_Tab)  # multiple choice: motion + blur, Tab to the number
    keys(qtbot, window, "7", Qt.Key_Tab)  # typed into the number field
    keys(qtbot, window, Qt.Key_Y)  # yes/no (moves on to the localisation)
    keys(qtbot, window, Qt.Key_0, Qt.Key_Tab)  # "no finding", Tab to the free text
    keys(qtbot, window, "ok 5", Qt.Key_Return)


@pytest.fixture
def study_path(tmp_path, phantom3):
    return write_study(tmp_path / "study", phantom3)


def test_reading_window_hangs_the_protocol_blinded_and_locked(make_napari_viewer, qtbot, tmp_path, study_path):
    viewer = make_napari_viewer(show=True)
    mine = viewer.add_image(np.ones((8, 8, 8), np.float32), name="T2 (synthesized: t1_to_t2)")
    widget, reading = start(viewer, qtbot, study_path, tmp_path / "r.sqlite")
    session = widget.session
    assert reading.planes == ("axial", "coronal", "sagittal") and len(reading.views) == 3
    # each view shows its plane: the world axis not displayed is S (axial), A (coronal), R (sagittal)
    assert [tuple(v.dims.not_displayed) for v in reading.views] == [(2,), (1,), (0,)]
    # the hanging order in every view: the test image and the source T1, each with the (neutral) marks over it
    for view in reading.views:
        assert [layer.name for layer in view.layers] == ["Image", f"{MARKS_NAME} 1", "Reference: t1", f"{MARKS_NAME} 2"]
    # preset per image: the test image in the 'brain' window of T2, the T1 in the study's display window
    case_id, condition = session.current
    case = session.study.case(case_id)
    from napari_neurosynth.io import read_volume

    raw = read_volume(case.conditions[condition]).data
    expected = hanging_display(raw, "brain", "t2", session.study.window, blinded=True)[1]
    t1 = read_volume(case.references["t1"]).data
    expected_t1 = hanging_display(t1, "soft", "t1", session.study.window, blinded=False)[1]
    for view in reading.views:
        np.testing.assert_allclose(view.layers["Image"].contrast_limits, expected, rtol=1e-5)
        np.testing.assert_allclose(view.layers["Reference: t1"].contrast_limits, expected_t1, rtol=1e-5)
    assert expected[0] > 0  # the brain preset lifts the low end: not the default window

    # windowing is fixed by the protocol: a right-drag changes nothing, nor does a direct change
    image = reading.views[0].layers["Image"]
    before = tuple(image.contrast_limits)
    right_drag(reading.qt_views[0])
    image.contrast_limits = [0.0, 0.1]
    assert tuple(image.contrast_limits) == pytest.approx(before)

    # linked views: a slice change in one moves the others
    moved = list(reading.views[1].dims.point)
    moved[1] += 6.0
    reading.views[1].dims.point = moved
    assert all(v.dims.point[1] == pytest.approx(reading.views[1].dims.point[1]) for v in reading.views)

    # nothing anywhere names the condition, the model, the case or a file
    # (the dock keeps only the rater's own entries: id, study file, ratings file)
    texts = texts_of(reading) + layer_texts(reading.views) + [viewer.title, widget.status_label.text()]
    assert not leaks(texts, tmp_path)
    shown = [d for d in widget.window().findChildren(QDockWidget) if d.isVisible()]
    assert len(shown) == 1 and shown[0].isAncestorOf(widget)
    # the questions hang beside the images, with their key hints
    assert reading.isAncestorOf(widget.questions_panel)
    hints = {qid: row.hint_label.text() for qid, row in widget.questions_panel.rows.items()}
    assert "1-5" in hints["mos"] and "non-diagnostic" in hints["mos"] and "Y or N" in hints["diagnostic"]
    widget.stop()
    assert mine.visible and widget.isAncestorOf(widget.questions_panel)


def test_keyboard_only_reader_answers_every_question_type(make_napari_viewer, qtbot, tmp_path, phantom3):
    study_path = write_study(tmp_path / "study", phantom3, hanging=False)
    viewer = make_napari_viewer(show=True)
    db = tmp_path / "r.sqlite"
    widget, reading = start(viewer, qtbot, study_path, db)
    first = widget.session.current
    panel = widget.questions_panel
    # arrows and Shift+Tab move between questions; nothing is answered by moving
    keys(qtbot, reading, Qt.Key_Down, Qt.Key_Down)
    assert panel.current == 2
    keys(qtbot, reading, Qt.Key_Up, (Qt.Key_Backtab, Qt.ShiftModifier))
    assert panel.current == 0 and all(v is None for v in panel.values().values())
    # Enter with required questions open saves nothing and marks the first one
    keys(qtbot, reading, Qt.Key_Down, Qt.Key_Return)
    assert widget.session.position == 0 and panel.current == 0
    answer_all_by_keys(qtbot, reading)
    wait_item(qtbot, widget, 1)
    assert widget.progress_label.text().startswith("Image 2 of 4 · 1/4")
    with RatingStore(db) as store:
        rows = store.answers(study="v2-pilot", rater="dr-a")
    got = {r["question"]: r["value"] for r in rows if (r["case_id"], r["condition"]) == first}
    assert got == {
        "mos": 4,
        "turing": "synthetic",
        "turing_confidence": 3,
        "artefacts": ["motion", "blur"],
        "lesion_count": 7,
        "diagnostic": True,
        "lesions": [],
        "comment": "ok 5",
    }
    # the next image starts unanswered, at the first question
    assert all(v is None for v in panel.values().values()) and panel.current == 0
    widget.stop()


def test_localisation_marks_are_clicks_in_world_mm(make_napari_viewer, qtbot, tmp_path, study_path):
    viewer = make_napari_viewer(show=True)
    db = tmp_path / "r.sqlite"
    widget, reading = start(viewer, qtbot, study_path, db)
    item = widget.session.current
    panel = widget.questions_panel
    row = panel.localisation_row()
    axial = reading.views[0]
    # a click while another question is current does not mark (it is reading, not answering)
    click(reading.qt_views[0], 0.25, 0.5)
    assert row.marks == []
    panel.go_to_question("lesions")
    click(reading.qt_views[0], 0.22, 0.45)  # on the test image (the left cell)
    keys(qtbot, reading, Qt.Key_4)
    click(reading.qt_views[0], 0.78, 0.55)  # on the T1 beside it: the same world millimetres
    keys(qtbot, reading, Qt.Key_2)
    click(reading.qt_views[0], 0.28, 0.5)
    keys(qtbot, reading, Qt.Key_Delete)  # the third mark is removed
    assert [m["confidence"] for m in row.marks] == [4, 2]
    marks_layer = axial.layers[f"{MARKS_NAME} 1"]
    np.testing.assert_allclose(marks_layer.data, [[m["x"], m["y"], m["z"]] for m in row.marks])
    # an axial click lies on the axial slice shown (world S), inside the image's world extent
    lo, hi = np.asarray(axial.layers["Image"].extent.world)
    for m in row.marks:
        assert m["z"] == pytest.approx(axial.dims.point[2], abs=1e-6)
        assert lo[0] - 1 <= m["x"] <= hi[0] + 1 and lo[1] - 1 <= m["y"] <= hi[1] + 1
    assert list(marks_layer.features["label"]) == ["1: 4", "2: 2"]
    # every image of every view draws the same marks
    assert all(np.array_equal(layer.data, marks_layer.data) for layer in widget._marks_layers)
    assert len(widget._marks_layers) == 6
    saved = [dict(m) for m in row.marks]
    panel.go(0)
    keys(qtbot, reading, Qt.Key_5, Qt.Key_R, Qt.Key_5, Qt.Key_Tab, "3", Qt.Key_Tab, Qt.Key_N, Qt.Key_Return)
    wait_item(qtbot, widget, 1)
    with RatingStore(db) as store:
        rows = store.answers(study="v2-pilot", rater="dr-a")
    stored = next(r["value"] for r in rows if r["question"] == "lesions" and (r["case_id"], r["condition"]) == item)
    key = ("x", "y", "z", "confidence")
    assert [tuple(m[k] for k in key) for m in stored] == [pytest.approx(tuple(m[k] for k in key)) for m in saved]
    widget.stop()


def test_answer_policy_back_edit_and_audit(make_napari_viewer, qtbot, tmp_path, phantom3):
    viewer = make_napari_viewer(show=True)
    # editing allowed: going back and changing the MOS keeps an audit row with old and new value
    path = write_study(tmp_path / "a", phantom3, hanging=False, answers={"allow_back": True, "allow_edit": True})
    db = tmp_path / "a.sqlite"
    widget, reading = start(viewer, qtbot, path, db)
    answer_all_by_keys(qtbot, reading, mos=4)
    wait_item(qtbot, widget, 1)
    assert widget.previous_button.isEnabled()
    widget.previous()
    wait_item(qtbot, widget, 0)
    assert widget.questions_panel.values()["mos"] == 4 and "audit" in widget.edit_label.text()
    keys(qtbot, reading, Qt.Key_2, Qt.Key_Return)
    wait_item(qtbot, widget, 1)
    widget.previous()
    wait_item(qtbot, widget, 0)
    assert "Edited 1 time" in widget.edit_label.text() and "4 → 2" in widget.edit_label.text()
    with RatingStore(db) as store:
        audit = [r for r in store.audit(study="v2-pilot", rater="dr-a") if r["question"] == "mos"]
    assert [(r["old_value"], r["new_value"]) for r in audit] == [(None, 4), (4, 2)]
    assert all(r["changed_at"] for r in audit)
    widget.stop()

    # going back forbidden: the button is off and Previous does nothing
    path = write_study(tmp_path / "b", phantom3, hanging=False, answers={"allow_back": False, "allow_edit": False})
    widget, reading = start(viewer, qtbot, path, tmp_path / "b.sqlite")
    answer_all_by_keys(qtbot, reading)
    wait_item(qtbot, widget, 1)
    assert not widget.previous_button.isEnabled()
    widget.previous()
    assert widget.session.position == 1 and "does not allow going back" in widget.status_label.text()
    widget.stop()

    # back allowed, edits not: the earlier answers are shown, locked
    path = write_study(tmp_path / "c", phantom3, hanging=False, answers={"allow_back": True, "allow_edit": False})
    widget, reading = start(viewer, qtbot, path, tmp_path / "c.sqlite")
    answer_all_by_keys(qtbot, reading, mos=4)
    wait_item(qtbot, widget, 1)
    widget.previous()
    wait_item(qtbot, widget, 0)
    assert not widget.questions_panel.editable and "final" in widget.edit_label.text()
    keys(qtbot, reading, Qt.Key_1)
    assert widget.questions_panel.values()["mos"] == 4
    widget.stop()


def test_time_on_case_counts_only_while_on_screen(make_napari_viewer, qtbot, tmp_path, phantom3):
    study_path = write_study(tmp_path / "study", phantom3, hanging=False)
    viewer = make_napari_viewer(show=True)
    now = [1000.0]
    db = tmp_path / "r.sqlite"
    widget, reading = start(viewer, qtbot, study_path, db, clock=lambda: now[0])
    item = widget.session.current
    now[0] += 5.0
    keys(qtbot, reading, Qt.Key_P)  # the session's own pause: images hidden, clock stopped
    assert widget.paused and widget.session.paused
    assert not any(layer.visible for layer in reading.views[0].layers)
    now[0] += 50.0
    keys(qtbot, reading, Qt.Key_4)  # no answers while paused
    assert widget.questions_panel.values()["mos"] is None
    keys(qtbot, reading, Qt.Key_P)
    assert not widget.session.paused and all(layer.visible for layer in reading.views[0].layers)
    now[0] += 2.0
    reading.hide()  # the reader switches away: the case is not on screen
    assert widget.session.paused
    now[0] += 100.0
    reading.show()
    qtbot.waitUntil(lambda: not widget.session.paused, timeout=5_000)
    now[0] += 1.0
    # (Xvfb has no window manager to give the re-shown window the keyboard: answer through the panel)
    widget.questions_panel.set_values(
        {"mos": 4, "turing": "real", "turing_confidence": 2, "lesion_count": 0, "diagnostic": False, "lesions": []}
    )
    assert widget.save_and_next() is not None
    wait_item(qtbot, widget, 1)
    with RatingStore(db) as store:
        rows = store.answers(study="v2-pilot", rater="dr-a")
    seconds = {r["seconds_on_case"] for r in rows if (r["case_id"], r["condition"]) == item}
    assert len(seconds) == 1 and seconds.pop() == pytest.approx(8.0)
    widget.stop()


def test_crossover_session_two_waits_for_the_washout(make_napari_viewer, qtbot, tmp_path, phantom3):
    from napari.utils.notifications import notification_manager

    sessions = [
        {"id": "unaided", "conditions": ["acquired"]},
        {"id": "aided", "conditions": ["acquired", "t1_to_t2"], "washout": "14d"},
    ]
    path = write_study(tmp_path / "x", phantom3, hanging=False, sessions=sessions)
    db = tmp_path / "x.sqlite"
    viewer = make_napari_viewer(show=True)
    today = [datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)]
    widget, reading = start(viewer, qtbot, path, db, now=lambda: today[0])
    assert widget.progress_label.text().startswith("Session 1 of 2")
    for position in range(2):
        wait_item(qtbot, widget, position)
        answer_all_by_keys(qtbot, reading)
    assert "All 2 images rated" in widget.status_label.text()
    widget.stop()

    today[0] += timedelta(days=3)
    notification_manager.records.clear()
    again = ReaderStudyWidget(viewer, now=lambda: today[0])
    viewer.window.add_dock_widget(again, name="Reader Study 2")
    again.reading_check.setChecked(True)
    again.rater_edit.setText("dr-a")
    again.study_edit.setText(str(path))
    again.db_edit.setText(str(db))
    assert not again.start()
    assert again.session is None and again.reading_window is None
    messages = [str(n.message) for n in notification_manager.records]
    assert any("2026-03-16" in m for m in messages), messages
    assert "2026-03-16" in again.status_label.text()

    today[0] += timedelta(days=12)  # 15 days after the end of session 1
    assert again.start(), again.status_label.text()
    qtbot.waitUntil(lambda: again.loaded, timeout=15_000)
    assert again.progress_label.text().startswith("Session 2 of 2") and "of 4" in again.progress_label.text()
    again.stop()


def test_in_viewer_mode_takes_the_users_layers_out(make_napari_viewer, qtbot, tmp_path, study_path):
    from napari.layers import Image

    from napari_neurosynth.viewer._qt_common import LayerCombo

    viewer = make_napari_viewer(show=True)
    t2 = viewer.add_image(np.ones((8, 8, 8), np.float32), name="T2")
    synth = viewer.add_image(np.ones((8, 8, 8), np.float32), name="T2 (synthesized: t1_to_t2)")
    hidden = viewer.add_image(np.ones((8, 8, 8), np.float32), name="PD", visible=False)
    combo = LayerCombo(viewer, Image)
    combo.set_layer(synth)  # another widget's choice, which must survive the session
    widget, _ = start(viewer, qtbot, study_path, tmp_path / "r.sqlite", reading=False)
    assert widget.reading_window is None
    assert [layer.name for layer in viewer.layers] == ["Image", f"{MARKS_NAME} 1", "Reference: t1", f"{MARKS_NAME} 2"]
    assert not leaks(layer_texts([viewer]) + texts_of(widget.rating_box) + [widget.status_label.text()], tmp_path)
    shown = [d for d in widget.window().findChildren(QDockWidget) if d.isVisible()]
    assert len(shown) == 1 and shown[0].isAncestorOf(widget)  # no layer list, no other panel
    # keys and clicks work in the viewer too
    keys(qtbot, widget.window(), Qt.Key_3)
    assert widget.questions_panel.values()["mos"] == 3
    widget.stop()
    assert list(viewer.layers) == [t2, synth, hidden]
    assert t2.visible and synth.visible and not hidden.visible
    assert combo.layer() is synth
