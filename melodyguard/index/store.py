"""The catalogue: a directory whose SQLite file is the source of truth.

Layout of a catalogue directory::

    catalogue.sqlite        works, melodies, windows and their vectors (WAL mode)
    index/index.faiss       FAISS index derived from the windows table
    index/index.manifest.json
    index/figures.npz       3-note figures of every work (detection's second candidate source)
    index/figures.manifest.json

Every ``add`` is one SQLite transaction (work, melody, windows, vectors and the generation
counter together), so a ``kill -9`` leaves either the whole work or nothing; running ``add``
again completes the job. Readers (``check``) run while a writer adds, thanks to WAL. The FAISS
index is brought up to date on open: vectors added since it was saved are appended, and any
removal (or an index that fails its checksum, or one the catalogue has outgrown: see
``VectorIndex.outgrown``) makes it rebuild from SQLite.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .._sqlite import connect
from ..config import catalogue_dir, work_cache_size
from ..errors import (
    CatalogueError,
    ConfigError,
    DuplicateWorkError,
    EmptyCatalogueError,
    IndexVersionError,
    InvalidInputError,
    WorkNotFoundError,
)
from ..fingerprint.melody import Melody, TimeSignature, collapse_repeats
from ..fingerprint.windows import WindowConfig, Windows, window_melody
from .figures import FigureIndex
from .vectors import VectorIndex, resolve_kind

__all__ = ["CATALOGUE_FORMAT_VERSION", "DEFAULT_HOP", "Work", "Catalogue", "WindowTable", "require_works"]

CATALOGUE_FORMAT_VERSION = 2
#: Window views: 0 the melody as written; 1 its repeat-collapsed form (runs of one repeated
#: pitch joined, as audio transcription hears legato repeats), searched by audio queries only.
VIEW_NOTES, VIEW_COLLAPSED = 0, 1
#: Catalogue windows start every DEFAULT_HOP notes (queries use every note).
DEFAULT_HOP = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS works (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT, title TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL UNIQUE, added_at TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}',
    private INTEGER NOT NULL DEFAULT 0, source_name TEXT NOT NULL DEFAULT '', n_notes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS works_owner ON works(owner);
CREATE TABLE IF NOT EXISTS melodies (work_id INTEGER PRIMARY KEY REFERENCES works(id) ON DELETE CASCADE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    vid INTEGER PRIMARY KEY AUTOINCREMENT,
    work_id INTEGER NOT NULL REFERENCES works(id) ON DELETE CASCADE,
    start INTEGER NOT NULL, n_notes INTEGER NOT NULL, ref_pitch INTEGER NOT NULL,
    median_ioi REAL NOT NULL, vector BLOB NOT NULL, view INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS windows_work ON windows(work_id);
"""


@dataclass(frozen=True)
class Work:
    id: int
    external_id: str | None
    title: str
    owner: str
    sha256: str
    added_at: str
    metadata: dict[str, Any] = field(default_factory=dict)
    private: bool = False
    source_name: str = ""
    n_notes: int = 0

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "external_id": self.external_id, "title": self.title, "owner": self.owner}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, eq=False)
class WindowTable:
    """Per-vector metadata, aligned by row; ``vid`` sorted ascending."""

    vid: np.ndarray
    work_id: np.ndarray
    start: np.ndarray
    n_notes: np.ndarray
    ref_pitch: np.ndarray
    median_ioi: np.ndarray
    #: 0: windows of the melody as written; 1: of its repeat-collapsed form (``start`` counts
    #: collapsed notes there).
    view: np.ndarray

    def rows(self, vids: np.ndarray) -> np.ndarray:
        """Row of each vid (-1 where unknown)."""
        dense = self._dense_rows
        if dense is not None:  # a lookup table, when the vids are not too sparse
            vids = np.asarray(vids)
            known = (vids >= 0) & (vids < dense.size)
            return np.where(known, dense[np.where(known, vids, 0)], -1)
        pos = np.searchsorted(self.vid, vids)
        pos = np.clip(pos, 0, max(len(self.vid) - 1, 0))
        ok = (len(self.vid) > 0) & (self.vid[pos] == vids) if len(self.vid) else np.zeros(vids.shape, bool)
        return np.where(ok, pos, -1)

    @cached_property
    def _dense_rows(self) -> np.ndarray | None:
        """Row by vid (-1 for vids not in the table), or None when the largest vid is more than
        four times the row count (many works removed): then :meth:`rows` searches ``vid``."""
        n = len(self.vid)
        if n == 0 or self.vid[-1] >= 4 * n + 1024:
            return None
        dense = np.full(int(self.vid[-1]) + 1, -1, np.int64)
        dense[self.vid] = np.arange(n, dtype=np.int64)
        return dense


