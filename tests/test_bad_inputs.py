"""Bad inputs and faults, as a hostile tester tries them (issue 15).

Each test is one case of the issue: a write on a full disk, a silent overwrite, a
study file that lies, a traceback, a silent wrong answer, noise before the message,
an API error of the wrong type. Full-disk cases run on a real small tmpfs, mounted
here when the tests run as root (CI does) and skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_neurosynth.atomic import is_partial
from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.io import Volume, read_volume, write_volume
from napari_neurosynth.phantom import make_phantom

NEUROSYNTH = [sys.executable, "-m", "napari_neurosynth"]


# --------------------------------------------------------------------------- helpers


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert 'File "' not in err, err


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    _no_traceback(err)
    return rc, out, err


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> dict[str, Path]:
    """A 3 mm phantom subject on disk (t1, t2, t2_lowres)."""
    folder = tmp_path_factory.mktemp("subject")
    ph = make_phantom(seed=5, resolution=3.0, lesions=["tumour"])
    return {k: write_volume(ph[k], folder / f"{k}.nii.gz") for k in ("t1", "t2", "t2_lowres", "lesion_mask")}


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs, unmounted afterwards (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> None:
    """Fill the disk to the last byte (the writer under test then hits ENOSPC)."""
    with open(disk / "filler.bin", "wb", buffering=0) as fh:
        for chunk in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if is_partial(p)]


# --------------------------------------------------------------------------- full disk: nothing half-written


def test_full_disk_synthesize_keeps_the_previous_output(small_disk, subject):
    good = _save(small_disk / "t2_synth.nii.gz", np.arange(1000).reshape(10, 10, 10))
    before = good.read_bytes()
    _fill(small_disk)
    proc = subprocess.run(
        [*NEUROSYNTH, "synthesize", str(subject["t1"]), "-m", "t1_to_t2", "-o", str(good), "--force", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr
    _no_traceback(proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert good.read_bytes() == before  # the previous good file is intact
    assert _partials(small_disk) == []
    assert _listing(small_disk) == ["filler.bin", "t2_synth.nii.gz"]


def test_full_disk_phantom_writes_all_files_or_none(small_disk, capsys):
    out = small_disk / "ph"
    _fill(small_disk)
    rc, _, err = _run_cli(capsys, "phantom", out, "--seed", "1", "--resolution", "3")
    assert rc == 2 and "No space left" in err
    assert not out.exists() or _listing(out) == []  # no truncated volumes, no partial set


def test_full_disk_api_writers_leave_previous_files(small_disk):
    from napari_neurosynth.export import write_csv, write_json
    from napari_neurosynth.training.checkpoints import save_checkpoint

    vol = Volume(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32), np.eye(4))
    nifti = write_volume(vol.with_data(np.ones((4, 4, 4), np.float32)), small_disk / "v.nii")
    table, doc = small_disk / "t.csv", small_disk / "r.json"
    write_csv([{"a": 1}], table, ["a"])
    write_json({"a": 1}, doc)
    net = torch.nn.Linear(400, 400)
    save_checkpoint(small_disk / "ck", {"G": torch.nn.Linear(2, 2)}, {}, {"step": 1})
    before = {p: p.read_bytes() for p in [nifti, table, doc, *sorted((small_disk / "ck").iterdir())]}
    _fill(small_disk)
    for write in (
        lambda: write_volume(vol, nifti),
        lambda: write_csv([{"a": "x" * 10000}] * 10, table, ["a"]),
        lambda: write_json({"a": "x" * 100000}, doc),
        lambda: save_checkpoint(small_disk / "ck", {"G": net}, {}, {"step": 2}),
    ):
        with pytest.raises((NeurosynthError, OSError)):
            write()
    for path, data in before.items():
        assert path.read_bytes() == data, path.name
    assert _partials(small_disk) == []


def test_full_disk_bundle_export_and_study_export(small_disk, tmp_path, capsys, make_bundle):
    from napari_neurosynth.bundle import load_model, save_bundle
    from napari_neurosynth.ratings import RatingStore

    bundle = make_bundle()
    model = load_model(bundle)
    target = small_disk / "bundle"
    save_bundle(model.network, model.card, target)
    db = tmp_path / "r.sqlite"
    with RatingStore(db) as store:
        store.record_many([{"rater": "a", "case": f"c{i}", "condition": "m", "score": 3} for i in range(300)])
    csv_out = small_disk / "ratings.csv"
    assert _run_cli(capsys, "study", "export", "--db", db, "-o", csv_out)[0] == 0
    before = {p: p.read_bytes() for p in [*sorted(target.iterdir()), csv_out]}
    with RatingStore(db) as store:
        store.record("z", "c0", "m", 5)  # the next export differs from the file on disk
    _fill(small_disk)
    with pytest.raises(NeurosynthError, match="cannot write model bundle"):
        save_bundle(model.network, {**model.card, "description": "retrained"}, target)
    rc, _, err = _run_cli(capsys, "study", "export", "--db", db, "-o", csv_out, "--force")
    assert rc == 2 and "space" in err
    for path, data in before.items():
        assert path.read_bytes() == data, path.name
    assert _partials(small_disk) == []


# --------------------------------------------------------------------------- overwrites need --force


def test_synthesize_refuses_to_overwrite_without_force(tmp_path, subject, capsys):
    out = _save(tmp_path / "synth.nii.gz", np.zeros((4, 4, 4)))
    before = out.read_bytes()
    rc, _, err = _run_cli(capsys, "synthesize", subject["t1"], "-m", "t1_to_t2", "-o", out, "-q")
    assert rc == 2 and "already exists" in err and "--force" in err
    assert out.read_bytes() == before
    rc, _, _ = _run_cli(capsys, "synthesize", subject["t1"], "-m", "t1_to_t2", "-o", out, "-q", "--force")
    assert rc == 0 and read_volume(out).shape == read_volume(subject["t1"]).shape


def test_synthesize_never_overwrites_its_input(tmp_path, subject, capsys):
    t1 = tmp_path / "t1.nii.gz"
    shutil.copy(subject["t1"], t1)
    before = t1.read_bytes()
    for extra in ([], ["--force"]):
        rc, _, err = _run_cli(capsys, "synthesize", t1, "-m", "t1_to_t2", "-o", t1, "-q", *extra)
        assert rc == 2 and "also an input" in err
    # the same file under another spelling of its path
    rc, _, err = _run_cli(capsys, "synthesize", t1, "-m", "t1_to_t2", "-o", tmp_path / "." / "t1.nii.gz", "--force")
    assert rc == 2 and "also an input" in err
    assert t1.read_bytes() == before


def test_phantom_refuses_existing_files(tmp_path, capsys):
    assert _run_cli(capsys, "phantom", tmp_path / "ph", "--resolution", "4", "--no-lesions")[0] == 0
    before = (tmp_path / "ph" / "t1.nii.gz").read_bytes()
    rc, _, err = _run_cli(capsys, "phantom", tmp_path / "ph", "--resolution", "4", "--seed", "9")
    assert rc == 2 and "--force" in err
    assert (tmp_path / "ph" / "t1.nii.gz").read_bytes() == before
    assert _run_cli(capsys, "phantom", tmp_path / "ph", "--resolution", "4", "--seed", "9", "--force")[0] == 0
    assert (tmp_path / "ph" / "t1.nii.gz").read_bytes() != before


def test_study_export_and_plot_refuse_to_overwrite(tmp_path, capsys):
    from napari_neurosynth.ratings import RatingStore

    db = tmp_path / "r.sqlite"
    with RatingStore(db) as store:
        store.record("ana", "c1", "acquired", 4)
        store.record("ana", "c1", "model", np.int64(2))  # a numpy integer score is accepted
    out = tmp_path / "ratings.csv"
    out.write_text("keep me")
    rc, _, err = _run_cli(capsys, "study", "export", "--db", db, "-o", out)
    assert rc == 2 and "--force" in err and out.read_text() == "keep me"
    assert _run_cli(capsys, "study", "export", "--db", db, "-o", out, "--force")[0] == 0
    assert "model" in out.read_text()
    # the database itself is never an export target
    rc, _, err = _run_cli(capsys, "study", "export", "--db", db, "-o", db, "--force")
    assert rc == 2 and "also an input" in err
    png = tmp_path / "mos.png"
    png.write_text("old")
    rc, _, err = _run_cli(capsys, "study", "summary", "--db", db, "--plot", png)
    assert rc == 2 and "--force" in err and png.read_text() == "old"


def test_train_refuses_an_existing_bundle_before_training(tmp_path, make_bundle, capsys):
    bundle = make_bundle()
    card = (bundle / "card.json").read_bytes()
    rc, _, err = _run_cli(capsys, "train", "--name", "x", "-o", bundle, "--data", "phantom:0", "--epochs", "1")
    assert rc == 2 and "already holds a model bundle" in err
    assert (bundle / "card.json").read_bytes() == card


# --------------------------------------------------------------------------- study files cannot lie


def _study_cases(tmp_path: Path, shape=(8, 8, 8)) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    return {n: _save(tmp_path / f"{n}.nii.gz", rng.random(shape)) for n in ("acq", "model")}


def test_study_duplicate_condition_key_is_an_error_with_its_line(tmp_path):
    from napari_neurosynth.study import load_study

    _study_cases(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            study: pilot
            cases:
              - id: sub-01
                conditions:
                  acquired: acq.nii.gz
                  model: model.nii.gz
                  model: acq.nii.gz
            """
        )
    )
    with pytest.raises(NeurosynthError, match=r"line 7: key 'model' appears twice .*first at line 6"):
        load_study(path)
    # JSON goes through the same strict parser
    path.write_text('{"study": "p", "study": "q", "cases": []}')
    with pytest.raises(NeurosynthError, match="key 'study' appears twice"):
        load_study(path)


