"""The PostgreSQL backend of RatingStore, against a real throwaway server (initdb + pg_ctl).

Skipped only when PostgreSQL's binaries are absent (`make test` installs Debian's
`postgresql` package when missing).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from pg_server import PostgresServer, postgres_bin

from napari_neurosynth.cli import main
from napari_neurosynth.errors import NeurosynthError
from napari_neurosynth.io import Volume, write_volume
from napari_neurosynth.ratings import SCHEMA_VERSION, RatingStore
from napari_neurosynth.study import Case, ReaderSession, Study

psycopg = pytest.importorskip("psycopg")
BIN = postgres_bin()
pytestmark = pytest.mark.skipif(BIN is None, reason="PostgreSQL binaries (initdb, pg_ctl) are not installed")
DOCS = Path(__file__).parents[1] / "docs" / "reader-study.md"


@pytest.fixture(scope="module")
def server():
    assert BIN is not None
    srv = PostgresServer(BIN)
    yield srv
    srv.remove()


@pytest.fixture
def db(server):
    """A fresh database on the server; returns a function user -> URL."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    server.psql(f"CREATE DATABASE {name}")
    return lambda user="admin": f"postgresql://{user}@127.0.0.1:{server.port}/{name}"


def _raw(url: str):
    return psycopg.connect(url, autocommit=True)


def test_same_api_schema_and_guarantees(db, tmp_path):
    with RatingStore(db(), journal=tmp_path / "j.sqlite") as store:
        assert type(store).__name__ == "PostgresRatingStore"
        assert store.schema_version() == SCHEMA_VERSION
        first = store.record("dr-a", "sub-01", "t1_to_t2", 2, study="pilot", realism=4, seconds_on_case=3.25)
        second = store.record("dr-a", "sub-01", "t1_to_t2", 3, study="pilot", comment="re-read")
        store.record("dr-b", "sub-01", "t1_to_t2", 5, metadata={"site": "B"})
        rows = store.ratings(history=True)
        assert [(r["id"], r["score"], r["supersedes"], r["is_current"]) for r in rows] == [
            (first, 2, None, 0),
            (second, 3, first, 1),
            (rows[2]["id"], 5, None, 1),
        ]
        assert rows[0]["realism"] == 4 and rows[0]["seconds_on_case"] == 3.25 and rows[2]["study"] is None
        assert all(re.fullmatch(r"[0-9a-f]{32}", r["uid"]) for r in rows)
        assert [r["score"] for r in store.ratings(study="pilot")] == [3]
        with pytest.raises(NeurosynthError, match="score must be an integer from 1 to 5"):
            store.record("dr-a", "sub-01", "t1_to_t2", 6)
        assert store.export_csv(tmp_path / "all.csv") == 3
        assert store.studies() == ["pilot"]
    # The database itself refuses a score outside 1-5 or a half score, even from raw SQL.
    with _raw(db()) as conn:
        for bad in ("6", "0", "4.5"):
            with pytest.raises((psycopg.errors.CheckViolation, psycopg.errors.InvalidTextRepresentation)):
                conn.execute(
                    "INSERT INTO ratings (rater, case_id, condition, score, created_at) "
                    f"VALUES ('dr-a', 'x', 'y', '{bad}', 'now')"
                )
        assert conn.execute("SELECT array_agg(version) FROM schema_version").fetchone()[0] == [SCHEMA_VERSION]
        # Reopening does not migrate again.
    RatingStore(db(), journal=tmp_path / "j.sqlite").close()
    with _raw(db()) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


def test_reader_session_runs_unchanged(db, tmp_path):
    study = Study("pilot", [Case(c, {"acquired": Path(f"{c}-a.nii.gz"), "model": Path(f"{c}-m.nii.gz")}) for c in "ab"])
    with RatingStore(db(), journal=tmp_path / "j.sqlite") as store:
        session = ReaderSession(study, "dr-a", store)
        order = list(session.items)
        session.rate(4)
        session.next()
        session.rate(2)
    with RatingStore(db(), journal=tmp_path / "j.sqlite") as store:
        resumed = ReaderSession(study, "dr-a", store)
        assert resumed.resumed and resumed.items == order and resumed.position == 1
        assert resumed.progress == (2, 4) and resumed.rating_for(order[0])["score"] == 4


_WRITER = textwrap.dedent(
    """
    import sys
    from napari_neurosynth.ratings import RatingStore
    url, rater, n, journal = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with RatingStore(url, journal=journal) as store:
        for i in range(n):
            store.record(rater, f"case-{i:03d}", "model", 1 + i % 5, study="multi")
    """
)


