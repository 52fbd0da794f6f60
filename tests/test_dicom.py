"""DICOM as scanners and PACS export it: every DICOM file pydicom, pydicom-data and nibabel
ship, and folders built here from real pydicom datasets (mixed orientations and localizers,
uneven gaps, duplicate slices, truncated files, big-endian 32-bit pixels, rescale).

The reference for positions and values is pydicom itself, read here independently of
``napari_neurosynth.dicom``: Image Position/Orientation (Patient) and Pixel Spacing from the
header (per frame for enhanced multi-frame), ``pixel_array`` and Rescale Slope/Intercept.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.pixels import apply_rescale
from pydicom.uid import RLELossless, generate_uid

from napari_neurosynth.dicom import list_series, scan_folder
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.io import LPS_TO_RAS, read_volume

NIBABEL = Path(nib.__file__).parent
MR_SMALL = get_testdata_file("MR_small.dcm")


# --------------------------------------------------------------------------- the reference (pydicom only)


def _plane(ds: Dataset, frame: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(IPP, row cosines, column cosines, slope, intercept) of one frame, straight from the header."""
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups = [ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]]

        def find(seq, key):
            return next(g[seq][0][key].value for g in groups if seq in g and key in g[seq][0])

        ipp = find("PlanePositionSequence", "ImagePositionPatient")
        iop = find("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = find("PixelMeasuresSequence", "PixelSpacing")
        try:
            slope = float(find("PixelValueTransformationSequence", "RescaleSlope"))
            intercept = float(find("PixelValueTransformationSequence", "RescaleIntercept"))
        except StopIteration:
            slope, intercept = 1.0, 0.0
    else:
        ipp, iop, spacing = ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    iop = np.array([float(v) for v in iop])
    return np.array([float(v) for v in ipp]), iop[:3] * float(spacing[1]), iop[3:] * float(spacing[0]), slope, intercept


def _reference_values(ds: Dataset, frame: int | None, slope: float, intercept: float) -> np.ndarray:
    """pydicom's pixels for one frame after its rescale (pydicom's own apply_rescale, per frame)."""
    pixels = ds.pixel_array if frame is None else ds.pixel_array[frame]  # pydicom caches the decoded array
    holder = Dataset()
    holder.RescaleSlope, holder.RescaleIntercept = slope, intercept
    return apply_rescale(pixels, holder)


def assert_matches_headers(vol, frames: list[tuple[Path, int | None]], complete: bool = True) -> None:
    """Every frame lies on an integer slice of ``vol`` (1e-3 mm, or 5 % of a slice for jitter)
    with its in-plane axes, and that slice holds pydicom's rescaled values."""
    datasets: dict[Path, Dataset] = {}
    slice_mm = vol.spacing[2]
    seen = set()
    for path, frame in frames:
        if path not in datasets:
            datasets[path] = pydicom.dcmread(path)
        ds = datasets[path]
        ipp, row_step, col_step, slope, intercept = _plane(ds, frame)
        idx = vol.index(LPS_TO_RAS @ ipp)
        k = round(float(idx[2]))
        tol_mm = max(1e-3, 0.05 * slice_mm)
        np.testing.assert_allclose(vol.world((0, 0, k)), LPS_TO_RAS @ ipp, atol=tol_mm)
        last = (ds.Columns - 1, ds.Rows - 1, k)
        expected_corner = ipp + (ds.Columns - 1) * row_step + (ds.Rows - 1) * col_step
        np.testing.assert_allclose(vol.world(last), LPS_TO_RAS @ expected_corner, atol=tol_mm)
        reference = _reference_values(ds, frame, slope, intercept)
        np.testing.assert_allclose(vol.data[:, :, k].T, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max())
        seen.add(k)
    if complete:
        assert seen == set(range(vol.shape[2])), "every slice of the volume comes from a frame"


def expected_refusal(ds: Dataset) -> str:
    """The word a correct refusal of this (first) file of a series must contain, from pydicom."""
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if ds.get("Modality") == "SEG":
        return "Segmentation"
    if ds.get("Modality") == "RTDOSE":
        return "RT Dose"
    if "MOSAIC" in image_type:
        return "mosaic"
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return "colour"
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        return "palette"
    if "PerFrameFunctionalGroupsSequence" not in ds and "ImagePositionPatient" not in ds:
        return "geometry"
    return "2-D image"


# --------------------------------------------------------------------------- every shipped file


def _shipped_folders(tmp: Path) -> list[Path]:
    files = [Path(f) for f in get_testdata_files()]  # pydicom + pydicom-data, offline
    folders = sorted({f.parent for f in files if f.is_file()})
    folders += [NIBABEL / "tests" / "data", NIBABEL / "nicom" / "tests" / "data"]
    gz = tmp / "nibabel_gz"  # nibabel ships some DICOM gzipped
    gz.mkdir()
    for f in sorted((NIBABEL / "nicom" / "tests" / "data").glob("*.dcm.gz")):
        (gz / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    return [*folders, gz]


def test_every_shipped_dicom_matches_pydicom_or_is_refused_clearly(tmp_path):
    opened, refused, skipped = [], 0, 0
    for folder in _shipped_folders(tmp_path):
        scan = scan_folder(folder)
        skipped += len(scan.skipped)
        for path, why in scan.skipped:  # each named with a reason that pydicom agrees with
            try:
                ds = pydicom.dcmread(path)
                ds.pixel_array  # noqa: B018 - decoding is the check
                if "Transfer Syntax" not in why:
                    pytest.fail(f"{path.name} skipped ({why}) but pydicom decodes it")
            except Exception:
                pass
            with pytest.raises(NeurosynthError, match=path.name):
                read_volume(path)
        for series in scan.series:
            first = pydicom.dcmread(series.frames[0].path)
            if series.problem:
                refused += 1
                with pytest.raises(NeurosynthError, match=expected_refusal(first)):
                    read_volume(folder, series=series.index)
                for path in series.files:  # file by file: the same refusal
                    with pytest.raises(NeurosynthError, match=expected_refusal(first)):
                        read_volume(path)
                continue
            if series.summary()["uniform"] is False:
                refused += 1
                with pytest.raises(NeurosynthError, match="uneven slice spacing"):
                    read_volume(folder, series=series.index)
                continue
            vol = read_volume(folder, series=series.index)
            assert not any("4-D" in w for w in vol.metadata["warnings"])
            assert_matches_headers(vol, [(f.path, f.frame) for f in series.frames])
            opened.append((folder.name, series.description, vol.shape))
            # the same series taken file by file: each of its files opens the whole series
            for path in series.files:
                one = read_volume(path)
                np.testing.assert_array_equal(one.data, vol.data)
                np.testing.assert_allclose(one.affine, vol.affine)
    # the 3-D stacks among the shipped files: Philips enhanced MR (176 frames), enhanced CT, a CT stack
    shapes = sorted(shape for _, _, shape in opened)
    assert (16, 16, 5) in shapes and (512, 512, 2) in shapes and any(s[2] == 176 for s in shapes)
    assert refused > 30 and skipped > 50


def test_every_shipped_file_alone_opens_or_names_itself(tmp_path):
    """Each DICOM file copied into a folder of its own: a lone slice, capture or report is refused
    with its name and the reason; nothing is stacked from a single file except real multi-frame."""
    opened, refused = [], 0
    folders = _shipped_folders(tmp_path)
    for folder in [folders[0], folders[-1]]:  # pydicom-data's files, nibabel's gzipped DICOM
        for src in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"):
            alone = tmp_path / "alone" / src.name
            alone.parent.mkdir(exist_ok=True)
            shutil.copy(src, alone)
            try:
                vol = read_volume(alone)
                opened.append(src.name)
                assert vol.shape[2] > 1
            except NeurosynthError as exc:
                refused += 1
                assert src.name in str(exc), str(exc)
            alone.unlink()
    # only true multi-frame volumes open from one file: enhanced CT (2 frames) and Philips enhanced MR
    assert opened == ["eCT_Supplemental.dcm", "philips_mprage.dcm"]
    assert refused > 60


def test_cifti_is_named_as_cifti():
    with pytest.raises(NeurosynthError, match="CIFTI-2 file"):
        read_volume(NIBABEL / "tests" / "data" / "row_major.dconn.nii")


# --------------------------------------------------------------------------- folders built from real datasets


AXIAL = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
CORONAL = (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]))
SAGITTAL = (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))


