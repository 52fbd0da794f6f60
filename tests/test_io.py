"""Volume I/O: geometry across formats, DICOM series, the MNI template, bad input, resampling."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from napari_neurosynth import NeurosynthError, Volume, read_volume, write_volume
from napari_neurosynth.io import LPS_TO_RAS, check_finite, resample_to, same_grid, volume_to_sitk

SPACING = (0.9, 1.3, 2.7)
ORIGIN_LPS = (12.5, -30.25, 41.0)
SHAPE_XYZ = (9, 11, 7)
ALL_FORMATS = [".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd"]


def oblique_direction() -> np.ndarray:
    return Rotation.from_euler("xyz", [12.0, -25.0, 33.0], degrees=True).as_matrix()


def oblique_sitk_image(dtype=np.float32) -> tuple[sitk.Image, np.ndarray]:
    """An oblique, anisotropic SimpleITK image and its voxels in (x, y, z) index order."""
    rng = np.random.default_rng(0)
    data_xyz = (rng.random(SHAPE_XYZ) * 1000).astype(dtype)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data_xyz.transpose(2, 1, 0)))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(oblique_direction().ravel().tolist())
    return image, data_xyz


def sitk_world_ras(image: sitk.Image, index_xyz) -> np.ndarray:
    """SimpleITK's own physical point for an (x, y, z) index, converted LPS -> RAS."""
    lps = image.TransformIndexToPhysicalPoint([int(i) for i in index_xyz])
    return LPS_TO_RAS @ np.array(lps)


VOXELS = [(0, 0, 0), (8, 10, 6), (3, 7, 2), (8, 0, 5)]


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr"])
def test_sitk_written_oblique_image_world_coordinates(tmp_path, ext):
    image, data = oblique_sitk_image()
    path = tmp_path / f"oblique{ext}"
    sitk.WriteImage(image, str(path))
    vol = read_volume(path)
    assert vol.shape == SHAPE_XYZ
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-5)
    for idx in VOXELS:
        np.testing.assert_allclose(vol.world(idx), sitk_world_ras(image, idx), atol=1e-4)
        # the voxel value at that index is the one SimpleITK stores there
        assert vol.data[idx] == image.GetPixel([int(i) for i in idx])
    assert vol.metadata["source_path"] == str(path)
    assert vol.metadata["warnings"] == []


def test_left_stays_left(tmp_path):
    """An LPS image whose x index runs towards patient left: larger x index -> smaller R coordinate."""
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))  # sitk size (6, 5, 4), identity LPS
    sitk.WriteImage(image, str(tmp_path / "lps.mha"))
    vol = read_volume(tmp_path / "lps.mha")
    assert vol.world((1, 0, 0))[0] == pytest.approx(-1.0)  # +x in LPS is towards Left = -R
    assert vol.world((0, 1, 0))[1] == pytest.approx(-1.0)  # +y in LPS is Posterior = -A
    assert vol.world((0, 0, 1))[2] == pytest.approx(1.0)
    assert vol.data.dtype == np.int16


