"""Melody windows: the unit that is embedded, indexed and matched.

Conventions
-----------
A window is ``length`` consecutive notes (default 16), taken every ``hop`` notes. A melody
shorter than ``length`` but with at least ``min_notes`` notes gives one padded window.

Each note of a window becomes two tokens, by an **invariant encoding** (not a normalisation
that is undone later):

- **pitch token**: the pitch minus the window's reference pitch, ``floor(median(pitches))``,
  clipped to -24..+24 semitones. Transposing a melody by k semitones moves every pitch and
  the reference by k, so the tokens are identical.
- **rhythm token**: the inter-onset interval (to the next note; the last note of the melody
  uses its own duration) divided by the window's median inter-onset interval, as
  ``round(2 * log2(ratio))`` clipped to -6..+6 (half-octave steps of duration ratio). Scaling
  time by any factor (a tempo change, or halving/doubling every note value) scales every
  interval and the median alike, so the tokens are identical.

Windows count notes, not beats, so tempo never changes which notes a window holds. Each window
keeps its position: first/last note index, beats, seconds and bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from ..config import DEFAULT_MIN_NOTES
from ..errors import InvalidInputError, MelodyTooShortError
from .melody import Melody

__all__ = [
    "WINDOW_FORMAT_VERSION",
    "WindowConfig",
    "DEFAULT_WINDOW",
    "Windows",
    "PITCH_RANGE",
    "N_PITCH_TOKENS",
    "N_RHYTHM_TOKENS",
    "PITCH_PAD",
    "RHYTHM_PAD",
    "encode_notes",
    "encode_rows",
    "window_melody",
    "short_windows",
    "deletion_windows",
]

#: Bumped whenever the token encoding changes; weights and indexes record it.
WINDOW_FORMAT_VERSION = 1

PITCH_RANGE = 24
PITCH_PAD = 2 * PITCH_RANGE + 1  # 49
N_PITCH_TOKENS = PITCH_PAD + 1  # 50
RHYTHM_RANGE = 6
RHYTHM_PAD = 2 * RHYTHM_RANGE + 1  # 13
N_RHYTHM_TOKENS = RHYTHM_PAD + 1  # 14


@dataclass(frozen=True)
class WindowConfig:
    """How a melody is cut into windows (lengths in notes)."""

    length: int = 16
    hop: int = 1
    min_notes: int = DEFAULT_MIN_NOTES

    def __post_init__(self) -> None:
        if self.length < 4:
            raise InvalidInputError(f"window length must be >= 4 notes; got {self.length}")
        if self.hop < 1:
            raise InvalidInputError(f"window hop must be >= 1 note; got {self.hop}")
        if not 1 <= self.min_notes <= self.length:
            raise InvalidInputError(
                f"min_notes must be in 1..length ({self.length}); got {self.min_notes}"
            )


DEFAULT_WINDOW = WindowConfig()


@dataclass(frozen=True, eq=False)
class Windows:
    """Tokenised windows of one melody.

    Attributes
    ----------
    pitch, rhythm : np.ndarray of int64, shape (n_windows, length)
        Tokens, padded with :data:`PITCH_PAD` / :data:`RHYTHM_PAD`.
    start : np.ndarray of int64, shape (n_windows,)
        Index of each window's first note in the melody.
    n_notes : np.ndarray of int64, shape (n_windows,)
        Real (unpadded) notes in each window.
    ref_pitch : np.ndarray of int64, shape (n_windows,)
        Each window's reference pitch (MIDI), to undo the encoding.
    median_ioi_beats : np.ndarray of float64, shape (n_windows,)
        Each window's median inter-onset interval in beats, to undo the encoding.
    """

    pitch: np.ndarray
    rhythm: np.ndarray
    start: np.ndarray
    n_notes: np.ndarray
    ref_pitch: np.ndarray
    median_ioi_beats: np.ndarray

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def take(self, idx: np.ndarray) -> Windows:
        """The windows selected by an index or boolean mask."""
        return Windows(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence[Windows]) -> Windows:
        """Several sets of windows (of one token length) as one."""
        return Windows(*(np.concatenate([getattr(w, f.name) for w in parts]) for f in fields(Windows)))

    @staticmethod
    def empty(length: int) -> Windows:
        tok, e = np.zeros((0, length), np.int64), np.zeros(0, np.int64)
        return Windows(tok, tok, e, e, e, np.zeros(0))


def _iois(onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    ioi = np.empty_like(onsets)
    ioi[:-1] = np.diff(onsets)
    ioi[-1] = durations[-1]
    return np.maximum(ioi, 1e-6)


def encode_notes(
    pitches: np.ndarray, iois: np.ndarray, *, length: int
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Tokens of one window given its pitches and inter-onset intervals (any time unit).

    Returns ``(pitch_tokens, rhythm_tokens, ref_pitch, median_ioi)``, tokens padded to ``length``.
    """
    p = np.asarray(pitches, dtype=np.int64)[:length]
    d = np.asarray(iois, dtype=np.float64)[:length]
    pt, rt, ref, med = _encode_many(p, d, np.zeros(1, dtype=np.int64), p.size, length)
    return pt[0], rt[0], int(ref[0]), float(med[0])


