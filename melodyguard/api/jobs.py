"""Audit jobs of the HTTP API: stored in SQLite, run by a background thread in each server
process, resumed after a restart.

A job's files are saved under ``<jobs dir>/<job id>/<n>.bin`` (names made by the server; the
client's file name is kept only as text). Each result is committed as soon as it exists, so a
restart loses at most the file being checked. Workers claim a job with a lease (renewed after
every file), so with several server processes each job runs in one of them at a time, and a
job whose process died is taken over when its lease runs out.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._sqlite import ThreadConnections
from ..errors import InvalidInputError, LawFitBusyError, MelodyGuardError
from ..evidence import short_query_note

__all__ = ["JobStore", "JobWorker", "LawRefitter", "results_csv"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, role TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, total INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit_files (
    job_id TEXT NOT NULL REFERENCES audit_jobs(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    name TEXT NOT NULL, verdict TEXT, result TEXT, PRIMARY KEY (job_id, idx)
);
"""
LEASE_SECONDS = 60.0
#: the server's log (``melodyguard serve`` prints it with uvicorn's own lines)
log = logging.getLogger("melodyguard.api")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class JobStore:
    def __init__(self, db: str | Path, folder: str | Path) -> None:
        self.db = Path(db)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._con = ThreadConnections(self.db).get
        with self._con() as con:
            con.executescript(_SCHEMA)
            cols = {r[1] for r in con.execute("PRAGMA table_info(audit_jobs)")}
            if "tracks" not in cols:  # job stores made before audits took the tracks setting
                con.execute("ALTER TABLE audit_jobs ADD COLUMN tracks TEXT NOT NULL DEFAULT 'melody'")

    def create(self, files: list[tuple[str, bytes]], *, key_id: str, role: str, owner: str,
               tracks: str = "all") -> dict[str, Any]:
        """Save the files and queue a job (``tracks``: as for a check); returns its status."""
        if not files:
            raise InvalidInputError("an audit needs at least one file")
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        try:
            for i, (_, data) in enumerate(files):
                (folder / f"{i:05d}.bin").write_bytes(data)
            with self._con() as con:
                now = _now()
                con.execute("INSERT INTO audit_jobs (id, key_id, role, owner, status, total, created_at, updated_at,"
                            " tracks) VALUES (?,?,?,?,?,?,?,?,?)",
                            (job_id, key_id, role, owner, "queued", len(files), now, now, tracks))
                con.executemany("INSERT INTO audit_files (job_id, idx, name) VALUES (?,?,?)",
                                [(job_id, i, name[:200]) for i, (name, _) in enumerate(files)])
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.status(job_id)

    def job(self, job_id: str) -> dict[str, Any] | None:
        r = self._con().execute(
            "SELECT id, key_id, role, owner, status, total, created_at, updated_at, tracks FROM audit_jobs WHERE id=?",
            (job_id,)).fetchone()
        if r is None:
            return None
        return dict(zip(("id", "key_id", "role", "owner", "status", "total", "created_at", "updated_at", "tracks"), r))

    def status(self, job_id: str) -> dict[str, Any]:
        j = self.job(job_id)
        if j is None:
            raise KeyError(job_id)
        counts = dict(self._con().execute(
            "SELECT COALESCE(verdict, 'pending'), COUNT(*) FROM audit_files WHERE job_id=? GROUP BY 1", (job_id,)
        ).fetchall())
        done = j["total"] - counts.pop("pending", 0)
        return {"id": j["id"], "status": j["status"], "total": j["total"], "done": done,
                "progress": round(done / max(j["total"], 1), 4), "verdicts": counts,
                "created_at": j["created_at"], "updated_at": j["updated_at"]}

    def results(self, job_id: str) -> Iterator[dict[str, Any]]:
        for idx, name, _verdict, result in self._con().execute(
            "SELECT idx, name, verdict, result FROM audit_files WHERE job_id=? AND verdict IS NOT NULL ORDER BY idx",
            (job_id,),
        ):
            rep = json.loads(result)
            rep["file"] = {"index": idx, "name": name}
            yield rep

    def pending_jobs(self) -> int:
        return int(self._con().execute(
            "SELECT COUNT(*) FROM audit_jobs WHERE status IN ('queued', 'running')").fetchone()[0])

    # ---------------------------------------------------------------- worker side
    def claim(self, worker: str) -> dict[str, Any] | None:
        """Take a queued job, or a running one whose lease ran out (its process died)."""
        now = time.time()
        con = self._con()
        with con:
            con.execute("BEGIN IMMEDIATE")
            r = con.execute("SELECT id FROM audit_jobs WHERE status IN ('queued', 'running') AND lease_until < ?"
                            " ORDER BY created_at LIMIT 1", (now,)).fetchone()
            if r is None:
                return None
            con.execute("UPDATE audit_jobs SET status='running', lease_until=?, updated_at=? WHERE id=?",
                        (now + LEASE_SECONDS, _now(), r[0]))
        return self.job(r[0])

    def next_file(self, job_id: str) -> tuple[int, Path, str] | None:
        """The next unchecked file of a job: (index, saved path, client's name)."""
        r = self._con().execute("SELECT idx, name FROM audit_files WHERE job_id=? AND verdict IS NULL ORDER BY idx"
                                " LIMIT 1", (job_id,)).fetchone()
        return None if r is None else (int(r[0]), self.folder / job_id / f"{int(r[0]):05d}.bin", str(r[1]))

    def save_result(self, job_id: str, idx: int, report: dict[str, Any]) -> None:
        with self._con() as con:
            con.execute("UPDATE audit_files SET verdict=?, result=? WHERE job_id=? AND idx=?",
                        (report.get("verdict", "error"), json.dumps(report), job_id, idx))
            con.execute("UPDATE audit_jobs SET lease_until=?, updated_at=? WHERE id=?",
                        (time.time() + LEASE_SECONDS, _now(), job_id))

    def finish(self, job_id: str) -> None:
        with self._con() as con:
            con.execute("UPDATE audit_jobs SET status='done', lease_until=0, updated_at=? WHERE id=?", (_now(), job_id))
        shutil.rmtree(self.folder / job_id, ignore_errors=True)

    def release(self, job_id: str) -> None:
        with self._con() as con:
            con.execute("UPDATE audit_jobs SET lease_until=0 WHERE id=?", (job_id,))


