"""DICOM series as scanners and PACS export them: scan, group, check, read.

A folder exported from a PACS or a scanner console holds several series side by
side (the 3-D series a radiologist wants, localizers, reformats, dose reports),
sometimes a file that did not copy completely, and images in any transfer syntax.
This module

1. **scans** the folder file by file with pydicom (headers only; pixel data is
   deferred), so one unreadable file is skipped and named instead of sinking the
   folder;
2. **groups** frames by SeriesInstanceUID, splits each group by orientation and
   pixel grid, and by echo / temporal position / stack / acquisition where those
   tell stacks at the same positions apart; drops localizers (ImageType
   ``LOCALIZER``, or a single plane of another orientation inside a series) with
   a note;
3. **checks** the geometry from the headers: frames are sorted by their position
   along the slice normal, the spacing must be uniform (or is resampled on
   request), duplicated positions must hold the same image;
4. **reads** the pixels with pydicom (the pylibjpeg plugins decode JPEG, JPEG-LS,
   JPEG 2000 and RLE) and applies Rescale Slope/Intercept per frame.

Enhanced multi-frame MR/CT files are one series of frames like any other (their
per-frame functional groups carry position, orientation, spacing and rescale).

Why not SimpleITK/GDCM: GDCM's series reader stacks every file it is given into
one volume (localizers included), accepts uneven gaps with a message on stderr
only, fails a whole folder on one bad file, and returns big-endian 32-bit pixels
with their halves swapped; pydicom reads all of those right and lets us check.

Geometry follows the project convention (``docs/orientation.md``): the array is
indexed ``data[column, row, slice]`` and ``affine`` maps that index to RAS+ mm.

Examples
--------
>>> from pathlib import Path
>>> from pydicom.data import get_testdata_file
>>> folder = Path(get_testdata_file("MR_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
>>> [s.summary()["size"] for s in list_series(folder)]
[[16, 16, 5]]
>>> [round(v, 4) for v in read_dicom(folder).spacing]
[0.4883, 0.4883, 2.5]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import NeurosynthError, NeurosynthWarning

if TYPE_CHECKING:  # pydicom is imported lazily: napari asks every folder "is this DICOM?"
    from pydicom.dataset import Dataset

    from .io import Volume

__all__ = [
    "DicomFrame",
    "DicomSeries",
    "DicomScan",
    "scan_folder",
    "list_series",
    "read_dicom",
    "is_dicom_file",
    "dicom_files_in",
    "DICOM_EXTENSIONS",
    "UNEVEN_CHOICES",
]

DICOM_EXTENSIONS = (".dcm", ".ima", ".dicom")
UNEVEN_CHOICES = ("refuse", "resample")
#: Direction cosines that differ by less than this belong to one orientation (about 0.06 degrees).
ORIENTATION_TOL = 1e-3
#: Slice positions may jitter by this fraction of the slice spacing and still count as uniform.
JITTER_FRACTION = 0.05
#: ``uneven="resample"`` refuses a gap wider than this many slice spacings (a few missing slices are fine).
MAX_RESAMPLE_GAP = 5
#: Positions closer than this (mm) along the normal are the same slice.
SAME_POSITION_MM = 1e-3

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = [
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
]
_SCAN_CACHE: dict[tuple[Any, ...], DicomScan] = {}


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class DicomFrame:
    """One 2-D image: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None  # index in a multi-frame file; None for a single-frame file
    rows: int
    columns: int
    position: tuple[float, float, float] | None  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    slope: float = 1.0
    intercept: float = 0.0
    stack_key: tuple[tuple[str, Any], ...] = ()  # echo, temporal position, stack, acquisition
    instance: int = 0
    localizer: bool = False
    problem: str | None = None  # why this frame cannot be part of a 3-D volume

    @property
    def name(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name} (frame {self.frame + 1})"


