"""Property-based tests (hypothesis): hostile files never give anything but a result or a NeurosynthError.

Targets: :func:`read_volume` (random bytes under every extension, truncations of
real files, random but valid NIfTI headers), the study-file loader (random YAML
texts and random mappings) and the ratings CSV importer (random bytes and random
tables). Each runs at least 500 examples (``FUZZ_EXAMPLES`` raises it).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.export import read_csv_rows
from napari_neurosynth.io import Volume, read_volume
from napari_neurosynth.study import parse_study_text, study_from_dict

EXAMPLES = max(500, int(os.environ.get("FUZZ_EXAMPLES", "500")))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # CI reproduces a failure exactly; no example database
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EXTENSIONS = [".nii", ".nii.gz", ".mgz", ".mgh", ".nrrd", ".mha", ".dcm", ".img", ".hdr"]


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="ns-fuzz-") as folder:
        yield Path(folder)


def _read(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vol = read_volume(path)
        except NeurosynthError:
            return
    assert isinstance(vol, Volume)
    assert vol.data.ndim == 3 and vol.affine.shape == (4, 4)
    assert np.all(np.isfinite(vol.affine))


def _real_files(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    data = rng.random((6, 5, 4)).astype(np.float32)
    affine = np.array([[0.9, 0.1, 0, -10], [-0.1, 0.9, 0, 5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    out = {}
    for ext, image in {
        ".nii": nib.Nifti1Image(data, affine),
        ".nii.gz": nib.Nifti1Image(data, affine),
        ".mgz": nib.MGHImage(data, affine),
    }.items():
        path = folder / f"real{ext}"
        nib.save(image, str(path))
        out[ext] = path.read_bytes()
    import SimpleITK as sitk

    for ext in (".nrrd", ".mha"):
        path = folder / f"real{ext}"
        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
        out[ext] = path.read_bytes()
    return out


@FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from(EXTENSIONS))
def test_read_volume_random_bytes(scratch, data, ext):
    path = scratch / f"random{ext}"
    path.write_bytes(data)
    _read(path)


@FUZZ
@given(ext=st.sampled_from([".nii", ".nii.gz", ".mgz", ".nrrd", ".mha"]), cut=st.floats(0.0, 1.0), flip=st.integers(0))
def test_read_volume_truncated_and_corrupted_real_files(scratch, ext, cut, flip):
    real = _REAL.setdefault("files", _real_files(scratch))
    blob = bytearray(real[ext])
    blob = blob[: int(len(blob) * cut)]
    if blob and flip:  # and one flipped byte somewhere
        blob[flip % len(blob)] ^= 0xFF
    path = scratch / f"cut{ext}"
    path.write_bytes(bytes(blob))
    _read(path)


_REAL: dict[str, dict[str, bytes]] = {}

_DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64, np.int8, np.uint16, np.complex64, np.int64]


@FUZZ
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=5),
    dtype=st.sampled_from(_DTYPES),
    pixdim=st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([np.nan, np.inf, 0.0])), min_size=8, max_size=8),
    qform_code=st.integers(0, 4),
    sform_code=st.integers(0, 4),
    srow=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=12, max_size=12),
    scl=st.tuples(st.floats(width=32, allow_nan=True), st.floats(width=32, allow_nan=True)),
    gz=st.booleans(),
)
def test_read_volume_random_valid_nifti_headers(scratch, shape, dtype, pixdim, qform_code, sform_code, srow, scl, gz):
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["pixdim"] = pixdim
    header["qform_code"] = qform_code
    header["sform_code"] = sform_code
    header["srow_x"], header["srow_y"], header["srow_z"] = srow[:4], srow[4:8], srow[8:]
    header["scl_slope"], header["scl_inter"] = scl
    header["vox_offset"] = 352
    n = int(np.prod(shape)) if shape else 0
    body = header.binaryblock + b"\0" * 4 + np.zeros(n, dtype).tobytes()
    if gz:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb") as fh:
            fh.write(body)
        body = buffer.getvalue()
    path = scratch / ("hdr.nii.gz" if gz else "hdr.nii")
    path.write_bytes(body)
    _read(path)


# --------------------------------------------------------------------------- study files

_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True), st.text(max_size=12)
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_study_keys = st.sampled_from(["study", "id", "seed", "blinded", "questions", "display", "cases", "colour"])
_case = st.fixed_dictionaries(
    {
        "id": _yaml_scalars,
        "conditions": st.one_of(_yaml_values, st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
    }
)
_studies = st.dictionaries(
    _study_keys, st.one_of(_yaml_values, st.lists(st.one_of(_case, _yaml_values), max_size=3)), max_size=6
)


def _load(text: str) -> None:
    try:
        study = study_from_dict(parse_study_text(text, "fuzz.yaml"), base="/nowhere", source="fuzz.yaml")
    except NeurosynthError:
        return
    assert study.cases and all(case.conditions for case in study.cases)


@FUZZ
@given(text=st.one_of(st.text(max_size=400), st.binary(max_size=400).map(lambda b: b.decode("latin-1"))))
def test_study_loader_random_text(text):
    _load(text)


@FUZZ
@given(study=_studies)
def test_study_loader_random_mappings(study):
    import yaml

    _load(yaml.safe_dump(study, allow_unicode=True))


def test_study_loader_truncations_of_a_valid_file():
    text = (
        "study: pilot\nseed: 3\nquestions: {subscores: true, turing: true}\ndisplay: {window_percentiles: [1, 99]}\n"
        "cases:\n  - id: sub-01\n    conditions: {acquired: a/sub-01.nii.gz, model: m/sub-01.nii.gz}\n"
        "    references: {t1: t1/sub-01.nii.gz}\n"
    )
    for cut in range(len(text) + 1):
        _load(text[:cut])


# --------------------------------------------------------------------------- the ratings CSV importer

_cells = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)


def _import(path: Path) -> None:
    try:
        rows = read_csv_rows(path, ["rater", "case_id", "condition", "score"], what="ratings table")
    except NeurosynthError:
        return
    assert all(set(r) >= {"rater", "case_id", "condition", "score"} for r in rows)
    assert all(isinstance(v, str) for r in rows for v in r.values())


@FUZZ
@given(data=st.binary(max_size=1024))
def test_csv_importer_random_bytes(scratch, data):
    path = scratch / "random.csv"
    path.write_bytes(data)
    _import(path)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["rater", "case_id", "condition", "score", "study", "x", ""]), max_size=6),
    rows=st.lists(st.lists(_cells, max_size=7), max_size=6),
    quote=st.booleans(),
)
def test_csv_importer_random_tables(scratch, header, rows, quote):
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    path = scratch / "table.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    _import(path)


def test_csv_importer_through_the_cli_random_rows(tmp_path, capsys):
    """Rows that parse but hold bad values reach the store and are refused there with one line."""
    from napari_neurosynth.cli import main

    db = tmp_path / "r.sqlite"
    rng = np.random.default_rng(0)
    values = ["", "0", "6", "3.5", "abc", "nan", "inf", "-1", "1e3", "4", "\u00e9"]
    for i in range(40):
        path = tmp_path / f"t{i}.csv"
        cells = [[str(rng.choice(values)) for _ in range(4)] for _ in range(3)]
        path.write_text("rater,case_id,condition,score\n" + "\n".join(",".join(r) for r in cells) + "\n")
        rc = main(["study", "import", "--db", str(db), str(path)])
        err = capsys.readouterr().err
        assert rc in (0, 2)
        assert "Traceback" not in err
        if rc == 2:
            assert len(err.strip().splitlines()) == 1
