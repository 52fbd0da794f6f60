"""Crash-safe local store of reader-study ratings (SQLite).

Every rating is written in its own ``BEGIN IMMEDIATE`` transaction to a SQLite
file in WAL mode with ``synchronous=FULL``: when :meth:`RatingStore.record`
returns, the rating is on disk and survives the process being killed or the
machine losing power. Several processes (two raters on one shared file) may
write at once; writers wait for each other (busy timeout) instead of failing.

A changed rating never overwrites the old one: the new row points at the row it
supersedes and only the newest row of a (study, rater, case, condition) is
*current*. The schema is versioned (table ``schema_version``) and upgraded by
the migrations in :data:`MIGRATIONS` when an older file is opened; a file written
by a newer version of this package is refused rather than misread.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "ratings.sqlite"
>>> with RatingStore(path) as store:
...     first = store.record("rater-1", "sub-01", "acquired", 4)
...     second = store.record("rater-1", "sub-01", "acquired", 5, comment="sharper on 2nd look")
...     [r["score"] for r in store.ratings()], len(store.ratings(history=True))
([5], 2)
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

from .errors import NeurosynthError

__all__ = [
    "ANSWER_COLUMNS",
    "AUDIT_COLUMNS",
    "COLUMNS",
    "EXTRA_FIELDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SUBSCORES",
    "AnswerRow",
    "AuditRow",
    "RatingRow",
    "RatingStore",
    "ReadingSessionRecord",
    "SessionRecord",
    "default_db_path",
    "is_server_url",
    "render_schema",
]

_T = TypeVar("_T")

#: Schema version this code writes; files with a higher version are refused.
SCHEMA_VERSION = 3

#: The one schema definition of both backends: ``version -> statements`` applied in
#: order, each version in one transaction. It is written in SQLite's spelling;
#: :func:`render_schema` turns it into PostgreSQL's (the few words the two disagree
#: on, listed in :data:`_DIALECTS`), so there is no second copy to drift.
#: To change the schema, append a new version; never edit an applied one.
SCHEMA: dict[int, list[str]] = {
    1: [
        """CREATE TABLE raters (
            id TEXT PRIMARY KEY CHECK (length(id) > 0),
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE studies (
            id TEXT PRIMARY KEY CHECK (length(id) > 0),
            definition TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE sessions (
            rater TEXT NOT NULL REFERENCES raters(id),
            study TEXT NOT NULL REFERENCES studies(id),
            seed INTEGER NOT NULL,
            item_order TEXT NOT NULL,
            position INTEGER NOT NULL DEFAULT 0 CHECK (position >= 0),
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (rater, study)
        )""",
        """CREATE TABLE ratings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            study TEXT REFERENCES studies(id),
            rater TEXT NOT NULL REFERENCES raters(id),
            case_id TEXT NOT NULL CHECK (length(case_id) > 0),
            condition TEXT NOT NULL CHECK (length(condition) > 0),
            score INTEGER NOT NULL CHECK (typeof(score) = 'integer' AND score BETWEEN 1 AND 5),
            realism INTEGER CHECK (realism IS NULL OR (typeof(realism) = 'integer' AND realism BETWEEN 1 AND 5)),
            anatomical_correctness INTEGER CHECK (anatomical_correctness IS NULL OR
                (typeof(anatomical_correctness) = 'integer' AND anatomical_correctness BETWEEN 1 AND 5)),
            lesion_conspicuity INTEGER CHECK (lesion_conspicuity IS NULL OR
                (typeof(lesion_conspicuity) = 'integer' AND lesion_conspicuity BETWEEN 1 AND 5)),
            diagnostic_usability INTEGER CHECK (diagnostic_usability IS NULL OR
                (typeof(diagnostic_usability) = 'integer' AND diagnostic_usability BETWEEN 1 AND 5)),
            turing_choice TEXT CHECK (turing_choice IS NULL OR turing_choice IN ('real', 'synthetic')),
            turing_confidence INTEGER CHECK (turing_confidence IS NULL OR
                (typeof(turing_confidence) = 'integer' AND turing_confidence BETWEEN 1 AND 5)),
            comment TEXT,
            seconds_on_case REAL CHECK (seconds_on_case IS NULL OR seconds_on_case >= 0),
            metadata TEXT,
            created_at TEXT NOT NULL,
            supersedes INTEGER REFERENCES ratings(id),
            is_current INTEGER NOT NULL DEFAULT 1 CHECK (is_current IN (0, 1))
        )""",
        # At most one current rating per (study, rater, case, condition); NULL study
        # (ratings outside any study) is folded to '' so it takes part in the check.
        """CREATE UNIQUE INDEX ratings_one_current
            ON ratings (ifnull(study, ''), rater, case_id, condition) WHERE is_current = 1""",
        "CREATE INDEX ratings_by_study ON ratings (study, rater)",
    ],
    2: [
        # A client-generated id per rating: a rating sent twice (a retry after the
        # network dropped the server's answer, a journal drained again) is stored once.
        "ALTER TABLE ratings ADD COLUMN uid TEXT",
        "UPDATE ratings SET uid = {random_uid} WHERE uid IS NULL",
        "CREATE UNIQUE INDEX ratings_uid ON ratings (uid)",
        # The database role that wrote the row: what PostgreSQL's row-level security
        # keys on (docs/reader-study.md); always NULL in a local SQLite file.
        "ALTER TABLE ratings ADD COLUMN entered_by TEXT{role_default}",
        "ALTER TABLE sessions ADD COLUMN entered_by TEXT{role_default}",
    ],
    3: [
        # Typed answers (napari_neurosynth.questions): one row per question, the value
        # as JSON; a changed answer supersedes the old row, like ratings do.
        """CREATE TABLE answers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            study TEXT NOT NULL REFERENCES studies(id),
            rater TEXT NOT NULL REFERENCES raters(id),
            reading_session TEXT NOT NULL DEFAULT '',
            case_id TEXT NOT NULL CHECK (length(case_id) > 0),
            condition TEXT NOT NULL CHECK (length(condition) > 0),
            question TEXT NOT NULL CHECK (length(question) > 0),
            value TEXT NOT NULL,
            seconds_on_case REAL CHECK (seconds_on_case IS NULL OR seconds_on_case >= 0),
            created_at TEXT NOT NULL,
            supersedes INTEGER REFERENCES answers(id),
            is_current INTEGER NOT NULL DEFAULT 1 CHECK (is_current IN (0, 1)),
            uid TEXT NOT NULL UNIQUE,
            entered_by TEXT{role_default}
        )""",
        """CREATE UNIQUE INDEX answers_one_current
            ON answers (study, rater, reading_session, case_id, condition, question) WHERE is_current = 1""",
        "CREATE INDEX answers_by_study ON answers (study, rater, reading_session)",
        # The audit trail: every answer written, with the value it replaced (NULL for
        # a first answer) and when. Rows are only ever inserted.
        """CREATE TABLE answer_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            answer_id INTEGER NOT NULL REFERENCES answers(id),
            study TEXT NOT NULL,
            rater TEXT NOT NULL,
            reading_session TEXT NOT NULL DEFAULT '',
            case_id TEXT NOT NULL,
            condition TEXT NOT NULL,
            question TEXT NOT NULL,
            old_value TEXT,
            new_value TEXT NOT NULL,
            changed_at TEXT NOT NULL,
            entered_by TEXT{role_default}
        )""",
        "CREATE INDEX answer_audit_by_study ON answer_audit (study, rater)",
        # Reading sessions of a crossover study (the one implicit session of other
        # studies stays in `sessions`): order, position and when the rater ended it,
        # from which the washout before the next session is counted.
        """CREATE TABLE reading_sessions (
            rater TEXT NOT NULL REFERENCES raters(id),
            study TEXT NOT NULL REFERENCES studies(id),
            reading_session TEXT NOT NULL CHECK (length(reading_session) > 0),
            seed INTEGER NOT NULL,
            item_order TEXT NOT NULL,
            position INTEGER NOT NULL DEFAULT 0 CHECK (position >= 0),
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            ended_at TEXT,
            entered_by TEXT{role_default},
            PRIMARY KEY (rater, study, reading_session)
        )""",
    ],
}

#: Word-for-word substitutions from the schema's SQLite spelling to each dialect.
_DIALECTS: dict[str, list[tuple[str, str]]] = {
    "sqlite": [("{random_uid}", "lower(hex(randomblob(16)))"), ("{role_default}", "")],
    "postgresql": [
        ("{random_uid}", "md5(random()::text || id::text)"),
        ("{role_default}", " DEFAULT current_user"),
        ("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
        # PostgreSQL's INTEGER type already refuses 4.5 or 'four'; SQLite needs the typeof check.
        *(
            (f"typeof({c}) = 'integer' AND ", "")
            for c in (
                "score",
                "realism",
                "anatomical_correctness",
                "lesion_conspicuity",
                "diagnostic_usability",
                "turing_confidence",
            )
        ),
        ("seconds_on_case REAL", "seconds_on_case DOUBLE PRECISION"),
        # Per-rater seeds are 63-bit (study.rater_seed); PostgreSQL's INTEGER is 32-bit.
        ("seed INTEGER NOT NULL", "seed BIGINT NOT NULL"),
        ("ifnull(", "coalesce("),
    ],
}


def render_schema(dialect: str = "sqlite") -> dict[int, list[str]]:
    """The migrations of :data:`SCHEMA` in the SQL of ``dialect`` (``sqlite`` or ``postgresql``).

    Examples
    --------
    >>> sqlite, pg = render_schema("sqlite"), render_schema("postgresql")
    >>> "typeof(score) = 'integer' AND score BETWEEN 1 AND 5" in sqlite[1][3]
    True
    >>> "score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5)" in pg[1][3], "AUTOINCREMENT" in pg[1][3]
    (True, False)
    >>> pg[2][3]
    'ALTER TABLE ratings ADD COLUMN entered_by TEXT DEFAULT current_user'
    """
    rules = _DIALECTS[dialect]

    def render(statement: str) -> str:
        for old, new in rules:
            statement = statement.replace(old, new)
        return statement

    return {version: [render(s) for s in statements] for version, statements in SCHEMA.items()}


#: The migrations as SQLite runs them.
MIGRATIONS: dict[int, list[str]] = render_schema("sqlite")

#: Likert sub-scores (1-5) a study may ask for, stored in their own columns.
SUBSCORES = ("realism", "anatomical_correctness", "lesion_conspicuity", "diagnostic_usability")

#: Keyword arguments :meth:`RatingStore.record` accepts besides the ids and score.
EXTRA_FIELDS = (*SUBSCORES, "turing_choice", "turing_confidence", "comment", "seconds_on_case", "metadata")

#: Column order of :meth:`RatingStore.ratings` rows and of the CSV export.
COLUMNS = (
    "id",
    "study",
    "rater",
    "case_id",
    "condition",
    "score",
    *SUBSCORES,
    "turing_choice",
    "turing_confidence",
    "comment",
    "seconds_on_case",
    "metadata",
    "created_at",
    "supersedes",
    "is_current",
    "uid",
)


class RatingRow(TypedDict):
    """One row of :meth:`RatingStore.ratings` and of the CSV export (keys :data:`COLUMNS`, in that order)."""

    id: int
    study: str | None
    rater: str
    case_id: str
    condition: str
    score: int
    realism: int | None
    anatomical_correctness: int | None
    lesion_conspicuity: int | None
    diagnostic_usability: int | None
    turing_choice: str | None
    turing_confidence: int | None
    comment: str | None
    seconds_on_case: float | None
    #: JSON text of the ``metadata`` dict given to :meth:`RatingStore.record`.
    metadata: str | None
    created_at: str
    supersedes: int | None
    is_current: int
    #: The client-generated id of the rating (``None`` in files from before schema version 2).
    uid: str | None


class SessionRecord(TypedDict):
    """A rater's stored session in a study (:meth:`RatingStore.load_session`)."""

    rater: str
    study: str
    seed: int
    position: int
    started_at: str
    updated_at: str
    #: The presentation order, as JSON gave it back: ``[case id, condition]`` pairs.
    order: list[list[str]]


