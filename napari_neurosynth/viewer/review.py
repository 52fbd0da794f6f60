"""Read like a radiologist: linked tri-planar views, window/level, flicker, and a clean reading window.

napari core has no linked orthogonal views (napari#662) and no window/level
drag (napari#3388). This module builds both on napari's public multi-viewer
approach (the ``multiple_viewer_widget`` example: one ``ViewerModel`` per view,
each drawn by a ``napari.qt.QtViewer``), sharing the layers' data arrays, so
nothing is copied and no private napari API is used.

- :class:`LinkedWindowing`: a group of image layers whose windows move together,
  each relative to its own display window (synthesized and acquired images are in
  different units); presets and the drag rule come from
  :mod:`napari_neurosynth.windowing`.
- :class:`ReviewWindow`: axial, coronal and sagittal views of the compared layers
  with one crosshair (the shared ``dims.point``, world millimetres); the cursor
  moves it, a click jumps every view (and the user's viewer) there; right-drag
  or Ctrl+drag changes window/level (shown on screen); ``F`` flickers between
  synthesized and acquired; an optional checkerboard of the two.
- :class:`ReadingWindow`: a bare canvas for the Reader Study: only the current
  case's images, no layer list, no layer controls, no names on screen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Layer
from napari.qt import QtViewer
from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QShortcut,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from napari_neurosynth.windowing import (
    PRESET_NAMES,
    apply_relative,
    checkerboard,
    drag_window_level,
    limits_to_window_level,
    preset_window,
    relative_window,
    window_level_to_limits,
)

from .layers import layer_transform_kwargs, set_anatomical_view, viewer_camera

__all__ = [
    "PLANES",
    "LinkedWindowing",
    "ReadingWindow",
    "ReviewWindow",
    "hide_docks",
    "install_window_drag",
    "show_docks",
    "text_overlay",
]

#: The three views, left to right.
PLANES = ("axial", "coronal", "sagittal")


def text_overlay(viewer: Any) -> Any:
    """The text overlay: ``viewer.canvas.overlays['text']`` in napari >= 0.9 (``viewer.text_overlay`` before)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is not None and "text" in overlays:
        return overlays["text"]
    return viewer.text_overlay


def _contrast(layer: Layer) -> str | None:
    """The layer's contrast (``t1``, ``t2``, ...) from its metadata, else from its name."""
    meta = layer.metadata or {}
    for key in ("modality", "output"):
        if isinstance(meta.get(key), str):
            return meta[key].lower()
    name = layer.name.lower()
    for contrast in ("flair", "t1", "t2", "pd"):
        if contrast in name:
            return contrast
    return None


