"""The PostgreSQL backend of the rating store, for reader studies that span sites.

``RatingStore("postgresql://site_a@db.example.org:5432/reader")`` returns a
:class:`PostgresRatingStore`: the methods, the schema (rendered from the one
definition in :mod:`napari_neurosynth.ratings`), the migrations and the guarantees
of the SQLite store (one transaction per rating, history rows, scores checked by
the database), through psycopg 3.

**No rating lost when the network is.** A rating that cannot reach the server is
written to a local SQLite *journal* (WAL, ``synchronous=FULL``) before
:meth:`~PostgresRatingStore.record` returns, and sent when the server answers
again: at the next rating, at :meth:`~PostgresRatingStore.sync`, at close or
at the next open. Every rating carries a client-generated id (``uid``, unique on
the server), so a rating sent twice (the server committed but its answer was
lost; two processes draining one journal) is stored once. A rating counts as
confirmed only once it is durable on the server or in the journal; ``record``
returns a positive server row id in the first case and ``-n`` (the journal
entry) in the second. While the server is away the store reads its last
answers plus the journal, so a reader session carries on.

Access control (per-site roles that cannot delete nor read other sites' rows,
row-level security) is SQL the study's administrator runs once; it is given, and
tested, in ``docs/reader-study.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from .errors import NeurosynthError
from .ratings import (
    _T,
    AnswerRow,
    AuditRow,
    RatingRow,
    RatingStore,
    ReadingSessionRecord,
    SessionRecord,
    _now,
    _Prepared,
    default_db_path,
    render_schema,
)

__all__ = ["Journal", "PostgresRatingStore", "default_journal_path", "redact_url"]

#: Key of the advisory lock that serialises migrations between processes.
_MIGRATION_LOCK = 0x6E5E_2018


def redact_url(url: str) -> str:
    """``url`` without its password, for messages.

    Examples
    --------
    >>> redact_url("postgresql://site_a:s3cret@db.example.org:5432/reader")
    'postgresql://site_a@db.example.org:5432/reader'
    >>> redact_url("postgresql://lead@localhost/reader?sslmode=require")
    'postgresql://lead@localhost/reader?sslmode=require'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def default_journal_path(url: str) -> Path:
    """The local journal of a server, one per (redacted) URL, in the user data folder.

    Examples
    --------
    >>> p = default_journal_path("postgresql://site_a@db.example.org/reader")
    >>> p.parent.name, p.suffix
    ('journal', '.sqlite')
    """
    digest = hashlib.sha256(redact_url(url).encode()).hexdigest()[:16]
    return default_db_path().parent / "journal" / f"{digest}.sqlite"


class Journal:
    """Ratings confirmed to the rater but not yet on the server, in a local SQLite file.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> journal = Journal(pathlib.Path(tempfile.mkdtemp()) / "j.sqlite")
    >>> journal.add([("u1", {"rater": "a", "score": 4}), ("u2", {"rater": "a", "score": 5})])
    [1, 2]
    >>> [(seq, uid, item["score"]) for seq, uid, item in journal.pending()]
    [(1, 'u1', 4), (2, 'u2', 5)]
    >>> journal.remove(1); len(journal)
    1
    >>> journal.close()
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a rating the rater saw confirmed must survive a power cut.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " uid TEXT NOT NULL UNIQUE, item TEXT NOT NULL, queued_at TEXT NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise NeurosynthError(
                f"cannot open the local rating journal {self.path}: {exc}; choose a writable journal path"
            ) from None

    def add(self, items: Iterable[tuple[str, dict[str, Any]]]) -> list[int]:
        """Store ``(uid, rating)`` pairs durably, all or none; return their sequence numbers."""
        seqs: list[int] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for uid, item in items:
                row = self._conn.execute(
                    "INSERT INTO pending (uid, item, queued_at) VALUES (?, ?, ?) RETURNING seq",
                    (uid, json.dumps(item, sort_keys=True), _now()),
                ).fetchone()
                seqs.append(int(row[0]))
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise NeurosynthError(
                f"the ratings server is unreachable and the local journal {self.path} cannot be written ({exc}); "
                "the rating was NOT saved"
            ) from None
        return seqs

    def pending(self) -> list[tuple[int, str, dict[str, Any]]]:
        """``(seq, uid, item)`` of the waiting ratings, oldest first."""
        rows = self._conn.execute("SELECT seq, uid, item FROM pending ORDER BY seq").fetchall()
        return [(int(seq), str(uid), json.loads(item)) for seq, uid, item in rows]

    def remove(self, seq: int) -> None:
        """Forget a rating once the server has it."""
        self._conn.execute("DELETE FROM pending WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM pending").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            del self._conn


class _Offline(Exception):
    """The server cannot be reached now (connection refused, dropped, timed out)."""


class _Conn:
    """The ``execute(sql, params)`` that the store's transaction bodies use, on psycopg.

    The bodies are written once with SQLite's ``?`` placeholders; psycopg wants ``%s``.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), tuple(params))

    def lock_item(self, key: str) -> None:
        """Hold a transaction-scoped lock on one rated item (see ``RatingStore._insert``)."""
        self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