def test_same_image_in_every_format_reads_identically(tmp_path):
    image, data = oblique_sitk_image()
    reference = read_volume(_write_sitk(image, tmp_path / "ref.mha"))
    labels = reference.with_data((reference.data > 500).astype(np.uint8) * 3)
    for ext in ALL_FORMATS:
        out = write_volume(reference, tmp_path / f"copy{ext}")
        back = read_volume(out)
        np.testing.assert_array_equal(back.data, data, err_msg=ext)
        assert back.data.dtype == np.float32, ext
        # MGH stores its geometry in float32: ~1e-5 mm
        np.testing.assert_allclose(back.affine, reference.affine, atol=1e-4, err_msg=ext)
        for idx in VOXELS:
            np.testing.assert_allclose(back.world(idx), sitk_world_ras(image, idx), atol=1e-4, err_msg=ext)
        assert back.metadata["format"] in ("nifti", "mgh", "nrrd", "metaimage")
        lab = read_volume(write_volume(labels, tmp_path / f"lab{ext}"))
        assert lab.data.dtype == np.uint8, ext
        np.testing.assert_array_equal(lab.data, labels.data, err_msg=ext)
    # NIfTI written by us also reads the same through nibabel directly and through SimpleITK
    nii = nib.load(str(tmp_path / "copy.nii.gz"))
    np.testing.assert_allclose(nii.affine, reference.affine, atol=1e-5)
    assert nii.header["qform_code"] == 1 and nii.header["sform_code"] == 1
    itk = sitk.ReadImage(str(tmp_path / "copy.nii.gz"))
    np.testing.assert_allclose(itk.GetOrigin(), ORIGIN_LPS, atol=1e-4)
    np.testing.assert_allclose(np.array(itk.GetDirection()).reshape(3, 3), oblique_direction(), atol=1e-5)


def _write_sitk(image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def test_nibabel_written_oblique_nifti_and_roundtrip(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = oblique_direction() @ np.diag(SPACING)
    affine[:3, 3] = (-20.0, 14.5, -3.25)
    data = np.arange(np.prod(SHAPE_XYZ), dtype=np.int16).reshape(SHAPE_XYZ)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "nib.nii.gz"))
    vol = read_volume(tmp_path / "nib.nii.gz")
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, data)
    # the same file through SimpleITK agrees voxel for voxel, once LPS -> RAS
    itk = sitk.ReadImage(str(tmp_path / "nib.nii.gz"))
    for idx in VOXELS:
        np.testing.assert_allclose(vol.world(idx), sitk_world_ras(itk, idx), atol=1e-4)
    # write -> read keeps geometry in the ITK formats too, including this proper-rotation oblique
    for ext in (".mha", ".nrrd", ".mgz"):
        back = read_volume(write_volume(vol, tmp_path / f"rt{ext}"))
        np.testing.assert_allclose(back.affine, affine, atol=1e-4)
        np.testing.assert_array_equal(back.data, data)


def test_radiological_negative_determinant_affine_roundtrip(tmp_path):
    """LAS (det < 0) affines, common from DICOM converters, survive ITK formats."""
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (60.0, -80.0, -40.0)
    vol = Volume(np.random.default_rng(1).random((6, 5, 4)).astype(np.float32), affine)
    for ext in (".nrrd", ".mha", ".nii", ".mgz"):
        back = read_volume(write_volume(vol, tmp_path / f"las{ext}"))
        np.testing.assert_allclose(back.affine, affine, atol=1e-5)
        np.testing.assert_array_equal(back.data, vol.data)


def test_mni_template_affine_matches_nibabel():
    nilearn_data = Path(__import__("nilearn").__file__).parent / "datasets" / "data"
    path = nilearn_data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    vol = read_volume(path)
    ref = nib.load(str(path))
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert vol.shape == ref.shape
    # stored as uint8 without scaling: integer data stay integer, values identical
    assert vol.data.dtype == ref.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(vol.data, np.asanyarray(ref.dataobj))
    # MNI origin: world (0, 0, 0) lies inside the volume, near its centre
    centre = vol.index((0.0, 0.0, 0.0))
    assert np.all(centre > 0.3 * np.array(vol.shape)) and np.all(centre < 0.7 * np.array(vol.shape))


def test_nilearn_mgz_reads_like_nibabel():
    """nilearn's test.mgz is a real 2-frame MGZ: first frame, nibabel's affine, a warning."""
    path = Path(__import__("nilearn").__file__).parent / "datasets" / "data" / "test.mgz"
    with pytest.warns(UserWarning, match=r"4-D series of shape \(3, 4, 5, 2\); using only the first volume"):
        vol = read_volume(path)
    ref = nib.load(str(path))
    np.testing.assert_allclose(vol.affine, ref.affine)
    np.testing.assert_array_equal(vol.data, np.asanyarray(ref.dataobj)[..., 0])


