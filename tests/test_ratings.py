"""RatingStore: durability under SIGKILL, two concurrent writers, history, bad input."""

from __future__ import annotations

import csv
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.ratings import COLUMNS, SCHEMA_VERSION, RatingStore, default_db_path

HELPER = Path(__file__).parent / "helpers" / "record_loop.py"


def _spawn(db: Path, rater: str, n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(db), rater, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_pragmas_and_schema(tmp_path):
    db = tmp_path / "r.sqlite"
    with RatingStore(db) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert store.schema_version() == SCHEMA_VERSION
    # reopening does not re-apply migrations
    with RatingStore(db) as store:
        rows = store._conn.execute("SELECT version FROM schema_version").fetchall()
        assert [r[0] for r in rows] == [SCHEMA_VERSION]


def test_record_history_and_export(tmp_path):
    db = tmp_path / "r.sqlite"
    with RatingStore(db) as store:
        first = store.record(
            "dr-a",
            "sub-01",
            "t1_to_t2",
            2,
            study="s1",
            realism=2,
            turing_choice="Synthetic",
            turing_confidence=4,
            seconds_on_case=12.5,
        )
        other = store.record("dr-a", "sub-01", "acquired", 5, study="s1")
        loose = store.record("dr-b", "sub-01", "t1_to_t2", 3)  # outside any study
        second = store.record(
            "dr-a", "sub-01", "t1_to_t2", 4, study="s1", comment="looked again", metadata={"site": "B"}
        )
        current = store.ratings()
        assert [r["id"] for r in current] == [other, loose, second]
        changed = [r for r in current if r["id"] == second][0]
        assert changed["score"] == 4 and changed["supersedes"] == first and changed["is_current"] == 1
        assert changed["realism"] is None and changed["comment"] == "looked again"
        history = store.ratings(history=True)
        assert len(history) == 4
        old = [r for r in history if r["id"] == first][0]
        assert old["is_current"] == 0 and old["turing_choice"] == "synthetic" and old["seconds_on_case"] == 12.5
        assert store.ratings(study="s1", rater="dr-a") == [r for r in current if r["rater"] == "dr-a"]
        n = store.export_csv(tmp_path / "out.csv")
    assert n == 4
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["score"]) for r in rows] == [2, 5, 3, 4]
    assert [r["is_current"] for r in rows] == ["0", "1", "1", "1"]
    assert rows[3]["metadata"] == '{"site": "B"}'


@pytest.mark.parametrize("score", [0, 6, 3.5, "4", None, True])
def test_bad_score_refused(tmp_path, score):
    with RatingStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(NeurosynthError, match="score must be an integer from 1 to 5"):
            store.record("dr-a", "c", "acquired", score)
        assert store.ratings(history=True) == []


