"""Training data: subjects from phantoms, BraTS/IXI folders or CSV manifests, and slice sampling.

A :class:`Subject` holds one person's co-registered volumes keyed by modality
(``t1``, ``t2``, ``flair``, ``pd``, ``t2_lowres``), a brain mask and, when there
is one, a lesion mask. :func:`load_subjects` turns a data specification into
subjects; :class:`SliceSampler` draws random 2-D patches (with 2.5-D context as
extra channels) from inside the brain, normalised exactly as the inference
engine normalises (:func:`napari_neurosynth.preprocessing.intensity_scale`).

Data specifications understood by :func:`load_subjects`:

- ``"phantom:0-7"`` or ``"phantom:0,1,5"``: synthetic phantom subjects with
  those seeds (:func:`napari_neurosynth.make_phantom`);
- a folder in BraTS naming: one sub-folder (or file prefix) per subject with
  ``*_t1.nii.gz``, ``*_t2.nii.gz``, ``*_flair.nii.gz`` and optional
  ``*_seg.nii.gz`` (``*_t1ce`` is read as ``t1ce``);
- a folder in IXI naming: ``IXI<id>-T1.nii.gz``, ``IXI<id>-T2.nii.gz`` (and
  ``-PD``), matched by subject id;
- a CSV manifest with a ``subject`` column, one column per modality holding a
  path (relative to the CSV file or absolute), and optional ``mask`` and
  ``lesion`` columns.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .errors import NeurosynthError
from .io import Volume
from .preprocessing import foreground_mask, slice_axis
from .slicing import input_scale, normalized_stack, stack_batch

#: Modalities whose file names the folder loaders recognise.
MODALITIES = ("t1", "t1ce", "t2", "pd", "flair", "t2_lowres")

_NII = r"\.nii(?:\.gz)?$"
# BraTS up to 2021 uses ``BraTS20_Training_001_t1.nii.gz``; BraTS 2023 uses ``-t1n``/``-t2w``/``-t2f``/``-seg``.
_BRATS_SUFFIX = {
    "t1": ("_t1", "-t1n"),
    "t1ce": ("_t1ce", "-t1c"),
    "t2": ("_t2", "-t2w"),
    "flair": ("_flair", "-t2f"),
    "seg": ("_seg", "-seg"),
}
_IXI = re.compile(r"^(IXI\d+(?:-[A-Za-z]+-\d+)?)-(T1|T2|PD)" + _NII)


@dataclass
class Subject:
    """One subject's co-registered volumes.

    Parameters
    ----------
    name : str
        Subject identifier (phantom seed, BraTS/IXI id, manifest ``subject``).
    images : dict of str to Volume
        Modality name to volume. After :meth:`on_grid_of` all share one grid.
    brain_mask : numpy.ndarray, optional
        Boolean brain mask on the grid of the images.
    lesion_mask : numpy.ndarray, optional
        Integer lesion labels (0 = none) on the grid of the images.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_neurosynth.io import Volume
    >>> v = Volume(np.ones((4, 4, 4), np.float32), np.eye(4))
    >>> s = Subject("a", {"t1": v, "t2": v})
    >>> s.modalities
    ['t1', 't2']
    """

    name: str
    images: dict[str, Volume]
    brain_mask: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.images)

    def require(self, modalities: Iterable[str]) -> None:
        """Raise :class:`NeurosynthError` unless every modality is present."""
        missing = [m for m in modalities if m not in self.images]
        if missing:
            raise NeurosynthError(
                f"subject {self.name!r} has no {', '.join(missing)} image (it has {', '.join(self.images) or 'none'}); "
                "add the file or choose other --inputs/--output"
            )

    def mask(self) -> np.ndarray:
        """The brain mask, or the head foreground of the first image when none was given."""
        if self.brain_mask is not None:
            return self.brain_mask.astype(bool)
        first = next(iter(self.images.values()))
        return foreground_mask(first.data)

    def on_grid_of(self, reference: str, keep: Iterable[str] | None = None) -> Subject:
        """Images resampled (linear) onto the grid of ``reference``; masks must already be there.

        A volume already on the reference grid is kept as is, so for phantoms only
        ``t2_lowres`` (4x thicker slices) is resampled, exactly as the inference
        engine resamples it onto the first input's grid. ``keep`` limits the
        result to those modalities (the others are neither resampled nor kept).
        """
        self.require([reference, *(keep or [])])
        ref = self.images[reference]
        wanted = {k: v for k, v in self.images.items() if keep is None or k in set(keep)}
        images = {k: (v if _same_grid(v, ref) else resample_to(v, ref)) for k, v in wanted.items()}
        # keep the acquired volumes too: the inference engine resamples them itself
        meta = {**self.meta, "raw_images": dict(wanted)}
        return Subject(self.name, images, self.brain_mask, self.lesion_mask, meta)


def _same_grid(a: Volume, b: Volume) -> bool:
    from .io import same_grid

    return same_grid(a, b)


def resample_to(volume: Volume, reference: Volume) -> Volume:
    """Resample ``volume`` onto the grid of ``reference`` (linear, world space).

    The same call as the inference engine's (:func:`napari_neurosynth.io.resample_to`),
    so a model sees the low-resolution target resampled identically in training
    and at inference.
    """
    from .io import resample_to as _resample

    return _resample(volume, reference, "linear")


# --------------------------------------------------------------------------- loaders


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``; a sequence of ints is returned as a list.

    Examples
    --------
    >>> parse_seeds("0-3,7")
    [0, 1, 2, 3, 7]
    """
    if not isinstance(text, str):
        return [int(s) for s in text]
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise NeurosynthError(f"cannot read seeds {text!r}; write them like 0-7 or 0,3,5") from None
    if not seeds:
        raise NeurosynthError(f"no seeds in {text!r}; write them like 0-7 or 0,3,5")
    return seeds


