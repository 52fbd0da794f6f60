"""Study definition files, `neurosynth study create`, and per-rater session logic (no Qt)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.ratings import RatingStore
from napari_neurosynth.study import (
    ReaderSession,
    create_study,
    load_study,
    presentation_order,
    study_from_dict,
)

CONDITIONS = ("acquired", "t1_to_t2", "unet_t2")


def _write_volume(path, seed):
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.random((20, 24, 20)), 2).astype(np.float32) * 1000
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def make_study_folder(root, n_cases=4, conditions=CONDITIONS, reference="t1"):
    """Condition-per-folder layout: root/<condition>/<case>.nii.gz (+ root/t1/ references)."""
    seed = 0
    for cond in (*conditions, *([reference] if reference else [])):
        for i in range(n_cases):
            _write_volume(root / cond / f"sub-{i + 1:02d}.nii.gz", seed)
            seed += 1
    return root


@pytest.fixture
def study_file(tmp_path):
    folder = make_study_folder(tmp_path / "vols")
    study = create_study(
        folder, study_id="pilot", seed=11, references=["t1"], turing=True, subscores=["realism", "lesion_conspicuity"]
    )
    return study.save(tmp_path / "study.yaml")


def test_create_and_load_round_trip(study_file, tmp_path):
    study = load_study(study_file)
    assert study.id == "pilot" and study.seed == 11 and study.blinded and study.turing
    assert study.subscores == ("realism", "lesion_conspicuity")
    assert study.conditions == ["acquired", "t1_to_t2", "unet_t2"]
    assert len(study.cases) == 4 and len(study.items) == 12
    case = study.case("sub-02")
    assert set(case.references) == {"t1"}
    assert case.conditions["t1_to_t2"] == (tmp_path / "vols" / "t1_to_t2" / "sub-02.nii.gz")
    # the file stores paths relative to itself, so a study folder can be moved
    text = yaml.safe_load(study_file.read_text())
    assert text["cases"][1]["conditions"]["t1_to_t2"] == "vols/t1_to_t2/sub-02.nii.gz"
    # JSON works too
    json_file = study.save(tmp_path / "study.json")
    assert load_study(json_file).items == study.items


def test_create_case_per_folder_layout(tmp_path):
    for i in range(3):
        for cond in ("acquired", "model_a", "t1"):
            _write_volume(tmp_path / "cases" / f"c{i}" / f"{cond}.nii.gz", i)
    study = create_study(tmp_path / "cases", references=["t1"])
    assert study.id == "cases"
    assert study.items == [(f"c{i}", c) for i in range(3) for c in ("acquired", "model_a")]
    assert all(set(c.references) == {"t1"} for c in study.cases)


def test_create_refuses_folders_without_models(tmp_path):
    with pytest.raises(NeurosynthError, match="not a folder"):
        create_study(tmp_path / "nope")
    make_study_folder(tmp_path / "only", conditions=("acquired",), reference=None)
    with pytest.raises(NeurosynthError, match="only the condition.*acquired.*add model outputs"):
        create_study(tmp_path / "only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeurosynthError, match="no volumes found"):
        create_study(tmp_path / "empty")


def test_bad_study_files(tmp_path, study_file):
    broken = tmp_path / "broken.yaml"
    broken.write_text("study: x\ncases: [\n  - id: a\n")
    with pytest.raises(NeurosynthError, match=r"does not parse at line \d+, column \d+"):
        load_study(broken)
    with pytest.raises(NeurosynthError, match="does not exist"):
        load_study(tmp_path / "missing.yaml")
    data = yaml.safe_load(study_file.read_text())
    data["cases"][0]["conditions"]["acquired"] = "vols/acquired/ghost.nii.gz"
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(yaml.safe_dump(data))
    with pytest.raises(NeurosynthError, match="names 1 missing volume.*ghost.nii.gz"):
        load_study(ghost)
    for bad, message in [
        ({**data, "seed": -1}, "seed"),
        ({**data, "questions": {"mos": False}}, "MOS is always asked"),
        ({**data, "questions": {"subscores": ["beauty"]}}, "subscores"),
        ({**data, "blinded": "yes"}, "true or false"),
        ({**data, "cases": []}, "non-empty list"),
        ({**data, "cases": [data["cases"][0], data["cases"][0]]}, "appears twice"),
        ({**data, "colour": 1}, "unknown key"),
        ({**data, "display": {"window_percentiles": [90, 10]}}, "window_percentiles"),
    ]:
        with pytest.raises(NeurosynthError, match=message):
            study_from_dict(bad, base=tmp_path)


def test_order_is_per_rater_and_reproducible(study_file):
    study = load_study(study_file)
    a1, a2, b = (presentation_order(study, r) for r in ("dr-a", "dr-a", "dr-b"))
    assert a1 == a2
    assert a1 != b
    assert sorted(a1) == sorted(study.items) == sorted(b)
    # the same case is not shown twice in a row
    for order in (a1, b):
        assert all(order[i][0] != order[i + 1][0] for i in range(len(order) - 1))
    # a different study seed gives a different order
    study.seed += 1
    assert presentation_order(study, "dr-a") != a1


class Clock:
    """A settable clock, so time on case is exact in the test."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_session_resume_time_and_history(study_file, tmp_path):
    study = load_study(study_file)
    db = tmp_path / "ratings.sqlite"
    clock = Clock()
    store = RatingStore(db)
    session = ReaderSession(study, "dr-a", store, clock=clock)
    assert not session.resumed and session.position == 0
    assert session.items == presentation_order(study, "dr-a")
    first = session.current
    clock.now += 7.0
    session.rate(3, realism=2, lesion_conspicuity=4, turing_choice="synthetic", turing_confidence=3)
    session.next()
    clock.now += 2.0
    session.previous()  # back to the first item: time keeps adding up
    clock.now += 1.5
    row_id = session.rate(4, realism=2, lesion_conspicuity=4, turing_choice="synthetic", turing_confidence=3)
    assert session.rate(4, realism=2, lesion_conspicuity=4, turing_choice="synthetic", turing_confidence=3) == row_id
    session.next()
    clock.now += 3.0
    session.rate(5)
    session.next()
    assert session.position == 2 and session.progress == (2, 12)
    store.close()

    # the rater comes back: same order, same place
    store = RatingStore(db)
    again = ReaderSession(study, "dr-a", store, clock=clock)
    assert again.resumed and again.items == session.items and again.position == 2
    rows = store.ratings(study="pilot", rater="dr-a", history=True)
    assert [(r["score"], r["is_current"]) for r in rows] == [(3, 0), (4, 1), (5, 1)]
    assert rows[0]["seconds_on_case"] == pytest.approx(7.0)
    assert rows[1]["seconds_on_case"] == pytest.approx(8.5)  # 7 + 1.5, the 2 s elsewhere not counted
    assert rows[1]["supersedes"] == rows[0]["id"]
    assert (rows[1]["case_id"], rows[1]["condition"]) == first
    assert again.rating_for(first)["score"] == 4
    assert again.first_unrated() == 2
    # another rater gets their own order
    other = ReaderSession(study, "dr-b", store, clock=clock)
    assert other.position == 0 and other.items != again.items
    store.close()