class ReadingSessionRecord(SessionRecord):
    """A rater's stored reading session of a crossover study (:meth:`RatingStore.load_reading_session`)."""

    reading_session: str
    #: ISO-8601 time (UTC) the rater ended the session, ``None`` while it is open.
    ended_at: str | None


#: Column order of :meth:`RatingStore.answers` rows.
ANSWER_COLUMNS = (
    "id",
    "study",
    "rater",
    "reading_session",
    "case_id",
    "condition",
    "question",
    "value",
    "seconds_on_case",
    "created_at",
    "supersedes",
    "is_current",
    "uid",
)

#: Column order of :meth:`RatingStore.audit` rows.
AUDIT_COLUMNS = (
    "id",
    "answer_id",
    "study",
    "rater",
    "reading_session",
    "case_id",
    "condition",
    "question",
    "old_value",
    "new_value",
    "changed_at",
)


class AnswerRow(TypedDict):
    """One typed answer (:meth:`RatingStore.answers`); ``value`` decoded from JSON (``None``: cleared)."""

    id: int
    study: str
    rater: str
    reading_session: str
    case_id: str
    condition: str
    question: str
    value: Any
    seconds_on_case: float | None
    created_at: str
    supersedes: int | None
    is_current: int
    uid: str


class AuditRow(TypedDict):
    """One entry of the answer audit trail (:meth:`RatingStore.audit`); values decoded from JSON."""

    id: int
    answer_id: int
    study: str
    rater: str
    reading_session: str
    case_id: str
    condition: str
    question: str
    #: The value replaced, ``None`` for a first answer.
    old_value: Any
    new_value: Any
    changed_at: str