def write_slice(
    path: Path,
    uid: str,
    position,
    orientation=AXIAL,
    number: int = 1,
    description: str = "t1_axial",
    series_number: int = 1,
    offset: int = 0,
    image_type=("ORIGINAL", "PRIMARY", "M", "NONE"),
    **attrs,
) -> Dataset:
    """One MR slice from pydicom's MR_small with our geometry (pixels + ``offset``), saved with dcmwrite."""
    ds = pydicom.dcmread(MR_SMALL)
    ds.PixelData = (ds.pixel_array.astype(np.int16) + np.int16(offset)).tobytes()
    ds.SeriesInstanceUID = uid
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*orientation[0], *orientation[1])]
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds)
    return ds


def write_stack(folder: Path, prefix: str, along, orientation=AXIAL, uid=None, **kw) -> list[Path]:
    uid = uid or generate_uid()
    normal = np.cross(*orientation)
    paths = []
    for k, s in enumerate(along):
        path = folder / f"{prefix}{len(along) - k:03d}.dcm"  # names against slice order
        write_slice(path, uid, np.array([-80.0, -90.0, 10.0]) + s * normal, orientation, k + 1, offset=100 * k, **kw)
        paths.append(path)
    return paths


def frames_of(paths) -> list[tuple[Path, None]]:
    return [(Path(p), None) for p in paths]


