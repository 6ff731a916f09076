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

Edits training never sees (:data:`UNSEEN_EDITS`)
------------------------------------------------
Benchmarks also disguise copies in ways the shipped weights were not trained to ignore, to
measure how far the invariance carries beyond the training edits. Each is applied with a
transposition and a tempo change, as ``light`` is (:func:`unseen_edit`):

``mode``      major to minor or minor to major (the key estimated by Krumhansl-Kessler profiles;
              its 3rd, 6th and 7th degrees moved a semitone);
``swing``     every on-beat pair of equal short notes played long-short (2:1);
``split``     lyric adaptation: 20 % of the longer notes split into two repeated notes, and
              10 % of repeated-note pairs merged into one;
``grace``     15 % of notes get a grace note a step away, just before them;
``humanize``  a performance: onsets jittered (sd 0.03 beats), notes held 60-100 % of their
              value, and a slowly wandering tempo (+-8 %), as an unquantized MIDI file has.
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
    "UNSEEN_EDITS",
    "estimate_key",
    "change_mode",
    "swing",
    "split_notes",
    "grace_notes",
    "humanize",
    "unseen_edit",
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


# --- Edits training never sees -------------------------------------------------------------

UNSEEN_EDITS = ("mode", "swing", "split", "grace", "humanize")

# Krumhansl-Kessler key profiles (major, minor), tonic first.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _key_profiles() -> np.ndarray:
    """The 24 key profiles (12 major tonics, then 12 minor), each centred and scaled to unit
    norm, so a dot product with a centred histogram of unit norm is Pearson's correlation."""
    rows = [np.roll(prof, tonic) for prof in (_KK_MAJOR, _KK_MINOR) for tonic in range(12)]
    z = np.asarray(rows) - np.mean(rows, axis=1, keepdims=True)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


_PROFILES = _key_profiles()


