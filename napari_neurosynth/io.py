"""Reading and writing medical volumes with their world geometry.

Convention (see ``docs/orientation.md``): ``Volume.affine`` maps *array indices*
of ``Volume.data`` (in the order numpy stores them) to RAS+ millimetres, like
nibabel's affine. Images read through SimpleITK are transposed from its
``(z, y, x)`` array order to ``(x, y, z)`` index order, so one image saved as
NIfTI and as MHA reads back with identical data and affine. SimpleITK works in
LPS; conversions flip the first two world axes (``diag(-1, -1, 1)``).

Formats: NIfTI (``.nii``, ``.nii.gz``) and MGH/MGZ through nibabel; NRRD
(``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK;
DICOM (a series folder, or one file) through pydicom in :mod:`napari_neurosynth.dicom`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .atomic import atomic_path
from .errors import NeurosynthError

if TYPE_CHECKING:  # SimpleITK is imported lazily (plugin discovery must stay cheap)
    import SimpleITK as sitk

__all__ = [
    "Volume",
    "read_volume",
    "write_volume",
    "check_finite",
    "resample_to",
    "same_grid",
    "volume_to_sitk",
    "sitk_to_volume",
    "detect_format",
    "volume_name",
    "SUPPORTED_EXTENSIONS",
    "WRITABLE_EXTENSIONS",
    "LPS_TO_RAS",
]

#: Flip between LPS (ITK, DICOM) and RAS+ (NIfTI, nibabel) world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# extension -> format name; longest extensions first so ".nii.gz" wins over ".gz"
_EXTENSIONS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".dcm": "dicom",
    ".ima": "dicom",
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_EXTENSIONS)
WRITABLE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3-D image with its geometry.

    Parameters
    ----------
    data : numpy.ndarray
        3-D array of voxel values.
    affine : numpy.ndarray
        4x4 matrix from array index (i, j, k, 1) to RAS+ millimetres.
    metadata : dict, optional
        Free-form provenance. :func:`read_volume` fills ``source_path``,
        ``format`` and ``warnings`` (a list of strings, possibly empty).

    Examples
    --------
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> v.spacing
    (2.0, 2.0, 3.0)
    >>> v.shape
    (4, 5, 6)
    >>> v.world((1, 1, 1))
    array([2., 2., 3.])
    >>> v.index([2.0, 2.0, 3.0])
    array([1., 1., 1.])
    >>> v.with_data(np.ones((4, 5, 6)), modality="t1").metadata
    {'modality': 't1'}
    >>> Volume(np.zeros((2, 2, 2)), np.eye(3))
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: affine must be 4x4, got (3, 3)
    >>> Volume(np.zeros((2, 2, 2)), np.full((4, 4), np.nan))
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: affine has NaN/Inf entries; ...
    """

    data: NDArray[Any]
    affine: NDArray[np.float64]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.affine = np.asarray(self.affine, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise NeurosynthError(f"affine must be a 4x4 array of numbers: {exc}") from exc
        if self.affine.shape != (4, 4):
            raise NeurosynthError(f"affine must be 4x4, got {self.affine.shape}")
        if not np.all(np.isfinite(self.affine)):
            raise NeurosynthError("affine has NaN/Inf entries; a volume needs a finite index-to-world matrix")
        data = np.asarray(self.data) if not hasattr(self.data, "dtype") else self.data
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
            raise NeurosynthError(f"volume data must be numeric, got dtype {data.dtype}")
        self.data = data

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (norms of the affine's columns)."""
        sx, sy, sz = (float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))
        return sx, sy, sz

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def with_data(self, data: NDArray[Any], **metadata: Any) -> Volume:
        """A new volume on the same grid holding ``data``."""
        return Volume(data, self.affine.copy(), {**self.metadata, **metadata})

    def world(self, index: ArrayLike) -> NDArray[np.float64]:
        """RAS+ mm coordinates of array index/indices ``index`` (shape ``(..., 3)``)."""
        idx = np.asarray(index, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def index(self, world: ArrayLike) -> NDArray[np.float64]:
        """Continuous array indices of RAS+ mm point(s) ``world`` (shape ``(..., 3)``)."""
        inv = np.linalg.inv(self.affine)
        pts = np.asarray(world, dtype=np.float64)
        return pts @ inv[:3, :3].T + inv[:3, 3]


# --------------------------------------------------------------------------- helpers


def detect_format(path: str | os.PathLike) -> str | None:
    """The format name for ``path`` (``nifti``, ``mgh``, ``nrrd``, ``metaimage``, ``dicom``) or None.

    A folder counts as DICOM when it holds at least one DICOM file; a file without
    a known extension counts as DICOM when it carries the ``DICM`` preamble.

    Examples
    --------
    >>> detect_format("sub-01_T1w.nii.gz"), detect_format("brain.MGZ"), detect_format("t2.mha")
    ('nifti', 'mgh', 'metaimage')
    >>> detect_format("notes.txt") is None
    True
    """
    from .dicom import dicom_files_in, is_dicom_file

    p = Path(path)
    if p.is_dir():
        return "dicom" if dicom_files_in(p, limit=1) else None
    name = p.name.lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    if p.is_file() and is_dicom_file(p):
        return "dicom"
    return None


def volume_name(path: str | os.PathLike) -> str:
    """File name without its (possibly double) extension, e.g. ``t1`` for ``t1.nii.gz``.

    Examples
    --------
    >>> volume_name("data/sub-01/t1.nii.gz"), volume_name("dicom/series_3/"), volume_name("scan.nrrd")
    ('t1', 'series_3', 'scan')
    """
    p = Path(str(path).rstrip("/\\"))
    name = p.name
    lower = name.lower()
    for ext in _EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)] or name
    return name


