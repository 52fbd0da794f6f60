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

Keys (while the napari window is active, whether the canvas or the widget has
focus; typing in a text field is left alone): ``1``-``5`` choose the MOS,
``Enter`` saves and moves to the next image. Every saved rating is written to
disk before the widget confirms it; a failed save keeps the choice on screen.

All study logic lives in :mod:`napari_neurosynth.study` (no Qt); this module
only shows things and forwards clicks.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
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

from .layers import viewer_grid

__all__ = ["ReaderStudyWidget"]

log = logging.getLogger(__name__)

_SUBSCORE_LABELS = {
    "realism": "Realism",
    "anatomical_correctness": "Anatomical correctness",
    "lesion_conspicuity": "Lesion conspicuity",
    "diagnostic_usability": "Diagnostic usability",
}


def _load_item(paths: tuple[Path, dict[str, Path]], percentiles, blinded: bool) -> dict[str, Any]:
    """Read and prepare the image and references of one item (runs in a worker thread).

    The windowing is :func:`napari_neurosynth.display.prepare_display`: the same rule
    for every condition and every reference.
    """
    from napari_neurosynth.display import prepare_display
    from napari_neurosynth.io import read_volume

    path, refs = paths
    out: dict[str, Any] = {"refs": []}
    with warnings.catch_warnings(record=True) as caught:  # warnings name files: log, do not show
        warnings.simplefilter("always")
        volume = read_volume(path)
        out["image"] = (*prepare_display(volume.data, percentiles, blinded), volume.affine)
        for name, ref_path in refs.items():
            ref = read_volume(ref_path)
            out["refs"].append((name, *prepare_display(ref.data, percentiles, False), ref.affine))
    for w in caught:
        log.warning("reader study: %s", w.message)
    return out


