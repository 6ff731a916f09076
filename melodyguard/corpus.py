"""The training and benchmark corpus: monophonic melodies exported from music21's bundled corpus.

Conventions
-----------
The export is a versioned SQLite file (``corpus.sqlite``, table ``tunes``) holding, per tune,
its collection, title, split and notes (MIDI pitch, onset and duration in quarter-note beats,
time signatures, pickup length and tempo). Parsing music21's ABC and MusicXML is slow, so this
cache is built once (``scripts/build_corpus.py``), in parallel, resumably.

Split (documented, fixed)
-------------------------
- ``train``: O'Neill's Music of Ireland (1850), Ryan's Mammoth Collection (1883) and the
  sopranos of the Bach chorales -- collections whose licence allows commercial use. A fixed
  5 % of them, chosen by a hash of the tune key, is ``valid`` (used for early checks only).
- ``heldout``: the Essen folk songs (licensed for non-commercial use only: never trained on),
  Aird's Airs and the miscFolk collections. Only evaluation uses them.
- ``heldout``, another style: every voice of Palestrina's masses (``palestrina``, 1,318
  movements of 101 masses, about 6,000 voices; music21 reads them from Humdrum at about 3
  movements/s). Not exported by default: ``scripts/build_corpus.py --collections palestrina``.
  Each voice is one tune; ``Melody.info["work"]`` names its mass, so that an evaluation can keep
  the voices of one mass on one side of a split (they imitate each other and share a chant).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_MIN_NOTES, cache_dir
from .errors import ConfigError
from .fingerprint.melody import Melody, TimeSignature

__all__ = [
    "CORPUS_FORMAT_VERSION",
    "COLLECTIONS",
    "TRAIN_COLLECTIONS",
    "HELDOUT_COLLECTIONS",
    "STYLE_COLLECTIONS",
    "DEFAULT_COLLECTIONS",
    "CorpusTune",
    "default_corpus_path",
    "list_units",
    "build_corpus",
    "load_corpus",
]

CORPUS_FORMAT_VERSION = 2  # v2: bar numbers as printed in the score

#: collection -> (music21 corpus folder or composer, file kind)
COLLECTIONS: dict[str, tuple[str, str]] = {
    "oneills1850": ("oneills1850", "abc"),
    "ryansMammoth": ("ryansMammoth", "abc"),
    "bach": ("bach", "chorale"),
    "essenFolksong": ("essenFolksong", "abc"),
    "airdsAirs": ("airdsAirs", "abc"),
    "miscFolk": ("miscFolk", "abc"),
    "palestrina": ("palestrina", "voices"),
}
TRAIN_COLLECTIONS = ("oneills1850", "ryansMammoth", "bach")
HELDOUT_COLLECTIONS = ("essenFolksong", "airdsAirs", "miscFolk")
#: Held-out collections of another style, exported only on request.
STYLE_COLLECTIONS = ("palestrina",)
#: What ``build_corpus`` exports by default.
DEFAULT_COLLECTIONS = TRAIN_COLLECTIONS + HELDOUT_COLLECTIONS


@dataclass(frozen=True)
class CorpusTune:
    key: str
    collection: str
    title: str
    split: str
    melody: Melody


def default_corpus_path() -> Path:
    return cache_dir() / "corpus" / f"v{CORPUS_FORMAT_VERSION}" / "corpus.sqlite"


def _split_of(key: str, collection: str) -> str:
    if collection in HELDOUT_COLLECTIONS or collection in STYLE_COLLECTIONS:
        return "heldout"
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return "valid" if h % 20 == 0 else "train"


def _corpus_root() -> Path:
    try:
        import music21
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ConfigError(
            "music21 is needed to build the corpus: pip install 'melodyguard[corpus]'"
        ) from exc
    return Path(music21.__file__).parent / "corpus"


def _split_abc(text: str) -> list[str]:
    lines = text.splitlines()
    tunes: list[list[str]] = []
    for line in lines:
        if line.startswith("X:"):
            tunes.append([line])
        elif tunes:
            tunes[-1].append(line)
    return ["\n".join(t) + "\n" for t in tunes]


def list_units(collections: Sequence[str] = DEFAULT_COLLECTIONS) -> list[tuple[str, str, str, str]]:
    """Every file or tune to export, as ``(key, collection, kind, payload)``, in a fixed order.

    The order interleaves collections so that ``--limit N`` samples all of them. A unit of kind
    ``voices`` is one score whose every part becomes a tune (keys ``<unit key>:v<i>``).
    """
    root = _corpus_root()
    per: dict[str, list[tuple[str, str, str, str]]] = {}
    for coll in collections:
        folder, kind = COLLECTIONS[coll]
        units: list[tuple[str, str, str, str]] = []
        if kind == "abc":
            for path in sorted((root / folder).glob("*.abc")):
                for i, tune in enumerate(_split_abc(path.read_text(encoding="latin-1"))):
                    units.append((f"{coll}/{path.name}#{i}", coll, "abc", tune))
        elif kind == "voices":
            for path in sorted((root / folder).glob("*.krn")):
                units.append((f"{coll}/{path.name}", coll, "voices", str(path)))
        else:
            for path in sorted((root / folder).glob("bwv*.mxl")):
                units.append((f"{coll}/{path.name}", coll, "score", str(path)))
        per[coll] = units
    out: list[tuple[str, str, str, str]] = []
    longest = max((len(v) for v in per.values()), default=0)
    for i in range(longest):
        for coll in collections:
            if i < len(per.get(coll, [])):
                out.append(per[coll][i])
    return out


Row = tuple[str, str, str, dict[str, Any] | None, str | None]


def _part_data(part: Any) -> dict[str, Any]:
    """One music21 part's notes (top note of chords), bars as printed, time signatures, pickup
    and tempo, as stored in the cache."""
    pickup = 0.0
    measures = part.getElementsByClass("Measure")
    if len(measures):
        m0 = measures[0]
        try:
            bar = float(m0.barDuration.quarterLength)
        except Exception:
            bar = 0.0
        dur = float(m0.duration.quarterLength)
        if (m0.paddingLeft and m0.paddingLeft > 0) or (m0.number == 0 and 0 < dur < bar):
            pickup = dur
    stripped = part.stripTies()
    flat = stripped.flatten()
    pitches, onsets, durs, bars, bar_starts = [], [], [], [], []

    def take(el, onset: float, bar: int | None, bar_start: float | None) -> None:
        ql = float(el.quarterLength)
        if ql <= 0 or el.duration.isGrace:
            return
        midi = max(p.midi for p in el.pitches) if el.isChord else el.pitch.midi
        pitches.append(int(midi))
        onsets.append(onset)
        durs.append(ql)
        bars.append(bar)
        bar_starts.append(bar_start)

    ms = stripped.getElementsByClass("Measure")
    if len(ms):
        # Bar numbers as printed (a pickup is bar 0), so evidence cites the score's bars.
        for m in ms:
            moff = float(m.offset)
            for el in m.flatten().notes:
                take(el, moff + float(el.offset), int(m.number), moff)
    else:
        for el in flat.notes:
            take(el, float(el.offset), None, None)
    sigs = [
        (float(ts.offset), int(ts.numerator), int(ts.denominator))
        for ts in flat.getElementsByClass("TimeSignature")
    ]
    tempo = 120.0
    for mm in flat.getElementsByClass("MetronomeMark"):
        try:
            q = mm.getQuarterBPM()
            if q:
                tempo = float(q)
                break
        except Exception:
            pass
    return {
        "bars": bars if bars and None not in bars else None,
        "bar_starts": bar_starts if bar_starts and None not in bar_starts else None,
        "pitches": pitches,
        "onsets": onsets,
        "durations": durs,
        "time_signatures": sigs,
        "pickup": pickup,
        "tempo": tempo,
    }


def _ignore_sigint() -> None:
    """Pool initializer: Ctrl-C is the parent's to handle."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _extract(unit: tuple[str, str, str, str]) -> list[Row]:
    """Worker: parse one unit with music21 and return its tunes' notes (or the error)."""
    key, coll, kind, payload = unit
    try:
        import warnings

        from music21 import converter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "abc":
                s = converter.parse(payload, format="abc")
            else:
                s = converter.parse(payload)
        title = ""
        if s.metadata is not None:
            title = s.metadata.title or s.metadata.movementName or ""
        parts = list(s.parts) if hasattr(s, "parts") and len(s.parts) else [s]
        if kind != "voices":  # the soprano of a chorale; the tune of an ABC file
            return [(key, coll, title.strip(), _part_data(parts[0]), None)]
        work = ""
        if s.metadata is not None:
            work = s.metadata.parentTitle or ""
        rows: list[Row] = []
        for i, part in enumerate(parts):
            data = _part_data(part)
            data["work"] = work.strip()
            voice = (getattr(part, "partName", None) or f"voice {i + 1}").strip()
            rows.append((f"{key}:v{i}", coll, f"{work.strip()}: {title.strip()} ({voice})", data, None))
        return rows
    except Exception as exc:
        return [(key, coll, "", None, f"{type(exc).__name__}: {exc}"[:500])]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(
        "CREATE TABLE IF NOT EXISTS tunes (key TEXT PRIMARY KEY, collection TEXT, title TEXT, "
        "split TEXT, n_notes INTEGER, data TEXT, error TEXT)"
    )
    con.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
    row = con.execute("SELECT value FROM meta WHERE name='format_version'").fetchone()
    if row is None:
        con.execute(
            "INSERT INTO meta VALUES ('format_version', ?)", (str(CORPUS_FORMAT_VERSION),)
        )
        con.commit()
    elif int(row[0]) != CORPUS_FORMAT_VERSION:
        raise ConfigError(
            f"{path} is corpus format v{row[0]}; this melodyguard reads v{CORPUS_FORMAT_VERSION}. "
            "Delete it and run scripts/build_corpus.py again."
        )
    return con


