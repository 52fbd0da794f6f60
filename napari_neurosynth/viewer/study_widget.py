"""The *Reader Study* dock widget: blinded, randomized MOS capture in napari.

The rater types an id, picks a study file (and optionally the ratings database)
and presses *Start / resume*. Images are shown one at a time, each beside the
case's reference images if the study has any. With a blinded study the image
layer is called ``"Image"`` and the references ``"Reference: <name>"`` (the
reference names of the study file, e.g. ``t1``, shared by all conditions): no model,
condition, case or file name appears in layer names, layer metadata, layer
source, the window title or the widget; intensities are rescaled by the same
display window (:func:`napari_neurosynth.display.display_window`, the rule every
compared image in the viewer gets) for every condition, so value ranges do not
give the source away either.

The questions are the study's typed questions
(:mod:`napari_neurosynth.questions`), one row each in a
:class:`~napari_neurosynth.viewer.questions_panel.QuestionsPanel`; the keyboard
drives all of them (while the napari window or the reading window is active,
whether a canvas or the panel has focus; typing in a text field is left alone):
each question's keys answer the marked question, ``Tab``/``↓`` and
``Shift+Tab``/``↑`` move between questions, ``Enter`` saves and moves to the next
image, ``P`` pauses. Localisation marks are clicks on the image (world mm), each
with a ``1``-``5`` confidence. Every saved answer is written to disk before the
widget confirms it; a failed save keeps the answers on screen.

The study's hanging protocol chooses the images beside the test image, the
plane(s) (a tri-planar protocol gets three linked views in the reading window),
each image's window preset and whether the reader may change windowing
(right-drag / Ctrl+drag when allowed). Its answer policy decides whether the reader
may go back and change answers (every change is audited by the store). Time on
case counts only while the case is on screen.

All study logic lives in :mod:`napari_neurosynth.study` (no Qt); this module
only shows things and forwards clicks.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QShortcut,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from napari_neurosynth.errors import NeurosynthError

from .layers import set_anatomical_view, viewer_grid
from .questions_panel import QuestionsPanel, key_slot
from .review import hide_docks, plain_click, show_docks

__all__ = ["ReaderStudyWidget"]

log = logging.getLogger(__name__)

#: Marks of a localisation question: a neutral name, drawn the same for every condition.
MARKS_NAME = "marks"


def _load_item(shown: list[tuple[str, Path, str, str | None, bool]], percentiles, blinded: bool) -> list[tuple]:
    """Read and prepare the images of one item in hanging order (runs in a worker thread).

    ``shown`` holds ``(key, path, preset, contrast, is_test)`` per image. Arrays and
    starting windows come from :func:`napari_neurosynth.windowing.hanging_display`:
    the study's display rule for every condition (a blinded test image rescaled to
    [0, 1]) and the protocol's preset per image. Returns ``(key, is_test, data,
    limits, affine)`` per image.
    """
    from napari_neurosynth.io import read_volume
    from napari_neurosynth.windowing import hanging_display

    out = []
    with warnings.catch_warnings(record=True) as caught:  # warnings name files: log, do not show
        warnings.simplefilter("always")
        for key, path, preset, contrast, is_test in shown:
            volume = read_volume(path)
            data, limits = hanging_display(volume.data, preset, contrast, percentiles, blinded and is_test)
            out.append((key, is_test, data, limits, volume.affine))
    for w in caught:
        log.warning("reader study: %s", w.message)
    return out


class ReaderStudyWidget(QWidget):
    """Dock widget that runs a reader study for one rater.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    clock, now : callable, optional
        Passed to :class:`~napari_neurosynth.study.ReaderSession` (seconds for time on
        case; the wall-clock time for the washout of a crossover study).

    Examples
    --------
    >>> widget = ReaderStudyWidget(viewer)  # doctest: +SKIP
    >>> widget.rater_edit.setText("dr-a"); widget.study_edit.setText("study.yaml")  # doctest: +SKIP
    >>> widget.start()  # doctest: +SKIP
    >>> widget.choose_score(4); widget.save_and_next()  # doctest: +SKIP
    """

    def __init__(self, napari_viewer, clock=None, now=None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = None
        self.store = None
        self.loaded = False  # the current item's image is on screen
        self.paused = False
        self._clock, self._now = clock, now
        self._layers: list = []
        self._marks_layers: list = []
        self._load_token = 0
        self._worker = None
        self._hidden: list = []
        self._stashed: list = []
        self._hidden_docks: list = []
        self._session_shortcuts: list = []
        self._watched_window = None
        self.reading_window = None
        self.windowing = None

        setup = self._build_setup()
        self.rating_box = self._build_rating()
        self.status_label = QLabel("Enter your rater ID and a study file, then press Start / resume.")
        self.status_label.setWordWrap(True)

        self._layout = QVBoxLayout(self)
        self._layout.addWidget(setup)
        self._layout.addWidget(self.rating_box)
        self._layout.addWidget(self.status_label)
        self._layout.addStretch(1)

    # -- building the panel ----------------------------------------------------------
    def _build_setup(self) -> QGroupBox:
        """Rater ID, study file, ratings file and the Start / resume button."""
        setup = QGroupBox("Study")
        form = QFormLayout(setup)
        self.rater_edit = QLineEdit()
        self.rater_edit.setPlaceholderText("e.g. reader-01")
        form.addRow("Rater ID", self.rater_edit)
        self.study_edit = QLineEdit()
        self.study_edit.setPlaceholderText("study.yaml")
        study_browse = QPushButton("Browse…")
        study_browse.clicked.connect(self._browse_study)
        form.addRow("Study file", self._row(self.study_edit, study_browse))
        self.db_edit = QLineEdit()
        from napari_neurosynth.ratings import default_db_path

        self.db_edit.setPlaceholderText(str(default_db_path()))
        self.db_edit.setToolTip("A SQLite file, or postgresql://user@host:port/db for a study that spans sites")
        db_browse = QPushButton("Browse…")
        db_browse.clicked.connect(self._browse_db)
        form.addRow("Ratings file", self._row(self.db_edit, db_browse))
        self.reading_check = QCheckBox("Clean reading window")
        self.reading_check.setChecked(True)
        self.reading_check.setToolTip(
            "Blinded studies: show the case in a window of its own, with the questions beside it and no layer "
            "list, names or controls. Unticked, the case is shown in this viewer, with your own layers taken "
            "out and the other panels hidden until the session ends"
        )
        form.addRow(self.reading_check)
        self.start_button = QPushButton("Start / resume")
        self.start_button.clicked.connect(self.start)
        form.addRow(self.start_button)
        return setup

    def _build_rating(self) -> QGroupBox:
        """Progress, the questions panel (rows built per study), Previous / Pause / Save & next."""
        box = QGroupBox("Rating")
        rating = QVBoxLayout(box)
        self.progress_label = QLabel("")
        self.item_label = QLabel("")
        rating.addWidget(self.progress_label)
        rating.addWidget(self.item_label)
        self.questions_panel = QuestionsPanel()
        self.questions_panel.submitted.connect(self._key_next)
        rating.addWidget(self.questions_panel)
        self.edit_label = QLabel("")
        self.edit_label.setWordWrap(True)
        self.edit_label.setStyleSheet("color: #d0a040;")
        rating.addWidget(self.edit_label)
        self.keys_label = QLabel(self.questions_panel.hint())
        self.keys_label.setWordWrap(True)
        self.keys_label.setStyleSheet("color: #8a8f98; font-size: 10px;")
        rating.addWidget(self.keys_label)
        self.previous_button = QPushButton("◀ Previous")
        self.previous_button.clicked.connect(self.previous)
        self.pause_button = QPushButton("Pause (P)")
        self.pause_button.setCheckable(True)
        self.pause_button.setFocusPolicy(Qt.NoFocus)
        self.pause_button.toggled.connect(self.set_paused)
        self.next_button = QPushButton("Save && next ▶ (Enter)")
        self.next_button.clicked.connect(self.save_and_next)
        rating.addWidget(self._row(self.previous_button, self.pause_button, self.next_button))
        box.setEnabled(False)
        return box

    # -- the questions, by their old names (the MOS, sub-scores, Turing choice, comment) ---------
    def _row_of(self, qid: str):
        return self.questions_panel.rows.get(qid)

    @property
    def score_group(self) -> QButtonGroup | None:
        """The MOS buttons (ids 1-5)."""
        row = self._row_of("mos")
        return row.group if row is not None else None

    @property
    def subscore_groups(self) -> dict[str, QButtonGroup]:
        """Sub-score buttons by sub-score name."""
        from napari_neurosynth.ratings import SUBSCORES

        return {q: row.group for q, row in self.questions_panel.rows.items() if q in SUBSCORES}

    @property
    def real_button(self) -> QPushButton | None:
        row = self._row_of("turing")
        return row._button_for("real") if row is not None else None

    @property
    def synthetic_button(self) -> QPushButton | None:
        row = self._row_of("turing")
        return row._button_for("synthetic") if row is not None else None

    @property
    def confidence_group(self) -> QButtonGroup | None:
        row = self._row_of("turing_confidence")
        return row.group if row is not None else None

    @property
    def comment_edit(self) -> QLineEdit | None:
        row = self._row_of("comment")
        return row.edit if row is not None else None

    # -- small builders ------------------------------------------------------------
    @staticmethod
    def _row(*widgets) -> QWidget:
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in widgets:
            layout.addWidget(w)
        return row

    def _session_keys(self) -> list[tuple[str, Any]]:
        """(key sequence, slot) of every key a session uses: the questions' keys, navigation, Enter, P."""
        panel = self.questions_panel
        keys = [(k.upper() if len(k) == 1 else k, key_slot(panel, k, self._may_take_key)) for k in sorted(panel.keys())]
        keys += [(k, key_slot(panel, k, self._may_take_key)) for k in ("Up", "Down", "Delete", "Backspace")]
        keys += [("Tab", self._key_tab(forward=True)), ("Shift+Tab", self._key_tab(forward=False))]
        keys += [("Return", self._key_next), ("Enter", self._key_next), ("P", self._key_pause)]
        return keys

    def _install_session_keys(self) -> None:
        # Window-wide shortcuts: they fire whether the canvas or this widget has
        # focus; a QLineEdit with focus takes printable keys itself (Qt's
        # ShortcutOverride), so typing a rater id or comment is not an answer.
        # They exist only during a session, so napari keeps its keys otherwise.
        self._remove_session_keys()
        for key, slot in self._session_keys():
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.WindowShortcut)
            shortcut.activated.connect(slot)
            self._session_shortcuts.append(shortcut)

    def _remove_session_keys(self) -> None:
        for shortcut in self._session_shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._session_shortcuts = []

    # -- file choosers ---------------------------------------------------------------
    def _browse_study(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Study file", "", "Study (*.yaml *.yml *.json)")
        if path:
            self.study_edit.setText(path)

    def _browse_db(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Ratings file", "", "SQLite (*.sqlite *.db)", options=QFileDialog.DontConfirmOverwrite
        )
        if path:
            self.db_edit.setText(path)

    # -- messages ---------------------------------------------------------------------
    def _status(self, text: str, error: bool = False) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet("color: #e05555;" if error else "")
        if self.reading_window is not None:
            self.reading_window.status.setText(text)
            self.reading_window.status.setStyleSheet("color: #e05555;" if error else "")

    def _fail(self, message: str) -> None:
        self._status(message, error=True)
        show_error(message)

    # -- session ------------------------------------------------------------------------
    def start(self) -> bool:
        """Open the study and the ratings file and start or resume this rater's session.

        A crossover study's next reading session is refused, with the date it opens,
        while its washout runs (the message comes from the core session).
        """
        from napari_neurosynth.ratings import RatingStore
        from napari_neurosynth.study import ReaderSession, load_study

        rater = self.rater_edit.text().strip()
        study_path = self.study_edit.text().strip()
        try:
            if not rater:
                raise NeurosynthError("enter your rater ID first")
            if not study_path:
                raise NeurosynthError("choose a study file first")
            study = load_study(study_path)
            db_text = self.db_edit.text().strip()
            store = RatingStore(db_text or None)
            try:
                kwargs = {k: v for k, v in (("clock", self._clock), ("now", self._now)) if v is not None}
                session = ReaderSession(study, rater, store, **kwargs)
            except BaseException:
                store.close()
                raise
        except NeurosynthError as exc:
            self._fail(str(exc))
            return False
        self.stop()
        self.store, self.session = store, session
        blinded = session.study.blinded
        # Anything else on screen (the acquired image, a synthesized layer next to it)
        # would break the blind and the equal presentation: hide it for the session.
        self._hidden = [layer for layer in self.viewer.layers if layer.visible]
        for layer in self._hidden:
            layer.visible = False
        self.questions_panel.set_questions(session.questions)
        row = self.questions_panel.localisation_row()
        if row is not None:
            row.changed.connect(self._draw_marks)
        self.keys_label.setText(self.questions_panel.hint())
        self._install_session_keys()
        if blinded and self.reading_check.isChecked():
            self._open_reading_window()
        elif blinded:
            self._stash_user_layers()
            self._hidden_docks = hide_docks(self.window(), self) if self.window() is not self else []
        if self.reading_window is None:
            self._watch_window(self.window())
            self.viewer.mouse_drag_callbacks.append(self._on_viewer_click)
        self.rating_box.setEnabled(True)
        self.pause_button.setChecked(False)
        done, total = session.progress
        verb = "Resumed" if session.resumed else "Started"
        self._status(f"{verb} study for {rater}: image {session.position + 1} of {total}, {done} rated.")
        self._show_current()
        return True

    def stop(self) -> None:
        """End the session: remove the study's layers, give the user's viewer back, close the ratings file."""
        self._load_token += 1
        self._remove_layers()
        self._remove_session_keys()
        if self._on_viewer_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_viewer_click)
        self._watch_window(None)
        self._restore_user_layers()
        for layer in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []
        if self.session is not None:
            viewer_grid(self._display_viewer()).enabled = False
        self._close_reading_window()
        show_docks(self._hidden_docks)
        self._hidden_docks = []
        if self.store is not None:
            self.store.close()
        self.store = self.session = None
        self.loaded = False
        self.paused = False
        self.rating_box.setEnabled(False)
        self.progress_label.setText("")
        self.item_label.setText("")
        self.edit_label.setText("")

    # -- the user's own layers during a blinded in-viewer session ------------------------
    def _stash_user_layers(self) -> None:
        """Take the user's layers out of the viewer (names such as "T2 (synthesized: ...)" would unblind).

        They come back, in their order and with their visibility, when the session ends.
        """
        self._stashed = list(self.viewer.layers)
        for layer in self._stashed:
            self.viewer.layers.remove(layer)

    def _restore_user_layers(self) -> None:
        for index, layer in enumerate(self._stashed):
            if layer not in self.viewer.layers:
                self.viewer.layers.insert(min(index, len(self.viewer.layers)), layer)
        self._stashed = []

    # -- time on case: only while the case is on screen -----------------------------------
    def _watch_window(self, window) -> None:
        if self._watched_window is not None:
            try:
                self._watched_window.removeEventFilter(self)
            except RuntimeError:
                pass
        self._watched_window = window if window is not None and window is not self else None
        if self._watched_window is not None:
            self._watched_window.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if obj is self._watched_window and event.type() in (QEvent.Hide, QEvent.Show, QEvent.WindowStateChange):
            self._on_screen(obj.isVisible() and not obj.isMinimized())
        return False

    def _on_screen(self, shown: bool) -> None:
        """Pause the session's clock while the case is not on screen (window hidden or minimised)."""
        session = self.session
        if session is None:
            return
        if shown and not self.paused:
            session.resume()
        elif not shown:
            session.pause()

    def set_paused(self, paused: bool) -> None:
        """Pause (images hidden, answers locked, clock stopped) or resume the session."""
        self.paused = bool(paused)
        if self.pause_button.isChecked() != self.paused:
            self.pause_button.setChecked(self.paused)
            return  # toggled() calls back
        if self.session is None:
            return
        for layer in [*self._layers, *self._marks_layers]:
            layer.visible = not self.paused
        self.questions_panel.setEnabled(not self.paused)
        self.next_button.setEnabled(not self.paused)
        if self.paused:
            self.session.pause()
            self._status("Paused: the clock is stopped and the images are hidden. Press P to go on.")
        else:
            self.session.resume()
            self._status("Resumed.")

    def _key_pause(self) -> None:
        if self.session is not None and not self._typing_elsewhere():
            self.set_paused(not self.paused)

    # -- showing an item -------------------------------------------------------------------
    def _progress_text(self) -> str:
        session = self.session
        done, total = session.progress
        text = f"Image {session.position + 1} of {total} · {done}/{total} rated"
        specs = list(getattr(session.study, "sessions", None) or [])
        if specs:
            ids = [spec.id for spec in specs]
            label = next((spec.label or spec.id for spec in specs if spec.id == session.session_id), "")
            number = ids.index(session.session_id) + 1 if session.session_id in ids else 1
            text = f"Session {number} of {len(ids)} ({label}) · {text}"
        return text

    def _show_current(self) -> None:
        session = self.session
        study = session.study
        self.progress_label.setText(self._progress_text())
        self.item_label.setVisible(not study.blinded)
        if study.blinded:
            self.item_label.setText("")
        else:
            case_id, condition = session.current
            self.item_label.setText(f"Case {case_id} · {condition}")
        self._show_answers()
        self.loaded = False
        self._load_token += 1
        token = self._load_token
        from napari.qt.threading import create_worker

        shown = [(i.key, i.path, i.preset, i.contrast, i.is_test) for i in session.shown_images()]
        worker = create_worker(_load_item, shown, study.window, study.blinded)
        worker.returned.connect(lambda result, t=token: self._on_loaded(result, t))
        worker.errored.connect(lambda exc, t=token: self._on_load_error(exc, t))
        self._worker = worker
        worker.start()

    def _show_answers(self) -> None:
        """The item's stored answers, editable or not by the study's policy, with its edit history."""
        session = self.session
        self.questions_panel.set_values(session.answers_for())
        editable = session.can_edit()
        self.questions_panel.set_editable(editable)
        self.previous_button.setEnabled(session.position > 0 and session.can_go_back)
        self.previous_button.setToolTip("" if session.can_go_back else "This study does not allow going back")
        notes = []
        if not editable:
            notes.append("These answers are final: the study does not allow changing them.")
        edits = [row for row in session.audit() if row.get("old_value") is not None]
        if edits:
            last = edits[-1]
            notes.append(
                f"Edited {len(edits)} time(s); last: {last['question']} "
                f"{_short(last['old_value'])} → {_short(last['new_value'])} ({last['changed_at']}). "
                "Every change is kept."
            )
        elif editable and session.answers_for():
            notes.append("Changing an answer keeps the old one in the study's audit trail.")
        self.edit_label.setText(" ".join(notes))

    def _layer_name(self, key: str, is_test: bool, index: int) -> str:
        """Neutral names when blinded: ``Image`` and ``Reference: <key>`` (a reference key is shared by all
        conditions; a condition key would name a condition, so such a companion is ``Reference <n>``)."""
        study = self.session.study
        if is_test:
            if study.blinded:
                return "Image"
            case_id, condition = self.session.current
            return f"{condition} · {case_id}"
        if study.blinded and key in study.conditions:
            return f"Reference {index + 1}"
        return f"Reference: {key}"

    def _on_loaded(self, result: list[tuple], token: int) -> None:
        if token != self._load_token or self.session is None:
            return  # the rater moved on before this item finished loading
        wanted = [
            (self._layer_name(key, is_test, i), data, limits, affine)
            for i, (key, is_test, data, limits, affine) in enumerate(result)
        ]
        views = self._display_views()
        marks = self.questions_panel.localisation_row() is not None
        current = [layer for layer in self._layers if layer in views[0].layers]
        same = [layer.name for layer in current] == [w[0] for w in wanted]
        if same and len(self._layers) == len(wanted) * len(views):
            # Same layout as the previous item: swap the data in place, which is
            # much cheaper than removing and adding layers, and keeps the list still.
            for n, layer in enumerate(self._layers):
                _name, data, limits, affine = wanted[n % len(wanted)]
                layer.data = data
                layer.affine = affine
                layer.reset_contrast_limits_range()
                layer.contrast_limits = list(limits)
        else:
            self._remove_layers()
            for view in views:
                for k, (name, data, limits, affine) in enumerate(wanted):
                    self._layers.append(self._add_image(view, data, limits, affine, name))
                    if marks:  # each image's cell of the grid gets the marks on top of it
                        self._marks_layers.append(self._add_marks(view, k))
            if self.reading_window is None:
                # the user's layers were taken out, so napari's dims fell back to its default
                # (sagittal for RAS+ data): show the protocol's plane, as the reading window does
                if self.viewer.dims.ndim == 3:
                    set_anatomical_view(self.viewer, (tuple(self.session.hanging.planes) or ("axial",))[0])
        self._setup_windowing(wanted)
        self._draw_marks()
        names = [w[0] for w in wanted]
        test = self._layer_name("", True, 0)
        active = names.index(test) if test in names else len(names) - 1
        for k, view in enumerate(views):
            grid = viewer_grid(view)
            grid.stride = 2 if marks else 1  # (image, its marks) per cell
            grid.enabled = len(wanted) > 1
            view.layers.selection.active = self._layers[k * len(wanted) + active]
            view.reset_view()
        if self.paused:
            for layer in [*self._layers, *self._marks_layers]:
                layer.visible = False
        self.loaded = True

    def _add_image(self, view, data, limits, affine, name):
        return view.add_image(
            data,
            affine=affine,
            name=name,
            metadata={},
            colormap="gray",
            contrast_limits=list(limits),
            gamma=1.0,
            blending="translucent",
        )

    def _setup_windowing(self, wanted) -> None:
        """Copies of one image in several views share its window; the protocol may forbid changing it."""
        from .review import LinkedWindowing

        if self.windowing is not None:
            for group in self.windowing.values():
                group.disconnect()
        n = len(wanted)
        self.windowing = {i: LinkedWindowing(self._layers[i::n]) for i in range(n)}
        hanging = self.session.hanging
        allowed = hanging.may_change_windowing
        if not allowed:
            for i, (_name, _data, limits, _affine) in enumerate(wanted):
                for layer in self._layers[i::n]:
                    layer.events.contrast_limits.connect(
                        lambda event=None, lay=layer, lim=tuple(limits): self._keep_window(lay, lim)
                    )
        if self.reading_window is not None:
            self.reading_window.set_windowing(allowed, self._active_windowing)
            self.reading_window.linked = hanging.linked

    def _keep_window(self, layer, limits) -> None:
        # A study with fixed windowing: any change (a key, the console) goes back to the protocol's window.
        if tuple(layer.contrast_limits) != tuple(limits):
            layer.contrast_limits = list(limits)

    def _active_windowing(self):
        """The linked group of the image a drag acts on (the active layer of the view)."""
        if not self.windowing:
            return None
        for group in self.windowing.values():
            if any(lay is view.layers.selection.active for lay in group.layers for view in self._display_views()):
                return group
        return next(iter(self.windowing.values()))

    # -- localisation marks ---------------------------------------------------------------
    def _add_marks(self, view, index: int):
        """A neutral Points layer for the localisation marks (world mm), drawn over image ``index``."""
        layer = view.add_points(
            np.zeros((0, 3)),
            name=f"{MARKS_NAME} {index + 1}",
            ndim=3,
            size=6,
            face_color="transparent",
            border_color="yellow",
            border_width=0.15,
            features={"label": np.array([], dtype=object)},
            text={"string": "{label}", "color": "yellow", "anchor": "upper_left", "size": 10},
            metadata={},
        )
        layer.editable = False  # marks are placed by a click through the study, not napari's tools
        return layer

    def _draw_marks(self) -> None:
        row = self.questions_panel.localisation_row()
        if row is None:
            return
        points = np.array([[m["x"], m["y"], m["z"]] for m in row.marks], float).reshape(-1, 3)
        labels = np.array([f"{i + 1}: {m['confidence'] or '?'}" for i, m in enumerate(row.marks)], dtype=object)
        for layer in self._marks_layers:
            layer.data = points
            layer.features = {"label": labels}
            layer.refresh_text()

    def add_mark(self, world) -> int:
        """Place a localisation mark at ``world`` (RAS mm); it becomes the current question. Returns its index."""
        row = self.questions_panel.localisation_row()
        if row is None or self.session is None or not self.loaded or self.paused or not self.questions_panel.editable:
            return -1
        self.questions_panel.go_to_question(row.question.id)
        index = row.add_mark(world)
        if index < 0:
            self._status(f"At most {row.question.max_marks} marks.", error=True)
        else:
            self._status(f"Mark {index + 1} placed: press 1-5 for its confidence (Del removes it).")
        return index

    def _on_click(self, view, world) -> None:
        row = self.questions_panel.localisation_row()
        if row is not None and self.questions_panel.current_row is row:
            self.add_mark(world[-3:])

    def _on_viewer_click(self, viewer, event):
        """In-viewer mode: a plain left click (no drag) places a mark, as in the reading window."""
        yield from plain_click(event, lambda _press, pos: self._on_click(viewer, tuple(float(v) for v in pos)))

    def _on_load_error(self, exc: BaseException, token: int) -> None:
        if token != self._load_token or self.session is None:
            return
        log.error("reader study: cannot load item %s", self.session.current, exc_info=exc)
        if self.session.study.blinded:
            # The error text names the file, which would unblind the rater.
            self._fail(
                f"Image {self.session.position + 1} could not be loaded; tell the study coordinator "
                "(details are in the log). You can go on with the next image."
            )
        else:
            self._fail(f"Image {self.session.position + 1} could not be loaded: {exc}")

    def _remove_layers(self) -> None:
        views = self._display_views()
        for layer in [*self._layers, *self._marks_layers]:
            for view in views:
                if layer in view.layers:
                    view.layers.remove(layer)
        self._layers = []
        self._marks_layers = []
        if self.windowing:
            for group in self.windowing.values():
                group.disconnect()
        self.windowing = None

    # -- the clean reading window ------------------------------------------------------------
    def _display_viewer(self):
        """Where the case's images go: the reading window's first view while one is open, else the viewer."""
        return self._display_views()[0]

    def _display_views(self) -> list:
        reading = self.reading_window
        return list(reading.views) if reading is not None else [self.viewer]

    def _open_reading_window(self) -> None:
        """A bare canvas per plane of the hanging protocol, the questions beside it, the other panels hidden."""
        from .review import PLANES, ReadingWindow

        hanging = self.session.hanging
        planes = PLANES if hanging.triplanar else tuple(hanging.planes[:1]) or ("axial",)
        self.reading_window = ReadingWindow(self._session_keys(), parent=self, planes=planes)
        self.reading_window.click_callbacks.append(self._on_click)
        self.reading_window.on_screen.connect(self._on_screen)
        self._hidden_docks = hide_docks(self.window(), self) if self.window() is not self else []
        self._layout.removeWidget(self.rating_box)
        self.reading_window.set_side(self.rating_box)
        self.reading_window.show()

    def _close_reading_window(self) -> None:
        """Close the reading window and put the questions back in the dock."""
        reading = self.reading_window
        if reading is None:
            return
        self._remove_layers()
        self.reading_window = None
        reading.set_side(None)
        self._layout.insertWidget(1, self.rating_box)
        self.rating_box.show()
        reading.shutdown()
        reading.close()
        reading.deleteLater()

    # -- answers -----------------------------------------------------------------------------
    @staticmethod
    def _set_group(group: QButtonGroup, value) -> None:
        group.setExclusive(False)  # an exclusive group cannot be cleared otherwise
        for button in group.buttons():
            button.setChecked(value is not None and group.id(button) == value)
        group.setExclusive(True)

    def choose_score(self, score: int) -> None:
        """Select the MOS (as a click on its button would)."""
        self._row_of("mos").set_value(int(score))

    def answers(self) -> dict[str, Any]:
        """The answers on screen: question id -> value (``None`` when unanswered)."""
        return self.questions_panel.values()

    # -- actions -----------------------------------------------------------------------------
    def _ours(self, widget) -> bool:
        reading = self.reading_window
        if widget is None:
            return False
        return self.isAncestorOf(widget) or (reading is not None and reading.isAncestorOf(widget))

    def _typing_elsewhere(self) -> bool:
        """True when keyboard focus is in a text or number field outside this widget and its reading window.

        A QLineEdit claims printable keys before shortcuts, but not Enter; this keeps
        Enter in another dock widget's field (or napari's console) from saving a rating.
        """
        focus = QApplication.focusWidget()
        inputs = (QLineEdit, QAbstractSpinBox, QTextEdit, QPlainTextEdit, QComboBox)
        return isinstance(focus, inputs) and not self._ours(focus)

    def _may_take_key(self) -> bool:
        return (
            self.session is not None
            and self.rating_box.isEnabled()
            and not self.paused
            and not self._typing_elsewhere()
        )

    def _key_tab(self, forward: bool):
        def slot() -> None:
            if self._may_take_key():
                self.questions_panel.handle_key("tab" if forward else "shift+tab")
                return
            focus = QApplication.focusWidget()  # someone else's field: Tab moves the focus as usual
            if focus is not None:
                target = focus.nextInFocusChain() if forward else focus.previousInFocusChain()
                target.setFocus(Qt.TabFocusReason if forward else Qt.BacktabFocusReason)

        return slot

    def _key_next(self) -> None:
        if self.session is not None and not self.paused and not self._typing_elsewhere():
            self.save_and_next()

    def save(self) -> int | None:
        """Record the answers on screen; return the row id, or ``None`` if nothing was saved."""
        session = self.session
        if session is None:
            return None
        if not self.loaded:
            self._status("Wait for the image to appear before rating it.", error=True)
            return None
        missing = self.questions_panel.missing()
        if missing:
            first = missing[0]
            self.questions_panel.go_to_question(first.id)
            if first.id == "mos":
                self._status("Choose a score from 1 to 5 first (click or press 1-5).", error=True)
            elif first.type == "localisation":
                self._status("Give each mark a confidence from 1 to 5 (or press 0: no finding).", error=True)
            else:
                names = ", ".join(q.prompt or q.id for q in missing)
                self._status(f"Answer {names} too (the marked question is next).", error=True)
            return None
        if not session.can_edit():
            return int(session.rating_for()["id"]) if session.rating_for() else 0
        try:
            row = session.answer(self.questions_panel.values())
        except NeurosynthError as exc:
            self._fail(f"Not saved: {exc}. Your answers are still on screen; try again.")
            return None
        self.progress_label.setText(self._progress_text())
        problem = session.store.connection_problem()
        if problem:  # a multi-site study whose server is away: say so plainly, keep going
            self._status(f"Saved on this computer: image {session.position + 1}. {problem}", error=True)
        else:
            self._status(f"Saved: image {session.position + 1}.")
        return row

    def save_and_next(self) -> int | None:
        """Record the answers and, once they are on disk, show the next image."""
        row = self.save()
        if row is None:
            return None
        session = self.session
        if session.at_end:
            upcoming = session.first_unrated()
            if upcoming is None:
                self._finish_session()
                return row
            self._go(upcoming)
            self._status(f"Saved. Image {upcoming + 1} is still unrated; showing it.")
            return row
        self._go(session.position + 1)
        return row

    def _finish_session(self) -> None:
        """All images of this reading session are answered: say so, and end it (a crossover's washout starts)."""
        session = self.session
        problem = session.store.connection_problem()
        done_text = f"All {len(session.items)} images rated. Thank you!"
        specs = list(getattr(session.study, "sessions", None) or [])
        if specs:
            try:
                session.finish()
            except NeurosynthError as exc:
                self._fail(str(exc))
                return
            later = [spec for spec in specs if spec.id != session.session_id]
            if later and [s.id for s in specs].index(session.session_id) < len(specs) - 1:
                done_text += " This reading session is over; the next one opens after its washout."
        self._status(f"{done_text} {problem}" if problem else done_text, error=bool(problem))
        show_info("Reader study complete: all images rated.")

    def previous(self) -> None:
        """Show the previous image (its saved answers are restored), when the study allows going back."""
        if self.session is None or self.session.position == 0:
            return
        if not self.session.can_go_back:
            self._status("This study does not allow going back to earlier images.", error=True)
            return
        self._go(self.session.position - 1)

    def _go(self, position: int) -> None:
        try:
            self.session.go_to(position)
        except NeurosynthError as exc:
            self._fail(str(exc))
            return
        self._show_current()


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "…"
