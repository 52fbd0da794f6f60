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
import math
import time
from typing import Any

from napari.layers import Image
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
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
)
from .layers import layer_transform_kwargs, viewer_grid

__all__ = [
    "CardBrowser",
    "SynthesizeWidget",
    "card_details_html",
    "metrics_full_html",
    "metrics_summary_html",
    "modality_label",
]

#: Most pixels the card panel grows to before it scrolls: collapsed, and with "More metrics"
#: (then also at most 55 % of the screen's height, so the dock still fits on a laptop).
_DETAILS_MAX, _DETAILS_MAX_EXPANDED = 420, 680
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


#: Short, readable names for the predictors a card's held-out table compares.
_PREDICTOR_NAMES = {"model": "model", "input_standardised": "input (standardised)", "intensity_lut": "intensity LUT"}
_METRIC_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "mae": "MAE", "nmse": "NMSE"}
_TASK_NAMES = {"cms": "contrast synthesis", "mcsr": "super-resolution (MCSR)"}
_ARCH_NAMES = {"unet": "U-Net", "resnet": "ResNet", "fusion": "fusion net"}
#: Table columns: (card keys tried in order, header, better-direction arrow, decimals).
#: Cards from `neurosynth train` say psnr_brain; hand-written cards may say plain psnr.
_BRAIN_COLS = (
    (("psnr_brain", "psnr"), "PSNR", "&uarr;", 1),
    (("ssim_brain", "ssim"), "SSIM", "&uarr;", 3),
    (("mae_brain", "mae"), "MAE", "&darr;", 3),
)
_LESION_COLS = (
    (("psnr_lesion",), "PSNR", "&uarr;", 1),
    (("ssim_lesion",), "SSIM", "&uarr;", 3),
    (("mae_lesion",), "MAE", "&darr;", 3),
)
_NMSE_COLS = ((("nmse_brain", "nmse"), "brain", "", 4), (("nmse_lesion",), "lesion", "", 4))
_SMALL = "font-size:small; color:#8a9096"  # mid grey: readable on the dark and the light theme
_LINK = "color:#5fa8e8"  # Qt's default link blue is unreadable on napari's dark theme
_HEADING = "margin-top:8px; margin-bottom:2px"
#: Link in the details panel that shows (or hides) the full held-out figures.
ALL_METRICS_LINK = "neurosynth:all-metrics"


def _predictor_name(key: str) -> str:
    return _PREDICTOR_NAMES.get(key, str(key).replace("_", " "))


def _metric_name(key: str) -> str:
    return " ".join(_METRIC_NAMES.get(w, w) for w in str(key).split("_"))


def _metric_rows(card: dict) -> dict[str, dict]:
    """``{"model": {...}, <baseline>: {...}}``: the card's scalar held-out figures."""
    metrics = card.get("metrics") or {}
    rows = {}
    if _scalar_items(metrics.get("held_out")):
        rows["model"] = _scalar_items(metrics["held_out"])
    for bname, bvals in (metrics.get("baselines") or {}).items():
        if _scalar_items(bvals) and bname != "model":
            rows[bname] = _scalar_items(bvals)
    return rows


def _value(row: dict, keys: tuple[str, ...]):
    return next((row[k] for k in keys if k in row), None)


def _present(rows: dict, cols) -> list:
    """The columns at least one predictor has a value for."""
    return [c for c in cols if any(_value(r, c[0]) is not None for r in rows.values())]