@dataclass
class DicomSeries:
    """One stack of frames that may form a 3-D volume.

    ``id`` is the SeriesInstanceUID, or ``UID/k`` when one UID holds several stacks
    (orientations, echoes, acquisitions); ``index`` is its place in
    :func:`list_series` (what ``read_volume(folder, series=index)`` takes).
    ``problem`` says why it cannot open as 3-D (None when it can).
    """

    uid: str
    id: str
    index: int
    frames: list[DicomFrame]
    description: str = ""
    modality: str = ""
    series_number: int | None = None
    patient_id: str = ""
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    split_by: str = ""

    @property
    def files(self) -> list[Path]:
        return sorted({f.path for f in self.frames})

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def orientation(self) -> str:
        """``axial``, ``coronal``, ``sagittal``, ``oblique`` or ``unknown`` (from the slice normal)."""
        normal = _normal(self.frames[0])
        if normal is None:
            return "unknown"
        axis = int(np.argmax(np.abs(normal)))
        if abs(normal[axis]) < 0.9:  # more than ~25 degrees off every main plane
            return "oblique"
        return ("sagittal", "coronal", "axial")[axis]

    def geometry(self) -> _Geometry:
        """Slice order, spacing and uniformity from the headers (no pixels read)."""
        return _stack_geometry(self)

    def summary(self) -> dict[str, Any]:
        """What ``neurosynth dicom list`` prints for this series."""
        geo = None if self.problem else self.geometry()
        first = self.frames[0]
        ps = first.pixel_spacing
        slices = len(geo.positions) if geo else len({f.position for f in self.frames})
        return {
            "index": self.index,
            "id": self.id,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "orientation": self.orientation,
            "size": [first.columns, first.rows, slices],
            "spacing": [ps[1], ps[0], round(geo.spacing, 4)] if (ps and geo and geo.spacing) else None,
            "files": self.n_files,
            "frames": len(self.frames),
            "uniform": None if geo is None else geo.uneven is None,
            "problem": self.problem or (geo.problem if geo else None),
            "notes": list(self.notes) + (list(geo.notes) if geo else []),
        }


@dataclass
class DicomScan:
    """The result of scanning one folder: its series, the files skipped and why, what was dropped."""

    folder: Path
    series: list[DicomSeries]
    skipped: list[tuple[Path, str]]  # unreadable DICOM files (truncated, broken)
    ignored: list[tuple[Path, str]]  # DICOM without an image: DICOMDIR, SR, RT Plan, ...
    dropped: list[str]  # localizer notes

    def notes(self) -> list[str]:
        """One line per skipped file and dropped localizer, for metadata and the CLI."""
        out = [f"skipped {p.name}: {why}" for p, why in self.skipped]
        return out + list(self.dropped)