@pytest.fixture
def exam(tmp_path) -> dict:
    """A PACS-style export: axial T1 (with a coronal plane in its series), a sagittal T2, a
    three-plane scout (ImageType LOCALIZER), and a two-orientation series."""
    folder = tmp_path / "exam"
    uid_t1, uid_t2, uid_split = generate_uid(), generate_uid(), generate_uid()
    t1 = write_stack(folder, "T1_", [0, 3, 6, 9, 12], uid=uid_t1, description="t1_axial", series_number=3)
    write_slice(folder / "T1_cor.dcm", uid_t1, [-80, 0, 40], CORONAL, 9, "t1_axial", 3)
    t2 = write_stack(folder, "T2_", [0, 2, 4, 6], SAGITTAL, uid=uid_t2, description="t2_sag", series_number=4)
    scout = generate_uid()
    for i, plane in enumerate((AXIAL, CORONAL, SAGITTAL)):
        write_slice(
            folder / f"SC{i}.dcm",
            scout,
            [0, 0, 0],
            plane,
            i + 1,
            "scout",
            1,
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        )
    ax = write_stack(folder, "MPA_", [0, 4, 8], AXIAL, uid=uid_split, description="mpr", series_number=5)
    co = write_stack(folder, "MPC_", [0, 4, 8], CORONAL, uid=uid_split, description="mpr", series_number=5)
    return {"folder": folder, "t1": (uid_t1, t1), "t2": (uid_t2, t2), "split": (uid_split, ax, co)}


def test_mixed_orientations_and_localizers_open_as_their_proper_series(exam):
    folder = exam["folder"]
    series = list_series(folder)
    assert [(s.description, s.orientation, len(s.frames)) for s in series] == [
        ("t1_axial", "axial", 5),
        ("t2_sag", "sagittal", 4),
        ("mpr", "axial", 3),
        ("mpr", "coronal", 3),
    ]
    notes = scan_folder(folder).dropped
    assert any("3 localizer" in n and "scout" in n for n in notes)
    assert any("T1_cor.dcm" in n and "single plane of another orientation" in n for n in notes)
    uid_t1, t1 = exam["t1"]
    vol = read_volume(folder, series=uid_t1)
    assert vol.shape == (64, 64, 5) and vol.spacing[2] == pytest.approx(3.0)
    assert_matches_headers(vol, frames_of(t1))
    uid_t2, t2 = exam["t2"]
    sag = read_volume(folder, series=1)
    assert sag.metadata["dicom"]["series_instance_uid"] == uid_t2
    assert_matches_headers(sag, frames_of(t2))
    # the default is the largest series, with a warning that names the others
    with pytest.warns(UserWarning, match="4 DICOM series"):
        largest = read_volume(folder)
    assert largest.metadata["dicom"]["series_description"] == "t1_axial"
    # one UID with two stacks: asking by UID names the stacks; each opens by its id
    uid, _axial, co = exam["split"]
    with pytest.raises(NeurosynthError, match="holds 2 stacks"):
        read_volume(folder, series=uid)
    assert_matches_headers(read_volume(folder, series=f"{uid}/2"), frames_of(co))
    with pytest.raises(NeurosynthError, match="no series 9"):
        read_volume(folder, series=9)
    with pytest.raises(NeurosynthError, match="series= applies to DICOM"):
        read_volume(NIBABEL / "tests" / "data" / "anatomical.nii", series=0)