# --------------------------------------------------------------------------- DICOM


def make_dicom_series(
    folder: Path,
    n_slices: int = 4,
    series_uid: str | None = None,
    oblique: bool = True,
    spacing: float = 2.5,
    prefix: str = "IM",
) -> list[dict]:
    # hand-built with pydicom because no multi-slice MR series ships with the installed packages
    """Write an n-slice series from pydicom's MR_small (file names in reverse slice order).

    Each slice k has pixel values ``original + 1000 * k`` so slice order is checkable.
    """
    import pydicom
    from pydicom.data import get_testdata_files
    from pydicom.uid import generate_uid

    src = [f for f in get_testdata_files("MR_small*") if f.endswith("MR_small.dcm")][0]
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    if oblique:
        rot = Rotation.from_euler("zx", [20.0, 10.0], degrees=True).as_matrix()
        row_dir, col_dir = rot[:, 0], rot[:, 1]
    else:
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    normal = np.cross(row_dir, col_dir)
    first = np.array([-83.9063, -91.2, 6.6406])
    info = []
    for k in range(n_slices):
        ds = pydicom.dcmread(src)
        pixels = ds.pixel_array.astype(np.int16) + np.int16(1000 * k)
        ds.PixelData = pixels.tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        pos = first + k * spacing * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.SliceThickness = spacing
        ds.SliceLocation = float(pos @ normal)
        # file names run against slice order, so the reader must sort by position
        ds.save_as(folder / f"{prefix}{n_slices - 1 - k:03d}.dcm")
        info.append(
            {
                "k": k,
                "pixels": pixels,
                "ipp": np.array([float(v) for v in ds.ImagePositionPatient]),
                "row_dir": np.array([float(v) for v in ds.ImageOrientationPatient[:3]]),
                "col_dir": np.array([float(v) for v in ds.ImageOrientationPatient[3:]]),
                "pixel_spacing": [float(v) for v in ds.PixelSpacing],
            }
        )
    return sorted(info, key=lambda d: d["k"])


def dicom_pixel_ras(sl: dict, column: int, row: int) -> np.ndarray:
    """RAS+ position of pixel (column, row) from pydicom's header fields (DICOM is LPS)."""
    row_spacing, col_spacing = sl["pixel_spacing"]  # PixelSpacing = [between rows, between columns]
    lps = sl["ipp"] + column * col_spacing * sl["row_dir"] + row * row_spacing * sl["col_dir"]
    return LPS_TO_RAS @ lps


def test_dicom_series_folder_geometry_and_order(tmp_path):
    slices = make_dicom_series(tmp_path / "series")
    vol = read_volume(tmp_path / "series")
    assert vol.shape == (64, 64, 4)
    assert vol.metadata["format"] == "dicom"
    assert vol.metadata["dicom"]["n_files"] == 4
    assert vol.metadata["dicom"]["modality"] == "MR"
    np.testing.assert_allclose(vol.spacing, (0.3125, 0.3125, 2.5), atol=1e-3)
    for sl in slices:
        k = sl["k"]
        # data index order is (column, row, slice): data[:, :, k] is the slice's pixel_array transposed
        np.testing.assert_array_equal(vol.data[:, :, k], sl["pixels"].T)
        for column, row in [(0, 0), (63, 0), (10, 50), (63, 63)]:
            np.testing.assert_allclose(vol.world((column, row, k)), dicom_pixel_ras(sl, column, row), atol=2e-3)