def results_csv(reports: Iterator[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "file", "verdict", "work_id", "title", "owner", "evalue", "query_bars", "reference_bars",
                "transposition", "tempo_ratio", "error", "too_short_to_judge"])
    for rep in reports:
        m = rep.get("matches", [None])[0] if rep.get("matches") else None
        short = "yes" if short_query_note(rep) is not None else ""
        if m:
            s = m["segments"][0]
            w.writerow([rep["file"]["index"], rep["file"]["name"], rep["verdict"], m["work"]["id"], m["work"]["title"],
                        m["work"]["owner"], m["score"]["evalue"], "-".join(map(str, s["query"]["bars"])),
                        "-".join(map(str, s["reference"]["bars"])), m["transposition_semitones"], m["tempo_ratio"], "",
                        short])
        else:
            w.writerow([rep["file"]["index"], rep["file"]["name"], rep["verdict"], "", "", "", "", "", "", "", "",
                        rep.get("error", ""), short])
    return buf.getvalue()


class JobWorker:
    """A daemon thread that runs queued jobs one file at a time with ``check(path, name, job)``."""

    def __init__(self, store: JobStore, check: Callable[[Path, str, dict[str, Any]], dict[str, Any]], *,
                 poll_seconds: float = 0.5) -> None:
        self.store = store
        self.check = check
        self.poll = poll_seconds
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="melodyguard-audits", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim(self.name)
            except sqlite3.OperationalError:
                job = None  # the database is busy; try again
            if job is None:
                self._stop.wait(self.poll)
                continue
            self._run_job(job)

    def _run_job(self, job: dict[str, Any]) -> None:
        log.info("audit %s: running (%s files)", job["id"], job.get("total", "?"))
        while not self._stop.is_set():
            nxt = self.store.next_file(job["id"])
            if nxt is None:
                self.store.finish(job["id"])
                log.info("audit %s: done", job["id"])
                return
            idx, path, name = nxt
            try:
                rep = self.check(path, name, job)
            except MelodyGuardError as exc:
                rep = {"verdict": "error", "error": f"{type(exc).__name__}: {exc}"}
            except Exception as exc:  # one bad file never stops a job
                rep = {"verdict": "error", "error": f"unexpected {type(exc).__name__}: {exc}"}
            self.store.save_result(job["id"], idx, rep)
        self.store.release(job["id"])  # stopping: another process (or the restart) resumes it
        log.info("audit %s: released at shutdown; another worker or the restart resumes it", job["id"])


class _Stopped(Exception):
    """Raised from a fit's progress callback to abandon it when the server stops."""


class LawRefitter:
    """Refits the catalogue's chance law in a background thread after registrations and
    deletions, when :func:`~melodyguard.decoys.law_needs_fit` says so (at 100 works, then each
    time the catalogue doubles or halves): the rule ``melodyguard add`` follows. One fit at a
    time per process, and one per catalogue across processes (the fit's lease, see
    :mod:`melodyguard.decoys`: a worker whose fit finds another under way leaves it to that
    one); checks go on under the law in force until the new one is stored. A fit that fails
    (e.g. a work deleted under it) is recorded and tried again on the next change."""

    def __init__(self, catalogue: Any, fit: Callable[..., Any], needs_fit: Callable[[Any], bool]) -> None:
        self.catalogue = catalogue
        self._fit = fit
        self._needs_fit = needs_fit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress: tuple[int, int] | None = None
        self.last_error: str | None = None
        self.fits = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poke(self) -> bool:
        """Start a fit if none is running and the catalogue needs one; True if one started."""
        with self._lock:
            if self._stop.is_set() or self.running or not self._needs_fit(self.catalogue):
                return False
            self.progress = (0, 0)
            self._thread = threading.Thread(target=self._run, name="melodyguard-law", daemon=True)
            self._thread.start()
            return True

    def status(self) -> dict[str, Any] | None:
        """``{"done", "total"}`` of the fit under way, or None."""
        p = self.progress if self.running else None
        return None if p is None else {"done": p[0], "total": p[1]}

    def _progress(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise _Stopped
        self.progress = (done, total)

    def _run(self) -> None:
        log.info("chance law: refitting in the background (the catalogue has grown or shrunk since the last fit)")
        try:
            law = self._fit(self.catalogue, progress=self._progress)
            self.fits += 1
            self.last_error = None
            info = getattr(law, "info", {})
            log.info("chance law: refitted, E-values x%.3g (%s decoys, %s s)", getattr(law, "factor", float("nan")),
                     info.get("decoys"), info.get("seconds"))
        except _Stopped:
            log.info("chance law: refit abandoned at shutdown; the law in force stays")
        except LawFitBusyError as exc:  # another process is fitting it: its law will do
            log.info("chance law: refit left to the other fit: %s", exc)
        except Exception as exc:  # a failed refit leaves the law in force; the next change retries
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("chance law: refit failed (%s); the law in force stays, the next change retries it",
                        self.last_error)
        finally:
            self.progress = None

    def stop(self, timeout: float = 10.0) -> None:
        """Abandon a fit under way (nothing is stored) and wait for its thread."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
