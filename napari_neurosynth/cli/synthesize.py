"""``neurosynth synthesize``: run a model on one subject or on many.

One subject::

    neurosynth synthesize t1.nii.gz --model t1_to_t2 -o t2_synth.nii.gz
    neurosynth synthesize t1.nii.gz t2_lowres.nii.gz --model t1t2lr_to_t2 -o t2_sr.nii.gz

Many subjects (one progress bar; a bad subject is reported at the end, exit 1)::

    neurosynth synthesize --batch data/BraTS/ --model t1_to_t2 -o out/
    neurosynth synthesize --batch "data/*/*_t1.nii.gz" --model t1_to_t2 -o out/
    neurosynth synthesize --batch subjects.csv --model t1_to_t2 -o out/

Batch sources:

* a **folder**, searched recursively: an image belongs to modality ``m`` when its
  name (without extension) is ``m`` or ends in ``_m`` / ``-m`` (BraTS: ``NAME_t1.nii.gz``);
  files with the same prefix in the same folder form a subject (a file named just
  ``t1.nii.gz`` takes its folder's name);
* a **glob** matching the first input's files; the other inputs are found next to
  each match by swapping the modality suffix;
* a **CSV** with a ``subject`` column and one column per card input (paths relative
  to the CSV's folder).

Outputs are written as ``OUT_DIR/<subject>_<output>_synth.nii.gz`` (``_synth`` keeps
them apart from acquired images, also when OUT_DIR is the input folder), each with a
``<subject>_<output>_synth.json`` sidecar recording the model's sha256. A rerun skips
subjects whose output this model made and recomputes those an older version of it (same
name, other weights) made; an output made by another model, changed since, or without a
record is refused unless ``--force``. ``--workers N`` spreads the subjects over a
local Dask cluster, ``--scheduler tcp://HOST:PORT`` over a running one
(:mod:`napari_neurosynth.cohort`, docs/scale.md)::

    neurosynth synthesize --batch data/ --model t1_to_t2 -o out/ --workers 2
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NeurosynthError

if TYPE_CHECKING:
    from ..bundle import Model
    from ..slicing import ModelLike

_EXT = re.compile(r"(\.nii\.gz|\.nii|\.mgz|\.mgh|\.nrrd|\.nhdr|\.mha|\.mhd)$", re.IGNORECASE)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="synthesize a contrast from one subject's images, or from many (--batch)",
        description="Run a model bundle on input volumes; the output lies on the first input's grid.",
        epilog="Examples:\n"
        "  neurosynth synthesize t1.nii.gz --model t1_to_t2 -o t2_synth.nii.gz\n"
        "  neurosynth synthesize --batch data/BraTS --model t1_to_t2 -o out/\n"
        "  neurosynth synthesize --batch subjects.csv --model t1_to_t2 -o out/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="input volumes in the model's input order (see `neurosynth models list`)",
    )
    p.add_argument("--model", "-m", required=True, help="bundle name or bundle folder")
    p.add_argument("-o", "--output", required=True, help="output file (one subject) or output folder (--batch)")
    p.add_argument(
        "--batch",
        metavar="DIR|GLOB|CSV",
        help="many subjects: a folder (BraTS-style names), a glob of first-input files, or a CSV",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast precision (auto: bf16/fp16 on GPU, fp32 on CPU)",
    )
    p.add_argument("--batch-size", default="auto", help="slices per batch (auto: from free memory)")
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample inputs on other grids onto the first input's grid instead of refusing them",
    )
    p.add_argument(
        "--no-crop",
        dest="crop",
        action="store_false",
        help="run the network on whole slices (slower; default crops to the head)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output (an output that is one of the inputs is refused even so)",
    )
    dask = p.add_argument_group("many subjects on Dask distributed (--batch; see docs/scale.md)")
    where = dask.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=int, metavar="N", help="start a local Dask cluster of N worker processes (one GPU each)"
    )
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use a running Dask cluster")
    dask.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch threads per subject, here and on each worker alike (default 1: bit-identical results "
        "however the cohort is spread)",
    )
    p.set_defaults(func=run)


def _parse_batch_size(text: str) -> int | str:
    if str(text).lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise NeurosynthError(f"--batch-size must be a positive integer or auto, not {text!r}")
    return value


def _stem(path: Path) -> str:
    return _EXT.sub("", path.name)


def _match(stem: str, modality: str) -> str | None:
    """The subject prefix if ``stem`` names ``modality`` (``t1``, ``x_t1``, ``x-t1``), else None."""
    s, m = stem.lower(), modality.lower()
    if s == m:
        return ""
    for sep in ("_", "-"):
        if s.endswith(sep + m):
            return stem[: -len(m) - 1]
    return None


def subjects_from_folder(folder: Path, modalities: list[str]) -> dict[str, dict[str, Path]]:
    """Group the images under ``folder`` into subjects by prefix (see module docstring)."""
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and _EXT.search(p.name)):
        stem = _stem(path)
        # longest modality name first, so "t2_lowres" is not mistaken for "lowres"-less "t2"
        for m in sorted(modalities, key=len, reverse=True):
            prefix = _match(stem, m)
            if prefix is not None:
                groups.setdefault((path.parent, prefix), {})[m] = path
                break
    subjects: dict[str, dict[str, Path]] = {}
    for (parent, prefix), files in sorted(groups.items()):
        name = prefix or parent.name
        if name in subjects:  # same prefix in two folders: qualify with the folder
            name = f"{parent.name}_{name}"
        subjects[name] = files
    return subjects


def subjects_from_glob(pattern: str, modalities: list[str]) -> dict[str, dict[str, Path]]:
    """Each match is a first-input file; the other inputs sit beside it with their own suffix."""
    subjects: dict[str, dict[str, Path]] = {}
    first = modalities[0]
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if not path.is_file():
            continue
        stem = _stem(path)
        ext = path.name[len(stem) :]
        prefix = _match(stem, first)
        files = {first: path}
        if prefix is None:
            prefix = stem
            if len(modalities) > 1:
                subjects[stem] = files  # the missing inputs are reported for this subject
                continue
        sep = stem[len(prefix)] if prefix and len(stem) > len(prefix) else "_"
        for m in modalities[1:]:
            name = f"{prefix}{sep}{m}{ext}" if prefix else f"{m}{ext}"
            candidates = [path.parent / name, *sorted(path.parent.glob(f"{prefix}{sep}{m}.*" if prefix else f"{m}.*"))]
            hit = next((c for c in candidates if c.is_file() and _EXT.search(c.name)), None)
            if hit is not None:
                files[m] = hit
        name = prefix or path.parent.name
        if name in subjects:
            name = f"{path.parent.name}_{name}"
        subjects[name] = files
    return subjects


def subjects_from_csv(csv_path: Path, modalities: list[str]) -> dict[str, dict[str, Path]]:
    """Rows ``subject,<input 1>,<input 2>...``; relative paths are taken from the CSV's folder
    (:func:`napari_neurosynth.data.read_manifest`, the parser training uses too)."""
    from ..data import read_manifest

    rows = read_manifest(csv_path, required=modalities, path_columns=[m.lower() for m in modalities])
    return {str(r["subject"]): {m: Path(r[m.lower()]) for m in modalities if m.lower() in r} for r in rows}


def find_subjects(spec: str, modalities: list[str]) -> dict[str, dict[str, Path]]:
    """Subjects named by a folder, a glob or a CSV file; ``{subject: {modality: path}}``."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise NeurosynthError(f"subject list {path} does not exist")
        subjects = subjects_from_csv(path, modalities)
    elif path.is_dir():
        subjects = subjects_from_folder(path, modalities)
    elif glob.has_magic(spec):
        subjects = subjects_from_glob(str(path), modalities)
    else:
        raise NeurosynthError(f"--batch {spec!r} is neither a folder, a CSV file nor a glob pattern that exists")
    if not subjects:
        names = ", ".join(f"NAME_{m}.nii.gz" for m in modalities)
        raise NeurosynthError(f"no subjects found in {spec!r}; expected files like {names}")
    return subjects