def estimate_key(notes: Notes) -> tuple[int, str]:
    """The key a melody is in, ``(tonic pitch class, "major" | "minor")``: the Krumhansl-Kessler
    profile that correlates best with its duration-weighted pitch-class histogram (ties: major
    first, then the lower tonic; a melody of one pitch class gets C major)."""
    p = np.asarray(notes[0], dtype=np.int64)
    d = np.asarray(notes[2], dtype=np.float64)
    hist = np.bincount(p % 12, weights=np.maximum(d, 1e-6), minlength=12)
    hist = hist - hist.mean()
    norm = float(np.linalg.norm(hist))
    if norm == 0.0:
        return 0, "major"
    k = int(np.argmax(_PROFILES @ (hist / norm)))
    return k % 12, ("major", "minor")[k // 12]


# Per scale degree, the semitones change_mode moves it: from major (3rd, 6th, 7th down) and
# from minor (up); a table lookup, as detection changes the mode of every candidate it verifies.
_MODE_STEP = np.zeros((2, 12), dtype=np.int64)
_MODE_STEP[0, [4, 9, 11]] = -1
_MODE_STEP[1, [3, 8, 10]] = 1


def change_mode(notes: Notes, *, key: tuple[int, str] | None = None) -> Notes:
    """Major to minor or minor to major in ``key`` (by default the estimated one,
    :func:`estimate_key`): in major the 3rd, 6th and 7th degrees go down a semitone, in minor
    they go up one."""
    p, o, d = _arr(notes)
    tonic, mode = key if key is not None else estimate_key((p, o, d))
    p = p + _MODE_STEP[int(mode == "minor")][(p - tonic) % 12]
    return np.clip(p, 0, 127), o, d


def swing(notes: Notes) -> Notes:
    """Play every on-beat pair of equal notes no longer than the median interval long-short,
    2:1 (a pair starts where its first onset is a whole number of pair lengths in)."""
    p, o, d = _arr(notes)
    if p.size < 3:
        return p, o, d
    ioi = np.diff(o)
    med = float(np.median(ioi))
    i = 0
    while i + 2 < p.size:
        a, b = o[i + 1] - o[i], o[i + 2] - o[i + 1]
        pos = o[i] / (2 * a) if a > 0 else 0.5
        if a > 0 and abs(a - b) < 1e-6 and a <= med + 1e-9 and abs(pos - round(pos)) < 1e-6:
            o[i + 1] = o[i] + 2 * a * 2 / 3
            d[i] = min(d[i], o[i + 1] - o[i])
            d[i + 1] = min(d[i + 1], o[i + 2] - o[i + 1])
            i += 2
        else:
            i += 1
    return p, o, d


def split_notes(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    """Lyric adaptation: a share ``rate`` of the notes at least as long as the median interval
    become two repeated notes (halves), and a share ``rate / 2`` of repeated-note pairs merge."""
    p, o, d = _arr(notes)
    if p.size < 2:
        return p, o, d
    ioi = np.append(np.diff(o), d[-1])
    med = float(np.median(ioi))
    P, O, D = [], [], []
    i = 0
    while i < p.size:
        if i + 1 < p.size and p[i + 1] == p[i] and rng.random() < rate / 2:
            P.append(p[i])
            O.append(o[i])
            D.append(o[i + 1] + d[i + 1] - o[i])
            i += 2
            continue
        if ioi[i] >= med and rng.random() < rate:
            half = ioi[i] / 2
            P += [p[i], p[i]]
            O += [o[i], o[i] + half]
            D += [min(d[i], half), max(d[i] - half, half * 0.5)]
        else:
            P.append(p[i])
            O.append(o[i])
            D.append(d[i])
        i += 1
    return np.asarray(P, dtype=np.int64), np.asarray(O), np.asarray(D)


def grace_notes(notes: Notes, rate: float, *, rng: np.random.Generator) -> Notes:
    """Before a share ``rate`` of the notes (not the first), a grace note 1 or 2 semitones above
    or below, an eighth of a beat long or a quarter of the previous interval if that is shorter,
    taken from the end of the previous note."""
    p, o, d = _arr(notes)
    P, O, D = [p[0]] if p.size else [], [o[0]] if p.size else [], [d[0]] if p.size else []
    for i in range(1, p.size):
        gap = o[i] - o[i - 1]
        if rng.random() < rate and gap > 0:
            g = min(0.125, gap / 4)
            D[-1] = min(D[-1], gap - g)
            P.append(int(p[i] + rng.choice([-2, -1, 1, 2])))
            O.append(o[i] - g)
            D.append(g)
        P.append(p[i])
        O.append(o[i])
        D.append(d[i])
    return np.clip(np.asarray(P, dtype=np.int64), 0, 127), np.asarray(O), np.asarray(D)


def humanize(notes: Notes, *, rng: np.random.Generator, timing_sd: float = 0.03, rubato: float = 0.08) -> Notes:
    """A performance of the notes: each onset moved by a normal error of ``timing_sd`` beats
    (the order kept), each note held 60-100 % of its value, and the tempo wandering slowly,
    ``exp(rubato * sin(...))`` with a period of 8-16 beats."""
    p, o, d = _arr(notes)
    if p.size == 0:
        return p, o, d
    ioi = np.append(np.diff(o), d[-1])
    jit = o + rng.normal(0.0, timing_sd, p.size)
    for i in range(1, p.size):  # keep the order: at least a fifth of the written interval apart
        jit[i] = max(jit[i], jit[i - 1] + 0.2 * ioi[i - 1])
    dur = np.maximum(d * rng.uniform(0.6, 1.0, p.size), 0.02)
    period, phase = float(rng.uniform(8, 16)), float(rng.uniform(0, 2 * np.pi))

    def speed(t: np.ndarray) -> np.ndarray:
        return np.exp(rubato * np.sin(2 * np.pi * t / period + phase))

    start = jit - jit[0]
    mids = np.concatenate([[start[0]], (start[1:] + start[:-1]) / 2])
    warped = np.cumsum(np.diff(start, prepend=start[0]) * speed(mids))
    return p, warped, dur * speed(start)


def unseen_edit(notes: Notes, kind: str, *, rng: np.random.Generator) -> Notes:
    """One edit of :data:`UNSEEN_EDITS`, then a transposition and a tempo change as ``light``'s."""
    if kind == "mode":
        out = change_mode(notes)
    elif kind == "swing":
        out = swing(notes)
    elif kind == "split":
        out = split_notes(notes, 0.2, rng=rng)
    elif kind == "grace":
        out = grace_notes(notes, 0.15, rng=rng)
    elif kind == "humanize":
        out = humanize(notes, rng=rng)
    else:
        raise ValueError(f"unknown unseen edit {kind!r}; choose from {UNSEEN_EDITS}")
    return augment(augment(out, "transpose", rng=rng), "tempo", rng=rng)