def test_study_two_conditions_naming_one_file_is_an_error(tmp_path):
    from napari_neurosynth.study import load_study

    _study_cases(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text("study: p\ncases:\n  - id: c1\n    conditions: {acquired: acq.nii.gz, model: ./acq.nii.gz}\n")
    with pytest.raises(NeurosynthError, match="names the same file as 'acquired'"):
        load_study(path)


def test_study_duplicate_case_ids_are_an_error(tmp_path):
    from napari_neurosynth.study import load_study

    _study_cases(tmp_path)
    path = tmp_path / "study.yaml"
    case = "  - id: c1\n    conditions: {acquired: acq.nii.gz, model: model.nii.gz}\n"
    path.write_text("study: p\ncases:\n" + case + case)
    with pytest.raises(NeurosynthError, match="case id 'c1' appears twice"):
        load_study(path)


def test_study_case_files_are_checked_at_load_time(tmp_path):
    from napari_neurosynth.study import load_study

    files = _study_cases(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text("study: p\ncases:\n  - id: c1\n    conditions: {acquired: acq.nii.gz, model: model.nii.gz}\n")
    assert load_study(path).items == [("c1", "acquired"), ("c1", "model")]
    # corrupt: a truncated gzip stream
    data = files["model"].read_bytes()
    files["model"].write_bytes(data[: len(data) // 2])
    with pytest.raises(NeurosynthError, match=r"case 'c1', condition 'model' .* cannot be opened"):
        load_study(path)
    # another grid: the resolution would unblind the condition
    _save(files["model"], np.random.default_rng(1).random((8, 8, 4)), np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(NeurosynthError, match="another grid"):
        load_study(path)
    files["model"].unlink()
    with pytest.raises(NeurosynthError, match="missing volume"):
        load_study(path)


def test_study_create_refuses_ambiguous_case_files(tmp_path, capsys):
    for cond in ("acquired", "model"):
        _save(tmp_path / "data" / cond / "sub-01.nii.gz", np.ones((4, 4, 4)))
    _save(tmp_path / "data" / "model" / "sub-01.nii", np.zeros((4, 4, 4)))
    rc, _, err = _run_cli(capsys, "study", "create", tmp_path / "data", "-o", tmp_path / "s.yaml")
    assert rc == 2 and "sub-01.nii" in err and "sub-01.nii.gz" in err and "ambiguous" in err
    assert not (tmp_path / "s.yaml").exists()


# --------------------------------------------------------------------------- no traceback


def test_tiny_volume_gets_a_message_in_synthesis_and_training(tmp_path, capsys):
    tiny = _save(tmp_path / "sub-01" / "t1.nii.gz", np.random.default_rng(0).random((4, 4, 3)))
    shutil.copy(tiny, tmp_path / "sub-01" / "t2.nii.gz")
    rc, _, err = _run_cli(capsys, "synthesize", tiny, "-m", "t1_to_t2", "-o", tmp_path / "o.nii.gz", "-q")
    assert rc == 2 and "4 x 4 voxel slices" in err and "needs at least" in err
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,t1,t2\nsub-01,sub-01/t1.nii.gz,sub-01/t2.nii.gz\n")
    rc, _, err = _run_cli(
        capsys, "train", "--name", "x", "-o", tmp_path / "b", "--data", manifest, "--val-data", manifest,
        "--epochs", "1", "--steps", "1", "--no-progress",
    )  # fmt: skip
    assert rc == 2 and "subject 'sub-01' has 4 x 4 voxel slices" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"rater,case_id,condition,score\nana,c1,m,4\nb\xe9a,c2,m,3\n", "line 3: not UTF-8"),
        (b"rater,case_id,condition,score\nana,c1,m,4\nana,c2\n", "line 3: 2 field(s) where the header has 4"),
        (b'rater,case_id,condition,score\nana,c1,m,4\n"ana,c2,m,3\n', "a quoted cell is never closed"),
        (b"", "is empty"),
        (b"rater,score\nana,3\n", "missing case_id, condition"),
    ],
    ids=["non-utf8", "short-row", "unterminated-quote", "empty", "missing-columns"],
)
def test_study_import_of_a_bad_csv_is_one_line_and_writes_nothing(tmp_path, capsys, content, expected):
    db = tmp_path / "r.sqlite"
    bad = tmp_path / "site.csv"
    bad.write_bytes(content)
    rc, _, err = _run_cli(capsys, "study", "import", "--db", db, bad)
    assert rc == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not db.exists()  # nothing half-imported


def test_study_summary_plot_with_an_unknown_extension(tmp_path, capsys):
    from napari_neurosynth.ratings import RatingStore

    db = tmp_path / "r.sqlite"
    with RatingStore(db) as store:
        store.record("ana", "c1", "acquired", 4)
    rc, _, err = _run_cli(capsys, "study", "summary", "--db", db, "--plot", tmp_path / "mos.xyz")
    assert rc == 2 and "cannot save a plot as mos.xyz" in err and "png" in err
    assert not (tmp_path / "mos.xyz").exists()


def test_boolean_and_nonnumeric_arrays_through_the_api():
    from napari_neurosynth.inference import synthesize

    mask = np.zeros((32, 32, 8), bool)
    mask[8:24, 8:24] = True
    with pytest.raises(NeurosynthError, match="boolean mask, not an image"):
        synthesize("t1_to_t2", mask, device="cpu")
    with pytest.raises(NeurosynthError, match="numeric"):
        Volume(np.array([["a"]]), np.eye(4))


def test_unexpected_exception_is_one_line_exit_70(tmp_path):
    # A genuine internal fault injected into a real process: the guard turns it into one line.
    code = textwrap.dedent(
        f"""
        import sys
        import napari_neurosynth.cli.phantom as ph
        def broken(args):
            raise KeyError("boom")
        ph.run = broken
        from napari_neurosynth.cli import main
        sys.exit(main(["phantom", {str(tmp_path / "x")!r}] + sys.argv[1:]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 70
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error: KeyError" in lines[0] and "report" in lines[0]
    _no_traceback(proc.stderr)
    verbose = subprocess.run([sys.executable, "-c", code, "-v"], capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 70 and "Traceback" in verbose.stderr  # -v shows the details


# --------------------------------------------------------------------------- silent wrong answers


def test_swapped_mcsr_inputs_are_recognised_by_their_grids(subject, tmp_path, capsys):
    out = tmp_path / "sr.nii.gz"
    rc, _, err = _run_cli(
        capsys, "synthesize", subject["t2_lowres"], subject["t1"], "-m", "t2_mcsr_x4", "-o", out, "-q"
    )
    assert rc == 2 and "look swapped" in err and not out.exists()
    rc, _, _ = _run_cli(capsys, "synthesize", subject["t1"], subject["t2_lowres"], "-m", "t2_mcsr_x4", "-o", out, "-q")
    assert rc == 0 and read_volume(out).shape == read_volume(subject["t1"]).shape


def test_duplicate_subject_in_a_batch_csv_is_refused(tmp_path, subject, capsys):
    manifest = tmp_path / "b.csv"
    manifest.write_text(f"subject,t1\nsub-01,{subject['t1']}\nsub-02,{subject['t1']}\nsub-01,{subject['t1']}\n")
    rc, _, err = _run_cli(capsys, "synthesize", "--batch", manifest, "-m", "t1_to_t2", "-o", tmp_path / "out", "-q")
    assert rc == 2 and "line 4: subject 'sub-01' also appears on line 2" in err


def test_constant_volume_is_synthesized_with_a_warning(tmp_path, capsys):
    const = _save(tmp_path / "const.nii.gz", np.full((32, 32, 8), 7.0))
    out = tmp_path / "o.nii.gz"
    rc, _, err = _run_cli(capsys, "synthesize", const, "-m", "t1_to_t2", "-o", out, "-q")
    assert rc == 0
    warnings_shown = [ln for ln in err.splitlines() if "warning:" in ln]
    assert len(warnings_shown) == 1 and "is constant (every voxel is 7)" in warnings_shown[0]
    assert "NeurosynthWarning" not in err  # no class name or source line without -v


def test_evaluate_refuses_more_bands_than_frequencies(tmp_path, subject, capsys):
    from napari_neurosynth.metrics import kspace_band_errors

    rc, _, err = _run_cli(capsys, "evaluate", subject["t2"], subject["t2"], "--bands", "100000")
    assert rc == 2 and "k-space bands must be between 1 and" in err
    # a band that holds no coefficient has an undefined error, never 0.0
    t = np.random.default_rng(0).random((4, 4, 40))
    bands = kspace_band_errors(t, t * 1.1, spacing=(8.0, 8.0, 1.0), n_bands=20)
    empty = [b for b in bands if not b["n_coefficients"]]
    assert empty and all(np.isnan(b["rel_error"]) for b in empty)
    assert all(b["rel_error"] == pytest.approx(1 / 11) for b in bands if b["n_coefficients"])


# --------------------------------------------------------------------------- noise before the message


def test_library_logs_and_warnings_stay_off_stderr(tmp_path):
    # nibabel logs a header problem (qfac) when it reads this file; ITK would warn from C++.
    path = tmp_path / "odd.nii"
    img = nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    img.header["pixdim"][0] = 3.0  # invalid qfac: nibabel logs it
    nib.save(img, str(path))
    missing = tmp_path / "missing_t2.nii.gz"
    proc = subprocess.run(
        [*NEUROSYNTH, "evaluate", str(path), str(missing)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurosynth evaluate: error:"), proc.stderr
    assert "pixdim" not in proc.stderr and "qfac" not in proc.stderr
    loud = subprocess.run(
        [*NEUROSYNTH, "evaluate", str(path), str(missing), "-v"], capture_output=True, text=True, timeout=120
    )
    assert "qfac" in loud.stderr  # shown once with -v


def test_itk_warnings_are_switched_off_for_the_cli(capsys):
    import SimpleITK as sitk

    main(["models", "list"])
    capsys.readouterr()
    assert sitk.ProcessObject.GetGlobalWarningDisplay() is False


# --------------------------------------------------------------------------- API errors are NeurosynthError


def test_volume_errors_are_neurosynth_errors():
    with pytest.raises(NeurosynthError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    nan_affine = np.eye(4)
    nan_affine[0, 3] = np.nan
    with pytest.raises(NeurosynthError, match="NaN/Inf"):
        Volume(np.zeros((2, 2, 2)), nan_affine)


def test_synthesize_refuses_a_nonfinite_affine(subject):
    from napari_neurosynth.inference import synthesize

    t1 = read_volume(subject["t1"])
    bad = t1.affine.copy()
    bad[2, 2] = np.inf
    with pytest.raises(NeurosynthError, match="NaN/Inf"):
        synthesize("t1_to_t2", Volume(t1.data, bad), device="cpu")


def test_atomic_write_survives_a_kill_mid_write(tmp_path):
    """A writer SIGKILLed while writing leaves the previous file whole and no visible partial file."""
    target = _save(tmp_path / "vol.nii", np.zeros((8, 8, 8)))
    before = target.read_bytes()
    code = textwrap.dedent(
        f"""
        import os, signal
        from napari_neurosynth.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half")
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    assert target.read_bytes() == before
    # the killed writer's temporary is hidden (a leading dot) and recognisable as partial
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(is_partial(p) and p.name.startswith(".") for p in leftovers)


def test_full_disk_napari_writer_keeps_the_previous_file(small_disk):
    """The napari writer (what File > Save Layers calls) goes through the same atomic write."""
    from napari_neurosynth.viewer.writer import write_image

    target = small_disk / "layer.nii"
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    assert write_image(str(target), np.ones((4, 4, 4), np.float32), {"affine": affine}) == [str(target)]
    before = target.read_bytes()
    _fill(small_disk)
    with pytest.raises(NeurosynthError, match="No space left"):
        write_image(str(target), np.random.default_rng(0).random((64, 64, 64)), {"affine": affine})
    assert target.read_bytes() == before
    assert _partials(small_disk) == []


def test_evaluate_csv_refuses_to_overwrite(tmp_path, subject, capsys):
    out = tmp_path / "m.csv"
    out.write_text("keep")
    rc, _, err = _run_cli(capsys, "evaluate", subject["t2"], subject["t2"], "--csv", out)
    assert rc == 2 and "--force" in err and out.read_text() == "keep"
    assert _run_cli(capsys, "evaluate", subject["t2"], subject["t2"], "--csv", out, "--force")[0] == 0
    assert out.read_text().startswith("kind,name")
    rc, _, err = _run_cli(capsys, "evaluate", subject["t2"], subject["t2"], "--csv", subject["t2"], "--force")
    assert rc == 2 and "also an input" in err
