"""The :class:`Melody` type: one monophonic line with positions in beats, seconds and bars.

Conventions
-----------
- Pitches are MIDI note numbers (60 = middle C).
- A *beat* is a quarter note, as in MIDI ticks / resolution and music21 quarter lengths.
- Bars are numbered from 1 at the first full bar; notes of a pickup (anacrusis) are in bar 0.
- ``beats_in_bar`` is the position inside the bar, in beats, from 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DEFAULT_TEMPO_BPM
from ..errors import InvalidInputError

__all__ = ["Melody", "TimeSignature", "bar_positions"]


@dataclass(frozen=True)
class TimeSignature:
    """A time signature in force from ``beat`` on (quarter-note beats)."""

    beat: float
    numerator: int
    denominator: int

    @property
    def bar_beats(self) -> float:
        """Length of one bar in quarter-note beats."""
        return self.numerator * 4.0 / self.denominator


def _frozen(a: Any, dtype: Any) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True).reshape(-1)
    arr.setflags(write=False)
    return arr


def bar_positions(
    onsets_beats: np.ndarray,
    *,
    time_signatures: Sequence[TimeSignature] = (),
    bar_offset_beats: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Bar number and position-in-bar for each onset.

    Parameters
    ----------
    onsets_beats : np.ndarray, shape (n,)
        Note onsets in quarter-note beats.
    time_signatures : sequence of TimeSignature
        Changes in force; 4/4 from beat 0 when empty.
    bar_offset_beats : float
        Where bar 1 starts (the length of a pickup). Earlier notes are in bar 0.

    Returns
    -------
    bars : np.ndarray of int, shape (n,)
    beats_in_bar : np.ndarray of float, shape (n,)
    """
    onsets = np.asarray(onsets_beats, dtype=np.float64)
    sigs = sorted(time_signatures, key=lambda t: t.beat)
    if not sigs or sigs[0].beat > 1e-6:
        sigs = [TimeSignature(0.0, 4, 4)] + sigs  # 4/4 until the first signature
    # Bar lines: walk from the first bar line, changing bar length where a signature takes over.
    end = float(onsets.max(initial=0.0)) + 1.0
    lines = [bar_offset_beats]
    pos = bar_offset_beats
    guard = 0
    while pos <= end and guard < 1_000_000:
        cur = sigs[0]
        for s in sigs:
            if s.beat <= pos + 1e-6:
                cur = s
        step = max(cur.bar_beats, 1e-3)
        nxt = pos + step
        # A signature change inside a bar starts a new bar at the change.
        for s in sigs:
            if pos + 1e-6 < s.beat < nxt - 1e-6:
                nxt = s.beat
                break
        lines.append(nxt)
        pos = nxt
        guard += 1
    lines_arr = np.asarray(lines)
    idx = np.searchsorted(lines_arr, onsets + 1e-6, side="right")  # 0 = before bar 1
    bars = idx.astype(np.int64)
    starts = np.where(idx > 0, lines_arr[np.maximum(idx - 1, 0)], 0.0)
    beats_in_bar = np.where(idx > 0, onsets - starts, onsets)
    return bars, np.round(beats_in_bar, 6)