def short_windows(melody: Melody, *, length: int, n_notes: int, hop: int = 1) -> Windows:
    """Windows of only ``n_notes`` notes (padded to ``length``), every ``hop`` notes.

    Queries use them besides full windows, so that a phrase shorter than a window, lifted into
    other material, still has windows made of nothing but the phrase. The model is trained to
    place such a cut window next to the full window that starts on the same note.
    """
    n = len(melody)
    if n < n_notes:
        e = np.zeros((0, length), dtype=np.int64)
        z = np.zeros(0, dtype=np.int64)
        return Windows(e, e.copy(), z, z.copy(), z.copy(), np.zeros(0))
    iois = _iois(melody.onsets_beats, melody.durations_beats)
    starts = list(range(0, n - n_notes + 1, hop))
    st = np.asarray(starts, dtype=np.int64)
    pitch, rhythm, refs, meds = _encode_many(np.asarray(melody.pitches), iois, st, n_notes, length)
    return Windows(pitch, rhythm, st, np.full(st.size, n_notes, dtype=np.int64), refs, meds)


def _encode_many(pitches: np.ndarray, iois: np.ndarray, starts: np.ndarray, n: int, length: int):
    """:func:`encode_notes` for many windows of ``n`` notes at once (vectorised)."""
    idx = starts[:, None] + np.arange(n)[None, :]
    return encode_rows(pitches[idx].astype(np.int64), iois[idx], length=length)