def _predictor_table(rows: dict, cols) -> str:
    """One row per predictor (the model in bold), numbers right-aligned, no wrapping.

    Kept to a label and three or four short columns so it fits a ~300 px dock.
    """
    cell = "padding-left:6px; white-space:nowrap"
    head = "".join(f"<th align='right' style='{cell}'>{label}{arrow}</th>" for _, label, arrow, _ in cols)
    body = []
    for key, r in rows.items():
        texts = []
        for keys, _, _, digits in cols:
            v = _value(r, keys)
            texts.append("&ndash;" if v is None else f"{v:.{digits}f}")
        name = html.escape(_predictor_name(key))
        if key == "model":
            name, texts = f"<b>{name}</b>", [f"<b>{t}</b>" for t in texts]
        body.append(
            f"<tr><td>{name}</td>" + "".join(f"<td align='right' style='{cell}'>{t}</td>" for t in texts) + "</tr>"
        )
    return f"<table cellspacing='0' cellpadding='0'><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _seeds_text(seeds) -> str:
    seeds = [int(s) for s in seeds]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}&ndash;{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def metrics_summary_html(card: dict, *, link: str | None = "show") -> str:
    """The held-out figures a reader checks first, laid out for a ~300 px wide dock.

    Brain-mask PSNR / SSIM / MAE (the figures the shipping rule uses) for the
    model (bold) and each baseline, one row each, right-aligned (PSNR to 0.1 dB,
    SSIM and MAE to 3 decimals); the verdict from ``metrics.beats_baselines``; the
    held-out seeds and resolution in small text, and a link to the other figures
    (:func:`metrics_full_html`). Empty when the card has no held-out metrics.

    Parameters
    ----------
    card : dict
        A bundle card (``metrics.held_out``, ``metrics.baselines``, ...).
    link : {"show", "hide", None}
        The link to :data:`ALL_METRICS_LINK` under the table: "More metrics",
        "Fewer metrics", or none (for tooltips, where links do nothing).

    Examples
    --------
    >>> card = {"metrics": {"held_out": {"psnr_brain": 24.2957, "mae_brain": 0.0329},
    ...                     "baselines": {"intensity_lut": {"psnr_brain": 23.3997, "mae_brain": 0.0393}},
    ...                     "beats_baselines": True}}
    >>> text = metrics_summary_html(card)
    >>> "24.3" in text and "23.4" in text and "intensity LUT" in text
    True
    """
    rows = _metric_rows(card)
    if not rows:
        return ""
    metrics = card.get("metrics") or {}
    cols = _present(rows, _BRAIN_COLS)
    brain = any(c[0][0] in r for r in rows.values() for c in cols)
    parts = [f"<p style='{_HEADING}'><b>Held-out metrics</b>{' (brain mask)' if brain else ''}</p>"]
    if cols:
        parts.append(_predictor_table(rows, cols))
    if "beats_baselines" in metrics:
        n_base = len(rows) - ("model" in rows)
        which = {1: "the baseline", 2: "both baselines"}.get(n_base, "all baselines")
        colour, mark, word = (
            ("#5cb85c", "&#10003;", "yes") if metrics["beats_baselines"] else ("#e8a33d", "&#10007;", "no")
        )
        parts.append(
            f"<p style='margin-top:4px; margin-bottom:0px'><span style='color:{colour}'>{mark}</span> "
            f"Beats {which}: <b style='color:{colour}'>{word}</b></p>"
        )
    small = ["Judged on brain PSNR and MAE."] if "beats_baselines" in metrics and brain else []
    if metrics.get("seeds"):
        where = f"Held-out phantom seeds {_seeds_text(metrics['seeds'])}"
        if metrics.get("resolution_mm") is not None:
            where += f" at {float(metrics['resolution_mm']):g} mm"
        small.append(where + ", mean over subjects.")
    if cols and cols[0][1] == "PSNR":
        small.append("PSNR in dB.")
    if link == "show":
        small.append(
            f"<a href='{ALL_METRICS_LINK}' style='{_LINK}'>More metrics</a> (lesion, NMSE): click, or hover the panel."
        )
    elif link == "hide":
        small.append(f"<a href='{ALL_METRICS_LINK}' style='{_LINK}'>Fewer metrics</a>")
    parts.append(f"<p style='margin-top:2px; margin-bottom:0px; {_SMALL}'>{' '.join(small)}</p>")
    return "".join(parts)


def metrics_full_html(card: dict) -> str:
    """The held-out figures the summary leaves out, in the same narrow layout.

    Lesion-mask PSNR / SSIM / MAE, NMSE in the brain and the lesions, any other
    figure the card holds, then what each baseline is and the evaluation region.
    Shown as the details panel's tooltip and behind its "More metrics" link.
    Empty when the card has no held-out metrics.

    Examples
    --------
    >>> card = {"metrics": {"held_out": {"psnr_lesion": 10.8954, "nmse_brain": 0.01}}}
    >>> "10.9" in metrics_full_html(card) and "0.0100" in metrics_full_html(card)
    True
    """
    rows = _metric_rows(card)
    if not rows:
        return ""
    metrics = card.get("metrics") or {}
    parts = []
    for title, table_cols in (("Lesion mask (labels &gt; 0)", _LESION_COLS), ("NMSE&darr;", _NMSE_COLS)):
        cols = _present(rows, table_cols)
        if cols:
            parts.append(f"<p style='{_HEADING}'><b>{title}</b></p>{_predictor_table(rows, cols)}")
    shown = {k for c in _BRAIN_COLS + _LESION_COLS + _NMSE_COLS for k in c[0]}
    other = sorted({k for r in rows.values() for k in r} - shown)
    for i in range(0, len(other), 3):  # three columns a table, to stay narrow
        cols = [((k,), html.escape(_metric_name(k)), "", 4) for k in other[i : i + 3]]
        parts.append(f"<p style='{_HEADING}'><b>Other</b></p>{_predictor_table(rows, cols)}")
    notes = [
        f"<i>{html.escape(_predictor_name(b))}</i>: {_fmt(t)}" for b, t in (metrics.get("baseline_notes") or {}).items()
    ]
    if metrics.get("region"):
        notes.append(f"<i>Region</i>: {_fmt(metrics['region'])}")
    if notes:
        parts.append(f"<p style='margin-top:4px; margin-bottom:0px; {_SMALL}'>{'<br>'.join(notes)}</p>")
    return "".join(parts)


def card_details_html(card: dict, *, full_metrics: bool = False, links: bool = True) -> str:
    """The model card as a short HTML summary for the details panel and tooltips.

    Shows inputs -> output, task and architecture, the phantom-only caveat when the
    card says so, the compact held-out table (:func:`metrics_summary_html`) and the
    training data; with ``full_metrics`` also every held-out figure
    (:func:`metrics_full_html`). ``links`` adds the show/hide link for the full
    table (the details panel handles it; tooltips should pass ``False``).

    Examples
    --------
    >>> card = {"name": "t1_to_t2", "inputs": ["t1"], "output": "t2", "task": "cms"}
    >>> "T1 &rarr; T2" in card_details_html(card)
    True
    """
    from napari_neurosynth.bundle import is_phantom_only  # the card's own rule for the caveat

    name = html.escape(str(card.get("name", "model")))
    inputs = " + ".join(modality_label(m) for m in card.get("inputs", []))
    output = modality_label(card.get("output", "?"))
    task = card.get("task", "?")
    arch = (card.get("architecture") or {}).get("name", "?")
    slicing = card.get("slicing") or {}
    about = [
        _fmt(_TASK_NAMES.get(task, task)),
        _fmt(_ARCH_NAMES.get(arch, arch)),
        f"{_fmt(slicing.get('plane', 'axial'))} slices (context {_fmt(slicing.get('context', 0))})",
    ]
    if slicing.get("patch_size"):  # a 3-D model: sliding windows, not slices
        patch = " x ".join(str(int(p)) for p in slicing["patch_size"])
        about[2] = f"3-D windows {_fmt(patch)} (overlap {_fmt(slicing.get('overlap', 0.25))})"
    source = (card.get("architecture") or {}).get("source")
    if source and source != "neurosynth":
        about[1] = f"{about[1]} ({_fmt(source)})"

    n_params = (card.get("weights") or {}).get("n_parameters")
    if n_params:
        about.append(f"{_fmt(int(n_params))} parameters")
    parts = [
        f"<p style='margin:0px'><b>{name}</b>: {html.escape(inputs)} &rarr; {html.escape(output)}</p>",
        f"<p style='margin:0px; {_SMALL}'>{', '.join(about)}</p>",
    ]
    if card.get("description"):
        parts.append(f"<p style='margin-top:4px; margin-bottom:0px'>{_fmt(card['description'])}</p>")
    if is_phantom_only(card):
        parts.append(
            "<p style='margin-top:4px; margin-bottom:0px; color:#e8a33d'><b>Trained on the synthetic phantom "
            "only</b>: a demonstration, not for clinical or research conclusions. Train on your own data with "
            "<code>neurosynth train</code>.</p>"
        )
    parts.append(metrics_summary_html(card, link=("hide" if full_metrics else "show") if links else None))
    if full_metrics:
        parts.append(metrics_full_html(card))
    training = card.get("training") or {}
    if training.get("data"):
        parts.append(
            f"<p style='margin-top:6px; margin-bottom:0px; {_SMALL}'>Training data: {_fmt(training['data'])}</p>"
        )
    return "".join(parts)


class CardBrowser(QTextBrowser):
    """A read-only rich-text panel as tall as its text, up to ``max_fit_height``.

    A model card fits at the dock's width without a scroll bar (the height
    follows the width as the text re-wraps); only a card taller than
    ``max_fit_height`` pixels scrolls, so the panel never takes over the dock.
    """

    def __init__(self, max_fit_height: int = 400, min_height: int = 60, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.max_fit_height = max_fit_height
        self.min_height = min_height
        # Text wraps to the width and the tables are narrower than the widget's minimum width; a
        # horizontal bar would only flicker in while the height settles.
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.setFixedHeight(min_height)

    def _fit(self, *_args) -> None:
        doc_height = math.ceil(self.document().size().height())
        chrome = self.height() - self.viewport().height()  # frame and margins, whatever the style
        want = doc_height + chrome
        height = max(self.min_height, min(self.max_fit_height, want))
        if height != self.height():
            self.setFixedHeight(height)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()


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

        model_row = self._build_model_row()
        target_row = self._build_inputs()
        buttons = self._build_run_controls()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)

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
        self._connect()

    # ------------------------------------------------------------------ building the panel
    def _build_model_row(self) -> QHBoxLayout:
        """The model picker, its refresh button and the card panel (:attr:`details`)."""
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Model bundles from models/, your user folder and $NEUROSYNTH_MODELS_PATH")
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("Look for model bundles again")
        self.refresh_button.setFixedWidth(32)
        self.refresh_button.clicked.connect(self.refresh_models)
        # As tall as the card at the dock's width (no scroll bar for the shipped cards), capped.
        self.details = CardBrowser(max_fit_height=_DETAILS_MAX)
        self.details.setOpenLinks(False)
        self.details.anchorClicked.connect(self._on_details_link)
        self._show_all_metrics = False
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)
        return model_row

    def _build_inputs(self) -> QFormLayout:
        """The per-input pickers' box (filled per model), the resample option and the target picker."""
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
        # In a narrow dock (or with Qt 5's wider font metrics) the picker goes under its label.
        target_row.setRowWrapPolicy(QFormLayout.WrapLongRows)
        target_row.addRow(self.target_label, self.target_combo)
        return target_row

    def _build_run_controls(self) -> QHBoxLayout:
        """Device picker, Run and Cancel, the side-by-side toggle and the status line."""
        self.device_combo = QComboBox()
        self._fill_devices()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Synthesize in the background; the viewer stays usable")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current batch of slices; nothing is added")
        self.side_by_side_check = QCheckBox("Side by side: source | synthesis | acquired")
        self.side_by_side_check.setToolTip("napari grid mode with one layer per cell; the views are linked")
        self.side_by_side_check.toggled.connect(self.side_by_side)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        return buttons

    def _connect(self) -> None:
        """The background job, the Run button and the model picker; then the first model scan."""
        self.job = BackgroundJob(
            "Synthesis",
            busy_widgets=[
                self.run_button,
                self.model_combo,
                self.refresh_button,
                self.inputs_box,
                self.device_combo,
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
            tip = card_details_html(info.card, full_metrics=True, links=False)
            self.model_combo.setItemData(i, tip, Qt.ToolTipRole)
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
            self.details.setToolTip("")
            self.run_button.setEnabled(False)
            return
        self._show_card(card)
        inputs = list(card.get("inputs", []))
        for modality in inputs:
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
            if mcsr
            else "Resample the other inputs (linear) onto the first input's grid instead of refusing "
            "inputs on different grids; only correct if the images are registered"
        )
        output = card.get("output", "")
        self.target_combo.set_prefer(modality_matcher(output))
        self.target_label.setText(f"Acquired {modality_label(output)} (optional)")
        self.run_button.setEnabled(not self.job.running)

    def _show_card(self, card: dict) -> None:
        # Collapsed, the shipped cards fit in full; expanded (asked for) it may take more of the dock.
        cap = _DETAILS_MAX
        if self._show_all_metrics:
            screen = self.screen() or QApplication.primaryScreen()
            avail = screen.availableGeometry().height() if screen is not None else 0
            cap = max(_DETAILS_MAX, min(_DETAILS_MAX_EXPANDED, int(0.55 * avail)))
        self.details.max_fit_height = cap
        self.details.setHtml(card_details_html(card, full_metrics=self._show_all_metrics))
        # The full held-out table (lesion, NMSE, baseline notes) on hover, so nothing is lost.
        self.details.setToolTip(metrics_full_html(card))

    def _on_details_link(self, url) -> None:
        if url.toString() == ALL_METRICS_LINK and self.card is not None:
            self._show_all_metrics = not self._show_all_metrics
            self._show_card(self.card)

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
        self.device_combo.setToolTip(f"Auto picks CUDA, then Apple MPS, then CPU; detected here: {detected}")

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
        self.status.setText(f"Added “{layer.name}” in {result['seconds']:.2f} s on {result['device']}.")
        for message in result.get("warnings", []):  # e.g. a constant input: it ran, but say so
            show_warning(message)
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
        grid = viewer_grid(self.viewer)
        if not checked:
            state, self._grid_state = self._grid_state, None
            if state is None:
                grid.enabled = False
                return
            grid.shape = state["shape"]
            grid.stride = state["stride"]
            for layer in self.viewer.layers:
                if layer.name in state["visible"]:
                    layer.visible = state["visible"][layer.name]
            grid.enabled = state["enabled"]
            return
        panels = self._side_by_side_layers()
        if len(panels) < 2:
            notify_exception(
                NeurosynthError("Side by side needs a synthesized layer and its source; run a synthesis first")
            )
            self.side_by_side_check.blockSignals(True)
            self.side_by_side_check.setChecked(False)
            self.side_by_side_check.blockSignals(False)
            return
        if self._grid_state is None:
            self._grid_state = {
                "enabled": grid.enabled,
                "shape": tuple(grid.shape),
                "stride": grid.stride,
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
        grid.stride = 1
        grid.shape = (1, len(panels))
        grid.enabled = True
        self.viewer.reset_view()

    def _side_by_side_layers(self) -> list:
        synth = self.result_layer if self.result_layer in self.viewer.layers else None
        if synth is None:
            return []
        sources = [self.viewer.layers[n] for n in synth.metadata.get("source_layers", []) if n in self.viewer.layers]
        target = self.target_combo.layer()
        panels = [*sources[:1], synth]
        if target is not None and target not in panels:
            panels.append(target)
        return panels


def _synthesize_job(
    name: str, model, volumes: list, device: str, resample: bool, layer_names: list[str], *, progress, cancel
) -> dict:
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
    # Contrast limits: volume_to_layer_data applies display_window, the rule the acquired layer got too.
    layer_data = volume_to_layer_data(
        vol,
        name=f"{modality_label(model.output)} (synthesized: {model.name})",
        colormap="gray",
    )
    return {
        "model": model,
        "layer_data": layer_data,
        "seconds": seconds,
        "device": vol.metadata["device"],
        "warnings": list(vol.metadata.get("warnings", [])),
    }
