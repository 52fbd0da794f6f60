"""The *Synthesize* dock widget: run a model bundle on image layers.

The widget only gathers choices (model, one image layer per input modality the
model's card asks for, device), runs
:func:`napari_neurosynth.inference.synthesize` in a napari thread worker with a
progress bar and a Cancel button, and adds the result as an image layer on the
first input's grid (same affine), named e.g. ``"T2 (synthesized: t1_to_t2)"``,
with the card, device and timing in its metadata. A toggle shows source,
synthesized and acquired target side by side in napari's grid mode (one camera,
so the views are linked).

Examples
--------
>>> import napari  # doctest: +SKIP
>>> viewer = napari.Viewer()  # doctest: +SKIP
>>> widget = SynthesizeWidget(viewer)  # doctest: +SKIP
>>> viewer.window.add_dock_widget(widget, name="Synthesize")  # doctest: +SKIP
>>> worker = widget.run()  # doctest: +SKIP
"""

from __future__ import annotations

import html
import time
from typing import Any

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from napari_neurosynth.errors import NeurosynthError

from ._qt_common import (
    BackgroundJob,
    LayerCombo,
    modality_matcher,
    notify_exception,
    robust_contrast_limits,
)
from .layers import layer_transform_kwargs

__all__ = ["SynthesizeWidget", "card_details_html", "modality_label"]

_DEVICES = (("auto", "Auto"), ("cpu", "CPU"), ("cuda", "CUDA"), ("mps", "Apple MPS"))


def modality_label(modality: str) -> str:
    """Display name of a modality: ``"t2"`` -> ``"T2"``, ``"flair"`` -> ``"FLAIR"``."""
    return str(modality).upper()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _scalar_items(d: Any) -> dict:
    if not isinstance(d, dict):
        return {}
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def card_details_html(card: dict) -> str:
    """The model card as a short HTML summary for the details panel and tooltips.

    Shows inputs -> output, task and architecture, training data (and the
    phantom-only caveat when the card says so), and the held-out metrics next to
    the baselines the card compares against.
    """
    from napari_neurosynth.bundle import is_phantom_only  # the card's own rule for the caveat

    name = html.escape(str(card.get("name", "model")))
    inputs = " + ".join(modality_label(m) for m in card.get("inputs", []))
    output = modality_label(card.get("output", "?"))
    arch = (card.get("architecture") or {}).get("name", "?")
    slicing = card.get("slicing") or {}
    parts = [
        f"<b>{name}</b>: {html.escape(inputs)} &rarr; {html.escape(output)}",
        f"<br>{_fmt(card.get('task', '?'))}, {_fmt(arch)}, {_fmt(slicing.get('plane', 'axial'))} slices"
        f" (context {_fmt(slicing.get('context', 0))})",
    ]
    n_params = (card.get("weights") or {}).get("n_parameters")
    if n_params:
        parts.append(f", {_fmt(int(n_params))} parameters")
    if card.get("description"):
        parts.append(f"<br>{_fmt(card['description'])}")
    training = card.get("training") or {}
    if training.get("data"):
        parts.append(f"<br><b>Training data:</b> {_fmt(training['data'])}")
    if is_phantom_only(card):
        parts.append(
            "<br><span style='color:#e8a33d'><b>Trained on the synthetic phantom only</b>: a demonstration, "
            "not for clinical or research conclusions. Train on your own data with "
            "<code>neurosynth train</code>.</span>"
        )
    metrics = card.get("metrics") or {}
    rows = {}
    if _scalar_items(metrics.get("held_out")):
        rows["held-out"] = _scalar_items(metrics["held_out"])
    for bname, bvals in (metrics.get("baselines") or {}).items():
        if _scalar_items(bvals):
            rows[f"baseline: {bname}"] = _scalar_items(bvals)
    keys = [k for k in ("psnr", "ssim", "mae", "nmse") if any(k in r for r in rows.values())]
    keys += sorted({k for r in rows.values() for k in r} - set(keys))[: max(0, 6 - len(keys))]
    if rows and keys:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join(
            f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td align='right'>{_fmt(r.get(k, ''))}</td>" for k in keys)
            + "</tr>"
            for label, r in rows.items()
        )
        parts.append(f"<br><b>Metrics</b><table cellspacing='4'><tr><th></th>{head}</tr>{body}</table>")
    return "".join(parts)


