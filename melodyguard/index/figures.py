"""An inverted index of 3-note figures: a second source of candidates for detection.

A short lifted phrase (12-14 notes, ornamented) leaves one or two query windows that a
catalogue work's windows resemble, too few for that work to win the window vote among
thousands. Its 3-note figures (two intervals and two inter-onset ratios, invariant to key and
pace; :func:`melodyguard.align.shift_keys`) still line up: every figure the query shares with a
work votes for one (transposition, tempo ratio, diagonal), as in the geometric hashing of audio
fingerprinting, weighted by how rare the figure is (log of works / works containing it; figures
found in more than ``max_df`` of the works or in more than ``max_works`` works, and in more
than two, do not vote). Common figures vote too, with their small weights: a lifted phrase
of 12-14 notes, ornamented, keeps few rare figures, and its common ones still agree on one
key, pace and diagonal. ``max_works`` bounds the postings a query reads, and so its cost, in
large catalogues.

The index lives in memory beside the FAISS index and is derived from the catalogue's melodies:
per-work figure arrays are kept, so a catalogue change only parses the works added. It is saved
beside the FAISS index (``index/figures.npz`` and a manifest with its format version and
checksum, written atomically), so that a new process does not parse every melody again; a
missing, corrupt or outdated file is ignored and the index rebuilt from SQLite. Work ids are
never reused and melodies never change, so a saved work's figures stay valid; works removed
since are dropped on load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numba import njit

from ..align import note_iois, shift_keys
from ..fingerprint.melody import Melody

__all__ = ["FIGURES_FORMAT_VERSION", "FigureIndex"]

#: Bumped whenever the figure keys (:func:`melodyguard.align.shift_keys`) or the file change.
FIGURES_FORMAT_VERSION = 1

_CODE_WORK = 10**11  # work id * this + (transposition, tempo, diagonal) code

#: Defaults of :meth:`FigureIndex.candidates` (and of detection's ``DetectConfig``).
MAX_DF = 0.2
MAX_WORKS = 5000


class FigureIndex:
    """Sorted postings of every catalogue work's 3-note figures (notes as written)."""

    def __init__(self) -> None:
        #: per work: (figure keys, pitch and log2 IOI of each figure's first note), in note
        #: order; None after :meth:`load` until a change needs it (rebuilt from the postings)
        self._works: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = {}
        self._ids: set[int] = set()
        self._dirty = True
        self._keys = np.zeros(0, np.int64)
        self._work = np.zeros(0, np.int64)
        self._pitch = np.zeros(0, np.int64)
        self._log_ioi = np.zeros(0, np.float64)
        self._pos = np.zeros(0, np.int64)
        self._df_keys = np.zeros(0, np.int64)
        self._df = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def work_ids(self) -> set[int]:
        return set(self._ids)

    def _per_work(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self._works is None:  # loaded: regroup the postings by work, in note order
            order = np.lexsort((self._pos, self._work))
            w = self._work[order]
            cuts = np.flatnonzero(np.r_[True, w[1:] != w[:-1], True]) if w.size else np.zeros(0, np.int64)
            works = {wid: (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)) for wid in self._ids}
            for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
                idx = order[lo:hi]
                works[int(w[lo])] = (self._keys[idx], self._pitch[idx], self._log_ioi[idx])
            self._works = works
        return self._works

    def add(self, items: Iterable[tuple[int, Melody]]) -> None:
        works = self._per_work()
        for wid, m in items:
            ioi = note_iois(m.onsets_beats, m.durations_beats)
            k, lg = shift_keys(m.pitches, ioi)
            n = len(k)
            works[int(wid)] = (k, np.asarray(m.pitches[:n], np.int64), lg[:n])
            self._ids.add(int(wid))
            self._dirty = True

    def remove(self, work_ids: Iterable[int]) -> None:
        gone = {int(w) for w in work_ids} & self._ids
        if not gone:
            return
        works = self._per_work()
        for w in gone:
            works.pop(w, None)
        self._ids -= gone
        self._dirty = True

    def save(self, folder: Path) -> None:
        """Write the postings to ``folder/figures.npz`` and its manifest atomically (temp
        files, then rename), so that loading needs neither parsing nor sorting."""
        from .vectors import save_with_manifest

        self._build()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, work_ids=np.asarray(sorted(self._ids), np.int64), keys=self._keys, work=self._work,
                         pitch=self._pitch, log_ioi=self._log_ioi, pos=self._pos, df_keys=self._df_keys, df=self._df)

        save_with_manifest(folder, "figures.npz", "figures.manifest.json", write,
                           lambda digest: {"format_version": FIGURES_FORMAT_VERSION, "works": len(self._ids),
                                           "sha256": digest})

    @classmethod
    def load(cls, folder: Path) -> FigureIndex | None:
        """The index saved in ``folder``, or None when it is missing, corrupt or of another format."""
        from ..model.encoder import sha256_file

        try:
            manifest = json.loads((folder / "figures.manifest.json").read_text())
            if manifest.get("format_version") != FIGURES_FORMAT_VERSION:
                return None
            if sha256_file(folder / "figures.npz") != manifest.get("sha256"):
                return None  # corrupt, or a writer replaced it between our two reads
            with np.load(folder / "figures.npz") as z:
                arrays = {k: z[k] for k in ("work_ids", "keys", "work", "pitch", "log_ioi", "pos", "df_keys", "df")}
        except (OSError, ValueError, KeyError):
            return None
        n = len(arrays["keys"])
        if any(len(arrays[k]) != n for k in ("work", "pitch", "log_ioi", "pos")) or len(arrays["df"]) != len(arrays["df_keys"]):
            return None
        out = cls()
        out._ids = {int(w) for w in arrays["work_ids"].tolist()}
        out._works = None
        out._keys, out._work, out._pitch = arrays["keys"], arrays["work"], arrays["pitch"]
        out._log_ioi, out._pos = arrays["log_ioi"], arrays["pos"]
        out._df_keys, out._df = arrays["df_keys"], arrays["df"]
        out._dirty = False
        return out

    def _build(self) -> None:
        if not self._dirty:
            return
        parts = [(w, k, p, lg) for w, (k, p, lg) in self._per_work().items() if len(k)]
        if parts:
            keys = np.concatenate([k for _, k, _, _ in parts])
            order = np.argsort(keys, kind="stable")
            self._keys = keys[order]
            self._work = np.concatenate([np.full(len(k), w, np.int64) for w, k, _, _ in parts])[order]
            self._pitch = np.concatenate([p for _, _, p, _ in parts])[order]
            self._log_ioi = np.concatenate([lg for _, _, _, lg in parts])[order]
            self._pos = np.concatenate([np.arange(len(k), dtype=np.int64) for _, k, _, _ in parts])[order]
            # document frequency: the number of works containing each figure
            pairs = np.unique(np.stack([self._keys, self._work], 1), axis=0)
            self._df_keys, self._df = np.unique(pairs[:, 0], return_counts=True)
        else:
            self._keys = self._work = self._pitch = self._pos = self._df_keys = self._df = np.zeros(0, np.int64)
            self._log_ioi = np.zeros(0, np.float64)
        self._dirty = False

    def candidates(
        self,
        melody: Melody,
        *,
        top: int = 5,
        max_df: float = MAX_DF,
        max_works: int = MAX_WORKS,
        offset_bin: int = 8,
        exclude: Iterable[int] = (),
    ) -> list[int]:
        """The ``top`` works whose shared figures best agree on one key, pace and offset."""
        self._build()
        n_works = len(self._ids)
        if top < 1 or n_works == 0:
            return []
        ioi = note_iois(melody.onsets_beats, melody.durations_beats)
        qk, qlg = shift_keys(melody.pitches, ioi)
        if not len(qk):
            return []
        qp = np.asarray(melody.pitches, np.int64)
        lo = np.searchsorted(self._keys, qk, "left")
        hi = np.searchsorted(self._keys, qk, "right")
        di = np.searchsorted(self._df_keys, qk)
        df = np.where(hi > lo, self._df[np.minimum(di, len(self._df) - 1)], 0)
        # small catalogues: figures of 1-2 works always vote
        use = (hi > lo) & (df <= max(min(max_df * n_works, max_works), 2))
        if not use.any():
            return []
        qi = np.flatnonzero(use)
        weight = np.log(n_works / df[qi])
        works, best = _figure_votes(qi, lo[qi], hi[qi], weight, qp, qlg, self._pitch, self._log_ioi, self._pos,
                                    self._work, offset_bin)
        return _best_works(works, best, top=top, exclude=exclude)