#: What domain randomisation draws from, per phantom subject (SynthSR / SynthSeg's idea, Billot et al.
#: 2023: a network trained on many acquisitions of synthetic anatomy generalises to unseen ones).
@dataclass(frozen=True)
class Randomization:
    """The ranges :func:`randomized_acquisition` draws from (each choice with equal odds)."""

    skull_strip: tuple[bool, ...] = (False, True)
    field_strengths: tuple[float, ...] = (1.5, 3.0)
    protocols: tuple[str, ...] = ("default", "random")
    noise: tuple[float, float] = (0.01, 0.04)
    bias: tuple[float, float] = (0.0, 0.3)
    fov_crop_probability: float = 0.25


RANDOMIZATION = Randomization()


def randomized_acquisition(seed: int, resolution: float | tuple[float, float, float]) -> dict:
    """The :func:`~napari_neurosynth.make_phantom` options domain randomisation gives phantom ``seed``.

    Drawn from their own generator (seeded by ``seed``), so a subject's
    acquisition is reproducible and independent of its anatomy's randomness.

    Examples
    --------
    >>> a = randomized_acquisition(3, 2.0)
    >>> a == randomized_acquisition(3, 2.0), sorted(a)
    (True, ['bias', 'field_strength', 'fov_crop', 'noise', 'protocol', 'resolution', 'skull_strip'])
    """
    rng = np.random.default_rng([int(seed), 0x5EED])
    r = RANDOMIZATION
    return {
        "resolution": resolution,
        "skull_strip": bool(r.skull_strip[int(rng.integers(len(r.skull_strip)))]),
        "field_strength": float(r.field_strengths[int(rng.integers(len(r.field_strengths)))]),
        "protocol": str(r.protocols[int(rng.integers(len(r.protocols)))]),
        "noise": float(rng.uniform(*r.noise)),
        "bias": float(rng.uniform(*r.bias)),
        "fov_crop": "random" if rng.random() < r.fov_crop_probability else None,
    }