def test_check_constraint_is_the_guard(tmp_path):
    """Even SQL that bypasses record() cannot store a score outside 1-5."""
    db = tmp_path / "r.sqlite"
    RatingStore(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO raters VALUES ('x', 'now')")
    for bad in (0, 6, 2.5, "high"):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(
                "INSERT INTO ratings (rater, case_id, condition, score, created_at) VALUES ('x', 'c', 'k', ?, 'now')",
                (bad,),
            )
    # foreign keys: a rating by an unknown rater is refused
    conn.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute(
            "INSERT INTO ratings (rater, case_id, condition, score, created_at) VALUES ('nobody', 'c', 'k', 3, 'now')"
        )
    conn.close()


def test_bad_fields_refused(tmp_path):
    with RatingStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(NeurosynthError, match="unknown rating field.*realsim"):
            store.record("dr-a", "c", "acquired", 3, realsim=2)
        with pytest.raises(NeurosynthError, match="realism must be an integer from 1 to 5"):
            store.record("dr-a", "c", "acquired", 3, realism=9)
        with pytest.raises(NeurosynthError, match="turing_choice must be 'real' or 'synthetic'"):
            store.record("dr-a", "c", "acquired", 3, turing_choice="maybe")
        with pytest.raises(NeurosynthError, match="rater must be a non-empty id"):
            store.record("  ", "c", "acquired", 3)
        with pytest.raises(NeurosynthError, match="seconds_on_case"):
            store.record("dr-a", "c", "acquired", 3, seconds_on_case=-1)
        assert store.ratings(history=True) == []


def test_record_many_is_all_or_nothing(tmp_path):
    with RatingStore(tmp_path / "r.sqlite") as store:
        good = {"rater": "a", "case": "c1", "condition": "acquired", "score": 4}
        with pytest.raises(NeurosynthError, match="rating #2: score must be"):
            store.record_many([good, {**good, "case": "c2", "score": 7}])
        assert store.ratings(history=True) == []
        ids = store.record_many([good, {**good, "case": "c2", "score": 2}])
        assert len(ids) == 2 and len(store.ratings()) == 2


def test_newer_schema_refused(tmp_path):
    db = tmp_path / "r.sqlite"
    RatingStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(
        NeurosynthError, match=rf"schema version {SCHEMA_VERSION + 1}, newer .*upgrade napari-neurosynth"
    ):
        RatingStore(db)


def test_not_a_database(tmp_path):
    db = tmp_path / "notes.sqlite"
    db.write_bytes(b"this is a text file, not SQLite" * 100)
    with pytest.raises(NeurosynthError, match="not a valid ratings database"):
        RatingStore(db)
    assert db.read_bytes().startswith(b"this is a text file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_paths(tmp_path):
    locked_dir = tmp_path / "ro"
    locked_dir.mkdir()
    locked_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(NeurosynthError, match="choose a writable path"):
            RatingStore(locked_dir / "r.sqlite")
        with pytest.raises(NeurosynthError, match="choose a writable path"):
            RatingStore(locked_dir / "sub" / "r.sqlite")
    finally:
        locked_dir.chmod(stat.S_IRWXU)


def test_path_under_a_file_or_folder_refused(tmp_path):
    """Works as root too: a regular file where a folder should be."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(NeurosynthError, match="cannot create the folder .*choose a writable path"):
        RatingStore(blocker / "r.sqlite")
    with pytest.raises(NeurosynthError, match="is a folder"):
        RatingStore(tmp_path)


def test_locked_database_gives_clear_message(tmp_path):
    db = tmp_path / "r.sqlite"
    RatingStore(db).close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another program holding the write lock
    try:
        store = RatingStore(db, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(NeurosynthError, match="stayed locked by another program.*nothing was written"):
            store.record("dr-a", "c", "acquired", 3)
        assert time.monotonic() - start < 5
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.ratings() == []
    store.record("dr-a", "c", "acquired", 3)  # works once the lock is gone
    assert len(store.ratings()) == 1
    store.close()


def test_full_disk_writes_nothing(tmp_path):
    """SQLite's max_page_count caps the file like a full disk would (same SQLITE_FULL error)."""
    with RatingStore(tmp_path / "r.sqlite") as store:
        store.record("dr-a", "c0", "acquired", 3)
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(NeurosynthError, match="disk full.*nothing was written"):
            for i in range(1, 200):  # fill the last free pages
                store.record("dr-a", f"c{i}", "acquired", 3, comment="x" * 2000)
        kept = store.ratings()
        assert all(r["comment"] is None or len(r["comment"]) == 2000 for r in kept)
        store._conn.execute(f"PRAGMA max_page_count = {10 * pages + 1000}")  # space freed
        store.record("dr-a", "after", "acquired", 4)
        assert len(store.ratings()) == len(kept) + 1
    assert _integrity(tmp_path / "r.sqlite") == "ok"


def test_default_path_in_user_data_folder():
    import platformdirs

    assert default_db_path().parent == Path(platformdirs.user_data_dir("napari-neurosynth"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_loses_no_confirmed_rating(tmp_path, seed):
    db = tmp_path / "r.sqlite"
    proc = _spawn(db, f"killed-{seed}", 1_000_000)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(random.Random(seed).uniform(0.05, 0.6))  # a random moment mid-loop
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    confirmed = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:  # a line cut by the kill has no case id; it was not confirmed
            confirmed[int(parts[0])] = parts[1]
    assert len(confirmed) >= 3, "the child confirmed too few ratings before it was killed"
    assert _integrity(db) == "ok"
    with RatingStore(db) as store:
        stored = {r["id"]: r["case_id"] for r in store.ratings()}
    missing = {i: c for i, c in confirmed.items() if stored.get(i) != c}
    assert not missing
    # at most one rating was committed but not yet printed when the kill came
    assert len(stored) - len(confirmed) in (0, 1)


def test_two_writers_lose_nothing(tmp_path):
    db = tmp_path / "r.sqlite"
    procs = [_spawn(db, rater, 500) for rater in ("alice", "bob")]
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "locked" not in err
        assert len([line for line in out.splitlines() if line != "ready"]) == 500
    assert _integrity(db) == "ok"
    with RatingStore(db) as store:
        rows = store.ratings(history=True)
    assert len(rows) == 1000
    assert len({r["id"] for r in rows}) == 1000
    for rater in ("alice", "bob"):
        mine = [r for r in rows if r["rater"] == rater]
        assert sorted(r["case_id"] for r in mine) == [f"case-{i:05d}" for i in range(500)]
        assert all(r["comment"].startswith(rater) for r in mine)
