"""``neurosynth demo``: the product tour (see :mod:`napari_neurosynth.viewer.demo`).

The only place where the command line reaches the viewer package: the import is
lazy (inside :func:`run`), so ``neurosynth --help`` and every other command stay
free of Qt and napari. The import-linter contracts in ``pyproject.toml`` allow
exactly this one import.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="open napari with the phantom, synthesize, compare, explain and rate",
        description=(
            "Open napari with the brain phantom, synthesize a T2 from the T1 with a shipped model, "
            "add the difference z-map and a HiResCAM of a lesion region, and open a blinded reader study. "
            "With --offscreen (or no display) it saves screenshots, prints the metrics table and exits."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("neurosynth-demo"), help="folder for screenshots and outputs")
    p.add_argument(
        "--offscreen", action="store_true", help="save screenshots and exit (implied when there is no display)"
    )
    p.add_argument("--resolution", type=float, default=1.0, help="phantom voxel size in mm (default 1)")
    p.add_argument("--seed", type=int, default=0, help="phantom subject (default 0)")
    p.add_argument("--model", default="t1_to_t2", help="model bundle (default t1_to_t2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..viewer.demo import SCREENSHOTS, run_demo, run_event_loop
    from .evaluate import format_table

    offscreen = args.offscreen or not os.environ.get("DISPLAY")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("neurosynth demo: no display; run it under `xvfb-run -a` (make demo does) to render offscreen")
    result = run_demo(
        args.out, offscreen=offscreen, resolution=args.resolution, seed=args.seed, model=args.model, device=args.device
    )
    print(
        f"\nSynthesis with {args.model}: {result['seconds']:.1f} s (phantom seed {args.seed}, {args.resolution:g} mm)\n"
    )
    print("Metrics of the synthesized T2 against the acquired T2:")
    print(format_table(result["metrics"]))
    fidelity = result.get("fidelity")
    if fidelity:
        print("\nLesion fidelity (contrast against the surrounding normal tissue, acquired -> synthesized):")
        print(
            f"  {'id':>3} {'label':>5} {'mm3':>8} {'acq. contrast':>13} {'syn. contrast':>13} {'retained':>8}  status"
        )
        for row in fidelity["lesions"]:
            print(
                f"  {row['id']:>3} {row['label']:>5} {row['mm3']:>8.0f} {row['acquired']['contrast']:>13.3f} "
                f"{row['synthesized']['contrast']:>13.3f} {row['retained']:>8.2f}  {row['status']}"
            )
        print(f"  erased: {fidelity['n_erased']}, invented: {fidelity['n_invented']}")
    if result.get("regions") is not None:
        print(f"\nDisagreement regions: {len(result['regions'])}")
    print("\nScreenshots:")
    for key, path in result["screenshots"].items():
        print(f"  {path}  ({SCREENSHOTS[key]})")
    print(f"Metrics also saved to {args.out.resolve() / 'metrics.json'} and metrics.csv")
    if not offscreen:
        run_event_loop()
    return 0