def test_uneven_gaps_refused_with_positions_or_resampled(tmp_path):
    paths = write_stack(tmp_path / "gap", "IM", [0, 2.5, 5, 10, 12.5])  # the slice at 7.5 is missing
    with pytest.raises(NeurosynthError, match=r"uneven slice spacing .*5 mm between 15.00 and 20.00") as err:
        read_volume(tmp_path / "gap")
    assert "IM003.dcm -> IM002.dcm" in str(err.value)
    vol = read_volume(tmp_path / "gap", uneven="resample")
    assert vol.shape == (64, 64, 6) and vol.spacing[2] == pytest.approx(2.5)
    assert any("resampled 5 slices" in w for w in vol.metadata["warnings"])
    base = pydicom.dcmread(MR_SMALL).pixel_array.T.astype(np.float32)
    for k, offset in [(0, 0), (1, 100), (2, 200), (4, 300), (5, 400)]:  # acquired slices stay as they were
        np.testing.assert_array_equal(vol.data[:, :, k], base + offset)
        ipp = np.array([float(v) for v in pydicom.dcmread(paths[[0, 1, 2, None, 3, 4][k]]).ImagePositionPatient])
        np.testing.assert_allclose(vol.world((0, 0, k)), LPS_TO_RAS @ ipp, atol=1e-3)
    np.testing.assert_allclose(vol.data[:, :, 3], base + 250)  # halfway between its neighbours
    # a gap of many slices is not interpolated
    write_stack(tmp_path / "far", "IM", [0, 2, 4, 40])
    with pytest.raises(NeurosynthError, match="too large to interpolate"):
        read_volume(tmp_path / "far", uneven="resample")


def test_sub_voxel_jitter_is_accepted_within_five_percent(tmp_path):
    jitter = [0.0, 2.04, 3.97, 6.03, 8.0]  # < 2 % of the 2 mm spacing
    paths = write_stack(tmp_path / "jit", "IM", jitter)
    vol = read_volume(tmp_path / "jit")
    assert vol.spacing[2] == pytest.approx(2.0, abs=0.02)
    assert_matches_headers(vol, frames_of(paths))


def test_duplicate_positions_same_image_kept_once_different_refused(tmp_path):
    folder = tmp_path / "dup"
    paths = write_stack(folder, "IM", [0, 3, 6])
    copy = pydicom.dcmread(paths[1])  # the same slice again, RLE-compressed, as a PACS may add
    copy.SOPInstanceUID = generate_uid()
    copy.compress(RLELossless)
    copy.save_as(folder / "copy_rle.dcm")
    vol = read_volume(folder)
    assert vol.shape == (64, 64, 3)
    assert any("duplicate" in w and "copy_rle.dcm" in w for w in vol.metadata["warnings"])
    assert_matches_headers(vol, frames_of(paths))
    other = pydicom.dcmread(paths[1])
    other.PixelData = (other.pixel_array + 7).astype(np.int16).tobytes()
    other.SOPInstanceUID = generate_uid()
    other.save_as(folder / "other.dcm")
    with pytest.raises(NeurosynthError, match="different images at one position .*other.dcm"):
        read_volume(folder)


