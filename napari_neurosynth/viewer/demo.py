"""The product tour behind ``make demo`` / ``neurosynth demo`` (a Qt script: it lives in ``viewer/``).

It drives the three dock widgets the way a radiologist would: open a subject's
T1 and T2 (the phantom), synthesize a T2 from the T1 with the shipped
``t1_to_t2`` model, compare it with the acquired T2 (metrics, difference
z-map, disagreement regions), explain the region around a lesion with
HiResCAM, and open a one-case blinded reader study. With ``offscreen=True``
(no display: under Xvfb) it saves screenshots, prints the metrics table and
exits; otherwise it leaves the viewer open.

The demo uses the widgets' public methods rather than computing results
itself, so what it shows is exactly what the widgets do.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NeurosynthError

#: Screenshots written by :func:`run_demo`, in the order a user meets them.
SCREENSHOTS = {
    "01_opened": "Phantom T1 and T2 opened, axial view, lesions outlined",
    "02_synthesized": "Side by side: T1 | synthesized T2 | acquired T2",
    "03_difference": "Difference z-map and disagreement regions over the acquired T2",
    "04_gradcam": "HiResCAM of the lesion region over the T1",
    "05_reader_study": "Reader Study: blinded MOS capture",
    "06_review": "Review: linked axial, coronal and sagittal views with the crosshair on the plaque, brain window",
    "07_reading_window": "Reader Study's clean reading window: hanging protocol (test image beside the T1), "
    "typed questions, a lesion mark",
}


def _wait(job: Any, timeout: float, what: str) -> None:
    """Process Qt events until a widget's background job ends (or time out)."""
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while job.running:
        QApplication.processEvents()
        if time.monotonic() - start > timeout:
            job.cancel()
            raise NeurosynthError(f"demo: {what} did not finish within {timeout:.0f} s")
        time.sleep(0.02)
    QApplication.processEvents()
    if job.last_error is not None:
        raise NeurosynthError(f"demo: {what} failed: {job.last_error}")


