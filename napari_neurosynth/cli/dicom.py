"""``neurosynth dicom list FOLDER`` and ``neurosynth dicom convert FOLDER -o OUT``: DICOM series.

``list`` prints each series of a folder (index, description, modality,
orientation, size, spacing, number of files) and what was skipped or dropped;
``convert`` writes one series as NIfTI (or any format ``write_volume`` takes).

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="neurosynth")
>>> register(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["dicom", "convert", "exam/", "-o", "t1.nii.gz", "--series", "2"])
>>> args.action, args.folder, args.output, args.series, args.uneven
('convert', 'exam/', 't1.nii.gz', '2', 'refuse')
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import NeurosynthError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "dicom",
        help="list the series of a DICOM folder, or convert one to NIfTI",
        description=(
            "DICOM folders as PACS and scanners export them: series grouped by SeriesInstanceUID and split "
            "by orientation and acquisition, localizers dropped, unreadable files skipped and named."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="print each series: description, modality, orientation, size, spacing, files")
    ls.add_argument("folder", metavar="FOLDER", help="folder holding DICOM files (or one DICOM file)")
    ls.add_argument("--json", action="store_true", help="print the series and notes as JSON")
    ls.set_defaults(func=run_list)
    cv = actions.add_parser("convert", help="write one series as a volume file (.nii.gz, .mgz, .nrrd, .mha)")
    cv.add_argument("folder", metavar="FOLDER", help="folder holding DICOM files (or one DICOM file)")
    cv.add_argument("-o", "--output", required=True, metavar="OUT", help="output volume, e.g. t1.nii.gz")
    cv.add_argument("--series", metavar="N|UID", help="series index from 'neurosynth dicom list', or its UID")
    cv.add_argument(
        "--uneven",
        choices=("refuse", "resample"),
        default="refuse",
        help="uneven slice gaps: refuse (default) or resample linearly onto a uniform grid",
    )
    cv.add_argument("--force", action="store_true", help="replace OUT if it exists")
    cv.set_defaults(func=run_convert)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 1

    p.set_defaults(func=usage)


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise NeurosynthError(f"not found: {path}")
    return path


def _row(s: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in s["size"])
    spacing = "x".join(f"{v:g}" for v in s["spacing"]) if s["spacing"] else "-"
    status = "ok" if not s["problem"] else "cannot open"
    if s["problem"] is None and s["uniform"] is False:
        status = "uneven gaps"
    number = "" if s["series_number"] is None else str(s["series_number"])
    return (
        f"{s['index']:>3}  {number:>4}  {(s['description'] or '-')[:28]:<28}  {s['modality'] or '-':<5} "
        f"{s['orientation']:<9} {size:<12} {spacing:<18} {s['files']:>5}  {status}"
    )


def run_list(args: argparse.Namespace) -> int:
    from ..dicom import scan_folder

    path = _folder(args.folder)
    scan = scan_folder(path if path.is_dir() else path.parent)
    rows = [s.summary() for s in scan.series]
    if args.json:
        out = {
            "folder": str(scan.folder),
            "series": rows,
            "skipped": {p.name: why for p, why in scan.skipped},
            "ignored": {p.name: why for p, why in scan.ignored},
            "dropped": scan.dropped,
        }
        print(json.dumps(out, indent=2))
        return 0 if rows else 2
    print(f"{len(rows)} series in {scan.folder}")
    if rows:
        header = f"{'#':>3}  {'num':>4}  {'description':<28}  {'mod':<5} {'plane':<9} {'size':<12} {'spacing mm':<18}"
        print(f"{header} files  status")
        for s in rows:
            print(_row(s))
    for s in rows:
        for line in ([s["problem"]] if s["problem"] else []) + s["notes"]:
            print(f"  series {s['index']}: {line}")
    for line in scan.notes():
        print(f"  {line}")
    if scan.ignored:
        print(f"  ignored {len(scan.ignored)} file(s) without images (DICOMDIR, reports, plans)")
    if rows:
        print(
            "open one with: read_volume(FOLDER, series=N) or neurosynth dicom convert FOLDER --series N -o OUT.nii.gz"
        )
    return 0 if rows else 2


def run_convert(args: argparse.Namespace) -> int:
    from ..atomic import check_output_path
    from ..io import read_volume, write_volume

    path = _folder(args.folder)
    out = check_output_path(Path(args.output).expanduser(), force=args.force)
    volume = read_volume(path, series=args.series, uneven=args.uneven)
    written = write_volume(volume, out)
    info = volume.metadata.get("dicom", {})
    shape = "x".join(str(v) for v in volume.shape)
    spacing = "x".join(f"{v:.4g}" for v in volume.spacing)
    label = info.get("series_description") or info.get("series_id")
    print(f"wrote {written}  series {info.get('series_index')} ({label})")
    print(f"  {shape} voxels of {spacing} mm, {volume.data.dtype}")
    return 0