def test_session_refuses_what_the_study_lacks(study_file, tmp_path):
    study = load_study(study_file)
    with RatingStore(tmp_path / "r.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        with pytest.raises(NeurosynthError, match="no case 'sub-99'"):
            session.record("sub-99", "acquired", 3)
        with pytest.raises(NeurosynthError, match="has no condition 'pix2pix'"):
            session.record("sub-01", "pix2pix", 3)
        with pytest.raises(NeurosynthError, match="does not ask for diagnostic_usability"):
            session.rate(3, diagnostic_usability=4)
        with pytest.raises(NeurosynthError, match="score must be an integer"):
            session.rate(9)
        with pytest.raises(NeurosynthError, match="rater id"):
            ReaderSession(study, "  ", store)
        assert store.ratings(history=True) == []
        # a rater whose stored order no longer matches the study file is told so
        study.cases = study.cases[:-1]
        with pytest.raises(NeurosynthError, match="changed since rater 'dr-a' started"):
            ReaderSession(study, "dr-a", store)


def test_cli_create(tmp_path, capsys):
    folder = make_study_folder(tmp_path / "vols", n_cases=2)
    out = tmp_path / "s.yaml"
    assert (
        main(
            [
                "study",
                "create",
                str(folder),
                "-o",
                str(out),
                "--id",
                "cli",
                "--seed",
                "5",
                "--reference",
                "t1",
                "--turing",
                "--subscores",
            ]
        )
        == 0
    )
    assert "2 cases, 6 items" in capsys.readouterr().out
    study = load_study(out)
    assert study.id == "cli" and study.seed == 5 and study.turing
    assert len(study.subscores) == 4
    # refuses to overwrite, and reports bad folders on one line with exit 2
    assert main(["study", "create", str(folder), "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["study", "create", str(tmp_path / "none"), "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert json.loads(json.dumps(study.to_dict()))["study"] == "cli"