def _settle(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _grab(viewer: Any, window: Any, path: Path, zoom: float = 1.0) -> Path:
    """Screenshot of the whole window, dock widgets included, the images filling the canvas.

    ``window`` is the viewer's Qt main window (``dock_widget.window()``, public Qt API).
    """
    from napari.utils.notifications import notification_manager

    from .layers import viewer_camera

    _settle()
    viewer.reset_view()
    viewer_camera(viewer).zoom *= zoom
    # Toasts (e.g. backend notices) would cover the images; they are dialogs on the window.
    notification_manager.records.clear()
    _close_toasts(window)
    _settle()
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path


def _close_toasts(window: Any) -> None:
    """Close napari's notification toasts: the visible, non-modal dialogs on the main window."""
    from qtpy.QtWidgets import QDialog

    for dialog in window.findChildren(QDialog):
        if dialog.isVisible() and not dialog.isModal():
            dialog.close()


def _largest_lesion(lesion: np.ndarray, label: int) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """Mask and centroid voxel of the largest connected lesion with ``label``."""
    from scipy import ndimage

    comps, n = ndimage.label(lesion == label)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
    biggest = comps == (int(np.argmax(sizes)) + 1)
    centre = tuple(round(float(c)) for c in ndimage.center_of_mass(biggest))
    return biggest, centre


#: The demo study's typed questions (docs/reader-study.md): MOS, Turing choice, its confidence, lesion marks.
DEMO_QUESTIONS = [
    {"id": "mos", "type": "likert", "prompt": "Overall image quality",
     "anchors": {1: "bad", 3: "fair", 5: "excellent"}},
    {"id": "turing", "type": "choice", "prompt": "Real or synthetic?", "options": ["real", "synthetic"],
     "keys": {"r": "real", "s": "synthetic"}},
    {"id": "turing_confidence", "type": "likert", "prompt": "Confidence", "anchors": {1: "guess", 5: "certain"}},
    {"id": "diagnostic", "type": "yes_no", "prompt": "Diagnostic quality?"},
    {"id": "lesions", "type": "localisation", "prompt": "Click each lesion; 1-5 confidence", "margin_mm": 3},
    {"id": "comment", "type": "text", "prompt": "Comment", "required": False},
]  # fmt: skip


def _write_demo_study(folder: Path, acquired: Any, synthesized: Any, reference: Any, lesions: Any) -> Path:
    """A one-case blinded study (acquired vs synthesized T2) with typed questions and a hanging protocol.

    The protocol hangs the test image in the ``brain`` window beside the source T1
    (``soft``), axial, windowing fixed; the lesion mask is the localisation truth.
    """
    import yaml

    from ..atomic import atomic_write_text
    from ..io import write_volume
    from ..study import create_study

    for condition, volume in (("acquired", acquired), ("t1_to_t2", synthesized), ("t1", reference)):
        (folder / condition).mkdir(parents=True, exist_ok=True)
        write_volume(volume, folder / condition / "sub-demo.nii.gz")
    # written after create_study, which would take the folder for a condition; so a previous
    # tour's mask goes first, or a second `make demo` would find "truth" among the conditions
    shutil.rmtree(folder / "truth", ignore_errors=True)
    study = create_study(folder, study_id="demo", seed=0, blinded=True, turing=True, references=["t1"])
    (folder / "truth").mkdir(parents=True, exist_ok=True)
    write_volume(lesions.with_data((lesions.data > 0).astype(np.uint8)), folder / "truth" / "sub-demo.nii.gz")
    path = folder / "study.yaml"
    data = study.to_dict(relative_to=folder.resolve())
    data["questions"] = DEMO_QUESTIONS
    data["hanging"] = {
        "images": [{"image": "test", "preset": "brain", "contrast": "t2"}, {"image": "t1", "preset": "soft"}],
        "planes": ["axial"],
        "linked": True,
        "windowing": "fixed",
    }
    data["answers"] = {"allow_back": True, "allow_edit": True}
    for case in data["cases"]:
        case["lesion_mask"] = "truth/sub-demo.nii.gz"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def run_demo(
    out_dir: str | Path | None = None,
    offscreen: bool = False,
    resolution: float = 1.0,
    seed: int = 0,
    model: str = "t1_to_t2",
    device: str = "auto",
    timeout: float = 900.0,
) -> dict:
    """Run the product tour in a napari viewer.

    Parameters
    ----------
    out_dir : str or Path, optional
        Where screenshots, the metrics (JSON/CSV) and the demo study go
        (default ``./neurosynth-demo``).
    offscreen : bool
        Save screenshots and close the viewer at the end instead of leaving it
        open (what ``make demo`` does without a display, under Xvfb).
    resolution : float
        Phantom voxel size in mm (1 mm is the MNI grid, 197x233x189).
    seed : int
        Phantom subject.
    model : str
        Model bundle to synthesize with.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    timeout : float
        Seconds allowed for each background step.

    Returns
    -------
    dict
        ``screenshots`` (paths), ``metrics`` (the :func:`~napari_neurosynth.metrics.evaluate`
        result the widget shows), ``regions`` (the disagreement table),
        ``fidelity`` (lesion fidelity rows) and ``seconds`` (synthesis time).
    """
    import napari

    from .compare_widget import CompareExplainWidget
    from .layers import layer_to_volume, set_anatomical_view
    from .sample_data import phantom_sample
    from .study_widget import ReaderStudyWidget
    from .synthesize_widget import SynthesizeWidget

    out = Path(out_dir or "neurosynth-demo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}

    viewer = napari.Viewer(title="napari-neurosynth demo")
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in phantom_sample(seed=seed, resolution=resolution):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    set_anatomical_view(viewer, "axial")
    t1, t2, lesions = viewer.layers["T1"], viewer.layers["T2"], viewer.layers["lesions"]
    t2.visible = True

    # Go to the slice through the largest T1-isointense plaque (label 3): the
    # lesion a T1-to-T2 model cannot see, so the one the review must catch.
    found = _largest_lesion(np.asarray(lesions.data), 3) or _largest_lesion(np.asarray(lesions.data) > 0, 1)
    if found is None:
        raise NeurosynthError("demo: the phantom has no lesion to review")
    plaque, centre = found
    viewer.dims.set_point(2, float(t1.data_to_world(centre)[2]))

    synth_w = SynthesizeWidget(viewer)
    compare_w = CompareExplainWidget(viewer)
    study_w = ReaderStudyWidget(viewer)
    viewer.window.add_dock_widget(synth_w, name="Synthesize", area="right")
    viewer.window.add_dock_widget(compare_w, name="Compare & Explain", area="right", tabify=True)
    viewer.window.add_dock_widget(study_w, name="Reader Study", area="right", tabify=True)
    _settle(0.5)  # tabs switch only once the window has laid out its docks
    _raise_dock(synth_w)
    window = synth_w.window()  # the QMainWindow the docks live in
    shots["01_opened"] = _grab(viewer, window, out / "01_opened.png")

    # --- synthesize through the widget
    synth_w.set_model(model)
    synth_w.set_device(device)
    synth_w.input_combos["t1"].set_layer(t1)
    synth_w.target_combo.set_layer(t2)
    started = time.monotonic()
    if synth_w.run() is None:
        raise NeurosynthError("demo: the Synthesize widget refused the choices (see the notification)")
    _wait(synth_w.job, timeout, "synthesis")
    seconds = time.monotonic() - started
    synth_layer = synth_w.result_layer
    synth_w.side_by_side_check.setChecked(True)
    _raise_dock(synth_w)
    shots["02_synthesized"] = _grab(viewer, window, out / "02_synthesized.png")
    synth_w.side_by_side_check.setChecked(False)

    # --- compare: metrics, z-map and regions
    _raise_dock(compare_w)
    compare_w.synth_combo.set_layer(synth_layer)
    compare_w.target_combo.set_layer(t2)
    compare_w.mask_combo.set_layer(viewer.layers["brain mask"])
    compare_w.lesion_combo.set_layer(lesions)
    if compare_w.compute_metrics() is None:
        raise NeurosynthError("demo: the Compare & Explain widget refused the metrics choices")
    _wait(compare_w.job, timeout, "metrics")
    metrics = compare_w.metrics
    compare_w.export_metrics(out / "metrics.json")
    compare_w.export_metrics(out / "metrics.csv")
    if compare_w.add_difference_map() is None:
        raise NeurosynthError("demo: the Compare & Explain widget refused the difference-map choices")
    _wait(compare_w.job, timeout, "difference map")
    for layer in viewer.layers:
        layer.visible = layer.name in {"T2"} or layer in (compare_w.zmap_layer, compare_w.regions_layer)
    compare_w.tabs.setCurrentIndex(1)  # Differences: the region table
    shots["03_difference"] = _grab(viewer, window, out / "03_difference.png", zoom=1.4)

    # --- explain the plaque region of the synthesized image
    roi = compare_w.add_roi_layer()
    ii, jj = np.nonzero(plaque[:, :, centre[2]])
    pad = 3
    i0, i1 = ii.min() - pad, ii.max() + pad
    j0, j1 = jj.min() - pad, jj.max() + pad
    k = centre[2]
    roi.add_rectangles(np.array([[i0, j0, k], [i0, j1, k], [i1, j1, k], [i1, j0, k]], float))
    roi.mode = "pan_zoom"
    if compare_w.explain_roi() is None:
        raise NeurosynthError("demo: the Compare & Explain widget refused the Grad-CAM choices")
    _wait(compare_w.job, timeout, "Grad-CAM")
    for layer in viewer.layers:
        layer.visible = layer.name in {"T1", roi.name} or layer is compare_w.cam_layer
    compare_w.tabs.setCurrentIndex(2)  # Explain: method and layer choices
    shots["04_gradcam"] = _grab(viewer, window, out / "04_gradcam.png", zoom=1.4)

    # --- reader study: acquired vs synthesized, blinded
    study_path = _write_demo_study(
        out / "study", layer_to_volume(t2), layer_to_volume(synth_layer), layer_to_volume(t1), layer_to_volume(lesions)
    )
    _raise_dock(study_w)
    study_w.rater_edit.setText("demo-rater")
    study_w.study_edit.setText(str(study_path))
    study_w.db_edit.setText(str(out / "ratings.sqlite"))
    study_w.reading_check.setChecked(False)  # first in this viewer (05), then in the reading window (07)
    if not study_w.start():
        raise NeurosynthError(f"demo: the reader study did not start: {study_w.status_label.text()}")
    _settle(1.0)
    deadline = time.monotonic() + timeout
    while not study_w.loaded and time.monotonic() < deadline:
        _settle(0.1)
    shots["05_reader_study"] = _grab(viewer, window, out / "05_reader_study.png")
    plaque_mm = tuple(float(v) for v in t1.data_to_world(centre))
    shots["07_reading_window"] = _reading_window_shot(study_w, out / "07_reading_window.png", timeout, plaque_mm)

    # --- review like a radiologist: tri-planar, linked, crosshair on the plaque, brain window
    for layer in viewer.layers:
        layer.visible = layer in (synth_layer, t2, compare_w.regions_layer)
    review = compare_w.open_review()
    if review is None:
        raise NeurosynthError("demo: the Compare & Explain widget refused to open the review")
    review.jump(tuple(float(v) for v in synth_layer.data_to_world(centre)))
    review.apply_preset("brain")
    _settle(1.0)
    shots["06_review"] = out / "06_review.png"
    review.grab().save(str(shots["06_review"]))
    shots = {key: shots[key] for key in SCREENSHOTS}

    result = {
        "screenshots": shots,
        "metrics": metrics,
        "regions": compare_w.regions,
        "fidelity": compare_w.fidelity,
        "seconds": seconds,
        "viewer": viewer,
    }
    if offscreen:
        review.close()
        study_w.stop()
        viewer.close()
    return result


def _reading_window_shot(study_w: Any, path: Path, timeout: float, plaque_mm: tuple[float, ...]) -> Path:
    """Restart the demo study in its clean reading window, answer part of it, and save a picture of that window.

    The picture shows the hanging protocol (test image in the brain window beside the
    T1) and the questions panel with a MOS, a Turing choice and one lesion mark on the
    plaque (confidence 4); nothing is saved.
    """
    from .layers import viewer_camera

    study_w.stop()
    study_w.reading_check.setChecked(True)
    if not study_w.start():
        raise NeurosynthError(f"demo: the reading window did not open: {study_w.status_label.text()}")
    deadline = time.monotonic() + timeout
    while not study_w.loaded and time.monotonic() < deadline:
        _settle(0.1)
    reading = study_w.reading_window
    reading.resize(1600, 900)
    panel = study_w.questions_panel
    for key in ("4", "s"):  # what the keys 4 and S do: MOS 4, then "synthetic"
        panel.handle_key(key)
    view = reading.view
    view.dims.point = (*view.dims.point[:-1], plaque_mm[2])
    if study_w.add_mark(plaque_mm) >= 0:
        panel.handle_key("4")
    _settle(0.5)
    view.reset_view()
    viewer_camera(view).zoom *= 1.15
    _settle(1.0)
    reading.grab().save(str(path))
    study_w.stop()
    return path


def _raise_dock(widget: Any) -> None:
    """Bring a tabified dock widget to the front."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is not None:
        dock.raise_()
        _settle(0.1)


def run_event_loop() -> None:
    """Hand control to napari's event loop until the user closes the viewer (``neurosynth demo``)."""
    import napari

    napari.run()