class SynthesizeWidget(QWidget):
    """Dock widget: choose a model and its input layers, run synthesis off the Qt thread.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the menu).

    Attributes
    ----------
    model_combo : QComboBox
        Model bundles found by :func:`napari_neurosynth.bundle.find_models`.
    input_combos : dict[str, LayerCombo]
        One image-layer picker per input modality of the chosen model, in card order.
    target_combo : LayerCombo
        Optional acquired target (only used by the side-by-side view).
    device_combo : QComboBox
        ``auto`` (with the detected device), ``cpu``, ``cuda``, ``mps``; unavailable
        devices are disabled.
    worker
        The last started worker (``worker.finished`` fires when it ends).
    result_layer
        The last layer this widget added, or ``None``.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._infos: dict[str, Any] = {}
        self._models: dict[str, Any] = {}  # loaded Model objects by name (weights read once)
        self.input_combos: dict[str, LayerCombo] = {}
        self.worker = None
        self.result_layer = None
        self._grid_state: dict | None = None

        # --- model
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Model bundles from models/, your user folder and $NEUROSYNTH_MODELS_PATH")
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("Look for model bundles again")
        self.refresh_button.setFixedWidth(32)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.details = QTextBrowser()
        self.details.setOpenExternalLinks(False)
        self.details.setMinimumHeight(110)
        self.details.setMaximumHeight(190)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)

        # --- inputs (rebuilt per model)
        self.inputs_box = QGroupBox("Input layers")
        self.inputs_form = QFormLayout(self.inputs_box)
        self.inputs_form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.target_combo = LayerCombo(self.viewer, Image, optional=True)
        self.target_combo.setToolTip("The acquired image of the output contrast, if you have it (for side by side)")
        self.resample_check = QCheckBox("Resample inputs onto the first input's grid")
        self.resample_check.setVisible(False)
        self.target_label = QLabel("Acquired target (optional)")
        target_row = QFormLayout()
        target_row.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        target_row.addRow(self.target_label, self.target_combo)

        # --- device and run
        self.device_combo = QComboBox()
        self._fill_devices()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Synthesize in the background; the viewer stays usable")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current batch of slices; nothing is added")
        self.side_by_side_check = QCheckBox("Side by side (source | synthesized | acquired)")
        self.side_by_side_check.setToolTip("napari grid mode with one layer per cell; the views are linked")
        self.side_by_side_check.toggled.connect(self.side_by_side)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.details)
        layout.addWidget(self.inputs_box)
        layout.addWidget(self.resample_check)
        layout.addLayout(target_row)
        layout.addLayout(buttons)
        layout.addWidget(self.side_by_side_check)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.job = BackgroundJob(
            "Synthesis",
            busy_widgets=[
                self.run_button, self.model_combo, self.refresh_button, self.inputs_box, self.device_combo,
                self.resample_check,
            ],
            cancel_button=self.cancel_button,
            parent=self,
        )
        self.job.done.connect(self._on_job_done)
        self.run_button.clicked.connect(self._run_clicked)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.refresh_models()

    # ------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        """Re-scan the model folders (cards only; weights are read when a model runs)."""
        from napari_neurosynth.bundle import find_models

        current = self.model_combo.currentText()
        try:
            infos = find_models()
        except NeurosynthError as exc:
            notify_exception(exc)
            infos = []
        self._infos = {info.name: info for info in infos}
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for i, info in enumerate(infos):
            self.model_combo.addItem(info.name)
            self.model_combo.setItemData(i, card_details_html(info.card), Qt.ToolTipRole)
        if current in self._infos:
            self.model_combo.setCurrentIndex(list(self._infos).index(current))
        self.model_combo.blockSignals(False)
        self._on_model_changed()

    @property
    def card(self) -> dict | None:
        """The chosen model's card, or ``None`` when no model is available."""
        info = self._infos.get(self.model_combo.currentText())
        return None if info is None else info.card

    def set_model(self, name: str) -> None:
        """Choose a model by name (as listed in :attr:`model_combo`)."""
        idx = self.model_combo.findText(name)
        if idx < 0:
            raise NeurosynthError(f"no model named {name!r}; available: {', '.join(self._infos) or 'none'}")
        self.model_combo.setCurrentIndex(idx)

    def _on_model_changed(self, *_args) -> None:
        card = self.card
        # Rebuild the per-input pickers for the model's modalities.
        while self.inputs_form.rowCount():
            self.inputs_form.removeRow(0)  # deletes the old combos too
        self.input_combos = {}
        if card is None:
            self.details.setHtml(
                "<i>No model bundles found.</i> Put bundle folders in the user models folder or "
                "<code>$NEUROSYNTH_MODELS_PATH</code>, or train one with <code>neurosynth train</code>."
            )
            self.run_button.setEnabled(False)
            return
        self.details.setHtml(card_details_html(card))
        inputs = list(card.get("inputs", []))
        for i, modality in enumerate(inputs):
            matcher = modality_matcher(modality)
            if len(inputs) == 1:
                # One input: fall back to any acquired image when no layer is named like it.
                def prefer(layer, _m=matcher):
                    return 2 if _m(layer) else (1 if not layer.metadata.get("synthesized") else 0)
            else:
                prefer = matcher
            combo = LayerCombo(self.viewer, Image, optional=True, prefer=prefer)
            combo.setToolTip(f"Image layer holding the {modality_label(modality)} input")
            self.input_combos[modality] = combo
            self.inputs_form.addRow(modality_label(modality), combo)
        mcsr = card.get("task") == "mcsr"
        self.resample_check.setVisible(len(inputs) > 1)
        self.resample_check.setChecked(mcsr)
        self.resample_check.setEnabled(not mcsr)
        self.resample_check.setToolTip(
            "MCSR models always resample the low-resolution input onto the first input's grid"
            if mcsr else "Resample the other inputs (linear) onto the first input's grid instead of refusing "
            "inputs on different grids; only correct if the images are registered"
        )
        output = card.get("output", "")
        self.target_combo.set_prefer(modality_matcher(output))
        self.target_label.setText(f"Acquired {modality_label(output)} (optional)")
        self.run_button.setEnabled(not self.job.running)

    # ------------------------------------------------------------------ devices
    def _fill_devices(self) -> None:
        import torch

        from napari_neurosynth.inference import resolve_device

        # What this torch build can use; "auto" then follows the engine's own rule.
        available = {
            "auto": True,
            "cpu": True,
            "cuda": torch.cuda.is_available(),
            "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        }
        detected = str(resolve_device("auto"))
        self.device_combo.clear()
        model = self.device_combo.model()
        for i, (key, label) in enumerate(_DEVICES):
            text = f"{label} ({detected})" if key == "auto" else label
            if not available[key]:
                text += " (not available)"
            self.device_combo.addItem(text, key)
            if not available[key]:
                model.item(i).setEnabled(False)
        self.device_combo.setToolTip(
            f"Auto picks CUDA, then Apple MPS, then CPU; detected here: {detected}"
        )

    @property
    def device(self) -> str:
        """The chosen device key: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``."""
        return self.device_combo.currentData()

    def set_device(self, key: str) -> None:
        """Choose a device by key; refuses one that is not available here."""
        idx = self.device_combo.findData(key)
        if idx < 0 or not self.device_combo.model().item(idx).isEnabled():
            raise NeurosynthError(f"device {key!r} is not available on this machine; choose auto or cpu")
        self.device_combo.setCurrentIndex(idx)

    # ------------------------------------------------------------------ running
    def _run_clicked(self) -> None:
        self.run()

    def run(self):
        """Check the choices and start synthesis in a worker.

        Returns
        -------
        worker or None
            The started napari worker, or ``None`` when a choice is wrong (a
            notification says what to fix; nothing is started).
        """
        try:
            name, layers = self._checked_choices()
        except NeurosynthError as exc:
            notify_exception(exc)
            return None
        from napari_neurosynth.viewer.layers import layer_to_volume

        try:
            volumes = [layer_to_volume(layer) for layer in layers]
        except NeurosynthError as exc:
            notify_exception(exc)
            return None
        source = layers[0]
        self.status.setText(f"Running {name} on {', '.join(lay.name for lay in layers)} …")
        self.worker = self.job.start(
            _synthesize_job,
            name,
            self._models.get(name),
            volumes,
            self.device,
            self.resample_check.isChecked(),
            [lay.name for lay in layers],
            on_result=lambda res: self._add_result(res, source),
            desc=f"Synthesizing with {name}",
        )
        return self.worker

    def cancel(self) -> None:
        """Cancel the running synthesis (it stops after the current batch; nothing is added)."""
        self.job.cancel()

    def _checked_choices(self) -> tuple[str, list]:
        card = self.card
        if card is None:
            raise NeurosynthError("No model is available; add a model bundle and press ↻")
        inputs = list(card.get("inputs", []))
        n_images = sum(isinstance(lay, Image) for lay in self.viewer.layers)
        if n_images == 0:
            raise NeurosynthError(
                f"No image layer to synthesize from; open a {modality_label(inputs[0])} volume "
                "(File > Open, or File > Open Sample > Brain phantom)"
            )
        layers = []
        missing = []
        for modality in inputs:
            layer = self.input_combos[modality].layer()
            if layer is None:
                missing.append(modality_label(modality))
            layers.append(layer)
        if missing:
            raise NeurosynthError(
                f"Model {card['name']} needs {len(inputs)} input(s) "
                f"({', '.join(modality_label(m) for m in inputs)}); choose a layer for {', '.join(missing)}"
            )
        names = [lay.name for lay in layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise NeurosynthError(
                f"Layer {dupes[0]!r} is chosen for more than one input; each input needs its own contrast"
            )
        for modality, layer in zip(inputs, layers):
            if layer.rgb or layer.ndim != 3:
                raise NeurosynthError(
                    f"{modality_label(modality)} input {layer.name!r} has shape {tuple(layer.data.shape)}; "
                    "a 3-D single-channel volume is needed"
                )
        return card["name"], layers

    def _add_result(self, result: dict, source) -> None:
        # Only cheap work here (Qt thread): the layer data and contrast limits come ready from the worker.
        model = result["model"]
        self._models[model.name] = model
        data, kwargs, _ = result["layer_data"]
        kwargs.pop("affine", None)
        layer = self.viewer.add_image(data, **layer_transform_kwargs(source), **kwargs)
        self.result_layer = layer
        self.status.setText(
            f"Added “{layer.name}” in {result['seconds']:.2f} s on {result['device']}."
        )
        if self.side_by_side_check.isChecked():
            self._grid_state = None
            self.side_by_side(True)

    def _on_job_done(self) -> None:
        if self.job.last_error is not None:
            self.status.setText(f"Not done: {self.job.last_error}")
        self.run_button.setEnabled(self.card is not None)

    # ------------------------------------------------------------------ side by side
    def side_by_side(self, checked: bool) -> None:
        """Show source | synthesized | acquired in napari's grid (linked views), or go back.

        Other layers are hidden while the grid is on and shown again afterwards.
        """
        if not checked:
            state, self._grid_state = self._grid_state, None
            if state is None:
                self.viewer.grid.enabled = False
                return
            self.viewer.grid.shape = state["shape"]
            self.viewer.grid.stride = state["stride"]
            for layer in self.viewer.layers:
                if layer.name in state["visible"]:
                    layer.visible = state["visible"][layer.name]
            self.viewer.grid.enabled = state["enabled"]
            return
        panels = self._side_by_side_layers()
        if len(panels) < 2:
            notify_exception(NeurosynthError(
                "Side by side needs a synthesized layer and its source; run a synthesis first"
            ))
            self.side_by_side_check.blockSignals(True)
            self.side_by_side_check.setChecked(False)
            self.side_by_side_check.blockSignals(False)
            return
        if self._grid_state is None:
            self._grid_state = {
                "enabled": self.viewer.grid.enabled,
                "shape": tuple(self.viewer.grid.shape),
                "stride": self.viewer.grid.stride,
                "visible": {lay.name: lay.visible for lay in self.viewer.layers},
            }
        # napari fills grid cells with visible layers in list order, left to right.
        layers = self.viewer.layers
        for pos, layer in enumerate(panels):
            src = layers.index(layer)
            if src != pos:
                layers.move(src, pos)
        for layer in layers:
            layer.visible = layer in panels
        self.viewer.grid.stride = 1
        self.viewer.grid.shape = (1, len(panels))
        self.viewer.grid.enabled = True
        self.viewer.reset_view()

    def _side_by_side_layers(self) -> list:
        synth = self.result_layer if self.result_layer in self.viewer.layers else None
        if synth is None:
            return []
        sources = [self.viewer.layers[n] for n in synth.metadata.get("source_layers", []) if n in self.viewer.layers]
        target = self.target_combo.layer()
        panels = sources[:1] + [synth]
        if target is not None and target not in panels:
            panels.append(target)
        return panels


def _synthesize_job(name: str, model, volumes: list, device: str, resample: bool, layer_names: list[str],
                    *, progress, cancel) -> dict:
    """Worker-thread body: load the bundle (once), synthesize, and prepare the layer data.

    Everything proportional to the volume's size (the synthesis, percentiles for
    the contrast limits) happens here, off the Qt thread.
    """
    from napari_neurosynth.bundle import load_model
    from napari_neurosynth.inference import synthesize_volume
    from napari_neurosynth.viewer.layers import volume_to_layer_data

    start = time.perf_counter()
    if model is None:
        model = load_model(name)
    vol = synthesize_volume(model, volumes, device=device, progress=progress, cancel=cancel, resample=resample)
    seconds = round(time.perf_counter() - start, 3)
    info = vol.metadata.pop("inference", {})
    vol.metadata.pop("card", None)  # the engine's short card; the full one goes below
    vol.metadata.update(
        synthesized=True,
        model=model.name,
        card=model.card,
        modality=model.output,
        output=model.output,
        seconds=seconds,
        device=str(info.get("device", device)),
        inference=info,
        source_layers=list(layer_names),
        inputs=dict(zip(model.inputs, layer_names)),
    )
    layer_data = volume_to_layer_data(
        vol,
        name=f"{modality_label(model.output)} (synthesized: {model.name})",
        colormap="gray",
        contrast_limits=robust_contrast_limits(vol.data),
    )
    return {"model": model, "layer_data": layer_data, "seconds": seconds, "device": vol.metadata["device"]}