class ReaderStudyWidget(QWidget):
    """Dock widget that runs a reader study for one rater.

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Examples
    --------
    >>> widget = ReaderStudyWidget(viewer)  # doctest: +SKIP
    >>> widget.rater_edit.setText("dr-a"); widget.study_edit.setText("study.yaml")  # doctest: +SKIP
    >>> widget.start()  # doctest: +SKIP
    >>> widget.choose_score(4); widget.save_and_next()  # doctest: +SKIP
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = None
        self.store = None
        self.loaded = False  # the current item's image is on screen
        self._layers: list = []
        self._load_token = 0
        self._worker = None

        setup = self._build_setup()
        self.rating_box = self._build_rating()
        self.status_label = QLabel("Enter your rater ID and a study file, then press Start / resume.")
        self.status_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(setup)
        layout.addWidget(self.rating_box)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self._install_shortcuts()

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
            "Blinded studies: show the case in a window of its own, with no layer list, names or "
            "controls; the other panels are hidden until the session ends"
        )
        form.addRow(self.reading_check)
        self.start_button = QPushButton("Start / resume")
        self.start_button.clicked.connect(self.start)
        form.addRow(self.start_button)
        return setup

    def _build_rating(self) -> QGroupBox:
        """MOS buttons, sub-scores and Turing questions (shown per study), comment, Previous / Save & next."""
        box = QGroupBox("Rating")
        rating = QVBoxLayout(box)
        self.progress_label = QLabel("")
        self.item_label = QLabel("")
        rating.addWidget(self.progress_label)
        rating.addWidget(self.item_label)
        rating.addWidget(QLabel("Overall quality (MOS): 1 bad, 2 poor, 3 fair, 4 good, 5 excellent"))
        self.score_group, score_row = self._likert_row()
        self.score_buttons = self.score_group.buttons()
        rating.addWidget(score_row)

        self.subscore_groups: dict[str, QButtonGroup] = {}
        self.subscore_box = QWidget()
        self.subscore_layout = QFormLayout(self.subscore_box)
        self.subscore_layout.setContentsMargins(0, 0, 0, 0)
        rating.addWidget(self.subscore_box)
        rating.addWidget(self._build_turing())

        self.comment_edit = QLineEdit()
        self.comment_edit.setPlaceholderText("comment (optional)")
        rating.addWidget(self.comment_edit)
        self.previous_button = QPushButton("◀ Previous")
        self.previous_button.clicked.connect(self.previous)
        self.next_button = QPushButton("Save && next ▶ (Enter)")
        self.next_button.clicked.connect(self.save_and_next)
        rating.addWidget(self._row(self.previous_button, self.next_button))
        box.setEnabled(False)
        self.subscore_box.hide()
        self.turing_box.hide()
        return box

    def _build_turing(self) -> QWidget:
        """The real-vs-synthetic choice and its 1-5 confidence."""
        self.turing_box = QWidget()
        turing = QFormLayout(self.turing_box)
        turing.setContentsMargins(0, 0, 0, 0)
        self.turing_group = QButtonGroup(self)
        self.real_button = QPushButton("Real")
        self.synthetic_button = QPushButton("Synthetic")
        for button in (self.real_button, self.synthetic_button):
            button.setCheckable(True)
            button.setFocusPolicy(Qt.NoFocus)
            self.turing_group.addButton(button)
        turing.addRow("Acquired or synthesized?", self._row(self.real_button, self.synthetic_button))
        self.confidence_group, confidence_row = self._likert_row()
        turing.addRow("Confidence (1 guess, 5 certain)", confidence_row)
        return self.turing_box

    def _install_shortcuts(self) -> None:
        # Window-wide shortcuts: they fire whether the canvas or this widget has
        # focus; a QLineEdit with focus takes printable keys itself (Qt's
        # ShortcutOverride), so typing a rater id or comment is not a rating.
        self._shortcuts = []
        for score in range(1, 6):
            self._add_shortcut(str(score), lambda s=score: self._key_score(s))
        for key in ("Return", "Enter"):
            self._add_shortcut(key, self._key_next)

    # -- small builders ------------------------------------------------------------
    @staticmethod
    def _row(*widgets) -> QWidget:
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in widgets:
            layout.addWidget(w)
        return row

    def _likert_row(self) -> tuple[QButtonGroup, QWidget]:
        group = QButtonGroup(self)
        buttons = []
        for value in range(1, 6):
            button = QPushButton(str(value))
            button.setCheckable(True)
            button.setFocusPolicy(Qt.NoFocus)  # keep keyboard focus where the rater put it
            button.setMinimumWidth(28)
            group.addButton(button, value)
            buttons.append(button)
        return group, self._row(*buttons)

    def _add_shortcut(self, key: str, slot) -> None:
        shortcut = QShortcut(QKeySequence(key), self)
        shortcut.setContext(Qt.WindowShortcut)
        shortcut.activated.connect(slot)
        self._shortcuts.append(shortcut)

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

    def _fail(self, message: str) -> None:
        self._status(message, error=True)
        show_error(message)

    # -- session ------------------------------------------------------------------------
    def start(self) -> bool:
        """Open the study and the ratings file and start or resume this rater's session."""
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
                session = ReaderSession(study, rater, store)
            except BaseException:
                store.close()
                raise
        except NeurosynthError as exc:
            self._fail(str(exc))
            return False
        self.stop()
        self.store, self.session = store, session
        # Anything else on screen (the acquired image, a synthesized layer next to it)
        # would break the blind and the equal presentation: hide it for the session.
        self._hidden = [layer for layer in self.viewer.layers if layer.visible]
        for layer in self._hidden:
            layer.visible = False
        if self.reading_check.isChecked() and session.study.blinded:  # unblinded: nothing to hide
            self._open_reading_window()
        self._build_questions()
        self.rating_box.setEnabled(True)
        done, total = session.progress
        verb = "Resumed" if session.resumed else "Started"
        self._status(f"{verb} study for {rater}: image {session.position + 1} of {total}, {done} rated.")
        self._show_current()
        return True

    def stop(self) -> None:
        """End the session: remove the study's layers and close the ratings file."""
        self._load_token += 1
        self._remove_layers()
        for layer in getattr(self, "_hidden", []):
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []
        if self.session is not None:
            viewer_grid(self._display_viewer()).enabled = False
        self._close_reading_window()
        if self.store is not None:
            self.store.close()
        self.store = self.session = None
        self.loaded = False
        self.rating_box.setEnabled(False)
        self.progress_label.setText("")
        self.item_label.setText("")

    def _build_questions(self) -> None:
        study = self.session.study
        while self.subscore_layout.rowCount():
            self.subscore_layout.removeRow(0)
        self.subscore_groups = {}
        for name in study.subscores:
            group, row = self._likert_row()
            self.subscore_groups[name] = group
            self.subscore_layout.addRow(_SUBSCORE_LABELS.get(name, name), row)
        self.subscore_box.setVisible(bool(study.subscores))
        self.turing_box.setVisible(study.turing)

    # -- showing an item -------------------------------------------------------------------
    def _show_current(self) -> None:
        session = self.session
        study = session.study
        done, total = session.progress
        self.progress_label.setText(f"Image {session.position + 1} of {total} · {done}/{total} rated")
        self.item_label.setVisible(not study.blinded)
        if study.blinded:
            self.item_label.setText("")
        else:
            case_id, condition = session.current
            self.item_label.setText(f"Case {case_id} · {condition}")
        self._restore_answers(session.rating_for())
        self.previous_button.setEnabled(session.position > 0)
        self.loaded = False
        self._load_token += 1
        token = self._load_token
        from napari.qt.threading import create_worker

        worker = create_worker(_load_item, session.paths(), study.window, study.blinded)
        worker.returned.connect(lambda result, t=token: self._on_loaded(result, t))
        worker.errored.connect(lambda exc, t=token: self._on_load_error(exc, t))
        self._worker = worker
        worker.start()

    def _on_loaded(self, result: dict[str, Any], token: int) -> None:
        if token != self._load_token or self.session is None:
            return  # the rater moved on before this item finished loading
        wanted = [(f"Reference: {name}", data, limits, affine) for name, data, limits, affine in result["refs"]]
        case_id, condition = self.session.current
        wanted.append(("Image" if self.session.study.blinded else f"{condition} · {case_id}", *result["image"]))
        current = [layer for layer in self._layers if layer in self._display_viewer().layers]
        if [layer.name for layer in current[:-1]] == [w[0] for w in wanted[:-1]] and len(current) == len(wanted):
            # Same layout as the previous item: swap the data in place, which is
            # much cheaper than removing and adding layers, and keeps the list still.
            for layer, (name, data, limits, affine) in zip(current, wanted):
                layer.name = name
                layer.data = data
                layer.affine = affine
                layer.reset_contrast_limits_range()
                layer.contrast_limits = list(limits)
        else:
            self._remove_layers()
            self._layers = [self._add_image(data, limits, affine, name) for name, data, limits, affine in wanted]
        display = self._display_viewer()
        viewer_grid(display).enabled = len(self._layers) > 1
        display.layers.selection.active = self._layers[-1]
        display.reset_view()
        self.loaded = True

    def _add_image(self, data, limits, affine, name):
        return self._display_viewer().add_image(
            data,
            affine=affine,
            name=name,
            metadata={},
            colormap="gray",
            contrast_limits=list(limits),
            gamma=1.0,
            blending="translucent",
        )

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
        display = self._display_viewer()
        for layer in self._layers:
            if layer in display.layers:
                display.layers.remove(layer)
        self._layers = []

    # -- the clean reading window ------------------------------------------------------------
    def _display_viewer(self):
        """Where the case's images go: the reading window's viewer model while one is open, else the viewer."""
        reading = getattr(self, "reading_window", None)
        return reading.view if reading is not None else self.viewer

    def _open_reading_window(self) -> None:
        """A bare canvas for the case (viewer/review.py), its keys, and the other panels hidden."""
        from .review import ReadingWindow, hide_docks

        keys = [(str(s), lambda s=s: self._key_score(s)) for s in range(1, 6)]
        keys += [("Return", self._key_next), ("Enter", self._key_next)]
        self.reading_window = ReadingWindow(keys, parent=self)
        self._hidden_docks = hide_docks(self.window(), self) if self.window() is not self else []
        self.reading_window.show()

    def _close_reading_window(self) -> None:
        """Close the reading window and show the panels again: the user's viewer as it was."""
        from .review import show_docks

        reading = getattr(self, "reading_window", None)
        if reading is None:
            return
        self._remove_layers()
        self.reading_window = None
        reading.shutdown()
        reading.close()
        reading.deleteLater()
        show_docks(getattr(self, "_hidden_docks", []))
        self._hidden_docks = []

    # -- answers -----------------------------------------------------------------------------
    @staticmethod
    def _set_group(group: QButtonGroup, value) -> None:
        group.setExclusive(False)  # an exclusive group cannot be cleared otherwise
        for button in group.buttons():
            button.setChecked(value is not None and group.id(button) == value)
        group.setExclusive(True)

    def _restore_answers(self, row: dict | None) -> None:
        row = row or {}
        self._set_group(self.score_group, row.get("score"))
        for name, group in self.subscore_groups.items():
            self._set_group(group, row.get(name))
        choice = row.get("turing_choice")
        self.turing_group.setExclusive(False)
        self.real_button.setChecked(choice == "real")
        self.synthetic_button.setChecked(choice == "synthetic")
        self.turing_group.setExclusive(True)
        self._set_group(self.confidence_group, row.get("turing_confidence"))
        self.comment_edit.setText(row.get("comment") or "")

    def choose_score(self, score: int) -> None:
        """Select the MOS (as a click on its button would)."""
        self.score_group.button(int(score)).setChecked(True)

    def answers(self) -> dict[str, Any]:
        """The answers on screen, as keyword arguments of ``ReaderSession.rate``."""
        out: dict[str, Any] = {}
        score = self.score_group.checkedId()
        out["score"] = score if score > 0 else None
        for name, group in self.subscore_groups.items():
            value = group.checkedId()
            out[name] = value if value > 0 else None
        if self.session is not None and self.session.study.turing:
            out["turing_choice"] = (
                "real" if self.real_button.isChecked() else "synthetic" if self.synthetic_button.isChecked() else None
            )
            value = self.confidence_group.checkedId()
            out["turing_confidence"] = value if value > 0 else None
        out["comment"] = self.comment_edit.text().strip() or None
        return out

    # -- actions -----------------------------------------------------------------------------
    def _typing_elsewhere(self) -> bool:
        """True when keyboard focus is in a text or number field outside this widget.

        A QLineEdit claims printable keys before shortcuts, but not Enter; this keeps
        Enter in another dock widget's field (or napari's console) from saving a rating.
        """
        focus = QApplication.focusWidget()
        inputs = (QLineEdit, QAbstractSpinBox, QTextEdit, QPlainTextEdit, QComboBox)
        return isinstance(focus, inputs) and not self.isAncestorOf(focus)

    def _key_score(self, score: int) -> None:
        if self.session is not None and self.rating_box.isEnabled() and not self._typing_elsewhere():
            self.choose_score(score)

    def _key_next(self) -> None:
        if self.session is not None and not self._typing_elsewhere():
            self.save_and_next()

    def save(self) -> int | None:
        """Record the answers on screen; return the row id, or ``None`` if nothing was saved."""
        session = self.session
        if session is None:
            return None
        answers = self.answers()
        score = answers.pop("score")
        if score is None:
            self._status("Choose a score from 1 to 5 first (click or press 1-5).", error=True)
            return None
        if not self.loaded:
            self._status("Wait for the image to appear before rating it.", error=True)
            return None
        missing = [_SUBSCORE_LABELS[k].lower() for k in session.study.subscores if answers.get(k) is None]
        if session.study.turing and (answers.get("turing_choice") is None or answers.get("turing_confidence") is None):
            missing.append("real-or-synthetic choice and its confidence")
        if missing:
            self._status(f"Answer {', '.join(missing)} too.", error=True)
            return None
        try:
            row = session.rate(score, **answers)
        except NeurosynthError as exc:
            self._fail(f"Not saved: {exc}. Your answers are still on screen; try again.")
            return None
        done, total = session.progress
        self.progress_label.setText(f"Image {session.position + 1} of {total} · {done}/{total} rated")
        problem = session.store.connection_problem()
        if problem:  # a multi-site study whose server is away: say so plainly, keep going
            self._status(f"Saved on this computer: image {session.position + 1}, score {score}. {problem}", error=True)
        else:
            self._status(f"Saved: image {session.position + 1}, score {score}.")
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
                problem = session.store.connection_problem()
                done_text = f"All {len(session.items)} images rated. Thank you!"
                self._status(f"{done_text} {problem}" if problem else done_text, error=bool(problem))
                show_info("Reader study complete: all images rated.")
                return row
            self._go(upcoming)
            self._status(f"Saved. Image {upcoming + 1} is still unrated; showing it.")
            return row
        self._go(session.position + 1)
        return row

    def previous(self) -> None:
        """Show the previous image (its saved answers are restored)."""
        if self.session is not None and self.session.position > 0:
            self._go(self.session.position - 1)

    def _go(self, position: int) -> None:
        try:
            self.session.go_to(position)
        except NeurosynthError as exc:
            self._fail(str(exc))
            return
        self._show_current()
