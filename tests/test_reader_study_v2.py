"""Reader-study core of issue 17: typed questions, hanging protocols, localisation, audit, crossover, AUCs.

Real files (a 3 mm phantom written with nibabel), a real SQLite store on disk, the
real CLI; the clock of time-on-case and of the washout is injected, never slept.
"""

from __future__ import annotations

import csv
import re
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.io import Volume, read_volume, write_volume
from napari_neurosynth.localization import LesionTruth
from napari_neurosynth.questions import Question, parse_questions, validate_answers
from napari_neurosynth.ratings import SCHEMA_VERSION, RatingStore
from napari_neurosynth.reader_stats import (
    ScoreRow,
    answers_by_item,
    auc,
    imrmc_text,
    reader_averaged_auc,
    turing_auc,
)
from napari_neurosynth.study import ReaderSession, load_study, rater_seed

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory, phantom3):
    """Two cases on the phantom's grid: sub-01 with the phantom's lesions, sub-02 lesion-free (an all-zero mask)."""
    root = tmp_path_factory.mktemp("study")
    mask = phantom3["lesion_mask"]
    for case in ("sub-01", "sub-02"):
        write_volume(phantom3["t2"], root / "acquired" / f"{case}.nii.gz")
        write_volume(phantom3["t2"].with_data(phantom3["t2"].data * 0.9 + 0.05), root / "model" / f"{case}.nii.gz")
        write_volume(phantom3["t1"], root / "t1" / f"{case}.nii.gz")
    write_volume(mask.with_data((mask.data > 0).astype(np.uint8)), root / "truth" / "sub-01.nii.gz")
    write_volume(mask.with_data(np.zeros_like(mask.data, dtype=np.uint8)), root / "truth" / "sub-02.nii.gz")
    return root


STUDY = """\
study: ms-v2
version: 2
seed: 11
questions:
  - {id: mos, type: likert, prompt: Overall quality, anchors: {1: bad, 5: excellent}}
  - {id: turing, type: choice, prompt: "Real or synthetic?", options: [real, synthetic], keys: {r: real, s: synthetic}}
  - {id: turing_confidence, type: likert, prompt: Confidence}
  - {id: artefacts, type: multiple_choice, options: [motion, blur, none], required: false}
  - {id: count, type: number, prompt: Lesions seen, min: 0, max: 30, step: 1}
  - {id: diagnostic, type: yes_no, prompt: "Diagnostic?"}
  - {id: lesions, type: localisation, prompt: Mark each lesion, margin_mm: 3}
  - {id: comment, type: text, required: false, max_length: 200}
hanging:
  images: [{image: test, preset: brain}, {image: t1, preset: soft}]
  planes: [axial, coronal, sagittal]
  windowing: fixed
answers: {allow_back: true, allow_edit: true}
{sessions}cases:
  - id: sub-01
    conditions: {acquired: acquired/sub-01.nii.gz, model: model/sub-01.nii.gz}
    references: {t1: t1/sub-01.nii.gz}
    lesion_mask: truth/sub-01.nii.gz
  - id: sub-02
    conditions: {acquired: acquired/sub-02.nii.gz, model: model/sub-02.nii.gz}
    references: {t1: t1/sub-02.nii.gz}
    lesion_mask: truth/sub-02.nii.gz
"""

CROSSOVER = """\
sessions:
  - {id: unaided, conditions: [acquired]}
  - {id: aided, washout: 14d}
"""


def write_study(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


def full_answers(marks=()):
    return {
        "mos": 4,
        "turing": "real",
        "turing_confidence": 3,
        "count": 2,
        "diagnostic": "y",
        "lesions": list(marks),
        "artefacts": ["blur"],
    }


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth - 1]


def brute_distance(mask: Volume, point) -> float:
    """Distance (mm) from a world point's voxel centre to the nearest lesion voxel centre, by brute force."""
    ijk = np.rint(np.linalg.inv(mask.affine) @ np.array([*point, 1.0]))[:3]
    centre = (mask.affine @ np.array([*ijk, 1.0]))[:3]
    idx = np.argwhere(mask.data > 0)
    world = (mask.affine[:3, :3] @ idx.T).T + mask.affine[:3, 3]
    return float(np.sqrt(((world - centre) ** 2).sum(axis=1)).min())


