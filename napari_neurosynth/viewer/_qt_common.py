"""Small Qt helpers shared by the Synthesize and Compare & Explain dock widgets.

Nothing here computes on images: these classes gather choices from the user
(layer pickers), run a job off the Qt thread with napari's progress bar and a
cancel flag (:class:`BackgroundJob`), turn errors into notifications
(:func:`notify_exception`), and show tables that can be copied and exported
(:class:`ResultTable`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QShortcut,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_neurosynth.errors import CancelledError, NeurosynthError

log = logging.getLogger(__name__)

NONE_TEXT = "(none)"


# --------------------------------------------------------------------------- errors
def notify_exception(exc: BaseException, what: str = "") -> None:
    """Show an exception to the user as a napari notification.

    Parameters
    ----------
    exc : BaseException
        The error. :class:`~napari_neurosynth.errors.CancelledError` becomes an
        info notification, :class:`~napari_neurosynth.errors.NeurosynthError`
        an error notification with its own (user-facing) message, anything else
        an error notification that names the exception type, since it is a bug
        rather than bad input.
    what : str, optional
        What was being done, used as a prefix for unexpected errors and as the
        message for cancellations (e.g. ``"Synthesis"``).
    """
    if isinstance(exc, CancelledError):
        show_info(f"{what or 'Job'} cancelled")
    elif isinstance(exc, NeurosynthError):
        show_error(str(exc))
    else:
        log.error("%s failed", what or "job", exc_info=exc)
        prefix = f"{what} failed: " if what else ""
        show_error(f"{prefix}{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- layer pickers
class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of some types, kept in sync with the viewer.

    The list refreshes when layers are added, removed, reordered or renamed and
    keeps the current choice when it still exists.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are listed.
    layer_types : type or tuple of types
        napari layer classes to list (e.g. ``napari.layers.Image``).
    optional : bool
        Whether a ``"(none)"`` entry is offered (first).
    prefer : callable, optional
        ``prefer(layer) -> bool or number``; while the user has not chosen, the
        layer with the highest positive score is selected (e.g. a layer named
        ``"T1"`` for input ``t1``); ties go to the first.
    """

    def __init__(
        self,
        viewer,
        layer_types: type | tuple[type, ...],
        optional: bool = False,
        prefer: Callable[[Any], float] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types if isinstance(layer_types, tuple) else (layer_types,)
        self._optional = optional
        self._prefer = prefer
        self._user_chose = False
        # The layer the user chose, by object: a layer that leaves the list for a
        # while (the Reader Study takes the user's layers out during a blinded
        # session) or is renamed is chosen again when it is back.
        self._chosen: weakref.ref | None = None
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(8)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.activated.connect(self._on_user_choice)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)
        # Renames: napari re-emits each layer's events on the list's events.name?
        # Not reliably across versions, so watch each layer directly.
        self._watched: set[int] = set()
        self.refresh()

    # -- public API
    def layer(self):
        """The chosen layer, or ``None`` (no layer, or ``"(none)"`` chosen)."""
        name = self.currentText()
        if not name or name == NONE_TEXT:
            return None
        try:
            layer = self._viewer.layers[name]
        except KeyError:
            return None
        return layer if isinstance(layer, self._types) else None

    def set_layer(self, layer_or_name) -> None:
        """Select a layer (or its name); ``None`` selects ``"(none)"``."""
        name = NONE_TEXT if layer_or_name is None else getattr(layer_or_name, "name", layer_or_name)
        idx = self.findText(str(name))
        if idx < 0:
            raise NeurosynthError(f"No layer named {name!r} is offered here")
        self.setCurrentIndex(idx)
        self._user_chose = True
        self._remember_choice()

    def set_prefer(self, prefer: Callable[[Any], float] | None) -> None:
        """Change the preference rule and re-apply it if the user has not chosen."""
        self._prefer = prefer
        self._user_chose = False
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the list from the viewer's layers, keeping the current choice."""
        try:
            current = self.currentText()
        except RuntimeError:  # the Qt object is gone; nothing to refresh
            return
        layers = [lay for lay in self._viewer.layers if isinstance(lay, self._types)]
        for lay in layers:
            if id(lay) not in self._watched:
                self._watched.add(id(lay))
                lay.events.name.connect(self._on_layers_changed)
        names = ([NONE_TEXT] if self._optional else []) + [lay.name for lay in layers]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        choice = None
        chosen = self._chosen() if self._chosen is not None else None
        if self._user_chose and chosen is not None and any(lay is chosen for lay in layers):
            choice = chosen.name
        elif self._user_chose and current in names:
            choice = current
        elif self._prefer is not None and layers:
            # highest score wins; ties go to the first layer in the list
            scores = [float(self._prefer(lay) or 0) for lay in layers]
            best = int(np.argmax(scores))
            choice = layers[best].name if scores[best] > 0 else None
        if choice is None and current in names:
            choice = current
        if choice is None and names:
            choice = names[0]
        if choice is not None:
            self.setCurrentIndex(names.index(choice))
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    # -- internals
    def _on_user_choice(self, _index: int) -> None:
        self._user_chose = True
        self._remember_choice()

    def _remember_choice(self) -> None:
        layer = self.layer()
        self._chosen = weakref.ref(layer) if layer is not None else None

    def _on_layers_changed(self, event=None) -> None:
        try:
            self.refresh()
        except RuntimeError:
            # The widget was deleted while the viewer lives on; stop listening.
            self._disconnect()

    def _disconnect(self) -> None:
        events = self._viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.disconnect(self._on_layers_changed)


