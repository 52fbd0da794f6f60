"""Atomic writes and overwrite rules: the one way every writer puts a file on disk.

A writer that opens its destination directly leaves a truncated file behind on a
full disk, a kill or an exception, and it has already destroyed the previous good
file. Every writer here instead writes a temporary file *in the destination's
folder* (so the final rename never crosses a file system), flushes it to disk,
renames it over the destination and then flushes the folder entry. A failure at
any point removes the temporary file and leaves the previous file untouched.

The standard library has the pieces (``os.replace`` is atomic on POSIX and on
Windows within one volume) but no helper that does the fsync dance and keeps the
extension that nibabel and SimpleITK use to pick a format, hence this module.

Examples
--------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> target = folder / "notes.txt"
>>> atomic_write_text(target, "first")
PosixPath('.../notes.txt')
>>> try:
...     with atomic_path(target) as tmp:
...         _ = tmp.write_text("half-writ")
...         raise OSError(28, "No space left on device")
... except OSError:
...     pass
>>> target.read_text()          # the previous file survived
'first'
>>> sorted(p.name for p in folder.iterdir())   # and no partial file is left
['notes.txt']
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import NeurosynthError

__all__ = [
    "atomic_dir",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "fsync_dir",
    "is_partial",
]

_PARTIAL = ".partial-"


def is_partial(path: str | os.PathLike[str]) -> bool:
    """True for a temporary file or folder that an interrupted atomic write left.

    Examples
    --------
    >>> is_partial("/data/.t2.nii.gz.partial-1a2b3c.nii.gz"), is_partial("/data/t2.nii.gz")
    (True, False)
    """
    name = Path(path).name
    return name.startswith(".") and _PARTIAL in name


def _temp_sibling(dest: Path) -> Path:
    # Hidden (leading dot) so globs such as "*.nii.gz" never pick it up, and ending
    # in the destination's own suffixes so format detection by extension still works.
    suffixes = "".join(s for s in dest.suffixes if len(s) <= 8)
    return dest.with_name(f".{dest.name}{_PARTIAL}{secrets.token_hex(4)}{suffixes}")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the OS allows it."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is already durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``dest`` atomically.

    Parameters
    ----------
    dest : str or os.PathLike
        The final file. Its parent folders are created.

    Yields
    ------
    pathlib.Path
        A hidden sibling of ``dest`` with the same suffixes. Write the whole file
        there (with any library). When the block ends without an exception the file
        is fsynced, renamed over ``dest`` and the folder is fsynced; when it raises,
        the temporary file is removed and ``dest`` is left as it was.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "sub" / "vol.nii.gz"
    >>> with atomic_path(dest) as tmp:
    ...     print(tmp.name.endswith(".nii.gz"), tmp.parent == dest.parent)
    ...     _ = tmp.write_bytes(b"x")
    True True
    >>> dest.read_bytes()
    b'x'
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(dest)
    try:
        yield tmp
        if not tmp.exists():
            raise NeurosynthError(f"cannot write {dest.name}: the writer produced no file")
        _fsync_file(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(
    dest: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a file for writing that appears at ``dest`` only when complete.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> with atomic_open(dest, newline="") as fh:
    ...     _ = fh.write("a,b\\n1,2\\n")
    >>> dest.read_text()
    'a,b\\n1,2\\n'
    """
    if "b" in mode:
        encoding = None
    with atomic_path(dest) as tmp, open(tmp, mode, encoding=encoding, newline=newline) as fh:
        yield fh
        fh.flush()


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return the path."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest).expanduser()


def atomic_write_text(dest: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``dest`` atomically and return the path."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(dest).expanduser()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``dest`` when the block succeeds.

    A folder cannot be renamed over a non-empty one, so with ``force`` the old folder
    is first moved aside and removed only after the new one is in place; a failure
    in between puts it back. Without ``force`` an existing ``dest`` is refused.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "bundle"
    >>> with atomic_dir(dest) as tmp:
    ...     _ = (tmp / "card.json").write_text("{}")
    >>> sorted(p.name for p in dest.iterdir())
    ['card.json']
    >>> with atomic_dir(dest) as tmp:
    ...     pass
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: bundle already exists; ... --force ...
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not force:
        raise NeurosynthError(f"{dest.name} already exists; pass --force (force=True) to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}{_PARTIAL}{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}{_PARTIAL}old-{secrets.token_hex(4)}")
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old, dest)
            raise
        fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_path(
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Refuse an output that would silently replace a file, or destroy an input.

    Parameters
    ----------
    dest : str or os.PathLike
        The output the user asked for.
    force : bool
        Allow replacing an existing output (the CLI's ``--force``).
    inputs : iterable of path-like
        The files the command reads. An output equal to one of them is refused even
        with ``force``: writing it would destroy the input before it is used.

    Returns
    -------
    pathlib.Path
        ``dest`` as a path.

    Raises
    ------
    NeurosynthError
        If ``dest`` is one of ``inputs``, or exists and ``force`` is false.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> t1 = pathlib.Path(tempfile.mkdtemp()) / "t1.nii.gz"
    >>> _ = t1.write_bytes(b"")
    >>> check_output_path(t1.with_name("t2.nii.gz"), inputs=[t1]).name
    't2.nii.gz'
    >>> check_output_path(t1)
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: t1.nii.gz already exists; pass --force to replace it
    >>> check_output_path(t1, force=True, inputs=[t1])
    Traceback (most recent call last):
    ...
    napari_neurosynth.errors.NeurosynthError: the output t1.nii.gz is also an input; ...
    """
    dest = Path(dest).expanduser()
    for src in inputs:
        if _same_file(dest, Path(src).expanduser()):
            raise NeurosynthError(
                f"the output {dest.name} is also an input; writing it would destroy the input. Choose another path"
            )
    if dest.exists() and not force:
        raise NeurosynthError(f"{dest.name} already exists; pass --force to replace it")
    return dest