@dataclass
class _Geometry:
    order: list[list[DicomFrame]]  # frames per slice position (several = duplicates), sorted
    positions: NDArray[np.float64]  # (n, 3) LPS position of each slice
    along: NDArray[np.float64]  # (n,) position along the slice normal
    spacing: float | None
    uneven: str | None = None  # the gaps that break uniform spacing
    problem: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- finding files


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True for a file with a DICOM extension or the ``DICM`` preamble.

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> is_dicom_file(get_testdata_file("MR_small.dcm")), is_dicom_file(__file__)
    (True, False)
    """
    p = Path(path)
    if p.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files_in(folder: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """DICOM-looking files directly inside ``folder`` (not its subfolders), sorted by name.

    With ``limit``, a quick probe: at most the first 500 entries are looked at
    (napari asks for every folder the user drops).
    """
    found: list[Path] = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return found
    if limit is not None:
        entries = entries[:500]
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if is_dicom_file(entry):
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
    return found


# --------------------------------------------------------------------------- scanning


def _float(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _get(groups: Sequence[Any], sequence: str, keyword: str) -> Any:
    """``keyword`` from the first functional group (per-frame, then shared) that has ``sequence``."""
    for group in groups:
        if group is not None and sequence in group and len(group[sequence].value):
            item = group[sequence].value[0]
            if keyword in item:
                return item[keyword].value
    return None


def _sop_problem(ds: Dataset) -> str | None:
    """Objects with pixels that are not a grey-scale image stack (checked before geometry)."""
    modality = str(ds.get("Modality", "")).upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if modality == "SEG":
        return "a DICOM Segmentation (SEG) object, not an image volume; it is not supported"
    if modality == "RTDOSE":
        return "an RT Dose grid, not an image volume; it is not supported"
    if "MOSAIC" in image_type:
        return "a Siemens mosaic (slices tiled in one image); convert it with dcm2niix first"
    if _int(ds.get("SamplesPerPixel", 1), 1) > 1:
        photometric = ds.get("PhotometricInterpretation", "colour")
        return f"a colour ({photometric}) image, not a grey-scale MR/CT volume"
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return "a palette-colour image, not a grey-scale MR/CT volume"
    return None


def _frames_of(path: Path, ds: Dataset) -> list[DicomFrame]:
    """Every frame of one dataset with the geometry and rescale that apply to it."""
    rows, columns = _int(ds.get("Rows")), _int(ds.get("Columns"))
    n_frames = max(_int(ds.get("NumberOfFrames", 1), 1), 1)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    localizer = "LOCALIZER" in image_type
    problem = _sop_problem(ds)
    common: dict[str, Any] = {"path": path, "rows": rows, "columns": columns, "localizer": localizer}
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == n_frames:
        # enhanced multi-frame: each frame's functional groups, falling back to the shared ones
        frames = []
        for i, pf in enumerate(per_frame):
            groups = (pf, shared)
            stack = (
                ("stack", _get(groups, "FrameContentSequence", "StackID")),
                ("temporal position", _get(groups, "FrameContentSequence", "TemporalPositionIndex")),
                ("echo", _get(groups, "MREchoSequence", "EffectiveEchoTime")),
            )
            frames.append(
                DicomFrame(
                    frame=i,
                    position=_floats(_get(groups, "PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                    orientation=_floats(_get(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                    pixel_spacing=_floats(_get(groups, "PixelMeasuresSequence", "PixelSpacing"), 2),  # type: ignore[arg-type]
                    slope=_float(_get(groups, "PixelValueTransformationSequence", "RescaleSlope"), 1.0),
                    intercept=_float(_get(groups, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0),
                    stack_key=tuple((k, v) for k, v in stack if v is not None),
                    instance=_int(_get(groups, "FrameContentSequence", "InStackPositionNumber"), i),
                    problem=problem,
                    **common,
                )
            )
        return frames
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if problem is None and n_frames > 1:
        problem = "a multi-frame image without per-frame positions, so its geometry is unknown; not a 3-D stack"
    stack = (
        ("echo", ds.get("EchoNumbers")),
        ("temporal position", ds.get("TemporalPositionIdentifier")),
        ("acquisition", ds.get("AcquisitionNumber")),
    )
    frame = DicomFrame(
        frame=None if n_frames == 1 else 0,
        position=position,  # type: ignore[arg-type]
        orientation=orientation,
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slope=_float(ds.get("RescaleSlope"), 1.0),
        intercept=_float(ds.get("RescaleIntercept"), 0.0),
        stack_key=tuple((k, str(v)) for k, v in stack if v not in (None, "")),
        instance=_int(ds.get("InstanceNumber")),
        problem=problem,
        **common,
    )
    return [frame]


def _expected_bytes(ds: Dataset) -> int:
    bits = _int(ds.get("BitsAllocated", 16), 16)
    n = _int(ds.get("Rows")) * _int(ds.get("Columns")) * _int(ds.get("SamplesPerPixel", 1), 1)
    n *= max(_int(ds.get("NumberOfFrames", 1), 1), 1)
    return (n * bits + 7) // 8


def _pixel_problem(path: Path, ds: Dataset) -> str | None:
    """Why the pixel data of a file cannot be decoded (truncated, missing), from the header alone."""
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if raw is None:
        return None
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return "no Transfer Syntax UID in its file meta header, so its pixels cannot be decoded"
    if syntax.is_deflated or _int(ds.get("SamplesPerPixel", 1), 1) > 1:
        return None  # offsets are into the inflated stream / colour sizes depend on subsampling
    if length is not None and tell is not None and length != 0xFFFFFFFF and tell + length > path.stat().st_size:
        return f"truncated: the pixel data needs {length} bytes, the file ends after {path.stat().st_size - tell}"
    if not syntax.is_encapsulated and length not in (None, 0xFFFFFFFF) and length < _expected_bytes(ds):
        return f"truncated: {length} bytes of pixel data, {_expected_bytes(ds)} expected from its header"
    return None


def _scan_file(path: Path) -> tuple[str, Any]:
    """``("frames", (ds_info, frames))``, ``("skipped", reason)``, ``("ignored", reason)`` or ``("none", "")``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values it still reads
            ds = pydicom.dcmread(path, defer_size=4096)
    except InvalidDicomError:
        if is_dicom_file(path):
            return "skipped", "not a readable DICOM file (no DICOM file header)"
        return "none", ""
    except Exception as exc:
        return "skipped", f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    sop = str(getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "")))
    if "Directory" in sop or "DirectoryRecordSequence" in ds:
        return "ignored", "a DICOMDIR index"
    if _PIXEL_DATA not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        what = f"a {sop} object" if sop else "this file"
        if "Image" in sop:
            return "skipped", f"no pixel data ({what}: header only, or truncated)"
        return "ignored", f"no pixel data ({what}, not an image)"
    problem = _pixel_problem(path, ds)
    if problem:
        return "skipped", problem
    info = {
        "uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "description": str(ds.get("SeriesDescription", "") or ""),
        "modality": str(ds.get("Modality", "") or ""),
        "series_number": _int(ds.get("SeriesNumber"), -1),
        "patient_id": str(ds.get("PatientID", "") or ""),
    }
    try:
        frames = _frames_of(path, ds)
    except Exception as exc:  # a malformed sequence or value pydicom could not parse
        return "skipped", f"unreadable header ({type(exc).__name__}: {exc})"[:200]
    return "frames", (info, frames)


