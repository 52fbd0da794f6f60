"""Read-only commands open the ratings file read-only and never change a file that is not theirs (issue 15)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.ratings import MIGRATIONS, SCHEMA_VERSION, RatingStore


def _ratings_file(path: Path) -> Path:
    with RatingStore(path) as store:
        store.record("a", "sub-01", "acquired", 5, study="s", turing_choice="real")
        store.record("b", "sub-01", "acquired", 4, study="s", turing_choice="real")
        store.record("a", "sub-01", "model", 2, study="s", turing_choice="synthetic")
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder, byte for byte (a -wal or -shm file appearing counts too)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _other_program_file(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO photos (name) VALUES ('holiday.jpg')")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("command", ["summary", "export"])
def test_another_programs_sqlite_file_stays_byte_identical(tmp_path, capsys, command):
    folder = tmp_path / "other"
    folder.mkdir()
    other = _other_program_file(folder / "photos.db")
    before = _snapshot(folder)
    args = ["study", command, "--db", str(other)] + (["-o", str(tmp_path / "out.csv")] if command == "export" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not a ratings database" in err and "Traceback" not in err
    assert _snapshot(folder) == before  # no tables added, not switched to WAL, no -wal/-shm left
    assert not (tmp_path / "out.csv").exists()


def test_writable_open_refuses_another_programs_file_before_writing(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    other = _other_program_file(folder / "photos.db")
    before = _snapshot(folder)
    with pytest.raises(NeurosynthError, match="another program's SQLite file, not a ratings database"):
        RatingStore(other)
    (tmp_path / "site.csv").write_text("rater,case_id,condition,score\na,sub-01,acquired,5\n")
    assert main(["study", "import", "--db", str(other), str(tmp_path / "site.csv")]) == 2
    assert _snapshot(folder) == before
    (folder / "notes.txt").write_text("not a database at all\n" * 10)
    text_before = (folder / "notes.txt").read_bytes()
    with pytest.raises(NeurosynthError, match="not a valid ratings database"):
        RatingStore(folder / "notes.txt", read_only=True)
    with pytest.raises(NeurosynthError, match="not a valid ratings database"):
        RatingStore(folder / "notes.txt")
    assert (folder / "notes.txt").read_bytes() == text_before


def test_summary_of_a_write_protected_copy(tmp_path, capsys):
    source = _ratings_file(tmp_path / "r.sqlite")
    folder = tmp_path / "copy"
    folder.mkdir()
    copy = folder / "r.sqlite"
    shutil.copy2(source, copy)
    # A rollback-journal file: a read-only command must not switch it to WAL.
    with sqlite3.connect(copy) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    copy.chmod(0o444)
    folder.chmod(0o555)
    try:
        before = _snapshot(folder)
        assert main(["study", "summary", "--db", str(copy), "--study", "s"]) == 0
        assert "3 current ratings by 2 rater(s) in study s" in capsys.readouterr().out
        assert main(["study", "export", "--db", str(copy), "-o", str(tmp_path / "out.csv")]) == 0
        assert len((tmp_path / "out.csv").read_text().splitlines()) == 4
        assert _snapshot(folder) == before
        assert copy.read_bytes()[18:20] == b"\x01\x01"  # still a rollback-journal file, not WAL
    finally:
        folder.chmod(0o755)
        copy.chmod(0o644)


def test_older_file_is_read_as_it_is(tmp_path, capsys):
    """A schema-1 file is summarised without being migrated."""
    folder = tmp_path / "old"
    folder.mkdir()
    conn = sqlite3.connect(folder / "v1.sqlite")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 'then')")
    conn.execute("INSERT INTO raters VALUES ('a', 'then')")
    conn.execute(
        "INSERT INTO ratings (rater, case_id, condition, score, created_at) VALUES ('a', 'c1', 'acquired', 4, 'then')"
    )
    conn.commit()
    conn.close()
    before = _snapshot(folder)
    with RatingStore(folder / "v1.sqlite", read_only=True) as store:
        assert store.schema_version() == 1
        rows = store.ratings()
        assert [(r["score"], r["uid"]) for r in rows] == [(4, None)]
    assert main(["study", "summary", "--db", str(folder / "v1.sqlite")]) == 0
    assert "1 current ratings by 1 rater(s)" in capsys.readouterr().out
    assert _snapshot(folder) == before


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a read-only file system needs root",
)
def test_summary_on_read_only_media(tmp_path, capsys):
    """A WAL-mode ratings file on a file system mounted read-only (a CD, a write-protected share)."""
    source = _ratings_file(tmp_path / "r.sqlite")
    media = Path(tempfile.mkdtemp(prefix="neurosynth-ro-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(media)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copy2(source, media / "r.sqlite")
        assert (media / "r.sqlite").read_bytes()[18:20] == b"\x02\x02"  # WAL mode
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        before = _snapshot(media)
        assert main(["study", "summary", "--db", str(media / "r.sqlite")]) == 0
        assert "3 current ratings by 2 rater(s)" in capsys.readouterr().out
        assert _snapshot(media) == before
    finally:
        # An open file handle left inside would make this fail ("target is busy").
        unmounted = subprocess.run(["umount", str(media)], check=False).returncode == 0
        if not unmounted:
            subprocess.run(["umount", "-l", str(media)], check=False)
        media.rmdir()
    assert unmounted, "a file on the read-only media was left open"


def test_older_file_is_upgraded_by_a_writer(tmp_path):
    """Schema 1 -> 2 when opened for writing: rows kept, each given a rating id, one version row per step."""
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 'then')")
    conn.execute("INSERT INTO raters VALUES ('a', 'then')")
    conn.execute(
        "INSERT INTO ratings (rater, case_id, condition, score, created_at) VALUES ('a', 'c1', 'acquired', 4, 'then')"
    )
    conn.commit()
    conn.close()
    with RatingStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        store.record("a", "c1", "acquired", 5)
        rows = store.ratings(history=True)
        assert [(r["score"], r["is_current"]) for r in rows] == [(4, 0), (5, 1)]
        assert all(r["uid"] and len(r["uid"]) == 32 for r in rows) and rows[0]["uid"] != rows[1]["uid"]
        assert [v for (v,) in store._conn.execute("SELECT version FROM schema_version ORDER BY version")] == [
            1,
            SCHEMA_VERSION,
        ]
