"""One way to open the project's SQLite files: WAL journal, foreign keys, a busy timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["connect", "ThreadConnections"]


def connect(path: str | Path, *, timeout: float = 60.0, **kwargs: Any) -> sqlite3.Connection:
    """Open ``path`` in WAL mode.

    Switching a new database to WAL needs a moment of exclusive access, and SQLite answers
    "database is locked" at once (without waiting for the busy timeout) when another process
    is doing the same -- e.g. several server workers starting together on a fresh catalogue.
    That step is retried until ``timeout``.
    """
    con = sqlite3.connect(path, timeout=timeout, **kwargs)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                con.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    con.execute("PRAGMA foreign_keys=ON")
    con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return con


class ThreadConnections:
    """One connection per thread to one SQLite file (connections are not shared across threads)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = connect(self.path, timeout=self.timeout)
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