def _signature(files: Iterable[Path]) -> tuple[Any, ...]:
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def scan_folder(folder: str | os.PathLike[str]) -> DicomScan:
    """Scan the files directly inside ``folder`` and group them into series.

    Each file is read on its own (headers; pixel data deferred), so an
    unreadable file lands in ``skipped`` with its reason and the others still
    group. Results are cached per folder until a file changes.

    Examples
    --------
    >>> import pathlib, shutil, tempfile
    >>> from pydicom.data import get_testdata_file
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = shutil.copy(get_testdata_file("MR_small.dcm"), folder)
    >>> (folder / "broken.dcm").write_bytes(b"not dicom at all")
    16
    >>> scan = scan_folder(folder)
    >>> [(s.index, s.modality, s.n_files, s.problem) for s in scan.series]
    [(0, 'MR', 1, 'MR_small.dcm is a 2-D image (a single 64x64 slice); open the folder holding the whole 3-D series')]
    >>> scan.notes()
    ['skipped broken.dcm: not a readable DICOM file (no DICOM file header)']
    """
    folder = Path(folder)
    candidates = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise NeurosynthError(f"cannot list folder {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        if not entry.name.startswith(".") and entry.is_file():
            candidates.append(entry)
    key = (str(folder.resolve()), _signature(candidates))
    if key in _SCAN_CACHE:
        return _SCAN_CACHE[key]
    skipped, ignored = [], []
    by_uid: dict[str, tuple[dict[str, Any], list[DicomFrame]]] = {}
    for path in candidates:
        kind, payload = _scan_file(path)
        if kind == "skipped":
            skipped.append((path, payload))
        elif kind == "ignored":
            ignored.append((path, payload))
        elif kind == "frames":
            info, frames = payload
            uid = info["uid"] or f"(no SeriesInstanceUID: {path.name})"
            by_uid.setdefault(uid, (info, []))[1].extend(frames)
    series: list[DicomSeries] = []
    dropped: list[str] = []
    for uid, (info, frames) in by_uid.items():
        series.extend(_split_series(uid, info, frames, dropped))
    series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.description, s.id))
    for i, s in enumerate(series):
        s.index = i
    scan = DicomScan(folder, series, skipped, ignored, dropped)
    if len(_SCAN_CACHE) > 16:
        _SCAN_CACHE.clear()
    _SCAN_CACHE[key] = scan
    return scan


# --------------------------------------------------------------------------- grouping


def _normal(frame: DicomFrame) -> NDArray[np.float64] | None:
    if frame.orientation is None:
        return None
    row, col = np.array(frame.orientation[:3]), np.array(frame.orientation[3:])
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 1e-6 else None


def _along(frame: DicomFrame, normal: NDArray[np.float64] | None) -> float:
    """Position of a frame along the slice normal (mm)."""
    if frame.position is None or normal is None:
        return float("nan")
    return float(np.dot(np.asarray(frame.position, dtype=np.float64), normal))


def _cluster(frames: list[DicomFrame], key: Callable[[DicomFrame], Any]) -> list[list[DicomFrame]]:
    groups: dict[Any, list[DicomFrame]] = {}
    for f in frames:
        groups.setdefault(key(f), []).append(f)
    return list(groups.values())


def _orientation_clusters(frames: list[DicomFrame]) -> list[list[DicomFrame]]:
    """Frames grouped by ImageOrientationPatient within :data:`ORIENTATION_TOL`."""
    clusters: list[tuple[NDArray[np.float64], list[DicomFrame]]] = []
    for f in frames:
        o = np.array(f.orientation)
        for ref, members in clusters:
            if np.max(np.abs(ref - o)) < ORIENTATION_TOL:
                members.append(f)
                break
        else:
            clusters.append((o, [f]))
    return [m for _, m in clusters]


def _has_duplicates(frames: list[DicomFrame]) -> bool:
    normal = _normal(frames[0])
    if normal is None:
        return False
    along = np.sort([_along(f, normal) for f in frames if f.position is not None])
    return bool(np.any(np.diff(along) < SAME_POSITION_MM))


def _split_stacks(frames: list[DicomFrame]) -> tuple[list[list[DicomFrame]], str]:
    """Split frames at repeated positions by the first stack key that separates them."""
    if not _has_duplicates(frames):
        return [frames], ""
    names = [k for k, _ in frames[0].stack_key]
    for name in names:

        def by_name(f: DicomFrame, name: str = name) -> Any:
            return dict(f.stack_key).get(name)

        groups = _cluster(frames, by_name)
        if len(groups) > 1 and not any(_has_duplicates(g) for g in groups):
            return groups, name
    groups = _cluster(frames, lambda f: f.stack_key)
    if len(groups) > 1 and not any(_has_duplicates(g) for g in groups):
        return groups, "+".join(names)
    return [frames], ""