def build_corpus(
    path: Path | None = None,
    *,
    collections: Sequence[str] = DEFAULT_COLLECTIONS,
    limit: int | None = None,
    jobs: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Export (or finish exporting) the corpus cache. Returns counts and timing.

    Tunes already in the cache are skipped, so an interrupted run resumes where it stopped.
    """
    from multiprocessing import TimeoutError as mp_TimeoutError
    from multiprocessing import get_context

    from tqdm import tqdm

    from ._interrupt import sigint_as_flag

    path = path or default_corpus_path()
    con = _connect(path)
    units = list_units(collections)
    if limit is not None:
        units = units[:limit]
    # A voices unit is done when any of its voices (keys "<unit>:v<i>") is stored.
    done = {r[0] for r in con.execute("SELECT key FROM tunes")}
    done |= {k.rsplit(":v", 1)[0] for k in done if ":v" in k}
    todo = [u for u in units if u[0] not in done]
    t0 = time.perf_counter()
    n_ok = n_err = 0
    batch: list[tuple[Any, ...]] = []

    def store() -> None:
        con.executemany("INSERT OR REPLACE INTO tunes VALUES (?,?,?,?,?,?,?)", batch)
        con.commit()
        batch.clear()

    try:
        if todo:
            ctx = get_context("fork") if hasattr(os, "fork") else get_context()
            # Ctrl-C only sets a flag while the pool runs (the workers ignore it): the loop
            # stops between results, keeps what was parsed and ends the pool, and further
            # Ctrl-Cs cannot break that shutdown (see ``_interrupt``).
            with sigint_as_flag() as interrupted, ctx.Pool(max(1, jobs), initializer=_ignore_sigint) as pool:
                # chunksize 1: an iterator whose next() takes a timeout (larger chunks give a generator)
                it = pool.imap_unordered(_extract, todo, chunksize=1)
                bar = tqdm(total=len(todo), desc="corpus", unit="file", disable=not progress)
                try:
                    for _ in range(len(todo)):  # one result per unit
                        while True:
                            if interrupted.is_set():
                                raise KeyboardInterrupt
                            try:
                                rows = it.next(timeout=0.2)
                                break
                            except mp_TimeoutError:
                                continue
                        bar.update(1)
                        for key, coll, title, data, err in rows:
                            n = len(data["pitches"]) if data else 0
                            batch.append(
                                (key, coll, title, _split_of(key, coll), n, json.dumps(data) if data else None, err)
                            )
                            n_ok += err is None
                            n_err += err is not None
                        if len(batch) >= 100:
                            store()
                finally:  # interrupted too: what was parsed stays, and a re-run resumes after it
                    bar.close()
                    if batch:
                        store()
    finally:
        con.close()
    return {
        "path": str(path),
        "units": len(units),
        "reused": len(units) - len(todo),
        "parsed": n_ok,
        "failed": n_err,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def load_corpus(
    path: Path | None = None,
    *,
    splits: Iterable[str] | None = None,
    collections: Iterable[str] | None = None,
    min_notes: int = DEFAULT_MIN_NOTES,
) -> list[CorpusTune]:
    """Load exported tunes as :class:`Melody` objects (sorted by key)."""
    path = path or default_corpus_path()
    if not Path(path).is_file():
        raise ConfigError(f"no corpus cache at {path}; run scripts/build_corpus.py first")
    con = _connect(Path(path))
    q = "SELECT key, collection, title, split, data FROM tunes WHERE error IS NULL AND n_notes >= ?"
    args: list[Any] = [min_notes]
    if splits is not None:
        s = list(splits)
        q += f" AND split IN ({','.join('?' * len(s))})"
        args += s
    if collections is not None:
        c = list(collections)
        q += f" AND collection IN ({','.join('?' * len(c))})"
        args += c
    q += " ORDER BY key"
    out = []
    for key, coll, title, split, data in con.execute(q, args):
        d = json.loads(data)
        mel = Melody.from_notes(
            d["pitches"], d["onsets"], d["durations"],
            tempo_bpm=d.get("tempo") or 120.0,
            time_signatures=[TimeSignature(*t) for t in d["time_signatures"]],
            bar_offset_beats=d.get("pickup", 0.0),
            bars=d.get("bars"),
            bar_starts=d.get("bar_starts"),
            info={"key": key, "collection": coll, "title": title, **({"work": d["work"]} if d.get("work") else {})},
        )
        if len(mel) >= min_notes:
            out.append(CorpusTune(key, coll, title, split, mel))
    con.close()
    return out