def _melody_json(m: Melody) -> str:
    return json.dumps({
        "p": m.pitches.tolist(), "ob": m.onsets_beats.tolist(), "db": m.durations_beats.tolist(),
        "os": m.onsets_seconds.tolist(), "ds": m.durations_seconds.tolist(),
        "ts": [[t.beat, t.numerator, t.denominator] for t in m.time_signatures],
        "bars": m.bars.tolist(), "bib": m.beats_in_bar.tolist(), "has_beats": m.has_beats,
    })


def _melody_from_json(s: str, info: dict[str, Any]) -> Melody:
    d = json.loads(s)
    from ..fingerprint.melody import _frozen

    return Melody(
        _frozen(d["p"], np.int64), _frozen(d["ob"], np.float64), _frozen(d["db"], np.float64),
        _frozen(d["os"], np.float64), _frozen(d["ds"], np.float64), _frozen(d["bars"], np.int64),
        _frozen(d["bib"], np.float64), tuple(TimeSignature(*t) for t in d["ts"]), info, bool(d.get("has_beats", True)),
    )


def _lease_record(raw: str) -> dict[str, Any] | None:
    """A stored lease, or None when it cannot be read (then it is taken over)."""
    try:
        rec = json.loads(raw)
        rec["until"] = float(rec["until"])
        rec["holder"] = str(rec["holder"])
    except (ValueError, KeyError, TypeError):
        return None
    return rec if isinstance(rec.get("note", {}), dict) else None


def require_works(catalogue: Any) -> int:
    """The number of works in a catalogue (open, or its directory, without loading any model).

    Raises EmptyCatalogueError when there are none: a check against nothing would call every
    file ``clear``, and a release gate must not take a misconfigured path for a pass.
    """
    if hasattr(catalogue, "count"):  # an open catalogue
        n, where = catalogue.count(), getattr(catalogue, "path", "")
    else:
        where = Path(catalogue) if catalogue else catalogue_dir()
        db = where / "catalogue.sqlite"
        n = 0
        if db.is_file():  # never create one here
            con = connect(db, timeout=60.0)
            try:
                n = int(con.execute("SELECT COUNT(*) FROM works").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
            finally:
                con.close()
    if n == 0:
        raise EmptyCatalogueError(
            "the catalogue has no works to compare with; register works first (melodyguard add, or "
            "POST /v1/works)", path=str(where))
    return n


def _invalidate_index(con: sqlite3.Connection) -> None:
    """Mark every saved or open FAISS index stale (rebuilt from SQLite on next use), in the
    caller's transaction: after vectors were removed or replaced, appending cannot catch up."""
    con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name='generation'")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('last_removal', (SELECT value FROM meta WHERE name='generation'))")


def _add_view_column(con: sqlite3.Connection) -> None:
    """Format 1 had no ``view`` column on windows; add it (idempotent)."""
    cols = [r[1] for r in con.execute("PRAGMA table_info(windows)").fetchall()]
    if "view" not in cols:
        con.execute("ALTER TABLE windows ADD COLUMN view INTEGER NOT NULL DEFAULT 0")


