"""`make demo` end to end, on a 3 mm phantom so it stays quick."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_neurosynth.viewer.demo import SCREENSHOTS, run_demo


@pytest.fixture
def demo_result(tmp_path, qapp):
    return run_demo(tmp_path / "demo", offscreen=True, resolution=3.0, seed=0)


def test_demo_runs_the_whole_review(demo_result, tmp_path):
    shots = demo_result["screenshots"]
    assert list(shots) == list(SCREENSHOTS)
    for path in shots.values():
        img = np.asarray(Image.open(path).convert("L"), float)
        assert img.shape[0] >= 600 and img.shape[1] >= 900  # whole window, docks included
        assert img.std() > 10  # not a blank frame
    metrics = demo_result["metrics"]
    assert 15 < metrics["psnr_brain"] < 60
    # The T1-isointense plaques cannot be synthesized from T1: the review must say so.
    fidelity = demo_result["fidelity"]
    plaques = [row for row in fidelity["lesions"] if row["label"] == 3]
    assert plaques and sum(row["erased"] for row in plaques) >= len(plaques) // 2
    assert len(demo_result["regions"]) > 0
    assert (tmp_path / "demo" / "metrics.json").is_file() and (tmp_path / "demo" / "ratings.sqlite").is_file()


def test_demo_twice_into_one_folder(demo_result, tmp_path):
    """`make demo` is idempotent: a second tour over the first one's folder runs the same way."""
    again = run_demo(tmp_path / "demo", offscreen=True, resolution=3.0, seed=0)
    assert list(again["screenshots"]) == list(SCREENSHOTS)
    assert again["metrics"]["psnr_brain"] == pytest.approx(demo_result["metrics"]["psnr_brain"], abs=1e-6)
