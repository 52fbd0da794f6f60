"""The *Compare & Explain* dock widget: how and where a synthesis differs from the acquired image.

Pick the synthesized layer, the acquired one, a brain mask and (optionally)
lesion labels, then:

- **Metrics**: :func:`napari_neurosynth.metrics.evaluate` (PSNR, SSIM, MAE, NMSE
  globally, in the brain and in the lesions, plus the k-space band profile) and,
  with lesion labels, :func:`napari_neurosynth.explain.lesion_fidelity`, shown in
  tables that can be copied and exported (CSV/JSON).
- **Differences**: the z-map of :func:`~napari_neurosynth.explain.difference_map`
  (optionally smoothed, *Smoothing σ* in mm; off by default) as a diverging image
  centred on zero, and its
  :func:`~napari_neurosynth.explain.disagreement_regions` as a Labels layer with a
  table; clicking a row moves the view to the region.
- **Explain**: :func:`~napari_neurosynth.explain.gradcam` for a region drawn on
  the synthesized image (a rectangle in a Shapes layer, or a Labels layer), added
  as a heat map over the input; and the test-time-augmentation
  :func:`~napari_neurosynth.explain.uncertainty` map.

All computation runs in napari thread workers; this module only gathers choices
and turns results into layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_neurosynth.display import display_window
from napari_neurosynth.errors import NeurosynthError

from ._qt_common import (
    BackgroundJob,
    LayerCombo,
    ResultTable,
    modality_matcher,
    notify_exception,
)
from .layers import affine_from_layer_attributes, layer_transform_kwargs, viewer_camera

__all__ = ["CompareExplainWidget", "METRIC_COLUMNS", "REGION_COLUMNS"]

#: Columns of the metrics table (one row per region).
METRIC_COLUMNS = ("region", "psnr", "ssim", "mae", "nmse", "data_range", "n_voxels")
#: Columns of the disagreement-region table.
REGION_COLUMNS = ("label", "direction", "voxels", "mm3", "mean_z", "peak_z", "centroid_world")
_KSPACE_COLUMNS = ("band", "low", "high", "rel_error", "target_energy")
_FIDELITY_COLUMNS = (
    "id",
    "label",
    "status",
    "retained",
    "acq_contrast",
    "syn_contrast",
    "acq_cnr",
    "syn_cnr",
    "voxels",
    "mm3",
)
_CAM_METHODS = (("hirescam", "HiResCAM"), ("gradcam", "Grad-CAM"), ("occlusion", "Occlusion (model-agnostic)"))
#: Symmetric display range of the z-map.
Z_LIMIT = 5.0


def zmap_colormap():
    """Diverging blue -> clear -> red colormap for z-maps (0 is transparent, so the anatomy shows).

    With the symmetric contrast limits (-Z_LIMIT, Z_LIMIT) its centre is z = 0:
    blue where the synthesis is darker than the acquired image, red where brighter.
    """
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[
            [0.0, 0.25, 1.0, 1.0],
            [0.55, 0.7, 1.0, 0.6],
            [1.0, 1.0, 1.0, 0.0],
            [1.0, 0.6, 0.5, 0.6],
            [1.0, 0.1, 0.0, 1.0],
        ],
        controls=[0.0, 0.3, 0.5, 0.7, 1.0],
        name="z (blue-clear-red)",
    )


def _is_synth(layer) -> bool:
    return bool(layer.metadata.get("synthesized"))


def _name_has(*words: str):
    def prefer(layer) -> int:
        name = layer.name.lower()
        return sum(w in name for w in words)

    return prefer


def _brain_mask_score(layer) -> int:
    """Prefer "brain" masks; never pick a lesion mask as the brain mask."""
    name = layer.name.lower()
    if "lesion" in name or _is_synth(layer):
        return 0
    return 2 * ("brain" in name) + ("mask" in name)


def _same_transform(a, b) -> bool:
    def matrix(layer):
        return affine_from_layer_attributes(layer_transform_kwargs(layer))

    return bool(np.allclose(matrix(a), matrix(b), atol=1e-4))


class CompareExplainWidget(QWidget):
    """Dock widget: metrics, difference z-map and regions, Grad-CAM and uncertainty.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the menu).

    Attributes
    ----------
    synth_combo, target_combo, mask_combo, lesion_combo : LayerCombo
        The synthesized and acquired images, the brain mask (Labels or Image;
        needed for the z-map) and optional lesion labels.
    metrics_table, kspace_table, fidelity_table, region_table : ResultTable
        The tables shown; ``.rows`` holds the full-precision values.
    metrics : dict or None
        The last :func:`~napari_neurosynth.metrics.evaluate` result.
    worker
        The last started worker (wait on ``worker.finished``).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.metrics: dict | None = None
        self.fidelity: dict | None = None
        self.regions: list[dict] = []
        self.zmap_layer = None
        self.regions_layer = None
        self.cam_layer = None
        self.uncertainty_layer = None
        self._model = None  # the Model behind the synthesized layer (for Grad-CAM / uncertainty)
        self._selection: dict = {}
        self._last_synth = None

        choose = self._build_choices()
        self.tabs = self._build_tabs(
            (self._build_metrics_tab(), "Metrics"),
            (self._build_differences_tab(), "Differences"),
            (self._build_explain_tab(), "Explain"),
        )
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addLayout(choose)
        layout.addWidget(self.tabs, 1)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.cancel_button)
        layout.addLayout(bottom)
        layout.addWidget(self.status)
        self._connect()

    # ------------------------------------------------------------------ building the panel
    def _build_choices(self) -> QFormLayout:
        """The layer pickers: synthesized, acquired, brain mask, lesions."""
        self.synth_combo = LayerCombo(self.viewer, Image, prefer=lambda lay: 2 if _is_synth(lay) else 0)
        self.target_combo = LayerCombo(self.viewer, Image, optional=True)
        self.mask_combo = LayerCombo(self.viewer, (Labels, Image), optional=True, prefer=_brain_mask_score)
        self.lesion_combo = LayerCombo(self.viewer, Labels, optional=True, prefer=_name_has("lesion"))
        self.synth_combo.setToolTip("The synthesized image (a layer made by the Synthesize widget, or any image)")
        self.target_combo.setToolTip("The acquired image of the same contrast, on the same grid")
        self.mask_combo.setToolTip("Brain mask: metrics inside it, and the z-map's noise estimate")
        self.lesion_combo.setToolTip("Lesion labels: metrics and contrast fidelity inside each lesion")
        choose = QFormLayout()
        choose.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        choose.addRow("Synthesized", self.synth_combo)
        choose.addRow("Acquired", self.target_combo)
        choose.addRow("Brain mask", self.mask_combo)
        choose.addRow("Lesions", self.lesion_combo)
        self.review_button = QPushButton("Review: axial · coronal · sagittal")
        self.review_button.setToolTip(
            "Linked tri-planar views of the synthesized and acquired images (and the z-map and regions) "
            "with a crosshair, window/level presets and drag, and flicker (F)"
        )
        self.review_button.clicked.connect(lambda: self.open_review())
        choose.addRow(self.review_button)
        return choose

    def _build_metrics_tab(self) -> QWidget:
        """Metrics: the button and the metrics, k-space and lesion-fidelity tables."""
        self.metrics_button = QPushButton("Compute metrics")
        self.metrics_table = ResultTable("metrics")
        self.kspace_table = ResultTable("k-space error profile")
        self.fidelity_table = ResultTable("lesion fidelity")
        self.kspace_table.max_visible_rows = self.fidelity_table.max_visible_rows = 5
        self.metrics_table.export_button.clicked.disconnect()
        self.metrics_table.export_button.clicked.connect(self._export_metrics_dialog)
        self.metrics_table.export_button.setToolTip("Save all metrics (CSV: the table; JSON: everything)")
        metrics_tab = QWidget()
        ml = QVBoxLayout(metrics_tab)
        ml.addWidget(self.metrics_button)
        ml.addWidget(self.metrics_table)
        ml.addWidget(QLabel("Error by k-space band (low → high spatial frequency)"))
        ml.addWidget(self.kspace_table)
        ml.addWidget(QLabel("Lesion contrast, acquired vs synthesized"))
        ml.addWidget(self.fidelity_table)
        ml.addStretch(1)
        return metrics_tab

    def _build_differences_tab(self) -> QWidget:
        """Differences: threshold, smoothing and minimum size, the button and the region table."""
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(1.0, 20.0)
        self.threshold_spin.setSingleStep(0.5)
        # 3.5: Iglewicz and Hoaglin's outlier cut for the modified z-score the map holds.
        self.threshold_spin.setValue(3.5)
        self.threshold_spin.setToolTip(
            "Threshold on |z| (the z-map is a modified z-score; 3.5 is the usual outlier cut)"
        )
        self.min_size_spin = QDoubleSpinBox()
        self.min_size_spin.setRange(0.0, 100000.0)
        self.min_size_spin.setSingleStep(10.0)
        self.min_size_spin.setDecimals(0)
        # ~ a 3 mm sphere: smaller specks at 1 mm are residual noise, not findings.
        self.min_size_spin.setValue(15.0)
        self.min_size_spin.setSuffix(" mm³")
        self.min_size_spin.setToolTip("Regions smaller than this (and than 4 voxels) are not reported")
        self.smooth_spin = QDoubleSpinBox()
        self.smooth_spin.setRange(0.0, 5.0)
        self.smooth_spin.setSingleStep(0.5)
        self.smooth_spin.setDecimals(1)
        # 0: voxel-wise. Smoothing removes speckle but, re-standardised, lets the generator's
        # coherent error cross 3.5 more often (docs/compare-explain.md), so it is opt-in.
        self.smooth_spin.setValue(0.0)
        self.smooth_spin.setSuffix(" mm")
        self.smooth_spin.setSpecialValueText("off")
        self.smooth_spin.setToolTip(
            "Gaussian sigma applied to the z-map inside the brain before it is standardised again; "
            "removes voxel speckle. With smoothing, raise the threshold (about 5-6 at 1 mm) to keep false regions down"
        )
        self.diff_button = QPushButton("Add difference map and regions")
        self.region_table = ResultTable("disagreement regions")
        self.region_table.rowActivated.connect(self.jump_to_region)
        self.region_table.table.setToolTip("Click a row to go to the region")
        diff_tab = QWidget()
        dl = QVBoxLayout(diff_tab)
        row = QFormLayout()
        row.addRow("Threshold |z| ≥", self.threshold_spin)
        row.addRow("Smoothing σ", self.smooth_spin)
        row.addRow("Min. region size", self.min_size_spin)
        dl.addLayout(row)
        dl.addWidget(self.diff_button)
        dl.addWidget(self.region_table)
        dl.addStretch(1)
        return diff_tab

    def _build_explain_tab(self) -> QWidget:
        """Explain: ROI, CAM method and layer, and the Grad-CAM and uncertainty buttons."""
        self.roi_combo = LayerCombo(self.viewer, (Shapes, Labels), optional=True, prefer=_name_has("roi"))
        self.roi_combo.setToolTip("A Shapes layer with a rectangle, or a Labels layer, on the synthesized grid")
        self.add_roi_button = QPushButton("Add ROI layer (draw a rectangle)")
        self.add_roi_button.setToolTip("A Shapes layer on the synthesized image's grid, ready to draw a rectangle")
        self.add_roi_button.clicked.connect(self.add_roi_layer)
        self.model_label = QLabel("–")
        self.model_label.setWordWrap(True)
        self.method_combo = QComboBox()
        for key, label in _CAM_METHODS:
            self.method_combo.addItem(label, key)
        self.method_combo.setToolTip(
            "HiResCAM: gradient × activation at each place (where the network looked); "
            "Grad-CAM: channel weights pooled over the slice; "
            "Occlusion: how much hiding each patch of the input changes the ROI (no gradients needed)"
        )
        self.cam_layer_combo = QComboBox()
        self.cam_layer_combo.setToolTip("Network layer to explain; 'input' attributes to the input voxels")
        self.cam_button = QPushButton("Explain ROI (Grad-CAM)")
        self.uncertainty_button = QPushButton("Uncertainty map (test-time augmentation)")
        explain_tab = QWidget()
        el = QFormLayout(explain_tab)
        el.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        el.addRow("Model", self.model_label)
        el.addRow("ROI", self.roi_combo)
        el.addRow(self.add_roi_button)
        el.addRow("Method", self.method_combo)
        el.addRow("Layer", self.cam_layer_combo)
        el.addRow(self.cam_button)
        el.addRow(self.uncertainty_button)
        return explain_tab

    @staticmethod
    def _build_tabs(*pages: tuple[QWidget, str]) -> QTabWidget:
        tabs = QTabWidget()
        for page, title in pages:
            # Scrollable pages: the tables must not force the dock (and the window) taller than the screen.
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.NoFrame)
            scroll.setWidget(page)
            tabs.addTab(scroll, title)
        tabs.setMinimumHeight(260)
        return tabs

    def _connect(self) -> None:
        """The background job, the buttons and the synthesized-layer picker."""
        busy = [
            self.metrics_button,
            self.diff_button,
            self.cam_button,
            self.uncertainty_button,
            self.synth_combo,
            self.target_combo,
            self.mask_combo,
            self.lesion_combo,
        ]
        self.job = BackgroundJob("Compare", busy_widgets=busy, cancel_button=self.cancel_button, parent=self)
        self.job.done.connect(self._on_job_done)
        self.metrics_button.clicked.connect(lambda: self.compute_metrics())
        self.diff_button.clicked.connect(lambda: self.add_difference_map())
        self.cam_button.clicked.connect(lambda: self.explain_roi())
        self.uncertainty_button.clicked.connect(lambda: self.add_uncertainty_map())
        self.synth_combo.currentIndexChanged.connect(self._on_synth_changed)
        self._on_synth_changed()

    # ------------------------------------------------------------------ choices
    def _on_synth_changed(self, *_args) -> None:
        synth = self.synth_combo.layer()
        key = None if synth is None else synth.name
        if key is not None and key == self._last_synth:
            return  # same layer: keep the user's other choices
        self._last_synth = key
        modality = (synth.metadata.get("modality") or synth.metadata.get("output")) if synth is not None else None
        matcher = modality_matcher(modality) if modality else None

        def prefer(layer) -> int:
            if matcher is None or layer is self.synth_combo.layer():
                return 0
            return 2 if matcher(layer) else 0

        self.target_combo.set_prefer(prefer)
        self._update_model()

    def _update_model(self) -> None:
        """Load the model named in the synthesized layer's metadata (for Grad-CAM's layer list)."""
        from napari_neurosynth.bundle import load_model

        synth = self.synth_combo.layer()
        card = synth.metadata.get("card") if synth is not None else None
        name = card.get("name") if isinstance(card, dict) else None
        self.cam_layer_combo.clear()
        if not name:
            self._model = None
            self.model_label.setText("– (the synthesized layer does not name its model)")
            return
        if self._model is None or self._model.name != name:
            try:
                self._model = load_model(name)
            except NeurosynthError as exc:
                self._model = None
                self.model_label.setText(f"{name}: {exc}")
                return
        self.model_label.setText(
            f"{name}: {' + '.join(m.upper() for m in self._model.inputs)} → {self._model.output.upper()}"
        )
        self.model_label.setToolTip(self._model.describe())
        from torch import nn

        net = self._model.network
        self._offer_methods(bool(getattr(net, "is_onnx", False)))
        default = getattr(net, "default_cam_layer", "") or ""
        names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        items = ([default] if default else []) + [n for n in names if n != default] + ["input"]
        if not default:  # e.g. a MONAI network: gradcam picks the last conv at the lowest resolution
            self.cam_layer_combo.addItem("auto (lowest-resolution conv)", None)
        for n in items:
            self.cam_layer_combo.addItem(f"{n} (default)" if n == default else n, n)
        self.cam_layer_combo.setCurrentIndex(0)

    def _offer_methods(self, onnx: bool) -> None:
        """ONNX models give no gradients: only the occlusion map is offered, and the tab says why."""
        reason = "Grad-CAM needs gradients, which ONNX models do not give"
        for i in range(self.method_combo.count()):
            item = self.method_combo.model().item(i)
            usable = not onnx or self.method_combo.itemData(i) == "occlusion"
            item.setEnabled(usable)
            item.setToolTip("" if usable else f"Unavailable: {reason}")
        if onnx:
            self.method_combo.setCurrentIndex(self.method_combo.findData("occlusion"))
            self.model_label.setText(
                self.model_label.text() + f". Grad-CAM unavailable: {reason}; the occlusion map is offered instead"
            )
        elif self.method_combo.currentData() == "occlusion":
            self.method_combo.setCurrentIndex(0)
        self.cam_button.setText(f"Explain ROI ({'occlusion' if onnx else 'Grad-CAM'})")
        self.cam_layer_combo.setEnabled(not onnx)

    def _volumes(self, need_target: bool = True, need_mask: bool = False) -> dict:
        from napari_neurosynth.viewer.layers import layer_to_volume

        synth = self.synth_combo.layer()
        target = self.target_combo.layer()
        mask = self.mask_combo.layer()
        lesion = self.lesion_combo.layer()
        if synth is None:
            raise NeurosynthError("Choose the synthesized image layer (run Synthesize first, or open one)")
        if need_target and target is None:
            raise NeurosynthError("Choose the acquired image layer to compare the synthesis with")
        if need_target and target is synth:
            raise NeurosynthError("The synthesized and acquired layers are the same layer; choose the acquired image")
        if need_mask and mask is None:
            raise NeurosynthError("Choose a brain mask: the z-map is normalised by the residual inside the brain")
        self._selection = {
            "synthesized": synth.name,
            "acquired": getattr(target, "name", None),
            "brain_mask": getattr(mask, "name", None),
            "lesions": getattr(lesion, "name", None),
        }
        return {
            "synth": layer_to_volume(synth),
            "target": layer_to_volume(target) if target is not None else None,
            "mask": layer_to_volume(mask) if mask is not None else None,
            "lesion": layer_to_volume(lesion) if lesion is not None else None,
            "synth_layer": synth,
        }

    def _start(self, func, *args, on_result, desc: str):
        self.worker = self.job.start(func, *args, on_result=on_result, desc=desc)
        self.status.setText(desc + " …")
        return self.worker

    def _on_job_done(self) -> None:
        if self.job.last_error is not None:
            self.status.setText(f"Not done: {self.job.last_error}")

    def cancel(self) -> None:
        """Cancel the running job (its result is discarded)."""
        self.job.cancel()

    # ------------------------------------------------------------------ metrics
    def compute_metrics(self):
        """Compute the metrics (and lesion fidelity) in a worker; return it, or ``None`` on a wrong choice."""
        try:
            v = self._volumes(need_target=True)
        except NeurosynthError as exc:
            notify_exception(exc)
            return None
        return self._start(
            _metrics_job,
            v["synth"],
            v["target"],
            v["mask"],
            v["lesion"],
            on_result=self._show_metrics,
            desc="Computing metrics",
        )

    def _show_metrics(self, result: dict) -> None:
        self.metrics = result["metrics"]
        self.fidelity = result["fidelity"]
        rows = []
        for region, vals in self.metrics["regions"].items():
            rows.append({"region": region, **{k: vals.get(k) for k in METRIC_COLUMNS[1:]}})
        self.metrics_table.set_rows(rows, METRIC_COLUMNS, shown=METRIC_COLUMNS[:5])
        self.kspace_table.set_rows(
            self.metrics.get("kspace", []), _KSPACE_COLUMNS, shown=("band", "high", "rel_error", "target_energy")
        )
        fid_rows = []
        if self.fidelity:
            for les in self.fidelity["lesions"]:
                fid_rows.append(
                    {
                        "id": les["id"],
                        "label": les["label"],
                        "status": les["status"],
                        "retained": les["retained"],
                        "acq_contrast": les["acquired"]["contrast"],
                        "syn_contrast": les["synthesized"]["contrast"],
                        "acq_cnr": les["acquired"]["cnr"],
                        "syn_cnr": les["synthesized"]["cnr"],
                        "voxels": les["voxels"],
                        "mm3": les["mm3"],
                    }
                )
        self.fidelity_table.set_rows(
            fid_rows, _FIDELITY_COLUMNS, shown=("id", "label", "status", "retained", "acq_cnr", "syn_cnr")
        )
        msg = f"Metrics of {self._selection['synthesized']} vs {self._selection['acquired']}"
        if self.fidelity:
            msg += f"; {self.fidelity['n_erased']} erased, {self.fidelity['n_invented']} invented lesion(s)"
        self.status.setText(msg + ".")

    def export_metrics(self, path: str | Path) -> Path:
        """Save the metrics: ``.json`` gets everything, any other suffix the metrics table as CSV.

        The JSON holds the chosen layer names, the full
        :func:`~napari_neurosynth.metrics.evaluate` result (per region, k-space
        bands) and the lesion-fidelity result; NaN and infinite values (e.g. the
        PSNR of identical images) are written as ``null``.

        Raises
        ------
        NeurosynthError
            No metrics computed yet, or the file cannot be written.
        """
        path = Path(path)
        if self.metrics is None:
            raise NeurosynthError("No metrics yet; press 'Compute metrics' first")
        if path.suffix.lower() != ".json":
            return self.metrics_table.export(path)
        from napari_neurosynth.export import write_json  # NaN/Inf -> null, as every export

        payload = {"layers": self._selection, "metrics": self.metrics, "lesion_fidelity": self.fidelity}
        return write_json(payload, path)

    def _export_metrics_dialog(self) -> None:
        from napari.utils.notifications import show_info
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv", "CSV (*.csv);;JSON (*.json)")
        if path:
            try:
                self.export_metrics(path)
                show_info(f"Saved {path}")
            except NeurosynthError as exc:
                notify_exception(exc)

    # ------------------------------------------------------------------ differences
    def add_difference_map(self):
        """Add the z-map and the disagreement regions (worker); return it, or ``None`` on a wrong choice."""
        try:
            v = self._volumes(need_target=True, need_mask=True)
        except NeurosynthError as exc:
            notify_exception(exc)
            return None
        layer = v["synth_layer"]
        return self._start(
            _difference_job,
            v["synth"],
            v["target"],
            v["mask"],
            v["lesion"],
            float(self.threshold_spin.value()),
            float(self.min_size_spin.value()),
            float(self.smooth_spin.value()),
            on_result=lambda res: self._show_differences(res, layer),
            desc="Computing the difference map",
        )

    def _show_differences(self, result: dict, synth_layer) -> None:
        sel = self._selection
        name = f"z-map: {sel['synthesized']} vs {sel['acquired']}"
        meta = {
            "kind": "z-map",
            "layers": dict(sel),
            "threshold": result["threshold"],
            "smooth_mm": result["smooth_mm"],
        }
        if self.zmap_layer is not None and self.zmap_layer in self.viewer.layers:
            self.viewer.layers.remove(self.zmap_layer)
        if self.regions_layer is not None and self.regions_layer in self.viewer.layers:
            self.viewer.layers.remove(self.regions_layer)
        self.zmap_layer = self.viewer.add_image(
            result["z"],
            name=name,
            colormap=zmap_colormap(),
            contrast_limits=(-Z_LIMIT, Z_LIMIT),
            blending="translucent",
            opacity=0.9,
            metadata=meta,
            **layer_transform_kwargs(synth_layer),
        )
        self.regions_layer = self.viewer.add_labels(
            result["labels"],
            name="disagreement regions",
            opacity=0.6,
            metadata={**meta, "regions": result["table"]},
            **layer_transform_kwargs(synth_layer),
        )
        self.regions = result["table"]
        self.region_table.set_rows(
            [{k: r.get(k) for k in REGION_COLUMNS} | {"centroid_voxel": r["centroid_voxel"]} for r in self.regions],
            REGION_COLUMNS,
            shown=("label", "direction", "voxels", "peak_z"),
        )
        n_b = sum(r["sign"] > 0 for r in self.regions)
        self.status.setText(
            f"{len(self.regions)} region(s) with |z| ≥ {result['threshold']:g}"
            + (f" (z-map smoothed, σ {result['smooth_mm']:g} mm)" if result["smooth_mm"] else "")
            + f": {n_b} brighter, "
            f"{len(self.regions) - n_b} darker in the synthesis. Click a row to go there."
        )

    def jump_to_region(self, row: dict | int) -> None:
        """Move the view to a region: the slice through its centroid, centred, label selected."""
        if isinstance(row, int):
            row = self.region_table.rows[row]
        layer = self.regions_layer
        if layer is None or layer not in self.viewer.layers:
            raise NeurosynthError("The disagreement-regions layer is gone; add the difference map again")
        world = np.asarray(layer.data_to_world(np.asarray(row["centroid_voxel"], float)), float)
        self.viewer.dims.point = tuple(world)
        displayed = list(self.viewer.dims.displayed)
        viewer_camera(self.viewer).center = tuple(world[displayed])
        layer.selected_label = int(row["label"])
        layer.visible = True

    # ------------------------------------------------------------------ review
    def open_review(self):
        """Open the *Review* window (``viewer/review.py``) on the chosen layers; return it (``None`` on a wrong choice).

        The synthesized and acquired images are shown in linked axial, coronal
        and sagittal views; the z-map, the disagreement regions and the lesion
        labels, when there are any, follow on top.
        """
        from .review import ReviewWindow

        synth, target = self.synth_combo.layer(), self.target_combo.layer()
        if synth is None:
            notify_exception(NeurosynthError("Choose the synthesized image layer to review"))
            return None
        if synth.ndim != 3 or (target is not None and target.ndim != 3):
            notify_exception(NeurosynthError("The review's linked views need 3-D images"))
            return None
        overlays = [
            lay
            for lay in (self.zmap_layer, self.regions_layer, self.lesion_combo.layer())
            if lay is not None and lay in self.viewer.layers
        ]
        mask_layer = self.mask_combo.layer()
        mask = None
        if mask_layer is not None and np.shape(mask_layer.data) == np.shape(synth.data):
            mask = np.asarray(mask_layer.data) > 0
        old = getattr(self, "review_window", None)
        if old is not None:
            old.close()
        self.review_window = ReviewWindow(
            self.viewer, synth, target if target is not synth else None, overlays, mask, parent=self
        )
        self.review_window.show()
        return self.review_window

    # ------------------------------------------------------------------ explain
    def add_roi_layer(self) -> Shapes:
        """Add a Shapes layer on the synthesized image's grid, in rectangle mode, and choose it as the ROI."""
        synth = self.synth_combo.layer()
        if synth is None:
            notify_exception(NeurosynthError("Choose the synthesized image layer first; the ROI is drawn on it"))
            return None
        layer = self.viewer.add_shapes(
            ndim=synth.ndim,
            name=f"ROI on {synth.name}",
            edge_color="yellow",
            face_color=[1, 1, 0, 0.15],
            edge_width=1,
            **layer_transform_kwargs(synth),
        )
        layer.mode = "add_rectangle"
        self.roi_combo.set_layer(layer)
        self.status.setText("Draw a rectangle on the synthesized image (current slice), then press Explain ROI.")
        return layer

    def roi_mask(self) -> np.ndarray:
        """The chosen ROI as a boolean mask on the synthesized layer's grid.

        A Shapes layer must share the synthesized layer's transform (``Add ROI
        layer`` makes one); its selected shapes (or all) are rasterised. A Labels
        layer is resampled (nearest) when on another grid, and restricted to the
        current slice when that slice holds any of it.
        """
        from napari_neurosynth.io import resample_to, same_grid
        from napari_neurosynth.viewer.layers import layer_to_volume

        synth = self.synth_combo.layer()
        roi = self.roi_combo.layer()
        if synth is None:
            raise NeurosynthError("Choose the synthesized image layer first")
        if roi is None:
            raise NeurosynthError("Choose or add an ROI layer and mark a region on the synthesized image")
        shape = tuple(synth.data.shape)
        if isinstance(roi, Shapes):
            if len(roi.data) == 0:
                raise NeurosynthError(f"ROI layer {roi.name!r} has no shape; draw a rectangle on the synthesized image")
            if roi.ndim != synth.ndim or not _same_transform(roi, synth):
                raise NeurosynthError(
                    f"ROI layer {roi.name!r} is not on the synthesized image's grid; create it with 'Add ROI layer'"
                )
            chosen = sorted(roi.selected_data) or list(range(len(roi.data)))
            return _shapes_to_mask(roi, chosen, shape)
        vol = layer_to_volume(roi)
        ref = layer_to_volume(synth)
        if not same_grid(vol, ref):
            vol = resample_to(vol, ref, "nearest")
        mask = np.asarray(vol.data) != 0
        if self.viewer.dims.ndisplay == 2:
            axis = self.viewer.dims.not_displayed[0]
            index = round(float(synth.world_to_data(self.viewer.dims.point)[axis]))
            if 0 <= index < shape[axis]:
                keep = np.zeros_like(mask)
                sl = [slice(None)] * mask.ndim
                sl[axis] = index
                keep[tuple(sl)] = mask[tuple(sl)]
                if keep.any():
                    mask = keep
        return mask

    def _model_inputs(self) -> tuple[Any, list, Any]:
        """The model, its input volumes (from the synthesized layer's metadata) and the first input layer."""
        from napari_neurosynth.viewer.layers import layer_to_volume

        synth = self.synth_combo.layer()
        if synth is None:
            raise NeurosynthError("Choose the synthesized image layer first")
        if self._model is None:
            raise NeurosynthError(
                f"{synth.name!r} does not name the model that made it; explain a layer made by the Synthesize widget"
            )
        mapping = synth.metadata.get("inputs") or {}
        sources = synth.metadata.get("source_layers") or []
        names = [mapping.get(m) for m in self._model.inputs] if mapping else list(sources)
        if len(names) != len(self._model.inputs) or any(n is None for n in names):
            raise NeurosynthError(f"{synth.name!r} does not record its input layers; run Synthesize again")
        missing = [n for n in names if n not in self.viewer.layers]
        if missing:
            raise NeurosynthError(f"Input layer {missing[0]!r} of {synth.name!r} is gone; open it again")
        layers = [self.viewer.layers[n] for n in names]
        return self._model, [layer_to_volume(lay) for lay in layers], layers[0]

    def explain_roi(self):
        """Grad-CAM (or HiResCAM) of the ROI as a heat map over the input (worker); ``None`` on a wrong choice."""
        try:
            model, inputs, first = self._model_inputs()
            roi = self.roi_mask()
            if not roi.any():
                raise NeurosynthError("The ROI is empty on the synthesized grid; draw inside the image")
        except NeurosynthError as exc:
            notify_exception(exc)
            return None
        method = self.method_combo.currentData()
        layer_name = self.cam_layer_combo.currentData()
        synth_name = self.synth_combo.currentText()
        return self._start(
            _gradcam_job,
            model,
            inputs,
            roi,
            layer_name,
            method,
            on_result=lambda cam: self._show_cam(cam, first, synth_name, method, layer_name),
            desc=f"{dict(_CAM_METHODS)[method]} of the ROI",
        )

    def _show_cam(self, cam: np.ndarray, first, synth_name: str, method: str, layer_name: str) -> None:
        label = dict(_CAM_METHODS)[method]
        if method != "occlusion" and getattr(self._model.network, "spatial_dims", 2) == 3:
            label += " 3-D"  # explains the sliding window around the ROI, not one slice
        self.cam_layer = self.viewer.add_image(
            cam,
            name=f"{label} of {synth_name} ROI" + ("" if method == "occlusion" else f" ({layer_name or 'auto'})"),
            colormap="inferno",
            blending="additive",
            opacity=0.5,
            contrast_limits=(0.0, 1.0),
            metadata={
                "kind": "occlusion" if method == "occlusion" else "gradcam",
                "method": method,
                "layer": layer_name,
                "model": self._model.name,
                "synthesized": False,
                "explains": synth_name,
            },
            **layer_transform_kwargs(first),
        )
        if method == "occlusion":
            self.status.setText(f"Added {self.cam_layer.name}: bright where hiding the input changes the ROI.")
        else:
            self.status.setText(f"Added {self.cam_layer.name}: bright where the input drove the ROI's values.")

    def add_uncertainty_map(self):
        """Per-voxel spread under test-time augmentation (and MC dropout) as a layer (worker)."""
        try:
            model, inputs, first = self._model_inputs()
        except NeurosynthError as exc:
            notify_exception(exc)
            return None
        synth_name = self.synth_combo.currentText()
        return self._start(
            _uncertainty_job,
            model,
            inputs,
            on_result=lambda std: self._show_uncertainty(std, first, synth_name),
            desc="Computing the uncertainty map",
        )

    def _show_uncertainty(self, std: np.ndarray, first, synth_name: str) -> None:
        self.uncertainty_layer = self.viewer.add_image(
            std,
            name=f"uncertainty of {synth_name}",
            colormap="magma",
            blending="additive",
            opacity=0.7,
            contrast_limits=display_window(std, percentiles=(0.0, 99.5)),
            metadata={"kind": "uncertainty", "model": self._model.name, "explains": synth_name},
            **layer_transform_kwargs(first),
        )
        self.status.setText(f"Added {self.uncertainty_layer.name} (standard deviation, normalised units).")


