"""``neurosynth evaluate SYNTH TARGET``: PSNR/SSIM/MAE/NMSE per region and the k-space profile."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..metrics import EvaluateResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="compare a synthesized volume with the acquired one (PSNR, SSIM, MAE, NMSE, k-space bands)",
        description=(
            "Compare SYNTH with TARGET globally, inside the brain mask and inside the lesion mask, "
            "and print the relative error per radial k-space frequency band. Both volumes are "
            "intensity-normalised (each by its own scale, the package's default normalisation) unless --no-normalize. "
            "PSNR/SSIM use the target's max - min (inside the brain mask for the brain and lesion rows) "
            "as data range."
        ),
    )
    p.add_argument("synth", metavar="SYNTH", help="synthesized volume (NIfTI, MGZ, NRRD, MHA, DICOM folder)")
    p.add_argument("target", metavar="TARGET", help="acquired volume on the same grid")
    p.add_argument("--mask", metavar="M", help="brain mask volume (nonzero = brain)")
    p.add_argument("--lesion", metavar="L", help="lesion mask or label volume (nonzero = lesion)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON (non-finite values: null)")
    p.add_argument("--no-normalize", action="store_true", help="compare raw intensities (no intensity normalisation)")
    p.add_argument(
        "--csv",
        metavar="FILE",
        help="also write the region rows and the k-space bands to a CSV file (non-finite values: empty cells)",
    )
    p.add_argument("--bands", type=int, default=8, metavar="N", help="number of k-space bands (default 8)")
    p.set_defaults(func=run)


def _fmt(x: float, digits: int = 4) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return f"{x:.{digits}f}"


def format_table(result: EvaluateResult) -> str:
    """The human-readable report: one row per region, then the k-space profile."""
    lines = [f"{'region':<8} {'voxels':>9} {'PSNR dB':>9} {'SSIM':>7} {'MAE':>9} {'NMSE':>9} {'range':>8}"]
    for name, r in result["regions"].items():
        lines.append(
            f"{name:<8} {r['n_voxels']:>9d} {_fmt(r['psnr'], 2):>9} {_fmt(r['ssim']):>7} "
            f"{_fmt(r['mae']):>9} {_fmt(r['nmse']):>9} {_fmt(r['data_range'], 3):>8}"
        )
    if result.get("kspace"):
        lines += ["", "k-space error profile (radial bands, cycles/mm):"]
        lines.append(f"{'band':>4} {'from':>7} {'to':>7} {'rel. error':>10} {'energy %':>9}")
        for b in result["kspace"]:
            lines.append(
                f"{b['band']:>4d} {b['low']:>7.4f} {b['high']:>7.4f} {_fmt(b['rel_error']):>10} "
                f"{100 * b['target_energy']:>9.4f}"
            )
    lines.append("")
    lines.append("intensities normalised (each image by its own scale)" if result["normalized"] else "raw intensities")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..export import dumps_json, write_csv
    from ..io import read_volume
    from ..metrics import RESULT_COLUMNS, evaluate, result_rows

    synth = read_volume(args.synth)
    target = read_volume(args.target)
    mask = read_volume(args.mask) if args.mask else None
    lesion = read_volume(args.lesion) if args.lesion else None
    result = evaluate(synth, target, mask=mask, lesion=lesion, normalize=not args.no_normalize, n_bands=args.bands)
    if args.csv:
        write_csv(result_rows(result), args.csv, RESULT_COLUMNS)
    if args.json:
        # non-finite numbers (the PSNR of identical images) are null, as in every export
        print(dumps_json({**result, "synth": str(args.synth), "target": str(args.target)}))
    else:
        print(format_table(result))
    return 0