#: A validated rating: rater, case, condition, score, study and the optional fields.
_Prepared = tuple[str, str, str, int, "str | None", dict[str, Any]]


def default_db_path() -> Path:
    """The default ratings file, in the user's data folder.

    Examples
    --------
    >>> default_db_path().name
    'ratings.sqlite'
    """
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-neurosynth")) / "ratings.sqlite"


def is_server_url(path: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL, the server backend's address.

    Examples
    --------
    >>> is_server_url("postgresql://site_a@db.example.org:5432/reader"), is_server_url("ratings.sqlite")
    (True, False)
    """
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _likert(name: str, value: object) -> int | None:
    """Check a 1-5 Likert value and return it as ``int`` (``None`` passes).

    Examples
    --------
    >>> _likert("realism", 4.0), _likert("realism", "2"), _likert("realism", None)
    (4, 2, None)
    >>> _likert("realism", 6)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: realism must be an integer from 1 to 5, got 6
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise NeurosynthError(f"{name} must be an integer from 1 to 5, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise NeurosynthError(f"{name} must be an integer from 1 to 5, got {value!r}") from None
    if not number.is_integer() or not 1 <= number <= 5:
        raise NeurosynthError(f"{name} must be an integer from 1 to 5, got {value!r}")
    return int(number)


def _identifier(name: str, value: object) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise NeurosynthError(f"{name} must be a non-empty id, got {value!r}")
    return text


def _add_rater_and_study(conn: Any, rater: str, study: str | None, now: str) -> None:
    """The rater and study rows that ratings, answers and sessions refer to (kept if there)."""
    conn.execute("INSERT INTO raters (id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (rater, now))
    if study is not None:
        conn.execute("INSERT INTO studies (id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (study, now))


def _with_order(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first session row with its stored ``item_order`` JSON decoded as ``order``; None if no row."""
    if not rows:
        return None
    record = dict(rows[0])
    order = json.loads(record.pop("item_order"))
    return {**record, "order": order}


class RatingStore:
    """Ratings of a reader study in a local SQLite file or on a PostgreSQL server.

    Parameters
    ----------
    path : str or Path, optional
        The database file; created (with its folder) if missing. Defaults to
        :func:`default_db_path` (the user data folder). A ``postgresql://`` URL
        selects the server backend, :class:`napari_neurosynth.ratings_pg.PostgresRatingStore`,
        with the same methods (and its own keyword arguments: ``journal``,
        ``connect_timeout``, ``retry_interval``).
    timeout : float
        Seconds to wait for another process that holds the write lock before
        giving up with a :class:`NeurosynthError`.
    read_only : bool
        Open for reading only (``study summary``/``export``): the file is opened
        through a ``mode=ro`` URI, never switched to WAL, never migrated; a file
        that is not a ratings database is refused before anything touches it.

    Raises
    ------
    NeurosynthError
        If the file cannot be created or written, is not a ratings database
        (another program's SQLite file is refused and left as it was), or was
        written by a newer version of napari-neurosynth.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.sqlite"
    >>> store = RatingStore(path)
    >>> store.record("dr-a", "case-7", "t1_to_t2", 3, realism=2, turing_choice="synthetic") > 0
    True
    >>> store.schema_version() == SCHEMA_VERSION
    True
    >>> store.close()
    >>> with RatingStore(path, read_only=True) as reader:
    ...     [r["score"] for r in reader.ratings()]
    [3]
    >>> RatingStore(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: ratings database path ... is a folder; give a file name such as ...
    """

    path: Path | str
    read_only: bool

    def __new__(cls, path: str | os.PathLike | None = None, *args: Any, **kwargs: Any) -> RatingStore:
        if cls is RatingStore and path is not None and is_server_url(path):
            from .ratings_pg import PostgresRatingStore

            return super().__new__(PostgresRatingStore)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 30.0, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.timeout = float(timeout)
        self.read_only = bool(read_only)
        self._columns: tuple[str, ...] = COLUMNS
        if self.path.is_dir():
            raise NeurosynthError(
                f"ratings database path {self.path} is a folder; give a file name such as ratings.sqlite"
            )
        if self.read_only:
            self._conn = self._open_read_only(self.path)
        else:
            self._conn = self._open_writable(self.path)
        self._conn.row_factory = sqlite3.Row
        try:
            self._check_ratings_database()
            if self.read_only:
                self._check_version(self._version())
            else:
                self._configure()
                self._migrate()
            self._columns = self._present_columns()
        except BaseException:
            self._conn.close()
            raise

    # -- set-up -----------------------------------------------------------------
    def _open_writable(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NeurosynthError(
                f"cannot create the folder for the ratings database {path}: {exc.strerror}; choose a writable path"
            ) from None
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE
            # ourselves so each rating is exactly one transaction.
            return sqlite3.connect(str(path), timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise NeurosynthError(f"cannot open the ratings database {path}: {exc}; choose a writable path") from None

    def _open_read_only(self, path: Path) -> sqlite3.Connection:
        if not path.is_file():
            raise NeurosynthError(f"ratings database {path} does not exist")
        uri = path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from None
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            conn.close()
            if "unable to open" not in str(exc).lower():
                raise self._error(exc, "read") from None
            # A WAL file on read-only media: SQLite cannot create the -shm file next
            # to it. Nothing can change such a file, so reading it as immutable is safe.
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
            except sqlite3.Error as exc2:
                raise self._error(exc2, "read") from None
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc, "read") from None
        conn.execute("PRAGMA query_only = ON")
        return conn

    def _check_ratings_database(self) -> None:
        """Refuse another program's SQLite file before anything is written to it."""
        try:
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from None
        if self.read_only and not {"schema_version", "ratings"} <= tables:
            raise NeurosynthError(f"{self.path} is not a ratings database (no ratings tables); nothing was changed")
        if tables and "schema_version" not in tables:
            raise NeurosynthError(
                f"{self.path} is another program's SQLite file, not a ratings database; "
                "choose another file (nothing was changed)"
            )

    def _present_columns(self) -> tuple[str, ...]:
        """The :data:`COLUMNS` this file has (a read-only older file may lack the newer ones)."""
        names = {row[1] for row in self._conn.execute("PRAGMA table_info(ratings)")}
        return tuple(c for c in COLUMNS if c in names)

    def _configure(self) -> None:
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from None
        if str(mode).lower() != "wal":
            # WAL is impossible on some network file systems; a rollback journal with
            # synchronous=FULL is still crash-safe, only slower with two writers.
            self._conn.execute("PRAGMA journal_mode = DELETE")

    def _has_table(self, name: str) -> bool:
        return bool(
            self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        )

    def _version(self) -> int:
        if not self._has_table("schema_version"):
            return 0
        row = self._fetchone("SELECT max(version) FROM schema_version")
        return int(row[0] or 0) if row else 0

    def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self._conn.execute(sql, tuple(params)).fetchone()

    def _migrations(self) -> dict[int, list[str]]:
        return MIGRATIONS

    def _lock_for_migration(self, conn: Any) -> None:
        """Hold off other processes while migrating (``BEGIN IMMEDIATE`` already does, in SQLite)."""

    def _migrate(self) -> None:
        try:
            current = self._version()
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from None
        self._check_version(current)
        if current == SCHEMA_VERSION:
            return
        migrations = self._migrations()

        def upgrade(conn: Any) -> None:
            self._lock_for_migration(conn)
            # Re-read inside the write lock: another process may have migrated meanwhile.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = self._version()
            for version in sorted(v for v in migrations if done < v <= SCHEMA_VERSION):
                for statement in migrations[version]:
                    conn.execute(statement)
            if done < SCHEMA_VERSION:
                # A new file records the version it was created at; an upgraded one
                # gains a row per upgrade.
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION, _now()))

        self._transaction(upgrade, "upgrade")

    def _check_version(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise NeurosynthError(
                f"ratings database {self.path} has schema version {current}, newer than this "
                f"napari-neurosynth understands ({SCHEMA_VERSION}); upgrade napari-neurosynth to open it"
            )

    # -- transactions ---------------------------------------------------------------
    def _error(self, exc: sqlite3.Error, action: str) -> NeurosynthError:
        text = str(exc)
        low = text.lower()
        if "locked" in low or "busy" in low:
            return NeurosynthError(
                f"ratings database {self.path} stayed locked by another program for over {self.timeout:.0f} s; "
                "close other programs using it and try again (nothing was written)"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low or "disk i/o" in low:
            return NeurosynthError(
                f"cannot {action} the ratings database {self.path}: {text}; "
                "choose a writable path (nothing was written)"
            )
        if "full" in low:
            return NeurosynthError(
                f"disk full while writing the ratings database {self.path}; "
                "free space and try again (nothing was written)"
            )
        if "not a database" in low or "malformed" in low:
            return NeurosynthError(f"{self.path} is not a valid ratings database ({text}); choose another file")
        if isinstance(exc, sqlite3.IntegrityError):
            return NeurosynthError(f"rating refused by the database: {text} (nothing was written)")
        return NeurosynthError(f"cannot {action} the ratings database {self.path}: {text}")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts."""
        values = tuple(params)
        try:
            rows = self._retry(lambda: self._conn.execute(sql, values).fetchall())
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from None
        return [dict(row) for row in rows]

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Call ``fn`` until it stops failing with 'database is locked' or the timeout passes.

        SQLite's busy handler covers almost every wait, but a few paths (switching
        to WAL, a WAL reset racing another writer) return SQLITE_BUSY at once.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                low = str(exc).lower()
                if ("locked" not in low and "busy" not in low) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _transaction(self, body: Callable[[Any], _T], action: str = "write") -> _T:
        """Run ``body(conn)`` in one ``BEGIN IMMEDIATE`` transaction; all or nothing.

        ``body`` sees only ``conn.execute(sql, params)`` with ``?`` placeholders and
        rows indexable by position: the same bodies run on the PostgreSQL backend.
        """
        if self.read_only:
            raise NeurosynthError(f"ratings database {self.path} was opened read-only; nothing was written")

        def attempt() -> _T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result

        try:
            return self._retry(attempt)
        except sqlite3.Error as exc:
            raise self._error(exc, action) from None

    # -- public API ------------------------------------------------------------------
    def record(self, rater: str, case: str, condition: str, score: int, study: str | None = None, **extra: Any) -> int:
        """Store one rating durably and return its row id.

        If the same rater already rated this (study, case, condition), the old row
        stays in the file as history and the new one supersedes it.

        Parameters
        ----------
        rater, case, condition : str
            Free-form ids (checked against a study by :class:`~napari_neurosynth.study.ReaderSession`,
            not here, so ratings collected elsewhere can be imported).
        score : int
            Mean Opinion Score, an integer from 1 to 5 (enforced by a CHECK constraint).
        study : str, optional
            Study id; ``None`` for ratings outside any study.
        **extra
            Optional fields: the sub-scores ``realism``, ``anatomical_correctness``,
            ``lesion_conspicuity``, ``diagnostic_usability`` (1-5), ``turing_choice``
            (``"real"`` or ``"synthetic"``), ``turing_confidence`` (1-5), ``comment``
            (str), ``seconds_on_case`` (float >= 0) and ``metadata`` (a JSON-serialisable
            dict for anything else).

        Returns
        -------
        int
            The new row's id. When this returns, the row is committed with a full
            fsync (``synchronous=FULL``).

        Raises
        ------
        NeurosynthError
            Bad score or field, unknown keyword, or a database that cannot be written.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> first = store.record("dr-a", "sub-01", "t1_to_t2", 2, study="pilot", seconds_on_case=12.5)
        >>> second = store.record("dr-a", "sub-01", "t1_to_t2", 3, study="pilot", comment="re-read")
        >>> [(r["id"], r["score"], r["supersedes"], r["is_current"]) for r in store.ratings(history=True)]
        [(1, 2, None, 0), (2, 3, 1, 1)]
        >>> store.record("dr-a", "sub-01", "t1_to_t2", 6)
        Traceback (most recent call last):
        ...
        napari_neurosynth.errors.NeurosynthError: score must be an integer from 1 to 5, got 6
        >>> store.record("dr-a", "sub-01", "t1_to_t2", 4, sharpness=3)
        Traceback (most recent call last):
        ...
        napari_neurosynth.errors.NeurosynthError: unknown rating field(s) sharpness; known: realism, ...
        >>> store.close()
        """
        prepared = self._prepare(rater, case, condition, score, study, extra)
        return self._store([prepared])[0]

    def record_many(self, rows: Iterable[dict[str, Any]]) -> list[int]:
        """Store many ratings in one transaction (all or none); return their row ids.

        Each row is a dict with ``rater``, ``case``, ``condition``, ``score``,
        optional ``study`` and the optional fields of :meth:`record`. Meant for
        importing ratings collected elsewhere.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> store.record_many([{"rater": "a", "case": "c1", "condition": "acquired", "score": 5},
        ...                    {"rater": "b", "case": "c1", "condition": "acquired", "score": 4, "study": "s"}])
        [1, 2]
        >>> store.record_many([{"rater": "a", "case": "c2", "condition": "acquired", "score": 5},
        ...                    {"rater": "a", "case": "c3", "condition": "acquired"}])
        Traceback (most recent call last):
        ...
        napari_neurosynth.errors.NeurosynthError: rating #2 lacks 'score'
        >>> len(store.ratings()), store.studies()   # all or nothing: the batch with a bad row wrote nothing
        (2, ['s'])
        >>> store.close()
        """
        prepared: list[_Prepared] = []
        for i, given in enumerate(rows):
            row = dict(given)
            try:
                rater, case, condition, score = (row.pop(k) for k in ("rater", "case", "condition", "score"))
            except KeyError as exc:
                raise NeurosynthError(f"rating #{i + 1} lacks {exc.args[0]!r}") from None
            study = row.pop("study", None)
            try:
                prepared.append(self._prepare(rater, case, condition, score, study, row))
            except NeurosynthError as exc:
                raise NeurosynthError(f"rating #{i + 1}: {exc} (nothing was written)") from None
        return self._store(prepared)

    def _store(self, prepared: list[_Prepared]) -> list[int]:
        """Write validated ratings in one transaction, each with a new client-generated id."""
        uids = [uuid.uuid4().hex for _ in prepared]
        return self._transaction(lambda conn: [self._insert(conn, *p, uid=u) for p, u in zip(prepared, uids)])

    @staticmethod
    def _prepare(
        rater: object, case: object, condition: object, score: object, study: object, extra: Mapping[str, Any]
    ) -> _Prepared:
        """Validate one rating; return the arguments of :meth:`_insert`."""
        unknown = sorted(set(extra) - set(EXTRA_FIELDS))
        if unknown:
            raise NeurosynthError(
                f"unknown rating field(s) {', '.join(unknown)}; known: {', '.join(EXTRA_FIELDS)} "
                "(put anything else in metadata={...})"
            )
        rater_id = _identifier("rater", rater)
        case_id = _identifier("case", case)
        condition_id = _identifier("condition", condition)
        study_id = None if study is None else _identifier("study", study)
        # Pre-check for a friendly message; the CHECK constraints are the real guard.
        if (
            isinstance(score, bool)
            or not isinstance(score, numbers.Real)  # numpy integers and floats too
            or not float(score).is_integer()
            or not 1 <= float(score) <= 5
        ):
            raise NeurosynthError(f"score must be an integer from 1 to 5, got {score!r}")
        values: dict[str, Any] = {name: _likert(name, extra.get(name)) for name in SUBSCORES}
        values["turing_confidence"] = _likert("turing_confidence", extra.get("turing_confidence"))
        choice = extra.get("turing_choice")
        if choice is not None:
            choice = str(choice).strip().lower()
            if choice not in ("real", "synthetic"):
                raise NeurosynthError(f"turing_choice must be 'real' or 'synthetic', got {extra['turing_choice']!r}")
        values["turing_choice"] = choice
        comment = extra.get("comment")
        values["comment"] = None if comment in (None, "") else str(comment)
        seconds = extra.get("seconds_on_case")
        if seconds is not None:
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise NeurosynthError(f"seconds_on_case must be a number, got {seconds!r}") from None
            if not math.isfinite(seconds) or seconds < 0:
                raise NeurosynthError(f"seconds_on_case must be a finite number >= 0, got {seconds!r}")
        values["seconds_on_case"] = seconds
        metadata = extra.get("metadata")
        if metadata is not None:
            try:
                metadata = json.dumps(metadata, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise NeurosynthError(f"metadata must be JSON-serialisable: {exc}") from None
        values["metadata"] = metadata
        score_value = int(float(score))  # a numbers.Real: numpy integers and floats too

        return rater_id, case_id, condition_id, score_value, study_id, values

    @staticmethod
    def _insert(
        conn: Any,  # sqlite3.Connection, or the PostgreSQL backend's adapter with the same execute()
        rater: str,
        case: str,
        condition: str,
        score_value: int,
        study: str | None,
        values: dict[str, Any],
        uid: str | None = None,
        created_at: str | None = None,
    ) -> int:
        """Insert one validated rating inside an open transaction, superseding the current one.

        A rating whose ``uid`` is stored already is not stored again (its row id is
        returned): sending one twice is harmless.
        """
        if uid is not None:
            known = conn.execute("SELECT id FROM ratings WHERE uid = ?", (uid,)).fetchone()
            if known is not None:
                return int(known[0])
        lock_item = getattr(conn, "lock_item", None)
        if lock_item is not None:
            # A server with many writers: one at a time per rated item, so that two
            # changes of one rating form one history chain (SQLite's BEGIN IMMEDIATE
            # already serialises every writer).
            lock_item(f"{study or ''}\x1f{rater}\x1f{case}\x1f{condition}")
        now = created_at or _now()
        _add_rater_and_study(conn, rater, study, now)
        old = conn.execute(
            "SELECT id FROM ratings"
            " WHERE coalesce(study, '') = ? AND rater = ? AND case_id = ? AND condition = ? AND is_current = 1",
            (study or "", rater, case, condition),
        ).fetchone()
        if old is not None:
            conn.execute("UPDATE ratings SET is_current = 0 WHERE id = ?", (old[0],))
        names = ["study", "rater", "case_id", "condition", "score", *values, "created_at", "supersedes", "is_current"]
        params = [study, rater, case, condition, score_value, *values.values(), now, old[0] if old else None, 1]
        names.append("uid")
        params.append(uid)
        row = conn.execute(
            f"INSERT INTO ratings ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) RETURNING id", params
        ).fetchone()
        return int(row[0])

    def ratings(
        self,
        study: str | None = None,
        rater: str | None = None,
        history: bool = False,
    ) -> list[RatingRow]:
        """Rows of the ratings table as dicts (keys :data:`COLUMNS`), oldest first.

        Parameters
        ----------
        study, rater : str, optional
            Keep only this study / rater.
        history : bool
            Include superseded rows (``is_current == 0``) as well.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> for rater, score in [("a", 4), ("b", 2), ("a", 5)]:
        ...     _ = store.record(rater, "c1", "acquired", score, study="s1")
        >>> [(r["rater"], r["score"]) for r in store.ratings()]
        [('b', 2), ('a', 5)]
        >>> [r["score"] for r in store.ratings(rater="a", history=True)], store.ratings(study="other")
        ([4, 5], [])
        >>> list(store.ratings()[0]) == list(COLUMNS)
        True
        >>> store.close()
        """
        where: list[str] = []
        params: list[str] = []
        if not history:
            where.append("is_current = 1")
        if study is not None:
            where.append("study = ?")
            params.append(study)
        if rater is not None:
            where.append("rater = ?")
            params.append(rater)
        # A read-only file from before a schema version lacks the newer columns: NULL.
        select = ", ".join(c if c in self._columns else f"NULL AS {c}" for c in COLUMNS)
        sql = f"SELECT {select} FROM ratings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        return [cast(RatingRow, row) for row in self._query(sql, params)]

    def export_csv(self, path: str | os.PathLike[str], study: str | None = None, history: bool = True) -> int:
        """Write ratings to a CSV file (header = :data:`COLUMNS`); return the number of rows.

        By default the history is included; filter on ``is_current == 1`` for the
        ratings in force. The file is written to a temporary name and renamed, so
        a failure never leaves half a CSV behind.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> store = RatingStore(folder / "r.sqlite")
        >>> _ = store.record("a", "c1", "acquired", 4)
        >>> _ = store.record("a", "c1", "acquired", 5)
        >>> store.export_csv(folder / "all.csv"), store.export_csv(folder / "now.csv", history=False)
        (2, 1)
        >>> (folder / "all.csv").read_text().splitlines()[0].split(",")[:6]
        ['id', 'study', 'rater', 'case_id', 'condition', 'score']
        >>> store.close()
        """
        from .export import write_csv  # the package's one CSV writer (atomic; NaN/Inf -> empty cell)

        return write_csv(self.ratings(study=study, history=history), path, COLUMNS)

    def studies(self) -> list[str]:
        """Ids of the studies that have ratings or sessions in this file."""
        return [row["id"] for row in self._query("SELECT id FROM studies ORDER BY id")]

    def schema_version(self) -> int:
        """The schema version of the open file."""
        return self._version()

    def pending_count(self) -> int:
        """Confirmed ratings not yet on the server (always 0 for a local file)."""
        return 0

    def connection_problem(self) -> str | None:
        """A plain sentence when the server cannot be reached, else ``None`` (always ``None`` here)."""
        return None

    # -- reader sessions (used by napari_neurosynth.study) ---------------------------------
    def register_study(self, study: str, definition: Mapping[str, Any] | None = None) -> None:
        """Make sure ``study`` exists, keeping the first definition stored for it."""
        text = None if definition is None else json.dumps(definition, sort_keys=True)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO studies (id, definition, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (study, text, _now()),
            )
            if text is not None:
                conn.execute("UPDATE studies SET definition = ? WHERE id = ? AND definition IS NULL", (text, study))

        self._transaction(write)

    def study_definition(self, study: str) -> dict[str, Any] | None:
        """The definition first stored for ``study`` (:meth:`register_study`), or ``None``."""
        rows = self._query("SELECT definition FROM studies WHERE id = ?", (study,))
        if not rows or rows[0]["definition"] is None:
            return None
        try:
            return cast(dict[str, Any], json.loads(rows[0]["definition"]))
        except json.JSONDecodeError:
            return None

    def load_session(self, rater: str, study: str) -> SessionRecord | None:
        """The stored session of ``rater`` in ``study`` (``order`` decoded), or ``None``.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> store.load_session("dr-a", "pilot") is None
        True
        >>> session = store.create_session("dr-a", "pilot", seed=7, order=[("c2", "acquired"), ("c1", "model")])
        >>> session["order"], session["position"]
        ([['c2', 'acquired'], ['c1', 'model']], 0)
        >>> store.set_position("dr-a", "pilot", 1)
        >>> store.load_session("dr-a", "pilot")["position"]
        1
        >>> store.create_session("dr-a", "pilot", seed=8, order=[])["seed"]   # the first session stays
        7
        >>> store.close()
        """
        rows = self._query(
            "SELECT rater, study, seed, item_order, position, started_at, updated_at FROM sessions"
            " WHERE rater = ? AND study = ?",
            (rater, study),
        )
        return cast("SessionRecord | None", _with_order(rows))

    def create_session(
        self, rater: str, study: str, seed: int, order: Iterable[tuple[str, str] | list[str]]
    ) -> SessionRecord:
        """Store a new session; if another process created one first, keep and return that one."""
        text = json.dumps(list(order))

        def write(conn: sqlite3.Connection) -> None:
            now = _now()
            _add_rater_and_study(conn, rater, study, now)
            conn.execute(
                "INSERT INTO sessions (rater, study, seed, item_order, position, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT DO NOTHING",
                (rater, study, int(seed), text, now, now),
            )

        self._transaction(write)
        session = self.load_session(rater, study)
        if session is None:  # cannot happen: the row was just written (or already there)
            raise NeurosynthError(f"the session of rater {rater!r} in study {study!r} was not stored")
        return session

    def set_position(self, rater: str, study: str, position: int) -> None:
        """Remember where ``rater`` is in ``study``."""
        self._transaction(
            lambda conn: conn.execute(
                "UPDATE sessions SET position = ?, updated_at = ? WHERE rater = ? AND study = ?",
                (int(position), _now(), rater, study),
            )
        )

    # -- typed answers, their audit trail, reading sessions (schema 3; napari_neurosynth.study) --
    def record_answers(
        self,
        rater: str,
        study: str,
        case: str,
        condition: str,
        answers: Mapping[str, Any],
        *,
        reading_session: str = "",
        seconds_on_case: float | None = None,
        legacy: tuple[int, Mapping[str, Any]] | None = None,
    ) -> int:
        """Store typed answers to one item in one transaction, with an audit row per changed answer.

        Answers equal to the current ones are not written again; a value ``None``
        clears an answer given before. Each answer written supersedes the old row
        and adds an :meth:`audit` row with the old value (``None`` for a first
        answer), the new one and the time. ``legacy`` = ``(score, extra)`` also
        writes a ratings row (:meth:`record`) in the same transaction, so that the
        MOS summaries keep working. Validation against the questions is the
        caller's (:func:`napari_neurosynth.questions.validate_answers`).

        Returns
        -------
        int
            The ratings row id when ``legacy`` was written, else the id of the last
            answer written, else 0 (nothing changed).

        Examples
        --------
        >>> import pathlib, tempfile
        >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> _ = store.record_answers("dr-a", "pilot", "c1", "model", {"lesions": [], "diagnostic": True})
        >>> _ = store.record_answers("dr-a", "pilot", "c1", "model", {"lesions": [], "diagnostic": False})
        >>> [(a["question"], a["value"]) for a in store.answers()]
        [('lesions', []), ('diagnostic', False)]
        >>> [(r["question"], r["old_value"], r["new_value"]) for r in store.audit()]
        [('lesions', None, []), ('diagnostic', None, True), ('diagnostic', True, False)]
        >>> store.close()
        """
        rater_id = _identifier("rater", rater)
        study_id = _identifier("study", study)
        case_id = _identifier("case", case)
        condition_id = _identifier("condition", condition)
        session = "" if reading_session is None else str(reading_session).strip()
        if seconds_on_case is not None:
            seconds_on_case = float(seconds_on_case)
            if not math.isfinite(seconds_on_case) or seconds_on_case < 0:
                raise NeurosynthError(f"seconds_on_case must be a finite number >= 0, got {seconds_on_case!r}")
        encoded: dict[str, str] = {}
        for question, value in answers.items():
            qid = _identifier("question", question)
            try:
                encoded[qid] = json.dumps(value, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise NeurosynthError(f"the answer to {qid!r} cannot be stored as JSON: {exc}") from None
        prepared = None
        if legacy is not None:
            extra = {**legacy[1], "seconds_on_case": seconds_on_case}
            prepared = self._prepare(rater_id, case_id, condition_id, legacy[0], study_id, extra)
        keys = (study_id, rater_id, session, case_id, condition_id)

        def write(conn: Any) -> int:
            now = _now()
            _add_rater_and_study(conn, rater_id, study_id, now)
            last = 0
            for qid, text in encoded.items():
                old = conn.execute(
                    "SELECT id, value FROM answers WHERE study = ? AND rater = ? AND reading_session = ?"
                    " AND case_id = ? AND condition = ? AND question = ? AND is_current = 1",
                    (*keys, qid),
                ).fetchone()
                if (old is not None and old[1] == text) or (old is None and text == "null"):
                    continue
                if old is not None:
                    conn.execute("UPDATE answers SET is_current = 0 WHERE id = ?", (old[0],))
                row = conn.execute(
                    "INSERT INTO answers (study, rater, reading_session, case_id, condition, question, value,"
                    " seconds_on_case, created_at, supersedes, is_current, uid)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
                    (*keys, qid, text, seconds_on_case, now, None if old is None else old[0], uuid.uuid4().hex),
                ).fetchone()
                last = int(row[0])
                conn.execute(
                    "INSERT INTO answer_audit (answer_id, study, rater, reading_session, case_id, condition,"
                    " question, old_value, new_value, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (last, *keys, qid, None if old is None else old[1], text, now),
                )
            if prepared is not None:
                return self._insert(conn, *prepared, uid=uuid.uuid4().hex, created_at=now)
            return last

        return self._transaction(write)

    def _select(
        self, table: str, columns: tuple[str, ...], filters: Mapping[str, str | None], current: bool | None = None
    ) -> list[dict[str, Any]]:
        # A writable store is migrated to this schema; a read-only older file may lack the table.
        if self.read_only and not self._has_table(table):
            return []
        where = [f"{name} = ?" for name, value in filters.items() if value is not None]
        params = [value for value in filters.values() if value is not None]
        if current:
            where.append("is_current = 1")
        sql = f"SELECT {', '.join(columns)} FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
        return self._query(sql + " ORDER BY id", params)

    def answers(
        self,
        study: str | None = None,
        rater: str | None = None,
        reading_session: str | None = None,
        history: bool = False,
    ) -> list[AnswerRow]:
        """Typed answers as dicts (keys :data:`ANSWER_COLUMNS`, ``value`` decoded), oldest first.

        Cleared answers (value ``None``) are left out unless ``history``.
        """
        filters = {"study": study, "rater": rater, "reading_session": reading_session}
        rows = self._select("answers", ANSWER_COLUMNS, filters, current=not history)
        for row in rows:
            row["value"] = json.loads(row["value"])
        if not history:
            rows = [r for r in rows if r["value"] is not None]
        return cast(list[AnswerRow], rows)

    def audit(
        self, study: str | None = None, rater: str | None = None, reading_session: str | None = None
    ) -> list[AuditRow]:
        """The audit trail of typed answers (keys :data:`AUDIT_COLUMNS`, values decoded), oldest first."""
        filters = {"study": study, "rater": rater, "reading_session": reading_session}
        rows = self._select("answer_audit", AUDIT_COLUMNS, filters)
        for row in rows:
            row["old_value"] = None if row["old_value"] is None else json.loads(row["old_value"])
            row["new_value"] = json.loads(row["new_value"])
        return cast(list[AuditRow], rows)

    def load_reading_session(self, rater: str, study: str, reading_session: str) -> ReadingSessionRecord | None:
        """The stored reading session of a crossover study (``order`` decoded), or ``None``.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> from datetime import datetime, timezone
        >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
        >>> rec = store.create_reading_session("dr-a", "pilot", "unaided", seed=3, order=[("c1", "acquired")])
        >>> rec["reading_session"], rec["ended_at"], rec["order"]
        ('unaided', None, [['c1', 'acquired']])
        >>> store.end_reading_session("dr-a", "pilot", "unaided", datetime(2026, 1, 5, tzinfo=timezone.utc))
        >>> store.load_reading_session("dr-a", "pilot", "unaided")["ended_at"]
        '2026-01-05T00:00:00+00:00'
        >>> store.close()
        """
        if self.read_only and not self._has_table("reading_sessions"):
            return None
        rows = self._query(
            "SELECT rater, study, reading_session, seed, item_order, position, started_at, updated_at, ended_at"
            " FROM reading_sessions WHERE rater = ? AND study = ? AND reading_session = ?",
            (rater, study, reading_session),
        )
        return cast("ReadingSessionRecord | None", _with_order(rows))

    def create_reading_session(
        self, rater: str, study: str, reading_session: str, seed: int, order: Iterable[tuple[str, str] | list[str]]
    ) -> ReadingSessionRecord:
        """Store a new reading session; if one exists (another process), keep and return that one."""
        text = json.dumps(list(order))

        def write(conn: Any) -> None:
            now = _now()
            _add_rater_and_study(conn, rater, study, now)
            conn.execute(
                "INSERT INTO reading_sessions (rater, study, reading_session, seed, item_order, position,"
                " started_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT DO NOTHING",
                (rater, study, reading_session, int(seed), text, now, now),
            )

        self._transaction(write)
        record = self.load_reading_session(rater, study, reading_session)
        if record is None:  # cannot happen: the row was just written (or already there)
            raise NeurosynthError(f"reading session {reading_session!r} of rater {rater!r} was not stored")
        return record

    def set_reading_position(self, rater: str, study: str, reading_session: str, position: int) -> None:
        """Remember where ``rater`` is in a reading session."""
        self._transaction(
            lambda conn: conn.execute(
                "UPDATE reading_sessions SET position = ?, updated_at = ?"
                " WHERE rater = ? AND study = ? AND reading_session = ?",
                (int(position), _now(), rater, study, reading_session),
            )
        )

    def end_reading_session(self, rater: str, study: str, reading_session: str, ended_at: datetime) -> None:
        """Record that ``rater`` ended a reading session at ``ended_at`` (kept if already ended)."""
        if ended_at.tzinfo is None:
            raise NeurosynthError("the end of a reading session must be a time with a time zone")
        stamp = ended_at.astimezone(timezone.utc).isoformat()
        self._transaction(
            lambda conn: conn.execute(
                "UPDATE reading_sessions SET ended_at = ?, updated_at = ?"
                " WHERE rater = ? AND study = ? AND reading_session = ? AND ended_at IS NULL",
                (stamp, _now(), rater, study, reading_session),
            )
        )

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent)."""
        conn: sqlite3.Connection | None = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            del self._conn

    def __enter__(self) -> RatingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RatingStore({str(self.path)!r})"