@dataclass(frozen=True, eq=False)
class Melody:
    """An immutable monophonic melody.

    All arrays have shape ``(n_notes,)`` and are read-only. Notes are sorted by onset and do not
    overlap (a note ends no later than the next one starts).
    """

    pitches: np.ndarray
    onsets_beats: np.ndarray
    durations_beats: np.ndarray
    onsets_seconds: np.ndarray
    durations_seconds: np.ndarray
    bars: np.ndarray
    beats_in_bar: np.ndarray
    time_signatures: tuple[TimeSignature, ...] = ()
    #: Free-form provenance: file name, chosen track and why, collection, title.
    info: dict[str, Any] = field(default_factory=dict)
    #: False for audio without a beat grid: then beats are seconds × 2 and bars are nominal.
    has_beats: bool = True

    def __len__(self) -> int:
        return int(self.pitches.shape[0])

    @property
    def duration_beats(self) -> float:
        if len(self) == 0:
            return 0.0
        return float(self.onsets_beats[-1] + self.durations_beats[-1] - self.onsets_beats[0])

    @property
    def duration_seconds(self) -> float:
        if len(self) == 0:
            return 0.0
        return float(self.onsets_seconds[-1] + self.durations_seconds[-1] - self.onsets_seconds[0])

    @classmethod
    def from_notes(
        cls,
        pitches: Sequence[int] | np.ndarray,
        onsets_beats: Sequence[float] | np.ndarray,
        durations_beats: Sequence[float] | np.ndarray,
        *,
        onsets_seconds: Sequence[float] | np.ndarray | None = None,
        durations_seconds: Sequence[float] | np.ndarray | None = None,
        tempo_bpm: float = DEFAULT_TEMPO_BPM,
        time_signatures: Sequence[TimeSignature] = (),
        bar_offset_beats: float = 0.0,
        info: dict[str, Any] | None = None,
        has_beats: bool = True,
        bars: Sequence[int] | np.ndarray | None = None,
        bar_starts: Sequence[float] | np.ndarray | None = None,
    ) -> Melody:
        """Build a melody from note lists; seconds come from ``tempo_bpm`` when not given.

        ``bars`` and ``bar_starts`` (beat where each note's bar starts), when given, are the bar
        numbers as printed in a score and replace the ones computed from the time signatures.

        Notes are sorted by onset; where two share an onset the highest pitch is kept (skyline),
        and a note that overlaps the next is cut where the next starts.
        """
        p = np.asarray(pitches, dtype=np.int64).reshape(-1)
        ob = np.asarray(onsets_beats, dtype=np.float64).reshape(-1)
        db = np.asarray(durations_beats, dtype=np.float64).reshape(-1)
        if not (p.shape == ob.shape == db.shape):
            raise InvalidInputError(
                f"pitches, onsets and durations must have one length each; got "
                f"{p.shape[0]}, {ob.shape[0]}, {db.shape[0]}"
            )
        if p.size and (p.min() < 0 or p.max() > 127):
            raise InvalidInputError(f"pitches must be MIDI numbers 0..127; got {p.min()}..{p.max()}")
        if not (np.all(np.isfinite(ob)) and np.all(np.isfinite(db))):
            raise InvalidInputError("onsets and durations must be finite numbers")
        if tempo_bpm <= 0:
            raise InvalidInputError(f"tempo_bpm must be > 0; got {tempo_bpm}")
        spb = 60.0 / tempo_bpm
        if onsets_seconds is None:
            os_ = ob * spb
        else:
            os_ = np.asarray(onsets_seconds, dtype=np.float64).reshape(-1)
        if durations_seconds is None:
            ds = db * spb
        else:
            ds = np.asarray(durations_seconds, dtype=np.float64).reshape(-1)
        # Sort by onset, highest pitch first among equal onsets, then keep one note per onset.
        given_bars = bars is not None and bar_starts is not None and len(bars) == p.size == len(bar_starts)
        gb = np.asarray(bars if given_bars else np.zeros(p.size), dtype=np.int64).reshape(-1)
        gs = np.asarray(bar_starts if given_bars else np.zeros(p.size), dtype=np.float64).reshape(-1)
        order = np.lexsort((-p, ob))
        p, ob, db, os_, ds, gb, gs = p[order], ob[order], db[order], os_[order], ds[order], gb[order], gs[order]
        if p.size:
            keep = np.ones(p.size, dtype=bool)
            keep[1:] = np.abs(np.diff(ob)) > 1e-6
            p, ob, db, os_, ds, gb, gs = p[keep], ob[keep], db[keep], os_[keep], ds[keep], gb[keep], gs[keep]
            # Cut overlaps so the line is monophonic.
            db[:-1] = np.minimum(db[:-1], np.diff(ob))
            ds[:-1] = np.minimum(ds[:-1], np.maximum(np.diff(os_), 0.0))
            db = np.maximum(db, 1e-3)
            ds = np.maximum(ds, 1e-4)
        sigs = tuple(sorted(time_signatures, key=lambda t: t.beat))
        if given_bars:
            bars_arr, bib = gb, np.round(ob - gs, 6)
        else:
            bars_arr, bib = bar_positions(ob, time_signatures=sigs, bar_offset_beats=bar_offset_beats)
        return cls(
            pitches=_frozen(p, np.int64),
            onsets_beats=_frozen(ob, np.float64),
            durations_beats=_frozen(db, np.float64),
            onsets_seconds=_frozen(os_, np.float64),
            durations_seconds=_frozen(ds, np.float64),
            bars=_frozen(bars_arr, np.int64),
            beats_in_bar=_frozen(bib, np.float64),
            time_signatures=sigs,
            info=dict(info or {}),
            has_beats=has_beats,
        )

    def slice(self, start: int, stop: int) -> Melody:
        """Notes ``start:stop`` as a new melody, keeping their positions."""
        return Melody(
            pitches=_frozen(self.pitches[start:stop], np.int64),
            onsets_beats=_frozen(self.onsets_beats[start:stop], np.float64),
            durations_beats=_frozen(self.durations_beats[start:stop], np.float64),
            onsets_seconds=_frozen(self.onsets_seconds[start:stop], np.float64),
            durations_seconds=_frozen(self.durations_seconds[start:stop], np.float64),
            bars=_frozen(self.bars[start:stop], np.int64),
            beats_in_bar=_frozen(self.beats_in_bar[start:stop], np.float64),
            time_signatures=self.time_signatures,
            info=dict(self.info),
            has_beats=self.has_beats,
        )

    def notes(self) -> list[dict[str, Any]]:
        """One dict per note, for JSON output."""
        return [
            {
                "pitch": int(self.pitches[i]),
                "onset_beats": round(float(self.onsets_beats[i]), 4),
                "duration_beats": round(float(self.durations_beats[i]), 4),
                "onset_seconds": round(float(self.onsets_seconds[i]), 4),
                "duration_seconds": round(float(self.durations_seconds[i]), 4),
                "bar": int(self.bars[i]),
                "beat_in_bar": round(float(self.beats_in_bar[i]), 4),
            }
            for i in range(len(self))
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_notes": len(self),
            "duration_beats": round(self.duration_beats, 4),
            "duration_seconds": round(self.duration_seconds, 4),
            "time_signatures": [
                {"beat": t.beat, "numerator": t.numerator, "denominator": t.denominator}
                for t in self.time_signatures
            ],
            "info": self.info,
            "notes": self.notes(),
        }