def modality_matcher(modality: str) -> Callable[[Any], bool]:
    """A ``prefer`` rule for :class:`LayerCombo`: layer named like the modality.

    Matches case-insensitively on the whole name or its first word, so ``t1``
    picks ``"T1"`` or ``"t1 [1]"`` but not ``"T2 (synthesized: t1_to_t2)"``
    and not ``"t1_lowres"``.
    """
    want = modality.lower()

    def prefer(layer) -> bool:
        name = layer.name.lower().strip()
        if layer.metadata.get("synthesized"):
            return False
        first = name.replace("[", " ").replace("(", " ").split()
        return name == want or (bool(first) and first[0] == want)

    return prefer


# --------------------------------------------------------------------------- background jobs
class _ProgressRelay(QObject):
    """Carries progress fractions from the worker thread to the Qt thread."""

    progressed = Signal(float)


class BackgroundJob(QObject):
    """Run one function at a time in a napari thread worker, with progress and cancel.

    The function is called in the worker thread as
    ``func(*args, progress=callable(fraction), cancel=threading.Event)``.
    While it runs, a determinate napari progress bar shows the fractions it
    reports, the given ``busy_widgets`` are disabled and ``cancel_button`` is
    enabled. Its return value goes to ``on_result`` (in the Qt thread); an
    exception becomes a notification (see :func:`notify_exception`) and
    ``on_result`` is not called, so no half-made layer appears.

    Parameters
    ----------
    what : str
        Name of the job for the progress bar and messages (e.g. ``"Synthesis"``).
    busy_widgets : sequence of QWidget
        Disabled while the job runs.
    cancel_button : QPushButton, optional
        Enabled while the job runs; clicking it cancels.
    """

    #: Emitted in the Qt thread after each job ends (success, error or cancel).
    done = Signal()

    def __init__(
        self,
        what: str,
        busy_widgets: Sequence[QWidget] = (),
        cancel_button: QPushButton | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.what = what
        self.busy_widgets = list(busy_widgets)
        self.cancel_button = cancel_button
        self.worker = None
        self.cancel_event: threading.Event | None = None
        self.last_error: BaseException | None = None
        self._finished = True
        self._pbar = None
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._on_progress)
        if cancel_button is not None:
            cancel_button.setEnabled(False)
            cancel_button.clicked.connect(self.cancel)

    @property
    def running(self) -> bool:
        """Whether a job was started and its ``finished`` has not yet been handled in the Qt thread."""
        return self.worker is not None and self.cancel_event is not None and not self._finished

    def start(
        self,
        func: Callable[..., Any],
        *args: Any,
        on_result: Callable[[Any], None],
        desc: str | None = None,
        **kwargs: Any,
    ):
        """Start ``func`` in a worker; return the worker (its ``finished`` signal ends it)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.running:
            raise NeurosynthError(f"{self.what} is already running; wait for it or cancel it")
        cancel = threading.Event()
        relay = self._relay

        def report(fraction: float) -> None:
            relay.progressed.emit(float(fraction))

        def work():
            return func(*args, progress=report, cancel=cancel, **kwargs)

        self.cancel_event = cancel
        self.last_error = None
        self._finished = False
        self._pbar = progress(total=100, desc=desc or self.what)
        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._on_returned(result, on_result))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_busy(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (between batches)."""
        if self.cancel_event is not None:
            self.cancel_event.set()
        if self._pbar is not None:
            self._pbar.set_description(f"{self.what} (cancelling)")

    # -- Qt-thread slots
    def _on_progress(self, fraction: float) -> None:
        if self._pbar is None:
            return
        target = round(100 * min(max(fraction, 0.0), 1.0))
        if target > self._pbar.n:
            self._pbar.update(target - self._pbar.n)

    def _on_returned(self, result: Any, on_result: Callable[[Any], None]) -> None:
        if self.cancel_event is not None and self.cancel_event.is_set():
            # Cancelled after the last check: still say so, and add nothing.
            self._on_errored(CancelledError(f"{self.what} cancelled"))
            return
        try:
            on_result(result)
        except Exception as exc:  # turning results into layers failed: tell, stay usable
            self._on_errored(exc)

    def _on_errored(self, exc: BaseException) -> None:
        self.last_error = exc
        notify_exception(exc, self.what)

    def _on_finished(self) -> None:
        self._finished = True
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_busy(False)
        self.done.emit()

    def _set_busy(self, busy: bool) -> None:
        for w in self.busy_widgets:
            try:
                w.setEnabled(not busy)
            except RuntimeError:  # widget deleted
                pass
        if self.cancel_button is not None:
            try:
                self.cancel_button.setEnabled(busy)
            except RuntimeError:
                pass