def _split_series(uid: str, info: dict[str, Any], frames: list[DicomFrame], dropped: list[str]) -> list[DicomSeries]:
    """One SeriesInstanceUID -> its stacks (orientation, grid, echo/acquisition), localizers dropped."""
    label = info["description"] or uid
    kept = [f for f in frames if not f.localizer]
    if len(kept) < len(frames):
        n = len(frames) - len(kept)
        dropped.append(f"dropped {n} localizer image(s) of series {label!r} (ImageType LOCALIZER)")
    if not kept:
        return []
    bad = [f for f in kept if f.problem or f.position is None or f.orientation is None or f.pixel_spacing is None]
    good = [f for f in kept if f not in bad]
    stacks: list[tuple[list[DicomFrame], str, str | None]] = []
    if bad:
        f = bad[0]
        problem = f.problem or (
            "has no patient geometry (Image Position/Orientation (Patient) or Pixel Spacing missing), "
            "so its place in the patient is unknown; it cannot be read as a 3-D volume"
        )
        stacks.append((bad, "", f"{f.path.name} is {problem}" if f.problem else f"{f.path.name} {problem}"))
    clusters = []
    for cluster in _orientation_clusters(good):
        clusters.extend(_cluster(cluster, lambda f: (f.rows, f.columns, f.pixel_spacing)))
    if len(clusters) > 1:
        singles = [c for c in clusters if len(c) == 1]
        if len(singles) < len(clusters):  # a single plane beside a real stack is a localizer
            for c in singles:
                dropped.append(
                    f"dropped {c[0].name} of series {label!r}: a single plane of another orientation (localizer)"
                )
            clusters = [c for c in clusters if len(c) > 1]
    for cluster in clusters:
        groups, by = _split_stacks(cluster)
        stacks.extend((stack, by, None) for stack in groups)
    out = []
    for k, (stack, by, stack_problem) in enumerate(stacks):
        sid = uid if len(stacks) == 1 else f"{uid}/{k + 1}"
        s = DicomSeries(
            uid=uid,
            id=sid,
            index=0,
            frames=stack,
            description=info["description"],
            modality=info["modality"],
            series_number=None if info["series_number"] < 0 else info["series_number"],
            patient_id=info["patient_id"],
            problem=stack_problem,
            split_by=by,
        )
        if by:
            s.notes.append(f"split from series {uid} by {by}")
        if s.problem is None:
            geo = s.geometry()
            s.problem = geo.problem
            if len(geo.positions) == 1 and not geo.problem:
                first = stack[0]
                s.problem = (
                    f"{first.path.name} is a 2-D image (a single {first.columns}x{first.rows} slice); "
                    "open the folder holding the whole 3-D series"
                )
        out.append(s)
    return out


# --------------------------------------------------------------------------- geometry


def _stack_geometry(series: DicomSeries) -> _Geometry:
    """Sort by position along the normal, group duplicates, check that the spacing is uniform."""
    frames = series.frames
    normal = _normal(frames[0])
    assert normal is not None  # only stacks with geometry get here
    along_all = np.array([_along(f, normal) for f in frames])
    order = np.lexsort((np.array([f.instance for f in frames]), along_all))
    slices: list[list[DicomFrame]] = []
    along: list[float] = []
    for i in order:
        if along and along_all[i] - along[-1] < SAME_POSITION_MM:
            slices[-1].append(frames[i])
        else:
            slices.append([frames[i]])
            along.append(float(along_all[i]))
    positions = np.array([s[0].position for s in slices], dtype=np.float64)
    geo = _Geometry(slices, positions, np.array(along), None)
    n_dup = sum(len(s) - 1 for s in slices)
    if n_dup:
        geo.notes.append(f"{n_dup} frame(s) repeat a slice position (kept one per position if they are identical)")
    if len(slices) < 2:
        return geo
    gaps = np.diff(geo.along)
    step = float(np.median(gaps))
    geo.spacing = step
    tol = JITTER_FRACTION * step
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if bad.size:
        shown = ", ".join(
            f"{gaps[i]:.3g} mm between {geo.along[i]:.2f} and {geo.along[i + 1]:.2f} "
            f"({slices[i][0].name} -> {slices[i + 1][0].name})"
            for i in bad[:3]
        )
        more = f" and {bad.size - 3} more" if bad.size > 3 else ""
        geo.uneven = f"slice gaps of {step:.3g} mm except {shown}{more}"
        return geo
    # positions must lie on one line (a stack, not a set of shifted planes); gantry tilt is a line too
    k = np.arange(len(slices), dtype=np.float64)
    fit = _line_fit(k, positions)
    residual = np.linalg.norm(positions - fit[0] - np.outer(k, fit[1]), axis=1)
    if float(residual.max()) > tol:
        i = int(np.argmax(residual))
        geo.problem = (
            f"series {series.description or series.id!r}: slice {slices[i][0].name} is {residual[i]:.2f} mm off "
            "the line through the other slice positions; the frames do not form one 3-D stack"
        )
    return geo


