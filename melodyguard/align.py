"""Note-level local alignment (Smith-Waterman), the verification step and the baseline.

Conventions
-----------
Sequences are note lists: MIDI pitches and inter-onset intervals (IOI) in beats (the last
note's IOI is its duration). Query index ``i``, reference index ``j``.

Verification scoring (:func:`align_notes`) for a given transposition ``t`` (semitones added to
the query) and tempo ratio ``r`` (reference IOI / query IOI). The values are rounded log-odds
(copied vs. unrelated note pairs, scaled so an equal pitch scores 1), in the spirit of BLAST's
substitution matrices, chosen by ``scripts/calibrate.py --search`` on the training split
(the changed-note score by detection, see below):

=====================================  ======================
pitch equal after transposition         +1.0 x note weight
an octave apart                         +0.2
1-2 semitones apart (a changed note)    -1.2
otherwise                               -3.0
IOI within 2^0.3 after tempo ratio      +0.3 x note weight
two-note span kept (see below)          -0.7 (off; ``rhythm_span``)
otherwise                               -0.7
gap (an inserted or dropped note)       -2.0
an ornamented note (see below)          pitch + rhythm - 1.0
=====================================  ======================

**Ornaments.** A note matched with two notes on the other side, one of which is a short
neighbour, passing or split note (no longer than its principal note and at most 2 semitones
from it) that takes part of the principal note's time: the principal note must have the same
pitch, and its rhythm is judged on the two notes' joint IOI. This costs 1.0 instead of a gap
and an off-beat (-2.0 - 0.7). It works in both directions: an ornamented copy of a plain tune
and a plain copy of an ornamented one. Only the principal note is paired in the alignment.
``scripts/calibrate.py --ornament-search`` chose the cost and the interval on the training
split (true-positive rate at a per-pair E of 1e-6: partial light copies 0.68 -> 0.77, whole
heavy 0.84 -> 0.93); ``ornament_interval=-1`` turns the move off.

**Two-note spans (off by default).** Swing plays a pair of equal notes long-short (2:1):
each note's own IOI moves past the tolerance (+0.415 and -0.585 log2), so every swung note of
a copy scores a rhythm miss. The pair keeps its span, so with ``rhythm_span`` above
``rhythm_miss`` a note whose own IOI misses by less than twice the tolerance, but whose joint
IOI with its next note (or its previous one) matches the other side's joint IOI at the same
places, scores ``rhythm_span`` instead of a miss. (Two notes that trade their lengths, an
eighth and a quarter at 1.0 log2, keep their span too, but unrelated tunes do that all the
time: without the twice-the-tolerance condition light lifted phrases on the training split
were flagged in 41 % instead of 55.5 %.) At or below ``rhythm_miss`` (the default: equal) it is
off; a law fitted before it existed is read so. Turn it on with a law fitted for it: ``python
scripts/calibrate.py --score rhythm_span=0 --out cal.json`` and ``MELODYGUARD_CALIBRATION=cal.json``.

Measured (thirty-sixth session, docs/benchmarks.md, "Swung copies keep their spans"): on
the training split (``benchmark.py --pool train --sections edits --sizes 2500``, light and
swing rows, each value with its own law) off / -0.3 / 0.0 gave swung lifted phrases in
backwards hosts recall@1 0.685 / 0.765 / 0.778 and flagged 36 / 45 / 57.5 %, light ones
0.823 / 0.823 / 0.818 and 55.5 / 55.5 / 55 %. On held-out catalogues 0.0 found swung phrases
in 0.925 / 0.902 (backwards / real hosts, 1k works) instead of 0.869 / 0.847, and medium
edits gained 2-3 points of recall@1 at 1k and 9.4k works, but at 9.4k works light phrases in
backwards hosts fell from TPR@1%FPR 0.872 to 0.795 and recall@1 0.921 to 0.909, every light
lifted phrase was flagged less often (real hosts 81 -> 76 %), and verification took about a
quarter longer. Light copies are the common case, so the default stays off.

**The changed-note score.** The per-pair search (true-positive rate of single query-reference
pairs) preferred -0.6, but a catalogue's strongest chance matches are long alignments of
stepwise tunes held together by near misses, while a lifted phrase is short and exact. So the
score was chosen again by detection on the *training* split (``scripts/benchmark.py --pool
train --sections detect --sizes 2500``, each score with its own fitted law, ``calibrate.py
--score near=X``): -0.6 / -0.9 / -1.2 / -1.5 gave light partial copies in backwards hosts
TPR@1%FPR 0.13 / 0.165 / 0.235 / 0.28 and medium ones recall@1 0.5875 / 0.5875 / 0.579 / 0.572.
-1.2 is where medium copies still score as before; harsher trades them for light ones.

The note weight (:func:`note_weights`) is how surprising the note is: steps and repeated notes,
which unrelated tunes share all the time, weigh less than leaps and rare rhythms.

**Pedal figures** (:func:`pedal_factors`, as BLAST masks low-complexity regions). A passage
that returns to one pitch every other note (``72 76 72 67 72 64``: broken chords over a pedal,
the stuff of reels, hornpipes and strathspeys) is made of leaps, so surprisal alone weighs it
heavily, yet it is stock material, and played backwards it is still a pedal passage: in a
training-split catalogue of 2,500 tunes the longest chance matches of backwards tunes (up to
42 equal notes) were such passages. Notes amid one keep down to ``pedal_floor`` of their
weight. Chosen by detection on the training split (``benchmark.py --pool train --sections
detect --sizes 2500``, each with its own law): floors 1 / 0.5 / 0.3 / 0.1 gave backwards tunes
flagged by ``review`` 7.2 / 4.6 / 4.1 / 3.9 %, light partial copies in backwards hosts
TPR@1%FPR 0.235 / 0.315 / 0.335 / 0.35 and recall@1 0.861 / 0.856 / 0.848 / 0.843, medium
ones TPR 0.07 / 0.09 / 0.095 / 0.11. 0.5 is the last floor at which light copies keep their
recall@1.

The baseline (:func:`align_intervals`) is the classic forensic method: transposition- and
tempo-invariant features (pitch interval, log2 duration ratio to the previous note) scored
+1 for an equal interval, -1 otherwise, +0.5 / -0.3 for a duration ratio within 2^0.3, gap -0.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numba import njit

__all__ = ["Alignment", "Scoring", "DEFAULT_SCORING", "Side", "align_notes", "align_intervals", "best_scores",
           "best_scores_sides", "align_sides", "note_iois", "note_weights", "is_near_duplicate", "estimate_shift",
           "estimate_shift_sides", "prepare_notes", "prepare_side", "shift_keys"]



@njit(cache=True, inline="always")
def _span_hit(i, j, own, logr, q_ml, r_ml, n, m, tol):  # pragma: no cover - numba
    """Whether query note ``i`` and reference note ``j`` (0-based), whose own IOIs differ by
    ``own`` (log2, after the tempo ratio), keep a two-note span: ``own`` is under twice the
    tolerance, and the joint IOI of (i, i+1) matches that of (j, j+1), or of (i-1, i) that of
    (j-1, j). A swung pair (2:1 for 1:1: +0.415, -0.585) keeps its span; two notes that trade
    their lengths (an eighth and a quarter: 1.0) do not count."""
    if own >= 2.0 * tol:
        return False
    if i + 1 < n and j + 1 < m and abs(q_ml[i] + logr - r_ml[j]) < tol:
        return True
    return i >= 1 and j >= 1 and abs(q_ml[i - 1] + logr - r_ml[j - 1]) < tol


@njit(cache=True, inline="always")
def _pair_score(i, j, qp, ql, rp, rl, t, logr, wq, wr, q_ml, r_ml, n, m, prm):  # pragma: no cover - numba
    """Score of aligning query note ``i`` with reference note ``j`` (0-based; the module
    docstring's table)."""
    w = 0.5 * (wq[i] + wr[j])
    dp = abs(qp[i] + t - rp[j])
    if dp == 0:
        s = prm[0] * w
    elif dp == 12:
        s = prm[1]
    elif dp <= 2:
        s = prm[2]
    else:
        s = prm[3]
    own = abs(ql[i] + logr - rl[j])
    if own < prm[7]:
        s += prm[4] * w
    elif prm[9] > prm[5] and _span_hit(i, j, own, logr, q_ml, r_ml, n, m, prm[7]):
        s += prm[9]
    else:
        s += prm[5]
    return s


@njit(cache=True, inline="always")
def _merge_score(i, j, qp, ql, rp, rl, t, logr, wq, wr, q_ml, q_ok, r_ml, r_ok, prm):  # pragma: no cover - numba
    """Scores of one note matched with an ornamented note of the same pitch on the other side
    (two notes, one of them a short neighbour, passing or split note whose time it shares), for
    the DP cell (i, j) (1-based). Query side: notes i-2, i-1 with reference note j-1, from cell
    (i-2, j-1); ``q_kind`` 4/5 when the query's principal note is the first/second. Reference
    side: notes j-2, j-1 with query note i-1, from cell (i-1, j-2); ``r_kind`` 6/7. Returns
    (q_score, q_kind, r_score, r_kind); a kind is 0 when that move does not exist."""
    qs, qk, rs, rk = -1e18, 0, -1e18, 0
    if i >= 2:
        a = i - 2
        for c in range(2):
            if q_ok[a, c] and qp[a + c] + t == rp[j - 1]:
                w = 0.5 * (wq[a + c] + wr[j - 1])
                v = prm[0] * w + (prm[4] * w if abs(q_ml[a] + logr - rl[j - 1]) < prm[7] else prm[5])
                if v > qs:
                    qs, qk = v, 4 + c
    if j >= 2:
        b = j - 2
        for c in range(2):
            if r_ok[b, c] and qp[i - 1] + t == rp[b + c]:
                w = 0.5 * (wq[i - 1] + wr[b + c])
                v = prm[0] * w + (prm[4] * w if abs(ql[i - 1] + logr - r_ml[b]) < prm[7] else prm[5])
                if v > rs:
                    rs, rk = v, 6 + c
    return qs + prm[8], qk, rs + prm[8], rk


@njit(cache=True)
def _sw_notes(qp, ql, rp, rl, t, logr, blocked_q, blocked_r, wq, wr, q_ml, q_ok, r_ml, r_ok, prm):  # pragma: no cover - numba
    gap = prm[6]
    n, m = qp.shape[0], rp.shape[0]
    H = np.zeros((n + 1, m + 1))
    # 0 stop, 1 diag, 2 up (gap in ref), 3 left; 4-7 an ornamented note (see _merge_score)
    T = np.zeros((n + 1, m + 1), dtype=np.int8)
    best, bi, bj = 0.0, 0, 0
    for i in range(1, n + 1):
        if blocked_q[i - 1]:
            continue
        for j in range(1, m + 1):
            if blocked_r[j - 1]:
                continue
            s = _pair_score(i - 1, j - 1, qp, ql, rp, rl, t, logr, wq, wr, q_ml, r_ml, n, m, prm)
            d = H[i - 1, j - 1] + s
            u = H[i - 1, j] + gap
            lft = H[i, j - 1] + gap
            h, tr = 0.0, 0
            if d > h:
                h, tr = d, 1
            if u > h:
                h, tr = u, 2
            if lft > h:
                h, tr = lft, 3
            qs, qk, rs, rk = _merge_score(i, j, qp, ql, rp, rl, t, logr, wq, wr, q_ml, q_ok, r_ml, r_ok, prm)
            if qk and not blocked_q[i - 2] and H[i - 2, j - 1] + qs > h:
                h, tr = H[i - 2, j - 1] + qs, qk
            if rk and not blocked_r[j - 2] and H[i - 1, j - 2] + rs > h:
                h, tr = H[i - 1, j - 2] + rs, rk
            H[i, j] = h
            T[i, j] = tr
            if h > best:
                best, bi, bj = h, i, j
    # traceback
    pairs_q = np.empty(n + m, dtype=np.int64)
    pairs_r = np.empty(n + m, dtype=np.int64)
    k = 0
    i, j = bi, bj
    while i > 0 and j > 0 and T[i, j] != 0:
        tr = T[i, j]
        if tr == 1:
            pairs_q[k] = i - 1
            pairs_r[k] = j - 1
            k += 1
            i -= 1
            j -= 1
        elif tr == 2:
            i -= 1
        elif tr == 3:
            j -= 1
        elif tr <= 5:  # two query notes, one reference note: the principal note is paired
            pairs_q[k] = i - 2 + (tr - 4)
            pairs_r[k] = j - 1
            k += 1
            i -= 2
            j -= 1
        else:
            pairs_q[k] = i - 1
            pairs_r[k] = j - 2 + (tr - 6)
            k += 1
            i -= 1
            j -= 2
    return best, pairs_q[:k][::-1].copy(), pairs_r[:k][::-1].copy()


@njit(cache=True)
def _sw_scores(qp, ql, rp, rl, ts, logrs, wq, wr, q_ml, q_ok, r_ml, r_ok, prm):  # pragma: no cover - numba
    """The best local score of :func:`_sw_notes` (nothing blocked) for each (t, logr) pair,
    in linear memory and without traceback: the same arithmetic, so the same numbers.

    :func:`_pair_score` and :func:`_merge_score` are written out here with what depends only
    on the query note hoisted out of the inner loop, and the rows rotate instead of being
    copied: about twice as fast, equal to the last bit (tested against :func:`_sw_notes`)."""
    gap = prm[6]
    p_eq, p_oct, p_near, p_other = prm[0], prm[1], prm[2], prm[3]
    r_hit, r_miss, tol, orn, r_span = prm[4], prm[5], prm[7], prm[8], prm[9]
    span_on = r_span > r_miss
    n, m = qp.shape[0], rp.shape[0]
    out = np.zeros(ts.shape[0])
    A = np.zeros(m + 1)
    B = np.zeros(m + 1)
    C = np.zeros(m + 1)
    for k in range(ts.shape[0]):
        t, logr = ts[k], logrs[k]
        prev2, prev, cur = A, B, C
        for j in range(m + 1):
            prev[j] = 0.0
            prev2[j] = 0.0
        best = 0.0
        for i in range(1, n + 1):
            qpi = qp[i - 1] + t
            qli = ql[i - 1] + logr
            wqi = wq[i - 1]
            qm0 = False
            qm1 = False
            qpa0 = 0
            qpa1 = 0
            qmla = 0.0
            wqa0 = 0.0
            wqa1 = 0.0
            if i >= 2:
                a = i - 2
                qm0 = q_ok[a, 0]
                qm1 = q_ok[a, 1]
                qpa0 = qp[a] + t
                qpa1 = qp[a + 1] + t
                qmla = q_ml[a] + logr
                wqa0 = wq[a]
                wqa1 = wq[a + 1]
            qmerge = qm0 or qm1
            cur[0] = 0.0
            for j in range(1, m + 1):
                rpj = rp[j - 1]
                w = 0.5 * (wqi + wr[j - 1])
                dp = abs(qpi - rpj)
                if dp == 0:
                    s = p_eq * w
                elif dp == 12:
                    s = p_oct
                elif dp <= 2:
                    s = p_near
                else:
                    s = p_other
                own = abs(qli - rl[j - 1])
                if own < tol:
                    s += r_hit * w
                elif span_on and _span_hit(i - 1, j - 1, own, logr, q_ml, r_ml, n, m, tol):
                    s += r_span
                else:
                    s += r_miss
                d = prev[j - 1] + s
                u = prev[j] + gap
                lft = cur[j - 1] + gap
                h = 0.0
                if d > h:
                    h = d
                if u > h:
                    h = u
                if lft > h:
                    h = lft
                if qmerge:
                    qs = -1e18
                    qk = 0
                    if qm0 and qpa0 == rpj:
                        w2 = 0.5 * (wqa0 + wr[j - 1])
                        v = p_eq * w2 + (r_hit * w2 if abs(qmla - rl[j - 1]) < tol else r_miss)
                        if v > qs:
                            qs, qk = v, 4
                    if qm1 and qpa1 == rpj:
                        w2 = 0.5 * (wqa1 + wr[j - 1])
                        v = p_eq * w2 + (r_hit * w2 if abs(qmla - rl[j - 1]) < tol else r_miss)
                        if v > qs:
                            qs, qk = v, 5
                    if qk and prev2[j - 1] + (qs + orn) > h:
                        h = prev2[j - 1] + (qs + orn)
                if j >= 2:
                    b = j - 2
                    rs = -1e18
                    rk = 0
                    if r_ok[b, 0] and qpi == rp[b]:
                        w2 = 0.5 * (wqi + wr[b])
                        v = p_eq * w2 + (r_hit * w2 if abs(qli - r_ml[b]) < tol else r_miss)
                        if v > rs:
                            rs, rk = v, 6
                    if r_ok[b, 1] and qpi == rp[b + 1]:
                        w2 = 0.5 * (wqi + wr[b + 1])
                        v = p_eq * w2 + (r_hit * w2 if abs(qli - r_ml[b]) < tol else r_miss)
                        if v > rs:
                            rs, rk = v, 7
                    if rk and prev[j - 2] + (rs + orn) > h:
                        h = prev[j - 2] + (rs + orn)
                cur[j] = h
                if h > best:
                    best = h
            prev2, prev, cur = prev, cur, prev2
        out[k] = best
    return out


@njit(cache=True)
def _ornament_arrays(pitch, log_ioi, interval):  # pragma: no cover - numba
    n = pitch.shape[0]
    ml = np.zeros(max(n - 1, 1))
    ok = np.zeros((max(n - 1, 1), 2), dtype=np.bool_)
    for a in range(n - 1):
        x, y = 2.0 ** log_ioi[a], 2.0 ** log_ioi[a + 1]
        ml[a] = np.log2(x + y)
        if interval >= 0 and abs(pitch[a + 1] - pitch[a]) <= interval:
            ok[a, 0] = y <= x + 1e-9
            ok[a, 1] = x <= y + 1e-9
    return ml, ok


def _ornaments(pitch: np.ndarray, log_ioi: np.ndarray, scoring: Scoring) -> tuple[np.ndarray, np.ndarray]:
    """For each adjacent note pair (a, a+1): the merged log2 IOI, and whether a+1 (column 0)
    or a (column 1) may be an ornament of the other: no longer than it and at most
    ``scoring.ornament_interval`` semitones away (all False when ornaments are off). The merged
    IOIs are also the two-note spans of ``Scoring.rhythm_span``."""
    return _ornament_arrays(pitch, log_ioi, int(scoring.ornament_interval))


@njit(cache=True)
def _sw_intervals(qi, qd, ri, rd):  # pragma: no cover - numba
    n, m = qi.shape[0], ri.shape[0]
    prev = np.zeros(m + 1)
    cur = np.zeros(m + 1)
    best = 0.0
    for i in range(1, n + 1):
        cur[0] = 0.0
        for j in range(1, m + 1):
            s = 1.0 if qi[i - 1] == ri[j - 1] else -1.0
            if abs(qd[i - 1] - rd[j - 1]) < 0.3:
                s += 0.5
            else:
                s -= 0.3
            h = prev[j - 1] + s
            u = prev[j] - 0.7
            if u > h:
                h = u
            lft = cur[j - 1] - 0.7
            if lft > h:
                h = lft
            if h < 0.0:
                h = 0.0
            cur[j] = h
            if h > best:
                best = h
        for j in range(m + 1):
            prev[j] = cur[j]
    return best


def note_iois(onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Inter-onset intervals; the last note's is its duration. Shape ``(n,)``, > 0."""
    o = np.asarray(onsets, dtype=np.float64)
    ioi = np.empty_like(o)
    ioi[:-1] = np.diff(o)
    ioi[-1:] = np.asarray(durations, dtype=np.float64)[-1:]
    return np.maximum(ioi, 1e-4)


@dataclass(frozen=True)
class Scoring:
    """Per-note scores of :func:`align_notes` (see the module docstring)."""

    equal: float = 1.0
    octave: float = 0.2
    near: float = -1.2
    other: float = -3.0
    rhythm_hit: float = 0.3
    rhythm_miss: float = -0.7
    gap: float = -2.0
    rhythm_tolerance: float = 0.3  # log2 units
    weighted: bool = True
    #: added to the score of a note matched with an ornamented note (see the module docstring)
    ornament: float = -1.0
    #: how far (semitones) an ornament may lie from its principal note; -1 turns ornaments off
    ornament_interval: int = 2
    #: weight kept by a note amid a pedal figure (see :func:`pedal_factors`; 1 turns it off)
    pedal_floor: float = 0.5
    #: rhythm score of a note whose own IOI misses but which keeps a two-note span (see the
    #: module docstring); at or below ``rhythm_miss`` it is off
    rhythm_span: float = -0.7

    def array(self) -> np.ndarray:
        """The kernels' parameter vector (made once per Scoring, read-only)."""
        return self._array

    @cached_property
    def _array(self) -> np.ndarray:
        a = np.array([self.equal, self.octave, self.near, self.other, self.rhythm_hit, self.rhythm_miss,
                      self.gap, self.rhythm_tolerance, self.ornament, self.rhythm_span], dtype=np.float64)
        a.flags.writeable = False
        return a


DEFAULT_SCORING = Scoring()


@dataclass(frozen=True)
class Alignment:
    """One local alignment: its score and the aligned note pairs (query index, reference index)."""

    score: float
    query_idx: np.ndarray
    ref_idx: np.ndarray
    transposition: int
    log2_tempo: float

    @property
    def n_pairs(self) -> int:
        return int(self.query_idx.size)


def align_notes(
    q_pitch: np.ndarray,
    q_ioi: np.ndarray,
    r_pitch: np.ndarray,
    r_ioi: np.ndarray,
    *,
    transposition: int,
    tempo_ratio: float,
    max_segments: int = 3,
    min_score: float = 6.0,
    q_weight: np.ndarray | None = None,
    r_weight: np.ndarray | None = None,
    scoring: Scoring = DEFAULT_SCORING,
) -> list[Alignment]:
    """Best non-overlapping local alignments, best first (at most ``max_segments``).

    ``tempo_ratio`` is reference IOI / query IOI (beats); ``transposition`` is added to the query.
    ``q_weight`` / ``r_weight`` scale the reward of each matched note (see :func:`note_weights`);
    1 when not given.
    """
    return align_sides(prepare_side(q_pitch, q_ioi, weight=q_weight, scoring=scoring),
                       prepare_side(r_pitch, r_ioi, weight=r_weight, scoring=scoring),
                       transposition=transposition, tempo_ratio=tempo_ratio, max_segments=max_segments,
                       min_score=min_score)


def align_sides(q: Side, r: Side, *, transposition: int, tempo_ratio: float, max_segments: int = 3,
                min_score: float = 6.0) -> list[Alignment]:
    """:func:`align_notes` of two prepared sides (the same alignments)."""
    if q.scoring is not r.scoring and q.scoring != r.scoring:
        raise ValueError("both sides must be prepared with the same scoring")
    logr = math.log2(max(tempo_ratio, 1e-6))
    bq = np.zeros(q.pitch.size, dtype=np.bool_)
    br = np.zeros(r.pitch.size, dtype=np.bool_)
    prm = q.scoring.array()
    out: list[Alignment] = []
    for _ in range(max_segments):
        score, iq, ir = _sw_notes(q.pitch, q.log_ioi, r.pitch, r.log_ioi, int(transposition), logr, bq, br, q.weight,
                                  r.weight, q.orn_ml, q.orn_ok, r.orn_ml, r.orn_ok, prm)
        if score < (min_score if out else 0.0) or iq.size == 0:
            break
        out.append(Alignment(float(score), iq, ir, int(transposition), logr))
        bq[iq.min(): iq.max() + 1] = True
        br[ir.min(): ir.max() + 1] = True
    return out


@dataclass(frozen=True, eq=False)
class Side:
    """One melody's inputs to :func:`best_scores_sides`, :func:`estimate_shift_sides` and
    :func:`align_sides`, computed once: a query is scored against many references, and a
    reference by many queries (the catalogue keeps its works' sides with their parsed melodies)."""

    pitch: np.ndarray  #: int64
    log_ioi: np.ndarray  #: log2 inter-onset intervals (beats)
    weight: np.ndarray  #: the kernel's note weights (1 when not given or not ``scoring.weighted``)
    orn_ml: np.ndarray  #: the ornament arrays of :func:`_ornaments`
    orn_ok: np.ndarray
    keys: np.ndarray  #: :func:`shift_keys` (3-note figures); sorted (stable), and the order that sorts them
    keys_sorted: np.ndarray
    keys_order: np.ndarray
    scoring: Scoring


def prepare_side(pitch: np.ndarray, ioi: np.ndarray, *, weight: np.ndarray | None = None,
                 scoring: Scoring = DEFAULT_SCORING) -> Side:
    """The :class:`Side` of a melody (pitches, IOIs in beats, optional note weights)."""
    p = np.ascontiguousarray(pitch, dtype=np.int64)
    lg = np.log2(np.ascontiguousarray(ioi, dtype=np.float64))
    w = np.ones(p.size) if (weight is None or not scoring.weighted) else np.ascontiguousarray(weight, dtype=np.float64)
    ml, ok = _ornaments(p, lg, scoring)
    keys, _ = shift_keys(p, ioi)
    order = np.argsort(keys, kind="stable")
    return Side(p, lg, w, ml, ok, keys, keys[order], order, scoring)


def prepare_notes(pitch: np.ndarray, onsets: np.ndarray, durations: np.ndarray, *, background: dict | None,
                  scoring: Scoring = DEFAULT_SCORING) -> tuple[np.ndarray, Side]:
    """A melody's IOIs (beats) and :class:`Side`, its notes weighted by ``background``: equal to
    ``prepare_side(pitch, ioi, weight=note_weights(pitch, ioi, background), scoring=scoring)``
    with ``ioi = note_iois(onsets, durations)``, to the last bit, in one compiled pass instead of
    some thirty small array operations (detection prepares every candidate it has not met)."""
    p = np.ascontiguousarray(pitch, dtype=np.int64)
    ioi = note_iois(onsets, durations)
    lg = np.log2(ioi)
    w, keys = _weights_keys(p, lg, *_surprisal_tables(background if scoring.weighted else None))
    if scoring.weighted and background is not None and scoring.pedal_floor < 1.0:
        w = w * pedal_factors(p, floor=scoring.pedal_floor)
    ml, ok = _ornaments(p, lg, scoring)
    order = np.argsort(keys, kind="stable")
    return ioi, Side(p, lg, w, ml, ok, keys, keys[order], order, scoring)


_NO_TABLES = (np.zeros(0), np.zeros(0), 1.0)
_TABLES: list[tuple[dict, tuple[np.ndarray, np.ndarray, float]]] = []  # the last background's, kept with it


def _surprisal_tables(background: dict | None) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`note_weights`'s background as arrays (converted once per background dict)."""
    if background is None:
        return _NO_TABLES
    last = _TABLES[-1] if _TABLES else None
    if last is not None and last[0] is background:
        return last[1]
    tables = (np.asarray(background["interval_surprisal"], dtype=np.float64),
              np.asarray(background["ratio_surprisal"], dtype=np.float64), float(background["mean_surprisal"]))
    _TABLES[:] = [(background, tables)]
    return tables


@njit(cache=True)
def _weights_keys(p, lg, s_iv, s_r, mean):  # pragma: no cover - numba
    """:func:`note_weights` (all 1 when ``s_iv`` is empty) and :func:`shift_keys` (n=3) of
    pitches ``p`` and log2 IOIs ``lg``, with the same arithmetic."""
    n = p.shape[0]
    w = np.ones(n)
    if s_iv.shape[0] > 0:
        for i in range(1, n):
            iv = min(max(p[i] - p[i - 1], -12), 12) + 12
            lr = np.int64(min(max(np.rint(2 * (lg[i] - lg[i - 1])), -6.0), 6.0)) + 6
            w[i] = min(max((s_iv[iv] + s_r[lr]) / mean, 0.4), 2.5)
    m = n - 3 if n >= 4 else 0
    keys = np.zeros(m, np.int64)
    for i in range(m):
        k = np.int64(0)
        for j in range(2):
            iv = min(max(p[i + j + 1] - p[i + j], -15), 15) + 15
            rr = np.int64(min(max(np.rint(2 * (lg[i + j + 1] - lg[i + j])), -4.0), 4.0)) + 4
            k = (k * 31 + iv) * 9 + rr
        keys[i] = k
    return w, keys


def best_scores(
    q_pitch: np.ndarray,
    q_ioi: np.ndarray,
    r_pitch: np.ndarray,
    r_ioi: np.ndarray,
    *,
    shifts: list[tuple[int, float]],
    q_weight: np.ndarray | None = None,
    r_weight: np.ndarray | None = None,
    scoring: Scoring = DEFAULT_SCORING,
) -> np.ndarray:
    """The score of the best alignment :func:`align_notes` would find at each
    ``(transposition, tempo_ratio)`` of ``shifts`` (0 where none), in one pass without
    traceback: for choosing the shift before aligning at it. Shape ``(len(shifts),)``."""
    if not shifts:
        return np.zeros(0)
    return best_scores_sides(prepare_side(q_pitch, q_ioi, weight=q_weight, scoring=scoring),
                             prepare_side(r_pitch, r_ioi, weight=r_weight, scoring=scoring), shifts=shifts)


def best_scores_sides(q: Side, r: Side, *, shifts: list[tuple[int, float]]) -> np.ndarray:
    """:func:`best_scores` of two prepared sides (the same numbers)."""
    if not shifts:
        return np.zeros(0)
    if q.scoring is not r.scoring and q.scoring != r.scoring:
        raise ValueError("both sides must be prepared with the same scoring")
    ts = np.array([int(t) for t, _ in shifts], dtype=np.int64)
    lr = np.array([math.log2(max(rt, 1e-6)) for _, rt in shifts], dtype=np.float64)
    return np.asarray(_sw_scores(q.pitch, q.log_ioi, r.pitch, r.log_ioi, ts, lr, q.weight, r.weight, q.orn_ml,
                                 q.orn_ok, r.orn_ml, r.orn_ok, q.scoring.array()))


#: pedal_factors: the window (notes) and the share of pedal returns at which weights start to
#: fall and reach the floor
PEDAL_WINDOW, PEDAL_LOW, PEDAL_HIGH = 12, 0.25, 0.5


def pedal_factors(pitch: np.ndarray, *, floor: float) -> np.ndarray:
    """Per note, the factor its weight is multiplied by amid a pedal figure (BLAST masks
    low-complexity regions the same way): a note returns to the pitch two notes back after a
    different one (``72 76 72 67 72``). In the training tunes 16 % of notes do so, and a
    window of 12 notes reaches a third of them in 5 % of places, but broken-chord and pedal
    passages of reels, hornpipes and strathspeys return every other note, and such passages
    played backwards are still pedal passages: long chance matches. The factor is 1 up to
    ``PEDAL_LOW`` returns in the note's window of ``PEDAL_WINDOW``, falling linearly to
    ``floor`` at ``PEDAL_HIGH``."""
    p = np.ascontiguousarray(pitch, dtype=np.int64)
    if p.size < 3 or floor >= 1.0:
        return np.ones(p.size)
    # One compiled pass (every candidate a check meets for the first time is weighted here).
    return _pedal_kernel(p, float(floor), PEDAL_WINDOW, PEDAL_LOW, PEDAL_HIGH)


@njit(cache=True)
def _pedal_kernel(p, floor, window, low, high):  # pragma: no cover - numba
    n = p.shape[0]
    c = np.zeros(n + 1)  # c[i]: returns among the first i notes
    for i in range(n):
        r = 1.0 if i >= 2 and p[i] == p[i - 2] and p[i] != p[i - 1] else 0.0
        c[i + 1] = c[i] + r
    f = np.empty(n)
    for i in range(n):
        lo = max(i - window // 2, 0)
        hi = min(i + window - window // 2, n)  # the window [lo, hi) around the note
        x = ((c[hi] - c[lo]) / (hi - lo) - low) / (high - low)
        x = min(max(x, 0.0), 1.0)
        f[i] = 1.0 - x * (1.0 - floor)
    return f


def note_weights(pitch: np.ndarray, ioi: np.ndarray, background: dict | None, *,
                 scoring: Scoring | None = None) -> np.ndarray:
    """How surprising each note is, relative to an average note (mean 1 over the corpus).

    The weight is the surprisal (-log2 probability) of the note's pitch interval and duration
    ratio from the previous note under the corpus background distribution, divided by the
    corpus mean surprisal and clipped to 0.4..2.5. Steps and repeated notes (stock material)
    weigh less than leaps and characteristic rhythms. The first note weighs 1.
    """
    p = np.asarray(pitch, dtype=np.int64)
    w = np.ones(p.size)
    if background is None or p.size < 2:
        return w
    iv = np.clip(np.diff(p), -12, 12) + 12
    lr = np.clip(np.rint(2 * np.diff(np.log2(np.asarray(ioi, dtype=np.float64)))), -6, 6).astype(np.int64) + 6
    s_iv = np.asarray(background["interval_surprisal"])[iv]
    s_r = np.asarray(background["ratio_surprisal"])[lr]
    w[1:] = np.clip((s_iv + s_r) / background["mean_surprisal"], 0.4, 2.5)
    if scoring is not None and scoring.weighted and scoring.pedal_floor < 1.0:
        w = w * pedal_factors(p, floor=scoring.pedal_floor)
    return w


def interval_features(pitch: np.ndarray, ioi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pitch, dtype=np.int64)
    lg = np.log2(np.asarray(ioi, dtype=np.float64))
    return np.diff(p), np.diff(lg)


def is_near_duplicate(a_pitch: np.ndarray, a_ioi: np.ndarray, b_pitch: np.ndarray, b_ioi: np.ndarray, *,
                      identity: float = 0.8) -> bool:
    """True when the interval alignment of two whole melodies reaches ``identity`` of the perfect
    score of the shorter one (1.5 per interval): the same tune, give or take a few notes."""
    n = min(len(a_pitch), len(b_pitch)) - 1
    return n > 0 and align_intervals(a_pitch, a_ioi, b_pitch, b_ioi) >= identity * 1.5 * n


def align_intervals(q_pitch: np.ndarray, q_ioi: np.ndarray, r_pitch: np.ndarray, r_ioi: np.ndarray) -> float:
    """Baseline score: Smith-Waterman over pitch intervals and duration ratios."""
    qi, qd = interval_features(q_pitch, q_ioi)
    ri, rd = interval_features(r_pitch, r_ioi)
    if qi.size == 0 or ri.size == 0:
        return 0.0
    return float(_sw_intervals(qi, qd, ri, rd))


def shift_keys(pitch: np.ndarray, ioi: np.ndarray, *, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Keys of every run of ``n`` notes (intervals and inter-onset ratios, invariant to
    transposition and tempo) and the log2 IOIs, as :func:`estimate_shift` uses them."""
    p = np.asarray(pitch, np.int64)
    lg = np.log2(np.asarray(ioi, np.float64))
    if len(p) < n + 1:
        return np.zeros(0, np.int64), lg
    iv = np.clip(np.diff(p), -15, 15) + 15
    rr = np.clip(np.rint(2 * np.diff(lg[:-1])), -4, 4).astype(np.int64) + 4  # ratios of IOIs, not the last note
    k = np.zeros(len(p) - n, np.int64)
    for j in range(n - 1):
        k = k * 31 + iv[j: j + len(k)]
        k = k * 9 + rr[j: j + len(k)]
    return k, lg


def estimate_shift(q_pitch: np.ndarray, q_ioi: np.ndarray, r_pitch: np.ndarray, r_ioi: np.ndarray, *,
                   n: int = 3, top: int = 2, diagonal: int = 0) -> list[tuple[int, float]]:
    """The most supported ``(transposition, tempo_ratio)`` pairs that map query onto reference.

    Every run of ``n`` notes is keyed by its intervals and inter-onset ratios (both invariant to
    transposition and tempo); each key shared by query and reference votes for the pitch
    difference and the IOI ratio (in twelfths of an octave) of that pair of runs -- the
    geometric hashing of fingerprinting, here to find a lifted passage's key and pace when the
    window hits around it are too few to say. ``transposition`` is added to the query,
    ``tempo_ratio`` is reference IOI / query IOI, as :func:`align_notes` takes them.
    :func:`estimate_shift_sides` does the same for prepared sides (3-note figures).

    With ``diagonal`` > 0 the votes must also agree on where the passage lies: each pair of
    runs votes for its code in the band of note offsets ``(j - i) // diagonal`` and in both
    neighbouring bands, and a code counts the votes of its best band -- the diagonal of
    audio fingerprinting. A copied passage puts its figures on one diagonal (ornaments and
    dropped notes move it by a note or two); figures a long query shares with the reference by
    chance scatter over many, and without the band they can outvote a short lifted phrase.
    """
    qp, rp = np.asarray(q_pitch, np.int64), np.asarray(r_pitch, np.int64)
    if len(qp) < n + 1 or len(rp) < n + 1:
        return []
    kq, ql = shift_keys(qp, q_ioi, n=n)
    kr, rl = shift_keys(rp, r_ioi, n=n)
    order = np.argsort(kr, kind="stable")
    return _vote_shifts(qp, kq, ql, rp, kr[order], order, rl, top=top, diagonal=diagonal)


def estimate_shift_sides(q: Side, r: Side, *, top: int = 2, diagonal: int = 0) -> list[tuple[int, float]]:
    """:func:`estimate_shift` (3-note figures) of two prepared sides: the same pairs (none when
    either is too short to have a figure)."""
    return _vote_shifts(q.pitch, q.keys, q.log_ioi, r.pitch, r.keys_sorted, r.keys_order, r.log_ioi, top=top,
                        diagonal=diagonal)


def _vote_shifts(qp: np.ndarray, kq: np.ndarray, ql: np.ndarray, rp: np.ndarray, kr_sorted: np.ndarray,
                 order: np.ndarray, rl: np.ndarray, *, top: int, diagonal: int = 0) -> list[tuple[int, float]]:
    if diagonal > 0:
        best = _vote_diagonal_kernel(qp, kq, ql, rp, kr_sorted, order, rl, top, diagonal)
    else:
        best = _vote_kernel(qp, kq, ql, rp, kr_sorted, order, rl, top)
    return [(int(b // 1000 - 128), float(2.0 ** ((b % 1000 - 500) / 12.0))) for b in best.tolist()]


@njit(cache=True)
def _pair_codes(qp, kq, ql, rp, kr_sorted, order, rl):  # pragma: no cover - numba
    """Every pair of equal figure keys (query run ``i``, reference run ``j``): its (transposition,
    tempo ratio in twelfths of an octave) code and its note offset ``j - i``, in query order."""
    lo = np.searchsorted(kr_sorted, kq, "left")
    hi = np.searchsorted(kr_sorted, kq, "right")
    n = 0
    for i in range(kq.size):
        n += hi[i] - lo[i]
    codes = np.empty(n, np.int64)
    offsets = np.empty(n, np.int64)
    m = 0
    for i in range(kq.size):
        for a in range(lo[i], hi[i]):
            j = order[a]
            lr = np.int64(np.rint(12.0 * (rl[j] - ql[i])))
            codes[m] = (rp[j] - qp[i] + 128) * 1000 + (lr + 500)
            offsets[m] = j - i
            m += 1
    return codes, offsets


@njit(cache=True)
def _vote_kernel(qp, kq, ql, rp, kr_sorted, order, rl, top):  # pragma: no cover - numba
    """Every pair of equal figure keys votes for its (transposition, tempo ratio in twelfths of
    an octave) code; the ``top`` codes with the most votes, ties to the smaller code."""
    codes, _ = _pair_codes(qp, kq, ql, rp, kr_sorted, order, rl)
    n = codes.size
    if n == 0:
        return codes
    codes.sort()
    # runs of equal codes, in ascending order; the stable order of -count keeps ties ascending
    u = np.empty(n, np.int64)
    c = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        if i == 0 or codes[i] != codes[i - 1]:
            u[k] = codes[i]
            c[k] = 1
            k += 1
        else:
            c[k - 1] += 1
    o = np.argsort(-c[:k], kind="mergesort")
    return u[:k][o[:top]]


@njit(cache=True)
def _vote_diagonal_kernel(qp, kq, ql, rp, kr_sorted, order, rl, top, band):  # pragma: no cover - numba
    """:func:`_vote_kernel` with the votes kept apart by diagonal: each pair of equal figure keys
    (query run ``i``, reference run ``j``) votes for its (transposition, tempo) code in the band
    ``(j - i) // band`` and in both neighbours; a code's count is that of its best band. The
    ``top`` codes with the highest counts, ties to the smaller code."""
    pair, offsets = _pair_codes(qp, kq, ql, rp, kr_sorted, order, rl)
    n = pair.size
    if n == 0:
        return pair
    codes = np.empty(3 * n, np.int64)
    for m in range(n):
        d = np.int64(np.floor(offsets[m] / band)) + (1 << 30)
        for db in range(-1, 2):
            codes[3 * m + db + 1] = (pair[m] << 32) + d + db
    codes.sort()
    # per (code, band) run: its count; per code (runs of a code are adjacent): the best band's
    u = np.empty(3 * n, np.int64)
    c = np.empty(3 * n, np.int64)
    k = 0
    run = 0
    for i in range(3 * n):
        run += 1
        if i == 3 * n - 1 or codes[i + 1] != codes[i]:
            code = codes[i] >> 32
            if k > 0 and u[k - 1] == code:
                if run > c[k - 1]:
                    c[k - 1] = run
            else:
                u[k] = code
                c[k] = run
                k += 1
            run = 0
    o = np.argsort(-c[:k], kind="mergesort")
    return u[:k][o[:top]]