class LinkedWindowing:
    """Image layers whose windows move together (``linked``), each relative to its own display window.

    The reference of each layer is its contrast limits when it joins (the display
    window the viewer gave it). A change of one layer's window, by the slider, a
    preset or a drag, is expressed relative to its reference and applied to every
    other layer relative to theirs.
    """

    def __init__(self, layers: Iterable[Image] = (), linked: bool = True) -> None:
        self.linked = linked
        self.layers: list[Image] = []
        self.reference: dict[int, tuple[float, float]] = {}
        self._busy = False
        self._callbacks: list[tuple[Image, Callable]] = []
        for layer in layers:
            self.add(layer)

    def add(self, layer: Image, reference: tuple[float, float] | None = None) -> None:
        """Join ``layer`` (its current limits, or ``reference``, become its reference window)."""
        self.layers.append(layer)
        self.reference[id(layer)] = tuple(float(v) for v in (reference or layer.contrast_limits))  # type: ignore[assignment]

        def callback(event, lay=layer):
            self._changed(lay)

        layer.events.contrast_limits.connect(callback)
        self._callbacks.append((layer, callback))

    def disconnect(self) -> None:
        """Stop following the layers' windows (they keep their current limits)."""
        for layer, callback in self._callbacks:
            layer.events.contrast_limits.disconnect(callback)
        self._callbacks = []

    def _changed(self, source: Image) -> None:
        if self._busy or not self.linked:
            return
        self._busy = True
        try:
            rel = relative_window(tuple(source.contrast_limits), self.reference[id(source)])
            for layer in self.layers:
                if layer is not source:
                    layer.contrast_limits = list(apply_relative(rel, self.reference[id(layer)]))
        finally:
            self._busy = False

    def set_limits(self, layer: Image, limits: tuple[float, float]) -> None:
        """Set ``layer``'s limits (widening its slider range if needed); linked layers follow."""
        low, high = (float(v) for v in limits)
        r_low, r_high = layer.contrast_limits_range
        if low < r_low or high > r_high:
            layer.contrast_limits_range = [min(low, r_low), max(high, r_high)]
        layer.contrast_limits = [low, high]

    def apply_preset(self, preset: str, mask: Any = None) -> None:
        """Give every layer the ``preset`` window of its own contrast (each from its own data)."""
        done: dict[int, tuple[float, float]] = {}
        busy, self._busy = self._busy, True  # each layer gets its own preset, not a linked copy
        try:
            for layer in self.layers:
                key = id(layer.data)  # copies of one layer in several views share their data
                if key not in done:
                    done[key] = preset_window(np.asarray(layer.data), preset, _contrast(layer), mask)
                self.set_limits(layer, done[key])
        finally:
            self._busy = busy

    def drag(self, layer: Image, start: tuple[float, float], dx: float, dy: float) -> tuple[float, float]:
        """Window/level of ``layer`` after a drag of ``(dx, dy)`` pixels from ``start`` (window, level)."""
        window, level = drag_window_level(start, dx, dy)
        self.set_limits(layer, window_level_to_limits(window, level))
        return window, level


def _describe_window(layer: Image) -> str:
    window, level = limits_to_window_level(tuple(layer.contrast_limits))
    return f"W {window:.4g}  L {level:.4g}"


def install_window_drag(
    viewer: Any, group: Callable[[], LinkedWindowing | None], show: Callable[[str], None] | None = None
) -> Callable:
    """Right-drag (or Ctrl+left-drag) on ``viewer``'s canvas changes window/level of the active image layer.

    Horizontal: window; vertical: level (:func:`~napari_neurosynth.windowing.drag_window_level`).
    The camera does not pan during such a drag. ``group()`` gives the linked
    group (layers in it follow); the new window/level is written to the viewer's
    text overlay and passed to ``show``. Returns the callback (to remove it from
    ``viewer.mouse_drag_callbacks``).
    """

    def on_drag(viewer_model, event):
        modifiers = {str(m) for m in event.modifiers}
        if not (event.button == 2 or (event.button == 1 and "Control" in modifiers)):
            return
        layer = viewer_model.layers.selection.active
        if not isinstance(layer, Image) or not layer.visible:
            visible = [lay for lay in viewer_model.layers if isinstance(lay, Image) and lay.visible]
            layer = visible[-1] if visible else None
        if layer is None:
            return
        camera = viewer_camera(viewer_model)
        panning = camera.mouse_pan
        camera.mouse_pan = False
        start = limits_to_window_level(tuple(layer.contrast_limits))
        origin = np.asarray(event.pos, float)
        linked = group() or LinkedWindowing([layer])
        overlay = text_overlay(viewer_model)
        overlay.visible = True
        yield
        try:
            while event.type == "mouse_move":
                dx, dy = np.asarray(event.pos, float) - origin
                linked.drag(layer, start, dx, dy)
                overlay.text = _describe_window(layer)
                if show is not None:
                    show(overlay.text)
                yield
        finally:
            camera.mouse_pan = panning

    viewer.mouse_drag_callbacks.append(on_drag)
    return on_drag


