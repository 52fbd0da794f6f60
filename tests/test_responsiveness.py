"""The viewer keeps answering while the Synthesize widget works on a 1 mm phantom.

A QTimer ticking every 10 ms on the Qt thread records the longest gap between
ticks from the click on Run until the result layer is in the viewer (adding the
layer included). The figures are printed; run with ``pytest -s`` to see them.

Two runs are measured. The first also loads the bundle, which imports MONAI
(and through it scipy.stats, pandas, ...) in the worker: about 2 s, during
which module initialisation in those libraries holds the GIL for up to ~200 ms
at a time (measured with a plain thread importing ``monai``: 166-197 ms gaps on
this machine), a one-off hitch that is outside our code. The second run, the
steady state of a session, is held to :data:`MAX_STALL_S`.
"""

from __future__ import annotations

import itertools
import time

import pytest

from napari_neurosynth.viewer.layers import volume_to_layer_data

#: The longest the Qt event loop may stall while synthesis runs (model already loaded).
MAX_STALL_S = 0.200
#: The first run imports MONAI in the worker (see the module docstring).
MAX_STALL_FIRST_RUN_S = 0.500


@pytest.fixture(scope="module")
def phantom1():
    from napari_neurosynth import make_phantom

    return make_phantom(seed=0, lesions=True, resolution=1.0)


@pytest.fixture
def t1_to_t2(tmp_path, monkeypatch, make_bundle):
    """The shipped t1_to_t2 bundle, or (before it is trained) one with its architecture and size."""
    from napari_neurosynth.bundle import list_models

    if "t1_to_t2" in list_models():
        return "t1_to_t2"
    make_bundle(tmp_path, "t1_to_t2", base=16, n_blocks=4)
    monkeypatch.setenv("NEUROSYNTH_MODELS_PATH", str(tmp_path))
    return "t1_to_t2"


def test_event_loop_stall_during_synthesis(make_napari_viewer, qtbot, phantom1, t1_to_t2):
    from qtpy.QtCore import QTimer

    from napari_neurosynth.viewer.synthesize_widget import SynthesizeWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = volume_to_layer_data(phantom1["t1"], name="T1")
    viewer.add_image(data, **kwargs)
    widget = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Synthesize")
    widget.set_model(t1_to_t2)
    widget.set_device("cpu")

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(300)  # let the first paint and the dock settle before measuring

    def measured_run(label: str) -> float:
        ticks.clear()
        start = time.perf_counter()
        worker = widget.run()
        assert worker is not None
        qtbot.waitUntil(lambda: not widget.job.running, timeout=300_000)
        qtbot.wait(50)
        elapsed = time.perf_counter() - start
        assert widget.result_layer is not None, "synthesis did not produce a layer"
        assert widget.result_layer.data.shape == phantom1["t1"].shape
        stamps = [start, *ticks]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert len(ticks) > 10
        print(
            f"\nresponsiveness, {label}: 1 mm phantom {phantom1['t1'].shape}, synthesis + layer in {elapsed:.2f} s "
            f"(engine {widget.result_layer.metadata['seconds']:.2f} s), {len(ticks)} timer ticks, "
            f"longest event-loop stall {1000 * max(gaps):.0f} ms, "
            f"median gap {1000 * sorted(gaps)[len(gaps) // 2]:.0f} ms"
        )
        return max(gaps)

    first = measured_run("first run (bundle loaded, MONAI imported)")
    steady = measured_run("second run")
    timer.stop()
    assert len(viewer.layers) == 3  # T1 and two synthesized layers
    assert first < MAX_STALL_FIRST_RUN_S
    assert steady < MAX_STALL_S