class _Bar:
    """One tqdm bar whose position is subjects done plus the current subject's fraction."""

    def __init__(self, total: float, unit: str, quiet: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            unit=unit,
            disable=quiet,
            file=sys.stderr,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} {unit} [{elapsed}<{remaining}]",
        )
        self.base = 0.0

    def at(self, fraction: float) -> None:
        target = self.base + fraction
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def next(self, name: str | None = None) -> None:
        self.base += 1.0
        self.at(0.0)
        if name:
            self.bar.set_postfix_str(name, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _synthesize_one(
    model: ModelLike, paths: list[Path], out: Path, args: argparse.Namespace, progress: Callable[[float], None]
) -> dict[str, object]:
    from ..inference import synthesize_volume
    from ..io import read_volume, write_volume

    volumes = [read_volume(p) for p in paths]
    result = synthesize_volume(
        model,
        volumes,
        device=args.device,
        progress=progress,
        precision=args.precision,
        batch_size=_parse_batch_size(args.batch_size),
        resample=args.resample,
        crop=args.crop,
    )
    result.metadata["inputs"] = [str(p) for p in paths]
    write_volume(result, out)
    return result.metadata["inference"]


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_path
    from ..bundle import load_model

    if bool(args.inputs) == bool(args.batch):
        raise NeurosynthError("give either INPUT files (one subject) or --batch DIR|GLOB|CSV (many), not both or none")
    _parse_batch_size(args.batch_size)  # fail early on a bad value
    model = load_model(args.model)
    modalities = list(model.card["inputs"])
    out = Path(args.output).expanduser()

    if not args.batch:
        if args.workers is not None or args.scheduler:
            raise NeurosynthError("--workers and --scheduler spread many subjects; use them with --batch")
        if len(args.inputs) != len(modalities):
            raise NeurosynthError(
                f"model {model.name!r} takes {len(modalities)} input(s) ({', '.join(modalities)}, in that order) "
                f"but {len(args.inputs)} file(s) were given"
            )
        if out.is_dir():
            raise NeurosynthError(f"-o {out} is a folder; give an output file name such as {out / 'synth.nii.gz'}")
        check_output_path(out, force=args.force, inputs=args.inputs)
        bar = _Bar(1.0, "volume", args.quiet)
        try:
            info = _synthesize_one(model, [Path(p) for p in args.inputs], out, args, bar.at)
        finally:
            bar.close()
        print(
            f"wrote {out} ({model.output} from {', '.join(modalities)} by {model.name} on {info['device']} "
            f"{info['precision']}, {info['seconds']:.2f} s)"
        )
        return 0

    return _run_batch(model, modalities, out, args)


def _run_batch(model: Model, modalities: list[str], out: Path, args: argparse.Namespace) -> int:
    """Many subjects (:mod:`napari_neurosynth.cohort`): plan, run here or on Dask, report; exit 1 if any failed."""
    from ..cohort import SynthesisOptions, plan_synthesis, run_synthesis

    subjects = find_subjects(args.batch, modalities)
    if args.threads < 1:
        raise NeurosynthError(f"--threads must be at least 1, not {args.threads}")
    plan = plan_synthesis(
        subjects,
        modalities,
        model.output,
        out,
        model.card["weights"]["sha256"],
        force=bool(args.force),
        model_name=model.name,
    )
    if plan.tasks:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NeurosynthError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    options = SynthesisOptions(
        device=args.device,
        precision=args.precision,
        batch_size=_parse_batch_size(args.batch_size),
        resample=args.resample,
        crop=args.crop,
        threads=args.threads,
    )
    bar = _Bar(float(len(subjects)), "subject", args.quiet)
    bar.at(float(len(plan.skipped) + len(plan.failures)))  # decided without computing anything
    done = [0]

    def finished(name: str) -> None:
        done[0] += 1
        bar.at(float(len(plan.skipped) + len(plan.failures) + done[0]))
        bar.bar.set_postfix_str(name, refresh=False)

    try:
        report = run_synthesis(
            model,
            plan,
            options=options,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=finished,
            announce=lambda line: print(line, file=sys.stderr),
        )
    finally:
        bar.close()
    print(f"{out}: {report.summary()}")
    if report.failures:
        print(f"{len(report.failures)} subject(s) failed:", file=sys.stderr)
        for name, msg in report.failures:
            print(f"  {name}: {msg}", file=sys.stderr)
        return 1
    return 0