# ------------------------------------------------------------------------------ localisation
def test_marks_scored_against_the_phantom_lesion_mask(files):
    mask = read_volume(files / "truth" / "sub-01.nii.gz")
    truth = LesionTruth(mask)
    assert truth.n_lesions >= 3  # tumour core+oedema, plaques, ... as separate components
    big = max(truth.lesions, key=lambda les: les.voxels)
    centre = big.centroid_mm
    # A voxel just outside the lesion: face neighbour of a boundary voxel (3 mm away), and two voxels out (6 mm).
    labels = truth.labels
    inside = np.argwhere(labels == big.lesion)
    edge = inside[inside[:, 0].argmax()]  # the lesion's last voxel along i
    just_out = mask.world(edge + np.array([1, 0, 0]))
    two_out = mask.world(edge + np.array([2, 0, 0]))
    far = np.array(centre)
    # Walk along +i from the centroid until the brute-force distance to any lesion is >= 20 mm.
    step = 0
    while brute_distance(mask, far) < 20.0:
        step += 1
        far = np.array(centre) + np.array([3.0 * step, 0.0, 0.0])
    marks = [
        {"x": centre[0], "y": centre[1], "z": centre[2], "confidence": 5},
        {"x": far[0], "y": far[1], "z": far[2], "confidence": 2},
        {"x": just_out[0] + 1.2, "y": just_out[1], "z": just_out[2], "confidence": 3},  # rounds to that voxel
        {"x": 1e4, "y": 0.0, "z": 0.0, "confidence": 1},  # off the grid
    ]
    score = truth.score(marks, margin_mm=3.0)
    hits = [m.hit for m in score.marks]
    assert hits == [True, False, True, False]
    assert score.marks[0].lesion == big.lesion and score.marks[0].distance_mm == 0.0
    assert score.marks[1].distance_mm == pytest.approx(brute_distance(mask, far), abs=1e-6)
    assert score.marks[1].distance_mm >= 20.0
    assert score.marks[2].distance_mm == pytest.approx(3.0) and score.marks[2].lesion == big.lesion
    # Two voxels out (6 mm) misses a 3 mm margin and hits a 6 mm one.
    assert not truth.score([{"x": two_out[0], "y": two_out[1], "z": two_out[2], "confidence": 1}], 3.0).marks[0].hit
    assert truth.score([{"x": two_out[0], "y": two_out[1], "z": two_out[2], "confidence": 1}], 6.0).marks[0].hit
    found = {les.lesion: (les.found, les.confidence) for les in score.lesions}
    assert found[big.lesion] == (True, 5)
    assert sum(f for f, _ in found.values()) == 1  # every other lesion is missed
    assert score.abnormal and score.lroc_score == 5 and score.top_mark_hit and score.n_false_marks == 2
    # Only false marks on a lesion case: LROC-ready score 0 even though the reader was confident.
    assert truth.score([marks[1]], 3.0).lroc_score == 0