def test_single_dicom_file_reads_its_series_and_single_slice_is_refused(tmp_path):
    make_dicom_series(tmp_path / "series", oblique=False)
    whole = read_volume(tmp_path / "series")
    one = read_volume(tmp_path / "series" / "IM002.dcm")
    assert one.shape == whole.shape
    np.testing.assert_array_equal(one.data, whole.data)
    np.testing.assert_allclose(one.affine, whole.affine)
    assert "whole series" in one.metadata["dicom_note"]
    # a lone slice is a 2-D image
    from pydicom.data import get_testdata_files

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy([f for f in get_testdata_files("MR_small*") if f.endswith("MR_small.dcm")][0], lone / "MR_small.dcm")
    with pytest.raises(NeurosynthError, match="2-D image"):
        read_volume(lone / "MR_small.dcm")
    with pytest.raises(NeurosynthError, match="2-D image"):
        read_volume(lone)


def test_dicom_folder_with_two_series_opens_largest_and_says_so(tmp_path):
    folder = tmp_path / "mixed"
    big = make_dicom_series(folder, n_slices=4, prefix="A")
    make_dicom_series(folder, n_slices=3, prefix="B", oblique=False)
    with pytest.warns(UserWarning, match="2 DICOM series"):
        vol = read_volume(folder)
    assert vol.shape == (64, 64, 4)
    np.testing.assert_array_equal(vol.data[:, :, 0], big[0]["pixels"].T)
    assert sorted(vol.metadata["dicom_series"].values()) == [3, 4]
    assert any("opened the largest" in w for w in vol.metadata["warnings"])


# --------------------------------------------------------------------------- bad input