def _sitk() -> ModuleType:
    import SimpleITK as sitk

    return sitk


def _first_line(exc: BaseException) -> str:
    """The informative part of a library error, on one line."""
    import re

    lines = []
    for ln in str(exc).splitlines():
        ln = ln.strip().lstrip("- ").strip()
        # ITK prefixes the C++ location and appends errno, which is stale and misleading here
        if not ln or ln.startswith("Exception thrown in SimpleITK") or ln.startswith("Reason:"):
            continue
        ln = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", ln)
        ln = re.sub(r"^Description:\s*", "", ln)
        lines.append(ln)
    if len(lines) > 2:  # a nested trace (NRRD): the innermost cause comes last
        lines = lines[-1:]
    return "; ".join(lines)[:200] or type(exc).__name__


def _warn(metadata: dict[str, Any], message: str) -> None:
    metadata.setdefault("warnings", []).append(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _storage_dtype(data: NDArray[Any]) -> NDArray[Any]:
    """float -> float32, bool -> uint8, 64-bit integers -> 32-bit when the values fit."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating) and data.dtype != np.float32:
        return data.astype(np.float32)
    if data.dtype in (np.int64, np.uint64) and data.size:
        lo, hi = data.min(), data.max()
        if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
            return data.astype(np.int32)
    return data


def _to_3d(data: NDArray[Any], metadata: dict[str, Any], path: Path) -> NDArray[Any]:
    """Refuse 2-D images, take the first volume of 4-D series, check for NaN/Inf."""
    # trailing singleton axes (NIfTI 4-D with one volume, (x, y, z, 1, 1)) carry nothing
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3 or min(data.shape[:3]) <= 1:
        raise NeurosynthError(
            f"{path.name} is a 2-D image (shape {tuple(data.shape)}); "
            "open a 3-D volume (for DICOM, the folder holding the whole series)"
        )
    if data.ndim > 3:
        extra = data.shape[3:]
        data = data[(slice(None),) * 3 + (0,) * len(extra)]
        _warn(
            metadata,
            f"{path.name} is a {3 + len(extra)}-D series of shape {tuple(data.shape) + tuple(extra)}; "
            "using only the first volume",
        )
        metadata["original_shape"] = tuple(int(s) for s in data.shape) + tuple(int(s) for s in extra)
    data = _storage_dtype(np.ascontiguousarray(data))
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            _warn(
                metadata,
                f"{path.name} has {bad} NaN/Inf voxel(s); replace them before synthesis or metrics",
            )
            metadata["nonfinite_voxels"] = bad
    return data


def check_finite(volume: Volume | NDArray[Any], what: str | None = None) -> None:
    """Raise :class:`NeurosynthError` when ``volume`` holds NaN or Inf voxels.

    Reading a volume with NaN/Inf succeeds (the voxels are recorded in
    ``metadata["warnings"]``); consumers that need finite input (inference,
    metrics) call this first.

    Examples
    --------
    >>> import numpy as np
    >>> check_finite(np.ones((2, 2, 2)))
    >>> check_finite(np.array([1.0, np.nan]), "t1")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: t1 has 1 NaN/Inf voxel(s); replace them (e.g. numpy.nan_to_num) ...
    >>> bad = Volume(np.full((2, 2, 2), np.inf), np.eye(4), {"source_path": "/data/flair.nii.gz"})
    >>> check_finite(bad)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: flair.nii.gz has 8 NaN/Inf voxel(s); replace them ...
    """
    data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
    if what is None:
        src = volume.metadata.get("source_path") if isinstance(volume, Volume) else None
        what = Path(src).name if src else "the volume"
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise NeurosynthError(
                f"{what} has {bad} NaN/Inf voxel(s); replace them (e.g. numpy.nan_to_num) before using it"
            )


# --------------------------------------------------------------------------- SimpleITK bridge


def sitk_to_volume(
    image: sitk.Image, metadata: dict[str, Any] | None = None, path: str | os.PathLike[str] | None = None
) -> Volume:
    """Convert a SimpleITK image to a :class:`Volume` in (x, y, z) index order and RAS+.

    4-D images keep their first volume and vector images their first component
    (with a warning); 2-D images are refused.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> image = sitk.Image(4, 3, 2, sitk.sitkFloat32)   # x, y, z
    >>> image.SetSpacing((1.0, 2.0, 3.0))
    >>> image.SetOrigin((10.0, 20.0, 30.0))   # LPS millimetres
    >>> vol = sitk_to_volume(image)
    >>> vol.shape, vol.spacing
    ((4, 3, 2), (1.0, 2.0, 3.0))
    >>> vol.world((0, 0, 0))   # RAS+: x and y flip sign
    array([-10., -20.,  30.])
    """
    sitk = _sitk()
    metadata = dict(metadata or {})
    p = Path(path) if path is not None else Path("image")
    dim = image.GetDimension()
    if dim == 2:
        raise NeurosynthError(
            f"{p.name} is a 2-D image (size {image.GetSize()}); open a 3-D volume "
            "(for DICOM, the folder holding the whole series)"
        )
    if dim == 4:
        size = list(image.GetSize())
        metadata["original_shape"] = tuple(size)
        _warn(metadata, f"{p.name} is a 4-D series of {size[3]} volumes; using only the first volume")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    elif dim != 3:
        raise NeurosynthError(f"{p.name} has {dim} dimensions; only 3-D volumes are supported")
    if image.GetNumberOfComponentsPerPixel() > 1:
        n = image.GetNumberOfComponentsPerPixel()
        _warn(metadata, f"{p.name} has {n} components per voxel; using only the first")
        image = sitk.VectorIndexSelectionCast(image, 0)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    # LPS = origin + D @ diag(spacing) @ (i, j, k); RAS = diag(-1, -1, 1) @ LPS
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    # GetArrayFromImage is (z, y, x); transpose to (x, y, z) to match the affine's index order
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    data = _to_3d(data, metadata, p)
    return Volume(data, affine, metadata)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image (LPS geometry, (z, y, x) array order).

    Raises :class:`NeurosynthError` when the affine has shear, which ITK's
    spacing + direction + origin model cannot represent.

    Examples
    --------
    >>> import numpy as np
    >>> affine = np.diag([1.0, 2.0, 3.0, 1.0]); affine[:3, 3] = (-10.0, -20.0, 30.0)
    >>> image = volume_to_sitk(Volume(np.zeros((4, 3, 2), np.float32), affine))
    >>> image.GetSize(), image.GetSpacing(), image.GetOrigin()
    ((4, 3, 2), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0))
    >>> bool(np.allclose(sitk_to_volume(image).affine, affine))
    True
    >>> sheared = np.eye(4); sheared[0, 1] = 0.5
    >>> volume_to_sitk(Volume(np.zeros((2, 2, 2)), sheared))
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: the volume's affine has shear, which ITK ...
    """
    sitk = _sitk()
    data = np.asarray(volume.data)
    if data.ndim != 3:
        raise NeurosynthError(f"expected a 3-D volume, got an array of shape {data.shape}")
    data = _storage_dtype(data)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    lin = volume.affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise NeurosynthError("the volume's affine has a zero-length axis; it cannot describe a voxel grid")
    direction_ras = lin / spacing
    if not np.allclose(direction_ras.T @ direction_ras, np.eye(3), atol=1e-4):
        raise NeurosynthError(
            "the volume's affine has shear, which ITK (NRRD, MetaImage, resampling) cannot represent; "
            "save it as NIfTI (.nii.gz) or reslice it onto an unsheared grid first"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (LPS_TO_RAS @ direction_ras).ravel()])
    image.SetOrigin([float(v) for v in LPS_TO_RAS @ volume.affine[:3, 3]])
    return image


