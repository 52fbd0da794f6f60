"""``neurosynth evaluate SYNTH TARGET``: PSNR/SSIM/MAE/NMSE per region and the k-space profile.

``neurosynth evaluate --batch DATA --modality t2 --synth-dir OUT -o REPORT`` evaluates a
cohort (:func:`run_batch`, :mod:`napari_neurosynth.cohort`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NeurosynthError

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
    p.add_argument("synth", metavar="SYNTH", nargs="?", help="synthesized volume (NIfTI, MGZ, NRRD, MHA, DICOM folder)")
    p.add_argument("target", metavar="TARGET", nargs="?", help="acquired volume on the same grid")
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
    b = p.add_argument_group(
        "a cohort (--batch): one row per subject x region, CSV + Parquet, summary with 95% CIs, plot (docs/scale.md)"
    )
    b.add_argument("--batch", metavar="DIR|GLOB|CSV", help="the acquired images, named as for synthesize --batch")
    b.add_argument(
        "--modality", metavar="NAME", help="the acquired contrast to compare with (e.g. t2); names the files"
    )
    b.add_argument(
        "--synth-dir",
        metavar="DIR",
        help="where synthesize --batch wrote SUBJECT_<modality>_synth.nii.gz (default: a CSV's synth column)",
    )
    b.add_argument("--mask-name", default="brain_mask", metavar="NAME", help="brain mask files (default brain_mask)")
    b.add_argument(
        "--lesion-name", default="lesion_mask", metavar="NAME", help="lesion label files (default lesion_mask)"
    )
    b.add_argument(
        "--label-names",
        default="phantom",
        metavar="SPEC",
        help="region names of the lesion labels: phantom (the phantom's kinds, default), none (label N), "
        "or a list such as 1=NCR,2=ED,4=ET (BraTS)",
    )
    b.add_argument("-o", "--output", metavar="DIR", help="folder for the cohort tables and the plot")
    b.add_argument("--force", action="store_true", help="replace existing cohort tables (or the --csv file)")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N", help="start a local Dask cluster of N worker processes")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use a running Dask cluster")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
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

    if args.batch:
        if args.synth or args.target:
            raise NeurosynthError("give either SYNTH TARGET (one subject) or --batch (many), not both")
        return run_batch(args)
    if not (args.synth and args.target):
        raise NeurosynthError("give SYNTH and TARGET (one subject), or --batch DIR|GLOB|CSV --modality NAME (many)")
    if args.csv:
        from ..atomic import check_output_path

        inputs = [p for p in (args.synth, args.target, args.mask, args.lesion) if p]
        check_output_path(args.csv, force=args.force, inputs=inputs)
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


# --------------------------------------------------------------------------- a cohort


def parse_label_names(spec: str) -> dict[int, str]:
    """``--label-names``: ``phantom``, ``none`` or ``1=NCR,2=ED,4=ET``.

    Examples
    --------
    >>> parse_label_names("1=NCR, 2=ED,4=ET")
    {1: 'NCR', 2: 'ED', 4: 'ET'}
    >>> parse_label_names("phantom")[3], parse_label_names("none")
    ('plaque', {})
    """
    text = spec.strip().lower()
    if text == "phantom":
        from ..phantom.lesions import LESION_LABELS

        return dict(LESION_LABELS)
    if text in ("none", ""):
        return {}
    names: dict[int, str] = {}
    for item in spec.split(","):
        key, sep, name = item.partition("=")
        if not sep or not key.strip().isdigit() or not name.strip():
            raise NeurosynthError(f"--label-names: {item.strip()!r} is not LABEL=NAME (e.g. 1=NCR,2=ED,4=ET)")
        names[int(key)] = name.strip()
    return names


def cohort_subjects(args: argparse.Namespace) -> dict[str, dict[str, Path]]:
    """``{subject: {modality, mask name, lesion name, "synth": path}}`` from a folder, a glob or a CSV.

    A CSV has ``subject`` and a column named after ``--modality``; ``mask``/``lesion``
    (or the ``--mask-name``/``--lesion-name`` columns) and ``synth`` are optional.
    """
    from ..data import read_manifest
    from .synthesize import find_subjects

    names = [args.modality.lower(), args.mask_name.lower(), args.lesion_name.lower()]
    spec = Path(args.batch).expanduser()
    if spec.suffix.lower() != ".csv":
        return find_subjects(args.batch, names)
    aliases = {"mask": names[1], "lesion": names[2]}
    rows = read_manifest(spec, required=[names[0]], path_columns=[*names, "mask", "lesion", "synth"])
    subjects: dict[str, dict[str, Path]] = {}
    for row in rows:
        files = {aliases.get(k, k): Path(v) for k, v in row.items() if k != "subject"}
        subjects[str(row["subject"])] = files
    return subjects


def run_batch(args: argparse.Namespace) -> int:
    """``neurosynth evaluate --batch``: exit 0 when every subject was evaluated, 1 when some failed."""
    import sys

    from tqdm.auto import tqdm

    from ..atomic import check_output_path
    from ..cohort import plan_evaluation, run_evaluation, summarize_cohort, write_evaluation

    if not args.modality:
        raise NeurosynthError("--batch needs --modality NAME: the acquired contrast the syntheses are compared with")
    if not args.output:
        raise NeurosynthError("--batch needs -o DIR: the folder for the cohort tables and the plot")
    if args.json or args.csv:
        raise NeurosynthError("--json and --csv are for one subject; --batch writes its tables to -o DIR")
    labels = parse_label_names(args.label_names)
    args.modality, args.mask_name, args.lesion_name = (
        x.lower() for x in (args.modality, args.mask_name, args.lesion_name)
    )
    out = Path(args.output).expanduser()

    for name in ("cohort_metrics.csv", "cohort_metrics.parquet", "cohort_summary.csv", "cohort_metrics.png"):
        check_output_path(out / name, force=args.force)  # refuse before computing anything
    subjects = cohort_subjects(args)
    tasks, failures = plan_evaluation(
        subjects, args.modality, args.synth_dir, mask=args.mask_name, lesion=args.lesion_name
    )
    bar = tqdm(total=len(subjects), unit="subject", disable=args.quiet, file=sys.stderr)
    bar.update(len(failures))
    try:
        rows, more = run_evaluation(
            tasks,
            label_names=labels,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=lambda name: bar.update(1),
            announce=lambda line: print(line, file=sys.stderr),
        )
    finally:
        bar.close()
    failures += more
    if rows:
        paths = write_evaluation(rows, out, force=args.force)
        print(
            f"{len({r['subject'] for r in rows})} subject(s), {len(rows)} rows: " + ", ".join(map(str, paths.values()))
        )
        print(format_summary(summarize_cohort(rows)))
    if failures:
        print(f"{len(failures)} subject(s) failed:", file=sys.stderr)
        for name, msg in failures:
            print(f"  {name}: {msg}", file=sys.stderr)
        return 1
    return 0


def format_summary(summary: list[dict[str, object]]) -> str:
    """The cohort summary as a table: region, metric, n, mean and the 95 % CI.

    Examples
    --------
    >>> print(format_summary([{"region": "brain", "metric": "psnr", "n": 3, "mean": 22.0,
    ...                        "ci_low": 17.03, "ci_high": 26.97}]))
    region          metric       n        mean   95% CI
    brain           psnr         3     22.0000   [17.0300, 26.9700]
    """
    lines = [f"{'region':<15} {'metric':<9} {'n':>4} {'mean':>11}   95% CI"]
    for r in summary:
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"  # type: ignore[arg-type]
        lines.append(f"{r['region']!s:<15} {r['metric']!s:<9} {r['n']!s:>4} {_fmt(r['mean']):>11}   {ci}")  # type: ignore[arg-type]
    return "\n".join(lines)