def _copy_layer(layer: Layer) -> Layer:
    """A new layer of the same kind and state that shares ``layer``'s data array (public ``Layer.create``)."""
    data, state, kind = layer.as_layer_data_tuple()
    return Layer.create(data, state, kind)


class _Crosshair:
    """The shared point drawn as lines along the three world axes (a Vectors layer, as napari's example does)."""

    def __init__(self, view: ViewerModel, extent: np.ndarray) -> None:
        self.extent = extent  # (2, 3) world min / max
        self.layer = view.add_vectors(
            np.zeros((3, 2, 3)),
            name="crosshair",
            edge_color="yellow",
            edge_width=1.0,
            opacity=0.8,
            vector_style="line",
        )

    def move(self, point: Sequence[float]) -> None:
        p = np.asarray(point, float)[-3:]
        data = np.zeros((3, 2, 3))
        for axis in range(3):
            start = p.copy()
            start[axis] = self.extent[0, axis]
            data[axis, 0] = start
            data[axis, 1, axis] = self.extent[1, axis] - self.extent[0, axis]
        self.layer.data = data


def plain_click(event, callback):
    """A napari mouse-drag callback body: ``callback(press_pos, world_position)`` on a plain left click.

    A press with a modifier, another button, or a move of more than 3 screen pixels
    (a pan or a window/level drag) is not a click. Use as
    ``yield from plain_click(event, callback)`` inside a ``mouse_drag_callbacks`` generator.
    """
    if event.button != 1 or {str(m) for m in event.modifiers}:
        return
    press = np.asarray(event.pos, float)
    yield
    moved = False
    while event.type == "mouse_move":
        moved = moved or bool(np.abs(np.asarray(event.pos, float) - press).max() > 3)
        yield
    if not moved:
        callback(press, event.position)