# --------------------------------------------------------------------------- reading


def read_volume(path: str | os.PathLike[str], *, series: int | str | None = None, uneven: str = "refuse") -> Volume:
    """Read a 3-D medical volume with its geometry.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nii``/``.nii.gz``, ``.mgh``/``.mgz``, ``.nrrd``/``.nhdr``,
        ``.mha``/``.mhd`` file, a DICOM series folder, or one DICOM file (a slice
        of a series in its folder reads the whole series).
    series : int or str, optional
        DICOM only: which series of the folder (an index from
        ``neurosynth dicom list`` or a SeriesInstanceUID); see
        :func:`napari_neurosynth.dicom.read_dicom`.
    uneven : {"refuse", "resample"}
        DICOM only: refuse slices with uneven gaps (default) or resample them
        onto a uniform grid, with a warning.

    Returns
    -------
    Volume
        ``data`` in array index order matching ``affine`` (index -> RAS+ mm);
        floats as float32, integers unchanged. ``metadata`` holds
        ``source_path``, ``format`` and ``warnings``.

    Raises
    ------
    NeurosynthError
        Missing file, unsupported type, unreadable/corrupt/truncated file, a 2-D
        image, a folder without DICOM files.

    Notes
    -----
    A 4-D series keeps its first volume; NaN/Inf voxels are kept. Both add a
    line to ``metadata["warnings"]`` and emit a :class:`UserWarning`; use
    :func:`check_finite` where finite input is required.

    Examples
    --------
    A round trip through a temporary NIfTI file keeps data and geometry:

    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> vol = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> back = read_volume(write_volume(vol, folder / "t1.nii.gz"))
    >>> back.shape, back.spacing, back.metadata["format"], back.metadata["warnings"]
    ((2, 3, 4), (2.0, 2.0, 3.0), 'nifti', [])
    >>> bool(np.array_equal(back.data, vol.data)), same_grid(back, vol)
    (True, True)

    MetaImage goes through SimpleITK (LPS) and reads back on the same RAS+ grid:

    >>> mha = read_volume(write_volume(vol, folder / "t1.mha"))
    >>> bool(np.array_equal(mha.data, vol.data)), same_grid(mha, vol)
    (True, True)
    >>> read_volume(folder / "missing.nii.gz")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: file not found: ...missing.nii.gz
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise NeurosynthError(f"file not found: {p}")
    fmt = detect_format(p)
    if fmt is None:
        if p.is_dir():
            raise NeurosynthError(f"no DICOM files in folder {p}; open a folder holding one DICOM series")
        raise NeurosynthError(
            f"unsupported file type: {p.name}; supported: {', '.join(SUPPORTED_EXTENSIONS)} or a DICOM folder"
        )
    if fmt != "dicom" and series is not None:
        raise NeurosynthError(f"series= applies to DICOM folders only, not to {p.name}")
    metadata: dict[str, Any] = {"source_path": str(p), "format": fmt, "warnings": []}
    try:
        if fmt in ("nifti", "mgh"):
            vol = _read_nibabel(p, metadata)
        elif fmt == "dicom":
            from .dicom import read_dicom

            vol = read_dicom(p, series=series, uneven=uneven, metadata=metadata)
        else:
            vol = sitk_to_volume(_sitk().ReadImage(str(p)), metadata, p)
    except NeurosynthError:
        raise
    except MemoryError:
        raise NeurosynthError(f"not enough memory to read {p.name}") from None
    except Exception as exc:  # nibabel / SimpleITK / zlib errors on corrupt or truncated files
        raise NeurosynthError(
            f"cannot read {p.name} as {fmt}: the file is corrupt or truncated ({_first_line(exc)})"
        ) from exc
    if not np.all(np.isfinite(vol.affine)) or abs(np.linalg.det(vol.affine[:3, :3])) < 1e-12:
        raise NeurosynthError(f"{p.name} has an invalid (singular or non-finite) orientation in its header")
    return vol


def _read_nibabel(p: Path, metadata: dict[str, Any]) -> Volume:
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    img = cast(SpatialImage, nib.load(str(p), mmap=False))
    if isinstance(img, nib.Cifti2Image):  # valid, but grayordinates (surface + subcortex), not a voxel grid
        raise NeurosynthError(f"{p.name} is a CIFTI-2 file (data on grayordinates), not a volume; open a NIfTI volume")
    # dataobj applies scl_slope/intercept; integer files without scaling stay integer
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, dtype=np.float64)
    data = _to_3d(np.asarray(data), metadata, p)
    return Volume(data, affine, metadata)


# --------------------------------------------------------------------------- writing


def write_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write ``volume`` with its geometry; the format follows the extension.

    Parameters
    ----------
    volume : Volume
        3-D data and index -> RAS+ affine.
    path : str or os.PathLike
        Ends in ``.nii.gz``, ``.nii``, ``.mgz``, ``.mgh``, ``.nrrd``, ``.nhdr``,
        ``.mha`` or ``.mhd``. Parent folders are created.

    Returns
    -------
    pathlib.Path
        The written path.

    Notes
    -----
    Floats are stored as float32, booleans as uint8; integer labels keep their
    type (64-bit integers narrow to 32-bit when the values fit; MGH, which has
    no 16-bit unsigned or 8-bit signed type, widens them). NIfTI gets both qform
    and sform (code "scanner"). NRRD and MetaImage go through SimpleITK, in LPS.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> labels = Volume(np.zeros((4, 4, 4), bool), np.diag([1.0, 1.0, 2.0, 1.0]))
    >>> write_volume(labels, folder / "out" / "mask.nii.gz").relative_to(folder)
    PosixPath('out/mask.nii.gz')
    >>> read_volume(folder / "out" / "mask.nii.gz").data.dtype   # booleans are stored as uint8
    dtype('uint8')
    >>> write_volume(labels, folder / "mask.png")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: cannot write mask.png: choose one of .nii.gz, ... (DICOM ...)
    """
    p = Path(path).expanduser()
    fmt = detect_format(p) if not p.is_dir() else "dicom"
    if fmt not in ("nifti", "mgh", "nrrd", "metaimage"):
        raise NeurosynthError(
            f"cannot write {p.name}: choose one of {', '.join(WRITABLE_EXTENSIONS)} (DICOM writing is not supported)"
        )
    if not isinstance(volume, Volume):
        raise NeurosynthError(f"write_volume needs a Volume, got {type(volume).__name__}")
    data = np.asarray(volume.data)
    if data.ndim != 3:
        raise NeurosynthError(f"can only write 3-D volumes, got shape {data.shape}")
    data = _storage_dtype(data)
    if fmt in ("nrrd", "metaimage") and p.suffix.lower() in (".nhdr", ".mhd"):
        # A detached header names its data file; a renamed temporary would point at the wrong
        # one, so write both under temporary names and rename the data file first.
        return _write_detached(volume.with_data(data), p, fmt)
    try:
        with atomic_path(p) as tmp:
            if fmt == "nifti":
                import nibabel as nib

                img = nib.Nifti1Image(data, volume.affine)
                img.set_qform(volume.affine, code="scanner")
                img.set_sform(volume.affine, code="scanner")
                img.header.set_xyzt_units("mm")
                nib.save(img, str(tmp))
            elif fmt == "mgh":
                import nibabel as nib

                # MGH stores only uint8, int16, int32, float32
                if data.dtype not in (np.uint8, np.int16, np.int32, np.float32):
                    data = data.astype(np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32)
                nib.save(nib.MGHImage(data, volume.affine), str(tmp))
            else:
                sitk = _sitk()
                sitk.WriteImage(volume_to_sitk(volume.with_data(data)), str(tmp), useCompression=fmt == "nrrd")
    except NeurosynthError:
        raise
    except Exception as exc:
        raise NeurosynthError(f"cannot write {p}: {_first_line(exc)}") from exc
    return p