def parse_resolution(value: float | str | Sequence[float]) -> float | tuple[float, float, float]:
    """A voxel size: ``2``, ``"2"``, ``"1x1x3"`` or ``(1, 1, 3)`` (mm).

    Examples
    --------
    >>> parse_resolution("1x1x3"), parse_resolution("2.5")
    ((1.0, 1.0, 3.0), 2.5)
    """
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise NeurosynthError(f"cannot read voxel size {value!r}; write 2 or 1x1x3 (mm)") from None
        value = nums[0] if len(nums) == 1 else nums
    if isinstance(value, (int, float)):
        return float(value)
    vals = [float(v) for v in value]
    if len(vals) != 3:
        raise NeurosynthError(f"a voxel size has 1 or 3 values (mm), not {len(vals)}")
    return vals[0], vals[1], vals[2]


def _resolution_label(res: float | tuple[float, float, float]) -> str:
    if isinstance(res, (int, float)):
        return f"{res:g}mm"
    return "x".join(f"{r:g}" for r in res) + "mm"


#: ``target_misalignment="mixed"``: the severities cycled over the seeds.
MIXED_SEVERITIES = ("low", "mid", "high")


def phantom_subjects(
    seeds: Sequence[int],
    resolution: float | str | Sequence = 2.0,
    lesions: bool | list = True,
    randomize: bool = False,
    **options,
) -> list[Subject]:
    """Phantom subjects for ``seeds``; a list of resolutions is cycled over the seeds.

    Parameters
    ----------
    seeds : sequence of int
        Phantom seeds (each gives a different anatomy deformation, lesions, noise, bias).
    resolution : float, str, tuple or list of them
        Voxel size in mm (``2``, ``"1x1x3"``, ``(1, 1, 3)``); with a list of several,
        seed ``i`` gets ``resolution[i % len]`` so a model sees mixed resolutions.
    lesions : bool or list
        Passed to :func:`make_phantom`.
    randomize : bool
        Domain randomisation: each seed also gets its own acquisition
        (:func:`randomized_acquisition`: whole head or skull-stripped, 1.5 or 3 T,
        default or random TR/TE/TI, noise, bias, field-of-view crop).
    **options
        Further :func:`make_phantom` options, the same for every seed (they override the randomised ones);
        ``target_misalignment="mixed"`` gives seed ``i`` the severity ``MIXED_SEVERITIES[i % 3]``.
    """
    from .phantom import make_phantom

    # a tuple is one (anisotropic) voxel size; a list holds several, cycled over the seeds
    if isinstance(resolution, (str, int, float, tuple)):
        resolutions = [parse_resolution(resolution)]
    else:
        resolutions = [parse_resolution(r) for r in resolution]
    subjects = []
    for i, seed in enumerate(seeds):
        res = resolutions[i % len(resolutions)]
        kwargs = randomized_acquisition(int(seed), res) if randomize else {"resolution": res}
        kwargs.update(options)
        if kwargs.get("target_misalignment") == "mixed":  # every severity in turn, so one model sees them all
            kwargs["target_misalignment"] = MIXED_SEVERITIES[i % len(MIXED_SEVERITIES)]
        ph = make_phantom(seed=int(seed), lesions=lesions, **kwargs)
        images: dict[str, Volume] = {
            k: ph[k] for k in ("t1", "t2", "pd", "flair", "t2_lowres", "t2_aligned") if k in ph
        }
        subjects.append(
            Subject(
                f"phantom-{seed}@{_resolution_label(kwargs['resolution'])}",
                images,
                brain_mask=np.asarray(ph["brain_mask"].data) > 0,
                lesion_mask=np.asarray(ph["lesion_mask"].data).astype(np.uint8),
                meta={
                    "seed": int(seed),
                    "resolution": kwargs["resolution"],
                    "acquisition": kwargs,
                    "lesions": ph["lesion_mask"].metadata.get("lesions"),
                    "lesion_labels": ph["lesion_mask"].metadata.get("labels"),
                    "lesion_visibility": ph["lesion_mask"].metadata.get("visibility"),
                    # tissues=True: the CSF fraction, from which evaluations find the ventricles
                    **({"csf_fraction": np.asarray(ph["csf"].data)} if "csf" in ph else {}),
                },
            )
        )
    return subjects