class ReviewWindow(QWidget):
    """Axial, coronal and sagittal views of the compared layers, linked, with window/level and flicker.

    Parameters
    ----------
    viewer : napari.Viewer
        The user's viewer: its ``dims.point`` is linked with the crosshair.
    synthesized, acquired : napari.layers.Image
        The compared images (``acquired`` may be ``None``).
    overlays : sequence of layers
        Shown on top in every view and following the crosshair (z-map, regions, lesions).
    mask : array, optional
        Brain mask on the synthesized grid, for the presets.
    parent : QWidget, optional
        Owner (the Compare & Explain widget): the window is deleted with it.

    Attributes
    ----------
    views : list of ViewerModel
        One per plane, in :data:`PLANES` order.
    windowing : LinkedWindowing
        The images of every view and of the user's viewer.
    """

    def __init__(
        self, viewer: Any, synthesized: Image, acquired: Image | None = None, overlays=(), mask=None, parent=None
    ):
        super().__init__(parent, Qt.Window)  # a window of its own; with a parent, it goes when the parent goes
        self.setWindowTitle("Review: axial · coronal · sagittal")
        self.viewer = viewer
        self.mask = mask
        self.windowing = LinkedWindowing()
        self.views: list[ViewerModel] = []
        self.qt_views: list[QtViewer] = []
        self.synth_copies: list[Image] = []
        self.acquired_copies: list[Image] = []
        self.checker_layers: list[Image] = []
        self.crosshairs: list[_Crosshair] = []
        self._point_callbacks: list[tuple[Any, Callable]] = []
        self._sources = (synthesized, acquired)
        self._busy = False
        self._drags: list[tuple[Any, Callable]] = []
        for original in (synthesized, acquired):
            if original is not None:
                self.windowing.add(original)
        self._build_views(synthesized, acquired, list(overlays))
        self._build_controls()
        self._connect()
        self.set_point(tuple(viewer.dims.point))

    # ------------------------------------------------------------------ building
    def _build_views(self, synthesized, acquired, overlays) -> None:
        splitter = QSplitter(Qt.Horizontal)
        for plane in PLANES:
            view = ViewerModel(title=plane)
            for original in (acquired, synthesized):
                if original is None:
                    continue
                copy = _copy_layer(original)
                view.layers.append(copy)
                self.windowing.add(copy, tuple(original.contrast_limits))
                (self.synth_copies if original is synthesized else self.acquired_copies).append(copy)
            if self.acquired_copies:
                self.acquired_copies[-1].visible = False  # flicker shows one at a time, synthesized first
            for layer in overlays:
                view.layers.append(_copy_layer(layer))
            extent = np.asarray(view.layers.extent.world, float)[:, -3:]
            self.crosshairs.append(_Crosshair(view, extent))
            view.layers.selection.active = self.synth_copies[-1]
            set_anatomical_view(view, plane)
            overlay = text_overlay(view)
            overlay.visible = True
            overlay.text = plane
            qt_view = QtViewer(view)
            self.views.append(view)
            self.qt_views.append(qt_view)
            splitter.addWidget(qt_view)
        self.splitter = splitter

    def _build_controls(self) -> None:
        self.preset_buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout()
        row.addWidget(QLabel("Window:"))
        for name in PRESET_NAMES:
            button = QPushButton(name)
            button.setToolTip(f"The '{name}' window of each image's contrast (windowing.preset_window)")
            button.clicked.connect(lambda _=False, n=name: self.apply_preset(n))
            self.preset_buttons[name] = button
            row.addWidget(button)
        self.link_check = QCheckBox("Link windowing")
        self.link_check.setChecked(True)
        self.link_check.setToolTip(
            "A window change of one image moves the others by the same amount, relative to each one's own window"
        )
        self.follow_check = QCheckBox("Follow cursor")
        self.follow_check.setChecked(True)
        self.follow_check.setToolTip("The crosshair follows the mouse; a click jumps every view and your viewer there")
        self.flicker_button = QPushButton("Flicker (F)")
        self.flicker_button.setToolTip("Toggle synthesized ⇄ acquired at the same window")
        self.flicker_button.setEnabled(bool(self.acquired_copies))
        self.checker_check = QCheckBox("Checkerboard")
        self.checker_check.setToolTip("Alternate 8-voxel tiles of synthesized and acquired, each at its window")
        self.checker_check.setEnabled(bool(self.acquired_copies))
        for w in (self.link_check, self.follow_check, self.flicker_button, self.checker_check):
            row.addWidget(w)
        row.addStretch(1)
        self.status = QLabel("Right-drag or Ctrl+drag: window (←→) and level (↑↓). Click: jump. F: flicker.")
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.status)
        self.resize(1500, 700)

    def _connect(self) -> None:
        self.link_check.toggled.connect(self._set_linked)
        self.flicker_button.clicked.connect(self.flicker)
        self.checker_check.toggled.connect(self.show_checkerboard)
        shortcut = QShortcut(QKeySequence("F"), self)
        shortcut.setContext(Qt.WindowShortcut)
        shortcut.activated.connect(self.flicker)
        self._shortcut = shortcut
        for view in [*self.views, self.viewer]:

            def on_point(event, v=view):
                self._point_changed(v)

            view.dims.events.point.connect(on_point)
            self._point_callbacks.append((view, on_point))
            self._drags.append((view, install_window_drag(view, lambda: self.windowing, self.status.setText)))
        for view in self.views:
            view.mouse_move_callbacks.append(self._on_move)
            view.mouse_drag_callbacks.append(self._on_click)

    # ------------------------------------------------------------------ the crosshair
    def _point_changed(self, source) -> None:
        if not self._busy:
            self.set_point(tuple(source.dims.point))

    def set_point(self, world: Sequence[float]) -> None:
        """Move the crosshair to ``world`` (RAS mm): every view's slice and the user's viewer follow."""
        if self._busy:
            return
        self._busy = True
        try:
            point = tuple(float(v) for v in world)
            for view in [*self.views, self.viewer]:
                if tuple(view.dims.point) != point:
                    view.dims.point = point
            for crosshair in self.crosshairs:
                crosshair.move(point)
        finally:
            self._busy = False

    def jump(self, world: Sequence[float]) -> None:
        """Go to ``world``: :meth:`set_point`, and centre every view (and the user's viewer) on it."""
        self.set_point(world)
        for view in [*self.views, self.viewer]:
            displayed = list(view.dims.displayed)
            viewer_camera(view).center = tuple(np.asarray(world, float)[displayed])

    def _on_move(self, view, event) -> None:
        if self.follow_check.isChecked() and not event.buttons:
            self.set_point(tuple(event.position))

    def _on_click(self, view, event):
        yield from plain_click(event, lambda _press, position: self._click_to(position))

    def _click_to(self, position: Sequence[float]) -> None:
        """A click, not a pan: the crosshair and the user's viewer go there."""
        self.set_point(tuple(position))
        self.viewer.dims.point = tuple(float(v) for v in position)

    # ------------------------------------------------------------------ windowing
    def _set_linked(self, on: bool) -> None:
        self.windowing.linked = bool(on)

    def apply_preset(self, preset: str) -> None:
        """Give the compared images (every view and the user's viewer) the ``preset`` window."""
        if self.link_check.isChecked():
            self.windowing.apply_preset(preset, self.mask)
        else:
            active = self.views[0].layers.selection.active
            LinkedWindowing([active]).apply_preset(preset, self.mask)
        self.status.setText(f"Window: {preset} ({_describe_window(self.synth_copies[0])})")
        if self.checker_check.isChecked():
            self.show_checkerboard(True)

    # ------------------------------------------------------------------ flicker and checkerboard
    @property
    def showing(self) -> str:
        """``"synthesized"`` or ``"acquired"``: which of the two the views show."""
        return "synthesized" if self.synth_copies[0].visible else "acquired"

    def flicker(self) -> str:
        """Swap synthesized ⇄ acquired in every view (same window); return what is shown now."""
        if not self.acquired_copies:
            return self.showing
        show_synth = not self.synth_copies[0].visible
        for synth, acquired, view in zip(self.synth_copies, self.acquired_copies, self.views):
            synth.visible = show_synth
            acquired.visible = not show_synth
            view.layers.selection.active = synth if show_synth else acquired
        text = f"Showing: {self.showing}"
        self.status.setText(text)
        for view in self.views:
            text_overlay(view).text = f"{view.title} · {self.showing}"
        return self.showing

    def show_checkerboard(self, on: bool = True) -> None:
        """Add (or remove) a checkerboard of synthesized and acquired, each rescaled by its current window."""
        for view, layer in zip(self.views, self.checker_layers):
            if layer in view.layers:
                view.layers.remove(layer)
        self.checker_layers = []
        if not on or not self.acquired_copies:
            return
        from napari_neurosynth.display import rescale_to_window
        from napari_neurosynth.io import resample_to, same_grid

        from .layers import layer_to_volume

        synth, acquired = self.synth_copies[0], self.acquired_copies[0]
        target = layer_to_volume(acquired)
        ref = layer_to_volume(synth)
        if not same_grid(target, ref):
            target = resample_to(target, ref, "linear")
        board = checkerboard(
            rescale_to_window(ref.data, tuple(synth.contrast_limits)),
            rescale_to_window(target.data, tuple(acquired.contrast_limits)),
        )
        for view, synth_copy in zip(self.views, self.synth_copies):
            layer = Image(
                board, name="checkerboard", colormap="gray", contrast_limits=(0.0, 1.0), **layer_transform_kwargs(synth)
            )
            view.layers.insert(view.layers.index(synth_copy) + 1, layer)  # above both images, below the overlays
            self.checker_layers.append(layer)

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Disconnect from the user's viewer and free the views (idempotent)."""
        for view, callback in self._drags:
            if callback in view.mouse_drag_callbacks:
                view.mouse_drag_callbacks.remove(callback)
        self._drags = []
        for view, callback in self._point_callbacks:
            view.dims.events.point.disconnect(callback)
        self._point_callbacks = []
        self.windowing.disconnect()
        for qt_view in self.qt_views:
            qt_view.close()
            qt_view.deleteLater()
        self.qt_views = []