def _line_fit(
    k: NDArray[np.float64], positions: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares ``positions ~ origin + k * step`` (origin, step), so sub-voxel jitter averages out."""
    design = np.stack([np.ones_like(k), k], axis=1)
    coef, *_ = np.linalg.lstsq(design, positions, rcond=None)
    return coef[0], coef[1]


def _in_plane(frame: DicomFrame) -> NDArray[np.float64]:
    """LPS columns for the column and row index: row cosines x column spacing, column cosines x row spacing."""
    assert frame.orientation is not None and frame.pixel_spacing is not None
    row_dir, col_dir = np.array(frame.orientation[:3]), np.array(frame.orientation[3:])
    row_spacing, col_spacing = frame.pixel_spacing
    return np.stack([row_dir * col_spacing, col_dir * row_spacing], axis=1)


# --------------------------------------------------------------------------- pixels


class _PixelCache:
    """Decoded pixel arrays per file, so a multi-frame file is decoded once."""

    def __init__(self) -> None:
        self._arrays: dict[Path, NDArray[Any]] = {}

    def frame(self, f: DicomFrame) -> NDArray[Any]:
        if f.path not in self._arrays:
            import pydicom

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # only what decoding needs: skipping the functional groups of an enhanced file saves seconds
                    ds = pydicom.dcmread(f.path, specific_tags=_PIXEL_TAGS)
                    self._arrays[f.path] = ds.pixel_array
            except Exception as exc:
                reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                raise NeurosynthError(f"cannot decode the pixels of {f.path.name}: {reason}") from None
        arr = self._arrays[f.path]
        return arr if f.frame is None else arr[f.frame]


def _rescaled(frames: list[DicomFrame], pixels: list[NDArray[Any]]) -> NDArray[Any]:
    """Stack (k, row, col) with Rescale Slope/Intercept per frame; integers stay integers when they can."""
    stack = np.stack(pixels)
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    if np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts)) and np.issubdtype(stack.dtype, np.integer):
        if np.all(intercepts == 0):
            return stack
        out = stack.astype(np.int64) + intercepts.astype(np.int64)[:, None, None]
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if out.size and info.min <= out.min() and out.max() <= info.max:
                return out.astype(dtype)
        return out
    out64 = stack.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]
    return out64.astype(np.float32)


def _resample_uneven(data: NDArray[Any], along: NDArray[np.float64], step: float) -> tuple[NDArray[Any], int]:
    """Linear interpolation of (k, row, col) slices at ``along`` onto a uniform grid of ``step`` mm."""
    n = round((along[-1] - along[0]) / step) + 1
    target = np.linspace(along[0], along[-1], n)
    hi = np.clip(np.searchsorted(along, target, side="right"), 1, len(along) - 1)
    lo = hi - 1
    w = ((target - along[lo]) / (along[hi] - along[lo]))[:, None, None]
    src = data.astype(np.float32)
    return (src[lo] * (1 - w) + src[hi] * w).astype(np.float32), n


# --------------------------------------------------------------------------- public API


def list_series(path: str | os.PathLike[str]) -> list[DicomSeries]:
    """The series in a DICOM folder (or the folder of one DICOM file), in display order.

    Examples
    --------
    >>> from pathlib import Path
    >>> from pydicom.data import get_testdata_file
    >>> folder = Path(get_testdata_file("MR_small.dcm")).parent / "dicomdirtests" / "77654033" / "CT2"
    >>> [(s.modality, s.orientation, s.summary()["size"], s.summary()["uniform"]) for s in list_series(folder)]
    [('CT', 'axial', [16, 16, 4], False)]
    """
    p = Path(path)
    return scan_folder(p if p.is_dir() else p.parent).series


def _choose(scan: DicomScan, path: Path, series: int | str | None, metadata: dict[str, Any]) -> DicomSeries:
    """The series to read: asked for by index or UID, the file's own, or the largest that opens."""
    if not scan.series:
        reasons = "; ".join(scan.notes() + [f"{p.name}: {why}" for p, why in scan.ignored][:5])
        where = path.name if path.is_file() else f"folder {path}"
        raise NeurosynthError(f"no DICOM image series in {where}" + (f" ({reasons})" if reasons else ""))
    listing = ", ".join(f"{s.index}: {s.description or s.id} ({s.n_files} files)" for s in scan.series)
    if series is not None:
        if isinstance(series, (int, np.integer)) or (isinstance(series, str) and series.isdigit()):
            i = int(series)
            if not 0 <= i < len(scan.series):
                raise NeurosynthError(f"{path.name} has no series {i}; the series are {listing}")
            return scan.series[i]
        matches = [s for s in scan.series if s.id == series] or [s for s in scan.series if s.uid == series]
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(f"{s.index} ({s.id}: {s.orientation}, {len(s.frames)} frames)" for s in matches)
            raise NeurosynthError(f"series {series} holds {len(matches)} stacks; pick one by index or id: {ids}")
        raise NeurosynthError(f"no series {series!r} in {path.name}; the series are {listing}")
    if path.is_file():
        own = [s for s in scan.series if any(f.path.resolve() == path.resolve() for f in s.frames)]
        if own:
            chosen = own[0]
            if chosen.n_files > 1:
                metadata["dicom_note"] = f"read the whole series ({chosen.n_files} files) containing {path.name}"
            return chosen
        why = [r for p, r in scan.skipped if p.resolve() == path.resolve()]
        if why:
            raise NeurosynthError(f"cannot read {path.name}: {why[0]}")
        why = [r for p, r in scan.ignored if p.resolve() == path.resolve()]
        if why:
            raise NeurosynthError(f"{path.name} holds {why[0]}; open an image series")
        dropped = [d for d in scan.dropped if path.name in d]
        raise NeurosynthError(f"{path.name} is not part of an image series" + (f" ({dropped[0]})" if dropped else ""))
    openable = [s for s in scan.series if s.problem is None]
    pool = openable or scan.series
    chosen = max(pool, key=lambda s: (len(s.frames), -s.index))
    if len(scan.series) > 1:
        others = ", ".join(f"{s.id} ({s.n_files} files)" for s in scan.series if s is not chosen)
        _warn(
            metadata,
            f"folder {path.name} holds {len(scan.series)} DICOM series; opened the largest, {chosen.id} "
            f"({chosen.n_files} files); others: {others}; pick one with series= (CLI: neurosynth dicom list)",
        )
        metadata["dicom_series"] = {s.id: s.n_files for s in scan.series}
    return chosen


def _warn(metadata: dict[str, Any], message: str) -> None:
    metadata.setdefault("warnings", []).append(message)
    warnings.warn(message, NeurosynthWarning, stacklevel=4)


def _dedupe(
    series: DicomSeries, geo: _Geometry, cache: _PixelCache, metadata: dict[str, Any]
) -> tuple[list[DicomFrame], list[NDArray[Any]]]:
    """One frame per position; copies must hold the same values (e.g. one slice in several encodings)."""
    frames, pixels, dropped = [], [], []
    for copies in geo.order:
        first = copies[0]
        ref = _rescaled([first], [cache.frame(first)])[0] if len(copies) > 1 else None
        for other in copies[1:]:
            values = _rescaled([other], [cache.frame(other)])[0]
            if ref is None or values.shape != ref.shape or not np.array_equal(values, ref):
                raise NeurosynthError(
                    f"series {series.description or series.id!r} has different images at one position "
                    f"({_along(first, _normal(first)):.2f} mm along the normal): "
                    f"{first.name} and {other.name}; separate them, or pick a series with series="
                )
            dropped.append(other.name)
        frames.append(first)
        pixels.append(cache.frame(first))
    if dropped:
        _warn(metadata, f"kept one of each identical slice; dropped duplicate(s) {', '.join(dropped[:5])}")
    return frames, pixels


def read_dicom(
    path: str | os.PathLike[str],
    series: int | str | None = None,
    uneven: str = "refuse",
    metadata: dict[str, Any] | None = None,
) -> Volume:
    """Read one DICOM series as a :class:`~napari_neurosynth.io.Volume` (index -> RAS+ mm).

    Parameters
    ----------
    path : str or os.PathLike
        A folder, or one DICOM file (its series in its folder is read).
    series : int or str, optional
        An index from :func:`list_series` / ``neurosynth dicom list``, or a
        SeriesInstanceUID (``UID/k`` for one stack of a split series). Default:
        the file's own series, or the largest series that opens.
    uneven : {"refuse", "resample"}
        What to do when slice gaps differ by more than 5 % of the spacing:
        refuse with the positions that break it, or interpolate linearly onto a
        uniform grid at the median gap (with a warning in ``metadata``).
    metadata : dict, optional
        Filled in place (``warnings``, ``dicom``, ...) and attached to the volume.

    Returns
    -------
    Volume
        ``data[column, row, slice]``; rescaled values (integers when slope 1 and
        an integral intercept, else float32).

    Examples
    --------
    >>> from pathlib import Path
    >>> from pydicom.data import get_testdata_file
    >>> studies = Path(get_testdata_file("MR_small.dcm")).parent / "dicomdirtests"
    >>> vol = read_dicom(studies / "98892001" / "CT5N")
    >>> vol.shape, vol.metadata["dicom"]["modality"], vol.metadata["dicom"]["orientation"]
    ((16, 16, 5), 'CT', 'axial')
    >>> int(vol.data.min()) < 0   # Rescale Intercept -1024 applied: Hounsfield units
    True

    This folder holds slices 18 and 180-182 of a head CT; they are not one uniform stack:

    >>> read_dicom(studies / "77654033" / "CT2")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: series 'Routine Brain' has uneven slice spacing (slice gaps of 1.25 mm
    except 202 mm between -99.48 and 103.02 (17106 -> 17136)); read it with uneven='resample' ...
    >>> read_dicom(studies, uneven="guess")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: uneven='guess': choose one of refuse, resample
    """
    from .io import Volume

    if uneven not in UNEVEN_CHOICES:
        raise NeurosynthError(f"uneven={uneven!r}: choose one of {', '.join(UNEVEN_CHOICES)}")
    p = Path(path)
    metadata = metadata if metadata is not None else {"source_path": str(p), "format": "dicom", "warnings": []}
    metadata.setdefault("warnings", [])
    scan = scan_folder(p if p.is_dir() else p.parent)
    chosen = _choose(scan, p, series, metadata)
    if chosen.problem:
        raise NeurosynthError(chosen.problem)
    for note in scan.notes():
        if p.is_dir() or "skipped" not in note:
            _warn(metadata, note)
    if scan.skipped:
        metadata["skipped_files"] = {q.name: why for q, why in scan.skipped}
    geo = chosen.geometry()
    label = chosen.description or chosen.id
    if geo.uneven and uneven == "refuse":
        raise NeurosynthError(
            f"series {label!r} has uneven slice spacing ({geo.uneven}); "
            "read it with uneven='resample' (CLI: --uneven resample) to interpolate onto a uniform grid"
        )
    if geo.uneven and geo.spacing and float(np.max(np.diff(geo.along))) > MAX_RESAMPLE_GAP * geo.spacing:
        # interpolating across a long stretch of missing slices would invent anatomy
        raise NeurosynthError(
            f"series {label!r} has uneven slice spacing ({geo.uneven}); a gap of more than "
            f"{MAX_RESAMPLE_GAP} slices is too large to interpolate; read the stacks on either side as separate series"
        )
    cache = _PixelCache()
    frames, pixels = _dedupe(chosen, geo, cache, metadata)
    if any(px.shape != pixels[0].shape for px in pixels):
        raise NeurosynthError(f"series {label!r} mixes image sizes; it is not one 3-D stack")
    data = _rescaled(frames, pixels)  # (k, row, column)
    first = frames[0]
    lin = np.zeros((3, 3))
    lin[:, :2] = _in_plane(first)
    if geo.uneven:
        normal = _normal(first)
        assert normal is not None
        data, n = _resample_uneven(data, geo.along, float(geo.spacing or 1.0))
        step = (geo.along[-1] - geo.along[0]) / (n - 1)
        lin[:, 2] = normal * step
        origin = geo.positions[0]
        _warn(
            metadata,
            f"series {label!r} has uneven slice spacing ({geo.uneven}); resampled {len(frames)} slices "
            f"linearly onto {n} slices of {step:.3g} mm",
        )
        metadata["dicom_resampled"] = {"positions_mm": [round(float(a), 4) for a in geo.along], "step_mm": step}
    else:
        k = np.arange(len(frames), dtype=np.float64)
        origin, lin[:, 2] = _line_fit(k, geo.positions)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ lin
    affine[:3, 3] = _LPS_TO_RAS @ origin
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise NeurosynthError(f"series {label!r} has a degenerate geometry (zero slice spacing)")
    metadata["dicom"] = {
        "n_files": chosen.n_files,
        "n_frames": len(chosen.frames),
        "modality": chosen.modality,
        "series_description": chosen.description,
        "series_instance_uid": chosen.uid,
        "series_id": chosen.id,
        "series_index": chosen.index,
        "series_number": chosen.series_number,
        "patient_id": chosen.patient_id,
        "orientation": chosen.orientation,
    }
    # (k, row, column) -> (column, row, k) as a view: Fortran-ordered, like nibabel's NIfTI arrays
    # (a contiguous copy of a large volume costs seconds and is not needed)
    return Volume(data.transpose(2, 1, 0), affine, metadata)
