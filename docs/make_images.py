"""Regenerate the screenshots of docs/user-guide.md into docs/images/.

Run from the repository root (a display is needed; without one use Xvfb):

    xvfb-run -a .venv/bin/python docs/make_images.py

It runs the same tour as ``make demo`` (:func:`napari_neurosynth.viewer.demo.run_demo`),
so the guide shows exactly what the widgets do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_neurosynth.viewer.demo import SCREENSHOTS, run_demo


def main() -> int:
    out = Path(__file__).resolve().parent / "images"
    result = run_demo(out, offscreen=True, resolution=1.0, seed=0)
    for key, path in result["screenshots"].items():
        print(f"{path}: {SCREENSHOTS[key]}")
    # The tour also writes metrics, a study and a ratings file; the guide needs only the pictures.
    for extra in ("metrics.json", "metrics.csv", "ratings.sqlite", "ratings.sqlite-wal", "ratings.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    import shutil

    shutil.rmtree(out / "study", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