class ReadingWindow(QWidget):
    """A bare reading canvas for the Reader Study: images only, no layer list or layer controls.

    It is a window of its own (one ``ViewerModel`` per plane of the study's hanging
    protocol, each drawn by a ``QtViewer``, and the questions panel beside them), so
    the rater sees no layer name, path or metadata, and no control (layer list,
    layer properties, other dock widgets) from which one could be read; its title
    names neither the case nor the condition.

    Parameters
    ----------
    shortcuts : sequence of (key, callable)
        Keys that act while this window is active (the study's answer keys and Enter).
    parent : QWidget, optional
        Owner (the Reader Study widget): the window is deleted with it.
    planes : sequence of str
        The views, left to right (one plane, or the three of a tri-planar protocol);
        their slices are linked through the shared ``dims.point`` (world mm).

    Attributes
    ----------
    views : list of ViewerModel
        One per plane; :attr:`view` is the first.
    on_screen : Signal(bool)
        Emitted when the window is shown, hidden, minimised or restored: time on
        case counts only while the case is on screen.
    """

    TITLE = "Reader Study: reading window"
    on_screen = Signal(bool)

    def __init__(
        self,
        shortcuts: Sequence[tuple[str, Callable]] = (),
        parent: QWidget | None = None,
        planes: Sequence[str] = ("axial",),
    ) -> None:
        super().__init__(parent, Qt.Window)  # a window of its own; with a parent, it goes when the parent goes
        self.setWindowTitle(self.TITLE)
        self.planes = tuple(planes) or ("axial",)
        self.plane = self.planes[0]
        self.views: list[ViewerModel] = []
        self.qt_views: list[QtViewer] = []
        self.click_callbacks: list[Callable[[ViewerModel, tuple[float, ...]], None]] = []
        self._drags: list[tuple[ViewerModel, Callable]] = []
        self._busy = False
        self._shown = False
        self._last_click: np.ndarray | None = None
        splitter = QSplitter(Qt.Horizontal)
        for plane in self.planes:
            view = ViewerModel(title=self.TITLE)
            qt_view = QtViewer(view)
            view.layers.events.inserted.connect(lambda event=None, v=view, p=plane: self._orient(v, p))
            view.dims.events.point.connect(lambda event=None, v=view: self._point_changed(v))
            view.mouse_drag_callbacks.append(self._on_click)
            view.mouse_double_click_callbacks.append(self._on_double_click)
            self.views.append(view)
            self.qt_views.append(qt_view)
            splitter.addWidget(qt_view)
        self.view = self.views[0]
        self.qt_view = self.qt_views[0]
        self.side = QWidget()
        self.side_layout = QVBoxLayout(self.side)
        self.side_layout.setContentsMargins(6, 6, 6, 6)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(splitter, 1)
        left_layout.addWidget(self.status)
        outer = QSplitter(Qt.Horizontal)
        outer.addWidget(left)
        outer.addWidget(self.side)
        outer.setStretchFactor(0, 4)
        outer.setStretchFactor(1, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(outer)
        self.side.hide()
        self._shortcuts = []
        for key, slot in shortcuts:
            self.add_shortcut(key, slot)
        self.resize(1400 if len(self.planes) > 1 else 1100, 800)

    def add_shortcut(self, key: str, slot: Callable) -> QShortcut:
        shortcut = QShortcut(QKeySequence(key), self)
        shortcut.setContext(Qt.WindowShortcut)
        shortcut.activated.connect(slot)
        self._shortcuts.append(shortcut)
        return shortcut

    def set_side(self, widget: QWidget | None) -> None:
        """Show ``widget`` (the questions) to the right of the images (``None``: nothing)."""
        while self.side_layout.count():
            item = self.side_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().setParent(None)
        if widget is None:
            self.side.hide()
            return
        self.side_layout.addWidget(widget)
        self.side_layout.addStretch(1)
        widget.show()
        self.side.show()

    def _orient(self, view: ViewerModel, plane: str) -> None:
        """Show the case in the view's plane (radiological convention) once 3-D images are there."""
        if len(view.layers) == 1 and view.dims.ndim == 3:
            set_anatomical_view(view, plane)

    # ------------------------------------------------------------------ linked slices
    def _point_changed(self, source: ViewerModel) -> None:
        if self._busy or len(self.views) < 2 or not getattr(self, "linked", True):
            return
        self._busy = True
        try:
            point = tuple(source.dims.point)
            for view in self.views:
                if view is not source and view.dims.ndim == len(point) and tuple(view.dims.point) != point:
                    view.dims.point = point
        finally:
            self._busy = False

    # ------------------------------------------------------------------ clicks and windowing
    def _on_click(self, view, event):
        """A left click (no drag, no modifier) goes to :attr:`click_callbacks` with its world position."""
        yield from plain_click(event, lambda press, position: self._clicked(view, press, position))

    def _on_double_click(self, view, event) -> None:
        # A second click soon after the first arrives as a double click. At the same
        # place it is one finding clicked twice; elsewhere it is a second finding.
        if event.button == 1 and not {str(m) for m in event.modifiers}:
            pos = np.asarray(event.pos, float)
            if self._last_click is None or np.abs(pos - self._last_click).max() > 3:
                self._clicked(view, pos, event.position)

    def _clicked(self, view, pos, position) -> None:
        self._last_click = np.asarray(pos, float)
        for callback in self.click_callbacks:
            callback(view, tuple(float(v) for v in position))

    def set_windowing(self, allowed: bool, group: Callable[[], LinkedWindowing | None]) -> None:
        """Right-drag / Ctrl+drag window/level in every view when ``allowed`` (else no way to change it)."""
        for view, callback in self._drags:
            if callback in view.mouse_drag_callbacks:
                view.mouse_drag_callbacks.remove(callback)
        self._drags = []
        if allowed:
            for view in self.views:
                self._drags.append((view, install_window_drag(view, group, self.status.setText)))

    # ------------------------------------------------------------------ on screen or not
    def _report(self) -> None:
        shown = self.isVisible() and not self.isMinimized()
        if shown != self._shown:
            self._shown = shown
            self.on_screen.emit(shown)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._report()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        self._report()

    def changeEvent(self, event) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.WindowStateChange:
            self._report()

    def shutdown(self) -> None:
        """Remove the images and free the canvases (idempotent)."""
        if self.qt_views:
            self.set_side(None)
            for view in self.views:
                view.layers.clear()
            for qt_view in self.qt_views:
                qt_view.close()
                qt_view.deleteLater()
            self.qt_views = []
            self.qt_view = None

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


def hide_docks(window: Any, keep: QWidget) -> list:
    """Hide every dock widget of ``window`` but the one holding ``keep``; return them for :func:`show_docks`.

    During a blinded session the layer list, the layer controls and the other
    dock widgets (whose layer pickers show names such as "T2 (synthesized: ...)")
    would give the condition away.
    """
    from qtpy.QtWidgets import QDockWidget

    hidden = []
    for dock in window.findChildren(QDockWidget):
        if dock.isVisible() and not dock.isAncestorOf(keep):
            dock.hide()
            hidden.append(dock)
    return hidden


def show_docks(docks: Iterable) -> None:
    """Show the dock widgets :func:`hide_docks` hid (those still alive)."""
    for dock in docks:
        try:
            dock.show()
        except RuntimeError:  # deleted meanwhile
            pass
