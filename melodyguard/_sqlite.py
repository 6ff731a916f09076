"""One way to open the project's SQLite files: WAL journal, foreign keys, a busy timeout."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["connect"]


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