def _write_detached(volume: Volume, p: Path, fmt: str) -> Path:
    """Write a header + data file pair (.nhdr/.raw.gz, .mhd/.raw) so neither is ever partial."""
    import tempfile

    sitk = _sitk()
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=p.parent, prefix=f".{p.name}.partial-") as tmpdir:
            staged = Path(tmpdir) / p.name
            sitk.WriteImage(volume_to_sitk(volume), str(staged), useCompression=fmt == "nrrd")
            # the data file(s) first, the header last: a reader never sees a header without its data
            for f in sorted(Path(tmpdir).iterdir(), key=lambda f: f.name == p.name):
                with atomic_path(p.parent / f.name) as tmp:
                    os.replace(f, tmp)
    except NeurosynthError:
        raise
    except Exception as exc:
        raise NeurosynthError(f"cannot write {p}: {_first_line(exc)}") from exc
    return p


# --------------------------------------------------------------------------- grids


def same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> bool:
    """True when ``a`` and ``b`` have the same shape and affines equal within ``atol`` mm.

    Examples
    --------
    >>> import numpy as np
    >>> a = Volume(np.zeros((2, 3, 4)), np.eye(4))
    >>> same_grid(a, a.with_data(np.ones((2, 3, 4))))
    True
    >>> same_grid(a, Volume(np.zeros((2, 3, 4)), np.diag([1.0, 1.0, 2.0, 1.0])))
    False
    """
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and bool(np.allclose(a.affine, b.affine, atol=atol, rtol=0))


