"""Edits a plagiarist or an AI generator makes to a melody, in one place.

Training uses them to make the latent space invariant; benchmarks use the same functions to
build queries. Every function is pure: note arrays in, new note arrays out, with an explicit
``numpy.random.Generator``.

Conventions
-----------
A note list is ``(pitches, onsets, durations)``: MIDI numbers and quarter-note beats, sorted
by onset, monophonic.

Levels (:data:`LEVELS`)
-----------------------
``transpose``  a transposition of 1..6 semitones up or down;
``tempo``      every time value scaled by 0.5..2 (log-uniform, at least 10 % away from 1);
``light``      transpose + tempo + ornaments (10 % of notes get a neighbour or passing note);
``medium``     light + a few changed pitches (8 %) + rhythm changes (15 %: dotted or straightened pairs);
``heavy``      medium with higher rates + octave jumps (5 %) + dropped notes (8 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Notes",
    "LEVELS",
    "transpose",
    "scale_tempo",
    "add_ornaments",
    "change_pitches",
    "change_rhythm",
    "octave_jumps",
    "drop_notes",
    "augment",
]

Notes = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Level:
    transpose: bool = False
    tempo: bool = False
    ornaments: float = 0.0
    pitch_changes: float = 0.0
    rhythm_changes: float = 0.0
    octave_jumps: float = 0.0
    drops: float = 0.0


LEVELS: dict[str, Level] = {
    "none": Level(),
    "transpose": Level(transpose=True),
    "tempo": Level(tempo=True),
    "light": Level(transpose=True, tempo=True, ornaments=0.10),
    "medium": Level(transpose=True, tempo=True, ornaments=0.10, pitch_changes=0.08, rhythm_changes=0.15),
    "heavy": Level(
        transpose=True, tempo=True, ornaments=0.15, pitch_changes=0.12, rhythm_changes=0.2,
        octave_jumps=0.05, drops=0.08,
    ),
}


def _arr(notes: Notes) -> Notes:
    p, o, d = notes
    return (np.asarray(p, dtype=np.int64).copy(), np.asarray(o, dtype=np.float64).copy(),
            np.asarray(d, dtype=np.float64).copy())


def transpose(notes: Notes, semitones: int) -> Notes:
    p, o, d = _arr(notes)
    return np.clip(p + int(semitones), 0, 127), o, d


def scale_tempo(notes: Notes, factor: float) -> Notes:
    """Scale every onset and duration by ``factor`` (2 = twice as slow in beats)."""
    p, o, d = _arr(notes)
    return p, o * factor, d * factor


def add_ornaments(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    """Split a share ``rate`` of notes: a short neighbour or passing note takes part of the time."""
    p, o, d = _arr(notes)
    P, O, D = [], [], []
    n = p.size
    for i in range(n):
        if rng.random() < rate and d[i] > 0:
            frac = rng.choice([0.25, 0.5])
            if i + 1 < n and rng.random() < 0.5 and abs(p[i + 1] - p[i]) >= 2:
                extra = int(round((p[i] + p[i + 1]) / 2))  # passing note, after the note
                P += [p[i], extra]
                O += [o[i], o[i] + d[i] * (1 - frac)]
                D += [d[i] * (1 - frac), d[i] * frac]
            else:
                extra = int(p[i] + rng.choice([-2, -1, 1, 2]))  # neighbour, before the note
                P += [extra, p[i]]
                O += [o[i], o[i] + d[i] * frac]
                D += [d[i] * frac, d[i] * (1 - frac)]
        else:
            P.append(p[i])
            O.append(o[i])
            D.append(d[i])
    return np.clip(np.asarray(P, dtype=np.int64), 0, 127), np.asarray(O), np.asarray(D)


def change_pitches(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    """Move a share ``rate`` of notes by 1 or 2 semitones."""
    p, o, d = _arr(notes)
    mask = rng.random(p.size) < rate
    p[mask] += rng.choice([-2, -1, 1, 2], size=int(mask.sum()))
    return np.clip(p, 0, 127), o, d


def change_rhythm(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    """Dot equal pairs (1:1 -> 3:1) and straighten dotted pairs (3:1 -> 1:1), at ``rate`` per pair."""
    p, o, d = _arr(notes)
    i = 0
    while i + 1 < p.size:
        ioi1 = o[i + 1] - o[i]
        ioi2 = (o[i + 2] - o[i + 1]) if i + 2 < p.size else d[i + 1]
        total = ioi1 + ioi2
        if rng.random() < rate and total > 0:
            if abs(ioi1 - ioi2) < 1e-6:
                new1 = total * (0.75 if rng.random() < 0.8 else 0.25)
            else:
                new1 = total * 0.5
            o[i + 1] = o[i] + new1
            d[i] = min(d[i], new1)
            d[i + 1] = min(d[i + 1], total - new1) if i + 2 < p.size else total - new1
            i += 2
        else:
            i += 1
    return p, o, d


def octave_jumps(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    p, o, d = _arr(notes)
    mask = rng.random(p.size) < rate
    p[mask] += rng.choice([-12, 12], size=int(mask.sum()))
    return np.clip(p, 0, 127), o, d


def drop_notes(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    """Remove a share ``rate`` of notes; the previous note is held through the gap."""
    p, o, d = _arr(notes)
    if p.size < 3:
        return p, o, d
    keep = rng.random(p.size) >= rate
    keep[0] = True
    idx = np.flatnonzero(keep)
    ends = np.append(o[idx[1:]], o[-1] + d[-1])
    return p[idx], o[idx], ends - o[idx]


def augment(notes: Notes, level: str, *, rng: np.random.Generator) -> Notes:
    """Apply the edits of one level (see module docstring)."""
    try:
        lv = LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown augmentation level {level!r}; choose from {sorted(LEVELS)}") from None
    out = _arr(notes)
    if lv.ornaments:
        out = add_ornaments(out, lv.ornaments, rng=rng)
    if lv.rhythm_changes:
        out = change_rhythm(out, lv.rhythm_changes, rng=rng)
    if lv.pitch_changes:
        out = change_pitches(out, lv.pitch_changes, rng=rng)
    if lv.octave_jumps:
        out = octave_jumps(out, lv.octave_jumps, rng=rng)
    if lv.drops:
        out = drop_notes(out, lv.drops, rng=rng)
    if lv.transpose:
        out = transpose(out, int(rng.choice([-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6])))
    if lv.tempo:
        f = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        if abs(np.log(f)) < np.log(1.1):
            f = 1.1 if f >= 1 else 1 / 1.1
        out = scale_tempo(out, f)
    return out