# ------------------------------------------------------------------------------ study file, sessions
def test_typed_study_loads_with_hanging_protocol_and_keyboard(files):
    study = load_study(write_study(files, "typed.yaml", STUDY.replace("{sessions}", "")))
    assert [q.id for q in study.questions] == [
        "mos",
        "turing",
        "turing_confidence",
        "artefacts",
        "count",
        "diagnostic",
        "lesions",
        "comment",
    ]
    keys = {q.id: q.keyboard_map() for q in study.questions}
    assert keys["mos"] == {str(v): v for v in range(1, 6)}
    assert keys["turing"] == {"r": "real", "s": "synthetic"}
    assert keys["artefacts"] == {"1": "motion", "2": "blur", "3": "none"}
    assert keys["diagnostic"] == {"y": True, "n": False}
    assert study.turing and study.hanging.triplanar and not study.hanging.may_change_windowing
    with RatingStore(files / "typed.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        shown = session.shown_images()
        assert [(s.key, s.preset, s.is_test) for s in shown] == [("test", "brain", True), ("t1", "soft", False)]
        case = study.case(session.current[0])
        assert shown[0].path == case.conditions[session.current[1]] and shown[1].path == case.references["t1"]
        assert shown[1].contrast == "t1"


def test_each_question_type_is_validated():
    qs = parse_questions(
        [
            {"id": "l", "type": "likert", "min": 0, "max": 4},
            {"id": "c", "type": "choice", "options": ["a", "b"]},
            {"id": "m", "type": "multiple_choice", "options": ["a", "b", "c"], "max_selected": 2},
            {"id": "n", "type": "number", "min": 0, "max": 10, "step": 0.5},
            {"id": "y", "type": "yes_no"},
            {"id": "t", "type": "text", "max_length": 5, "required": False},
            {"id": "loc", "type": "localisation", "max_marks": 2},
        ]
    )
    good = {"l": 0, "c": "b", "m": ["c", "a"], "n": "2.5", "y": "no", "t": " ok ", "loc": [[1, 2, 3, 5]]}
    assert validate_answers(qs, good) == {
        "l": 0,
        "c": "b",
        "m": ["a", "c"],
        "n": 2.5,
        "y": False,
        "t": "ok",
        "loc": [{"x": 1.0, "y": 2.0, "z": 3.0, "confidence": 5}],
    }
    bad = {
        "l": (5, "an integer from 0 to 4"),
        "c": ("z", "one of a, b"),
        "m": (["a", "b", "c"], "at most 2"),
        "n": (2.25, "in steps of 0.5"),
        "y": ("maybe", "yes or no"),
        "t": ("too long", "at most 5 characters"),
        "loc": ([[1, 2, 3, 6]], "confidence of a mark must be an integer from 1 to 5"),
    }
    for qid, (value, message) in bad.items():
        with pytest.raises(NeurosynthError, match=re.escape(message)):
            validate_answers(qs, {**good, qid: value})
    with pytest.raises(NeurosynthError, match="question 'y' is required"):
        validate_answers(qs, {k: v for k, v in good.items() if k != "y"})
    assert "y" not in validate_answers(qs, {"l": 1}, partial=True)
    assert validate_answers(qs, {**good, "loc": []})["loc"] == []  # "no finding" is an answer
    assert Question("x", "number", min=0, max=1).keyboard_map() == {}


@pytest.mark.parametrize(
    ("edit", "needle", "message"),
    [
        (lambda s: s.replace("type: yes_no", "type: slider"), "type: slider", "unknown type 'slider'"),
        (
            lambda s: s.replace("{image: t1, preset: soft}", "{image: t2_ref, preset: soft}"),
            "images:",
            "hanging image 't2_ref' is missing from case 'sub-01'",
        ),
        (lambda s: s.replace("  - id: sub-02\n", "  - id: sub-01\n"), "- id: sub-01", "case id 'sub-01' appears twice"),
        (
            lambda s: s.replace("    lesion_mask: truth/sub-02.nii.gz\n", ""),
            "type: localisation",
            "localisation question 'lesions' needs a ground-truth 'lesion_mask' in every case; missing in sub-02",
        ),
        (
            lambda s: s.replace("{sessions}", CROSSOVER.replace("14d", "two weeks")),
            "washout:",
            "washout 'two weeks' is not a duration",
        ),
    ],
    ids=["unknown-type", "hanging-image-missing", "duplicate-case", "localisation-without-mask", "bad-washout"],
)
def test_bad_study_files_name_the_file_and_line(files, edit, needle, message):
    text = edit(STUDY).replace("{sessions}", "")
    path = write_study(files, "bad.yaml", text)
    nth = 2 if needle == "- id: sub-01" else 1
    line = line_of(text, needle, nth)
    with pytest.raises(NeurosynthError) as info:
        load_study(path, check_files=False)
    assert str(info.value).startswith(f"study file {path}, line {line}: ") and message in str(info.value)
    assert "\n" not in str(info.value)
    # The CLI says the same on one line and exits 2 (study create/migrate-file read the file).
    assert main(["study", "migrate-file", str(path), "-o", str(files / "bad-out.yaml"), "--force"]) == 2


def test_old_study_file_keeps_working_and_migrates(files, capsys):
    old = textwrap.dedent(
        """\
        study: legacy
        seed: 3
        questions: {mos: true, subscores: [realism], turing: true}
        cases:
          - id: sub-01
            conditions: {acquired: acquired/sub-01.nii.gz, model: model/sub-01.nii.gz}
            references: {t1: t1/sub-01.nii.gz}
        """
    )
    path = write_study(files, "old.yaml", old)
    study = load_study(path)
    assert [q.id for q in study.questions] == ["mos", "realism", "turing", "turing_confidence", "comment"]
    assert [q.required for q in study.questions] == [True, True, True, True, False]
    assert study.to_dict()["questions"] == {"mos": True, "subscores": ["realism"], "turing": True}  # written as before
    with RatingStore(files / "legacy.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        session.rate(4, realism=3, turing_choice="synthetic", turing_confidence=2)  # the old API
        assert session.answers_for() == {"mos": 4, "realism": 3, "turing": "synthetic", "turing_confidence": 2}
        assert [r["score"] for r in store.ratings(study="legacy")] == [4]  # the ratings table, as before
        assert session.progress == (1, 2) and store.schema_version() == SCHEMA_VERSION
    new = files / "migrated.yaml"
    assert main(["study", "migrate-file", str(path), "-o", str(new)]) == 0
    assert "5 typed questions" in capsys.readouterr().out
    migrated = load_study(new)
    assert "version: 2" in new.read_text() and migrated.questions == study.questions
    assert migrated.items == study.items and migrated.case("sub-01").references == study.case("sub-01").references
    assert main(["study", "migrate-file", str(path), "-o", str(new)]) == 2  # exists: --force needed
    assert "--force" in capsys.readouterr().err


# ------------------------------------------------------------------------------ answers, audit, policy, time
def test_an_edit_keeps_its_audit_row_and_policy_can_forbid_it(files):
    study = load_study(write_study(files, "edit.yaml", STUDY.replace("{sessions}", "")))
    with RatingStore(files / "edit.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        first = session.answer(full_answers())
        assert session.is_done() and session.progress == (1, 4)
        assert session.answer(full_answers()) == first  # same answers: nothing written
        session.answer({**full_answers(), "mos": 2, "comment": "re-read"})
        trail = session.audit()
        edits = [(r["question"], r["old_value"], r["new_value"]) for r in trail if r["old_value"] is not None]
        assert edits == [("mos", 4, 2)]
        assert {r["question"] for r in trail if r["old_value"] is None} == {*full_answers(), "comment"}
        assert datetime.fromisoformat(trail[-1]["changed_at"]) >= datetime.fromisoformat(trail[0]["changed_at"])
        assert session.answers_for()["mos"] == 2 and session.rating_for()["score"] == 2  # the ratings row follows
        # Leaving an optional answer out of a full answer clears it, and that is audited too.
        session.answer({**full_answers(), "mos": 2})
        assert "comment" not in session.answers_for()
        assert [(r["old_value"], r["new_value"]) for r in session.audit() if r["question"] == "comment"][-1] == (
            "re-read",
            None,
        )
    locked = STUDY.replace("{sessions}", "").replace(
        "allow_back: true, allow_edit: true", "allow_back: false, allow_edit: false"
    )
    study = load_study(write_study(files, "locked.yaml", locked))
    with RatingStore(files / "locked.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        session.answer({"mos": 3}, partial=True)  # a draft may still change ...
        session.answer({"mos": 4}, partial=True)
        session.answer(full_answers())
        assert not session.can_edit()
        with pytest.raises(NeurosynthError, match="does not let answers change once given"):
            session.answer({**full_answers(), "mos": 1})  # ... a done item may not
        # mos 3, mos 4 (drafts), then the other answers; the unchanged mos 4 is not written again.
        assert session.answers_for()["mos"] == 4 and len(session.audit()) == 1 + len(full_answers())
        session.next()
        with pytest.raises(NeurosynthError, match="does not let readers go back"):
            session.previous()
        assert session.position == 1


def test_time_on_case_counts_only_while_on_screen(files):
    study = load_study(write_study(files, "time.yaml", STUDY.replace("{sessions}", "")))
    now = [100.0]
    with RatingStore(files / "time.sqlite") as store:
        session = ReaderSession(study, "dr-a", store, clock=lambda: now[0])
        now[0] += 30  # 30 s reading
        session.pause()
        now[0] += 600  # the reading window is hidden for 10 minutes
        assert session.paused and session.seconds_on_current() == 30
        session.resume()
        now[0] += 12
        session.answer(full_answers())
        assert store.answers(study="ms-v2")[0]["seconds_on_case"] == pytest.approx(42.0)
        session.next()
        now[0] += 5
        assert session.seconds_on_current() == pytest.approx(5.0)


def test_changed_study_file_is_refused_or_migrated_with_a_warning(files):
    text = STUDY.replace("{sessions}", "")
    study = load_study(write_study(files, "change.yaml", text))
    with RatingStore(files / "change.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        while session.current[0] != "sub-02":
            session.next()
        session.answer(full_answers())
        # A case with answers removed: refused.
        cut = text[: text.index("  - id: sub-02")]
        with pytest.raises(NeurosynthError, match=r"2 item\(s\) removed, 1 of them rated \(sub-02/"):
            ReaderSession(load_study(write_study(files, "change-cut.yaml", cut)), "dr-a", store)
        # A question with answers removed: refused.
        no_count = text.replace("  - {id: count, type: number, prompt: Lesions seen, min: 0, max: 30, step: 1}\n", "")
        with pytest.raises(NeurosynthError, match=r"question\(s\) count were removed"):
            ReaderSession(load_study(write_study(files, "change-q.yaml", no_count)), "dr-a", store)
        # A condition added: migrated with a warning, the new items appended to the rater's order.
        more = text.replace("model: model/sub-01.nii.gz}", "model: model/sub-01.nii.gz, model_b: t1/sub-02.nii.gz}")
        more = more.replace("references: {t1: t1/sub-01.nii.gz}", "references: {t1: t1/sub-01.nii.gz}", 1)
        with pytest.warns(UserWarning, match="1 item\\(s\\) added"):
            grown = ReaderSession(load_study(write_study(files, "change-add.yaml", more)), "dr-a", store)
        assert grown.items[:4] == session.items and grown.items[4] == ("sub-01", "model_b")


# ------------------------------------------------------------------------------ crossover
def test_crossover_session_two_waits_for_the_washout(files):
    study = load_study(write_study(files, "cross.yaml", STUDY.replace("{sessions}", CROSSOVER)))
    assert [(s.id, s.washout) for s in study.sessions] == [("unaided", timedelta(0)), ("aided", timedelta(days=14))]
    with RatingStore(files / "cross.sqlite") as store:
        with pytest.raises(NeurosynthError, match="must finish reading session 'unaided'"):
            ReaderSession(study, "dr-a", store, session="aided", now=lambda: T0)
        first = ReaderSession(study, "dr-a", store, now=lambda: T0)
        assert first.session_id == "unaided" and sorted(first.items) == [("sub-01", "acquired"), ("sub-02", "acquired")]
        with pytest.raises(NeurosynthError, match="has 2 image"):
            first.finish()
        for _ in first.items:
            first.answer(full_answers())
            first.next()
        assert first.finish() == T0
        day13 = T0 + timedelta(days=13)
        with pytest.raises(NeurosynthError) as info:
            ReaderSession(study, "dr-a", store, now=lambda: day13)
        assert "opens for rater 'dr-a' on 2026-03-16 09:30 UTC" in str(info.value)
        assert store.load_reading_session("dr-a", "ms-v2", "aided") is None  # nothing was started
        later = T0 + timedelta(days=14, seconds=1)
        second = ReaderSession(study, "dr-a", store, now=lambda: later)
        assert second.session_id == "aided" and len(second.items) == 4 and second.progress == (0, 4)
        # Orders: per reader and session, from stored seeds, the same on resume.
        record = store.load_reading_session("dr-a", "ms-v2", "aided")
        assert record["seed"] == rater_seed(study, "dr-a", "aided") != rater_seed(study, "dr-a", "unaided")
        again = ReaderSession(study, "dr-a", store, now=lambda: later)
        assert again.items == second.items and again.resumed is False
        orders = set()
        for rater in ("dr-b", "dr-c", "dr-d", "dr-e", "dr-f", "dr-g"):
            orders.add(tuple(ReaderSession(study, rater, store, session="unaided", now=lambda: T0).items))
        assert len(orders) == 2  # two items: both orders occur among these raters
        # Answers of the two sessions are kept apart (the acquired images are read in both).
        second.answer(full_answers())
        sessions = {a["reading_session"] for a in store.answers(study="ms-v2", rater="dr-a")}
        assert sessions == {"unaided", "aided"}


# ------------------------------------------------------------------------------ statistics, exports
def test_reader_averaged_auc_and_bootstrap_on_a_known_answer():
    # Reader a separates perfectly (AUC 1), reader b is reversed (AUC 0): the average is 0.5.
    rows = [ScoreRow("a", f"c{i}", "m", float(i), int(i >= 10)) for i in range(20)]
    rows += [ScoreRow("b", f"c{i}", "m", float(-i), int(i >= 10)) for i in range(20)]
    result = reader_averaged_auc(rows, n_boot=400, seed=1)["m"]
    assert result.auc == 0.5 and result.per_reader == {"a": 1.0, "b": 0.0}
    # Resampling readers gives averages of 0, 0.5 or 1 only; the 95 % CI spans them.
    assert result.ci_low == 0.0 and result.ci_high == 1.0 and result.n_boot == 400
    # One reader with a known AUC of 0.7 (14 of 20 positive-negative pairs ordered right).
    pos, neg = [5, 6, 7, 8, 3], [1, 2, 4, 9]
    assert auc(pos, neg) == pytest.approx(14 / 20)
    single = [ScoreRow("a", f"p{i}", "m", float(s), 1) for i, s in enumerate(pos)]
    single += [ScoreRow("a", f"n{i}", "m", float(s), 0) for i, s in enumerate(neg)]
    r = reader_averaged_auc(single, n_boot=2000, seed=0)["m"]
    assert r.auc == pytest.approx(0.7) and r.ci_low < 0.7 < r.ci_high and 0.2 < r.ci_low < 0.6


def test_turing_auc_lroc_and_exports_from_a_real_store(files, capsys):
    study_path = write_study(files, "stats.yaml", STUDY.replace("{sessions}", ""))
    study = load_study(study_path)
    db = files / "stats.sqlite"
    mask = read_volume(files / "truth" / "sub-01.nii.gz")
    big = max(LesionTruth(mask).lesions, key=lambda les: les.voxels)
    hit = {"x": big.centroid_mm[0], "y": big.centroid_mm[1], "z": big.centroid_mm[2], "confidence": 4}
    with RatingStore(db) as store:
        for rater in ("dr-a", "dr-b"):
            session = ReaderSession(study, rater, store)
            for _ in session.items:
                case, condition = session.current
                synthetic = condition == "model"
                answers = full_answers([hit] if case == "sub-01" else [{**hit, "confidence": 2}])
                answers.update(turing="synthetic" if synthetic else "real", turing_confidence=4)
                session.answer(answers)
                session.next()
        reads = answers_by_item(store.answers(study="ms-v2"))
    assert len(reads) == 8 and turing_auc(reads, n_boot=100)["model"].auc == 1.0  # every synthetic image spotted
    # iMRMC export of the LROC task, checked line by line.
    out = files / "lroc.imrmc"
    args = ["study", "export", "--db", str(db), "--study-file", str(study_path), "--format", "imrmc", "--task", "lroc"]
    assert main([*args, "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    begin = lines.index("BEGIN DATA:")
    header = lines[:begin]
    assert header[0].startswith("napari-neurosynth reader study ms-v2, task lroc")
    assert header[1:] == ["NR: 2", "N0: 1", "N1: 1", "NM: 2", ""]
    assert lines[begin + 1 : begin + 3] == ["-1,sub-01,0,1", "-1,sub-02,0,0"]
    assert lines[begin + 3 :] == [
        f"{r},{c},{m},{s}"
        for r in ("dr-a", "dr-b")
        for m in ("acquired", "model")
        for c, s in (("sub-01", 4), ("sub-02", 2))
    ]
    assert all(re.fullmatch(r"[^,\s]+,[^,\s]+,[^,\s]+,-?[\d.]+", line) for line in lines[begin + 1 :])
    assert imrmc_text([ScoreRow("a", "c1", "m", 7.0, 1), ScoreRow("a", "c2", "m", 2.5, 0)]).splitlines()[-2:] == [
        "a,c1,m,7",
        "a,c2,m,2.5",
    ]
    assert main([*args, "-o", str(out)]) == 2 and "--force" in capsys.readouterr().err  # never overwritten silently
    # Marks, lesions and cases tables (FROC/LROC-ready), and the audit trail.
    tables = {name: files / f"{name}.csv" for name in ("marks", "lesions", "cases", "answers", "audit")}
    cli = ["study", "export", "--db", str(db), "--study-file", str(study_path), "--study", "ms-v2"]
    for name, path in tables.items():
        cli += [f"--{name}", str(path)]
    assert main(cli) == 0
    read = {name: list(csv.DictReader(path.read_text().splitlines())) for name, path in tables.items()}
    assert len(read["marks"]) == 8 and {m["hit"] for m in read["marks"] if m["case_id"] == "sub-01"} == {"1"}
    assert {m["hit"] for m in read["marks"] if m["case_id"] == "sub-02"} == {"0"}
    n_lesions = LesionTruth(mask).n_lesions
    assert len(read["lesions"]) == 4 * n_lesions  # 2 raters x 2 conditions x the lesions of sub-01
    assert sum(row["found"] == "1" for row in read["lesions"]) == 4  # the big lesion, found in every read
    assert {(c["case_id"], c["lroc_score"], c["abnormal"]) for c in read["cases"]} == {
        ("sub-01", "4", "1"),
        ("sub-02", "2", "0"),
    }
    assert len(read["audit"]) == len(read["answers"]) == 8 * len(full_answers())
    # The summary adds reader-averaged AUCs with bootstrap CIs, and a plot.
    plot = files / "auc.png"
    assert (
        main(
            [
                "study",
                "summary",
                "--db",
                str(db),
                "--study-file",
                str(study_path),
                "--study",
                "ms-v2",
                "--n-boot",
                "200",
                "--auc-plot",
                str(plot),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "Real-vs-synthetic AUC" in text and re.search(r"model\s+1\.000 \[1\.000, 1\.000\]", text)
    lroc = text[text.index("Localisation (LROC-ready) AUC") :].splitlines()[1:3]
    assert sorted(line.split()[0] for line in lroc) == ["acquired", "model"]
    assert all("1.000 [1.000, 1.000]  (2 readers, 1+/1- cases)" in line for line in lroc)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_store_schema_3_upgrades_a_version_2_file(tmp_path):
    import sqlite3

    from napari_neurosynth.ratings import MIGRATIONS

    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for version in (1, 2):
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (2, 'then')")
    conn.execute("INSERT INTO raters VALUES ('a', 'then')")
    conn.execute(
        "INSERT INTO ratings (rater, case_id, condition, score, created_at, uid)"
        " VALUES ('a', 'c1', 'm', 3, 'then', 'u')"
    )
    conn.commit()
    conn.close()
    with RatingStore(path, read_only=True) as old:  # read-only: not migrated, no answers yet
        assert old.schema_version() == 2 and old.answers() == [] and old.audit() == []
    with RatingStore(path) as store:
        assert store.schema_version() == 3 and [r["score"] for r in store.ratings()] == [3]
        store.record_answers("a", "s", "c1", "m", {"q": 1})
        store.record_answers("a", "s", "c1", "m", {"q": 2})
        assert [(r["old_value"], r["new_value"]) for r in store.audit()] == [(None, 1), (1, 2)]


def test_postgres_store_has_the_same_typed_answer_api(tmp_path):
    """The same answers, audit and reading sessions on a real throwaway PostgreSQL server."""
    import uuid

    pytest.importorskip("psycopg")
    from pg_server import PostgresServer, postgres_bin

    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    server = PostgresServer(binaries)
    try:
        name = f"t_{uuid.uuid4().hex[:10]}"
        server.psql(f"CREATE DATABASE {name}")
        url = f"postgresql://admin@127.0.0.1:{server.port}/{name}"
        with RatingStore(url, journal=tmp_path / "j.sqlite") as store:
            assert type(store).__name__ == "PostgresRatingStore" and store.schema_version() == SCHEMA_VERSION
            store.record_answers("dr-a", "s", "c1", "m", {"lesions": [], "diag": True}, legacy=(4, {}))
            store.record_answers("dr-a", "s", "c1", "m", {"diag": False})
            assert [(a["question"], a["value"]) for a in store.answers(study="s")] == [
                ("lesions", []),
                ("diag", False),
            ]
            assert [(r["old_value"], r["new_value"]) for r in store.audit() if r["question"] == "diag"] == [
                (None, True),
                (True, False),
            ]
            assert [r["score"] for r in store.ratings(study="s")] == [4]
            store.create_reading_session("dr-a", "s", "unaided", 2**62, [("c1", "acquired")])
            store.end_reading_session("dr-a", "s", "unaided", T0)
            record = store.load_reading_session("dr-a", "s", "unaided")
            assert record["seed"] == 2**62 and datetime.fromisoformat(record["ended_at"]) == T0
            # The server goes away: a rating-shaped answer goes to the journal, any other is refused.
            store._went_offline(OSError("network is unreachable"))  # as a dropped link leaves it
            assert store.record_answers("dr-a", "s", "c2", "m", {"mos": 3}, legacy=(3, {})) == -1
            with pytest.raises(NeurosynthError, match="the answer was NOT saved"):
                store.record_answers("dr-a", "s", "c2", "m", {"lesions": []})
            assert [a["question"] for a in store.answers(study="s")] == ["lesions", "diag"]  # its last answer
    finally:
        server.remove()