@njit(cache=True)
def _figure_votes(qi, lo, hi, weight, qp, qlg, pitch, log_ioi, pos, work, offset_bin):  # pragma: no cover - numba
    """Each work's best vote: every posting ``lo[i]..hi[i]`` of query figure ``qi[i]`` votes
    ``weight[i]`` for its work's (transposition, tempo ratio in twelfths of an octave, diagonal
    band) code; the votes of a code are summed in posting order, and a work's vote is its best
    code's. Returns the voted works, ascending, and their votes."""
    n = 0
    for i in range(qi.size):
        n += hi[i] - lo[i]
    code = np.empty(n, np.int64)
    wk = np.empty(n, np.int64)
    wt = np.empty(n, np.float64)
    n_ids = 0
    m = 0
    for i in range(qi.size):
        q = qi[i]
        for a in range(lo[i], hi[i]):
            lr = np.int64(np.rint(12 * (log_ioi[a] - qlg[q])))
            dg = (pos[a] - q) // offset_bin
            code[m] = work[a] * _CODE_WORK + (pitch[a] - qp[q] + 128) * 10_000_000 + (lr + 500) * 10_000 + (dg + 5_000)
            wk[m] = work[a]
            wt[m] = weight[i]
            n_ids = max(n_ids, work[a] + 1)
            m += 1
    # A stable counting sort by work, then a stable sort of each work's codes: the order of a
    # stable sort of all postings by code, at a fraction of its cost.
    start = np.zeros(n_ids + 1, np.int64)
    for a in range(n):
        start[wk[a] + 1] += 1
    for w in range(n_ids):
        start[w + 1] += start[w]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for a in range(n):
        w = wk[a]
        order[fill[w]] = a
        fill[w] += 1
    works = np.empty(n, np.int64)
    best = np.empty(n, np.float64)
    k = 0
    for w in range(n_ids):
        s, e = start[w], start[w + 1]
        if s == e:
            continue
        if e - s > 32:  # a long work: a stable sort of its postings by code
            seg = order[s:e].copy()
            order[s:e] = seg[np.argsort(code[seg], kind="mergesort")]
        else:
            for x in range(s + 1, e):  # few postings: insertion sort by code (stable)
                y = order[x]
                z = x
                while z > s and code[order[z - 1]] > code[y]:
                    order[z] = order[z - 1]
                    z -= 1
                order[z] = y
        top = -np.inf
        j = s
        while j < e:
            c = code[order[j]]
            tot = 0.0
            while j < e and code[order[j]] == c:
                tot += wt[order[j]]
                j += 1
            top = max(top, tot)
        works[k] = w
        best[k] = top
        k += 1
    return works[:k], best[:k]


def _best_works(works: np.ndarray, tot: np.ndarray, *, top: int, exclude: Iterable[int]) -> list[int]:
    """The ``top`` works outside ``exclude`` by their best vote: ``works`` ascending (one entry
    per voted code, a work's codes together), ``tot`` each code's votes. Most votes first; equal
    votes keep the lower work id first. Only the works that can make the top are sorted."""
    if top < 1 or not works.size:
        return []
    starts = np.flatnonzero(np.r_[True, works[1:] != works[:-1]])
    works, tot = works[starts], np.maximum.reduceat(tot, starts)
    skip = np.fromiter((int(x) for x in exclude), np.int64)
    if skip.size:
        keep = ~np.isin(works, skip)
        works, tot = works[keep], tot[keep]
    if works.size > top:
        kth = np.partition(tot, works.size - top)[works.size - top]
        works, tot = works[tot >= kth], tot[tot >= kth]  # ties at the cut included
    return [int(w) for w in works[np.argsort(-tot, kind="stable")][:top].tolist()]
