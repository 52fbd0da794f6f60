"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder.

The server runs as a non-root user (PostgreSQL refuses root): the current user, or,
when the tests run as root (CI), the ``postgres`` or ``nobody`` system user through
``runuser``. It listens on a free local port and its folder is removed afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl (Debian's /usr/lib/postgresql/N/bin or PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One server: ``url(user)``, ``stop(mode)``, ``start()``, ``remove()``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # In memory where there is a tmpfs: initdb, crash recovery and removal stay fast
        # on a busy disk. What the tests crash is the server's processes, not the machine,
        # so durability through the page cache is what they check either way.
        shm = Path("/dev/shm")
        where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="neurosynth-pg-", dir=where))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                os.chown(self.root, entry.pw_uid, entry.pw_gid)
                break
            else:
                raise RuntimeError("running as root and no postgres/nobody user to run PostgreSQL as")
        self.root.chmod(0o755)
        self._run(
            "initdb", "-D", str(self.data), "-U", "admin", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"
        )
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("PostgreSQL did not start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def url(self, user: str = "admin", database: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, user: str = "admin") -> str:
        """Run SQL through psql as ``user`` (stops at the first error); return its output."""
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(user), "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip())
        return result.stdout

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