def test_eight_writers_lose_nothing(db, tmp_path):
    RatingStore(db(), journal=tmp_path / "setup.sqlite").close()  # schema in place
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, db(), f"rater-{k}", "200", str(tmp_path / f"j{k}.sqlite")])
        for k in range(8)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    with RatingStore(db(), read_only=True) as store:
        rows = store.ratings(history=True)
    assert len(rows) == 1600
    assert len({r["uid"] for r in rows}) == 1600
    assert {(r["rater"], r["case_id"]) for r in rows} == {
        (f"rater-{k}", f"case-{i:03d}") for k in range(8) for i in range(200)
    }


_SAME_ITEM = textwrap.dedent(
    """
    import sys
    from napari_neurosynth.ratings import RatingStore
    with RatingStore(sys.argv[1], journal=sys.argv[2]) as store:
        for i in range(50):
            store.record("dr-a", "sub-01", "model", 1 + i % 5, study="race")
    """
)


def test_writers_racing_on_one_item_keep_one_history_chain(db, tmp_path):
    """Four processes changing the same rating at once: every change kept, one current row, one chain."""
    RatingStore(db(), journal=tmp_path / "setup.sqlite").close()
    procs = [
        subprocess.Popen([sys.executable, "-c", _SAME_ITEM, db(), str(tmp_path / f"j{k}.sqlite")]) for k in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    with RatingStore(db(), read_only=True) as store:
        rows = store.ratings(history=True)
    assert len(rows) == 200 and sum(r["is_current"] for r in rows) == 1
    links = [r["supersedes"] for r in rows if r["supersedes"] is not None]
    assert len(links) == 199 and len(set(links)) == 199  # each row superseded exactly once: a single chain


_STREAM = textwrap.dedent(
    """
    import sys, time
    from napari_neurosynth.ratings import RatingStore
    url, n, journal = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = RatingStore(url, journal=journal, retry_interval=0.05, connect_timeout=1)
    for i in range(n):
        row = store.record("dr-a", f"case-{i:03d}", "model", 1 + i % 5, study="stream")
        print(f"confirmed case-{i:03d} {row}", flush=True)   # record() returned: the rating is confirmed
        time.sleep(0.01)
    while store.sync():
        time.sleep(0.1)
    store.close()
    print("done", flush=True)
    """
)


def test_server_crash_mid_stream_loses_no_confirmed_rating(server, db, tmp_path):
    RatingStore(db(), journal=tmp_path / "setup.sqlite").close()
    writer = subprocess.Popen(
        [sys.executable, "-c", _STREAM, db(), "300", str(tmp_path / "journal.sqlite")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    lines: list[str] = []
    for line in writer.stdout:
        lines.append(line.strip())
        if len(lines) == 60:
            server.stop("immediate")  # a crash, mid-stream: no shutdown checkpoint
        if len(lines) == 150:
            server.start()
    writer.stdout.close()
    assert writer.wait(timeout=120) == 0 and lines[-1] == "done"
    confirmed = {line.split()[1]: int(line.split()[2]) for line in lines if line.startswith("confirmed")}
    assert len(confirmed) == 300
    journaled = [case for case, row in confirmed.items() if row < 0]
    assert len(journaled) >= 50  # the journal really carried the outage
    with RatingStore(db(), read_only=True) as store:
        rows = store.ratings(study="stream", history=True)
    cases = [r["case_id"] for r in rows]
    assert sorted(cases) == sorted(confirmed)  # every confirmed rating, each exactly once
    assert len(set(r["uid"] for r in rows)) == 300
    assert (tmp_path / "journal.sqlite").exists()
    with RatingStore(db(), journal=tmp_path / "journal.sqlite") as store:
        assert store.pending_count() == 0


def test_unreachable_server_is_said_plainly(db, tmp_path, server, capsys):
    closed = f"postgresql://admin@127.0.0.1:{server.port + 1 if server.port < 65535 else 1}/x"
    with pytest.raises(NeurosynthError, match="cannot reach the ratings server .*check the network"):
        RatingStore(closed, journal=tmp_path / "j.sqlite", connect_timeout=1)
    assert main(["study", "summary", "--db", closed]) != 0
    err = capsys.readouterr().err
    assert "cannot reach the ratings server" in err and "Traceback" not in err
    # A session in progress: the store says what happened, and the ratings wait in the journal.
    with RatingStore(db(), journal=tmp_path / "j.sqlite", retry_interval=60) as store:
        assert store.connection_problem() is None
        store._went_offline(OSError("network is unreachable"))  # as a dropped link leaves it
        assert store.record("dr-a", "c1", "model", 4) == -1
        problem = store.connection_problem()
        assert "cannot be reached (network is unreachable)" in problem and "(1 waiting)" in problem
        assert [r["score"] for r in store.ratings()] == [4]  # the session sees its own rating
        assert store.sync() == 0 and store.connection_problem() is None
    with _raw(db()) as conn:
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == 1


def _docs_roles_sql() -> str:
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/reader-study.md should hold one ```sql block: the roles"
    return blocks[0]


def test_site_roles_from_the_docs(server, db, tmp_path):
    server.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'neurosynth_admin') "
        "THEN CREATE ROLE neurosynth_admin LOGIN CREATEROLE; END IF; END $$"
    )
    name = db().rsplit("/", 1)[1]
    server.psql(f"ALTER DATABASE {name} OWNER TO neurosynth_admin")
    with _raw(db()) as conn:
        conn.execute("ALTER SCHEMA public OWNER TO neurosynth_admin")
    RatingStore(db("neurosynth_admin"), journal=tmp_path / "admin.sqlite").close()
    with _raw(db("neurosynth_admin")) as conn:
        conn.execute(_docs_roles_sql())

    for site, rater in (("site_a", "dr-a"), ("site_b", "dr-b")):
        with RatingStore(db(site), journal=tmp_path / f"{site}.sqlite") as store:
            store.record(rater, "sub-01", "model", 3, study="multi")
            store.record(rater, "sub-01", "model", 4, study="multi")  # an update: allowed, history kept
            rows = store.ratings(history=True)
            assert {r["rater"] for r in rows} == {rater} and len(rows) == 2  # only its own rows
    with _raw(db("site_a")) as conn:
        assert conn.execute("SELECT DISTINCT rater FROM ratings").fetchall() == [("dr-a",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM ratings")
        # Another site's rows cannot be changed either, nor can a row be written in its name.
        assert conn.execute("UPDATE ratings SET score = 1 WHERE rater = 'dr-b'").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO ratings (rater, case_id, condition, score, created_at, entered_by) "
                "VALUES ('dr-a', 'x', 'model', 3, 'now', 'site_b')"
            )
    with RatingStore(db("study_lead"), read_only=True) as lead:
        assert sorted({r["rater"] for r in lead.ratings(history=True)}) == ["dr-a", "dr-b"]
    with _raw(db("study_lead")) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM ratings")
    with _raw(db()) as conn:
        assert conn.execute("SELECT count(*) FROM ratings").fetchone()[0] == 4


def test_migrate_summary_and_export_cli(db, tmp_path, capsys):
    root = tmp_path
    for cond in ("acquired", "t1_to_t2"):
        for case in ("sub-01", "sub-02"):
            write_volume(Volume(np.ones((4, 4, 4), np.float32), np.eye(4)), root / "runs" / cond / f"{case}.nii.gz")
    source = root / "r.sqlite"
    with RatingStore(source) as store:
        store.record("a", "sub-01", "acquired", 4, study="runs", turing_choice="real")
        store.record("a", "sub-01", "acquired", 5, study="runs", turing_choice="real")
        store.record("b", "sub-02", "t1_to_t2", 2, study="runs", turing_choice="synthetic")
        store.create_session("a", "runs", seed=3, order=[("sub-01", "acquired"), ("sub-02", "t1_to_t2")])
        store.set_position("a", "runs", 1)
        before = store.ratings(history=True)
    assert main(["study", "migrate", "--from", str(source), "--to", db()]) == 0
    assert "copied 3 ratings" in capsys.readouterr().out
    assert main(["study", "migrate", "--from", str(source), "--to", db()]) == 0
    out = capsys.readouterr().out
    assert "copied 0 ratings" in out and "(3 already there)" in out  # run again: nothing twice
    with RatingStore(db(), read_only=True) as store:
        after = store.ratings(history=True)
        assert store.load_session("a", "runs")["position"] == 1
    keys = ("rater", "case_id", "condition", "score", "turing_choice", "created_at", "is_current", "uid")
    assert [{k: r[k] for k in keys} for r in after] == [{k: r[k] for k in keys} for r in before]
    assert after[1]["supersedes"] == after[0]["id"]
    assert main(["study", "summary", "--db", db(), "--study", "runs", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_ratings"] == 2
    csv_out = root / "ratings.csv"
    assert main(["study", "export", "--db", db(), "-o", str(csv_out)]) == 0
    assert len(csv_out.read_text().splitlines()) == 4


def test_read_only_url_writes_nothing(db, tmp_path):
    RatingStore(db(), journal=tmp_path / "j.sqlite").close()
    with RatingStore(db(), read_only=True) as store:
        with pytest.raises(NeurosynthError, match="read-only"):
            store.record("a", "c", "m", 3)
    started = time.monotonic()
    with pytest.raises(NeurosynthError, match="holds no ratings database"):
        RatingStore(db().rsplit("/", 1)[0] + "/postgres", read_only=True)
    assert time.monotonic() - started < 10


def test_reader_study_widget_says_the_server_is_unreachable(
    make_napari_viewer, qtbot, server, db, tmp_path, monkeypatch
):
    from test_study import make_study_folder

    from napari_neurosynth.study import create_study
    from napari_neurosynth.viewer.study_widget import ReaderStudyWidget

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the default journal goes here
    folder = make_study_folder(tmp_path / "vols", n_cases=2)
    study_path = create_study(folder, study_id="pg-pilot", seed=1).save(tmp_path / "study.yaml")
    viewer = make_napari_viewer()
    widget = ReaderStudyWidget(viewer)
    widget.reading_check.setChecked(False)  # the images in this viewer (reading window: tests/test_review.py)
    widget.rater_edit.setText("dr-a")
    widget.study_edit.setText(str(study_path))
    widget.db_edit.setText(db())
    assert widget.start()
    widget.session.store.retry_interval = 0.0  # try the server again at every rating
    qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)
    widget.choose_score(4)
    assert widget.save_and_next() > 0
    assert widget.status_label.text().startswith("Saved")

    server.stop("immediate")
    try:
        qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)
        widget.choose_score(2)
        assert widget.save_and_next() == -1  # kept in the journal
        text = widget.status_label.text()
        assert "Saved on this computer" in text and "cannot be reached" in text and "(1 waiting)" in text
        assert widget.session.progress[0] == 2
    finally:
        server.start()
    qtbot.waitUntil(lambda: widget.loaded, timeout=10_000)
    widget.choose_score(5)
    assert widget.save_and_next() > 0
    assert widget.status_label.text().startswith("Saved:") and widget.session.store.pending_count() == 0
    widget.stop()
    with _raw(db()) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT score FROM ratings")) == [2, 4, 5]


def test_a_refused_waiting_rating_blocks_no_new_one(db, tmp_path):
    """A journaled rating the server refuses keeps its place; later ratings wait behind it, safe."""
    with _raw(db()) as conn:
        RatingStore(db(), journal=tmp_path / "setup.sqlite").close()
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'site is read-only today'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON ratings FOR EACH ROW WHEN (NEW.rater = 'x') "
            "EXECUTE FUNCTION refuse()"
        )
    with RatingStore(db(), journal=tmp_path / "j.sqlite", retry_interval=60) as store:
        store._went_offline(OSError("link down"))
        assert store.record("x", "c1", "model", 3) == -1
        store._offline_until = 0.0  # the link is back
        assert store.record("dr-a", "c2", "model", 4) == -2  # kept, behind the refused one
        problem = store.connection_problem()
        assert "refused a rating" in problem and "site is read-only today" in problem and "(2 waiting)" in problem
        with _raw(db()) as conn:
            conn.execute("DROP TRIGGER refuse ON ratings")
        assert store.sync() == 0
        assert [(r["rater"], r["case_id"]) for r in store.ratings()] == [("x", "c1"), ("dr-a", "c2")]


def test_older_server_schema_is_upgraded(db, tmp_path):
    from napari_neurosynth.ratings import render_schema

    with _raw(db()) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for statement in render_schema("postgresql")[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, 'then')")
        conn.execute("INSERT INTO raters VALUES ('a', 'then')")
        conn.execute(
            "INSERT INTO ratings (rater, case_id, condition, score, created_at) VALUES ('a', 'c1', 'm', 2, 'then')"
        )
    with RatingStore(db(), journal=tmp_path / "j.sqlite") as store:
        assert store.schema_version() == SCHEMA_VERSION
        rows = store.ratings()
        assert [r["score"] for r in rows] == [2] and len(rows[0]["uid"]) == 32
    with _raw(db()) as conn:
        assert conn.execute("SELECT entered_by FROM ratings").fetchone()[0] == "admin"