def collapse_repeats(melody: Melody, *, max_gap_beats: float = 0.5) -> tuple[Melody, np.ndarray]:
    """The melody with each run of one repeated pitch joined into a single note.

    This is how audio transcription hears legato repeated notes (a choir or a bowed string
    re-sounding the same pitch shows no pitch change for the tracker to see), so catalogue works
    are also indexed in this form for audio queries. Notes are joined when they share a pitch
    and the rest between them is at most ``max_gap_beats``. Returns the collapsed melody and,
    for each of its notes, the index of the first original note it covers.
    """
    p = np.asarray(melody.pitches)
    n = len(p)
    if n == 0:
        return melody, np.zeros(0, np.int64)
    ob, db = np.asarray(melody.onsets_beats), np.asarray(melody.durations_beats)
    gap = ob[1:] - (ob[:-1] + db[:-1])
    join = np.zeros(n, bool)
    join[1:] = (p[1:] == p[:-1]) & (gap <= max_gap_beats)
    first = np.flatnonzero(~join)
    last = np.append(first[1:] - 1, n - 1)
    os_, ds = np.asarray(melody.onsets_seconds), np.asarray(melody.durations_seconds)
    out = Melody(
        pitches=_frozen(p[first], np.int64),
        onsets_beats=_frozen(ob[first], np.float64),
        durations_beats=_frozen(ob[last] + db[last] - ob[first], np.float64),
        onsets_seconds=_frozen(os_[first], np.float64),
        durations_seconds=_frozen(os_[last] + ds[last] - os_[first], np.float64),
        bars=_frozen(np.asarray(melody.bars)[first], np.int64),
        beats_in_bar=_frozen(np.asarray(melody.beats_in_bar)[first], np.float64),
        time_signatures=melody.time_signatures,
        info=dict(melody.info),
        has_beats=melody.has_beats,
    )
    return out, first.astype(np.int64)