def test_one_truncated_file_is_skipped_and_named(tmp_path):
    folder = tmp_path / "trunc"
    paths = write_stack(folder, "IM", [0, 2, 4, 6, 8])
    bad = paths[-1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    (folder / "notes.dcm").write_bytes(b"exported by PACS\n")
    with pytest.warns(UserWarning, match="skipped IM001.dcm: truncated"):
        vol = read_volume(folder)
    assert vol.shape == (64, 64, 4)
    assert_matches_headers(vol, frames_of(paths[:-1]))
    assert set(vol.metadata["skipped_files"]) == {"IM001.dcm", "notes.dcm"}
    with pytest.raises(NeurosynthError, match="cannot read IM001.dcm: truncated"):
        read_volume(bad)


def test_files_without_geometry_are_refused(tmp_path):
    paths = write_stack(tmp_path / "nogeo", "IM", [0, 2, 4])
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(p)
    with pytest.raises(NeurosynthError, match="no patient geometry"):
        read_volume(tmp_path / "nogeo")


def test_rescale_and_big_endian_32bit_pixels(tmp_path):
    folder = tmp_path / "be32"
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
        values = (ds.pixel_array.astype(np.int32) * 50 + 100000 * (k + 1)).astype(">i4")
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 1
        ds.PixelData = values.tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [0, 0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10
        path = folder / f"IM{k}.dcm"
        folder.mkdir(exist_ok=True)
        ds.save_as(path)
        # pydicom's writer swaps OW words on the way out; put the big-endian bytes a scanner writes
        raw = bytearray(path.read_bytes())
        raw[-len(values.tobytes()) :] = values.tobytes()
        path.write_bytes(bytes(raw))
        assert np.array_equal(pydicom.dcmread(path).pixel_array, values)
    vol = read_volume(folder)
    assert vol.data.dtype == np.float32 and vol.data.max() > 65535 * 0.5
    assert_matches_headers(vol, frames_of(sorted(folder.iterdir())))


def test_enhanced_multiframe_is_one_volume_without_4d_warning(tmp_path):
    src = NIBABEL / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    path = tmp_path / "mprage" / "philips_mprage.dcm"
    path.parent.mkdir()
    path.write_bytes(gzip.decompress(src.read_bytes()))
    vol = read_volume(path)
    ds = pydicom.dcmread(path)
    assert vol.shape == (ds.Columns, ds.Rows, 176)
    assert vol.metadata["warnings"] == []
    assert_matches_headers(vol, [(path, i) for i in range(0, 176, 25)] + [(path, 175)], complete=False)


# --------------------------------------------------------------------------- command line and viewer


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_neurosynth", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_dicom_list_and_convert(exam, tmp_path, capsys):
    from napari_neurosynth.cli import main

    folder = exam["folder"]
    out = _cli("dicom", "list", str(folder))  # one real subprocess; the rest in-process (same main)
    assert out.returncode == 0, out.stderr
    assert "4 series in" in out.stdout
    t1_row = next(line for line in out.stdout.splitlines() if "t1_axial" in line)
    assert t1_row.split()[:7] == ["0", "3", "t1_axial", "MR", "axial", "64x64x5", "0.3125x0.3125x3"]
    assert "localizer" in out.stdout
    capsys.readouterr()
    assert main(["dicom", "list", str(folder), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [s["files"] for s in listing["series"]] == [5, 4, 3, 3]
    assert listing["series"][0]["spacing"] == [0.3125, 0.3125, 3.0]
    nii = tmp_path / "t2.nii.gz"
    assert main(["dicom", "convert", str(folder), "--series", "1", "-o", str(nii)]) == 0
    assert "64x64x4 voxels" in capsys.readouterr().out
    np.testing.assert_allclose(nib.load(nii).affine, read_volume(folder, series=1).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(nib.load(nii).dataobj), read_volume(folder, series=1).data)
    assert main(["dicom", "convert", str(folder), "--series", "1", "-o", str(nii)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["dicom", "list", str(empty)]) == 2


def test_viewer_opens_each_series_as_its_own_layer(make_napari_viewer, exam):
    write_stack(exam["folder"], "FL_", [0, 2.5, 5, 10, 12.5], description="flair", series_number=6)  # one gap
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="resampled 5 slices"):
        layers = viewer.open(str(exam["folder"]), plugin="napari-neurosynth")
    names = ["exam #0 t1_axial", "exam #1 t2_sag", "exam #2 mpr", "exam #3 mpr", "exam #4 flair"]
    assert [layer.name for layer in layers] == names
    t2 = read_volume(exam["folder"], series=1)
    np.testing.assert_allclose(layers[1].affine.affine_matrix, t2.affine)
    assert layers[4].data.shape == (64, 64, 6)
    assert any("uneven slice spacing" in w for w in layers[4].metadata["warnings"])