def _read(path: Path) -> Volume:
    from .io import read_volume

    return read_volume(path)


def brats_subjects(folder: str | Path) -> list[Subject]:
    """Subjects from a BraTS-style folder (``*_t1.nii.gz``, ``*_t2.nii.gz``, ``*_flair.nii.gz``, ``*_seg.nii.gz``).

    Files are grouped by their prefix before the modality suffix, searched
    recursively. BraTS images are skull-stripped, so the brain mask is the
    non-zero voxels of the T1 (or the first image); the segmentation (labels 1,
    2, 4 / 3) becomes the lesion mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NeurosynthError(f"{folder} is not a folder; give a folder of BraTS subjects")
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.rglob("*.nii*")):
        stem = re.sub(_NII, "", path.name)
        for key, suffixes in _BRATS_SUFFIX.items():
            hit = next((s for s in suffixes if stem.lower().endswith(s)), None)
            if hit:
                groups.setdefault(stem[: -len(hit)], {})[key] = path
                break
    subjects = []
    for name, files in sorted(groups.items()):
        images = {k: _read(p) for k, p in files.items() if k != "seg"}
        if not images:
            continue
        ref = images.get("t1", next(iter(images.values())))
        brain = np.asarray(ref.data) > 0
        lesion = None
        if "seg" in files:
            seg = np.asarray(_read(files["seg"]).data)
            if seg.shape != ref.shape:
                raise NeurosynthError(f"{files['seg']} has shape {seg.shape} but the images have {ref.shape}")
            lesion = np.rint(seg).astype(np.uint8)
        subjects.append(Subject(Path(name).name, images, brain, lesion, {"source": "brats"}))
    if not subjects:
        raise NeurosynthError(
            f"no BraTS subjects in {folder}: expected files like NAME_t1.nii.gz, NAME_t2.nii.gz, NAME_flair.nii.gz"
        )
    return subjects


def ixi_subjects(folder: str | Path) -> list[Subject]:
    """Subjects from an IXI-style folder (``IXI002-Guys-0828-T1.nii.gz``, ``IXI002-Guys-0828-T2.nii.gz``).

    IXI images are not skull-stripped, so the brain mask is the head foreground
    of the T1 (:func:`~napari_neurosynth.preprocessing.foreground_mask`). IXI's T1
    and T2 live on different grids; call :meth:`Subject.on_grid_of` (as
    :func:`load_subjects` does) to resample them onto one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NeurosynthError(f"{folder} is not a folder; give a folder of IXI images")
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.rglob("IXI*")):
        m = _IXI.match(path.name)
        if m:
            groups.setdefault(m.group(1), {})[m.group(2).lower()] = path
    subjects = [
        Subject(name, {k: _read(p) for k, p in sorted(files.items())}, None, None, {"source": "ixi"})
        for name, files in sorted(groups.items())
    ]
    if not subjects:
        raise NeurosynthError(f"no IXI subjects in {folder}: expected files like IXI002-Guys-0828-T1.nii.gz")
    return subjects


