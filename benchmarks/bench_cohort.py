"""Cohort throughput (subjects per minute): one process vs a local Dask cluster of 1 and 2 workers.

Usage::

    python benchmarks/bench_cohort.py                      # 12 subjects at 2 mm, t1_to_t2
    python benchmarks/bench_cohort.py --subjects 24 --resolution 3 --workers 1 2 4

Each configuration synthesizes the same subjects into its own folder through
:func:`napari_neurosynth.cohort.run_synthesis` (what ``neurosynth synthesize --batch``
runs) and prints the wall time, the cluster's start-up (workers importing torch and
loading the model), the throughput after start-up and the median time one subject
takes where it runs. The outputs of every
configuration are compared byte for byte with the one-process run. Not a test:
the figures depend on the machine and on what else runs on it (the load average is
printed), see docs/scale.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def make_subjects(folder: Path, n: int, resolution: float) -> dict[str, dict[str, Path]]:
    from napari_neurosynth import make_phantom, write_volume

    phantom = make_phantom(seed=0, resolution=resolution)
    rng = np.random.default_rng(0)
    subjects = {}
    for i in range(n):
        data = phantom["t1"].data
        t1 = data * (1 + 0.01 * i) + rng.normal(0, 0.01 * float(data.max()), data.shape)
        path = write_volume(phantom["t1"].with_data(t1.astype(np.float32)), folder / f"sub-{i:03d}_t1.nii.gz")
        subjects[f"sub-{i:03d}"] = {"t1": path}
    return subjects


def main() -> None:
    from napari_neurosynth.bundle import load_model
    from napari_neurosynth.cohort import SynthesisOptions, plan_synthesis, run_synthesis

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--model", default="t1_to_t2")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model = load_model(args.model)
    sha = model.card["weights"]["sha256"]
    root = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    subjects = make_subjects(root / "data", args.subjects, args.resolution)
    print(f"{args.subjects} subjects at {args.resolution:g} mm, model {model.name}, {os.cpu_count()} CPU cores, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"{'configuration':<16} {'wall s':>8} {'start-up s':>11} {'subjects/min':>13} {'after start-up':>15} "
          f"{'s/subject':>10}  same")  # fmt: skip
    reference: dict[str, bytes] | None = None
    for workers in [None, *args.workers]:
        out = root / f"out-{workers or 'here'}"
        plan = plan_synthesis(subjects, ["t1"], model.output, out, sha, model_name=model.name)
        report = run_synthesis(model, plan, options=SynthesisOptions(device=args.device), workers=workers)
        assert not report.failures, report.failures
        outputs = {p.name: p.read_bytes() for p in sorted(out.glob("*_synth.nii.gz"))}
        reference = reference or outputs
        n, busy = len(report.computed), report.seconds - report.startup_seconds
        per_subject = float(np.median([r["seconds"] for r in report.results]))  # one subject's own time
        name = "one process" if workers is None else f"{workers} worker(s)"
        print(f"{name:<16} {report.seconds:>8.1f} {report.startup_seconds:>11.1f} {60 * n / report.seconds:>13.1f} "
              f"{60 * n / busy:>15.1f} {per_subject:>10.2f}  {outputs == reference}")  # fmt: skip
    print(f"load average after {' '.join(f'{x:.1f}' for x in os.getloadavg())}; outputs in {root}")


if __name__ == "__main__":
    main()