def _shapes_to_mask(layer: Shapes, indices, shape: tuple[int, ...]) -> np.ndarray:
    """Rasterise planar shapes (drawn on one slice) into a boolean volume of ``shape``.

    napari's ``Shapes.to_masks`` embeds a 2-D shape correctly only when the slice
    axis is the first one (napari 0.9 indexes its per-shape slice key by the full
    axis number), so each shape is rasterised with its slice axis moved first and
    the mask moved back.
    """
    out = np.zeros(shape, bool)
    for i in indices:
        verts = np.asarray(layer.data[i], float)
        flat = np.flatnonzero(np.ptp(verts, axis=0) < 1e-6)
        if flat.size == 0:
            raise NeurosynthError("An ROI shape spans several slices; draw it in a 2-D view, on one slice")
        axis = int(flat[0])
        order = [axis] + [a for a in range(len(shape)) if a != axis]
        tmp = Shapes([verts[:, order]], shape_type=[layer.shape_type[i]], ndim=len(shape))
        mask = tmp.to_masks(mask_shape=tuple(shape[a] for a in order))[0]
        out |= np.transpose(mask, np.argsort(order))
    return out


# ---------------------------------------------------------------------- worker bodies
def _metrics_job(synth, target, mask, lesion, *, progress, cancel) -> dict:
    from napari_neurosynth.explain import lesion_fidelity
    from napari_neurosynth.metrics import evaluate

    progress(0.0)
    metrics = evaluate(synth, target, mask=mask, lesion=lesion, normalize=True)
    progress(0.7)
    fidelity = None
    if lesion is not None and mask is not None and not cancel.is_set():
        fidelity = lesion_fidelity(synth, target, lesion=lesion, mask=mask, normalize=True)
    progress(1.0)
    return {"metrics": metrics, "fidelity": fidelity}


def _difference_job(
    synth, target, mask, lesion, threshold: float, min_mm3: float, smooth_mm: float = 0.0, *, progress, cancel
) -> dict:
    from napari_neurosynth.explain import difference_map, disagreement_regions

    progress(0.0)
    z = difference_map(synth, target, mask, lesion=lesion, normalize=True, smooth_mm=smooth_mm)
    progress(0.6)
    labels, table = disagreement_regions(synth.with_data(z), threshold=threshold, min_mm3=min_mm3 or None)
    progress(1.0)
    return {"z": z, "labels": labels, "table": table, "threshold": threshold, "smooth_mm": smooth_mm}


def _gradcam_job(model, inputs, roi, layer, method, *, progress, cancel) -> np.ndarray:
    from napari_neurosynth.explain import gradcam, occlusion_map

    progress(0.0)
    if method == "occlusion":
        cam = occlusion_map(model, inputs, roi)
    else:
        cam = gradcam(model, inputs, roi, layer=layer, method=method)
    progress(1.0)
    return cam


def _uncertainty_job(model, inputs, *, progress, cancel) -> np.ndarray:
    from napari_neurosynth.explain import uncertainty

    progress(0.0)
    std = uncertainty(model, inputs, device="auto")
    progress(1.0)
    return std