def read_manifest(
    csv_path: str | Path,
    required: Sequence[str] = (),
    path_columns: Sequence[str] | None = None,
    must_exist: bool = False,
) -> list[dict[str, str | Path]]:
    """The rows of a CSV subject manifest, with path columns resolved against the CSV's folder.

    The one parser behind ``neurosynth train --data subjects.csv`` and
    ``neurosynth synthesize --batch subjects.csv``: a ``subject`` column, then
    one column per modality (``t1``, ``t2``, ...) and optionally ``mask`` and
    ``lesion``. Column names are case-insensitive, cells are stripped, a BOM is
    ignored, an empty subject cell becomes ``row<N>``, and an empty path cell is
    left out of its row.

    Parameters
    ----------
    csv_path : str or Path
        The manifest.
    required : sequence of str
        Columns that must exist besides ``subject``.
    path_columns : sequence of str, optional
        Columns holding paths (default: every modality column, ``mask`` and ``lesion``).
    must_exist : bool
        Raise when a named file is missing.

    Raises
    ------
    NeurosynthError
        A missing or unreadable file, a missing column, or (``must_exist``) a missing image file.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "s.csv").write_text("Subject,T1,t2\\nsub-1,a/t1.nii.gz,\\n")
    >>> rows = read_manifest(folder / "s.csv", required=["t1"])
    >>> rows[0]["subject"], rows[0]["t1"] == folder / "a" / "t1.nii.gz", "t2" in rows[0]
    ('sub-1', True, False)
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise NeurosynthError(f"manifest {csv_path} does not exist")
    from .export import read_csv_rows

    table = read_csv_rows(csv_path, what="manifest")
    columns = [c.strip().lower() for c in (table[0] if table else _csv_header(csv_path))]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise NeurosynthError(f"manifest {csv_path}: column(s) {', '.join(dupes)} appear twice (case is ignored)")
    raw = [{k.strip().lower(): v.strip() for k, v in row.items()} for row in table]
    missing = [c for c in ["subject", *[r.lower() for r in required]] if c not in columns]
    if missing:
        raise NeurosynthError(
            f"manifest {csv_path} lacks column(s) {', '.join(missing)}; it needs 'subject' and one column per "
            f"modality{' (' + ', '.join(required) + ')' if required else ''}"
        )
    paths = (
        [c.lower() for c in path_columns]
        if path_columns is not None
        else [c for c in columns if c in MODALITIES or c in ("mask", "lesion")]
    )
    rows: list[dict[str, str | Path]] = []
    seen: dict[str | Path, int] = {}
    for i, row in enumerate(raw, start=2):
        out: dict[str, str | Path] = {"subject": row.get("subject") or f"row{i}"}
        for c in paths:
            if row.get(c):
                p = Path(row[c]).expanduser()
                p = p if p.is_absolute() else csv_path.parent / p
                if must_exist and not p.exists():
                    raise NeurosynthError(f"manifest {csv_path}: subject {out['subject']!r} refers to missing file {p}")
                out[c] = p
        if out["subject"] in seen:
            raise NeurosynthError(
                f"manifest {csv_path} line {i}: subject {out['subject']!r} also appears on line "
                f"{seen[out['subject']]}; each subject may appear once"
            )
        seen[out["subject"]] = i
        rows.append(out)
    return rows


def _csv_header(csv_path: Path) -> list[str]:
    """The header of a CSV that has no data rows (already checked to be readable)."""
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh), [])


def manifest_subjects(csv_path: str | Path) -> list[Subject]:
    """Subjects from a CSV manifest: ``subject,t1,t2,flair,...,mask,lesion`` (paths relative to the CSV)."""
    rows = read_manifest(csv_path, must_exist=True)
    modalities = [c for c in MODALITIES if any(c in r for r in rows)]
    if rows and not modalities:
        raise NeurosynthError(f"manifest {csv_path} has no modality column; add columns such as t1,t2,flair")
    subjects = []
    for row in rows:
        images = {m: _read(Path(row[m])) for m in modalities if m in row}
        brain = np.asarray(_read(Path(row["mask"])).data) > 0 if "mask" in row else None
        lesion = np.rint(np.asarray(_read(Path(row["lesion"])).data)).astype(np.uint8) if "lesion" in row else None
        subjects.append(Subject(str(row["subject"]), images, brain, lesion, {"source": "manifest"}))
    if not subjects:
        raise NeurosynthError(f"manifest {csv_path} lists no subjects")
    return subjects


def load_subjects(
    source: str | Path,
    modalities: Sequence[str] | None = None,
    resolution: float | str | Sequence = 2.0,
    randomize: bool = False,
    **phantom_options,
) -> list[Subject]:
    """Subjects from a data specification, resampled onto the grid of the first of ``modalities``.

    Parameters
    ----------
    source : str or Path
        ``"phantom:SEEDS"``, a BraTS or IXI folder, or a ``.csv`` manifest.
    modalities : sequence of str, optional
        Modalities the caller needs (inputs then output); each subject must have
        them all, and all are brought onto the first one's grid.
    resolution : float, str or sequence of them
        Phantom voxel size(s) in mm (phantom sources only), e.g. ``[2, "1x1x3"]``.
    randomize : bool
        Phantom sources only: domain randomisation of each subject's acquisition
        (:func:`phantom_subjects`).
    **phantom_options
        Phantom sources only: further :func:`make_phantom` options.

    Examples
    --------
    >>> subjects = load_subjects("phantom:0", ["t1", "t2"], resolution=3.0)  # doctest: +SKIP
    """
    text = str(source)
    if text.startswith("phantom:"):
        subjects = phantom_subjects(
            parse_seeds(text[len("phantom:") :]), resolution, randomize=randomize, **phantom_options
        )
    else:
        path = Path(text)
        if path.suffix.lower() == ".csv":
            subjects = manifest_subjects(path)
        elif path.is_dir():
            names = [p.name for p in path.rglob("*.nii*")]
            if any(_IXI.match(n) for n in names):
                subjects = ixi_subjects(path)
            else:
                subjects = brats_subjects(path)
        else:
            raise NeurosynthError(
                f"cannot read training data from {text!r}: give phantom:SEEDS, a BraTS/IXI folder or a .csv manifest"
            )
    if modalities:
        for s in subjects:
            s.require(modalities)
        subjects = [s.on_grid_of(modalities[0], keep=modalities) for s in subjects]
        for s in subjects:
            ref = s.images[modalities[0]]
            for label, m in (("brain mask", s.brain_mask), ("lesion mask", s.lesion_mask)):
                if m is not None and m.shape != ref.shape:
                    raise NeurosynthError(
                        f"subject {s.name!r}: the {label} has shape {m.shape} but {modalities[0]} has {ref.shape}"
                    )
    return subjects


# --------------------------------------------------------------------------- sampling


@dataclass
class PreparedSubject:
    """A subject as normalised float32 stacks ``(S, H, W)`` with the slicing axis first."""

    name: str
    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    lesion: np.ndarray | None
    brain_slices: np.ndarray


def normalized_modalities(
    subject: Subject, modalities: Sequence[str], normalization: dict | None, axis: int
) -> dict[str, NDArray[np.float32]]:
    """Each modality divided by its engine scale (:func:`input_scale`), ``axis`` moved first.

    Non-finite voxels are refused, naming the subject and modality.
    """
    arrays = {}
    for m in modalities:
        data = np.asarray(subject.images[m].data, np.float32)
        if not np.isfinite(data).all():
            raise NeurosynthError(f"subject {subject.name!r}: {m} has NaN or Inf voxels; fix or drop it")
        arrays[m] = normalized_stack(data, axis, input_scale(data, normalization))
    return arrays


def prepare(
    subject: Subject,
    modalities: Sequence[str],
    normalization: dict | None = None,
    plane: str = "axial",
    min_brain_fraction: float = 0.05,
) -> PreparedSubject:
    """Normalise each modality (as the engine does) and put the slicing axis first.

    Each volume is divided by its own :func:`intensity_scale`; slices whose brain
    area is below ``min_brain_fraction`` of the largest brain slice are not sampled.
    """
    subject.require(modalities)
    ref = subject.images[modalities[0]]
    axis = slice_axis(ref.affine, plane)
    arrays = normalized_modalities(subject, modalities, normalization, axis)
    mask = np.moveaxis(subject.mask(), axis, 0)
    lesion = None if subject.lesion_mask is None else np.moveaxis(subject.lesion_mask, axis, 0)
    area = mask.reshape(mask.shape[0], -1).sum(1)
    keep = np.flatnonzero(area >= max(1, min_brain_fraction * area.max()))
    if keep.size == 0:
        raise NeurosynthError(f"subject {subject.name!r} has an empty brain mask; nothing to train on")
    return PreparedSubject(subject.name, arrays, mask, lesion, keep)


class SliceSampler:
    """Random 2-D patches from inside the brain, with 2.5-D context as channels.

    Parameters
    ----------
    subjects : list of PreparedSubject
        From :func:`prepare`, holding every modality in ``inputs`` and ``output``.
    inputs : sequence of str
        Input modalities in card order; each contributes ``2 * context + 1`` channels.
    output : str or None
        Target modality (``None`` for input-only sampling, e.g. the unpaired domains).
    context : int
        Neighbour slices on each side.
    patch : int
        Patch edge in pixels; slices smaller than that are zero-padded.
    rng : numpy.random.Generator
        The only randomness used, so sampling is reproducible from a seed.
    flips : bool
        Augmentation: each patch is mirrored along each in-plane axis with probability
        1/2 (inputs, target and mask together). A head is nearly symmetric left-right,
        and flipping the other in-plane axis too makes the lesion and nucleus
        positions a model learns less tied to one place in the slice.

    Examples
    --------
    >>> # x, y, m = sampler.batch(8)  -> (8, C, P, P), (8, 1, P, P), (8, 1, P, P)
    """

    def __init__(self, subjects, inputs, output, context=1, patch=64, rng=None, flips: bool = False):
        if not subjects:
            raise NeurosynthError("no training subjects")
        self.subjects = list(subjects)
        self.inputs = list(inputs)
        self.output = output
        self.context = int(context)
        self.patch = int(patch)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.flips = bool(flips)

    def _window(self, size: int, centre: int) -> tuple[int, int]:
        if size <= self.patch:
            return 0, size
        start = int(np.clip(centre - self.patch // 2, 0, size - self.patch))
        return start, start + self.patch

    def sample(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """One patch: inputs ``(C, P, P)``, target ``(1, P, P)`` or None, brain mask ``(1, P, P)``."""
        subj = self.subjects[int(self.rng.integers(len(self.subjects)))]
        s = int(subj.brain_slices[int(self.rng.integers(len(subj.brain_slices)))])
        ys, xs = np.nonzero(subj.mask[s])
        k = int(self.rng.integers(len(ys)))  # centre the patch on a random brain voxel
        H, W = subj.mask.shape[1:]
        y0, y1 = self._window(H, int(ys[k]))
        x0, x1 = self._window(W, int(xs[k]))
        P = self.patch
        # the engine's own stacking (slicing.stack_batch): same context order, edges, padding
        x = stack_batch([subj.arrays[m] for m in self.inputs], [s], self.context, box=(y0, y1, x0, x1), size=(P, P))[0]
        m = np.zeros((1, P, P), np.float32)
        m[0, : y1 - y0, : x1 - x0] = subj.mask[s, y0:y1, x0:x1]
        y = None
        if self.output is not None:
            y = np.zeros((1, P, P), np.float32)
            y[0, : y1 - y0, : x1 - x0] = subj.arrays[self.output][s, y0:y1, x0:x1]
        if self.flips:
            # drawn only when flipping, so runs without flips keep their exact random stream
            for axis in np.flatnonzero(self.rng.random(2) < 0.5):
                x, m = np.flip(x, 1 + axis), np.flip(m, 1 + axis)
                y = None if y is None else np.flip(y, 1 + axis)
            x, m = np.ascontiguousarray(x), np.ascontiguousarray(m)
            y = None if y is None else np.ascontiguousarray(y)
        return x, y, m

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``n`` patches stacked: ``(n, C, P, P)``, ``(n, 1, P, P)`` or None, ``(n, 1, P, P)``."""
        items = [self.sample() for _ in range(n)]
        xs = np.stack([i[0] for i in items])
        ys = None if self.output is None else np.stack([i[1] for i in items if i[1] is not None])
        ms = np.stack([i[2] for i in items])
        return xs, ys, ms