# --------------------------------------------------------------------------- tables
def _cell_text(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_cell_text(v) for v in value)
    return "" if value is None else str(value)


class ResultTable(QWidget):
    """A read-only table with Copy (TSV to the clipboard) and Export (CSV/JSON).

    Rows are dicts; the full-precision values are kept for export, the cells show
    four significant digits. ``rowActivated`` emits the row's dict when the user
    clicks a row.
    """

    rowActivated = Signal(dict)

    def __init__(self, title: str = "table", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.columns: list[str] = []
        self.shown: list[str] = []
        self.rows: list[dict] = []
        self.table = QTableWidget(0, 0, self)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(60)
        self.max_visible_rows = 8
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the table to the clipboard as tab-separated text (Ctrl+C)")
        self.copy_button.clicked.connect(self.copy)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the table as CSV or JSON")
        self.export_button.clicked.connect(self._export_dialog)
        QShortcut(QKeySequence.Copy, self.table, activated=self.copy)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.copy_button)
        buttons.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self._update_buttons()

    def set_rows(
        self,
        rows: Iterable[dict],
        columns: Sequence[str] | None = None,
        shown: Sequence[str] | None = None,
    ) -> None:
        """Set the rows (dicts).

        Parameters
        ----------
        rows : iterable of dict
            Full-precision values; kept in :attr:`rows` and exported as they are.
        columns : sequence of str, optional
            Columns to export, in order (default: the keys of the rows, in order).
        shown : sequence of str, optional
            The subset of ``columns`` shown in the table (default: all), so a
            narrow dock is not crowded by columns that matter only in the export.
        """
        self.rows = [dict(r) for r in rows]
        if columns is None:
            columns = []
            for r in self.rows:
                columns += [k for k in r if k not in columns]
        self.columns = list(columns)
        self.shown = [c for c in (shown or self.columns) if c in self.columns]
        self.table.clear()
        self.table.setColumnCount(len(self.shown))
        self.table.setRowCount(len(self.rows))
        self.table.setHorizontalHeaderLabels(self.shown)
        for i, row in enumerate(self.rows):
            for j, col in enumerate(self.shown):
                item = QTableWidgetItem(_cell_text(row.get(col)))
                if isinstance(row.get(col), (int, float, np.number)):
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.table.setItem(i, j, item)
        self._fit_height()
        self._update_buttons()

    def _fit_height(self) -> None:
        # Show up to max_visible_rows rows without an inner scroll bar.
        n = max(1, min(len(self.rows), self.max_visible_rows))
        row_h = self.table.verticalHeader().defaultSectionSize()
        header_h = self.table.horizontalHeader().sizeHint().height()
        scroll_h = self.table.horizontalScrollBar().sizeHint().height()
        self.table.setFixedHeight(header_h + n * row_h + scroll_h + 2 * self.table.frameWidth())

    def cell_text(self, row: int, column: str) -> str:
        """The text shown in a cell (for tests and accessibility)."""
        item = self.table.item(row, self.shown.index(column))
        return "" if item is None else item.text()

    def to_tsv(self) -> str:
        """The whole table (or the selected rows) as tab-separated text with a header."""
        selected = sorted({i.row() for i in self.table.selectedIndexes()})
        rows = [self.rows[i] for i in selected] if selected else self.rows
        lines = ["\t".join(self.columns)]
        lines += ["\t".join(_cell_text(r.get(c)) for c in self.columns) for r in rows]
        return "\n".join(lines) + "\n"

    def copy(self) -> None:
        """Copy the table (or the selected rows) to the clipboard as TSV."""
        QApplication.clipboard().setText(self.to_tsv())

    def export(self, path: str | Path) -> Path:
        """Write the table to ``path``: ``.json`` as a list of row objects, else CSV.

        Raises
        ------
        NeurosynthError
            If there is nothing to export or the file cannot be written.
        """
        path = Path(path)
        if not self.rows:
            raise NeurosynthError(f"The {self.title} is empty; compute it before exporting")
        from napari_neurosynth.export import write_csv, write_json  # one policy: NaN/Inf -> null / empty cell

        if path.suffix.lower() == ".json":
            return write_json(self.rows, path)
        write_csv(self.rows, path, self.columns)
        return path

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            f"Export {self.title}",
            f"{self.title.replace(' ', '_')}.csv",
            "CSV (*.csv);;JSON (*.json)",
        )
        if path:
            try:
                self.export(path)
                show_info(f"Saved {path}")
            except NeurosynthError as exc:
                show_error(str(exc))

    def _on_cell_clicked(self, row: int, _col: int) -> None:
        if 0 <= row < len(self.rows):
            self.rowActivated.emit(self.rows[row])

    def _update_buttons(self) -> None:
        has = bool(self.rows)
        self.copy_button.setEnabled(has)
        self.export_button.setEnabled(has)