def _good(tmp_path, ext=".nii.gz") -> Path:
    vol = Volume(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    return write_volume(vol, tmp_path / f"good{ext}")


def test_missing_file(tmp_path):
    with pytest.raises(NeurosynthError, match="file not found: .*nope.nii.gz"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unsupported_extension(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(NeurosynthError, match=r"unsupported file type: scan.png; supported: .nii.gz"):
        read_volume(tmp_path / "scan.png")
    with pytest.raises(NeurosynthError, match="cannot write out.png"):
        write_volume(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "out.png")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mgz", ".mha", ".nrrd"])
def test_truncated_file(tmp_path, ext):
    path = _good(tmp_path, ext)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(
        NeurosynthError, match=rf"cannot read good{ext.replace('.', '[.]')} as \w+: the file is corrupt or truncated"
    ) as info:
        read_volume(path)
    assert "\n" not in str(info.value)


def test_corrupt_file(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 3))
    with pytest.raises(NeurosynthError, match="corrupt or truncated"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\nElementDataFile = missing.raw\n"
    )
    with pytest.raises(NeurosynthError, match="cannot read junk.mha as metaimage"):
        read_volume(tmp_path / "junk.mha")


def test_2d_image_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(NeurosynthError, match=r"slice.nii.gz is a 2-D image \(shape \(16, 16\)\)"):
        read_volume(tmp_path / "slice.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 1), np.float32), np.eye(4)), str(tmp_path / "thin.nii.gz"))
    with pytest.raises(NeurosynthError, match="2-D image"):
        read_volume(tmp_path / "thin.nii.gz")
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(tmp_path / "flat.mha"))
    with pytest.raises(NeurosynthError, match="flat.mha is a 2-D image"):
        read_volume(tmp_path / "flat.mha")


def test_4d_series_keeps_first_volume_with_warning(tmp_path):
    data = np.random.default_rng(0).random((6, 7, 8, 3)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "bold.nii.gz"))
    with pytest.warns(UserWarning, match="4-D series"):
        vol = read_volume(tmp_path / "bold.nii.gz")
    np.testing.assert_array_equal(vol.data, data[..., 0])
    np.testing.assert_allclose(vol.affine, affine)
    assert "first volume" in vol.metadata["warnings"][0]
    assert vol.metadata["original_shape"] == (6, 7, 8, 3)
    # the same through SimpleITK (a 4-D MetaImage)
    img4 = sitk.JoinSeries([sitk.GetImageFromArray(data[..., t].transpose(2, 1, 0).copy()) for t in range(3)])
    sitk.WriteImage(img4, str(tmp_path / "bold.mha"))
    with pytest.warns(UserWarning, match="4-D series of 3 volumes"):
        vol2 = read_volume(tmp_path / "bold.mha")
    np.testing.assert_array_equal(vol2.data, data[..., 0])
    # a trailing singleton 4th axis is just a 3-D volume, no warning
    nib.save(nib.Nifti1Image(data[..., :1], affine), str(tmp_path / "one.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(tmp_path / "one.nii.gz").shape == (6, 7, 8)


def test_nan_inf_read_with_warning_and_check_finite_refuses(tmp_path):
    data = np.ones((5, 5, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[4, 4, 4] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "holes.nii.gz"))
    with pytest.warns(UserWarning, match="2 NaN/Inf voxel"):
        vol = read_volume(tmp_path / "holes.nii.gz")
    assert vol.metadata["nonfinite_voxels"] == 2
    assert np.isnan(vol.data[1, 2, 3])  # kept, not silently replaced
    with pytest.raises(NeurosynthError, match="holes.nii.gz has 2 NaN/Inf voxel"):
        check_finite(vol)
    check_finite(vol.with_data(np.nan_to_num(vol.data, posinf=0.0)))


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NeurosynthError, match="no DICOM files in folder"):
        read_volume(tmp_path)


def test_shear_refused_for_itk_formats_but_nifti_keeps_it(tmp_path):
    affine = np.array([[1.0, 0.4, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    vol = Volume(np.zeros((4, 4, 4), np.float32), affine)
    with pytest.raises(NeurosynthError, match="shear.*save it as NIfTI"):
        write_volume(vol, tmp_path / "shear.mha")
    np.testing.assert_allclose(read_volume(write_volume(vol, tmp_path / "shear.nii")).affine, affine)


# --------------------------------------------------------------------------- grids


def _blob_volume(affine, shape, centre_ras, sigma=4.0) -> Volume:
    vol = Volume(np.zeros(shape, np.float32), affine)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    d2 = np.sum((vol.world(idx) - np.asarray(centre_ras)) ** 2, axis=-1)
    return vol.with_data(np.exp(-d2 / (2 * sigma**2)).astype(np.float32))


def _centroid_world(vol: Volume) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij"), axis=-1)
    w = np.clip(vol.data, 0, None)
    return vol.world((idx * w[..., None]).reshape(-1, 3).sum(0) / w.sum())


def test_resample_to_keeps_world_position_and_same_grid():
    centre = np.array([3.0, -7.0, 10.0])
    fine_affine = np.eye(4)
    fine_affine[:3, :3] = oblique_direction() @ np.diag([2.0, 2.0, 2.0])
    fine_affine[:3, 3] = centre - fine_affine[:3, :3] @ np.array([10.0, 10.0, 10.0])
    fine = _blob_volume(fine_affine, (21, 21, 21), centre)
    coarse_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse_affine[:3, 3] = centre - 3.0 * np.array([7.0, 7.0, 7.0])
    reference = Volume(np.zeros((15, 15, 15), np.int16), coarse_affine)
    out = resample_to(fine, reference)
    assert same_grid(out, reference) and not same_grid(out, fine)
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(_centroid_world(out), centre, atol=0.3)
    np.testing.assert_allclose(_centroid_world(fine), centre, atol=0.3)
    # labels with nearest neighbour keep their values and dtype
    labels = fine.with_data((fine.data > 0.5).astype(np.uint8) * 2)
    lab = resample_to(labels, reference, interpolation="nearest")
    assert lab.data.dtype == np.uint8 and set(np.unique(lab.data)) == {0, 2}
    with pytest.raises(NeurosynthError, match="unknown interpolation 'cubic'"):
        resample_to(fine, reference, interpolation="cubic")


def test_volume_to_sitk_matches_sitk_geometry():
    image, _ = oblique_sitk_image()
    from napari_neurosynth.io import sitk_to_volume

    vol = sitk_to_volume(image)
    back = volume_to_sitk(vol)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