def encode_rows(p: np.ndarray, d: np.ndarray, *, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`encode_notes` for many windows of the same note count ``n`` at once, given as rows of
    ``n`` pitches and ``n`` inter-onset intervals; each row gets the tokens it would alone.

    Raises :class:`InvalidInputError` unless ``p`` and ``d`` are 2-D of one shape with
    ``1 <= n <= length`` and every interval positive."""
    if p.ndim != 2 or d.shape != p.shape or not 1 <= p.shape[1] <= length:
        raise InvalidInputError(f"need rows of 1..{length} pitches and as many intervals; got {p.shape} and {d.shape}")
    if not (d > 0).all():
        raise InvalidInputError("inter-onset intervals must be positive")
    n = p.shape[1]
    refs = np.floor(np.median(p, axis=1)).astype(np.int64)
    meds = np.median(d, axis=1)
    pitch = np.full((p.shape[0], length), PITCH_PAD, dtype=np.int64)
    rhythm = np.full((p.shape[0], length), RHYTHM_PAD, dtype=np.int64)
    pitch[:, :n] = np.clip(p - refs[:, None], -PITCH_RANGE, PITCH_RANGE) + PITCH_RANGE
    r = np.rint(2.0 * np.log2(d / meds[:, None]) + 1e-9)
    rhythm[:, :n] = np.clip(r, -RHYTHM_RANGE, RHYTHM_RANGE).astype(np.int64) + RHYTHM_RANGE
    return pitch, rhythm, refs, meds


def deletion_windows(melody: Melody, windows: Windows, *, length: int,
                     short: float = 0.75) -> tuple[Windows, np.ndarray]:
    """Each of ``windows`` again with one short note deleted: the ornaments and passing notes a
    copy adds, taken out again.

    A note is short when its inter-onset interval is at most ``short`` times its window's
    median. Each short note gives up to two variants, its time given to the note before (held
    through) or to the note after (started early); the window then takes in the melody's next
    note, so it keeps its length where the melody allows. A query searches them beside its
    windows and keeps, per window and work, the closest hit of any variant.

    Returns the variants and, for each, the row in ``windows`` it varies. Variants keep their
    parent's ``start``; their reference pitch and median interval are their own.
    """
    if not 0 < short <= 1:
        raise InvalidInputError(f"short must be in (0, 1]; got {short}")
    n = len(melody)
    if len(windows) and (int((windows.start + windows.n_notes).max()) > n or int(windows.n_notes.max()) > length):
        raise InvalidInputError(f"windows do not belong to this melody of {n} notes or exceed length {length}")
    pitches = np.asarray(melody.pitches, dtype=np.int64)
    iois = _iois(melody.onsets_beats, melody.durations_beats)
    groups: dict[int, tuple[list[list[int]], list[np.ndarray], list[int], list[int]]] = {}
    for row, (s, m) in enumerate(zip(windows.start.tolist(), windows.n_notes.tolist())):
        seg = iois[s:s + m]
        end = min(s + m + 1, n)
        for j in (np.flatnonzero(seg <= short * np.median(seg)) + s).tolist():
            for nb in (j - 1, j + 1):
                if nb < s or nb >= end:
                    continue
                idx = [k for k in range(s, end) if k != j][:m]
                d = iois[idx]
                d[idx.index(nb)] += iois[j]
                g = groups.setdefault(len(idx), ([], [], [], []))
                g[0].append(idx)
                g[1].append(d)
                g[2].append(row)
                g[3].append(s)
    parts, parents = [], []
    for k, (g_idx, g_iois, g_rows, g_starts) in groups.items():
        pitch, rhythm, refs, meds = encode_rows(pitches[np.asarray(g_idx)], np.asarray(g_iois), length=length)
        parts.append(Windows(pitch, rhythm, np.asarray(g_starts, np.int64), np.full(len(g_rows), k, np.int64), refs, meds))
        parents.append(np.asarray(g_rows, np.int64))
    if not parts:
        return Windows.empty(length), np.zeros(0, np.int64)
    return Windows.concat(parts), np.concatenate(parents)


def window_melody(melody: Melody, *, config: WindowConfig = DEFAULT_WINDOW) -> Windows:
    """Cut a melody into tokenised windows.

    Raises
    ------
    MelodyTooShortError
        When the melody has fewer than ``config.min_notes`` notes.
    """
    n = len(melody)
    if n < config.min_notes:
        raise MelodyTooShortError(
            f"melody has {n} notes; at least {config.min_notes} are needed to compare (min_notes)"
        )
    L = config.length
    iois = _iois(melody.onsets_beats, melody.durations_beats)
    if n <= L:
        starts = [0]
    else:
        starts = list(range(0, n - L + 1, config.hop))
        if starts[-1] != n - L:
            starts.append(n - L)  # always cover the end of the melody
    st = np.asarray(starts, dtype=np.int64)
    m = min(L, n)
    pitch, rhythm, refs, meds = _encode_many(np.asarray(melody.pitches), iois, st, m, L)
    return Windows(pitch, rhythm, st, np.full(st.size, m, dtype=np.int64), refs, meds)
