"""One way to write results as JSON and CSV, with one rule for non-finite numbers.

Every export of the package (``neurosynth evaluate --json/--csv``, the metrics
and region tables of *Compare & Explain*, the reader-study exports and summaries)
goes through :func:`write_json` / :func:`write_csv` (or :func:`jsonable` /
:func:`dumps_json` when printing), so all of them agree:

* **NaN, +Inf and -Inf** are ``null`` in JSON (Python's ``NaN``/``Infinity`` are not
  JSON and most readers reject them) and an **empty cell** in CSV. So the PSNR of
  two identical images (``inf``) and an undefined statistic (``nan``) are both
  "no number" in a file; keep the Python result when the difference matters.
* numpy scalars become Python numbers, numpy arrays and tuples lists, paths strings;
  anything else JSON cannot hold is written with ``str``.
* In CSV, a list is one cell of space-separated values, ``None`` an empty cell.
* Files are written to a temporary name and renamed, so a failed write never
  leaves half a file; an unwritable path is a :class:`~napari_neurosynth.errors.NeurosynthError`.

Examples
--------
>>> dumps_json({"psnr": float("inf"), "n": np.int64(3), "xyz": np.array([1.0, 2.0])}, indent=None)
'{"psnr": null, "n": 3, "xyz": [1.0, 2.0]}'
>>> csv_cell(float("nan")), csv_cell([1, 2.5]), csv_cell(np.float32(0.5))
('', '1 2.5', 0.5)
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np

from .atomic import atomic_open
from .errors import NeurosynthError

__all__ = ["JSONValue", "csv_cell", "dumps_json", "jsonable", "read_csv_rows", "write_csv", "write_json"]

#: A value :func:`json.dumps` writes as strict JSON.
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"


def jsonable(value: object) -> JSONValue:
    """``value`` as strict-JSON data: non-finite floats -> ``None``, numpy -> Python, tuples -> lists.

    Nested dicts and lists are converted throughout; dict keys become strings.

    Examples
    --------
    >>> jsonable({"a": (1.0, float("nan")), 2: [np.float64(-np.inf), np.bool_(True)]})
    {'a': [1.0, None], '2': [None, True]}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    return str(value)


def dumps_json(value: object, indent: int | None = 2) -> str:
    """``value`` as a strict JSON text (see :func:`jsonable`).

    Examples
    --------
    >>> dumps_json([float("nan"), 1], indent=None)
    '[null, 1]'
    """
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def _atomic_write(path: Path, text: str) -> Path:
    try:
        with atomic_open(path, "w", newline="") as fh:
            fh.write(text)
    except OSError as exc:
        raise NeurosynthError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None
    return path


def write_json(value: object, path: str | os.PathLike[str], indent: int | None = 2) -> Path:
    """Write ``value`` to ``path`` as strict JSON (non-finite numbers as ``null``); return the path.

    Examples
    --------
    >>> import tempfile
    >>> p = write_json({"x": float("inf")}, Path(tempfile.mkdtemp()) / "r.json")
    >>> p.read_text()
    '{\\n  "x": null\\n}\\n'
    """
    return _atomic_write(Path(path), dumps_json(value, indent) + "\n")


def csv_cell(value: object) -> object:
    """One CSV cell: non-finite numbers and ``None`` -> empty, numpy -> Python, lists -> space-separated.

    Examples
    --------
    >>> csv_cell(None), csv_cell(-np.inf), csv_cell(3), csv_cell((0.5, "a"))
    ('', '', 3, '0.5 a')
    """
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(str(csv_cell(v)) for v in value)
    return value


def write_csv(
    rows: Iterable[Mapping[str, object]],
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
) -> int:
    """Write ``rows`` (dicts) to ``path`` as CSV with a header; return the number of rows.

    ``columns`` default to the keys of the rows in first-seen order; keys outside
    ``columns`` are left out and missing ones are empty cells (see :func:`csv_cell`).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "r.csv"
    >>> write_csv([{"a": 1, "b": float("nan")}, {"a": 2, "c": "x"}], p)
    2
    >>> p.read_text().splitlines()
    ['a,b,c', '1,,', '2,,x']
    """
    rows = list(rows)
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: csv_cell(r.get(k)) for k in columns})
    _atomic_write(Path(path), buf.getvalue())
    return len(rows)


def read_csv_rows(
    path: str | os.PathLike[str], required: Iterable[str] = (), *, what: str = "table"
) -> list[dict[str, str]]:
    """Read a CSV file strictly: UTF-8, a header, every row as long as the header.

    The standard library's reader is lenient: a short row gets ``None`` cells, an
    unterminated quote swallows the rest of the file, a stray byte raises deep
    inside a loop. Here each of those is one :class:`NeurosynthError` naming the
    line, raised before any row is used.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file (``utf-8``, with or without a byte-order mark).
    required : iterable of str
        Header columns that must be present.
    what : str
        What the table is, for messages ("ratings table").

    Returns
    -------
    list of dict
        One ``{column: text}`` per data row; blank lines are skipped.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "ok.csv").write_text("rater,score\\nana,4\\n")
    >>> read_csv_rows(folder / "ok.csv", ["rater", "score"])
    [{'rater': 'ana', 'score': '4'}]
    >>> _ = (folder / "short.csv").write_text("rater,score\\nana\\n")
    >>> read_csv_rows(folder / "short.csv")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: short.csv line 2: 1 field(s) where the header has 2; ...
    >>> _ = (folder / "quote.csv").write_text('rater,score\\n"ana,4\\n')
    >>> read_csv_rows(folder / "quote.csv")
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: quote.csv line 2: a quoted cell is never closed; check the quoting
    """
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise NeurosynthError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise NeurosynthError(
            f"{p.name} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the {what} as UTF-8 CSV"
        ) from None
    if "\x00" in text:
        raise NeurosynthError(f"{p.name} is not a text file (it holds NUL bytes); give a UTF-8 CSV {what}")
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise NeurosynthError(f"{p.name} is empty; a {what} needs a header line")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise NeurosynthError(f"{p.name} line 1: column(s) {', '.join(dupes)} appear twice in the header")
        missing = [c for c in required if c not in header]
        if missing:
            raise NeurosynthError(
                f"{p.name} needs a header with at least {', '.join(required)}; missing {', '.join(missing)}"
            )
        rows = []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise NeurosynthError(
                    f"{p.name} line {reader.line_num}: {len(fields)} field(s) where the header has {len(header)}; "
                    "quote cells that contain commas"
                )
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        problem = "a quoted cell is never closed" if "end of data" in str(exc) else str(exc)
        raise NeurosynthError(f"{p.name} line {reader.line_num}: {problem}; check the quoting") from None
    return rows