class PostgresRatingStore(RatingStore):
    """Ratings of a reader study on a PostgreSQL server, with a local journal.

    Parameters
    ----------
    url : str
        ``postgresql://user[:password]@host[:port]/database[?options]`` (libpq's
        URI; a password is better kept in ``~/.pgpass`` or ``PGPASSWORD``).
    timeout : float
        Seconds a statement may wait for a lock.
    read_only : bool
        Open for reading only (no migration, no journal; every transaction read-only).
    journal : str or Path, optional
        The local journal file; default :func:`default_journal_path`.
    connect_timeout : float
        Seconds to wait for the server before counting it unreachable.
    retry_interval : float
        After the server was found unreachable, seconds during which new ratings go
        straight to the journal instead of waiting for the server again.

    Raises
    ------
    NeurosynthError
        If the server cannot be reached when the store is opened, refuses the role,
        or holds a schema newer than this package.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        read_only: bool = False,
        *,
        journal: str | os.PathLike[str] | None = None,
        connect_timeout: float = 5.0,
        retry_interval: float = 5.0,
    ) -> None:
        try:
            import psycopg  # the optional dependency of this backend only
        except ImportError:
            raise NeurosynthError(
                "a postgresql:// ratings database needs psycopg 3: pip install 'napari-neurosynth[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = str(url)
        self.path = redact_url(self.url)
        self.timeout = float(timeout)
        self.read_only = bool(read_only)
        self.connect_timeout = float(connect_timeout)
        self.retry_interval = float(retry_interval)
        self._pg: Any = None
        self._offline_until = 0.0
        self._problem: str | None = None
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._positions: dict[tuple[str, str], int] = {}
        self._columns = ()
        try:
            self._connection()
        except _Offline:
            raise NeurosynthError(
                f"cannot reach the ratings server {self.path}: {self._problem}; "
                "check the network and the address, then try again"
            ) from None
        self._journal: Journal | None = None
        try:
            if not self._has_table("schema_version") and self.read_only:
                raise NeurosynthError(f"{self.path} holds no ratings database (no schema_version table)")
            if self.read_only:
                self._check_version(self._version())
            else:
                self._migrate()
                self._journal = Journal(journal if journal is not None else default_journal_path(self.url))
            self._columns = self._present_columns()
            self.sync()
        except BaseException:
            self.close()
            raise

    # -- connection ---------------------------------------------------------------------
    def _connection(self) -> Any:
        """The open connection, (re)connecting when needed; raises :class:`_Offline`."""
        if self._pg is not None and not self._pg.closed:
            return self._pg
        if time.monotonic() < self._offline_until:
            raise _Offline(self._problem)
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name="napari-neurosynth",
                options=f"-c lock_timeout={int(self.timeout * 1000)}",
            )
        except psycopg.OperationalError as exc:
            self._went_offline(exc)
            raise _Offline(self._problem) from None
        except psycopg.Error as exc:
            raise NeurosynthError(f"the ratings server {self.path} refused the connection: {_first_line(exc)}")
        if self.read_only:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        self._pg = conn
        self._problem = None
        return conn

    def _went_offline(self, exc: BaseException) -> None:
        self._problem = _first_line(exc) or "connection lost"
        self._offline_until = time.monotonic() + self.retry_interval
        if self._pg is not None:
            try:
                self._pg.close()
            except Exception:  # the connection is gone either way
                pass
            self._pg = None

    def _is_connection_error(self, exc: BaseException) -> bool:
        errors = self._psycopg.errors
        # A server shutting down, restarting or out of disk/memory cannot store the
        # rating now, but will later: the journal keeps it meanwhile.
        unavailable = (
            errors.AdminShutdown,
            errors.CrashShutdown,
            errors.CannotConnectNow,
            errors.InsufficientResources,
        )
        broken = self._pg is None or self._pg.closed or bool(getattr(self._pg, "broken", False))
        return isinstance(exc, unavailable) or (isinstance(exc, self._psycopg.OperationalError) and broken)

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn psycopg errors into :class:`_Offline` (network) or :class:`NeurosynthError`."""
        psycopg = self._psycopg
        try:
            yield
        except psycopg.Error as exc:
            if self._is_connection_error(exc):
                self._went_offline(exc)
                raise _Offline(self._problem) from None
            if isinstance(exc, psycopg.errors.CheckViolation):
                raise NeurosynthError(f"rating refused by the database: {_first_line(exc)} (nothing was written)")
            if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                raise NeurosynthError(
                    f"the role of {self.path} may not {action} this: {_first_line(exc)} (nothing was written)"
                ) from None
            raise NeurosynthError(f"cannot {action} the ratings database {self.path}: {_first_line(exc)}") from None

    # -- the hooks of RatingStore -------------------------------------------------------
    def _has_table(self, name: str) -> bool:
        return bool(self._fetchone("SELECT to_regclass(?) IS NOT NULL", (name,))[0])

    def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        conn = self._online()
        with self._guard("read"):
            return _Conn(conn).execute(sql, params).fetchone()

    def _online(self) -> Any:
        try:
            return self._connection()
        except _Offline:
            raise NeurosynthError(
                f"the ratings server {self.path} is unreachable ({self._problem}); try again when it is back"
            ) from None

    def _present_columns(self) -> tuple[str, ...]:
        from .ratings import COLUMNS

        rows = self._query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ratings'"
            " AND table_schema = current_schema()"
        )
        names = {row["column_name"] for row in rows}
        return tuple(c for c in COLUMNS if c in names)

    def _migrations(self) -> dict[int, list[str]]:
        return render_schema("postgresql")

    def _lock_for_migration(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def _transaction(self, body: Callable[[Any], _T], action: str = "write") -> _T:
        """Run ``body`` in one server transaction, retrying lost races; raises :class:`_Offline`."""
        if self.read_only:
            raise NeurosynthError(f"ratings database {self.path} was opened read-only; nothing was written")
        errors = self._psycopg.errors
        for attempt in range(8):
            conn = self._connection()
            try:
                with self._guard(action):
                    with conn.transaction():
                        return body(_Conn(conn))
            except NeurosynthError as exc:
                cause = exc.__context__
                # Two sites superseding one rating at once, or a deadlock: run it again.
                if isinstance(cause, (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected)):
                    if attempt < 7:
                        time.sleep(0.01 * (attempt + 1))
                        continue
                raise
        raise AssertionError("unreachable")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        conn = self._connection()
        with self._guard("read"):
            with conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(sql.replace("?", "%s"), tuple(params))
                return [dict(row) for row in cursor.fetchall()]

    # -- writing, with the journal -------------------------------------------------------
    def _store(self, prepared: list[_Prepared]) -> list[int]:
        journal = self._journal
        items = [(uuid.uuid4().hex, _now(), p) for p in prepared]
        if journal is None:
            raise NeurosynthError(f"ratings database {self.path} was opened read-only; nothing was written")
        if not len(journal) or self._drain_or_note():
            try:
                return self._transaction(
                    lambda conn: [self._insert(conn, *p, uid=uid, created_at=at) for uid, at, p in items]
                )
            except _Offline:
                pass
        # The server is away: the journal makes the ratings durable here, all of them
        # in one transaction, and they are sent in this order when it is back.
        return [-seq for seq in journal.add((uid, _item(p, at)) for uid, at, p in items)]

    def _drain_or_note(self) -> bool:
        """:meth:`_drain`, but a waiting rating the server refuses blocks only the queue, not new ratings.

        The new rating then waits in the journal behind it (so the order is kept) and
        the refusal is what :meth:`connection_problem` reports.
        """
        try:
            return self._drain()
        except NeurosynthError as exc:
            self._problem = f"the server refused a waiting rating: {exc}"
            return False

    def _drain(self) -> bool:
        """Send the journal's ratings, oldest first; True when none is left."""
        journal = self._journal
        if journal is None:
            return True
        for seq, uid, item in journal.pending():
            prepared = cast(
                _Prepared,
                (item["rater"], item["case"], item["condition"], item["score"], item["study"], item["values"]),
            )

            def send(conn: Any, p: _Prepared = prepared, u: str = uid, at: str = item["created_at"]) -> int:
                return self._insert(conn, *p, uid=u, created_at=at)

            try:
                self._transaction(send)
            except _Offline:
                return False
            # On the server now (committed): only then forget it. Killed in between,
            # it is sent again and recognised by its uid.
            journal.remove(seq)
        for (rater, study), position in list(self._positions.items()):
            try:
                super().set_position(rater, study, position)
            except _Offline:
                return False
            del self._positions[(rater, study)]
        return True

    def sync(self) -> int:
        """Send the journaled ratings now if the server answers; return how many are still waiting."""
        if self._journal is None:
            return 0
        self._offline_until = 0.0
        self._drain()
        return len(self._journal)

    def pending_count(self) -> int:
        """Confirmed ratings kept in the local journal, waiting for the server."""
        return 0 if self._journal is None else len(self._journal)

    def connection_problem(self) -> str | None:
        """A plain sentence when the server cannot be reached, else ``None``."""
        waiting = self.pending_count()
        if self._problem is None and not waiting:
            return None
        host = urlsplit(self.url).hostname or "localhost"
        safe = f"Your ratings are safe on this computer ({waiting} waiting)"
        if self._problem is not None and self._problem.startswith("the server refused"):
            return f"The ratings server {host} refused a rating ({self._problem}). {safe}; tell the study lead."
        reason = f" ({self._problem})" if self._problem else ""
        return f"The ratings server {host} cannot be reached{reason}. {safe} and are sent when the server is back."

    def register_study(self, study: str, definition: Any = None) -> None:
        self._or_unreachable(lambda: super(PostgresRatingStore, self).register_study(study, definition))

    def create_session(
        self, rater: str, study: str, seed: int, order: Iterable[tuple[str, str] | list[str]]
    ) -> SessionRecord:
        return self._or_unreachable(lambda: super(PostgresRatingStore, self).create_session(rater, study, seed, order))

    def set_position(self, rater: str, study: str, position: int) -> None:
        """Remember where ``rater`` is; while the server is away, in memory until it is back."""
        try:
            super().set_position(rater, study, position)
            self._positions.pop((rater, study), None)
        except _Offline:
            self._positions[(rater, study)] = int(position)
        self._cache.pop(("session", rater, study), None)

    # Typed answers, their audit and crossover reading sessions have no journal (yet).
    # While the server is away, answers that a ratings row holds in full (the MOS,
    # sub-scores, Turing choice, comment of a study without reading sessions) go to
    # the journal as that rating; any other answer is refused, never lost silently.
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
        from .questions import LEGACY_IDS

        # Ratings waiting in the journal go first, so that the server gets them in order.
        waiting = self._journal is not None and len(self._journal) > 0
        try:
            if waiting and not self._drain_or_note():
                raise _Offline(self._problem)
            return super().record_answers(
                rater,
                study,
                case,
                condition,
                answers,
                reading_session=reading_session,
                seconds_on_case=seconds_on_case,
                legacy=legacy,
            )
        except _Offline:
            pass
        if legacy is not None and not reading_session and all(k in LEGACY_IDS for k in answers):
            extra = {**legacy[1], "seconds_on_case": seconds_on_case}
            return self.record(rater, case, condition, legacy[0], study=study, **extra)
        raise NeurosynthError(
            f"the ratings server {self.path} is unreachable ({self._problem}); the answer was NOT saved, "
            "try again when it is back"
        )

    def study_definition(self, study: str) -> dict[str, Any] | None:
        return self._or_unreachable(lambda: super(PostgresRatingStore, self).study_definition(study))

    def answers(
        self,
        study: str | None = None,
        rater: str | None = None,
        reading_session: str | None = None,
        history: bool = False,
    ) -> list[AnswerRow]:
        """Typed answers; while the server is away, its last answer (the journal holds ratings only)."""
        key = ("answers", study, rater, reading_session, history)
        try:
            rows = super().answers(study=study, rater=rater, reading_session=reading_session, history=history)
        except _Offline:
            return cast(list[AnswerRow], self._cache.get(key, []))
        self._cache[key] = rows
        return rows

    def audit(
        self, study: str | None = None, rater: str | None = None, reading_session: str | None = None
    ) -> list[AuditRow]:
        key = ("audit", study, rater, reading_session)
        try:
            rows = super().audit(study=study, rater=rater, reading_session=reading_session)
        except _Offline:
            return cast(list[AuditRow], self._cache.get(key, []))
        self._cache[key] = rows
        return rows

    def load_reading_session(self, rater: str, study: str, reading_session: str) -> ReadingSessionRecord | None:
        return self._or_unreachable(
            lambda: super(PostgresRatingStore, self).load_reading_session(rater, study, reading_session)
        )

    def create_reading_session(self, *args: Any, **kwargs: Any) -> ReadingSessionRecord:
        return self._or_unreachable(lambda: super(PostgresRatingStore, self).create_reading_session(*args, **kwargs))

    def set_reading_position(self, rater: str, study: str, reading_session: str, position: int) -> None:
        self._or_unreachable(
            lambda: super(PostgresRatingStore, self).set_reading_position(rater, study, reading_session, position)
        )

    def end_reading_session(self, *args: Any, **kwargs: Any) -> None:
        self._or_unreachable(lambda: super(PostgresRatingStore, self).end_reading_session(*args, **kwargs))

    def _or_unreachable(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except _Offline:
            raise NeurosynthError(
                f"the ratings server {self.path} is unreachable ({self._problem}); start the session when it is back"
            ) from None

    # -- reading, with the last answers while offline ----------------------------------------
    def ratings(self, study: str | None = None, rater: str | None = None, history: bool = False) -> list[RatingRow]:
        key = ("ratings", study, rater, history)
        try:
            rows = super().ratings(study=study, rater=rater, history=history)
            self._cache[key] = rows
            if not self.pending_count():
                return rows
        except _Offline:
            rows = self._cache.get(key, [])
        return self._with_journal([dict(r) for r in rows], study, rater, history)

    def _with_journal(
        self, rows: list[dict[str, Any]], study: str | None, rater: str | None, history: bool
    ) -> list[RatingRow]:
        """``rows`` as they will be once the journal is on the server."""
        if self._journal is None:
            return cast(list[RatingRow], rows)
        for seq, uid, item in self._journal.pending():
            if (study is not None and item["study"] != study) or (rater is not None and item["rater"] != rater):
                continue
            if any(r.get("uid") == uid for r in rows):
                continue
            same = (item["study"], item["rater"], item["case"], item["condition"])
            old = None
            for r in rows:
                if r["is_current"] and (r["study"], r["rater"], r["case_id"], r["condition"]) == same:
                    old = r
            if old is not None:
                old["is_current"] = 0
            rows.append(
                {
                    "id": -seq,
                    "study": item["study"],
                    "rater": item["rater"],
                    "case_id": item["case"],
                    "condition": item["condition"],
                    "score": item["score"],
                    **item["values"],
                    "created_at": item["created_at"],
                    "supersedes": None if old is None else old["id"],
                    "is_current": 1,
                    "uid": uid,
                }
            )
        if not history:
            rows = [r for r in rows if r["is_current"]]
        return cast(list[RatingRow], rows)

    def load_session(self, rater: str, study: str) -> SessionRecord | None:
        key = ("session", rater, study)
        try:
            session = super().load_session(rater, study)
            self._cache[key] = session
        except _Offline:
            session = self._cache.get(key)
        if session is not None and (rater, study) in self._positions:
            session = cast(SessionRecord, {**session, "position": self._positions[(rater, study)]})
        return session

    def studies(self) -> list[str]:
        return self._or_unreachable(lambda: super(PostgresRatingStore, self).studies())

    def schema_version(self) -> int:
        return self._or_unreachable(self._version)

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Send what the journal holds if the server answers, then close (idempotent)."""
        if self._journal is not None and self._pg is not None:
            try:
                self._drain()
            except NeurosynthError:
                pass  # kept in the journal for the next time
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._pg is not None:
            try:
                self._pg.close()
            except Exception:  # closing a dead connection
                pass
            self._pg = None

    def __repr__(self) -> str:
        return f"RatingStore({self.path!r})"


def _item(prepared: _Prepared, created_at: str) -> dict[str, Any]:
    rater, case, condition, score, study, values = prepared
    return {
        "rater": rater,
        "case": case,
        "condition": condition,
        "score": score,
        "study": study,
        "values": values,
        "created_at": created_at,
    }


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return text.strip()


#: Namespace of the rating ids given to rows of files from before schema version 2.
_LEGACY_UID = uuid.UUID("0b6c4f7e-5d1a-4c0e-9a51-6e6575726f73")


def copy_ratings(source: RatingStore, target: RatingStore) -> tuple[int, int]:
    """Copy studies, sessions and every rating (history in order) from ``source`` to ``target``.

    Ratings keep their client ids (rows from before schema version 2 get one
    derived from their row id and time, the same on every run), so copying again
    adds only what is new. All ratings go in one transaction. Returns
    ``(copied, already there)``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with RatingStore(folder / "a.sqlite") as a:
    ...     _ = a.record("dr-a", "c1", "acquired", 3, study="s"); _ = a.record("dr-a", "c1", "acquired", 4, study="s")
    >>> with RatingStore(folder / "a.sqlite", read_only=True) as a, RatingStore(folder / "b.sqlite") as b:
    ...     copy_ratings(a, b), copy_ratings(a, b), [(r["score"], r["is_current"]) for r in b.ratings(history=True)]
    ((2, 0), (0, 2), [(3, 0), (4, 1)])
    """
    from .ratings import EXTRA_FIELDS

    try:
        for study in source._query("SELECT id, definition FROM studies ORDER BY id"):
            definition = json.loads(study["definition"]) if study["definition"] else None
            target.register_study(study["id"], definition)
        for session in source._query("SELECT rater, study, seed, item_order, position FROM sessions"):
            order = json.loads(session["item_order"])
            target.create_session(session["rater"], session["study"], int(session["seed"]), order)
            target.set_position(session["rater"], session["study"], int(session["position"]))
        rows = source.ratings(history=True)
        known = {r["uid"] for r in target.ratings(history=True)}
        batch: list[tuple[str, str, _Prepared]] = []
        for row in rows:
            uid = row["uid"] or uuid.uuid5(_LEGACY_UID, f"{row['id']}|{row['created_at']}").hex
            if uid in known:
                continue
            values = {k: row[k] for k in EXTRA_FIELDS}  # type: ignore[literal-required]
            prepared = (row["rater"], row["case_id"], row["condition"], int(row["score"]), row["study"], values)
            batch.append((uid, row["created_at"], prepared))
        target._transaction(
            lambda conn: [target._insert(conn, *p, uid=uid, created_at=at) for uid, at, p in batch], "copy into"
        )
    except _Offline:
        raise NeurosynthError(f"the ratings server {target.path} became unreachable; nothing more was copied") from None
    return len(batch), len(rows) - len(batch)
