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
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

from .errors import NeurosynthError

__all__ = [
    "COLUMNS",
    "EXTRA_FIELDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SUBSCORES",
    "RatingRow",
    "RatingStore",
    "SessionRecord",
    "default_db_path",
]

_T = TypeVar("_T")

#: Schema version this code writes; files with a higher version are refused.
SCHEMA_VERSION = 1

#: ``version -> statements`` applied in order, each version in one transaction.
#: To change the schema, append a new version; never edit an applied one.
MIGRATIONS: dict[int, list[str]] = {
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
}

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
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
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


class RatingStore:
    """Ratings of a reader study in a local SQLite file.

    Parameters
    ----------
    path : str or Path, optional
        The database file; created (with its folder) if missing. Defaults to
        :func:`default_db_path` (the user data folder).
    timeout : float
        Seconds to wait for another process that holds the write lock before
        giving up with a :class:`NeurosynthError`.

    Raises
    ------
    NeurosynthError
        If the file cannot be created or written, is not a SQLite database, or
        was written by a newer version of napari-neurosynth.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> store = RatingStore(pathlib.Path(tempfile.mkdtemp()) / "r.sqlite")
    >>> store.record("dr-a", "case-7", "t1_to_t2", 3, realism=2, turing_choice="synthetic") > 0
    True
    >>> store.schema_version() == SCHEMA_VERSION
    True
    >>> store.close()
    >>> RatingStore(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: ratings database path ... is a folder; give a file name such as ...
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.timeout = float(timeout)
        if self.path.is_dir():
            raise NeurosynthError(
                f"ratings database path {self.path} is a folder; give a file name such as ratings.sqlite"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NeurosynthError(
                f"cannot create the folder for the ratings database {self.path}: {exc.strerror}; choose a writable path"
            ) from None
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE
            # ourselves so each rating is exactly one transaction.
            self._conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise NeurosynthError(
                f"cannot open the ratings database {self.path}: {exc}; choose a writable path"
            ) from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- set-up -----------------------------------------------------------------
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

    def _version(self) -> int:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        try:
            current = self._version()
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from None
        if current > SCHEMA_VERSION:
            raise NeurosynthError(
                f"ratings database {self.path} has schema version {current}, newer than this "
                f"napari-neurosynth understands ({SCHEMA_VERSION}); upgrade napari-neurosynth to open it"
            )
        if current == SCHEMA_VERSION:
            return

        def upgrade(conn: sqlite3.Connection) -> None:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = self._version()
            for version in sorted(v for v in MIGRATIONS if done < v <= SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, _now()))

        self._transaction(upgrade, "upgrade")

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

    def _transaction(self, body: Callable[[sqlite3.Connection], _T], action: str = "write") -> _T:
        """Run ``body(conn)`` in one ``BEGIN IMMEDIATE`` transaction; all or nothing."""

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
        return self._transaction(lambda conn: self._insert(conn, *prepared))

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
        return self._transaction(lambda conn: [self._insert(conn, *p) for p in prepared])

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
            or not isinstance(score, (int, float))
            or not float(score).is_integer()
            or not 1 <= score <= 5
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
        score_value = int(score)

        return rater_id, case_id, condition_id, score_value, study_id, values

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        rater: str,
        case: str,
        condition: str,
        score_value: int,
        study: str | None,
        values: dict[str, Any],
    ) -> int:
        """Insert one validated rating inside an open transaction, superseding the current one."""
        now = _now()
        conn.execute("INSERT OR IGNORE INTO raters (id, created_at) VALUES (?, ?)", (rater, now))
        if study is not None:
            conn.execute("INSERT OR IGNORE INTO studies (id, created_at) VALUES (?, ?)", (study, now))
        old = conn.execute(
            "SELECT id FROM ratings"
            " WHERE study IS ? AND rater = ? AND case_id = ? AND condition = ? AND is_current = 1",
            (study, rater, case, condition),
        ).fetchone()
        if old is not None:
            conn.execute("UPDATE ratings SET is_current = 0 WHERE id = ?", (old[0],))
        names = ["study", "rater", "case_id", "condition", "score", *values, "created_at", "supersedes", "is_current"]
        params = [study, rater, case, condition, score_value, *values.values(), now, old[0] if old else None, 1]
        cursor = conn.execute(
            f"INSERT INTO ratings ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", params
        )
        return int(cast(int, cursor.lastrowid))  # set by every successful INSERT

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
        sql = f"SELECT {', '.join(COLUMNS)} FROM ratings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        try:
            rows = self._retry(lambda: self._conn.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from None
        return [cast(RatingRow, dict(row)) for row in rows]

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
        rows = self._conn.execute("SELECT id FROM studies ORDER BY id").fetchall()
        return [row[0] for row in rows]

    def schema_version(self) -> int:
        """The schema version of the open file."""
        return self._version()

    # -- reader sessions (used by napari_neurosynth.study) ---------------------------------
    def register_study(self, study: str, definition: Mapping[str, Any] | None = None) -> None:
        """Make sure ``study`` exists, keeping the first definition stored for it."""
        text = None if definition is None else json.dumps(definition, sort_keys=True)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO studies (id, definition, created_at) VALUES (?, ?, ?)", (study, text, _now())
            )
            if text is not None:
                conn.execute("UPDATE studies SET definition = ? WHERE id = ? AND definition IS NULL", (text, study))

        self._transaction(write)

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
        row = self._conn.execute(
            "SELECT rater, study, seed, item_order, position, started_at, updated_at FROM sessions"
            " WHERE rater = ? AND study = ?",
            (rater, study),
        ).fetchone()
        if row is None:
            return None
        session = dict(row)
        order = json.loads(session.pop("item_order"))
        return cast(SessionRecord, {**session, "order": order})

    def create_session(
        self, rater: str, study: str, seed: int, order: Iterable[tuple[str, str] | list[str]]
    ) -> SessionRecord:
        """Store a new session; if another process created one first, keep and return that one."""
        text = json.dumps(list(order))

        def write(conn: sqlite3.Connection) -> None:
            now = _now()
            conn.execute("INSERT OR IGNORE INTO raters (id, created_at) VALUES (?, ?)", (rater, now))
            conn.execute("INSERT OR IGNORE INTO studies (id, created_at) VALUES (?, ?)", (study, now))
            conn.execute(
                "INSERT OR IGNORE INTO sessions (rater, study, seed, item_order, position, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?, ?)",
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