def resample_to(volume: Volume, reference: Volume, interpolation: str = "linear", default: float = 0.0) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid in world space (SimpleITK).

    Parameters
    ----------
    volume : Volume
        The image to move.
    reference : Volume
        Supplies the output shape and affine (its data is not used).
    interpolation : {"linear", "nearest", "bspline"}
        Use ``"nearest"`` for label maps.
    default : float
        Value for output voxels outside ``volume``'s field of view.

    Returns
    -------
    Volume
        On ``reference``'s grid; ``nearest`` keeps the dtype, the others give float32.

    Examples
    --------
    >>> import numpy as np
    >>> src = Volume(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> ref = Volume(np.zeros((8, 8, 8)), np.diag([1.0, 1.0, 1.0, 1.0]))
    >>> out = resample_to(src, ref)
    >>> out.shape, same_grid(out, ref), out.data.dtype
    ((8, 8, 8), True, dtype('float32'))
    >>> labels = src.with_data((src.data > 31).astype(np.uint8))
    >>> nearest = resample_to(labels, ref, interpolation="nearest")
    >>> nearest.data.dtype, sorted(np.unique(nearest.data).tolist())
    (dtype('uint8'), [0, 1])
    """
    sitk = _sitk()
    modes = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    if interpolation not in modes:
        raise NeurosynthError(f"unknown interpolation {interpolation!r}; use one of {', '.join(modes)}")
    data = np.asarray(volume.data)
    if interpolation != "nearest":
        data = data.astype(np.float32, copy=False)
    moving = volume_to_sitk(volume.with_data(data))
    ref_img = volume_to_sitk(reference.with_data(np.zeros(reference.shape[:3], np.uint8)))
    out = sitk.Resample(moving, ref_img, sitk.Transform(), modes[interpolation], float(default), moving.GetPixelID())
    result = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    meta = {k: v for k, v in volume.metadata.items() if k != "warnings"}
    meta["warnings"] = list(volume.metadata.get("warnings", []))
    meta["resampled_to"] = reference.metadata.get("source_path", "reference grid")
    return Volume(np.ascontiguousarray(result), reference.affine.copy(), meta)