class Catalogue:
    """A catalogue directory. Thread-safe: writes are serialised, reads run concurrently.

    Parameters
    ----------
    path : Path, optional
        The directory (default ``$MELODYGUARD_CATALOGUE`` or the documented default).
    encoder : Encoder, optional
        The encoder used to embed added works (default: the shipped weights).
    index_kind : str, optional
        ``auto``, ``flat``, ``ivf`` or ``hnsw``. Kept in the catalogue: a later open without it
        uses the stored setting (``auto`` for a new catalogue).
    cache_works : int, optional
        Works kept parsed and prepared for verification, most recently used first (default
        ``$MELODYGUARD_WORK_CACHE`` or 16,384; about 18 kB per work). 0 keeps none.
    reembed : bool, optional
        If the catalogue was built with other weights (another fingerprint), embed every work's
        stored melody again with ``encoder`` instead of refusing to open: one transaction, so an
        interrupted run leaves the catalogue as it was. Works, ids and metadata are kept;
        :attr:`reembedded` then says what changed. ``progress(done, total)`` is called per
        batch of works.
    """

    def __init__(self, path: str | Path | None = None, *, encoder: Any = None, index_kind: str | None = None,
                 hop: int = DEFAULT_HOP, persist_index: bool = True, cache_works: int | None = None,
                 reembed: bool = False, progress: Callable[[int, int], None] | None = None) -> None:
        from ..model.encoder import load_encoder

        if cache_works is not None and cache_works < 0:
            raise ConfigError(f"cache_works must be 0 or more; got {cache_works}")
        self.path = Path(path) if path else catalogue_dir()
        self.path.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder or load_encoder()
        if index_kind is not None:
            resolve_kind(index_kind, 0)  # refuse an unknown kind before touching the catalogue
        self.index_kind = index_kind or "auto"
        self._index_kind_arg = index_kind
        self.hop = hop
        self.persist_index = persist_index
        self._write_lock = threading.Lock()
        self._index_lock = threading.RLock()
        self._local = threading.local()
        self._index: VectorIndex | None = None
        self._figures = FigureIndex()
        self._figures_gen = -1
        self._table: WindowTable | None = None
        self._total_notes = 0
        self._cache_lock = threading.Lock()
        self.cache_works = work_cache_size() if cache_works is None else int(cache_works)
        self._melodies: OrderedDict[int, Melody] = OrderedDict()
        self._derived: OrderedDict[int, dict[Any, Any]] = OrderedDict()  # work id -> {key: value}
        #: set when opening re-embedded the works: {"works", "windows", "from", "to", "seconds"}
        self.reembedded: dict[str, Any] | None = None
        self._con().executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        with self._tx() as con:
            self._check_meta(con, reembed=reembed, progress=progress)

    # ------------------------------------------------------------------ sqlite
    @property
    def db_path(self) -> Path:
        return self.path / "catalogue.sqlite"

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect(self.db_path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._local.con = con
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            con.execute("COMMIT")

    def _check_meta(self, con: sqlite3.Connection, *, reembed: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> None:
        want = {
            "format_version": str(CATALOGUE_FORMAT_VERSION),
            "encoder": self.encoder.fingerprint,
            "dim": str(self.encoder.dim),
            "window_length": str(self.encoder.config.window_length),
            "hop": str(self.hop),
        }
        have = dict(con.execute("SELECT name, value FROM meta").fetchall())
        if not have:
            con.executemany("INSERT INTO meta VALUES (?, ?)",
                            list(want.items()) + [("generation", "0"), ("index_kind", self.index_kind)])
            return
        legacy = getattr(self.encoder, "legacy_ids", ())
        if have.get("encoder") in legacy:
            # Built when the encoder was named by its weights file's checksum: same weights, so
            # the same vectors. Rename; the FAISS index is rebuilt from SQLite on first use.
            con.execute("UPDATE meta SET value=? WHERE name='encoder'", (want["encoder"],))
            have["encoder"] = want["encoder"]
        other = [k for k in ("encoder", "dim", "window_length") if have.get(k) != want[k]]
        if reembed and other and have.get("format_version") in ("1", want["format_version"]):
            self.hop = int(have.get("hop", self.hop))
            self._reembed(con, have, want, progress)
            have.update({k: want[k] for k in ("format_version", "encoder", "dim", "window_length")})
        if have.get("format_version") == "1" and have.get("encoder") == want["encoder"]:
            self._migrate_v1(con)
            have["format_version"] = want["format_version"]
        for k in ("format_version", "encoder", "dim", "window_length"):
            if have.get(k) != want[k]:
                hint = ("Use the weights it was built with, or embed its works again with these "
                        "(`melodyguard reembed`, or Catalogue(..., reembed=True))."
                        if k != "format_version" else "Upgrade melodyguard to open it.")
                raise IndexVersionError(
                    f"catalogue {self.path} has {k}={have.get(k)}; the loaded encoder needs {want[k]}. {hint}"
                )
        self.hop = int(have.get("hop", self.hop))
        if self._index_kind_arg is None:
            self.index_kind = have.get("index_kind", "auto")
        elif have.get("index_kind") != self.index_kind:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('index_kind', ?)", (self.index_kind,))

    def _migrate_v1(self, con: sqlite3.Connection) -> None:
        """Format 1 had no repeat-collapsed windows: add the column and index every work's
        collapsed form, in the caller's transaction."""
        _add_view_column(con)
        rows = con.execute("SELECT work_id, data FROM melodies ORDER BY work_id").fetchall()
        for b in range(0, len(rows), 500):
            chunk = rows[b:b + 500]
            mels = [_melody_from_json(d, {}) for _, d in chunk]
            for (wid, _), w, vec in zip(chunk, *self._collapsed_windows(mels)):
                self._insert_windows(con, int(wid), w, vec, VIEW_COLLAPSED)
        con.execute("UPDATE meta SET value=? WHERE name='format_version'", (str(CATALOGUE_FORMAT_VERSION),))
        _invalidate_index(con)

    def _reembed(self, con: sqlite3.Connection, have: dict[str, str], want: dict[str, str],
                 progress: Callable[[int, int], None] | None) -> None:
        """Replace every window and vector with ones of the loaded encoder, from the stored
        melodies, in the caller's transaction (an error or interrupt rolls all of it back)."""
        t0 = time.perf_counter()
        _add_view_column(con)
        con.execute("DELETE FROM windows")
        total = int(con.execute("SELECT COUNT(*) FROM melodies").fetchone()[0])
        cfg = WindowConfig(length=self.encoder.config.window_length, hop=self.hop)
        done, n_windows, last = 0, 0, -1
        while True:  # batches by id, so that a large catalogue is never held in memory at once
            rows = con.execute("SELECT work_id, data FROM melodies WHERE work_id > ? ORDER BY work_id LIMIT 500",
                               (last,)).fetchall()
            if not rows:
                break
            mels = [_melody_from_json(d, {}) for _, d in rows]
            wins = [window_melody(m, config=cfg) for m in mels]
            vec = self.encoder.embed_tokens(np.concatenate([w.pitch for w in wins]),
                                            np.concatenate([w.rhythm for w in wins]))
            bounds = np.cumsum([0] + [len(w) for w in wins])
            cwins, cvecs = self._collapsed_windows(mels)
            for (wid, _), w, a, b, cw, cv in zip(rows, wins, bounds[:-1], bounds[1:], cwins, cvecs):
                self._insert_windows(con, int(wid), w, vec[a:b], VIEW_NOTES)
                self._insert_windows(con, int(wid), cw, cv, VIEW_COLLAPSED)
                n_windows += len(w) + len(cw)
            last = int(rows[-1][0])
            done += len(rows)
            if progress is not None:
                progress(done, total)
        for k in ("format_version", "encoder", "dim", "window_length"):
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, want[k]))
        _invalidate_index(con)
        self.reembedded = {"works": done, "windows": n_windows, "from": have.get("encoder"), "to": want["encoder"],
                           "seconds": round(time.perf_counter() - t0, 1)}

    def _collapsed_windows(self, melodies: Sequence[Melody]) -> tuple[list[Windows], list[np.ndarray]]:
        """Windows (and their vectors) of each melody's repeat-collapsed form that span at least
        one joined run; empty for melodies without repeats."""
        cfg = WindowConfig(length=self.encoder.config.window_length, hop=self.hop)
        out: list[Windows] = []
        for m in melodies:
            c, first = collapse_repeats(m)
            if len(c) == len(m) or len(c) < cfg.min_notes:
                out.append(Windows.empty(cfg.length))
                continue
            w = window_melody(c, config=cfg)
            group = np.diff(np.append(first, len(m)))  # original notes per collapsed note
            joined = np.concatenate([[0], np.cumsum(group > 1)])
            spans = joined[np.minimum(w.start + w.n_notes, len(c))] - joined[w.start]
            out.append(w.take(spans > 0))
        n = sum(len(w) for w in out)
        if n == 0:
            return out, [np.zeros((0, self.encoder.dim), np.float32) for _ in out]
        vec = self.encoder.embed_tokens(np.concatenate([w.pitch for w in out]), np.concatenate([w.rhythm for w in out]))
        bounds = np.cumsum([0] + [len(w) for w in out])
        return out, [vec[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def _insert_windows(con: sqlite3.Connection, wid: int, w: Windows, vec: np.ndarray, view: int) -> None:
        con.executemany(
            "INSERT INTO windows (work_id, start, n_notes, ref_pitch, median_ioi, vector, view) VALUES (?,?,?,?,?,?,?)",
            [(wid, int(w.start[i]), int(w.n_notes[i]), int(w.ref_pitch[i]), float(w.median_ioi_beats[i]),
              vec[i].tobytes(), view) for i in range(len(w))],
        )

    #: meta entries other modules may keep in the catalogue (the rest belong to the store)
    EXTRA_META = frozenset({"null_law", "law_fit_lease"})

    def _extra_name(self, name: str) -> str:
        if name not in self.EXTRA_META:
            raise CatalogueError(f"{name!r} is not a meta entry modules may keep; those are {sorted(self.EXTRA_META)}")
        return name

    def get_meta(self, name: str) -> str | None:
        """A meta entry kept by another module (see :attr:`EXTRA_META`), or None."""
        row = self._con().execute("SELECT value FROM meta WHERE name=?", (self._extra_name(name),)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self._write_lock, self._tx() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (self._extra_name(name), str(value)))

    def delete_meta(self, name: str) -> bool:
        with self._write_lock, self._tx() as con:
            return con.execute("DELETE FROM meta WHERE name=?", (self._extra_name(name),)).rowcount > 0

    def claim_lease(self, name: str, holder: str, *, seconds: float,
                    note: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Take, or renew, the lease ``name`` (a meta entry, see :attr:`EXTRA_META`) for
        ``holder`` for ``seconds``. Returns None when ``holder`` now holds it, else the record of
        the holder whose lease has not run out (``holder``, ``pid``, ``host``, ``since``,
        ``until`` and its ``note``). One transaction, so of several processes one wins; a lease
        whose process died runs out. ``note`` (e.g. progress) is kept for others to read."""
        if not seconds > 0:
            raise ConfigError(f"a lease lasts a positive number of seconds; got {seconds!r}")
        key = self._extra_name(name)
        now = time.time()
        with self._write_lock, self._tx() as con:
            row = con.execute("SELECT value FROM meta WHERE name=?", (key,)).fetchone()
            held = _lease_record(row[0]) if row else None
            if held is not None and held["holder"] != holder and held["until"] > now:
                return held
            since = held.get("since", now) if held is not None and held["holder"] == holder else now
            rec = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(), "since": since,
                   "until": now + float(seconds), "note": note or {}}
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(rec, sort_keys=True)))
        return None

    def lease(self, name: str) -> dict[str, Any] | None:
        """The record of the lease ``name`` while it lasts (see :meth:`claim_lease`), or None."""
        raw = self.get_meta(name)
        held = _lease_record(raw) if raw else None
        return held if held is not None and held["until"] > time.time() else None

    def release_lease(self, name: str, holder: str) -> bool:
        """Give up the lease ``name`` if ``holder`` holds it; True if it did."""
        key = self._extra_name(name)
        with self._write_lock, self._tx() as con:
            row = con.execute("SELECT value FROM meta WHERE name=?", (key,)).fetchone()
            held = _lease_record(row[0]) if row else None
            if held is None or held["holder"] != holder:
                return False
            con.execute("DELETE FROM meta WHERE name=?", (key,))
            return True

    def generation(self) -> int:
        row = self._con().execute("SELECT value FROM meta WHERE name='generation'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ works
    def _row_to_work(self, r: Sequence[Any]) -> Work:
        return Work(int(r[0]), r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}"), bool(r[7]), r[8], int(r[9]))

    _COLS = "id, external_id, title, owner, sha256, added_at, metadata, private, source_name, n_notes"

    def find_sha(self, sha256: str) -> Work | None:
        r = self._con().execute(f"SELECT {self._COLS} FROM works WHERE sha256=?", (sha256,)).fetchone()
        return self._row_to_work(r) if r else None

    def get(self, work_id: int) -> Work:
        r = self._con().execute(f"SELECT {self._COLS} FROM works WHERE id=?", (int(work_id),)).fetchone()
        if r is None:
            raise WorkNotFoundError(f"no work with id {work_id}")
        return self._row_to_work(r)

    def works(self, *, owner: str | None = None, limit: int | None = None, offset: int = 0) -> list[Work]:
        q = f"SELECT {self._COLS} FROM works"
        args: list[Any] = []
        if owner is not None:
            q += " WHERE owner=?"
            args.append(owner)
        q += " ORDER BY id"
        if limit is not None:
            q += " LIMIT ? OFFSET ?"
            args += [int(limit), int(offset)]
        return [self._row_to_work(r) for r in self._con().execute(q, args)]

    def count(self, *, owner: str | None = None) -> int:
        if owner is None:
            return int(self._con().execute("SELECT COUNT(*) FROM works").fetchone()[0])
        return int(self._con().execute("SELECT COUNT(*) FROM works WHERE owner=?", (owner,)).fetchone()[0])

    def melody(self, work_id: int) -> Melody:
        """A work's melody (immutable; the :attr:`cache_works` most recent are kept parsed, and
        forgotten whenever the catalogue's generation moves, see :meth:`index`)."""
        wid = int(work_id)
        with self._cache_lock:
            m = self._melodies.get(wid)
            if m is not None:
                self._melodies.move_to_end(wid)
                return m
        r = self._con().execute("SELECT data FROM melodies WHERE work_id=?", (wid,)).fetchone()
        if r is None:
            raise WorkNotFoundError(f"no work with id {work_id}")
        m = _melody_from_json(r[0], {"work_id": wid})
        with self._cache_lock:
            self._melodies[wid] = m
            while len(self._melodies) > self.cache_works:
                self._melodies.popitem(last=False)
        return m

    def prefetch(self, work_ids: Sequence[int]) -> None:
        """Parse the melodies of those works not kept yet, with one query instead of one each
        (detection calls this for its candidates before verifying them). Does nothing when they
        would not all fit in the cache: each would then be read again when used."""
        with self._cache_lock:  # (a set minus the cache's keys would copy every key)
            todo = sorted({w for w in map(int, work_ids) if w not in self._melodies})
        if not todo or len(todo) > self.cache_works:
            return
        parsed = list(self._read_melodies(todo))
        with self._cache_lock:
            for w, m in parsed:
                self._melodies[w] = m
            while len(self._melodies) > self.cache_works:
                self._melodies.popitem(last=False)

    def _read_melodies(self, work_ids: Sequence[int]) -> Iterator[tuple[int, Melody]]:
        """The melodies of those works (unknown ids skipped), parsed from SQLite 500 at a time."""
        con = self._con()
        for b in range(0, len(work_ids), 500):
            chunk = list(work_ids[b:b + 500])
            rows = con.execute(
                f"SELECT work_id, data FROM melodies WHERE work_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for w, d in rows:
                yield int(w), _melody_from_json(d, {"work_id": int(w)})

    def derived(self, work_id: int, key: Any, make: Callable[[Melody], Any]) -> Any:
        """``make(melody)`` of a work's melody, computed once and kept like the parsed melodies
        (everything derived from the :attr:`cache_works` most recently used works; forgotten when
        the work is removed or the catalogue's generation moves). ``key`` names what ``make``
        computes: detection keeps each reference's alignment inputs here, one per view and mode."""
        w = int(work_id)
        with self._cache_lock:
            kept = self._derived.get(w)
            if kept is not None and key in kept:
                self._derived.move_to_end(w)
                return kept[key]
        value = make(self.melody(w))
        with self._cache_lock:
            self._derived.setdefault(w, {})[key] = value
            self._derived.move_to_end(w)
            while len(self._derived) > self.cache_works:
                self._derived.popitem(last=False)
        return value

    def add(
        self,
        source: str | Path | bytes,
        *,
        title: str | None = None,
        owner: str = "",
        external_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        private: bool = False,
        filename: str | None = None,
    ) -> Work:
        """Register a file (MIDI or audio). Raises :class:`DuplicateWorkError` for a known file."""
        from ..fingerprint import extract_melody
        from ..fingerprint.midi import read_source

        data, name = read_source(source)
        name = filename or name
        sha = hashlib.sha256(data).hexdigest()
        existing = self.find_sha(sha)
        if existing:
            raise DuplicateWorkError(f"{name} is already registered as work {existing.id} ('{existing.title}')",
                                     existing_id=existing.id)
        melody = extract_melody(data, filename=name)
        if title is None:
            title = Path(name).stem if name != "<bytes>" else ""
        return self.add_melody(melody, sha256=sha, title=title, owner=owner, external_id=external_id,
                               metadata=metadata, private=private, source_name=Path(name).name)

    def add_melody(
        self,
        melody: Melody,
        *,
        sha256: str,
        title: str = "",
        owner: str = "",
        external_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        private: bool = False,
        source_name: str = "",
    ) -> Work:
        """Register an already-extracted melody under a content hash."""
        return self.add_melodies([{
            "melody": melody, "sha256": sha256, "title": title, "owner": owner, "external_id": external_id,
            "metadata": metadata, "private": private, "source_name": source_name,
        }])[0]

    def add_melodies(self, items: Sequence[dict[str, Any]], *, skip_duplicates: bool = False) -> list[Work]:
        """Register many melodies in one transaction (each item: the keyword arguments of
        :meth:`add_melody`). Embedding is batched, so this is the fast path for bulk imports.

        With ``skip_duplicates`` a known sha256 is skipped instead of raising.
        """
        cfg = WindowConfig(length=self.encoder.config.window_length, hop=self.hop)
        wins = []
        for it in items:
            m = it["melody"]
            if not isinstance(m, Melody):
                raise InvalidInputError(f"expected a Melody; got {type(m).__name__}")
            title, owner, ext = it.get("title") or "", it.get("owner") or "", it.get("external_id")
            if len(title) > 500 or (ext and len(ext) > 200) or len(owner) > 200:
                raise InvalidInputError("title is limited to 500 characters, owner and external_id to 200")
            wins.append(window_melody(m, config=cfg))
        if not wins:
            return []
        vectors = self.encoder.embed_tokens(np.concatenate([w.pitch for w in wins]), np.concatenate([w.rhythm for w in wins]))
        cwins, cvecs = self._collapsed_windows([it["melody"] for it in items])
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        ids: list[int] = []
        with self._write_lock, self._tx() as con:
            pos = 0
            for it, w, cw, cv in zip(items, wins, cwins, cvecs):
                vec = vectors[pos: pos + len(w)]
                pos += len(w)
                row = con.execute("SELECT id FROM works WHERE sha256=?", (it["sha256"],)).fetchone()
                if row:
                    if skip_duplicates:
                        continue
                    raise DuplicateWorkError(f"already registered as work {row[0]}", existing_id=int(row[0]))
                cur = con.execute(
                    "INSERT INTO works (external_id, title, owner, sha256, added_at, metadata, private, source_name, n_notes)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (it.get("external_id"), it.get("title") or "", it.get("owner") or "", it["sha256"], now,
                     json.dumps(it.get("metadata") or {}), int(bool(it.get("private"))), it.get("source_name") or "",
                     len(it["melody"])),
                )
                wid = int(cur.lastrowid or 0)
                ids.append(wid)
                con.execute("INSERT INTO melodies VALUES (?, ?)", (wid, _melody_json(it["melody"])))
                self._insert_windows(con, wid, w, vec, VIEW_NOTES)
                self._insert_windows(con, wid, cw, cv, VIEW_COLLAPSED)
            con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name='generation'")
        return [self.get(i) for i in ids]

    def remove(self, work_id: int) -> Work:
        """Delete a work with its melody, windows and vectors."""
        work = self.get(work_id)
        with self._write_lock, self._tx() as con:
            con.execute("DELETE FROM windows WHERE work_id=?", (work.id,))
            con.execute("DELETE FROM melodies WHERE work_id=?", (work.id,))
            con.execute("DELETE FROM works WHERE id=?", (work.id,))
            with self._cache_lock:
                self._melodies.pop(work.id, None)
                self._derived.pop(work.id, None)
            _invalidate_index(con)
        return work

    # ------------------------------------------------------------------ index
    #: rows fetched from SQLite at a time when loading windows (bounds the Python objects alive)
    _CHUNK = 131_072

    def _load_table(self) -> WindowTable:
        """Every window's metadata (no vectors), in vid order, fetched in chunks."""
        cur = self._con().execute(
            "SELECT vid, work_id, start, n_notes, ref_pitch, median_ioi, view FROM windows ORDER BY vid")
        parts = []
        while rows := cur.fetchmany(self._CHUNK):
            parts.append(np.asarray(rows, dtype=np.float64))
        m = np.concatenate(parts) if parts else np.zeros((0, 7))
        i = [m[:, c].astype(np.int64) for c in (0, 1, 2, 3, 4, 6)]
        return WindowTable(i[0], i[1], i[2], i[3], i[4], m[:, 5].copy(), i[5])

    def _load_vectors(self, *, after_vid: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, vids)`` of the windows (those with vid > ``after_vid``), in vid order."""
        where, args = ("WHERE vid > ?", (int(after_vid),)) if after_vid is not None else ("", ())
        cur = self._con().execute(f"SELECT vid, vector FROM windows {where} ORDER BY vid", args)
        d = self.encoder.dim
        vecs, vids = [], []
        while rows := cur.fetchmany(self._CHUNK):
            vids.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
            vecs.append(np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), d))
        if not vids:
            return np.zeros((0, d), np.float32), np.zeros(0, np.int64)
        return np.concatenate(vecs), np.concatenate(vids)

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction: the reads inside see one state of SQLite (WAL), whatever writers do."""
        con = self._con()
        con.execute("BEGIN")
        try:
            yield
        finally:
            con.execute("COMMIT")

    def _load_windows(self) -> tuple[np.ndarray, WindowTable]:
        """Every window's vector and metadata, from one snapshot of SQLite."""
        with self._snapshot():
            return self._load_vectors()[0], self._load_table()

    def index(self) -> tuple[VectorIndex, WindowTable]:
        """The FAISS index and window table, brought up to date with SQLite."""
        with self._index_lock:
            gen = self.generation()
            if self._index is not None and self._index.manifest.generation == gen:
                assert self._table is not None
                return self._index, self._table
            with self._cache_lock:  # another process may have removed works
                self._melodies.clear()
                self._derived.clear()
            folder = self.path / "index"
            con = self._con()
            meta = dict(con.execute("SELECT name, value FROM meta WHERE name IN ('encoder', 'last_removal')").fetchall())
            built_with = meta.get("encoder")
            if built_with != self.encoder.fingerprint:  # another process re-embedded it since we opened it
                raise IndexVersionError(
                    f"catalogue {self.path} was embedded again with other weights (fingerprint {built_with}) "
                    f"after this process opened it with {self.encoder.fingerprint}; restart with those weights")
            last_removal = int(meta.get("last_removal", 0))
            idx = self._index
            if idx is None:
                try:
                    idx = VectorIndex.load(folder, encoder=self.encoder.fingerprint, dim=self.encoder.dim)
                except IndexVersionError:
                    idx = None  # missing, stale format or corrupt: rebuild from SQLite below
            # One snapshot: the table, and only the vectors the saved index lacks (all of them
            # when it must be rebuilt), so that opening a large catalogue reads no vector twice.
            with self._snapshot():
                table = self._load_table()
                if idx is not None and idx.manifest.generation >= last_removal and idx.ntotal == int(
                    (table.vid <= idx.manifest.max_vid).sum()
                ) and idx.manifest.generation <= gen and not idx.outgrown(len(table.vid), kind=self.index_kind):
                    vec, vids = self._load_vectors(after_vid=idx.manifest.max_vid)
                    idx.add(vec, vids, generation=gen)
                    changed = len(vids) > 0
                else:
                    changed = True
                    vec, vids = self._load_vectors()
                    idx = VectorIndex.build(vec, vids, kind=self.index_kind, encoder=self.encoder.fingerprint,
                                            generation=gen)
            self._index, self._table = idx, table
            self._total_notes = int(self._con().execute("SELECT COALESCE(SUM(n_notes),0) FROM works").fetchone()[0])
            if self.persist_index and changed:  # an index read from disk unchanged is not rewritten
                self._save_index(folder)
            return idx, table

    def _save_index(self, folder: Path) -> None:
        assert self._index is not None
        index = self._index
        self._locked_save(folder, lambda: index.save(folder))

    @staticmethod
    def _locked_save(folder: Path, save: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "lock", "w") as lf:
            try:
                fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another process is saving; it will be brought up to date next open
            save()

    def rebuild_index(self, *, kind: str | None = None) -> VectorIndex:
        """Rebuild the FAISS index from SQLite (as ``kind``, which the catalogue then keeps)."""
        if kind:
            resolve_kind(kind, 0)
            with self._write_lock, self._tx() as con:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('index_kind', ?)", (kind,))
        with self._index_lock:
            if kind:
                self.index_kind = kind
            self._index = None
            vec, table = self._load_windows()
            self._index = VectorIndex.build(vec, table.vid, kind=self.index_kind, encoder=self.encoder.fingerprint,
                                            generation=self.generation())
            self._table = table
            if self.persist_index:
                self._save_index(self.path / "index")
            return self._index

    @property
    def total_notes(self) -> int:
        self.index()
        return self._total_notes

    def figures(self) -> FigureIndex:
        """The index of the works' 3-note figures, brought up to date with SQLite: loaded from
        ``index/figures.npz`` on first use, then only works added since are parsed (see
        :mod:`.figures`)."""
        with self._index_lock:
            gen = self.generation()
            if self._figures_gen == gen:
                return self._figures
            folder = self.path / "index"
            loaded = False
            if self._figures_gen == -1:
                saved = FigureIndex.load(folder)
                if saved is not None:
                    self._figures, loaded = saved, True
            con = self._con()
            ids = {int(r[0]) for r in con.execute("SELECT id FROM works")}
            have = self._figures.work_ids()
            gone, new = have - ids, sorted(ids - have)
            self._figures.remove(gone)
            self._figures.add(self._read_melodies(new))
            self._figures_gen = gen
            if self.persist_index and (gone or new or not loaded):
                self._locked_save(folder, lambda: self._figures.save(folder))
            return self._figures

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
