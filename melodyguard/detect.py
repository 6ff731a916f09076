"""Detection: query windows -> k-NN -> temporal voting -> note alignment -> calibrated score -> verdict.

Conventions
-----------
1. **Search.** Every window of the query (hop 1) is embedded and its ``k`` nearest catalogue
   windows are fetched (cosine similarity). Hits under ``min_sim`` are dropped.
2. **Temporal voting.** Each hit votes for ``(work, offset)`` where offset = reference start
   note - query start note, binned by ``offset_bin`` notes (and the neighbouring bins, so that
   ornaments and dropped notes, which shift the offset, still agree) -- the diagonal voting of
   audio fingerprinting. A query window that hits many works at once is stock material and
   its vote is divided by the square root of that number. The best-voted works are candidates,
   and so are the ``figure_candidates`` works whose shared 3-note figures best agree on one
   key, pace and diagonal (:mod:`melodyguard.index.figures`): a short lifted phrase leaves
   too few window hits to win the vote.
3. **Verification.** Each candidate's melody is aligned note by note with the query
   (:func:`melodyguard.align.align_notes`), at the transpositions and tempo ratio the hits
   agree on, and at the one that the 3-note figures shared by query and candidate vote for
   on their best diagonal (:func:`melodyguard.align.estimate_shift` with ``diagonal`` =
   ``shift_diagonal``; a lifted phrase re-paced to its new song gives too few window hits to
   say, and figures a long query shares with the candidate by chance scatter over diagonals).
   An ornament that takes part of its principal note's time is matched as that note (see
   :mod:`melodyguard.align`). Only candidates that can still be
   among the reported matches are aligned with traceback: the score at the best shift bounds
   the final E-value from below. The alignment gives the matched passage(s). Audio queries are
   also aligned with repeated notes joined on both sides (``matched_as: repeats_joined``).
4. **Score.** Local alignment scores of unrelated melodies follow an extreme-value (Gumbel)
   law, as in BLAST. With ``lambda`` and ``K`` fitted on unrelated training-split melodies
   (``scripts/calibrate.py``, stored in ``calibration.json``), the **E-value** of a score S is
   ``E = K m N exp(-lambda S)``: the number of matches this good expected by chance when a
   query of m notes is compared with a catalogue of N notes. ``p_chance = 1 - exp(-E)``.
   Stock material counts for less: when other works match the same query passage as well as
   this one, E is multiplied by ``1 + similar_works / stock_divisor``. A catalogue whose style
   makes chance matches more often than the shipped law expects can carry its own law, fitted
   on its works played backwards (:mod:`melodyguard.decoys`, ``melodyguard calibrate``): every
   E-value is then multiplied by its factor (>= 1), and the report's ``catalogue.law`` says so.
5. **Verdict.** ``block`` when the best match has E <= ``block_evalue``, ``review`` when
   E <= ``review_evalue``, else ``clear``. A match also needs ``min_matched_notes`` notes of
   equal pitch in its passage.
6. **Report.** At most ``max_matches`` matches, best first. Every copied passage of the query
   gets its best source among them: a flagged match that shows ``min_matched_notes`` query
   notes no better flagged match shows is reported before the runners-up of another passage
   (:func:`select_matches`). A hummed-in folk tune has many variants in a folk catalogue, and
   without this they would fill the report and hide a second, shorter copied passage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .align import (
    DEFAULT_SCORING,
    Scoring,
    Side,
    align_sides,
    best_scores_sides,
    estimate_shift_sides,
    note_iois,
    prepare_notes,
)
from .augment import change_mode, estimate_key
from .config import DEFAULT_MIN_NOTES
from .decoys import catalogue_law, law_summary
from .errors import InvalidInputError, MelodyTooShortError
from .fingerprint.melody import Melody, collapse_repeats
from .fingerprint.windows import (
    WindowConfig,
    Windows,
    deletion_windows,
    short_windows,
    window_melody,
)
from .index.figures import MAX_DF as FIGURE_MAX_DF
from .index.figures import MAX_WORKS as FIGURE_MAX_WORKS
from .index.store import require_works

__all__ = ["DetectConfig", "DEFAULT_DETECT", "REPORT_SCHEMA", "TRACK_MODES", "DEFAULT_TRACKS", "LAWS", "Calibration", "load_calibration", "check_melody",
           "query_windows", "select_matches", "check_file", "check_file_lines", "check_tracks", "line_factors"]

REPORT_SCHEMA = "melodyguard.report/1"
#: ``law`` settings of :func:`check_melody`
LAWS = ("catalogue", "shipped")
_CALIBRATION_PATH = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class DetectConfig:
    k: int = 32
    min_sim: float = 0.55
    #: works verified per query, best voted first (one-pass scoring makes each cheap: ~0.3 ms)
    max_candidates: int = 40
    #: works verified besides those, found by shared 3-note figures (0: off)
    figure_candidates: int = 10
    offset_bin: int = 6
    review_evalue: float = 1e-4
    block_evalue: float = 1e-8
    min_matched_notes: int = 8
    max_segments: int = 3
    stock_divisor: float = 10.0
    max_matches: int = 5
    #: Query windows cut to this many notes (0: none) are searched besides full windows.
    short_window: int = 10
    #: Queries of at most this many notes (0: none, the default) also search each full window
    #: with one short note deleted (:func:`~melodyguard.fingerprint.windows.deletion_windows`):
    #: the ornaments and passing notes a copy adds. About 9 more windows to embed per window.
    #: Measured (docs/benchmarks.md): a window's nearest neighbour is its source 6 points more
    #: often at medium edits, but whole and partial copies and short excerpts are found as
    #: often as without, for 8 ms more per query at 9.4k works; so it is off by default.
    deletion_max_notes: int = 0
    #: a note is short for that when its inter-onset interval is at most this share of its
    #: window's median
    deletion_short: float = 0.75
    #: Also align at the (transposition, tempo) that the candidate's shared 3-note figures vote for.
    shift_hashing: bool = True
    #: Figures vote in bands of this many notes of offset (the diagonal; 0: one band for all).
    shift_diagonal: int = 6
    #: figures found in more than this share of the works, or in more than ``figure_max_works``
    #: works, do not vote for candidates (the second bounds a query's cost in large catalogues)
    figure_max_df: float = FIGURE_MAX_DF
    figure_max_works: int = FIGURE_MAX_WORKS
    #: Also align each candidate in its other mode (major <-> minor in its estimated key,
    #: :func:`melodyguard.augment.change_mode`), since a copy may change the mode. The share of
    #: the false-alarm budget that hypothesis gets (0: off): a weighted Bonferroni correction,
    #: E = min(E_same / (1 - w), E_other / w).
    other_mode_weight: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.block_evalue <= self.review_evalue:
            raise InvalidInputError(
                f"thresholds must satisfy 0 < block_evalue <= review_evalue; got {self.block_evalue}, {self.review_evalue}"
            )
        if self.k < 1 or self.max_candidates < 1:
            raise InvalidInputError("k and max_candidates must be >= 1")
        if self.figure_candidates < 0 or self.shift_diagonal < 0 or self.figure_max_works < 1:
            raise InvalidInputError("figure_candidates and shift_diagonal must be >= 0, figure_max_works >= 1")
        if self.deletion_max_notes < 0 or not 0 < self.deletion_short <= 1:
            raise InvalidInputError("deletion_max_notes must be >= 0 and deletion_short in (0, 1]")
        if not 0 <= self.other_mode_weight < 1:
            raise InvalidInputError(f"other_mode_weight must be in [0, 1); got {self.other_mode_weight}")
        if not 0 < self.figure_max_df <= 1:
            raise InvalidInputError(f"figure_max_df must be in (0, 1]; got {self.figure_max_df}")


DEFAULT_DETECT = DetectConfig()


@dataclass(frozen=True)
class Calibration:
    lam: float
    K: float
    info: dict[str, Any]

    @cached_property
    def scoring(self) -> Scoring:
        d = self.info.get("scoring")
        # A law fitted before pedal figures were weighed down, or before two-note spans
        # counted, was fitted without them.
        if not d:
            return DEFAULT_SCORING
        return Scoring(**{"pedal_floor": 1.0, "rhythm_span": d.get("rhythm_miss", Scoring.rhythm_miss), **d})

    def evalue(self, score: float, m: int, n: int, *, collapsed: bool = False) -> float:
        """Expected number of chance alignments scoring >= ``score`` between ``m`` query notes
        and ``n`` catalogue notes. ``collapsed`` uses the law fitted on repeat-collapsed
        melodies (audio queries), whose chance scores run higher."""
        lam, K = self.lam, self.K
        c = self.info.get("collapsed")
        if collapsed and c:
            lam, K = float(c["lambda"]), float(c["K"])
        return float(K * max(m, 1) * max(n, 1) * np.exp(-lam * score))


_CAL: Calibration | None = None


def load_calibration(path: Path | None = None) -> Calibration:
    global _CAL
    if path is None and _CAL is not None:
        return _CAL
    env = os.environ.get("MELODYGUARD_CALIBRATION")
    p = path or (Path(env) if env else _CALIBRATION_PATH)
    if p.is_file():
        d = json.loads(p.read_text())
        cal = Calibration(float(d["lambda"]), float(d["K"]), d)
    else:  # uncalibrated fallback, stated in every report
        cal = Calibration(0.5, 0.05, {"uncalibrated": True})
    if path is None:
        _CAL = cal
    return cal


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    if not x.size:
        return 1.0
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][np.searchsorted(c, c[-1] / 2.0)])


def _span(m: Melody, idx: np.ndarray) -> dict[str, Any]:
    a, b = int(idx.min()), int(idx.max())
    return {
        "start_note": a,
        "end_note": b,
        "bars": [int(m.bars[a]), int(m.bars[b])],
        "beats": [round(float(m.onsets_beats[a]), 3), round(float(m.onsets_beats[b] + m.durations_beats[b]), 3)],
        "seconds": [round(float(m.onsets_seconds[a]), 3), round(float(m.onsets_seconds[b] + m.durations_seconds[b]), 3)],
    }


def query_windows(views: list[tuple[Melody, np.ndarray]], *, length: int,
                  config: DetectConfig = DEFAULT_DETECT) -> tuple[Windows, np.ndarray, np.ndarray]:
    """The windows a check searches for its query, as ``(windows, view, parent)``.

    ``views`` are the query's forms (the notes as given first; for audio also the
    repeat-collapsed form). Each view gives its full windows and windows cut to
    ``config.short_window`` notes; a query of at most ``config.deletion_max_notes`` notes also
    gives each full window's deletion variants (:func:`deletion_windows`). ``view`` is each
    row's view; ``parent`` is the row of the window it stands for: itself, or the window a
    deletion variant varies.
    """
    parts, qview_parts, parent_parts = [], [], []
    wcfg = WindowConfig(length=length, hop=1)
    n_rows = 0
    for v, (vm, _) in enumerate(views):
        if v and len(vm) < wcfg.min_notes:
            continue
        vp = [window_melody(vm, config=wcfg)]
        if config.short_window and len(vm) > config.short_window:
            vp.append(short_windows(vm, length=wcfg.length, n_notes=config.short_window))
        n_own = sum(len(x) for x in vp)
        vparent = [np.arange(n_rows, n_rows + n_own)]
        if v == 0 and len(vm) <= config.deletion_max_notes:
            dw, dparent = deletion_windows(vm, vp[0], length=wcfg.length, short=config.deletion_short)
            vp.append(dw)
            vparent.append(dparent + n_rows)
        n_here = sum(len(x) for x in vp)
        parts += vp
        parent_parts += vparent
        qview_parts.append(np.full(n_here, v, np.int64))
        n_rows += n_here
    return Windows.concat(parts), np.concatenate(qview_parts), np.concatenate(parent_parts)


def check_melody(
    melody: Melody,
    catalogue: Any,
    *,
    config: DetectConfig = DEFAULT_DETECT,
    query_info: dict[str, Any] | None = None,
    exclude_work: int | None = None,
    law: str = "catalogue",
    exclude_works: Iterable[int] = (),
) -> dict[str, Any]:
    """Check one melody against a catalogue and return the JSON report (a dict).

    ``exclude_work`` leaves one work out (used by self-audits), ``exclude_works`` several.
    ``law``: ``"catalogue"`` uses the catalogue's own chance law when one was fitted
    (:mod:`melodyguard.decoys`), else the shipped one; ``"shipped"`` always the shipped one.
    """
    if law not in LAWS:
        raise InvalidInputError(f"law must be one of {LAWS}; got {law!r}")
    t0 = time.perf_counter()
    enc = catalogue.encoder
    n_works = require_works(catalogue)
    index, table = catalogue.index()
    N = max(catalogue.total_notes, 1)
    cal = load_calibration()
    fitted = catalogue_law(catalogue) if law == "catalogue" else None
    # The catalogue's law multiplies every E-value alike (>= 1: it only makes verdicts stricter).
    law_factor = fitted.factor if fitted is not None else 1.0
    # Views of the query: the notes as given; for audio also the repeat-collapsed form, searched
    # against the catalogue's collapsed windows (transcription joins legato repeated notes).
    views: list[tuple[Melody, np.ndarray]] = [(melody, np.arange(len(melody)))]
    if melody.info.get("kind") == "audio":
        views.append(collapse_repeats(melody))
    # Deletion variants stand for their parent window: votes, the best hit per work and the
    # stock-material count are the parent's; the key and pace of a hit are the variant's own.
    qw, qview, qparent = query_windows(views, length=enc.config.window_length, config=config)
    own = qparent == np.arange(qparent.size)
    vectors = enc.embed_tokens(qw.pitch, qw.rhythm)
    t_embed = time.perf_counter()
    sims, vids = index.search(vectors, config.k)
    t_search = time.perf_counter()
    rows = table.rows(vids)
    ok = (rows >= 0) & (sims >= config.min_sim)
    ok &= table.view[np.maximum(rows, 0)] == qview[:, None]
    # Flatten the hits; keep each query window's best hit per work.
    qi_all = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    r_all, s_all = rows.reshape(-1), sims.reshape(-1)
    keep = ok.reshape(-1)
    qi_all, r_all, s_all = qi_all[keep], r_all[keep], s_all[keep]
    w_all = table.work_id[r_all]
    excluded = {int(w) for w in exclude_works} | ({int(exclude_work)} if exclude_work is not None else set())
    if excluded:
        keep = ~np.isin(w_all, np.fromiter(excluded, np.int64, len(excluded)))
        qi_all, r_all, s_all, w_all = qi_all[keep], r_all[keep], s_all[keep], w_all[keep]
    pq_all = qparent[qi_all]
    order = np.lexsort((-s_all, w_all, pq_all))
    qi_all, pq_all, r_all, s_all, w_all = qi_all[order], pq_all[order], r_all[order], s_all[order], w_all[order]
    first = np.ones(qi_all.size, bool)
    first[1:] = (pq_all[1:] != pq_all[:-1]) | (w_all[1:] != w_all[:-1])
    qi_all, pq_all, r_all, s_all, w_all = qi_all[first], pq_all[first], r_all[first], s_all[first], w_all[first]
    # Stock material: how many works a query window hits about as well as its best hit.
    n_q = rows.shape[0]
    top = np.full(n_q, -np.inf)
    np.maximum.at(top, pq_all, s_all)
    close = s_all >= top[pq_all] - 0.03
    n_close = np.bincount(pq_all[close], minlength=n_q)
    weight = 1.0 / np.sqrt(np.maximum(n_close[pq_all], 1))
    off = table.start[r_all] - qw.start[qi_all]
    # Offsets count notes of one view; each view votes in its own band of bins.
    b = np.floor(off / config.offset_bin).astype(np.int64) + 200_000 * table.view[r_all]
    v = (s_all - config.min_sim) * weight
    trans_all = table.ref_pitch[r_all] - qw.ref_pitch[qi_all]
    ratio_all = table.median_ioi[r_all] / np.maximum(qw.median_ioi_beats[qi_all], 1e-6)
    # Sum each work's votes per offset bin (each hit also counts for the neighbouring bins);
    # a work's vote is its best bin's. Ties go to the lower work id and the lower bin.
    keys = np.concatenate([w_all * 1_000_003 + (b + db + 500_000) for db in (-1, 0, 1)])
    uk, inv = np.unique(keys, return_inverse=True)
    tot = np.bincount(inv, weights=np.tile(v, 3)) if uk.size else np.zeros(0)
    uw, ubin = uk // 1_000_003, uk % 1_000_003 - 500_000
    order = np.lexsort((ubin, -tot, uw))  # per work: best bin first
    head = order[np.r_[True, uw[order][1:] != uw[order][:-1]]] if order.size else order
    head = head[np.lexsort((uw[head], -tot[head]))][: config.max_candidates]
    ranked = uw[head].tolist()
    # Each work's hits, in the order above: (transposition, similarity, tempo ratio) rows.
    by_work = np.argsort(w_all, kind="stable")
    w_sorted = w_all[by_work]
    hit_rows = np.stack([trans_all, s_all, ratio_all], 1)

    def work_hits(w: int) -> np.ndarray:
        return by_work[np.searchsorted(w_sorted, w, "left"):np.searchsorted(w_sorted, w, "right")]

    hits: dict[int, np.ndarray] = {}
    for w, best_bin in zip(ranked, ubin[head].tolist()):
        # Transposition and tempo come from the hits of the winning offset (the temporally
        # consistent ones), not from every hit of the work: in a small catalogue a work also
        # collects stray hits at other offsets, whose tempo ratios would skew the estimate.
        mine = work_hits(w)
        sel = mine[np.abs(b[mine] - best_bin) <= 1]
        hits[w] = hit_rows[sel if sel.size else mine]
    if config.figure_candidates and hasattr(catalogue, "figures"):
        # Short lifted phrases leave too few window hits to win the vote; their 3-note figures
        # still agree on one key, pace and offset (melodyguard.index.figures).
        skip = set(ranked) | excluded
        extra = catalogue.figures().candidates(melody, top=config.figure_candidates, exclude=skip,
                                                max_df=config.figure_max_df, max_works=config.figure_max_works)
        ranked += extra
        for w in extra:  # whatever window hits they have (maybe none: then shared figures decide)
            hits[w] = hit_rows[work_hits(w)]
    t_vote = time.perf_counter()

    background = cal.info.get("background")
    scoring = cal.scoring
    q_side = []  # per view: (melody, map to original notes, iois in beats)
    q_prep = []  # per view: its alignment inputs, prepared once for every candidate
    for vm, vmap in views:
        vi, side_v = prepare_notes(vm.pitches, vm.onsets_beats, vm.durations_beats, background=background,
                                   scoring=scoring)
        q_side.append((vm, vmap, vi))
        q_prep.append(side_v)
    # What an unedited copy of the whole query would score here: every note matched, pitch and
    # rhythm, at its own weight. Above the review threshold, hardly any match can flag this query.
    exact_e = cal.evalue(float((scoring.equal + scoring.rhythm_hit) * q_prep[0].weight.sum()), len(melody), N
                         ) * len(q_side) * law_factor
    if hasattr(catalogue, "prefetch"):
        catalogue.prefetch(ranked)
    w_other = config.other_mode_weight
    shifted: list[tuple[Any, ...]] = []  # (E at the best shift, candidate rank, work, ...)
    for rank, w in enumerate(ranked):
        hw = hits[w]
        trans_w: dict[int, float] = defaultdict(float)
        for tr, sv in zip(hw[:, 0].astype(int).tolist(), hw[:, 1].tolist()):
            trans_w[tr] += sv
        transpositions = sorted(trans_w, key=lambda x: -trans_w[x])[:2]
        ratio = _weighted_median(hw[:, 2], hw[:, 1])
        ref = catalogue.melody(w)
        best_e, best_v = np.inf, 0
        # Window medians give a noisy tempo ratio; copies mostly keep the beat (x1) or halve or
        # double it, so the snapped ratio and x1 are tried as well.
        ratios = sorted({round(ratio, 4), 2.0 ** round(math.log2(max(ratio, 1e-6))), 1.0})
        best_ref = ref
        for v, (qm, qmap, q_ioi) in enumerate(q_side):
            # The candidate as it is and, when on, in its other mode; each hypothesis carries its
            # share of the false-alarm budget (weighted Bonferroni). A change of mode keeps the
            # tonic and the pace, so the other mode is scored only at the shift the candidate
            # scored best at as it is, and at its own figure vote.
            same_pair = [(transpositions[0], ratios[0])] if transpositions else []
            for other in (False, True)[: 2 if w_other else 1]:
                r_melody, rm, rmap, r_ioi, r_prep = _reference_side(catalogue, w, ref, v, background, scoring,
                                                                    in_other_mode=other)
                pairs = list(same_pair) if other else [(tr, rt) for tr in transpositions for rt in ratios]
                if config.shift_hashing:
                    pairs += [x for x in estimate_shift_sides(q_prep[v], r_prep, top=1, diagonal=config.shift_diagonal)
                              if x not in pairs]
                # Score every shift in one pass; align (with traceback and further segments) only
                # at the best one -- the same choice as aligning at each, several times cheaper.
                sc = best_scores_sides(q_prep[v], r_prep, shifts=pairs).tolist()
                top_sc = max(sc, default=0.0)
                if top_sc <= 0:
                    continue
                k = sc.index(top_sc)  # the first of equal scores, as before
                if not other:
                    same_pair = [pairs[k]]
                # times the number of views: the smallest of several E-values is corrected for the choice
                e_v = (cal.evalue(top_sc, len(qm), N, collapsed=v > 0) * len(q_side) * law_factor
                       / (w_other if other else 1.0 - w_other))
                if e_v < best_e:
                    best_e, best_v, best_ref = e_v, v, r_melody
                    best_pair = pairs[k]
                    view_notes = (qm, qmap, q_ioi, rm, rmap, r_ioi, q_prep[v], r_prep)
        if np.isfinite(best_e):
            shifted.append((best_e, rank, w, best_ref, best_pair, view_notes, best_v))
    # Align (traceback, further segments) in order of the E-value at the best shift, a lower
    # bound of the final one (stock material and too few equal notes only raise it): once the
    # reported matches are all better than the next bound, no later candidate can displace one.
    # Flagged matches are also aligned for as long as one could still show a passage of the
    # query that no better flagged match covers (see select_matches).
    shifted.sort(key=lambda x: (x[0], x[1]))
    scored: list[tuple[Any, ...]] = []
    flagged_cover = np.zeros(len(melody), bool)
    for best_e, rank, w, ref, best_pair, view_notes, best_v in shifted:
        if len(scored) >= config.max_matches and sorted(x[0] for x in scored)[config.max_matches - 1] < best_e:
            if best_e > config.review_evalue or int((~flagged_cover).sum()) < config.min_matched_notes:
                break
        qm, qmap, q_ioi, rm, rmap, r_ioi, qs, rs = view_notes
        best_al = align_sides(qs, rs, transposition=best_pair[0], tempo_ratio=best_pair[1],
                              max_segments=config.max_segments)
        if not best_al:
            continue
        # Evidence speaks of the notes as given: collapsed-view indices map to each run's first note.
        view_main = best_al[0]
        best_al = [replace(a, query_idx=qmap[a.query_idx], ref_idx=rmap[a.ref_idx]) for a in best_al]
        main = best_al[0]
        n_eq_main = int(((melody.pitches[main.query_idx] + main.transposition) == ref.pitches[main.ref_idx]).sum())
        qa = main.query_idx
        inside = own & (qview == 0) & (qw.start >= qa.min()) & (qw.start <= qa.max())
        similar = max(int(np.median(np.maximum(n_close[inside], 1))) - 1 if inside.any() else 0, 0)
        e = best_e * (1.0 + similar / config.stock_divisor)
        if n_eq_main < config.min_matched_notes:
            e = max(e, law_factor)  # E >= 1 under the shipped law: never flagged, ranked as before
        covered = _query_notes(best_al, melody, ref, min_eq=config.min_matched_notes)
        if e <= config.review_evalue:
            flagged_cover[covered] = True
        scored.append((e, rank, w, ref, best_al, view_main, view_notes, similar, best_v, covered))
    # Only the chosen few are written up (evidence, spans, work records); equal E-values keep the
    # candidates' order.
    scored.sort(key=lambda x: (x[0], x[1]))
    chosen = select_matches([x[0] for x in scored], [x[-1] for x in scored], max_matches=config.max_matches,
                            flag_evalue=config.review_evalue, min_new=config.min_matched_notes)
    matches = [_match_entry(melody, catalogue, x[0], *x[2:-1], config=config) for x in (scored[i] for i in chosen)]
    for m in matches:
        m["verdict"] = _verdict(m["evalue"], config)
        del m["evalue"]
    verdict = matches[0]["verdict"] if matches else "clear"
    t_end = time.perf_counter()
    q = {
        "n_notes": len(melody),
        "duration_seconds": round(melody.duration_seconds, 3),
        "duration_beats": round(melody.duration_beats, 3),
        "exact_copy_evalue": float(f"{min(exact_e, 1e300):.4g}"),
    }
    q.update(query_info or {})
    return {
        "schema": REPORT_SCHEMA,
        "query": q,
        "verdict": verdict,
        "thresholds": {"review_evalue": config.review_evalue, "block_evalue": config.block_evalue},
        "catalogue": {"works": n_works, "notes": N, "encoder": enc.fingerprint, "index": index.manifest.kind,
                      "calibrated": not cal.info.get("uncalibrated", False),
                      "law": law_summary(fitted)},
        "matches": matches,
        "timing_ms": {
            "embed": round(1000 * (t_embed - t0), 2),
            "search": round(1000 * (t_search - t_embed), 2),
            "vote": round(1000 * (t_vote - t_search), 2),
            "verify": round(1000 * (t_end - t_vote), 2),
            "total": round(1000 * (t_end - t0), 2),
        },
    }


def select_matches(evalues: Sequence[float], notes: Sequence[Iterable[Hashable]], *, max_matches: int,
                   flag_evalue: float, min_new: int) -> list[int]:
    """Which of the matches, ordered best first, a report shows: positions, in that order.

    First every flagged match (E-value at most ``flag_evalue``) that shows at least ``min_new``
    query notes (``notes``: the query notes each match covers) which no better flagged match
    shows: each copied passage of the query gets its best source, even when another passage
    has many relatives in the catalogue (variants of one tune) that would fill the report. The
    remaining places go to the best of the rest. At most ``max_matches`` in all. The first
    match is always the best one.
    """
    if len(evalues) != len(notes):
        raise InvalidInputError(f"{len(evalues)} E-values but {len(notes)} note sets")
    if max_matches < 1 or min_new < 1:
        raise InvalidInputError(f"max_matches and min_new must be >= 1; got {max_matches}, {min_new}")
    if not evalues:
        return []
    chosen = [0]
    covered: set[Hashable] = set(notes[0])
    for i in range(1, len(evalues)):
        if evalues[i] > flag_evalue or len(chosen) == max_matches:
            break
        q = set(notes[i])
        if len(q - covered) >= min_new:
            chosen.append(i)
            covered |= q
    taken = set(chosen)
    rest = [i for i in range(len(evalues)) if i not in taken]
    return sorted(chosen + rest[: max_matches - len(chosen)])


def _query_notes(alignments: list[Any], melody: Melody, ref: Melody, *, min_eq: int) -> np.ndarray:
    """The query notes a match shows: its main passage and each further one with ``min_eq``
    notes of equal pitch (as the report's segments)."""
    keep = [a.query_idx for k, a in enumerate(alignments)
            if k == 0 or int(((melody.pitches[a.query_idx] + a.transposition) == ref.pitches[a.ref_idx]).sum()) >= min_eq]
    return np.unique(np.concatenate(keep))


def other_mode(m: Melody) -> Melody:
    """The melody in its other mode (:func:`melodyguard.augment.change_mode`), its key noted in
    ``info["key"]`` (as estimated, e.g. ``"A minor"``) and ``info["other_mode"]``."""
    notes = (m.pitches, m.onsets_beats, m.durations_beats)
    tonic, mode = estimate_key(notes)
    name = f"{PITCH_CLASSES[tonic]} {mode}"
    return replace(m, pitches=change_mode(notes, key=(tonic, mode))[0].astype(m.pitches.dtype),
                   info={**m.info, "key": name, "other_mode": f"{PITCH_CLASSES[tonic]} {OTHER[mode]}"})


PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
OTHER = {"major": "minor", "minor": "major"}


def _reference_side(catalogue: Any, w: int, ref: Melody, view: int, background: Any, scoring: Scoring, *,
                    in_other_mode: bool = False) -> tuple[Melody, Melody, np.ndarray, np.ndarray, Side]:
    """A candidate's notes in one view (the notes, or their repeat-collapsed form), with the map
    to its notes, IOIs and prepared alignment inputs (note weights included); with
    ``in_other_mode`` all of it for the candidate in its other mode (:func:`other_mode`), whose
    notes come first. Kept by the catalogue (:meth:`Catalogue.derived`) so that a work verified
    again is not prepared again."""

    def make(m: Melody) -> tuple[Melody, Melody, np.ndarray, np.ndarray, Side]:
        if in_other_mode:
            m = other_mode(m)
        rm, rmap = (m, np.arange(len(m))) if view == 0 else collapse_repeats(m)
        r_ioi, side = prepare_notes(rm.pitches, rm.onsets_beats, rm.durations_beats, background=background,
                                    scoring=scoring)
        return m, rm, rmap, r_ioi, side

    if not hasattr(catalogue, "derived"):
        return make(ref)
    side = catalogue.derived(w, ("verify", view, id(background), in_other_mode), make)
    kept = side[4].scoring
    return side if kept is scoring or kept == scoring else make(ref)  # another calibration's: not reused


def _match_entry(melody: Melody, catalogue: Any, e: float, w: int, ref: Melody, best_al: list[Any], view_main: Any,
                 view_notes: tuple[Any, ...], similar: int, best_v: int, *, config: DetectConfig) -> dict[str, Any]:
    """The report of one match: ``best_al`` in the notes as given, ``view_main`` the main
    alignment in the view it was found in (for the tempo)."""
    qm, _, q_ioi, rm, _, r_ioi, _, _ = view_notes
    tempo_sec = float(np.median(note_iois(rm.onsets_seconds, rm.durations_seconds)[view_main.ref_idx]
                                / note_iois(qm.onsets_seconds, qm.durations_seconds)[view_main.query_idx]))
    beat_ratio = float(np.median(r_ioi[view_main.ref_idx] / q_ioi[view_main.query_idx]))
    segs: list[dict[str, Any]] = []
    total_score = 0.0
    q_cov = np.zeros(len(melody), bool)
    r_cov = np.zeros(len(ref), bool)
    for a in best_al:
        n_eq = int(((melody.pitches[a.query_idx] + a.transposition) == ref.pitches[a.ref_idx]).sum())
        if n_eq < config.min_matched_notes and segs:
            continue
        total_score += a.score
        q_cov[a.query_idx.min(): a.query_idx.max() + 1] = True
        r_cov[a.ref_idx.min(): a.ref_idx.max() + 1] = True
        segs.append({
            "query": _span(melody, a.query_idx),
            "reference": _span(ref, a.ref_idx),
            "matched_notes": n_eq,
            "aligned_notes": int(a.n_pairs),
            "alignment_score": round(a.score, 3),
            "pairs": [[int(i), int(j)] for i, j in zip(a.query_idx, a.ref_idx)],
        })
    main = best_al[0]
    work = catalogue.get(w)
    return {
        "work": {**work.public(), "private": False} if not work.private else
                {"id": work.id, "external_id": None, "title": "(private work)", "owner": work.owner, "private": True},
        "evalue": e,
        "score": {
            **_chance(e),
            "alignment_score": round(main.score, 3),
            "total_alignment_score": round(total_score, 3),
        },
        "transposition_semitones": int(-main.transposition),
        "tempo_ratio": round(tempo_sec, 3),
        "beat_ratio": round(beat_ratio, 3),
        "segments": segs,
        "coverage": {"query": round(float(q_cov.mean()), 3), "reference": round(float(r_cov.mean()), 3)},
        "stock": {"similar_works": similar, "is_stock": similar >= 3},
        # "repeats_joined": matched with runs of repeated notes joined on both sides (audio).
        "matched_as": "repeats_joined" if best_v else "notes",
        # Matched against the reference in its other mode: its key as estimated, and the mode
        # the copy's notes are in (matched_notes count equal pitches in that mode).
        **({"other_mode": {"reference_key": ref.info["key"], "matched_in": ref.info["other_mode"]}}
           if "other_mode" in ref.info else {}),
    }


def _chance(e: float) -> dict[str, float]:
    """A report's E-value and the probability of at least one such match by chance (4 digits)."""
    return {"evalue": float(f"{e:.4g}"), "p_chance": float(f"{-np.expm1(-e):.4g}")}


def _verdict(e: float, config: DetectConfig) -> str:
    if e <= config.block_evalue:
        return "block"
    if e <= config.review_evalue:
        return "review"
    return "clear"


#: ``tracks`` settings of :func:`check_file`: the melody line only, or every pitched line
TRACK_MODES = ("melody", "all")
#: what check_file, audits and the API check in a MIDI file unless told otherwise
DEFAULT_TRACKS = "all"
#: most lines ``tracks="all"`` checks (the best-scored melody candidates first)
MAX_TRACKS = 8
#: share of a file's false-alarm budget given to the line the heuristics call the melody when
#: every line is checked (the other lines share the rest); see :func:`line_factors`
MELODY_SHARE = 0.5


def line_factors(k: int, *, melody_share: float | None = MELODY_SHARE) -> list[float]:
    """What each line's E-values are multiplied by when ``k`` lines of one file are checked,
    the melody line first: a weighted Bonferroni correction (the weights sum to 1, so the
    chance of any false alarm in the file stays that of one line). ``melody_share=None``: the
    plain correction, k for every line."""
    if k < 1:
        raise InvalidInputError(f"need at least one line; got {k}")
    if k == 1:
        return [1.0]
    if melody_share is None:
        return [float(k)] * k
    if not 0.0 < melody_share < 1.0:
        raise InvalidInputError(f"melody_share must be in (0, 1); got {melody_share}")
    return [1.0 / melody_share] + [(k - 1) / (1.0 - melody_share)] * (k - 1)


def check_file(
    source: str | Path | bytes,
    catalogue: Any,
    *,
    config: DetectConfig = DEFAULT_DETECT,
    filename: str | None = None,
    tracks: str = DEFAULT_TRACKS,
) -> dict[str, Any]:
    """Extract the melody of a file and check it (see :func:`check_melody`).

    ``tracks="all"`` (the default; MIDI only) checks every pitched line of the file (see
    :func:`check_tracks`): a copied tune may sit in an inner voice or a counter-melody.
    ``tracks="melody"`` checks only the line the melody heuristics choose, about 3x faster on a
    six-track song.
    """
    return check_file_lines(source, catalogue, config=config, filename=filename, tracks=tracks)[0]


def check_file_lines(
    source: str | Path | bytes,
    catalogue: Any,
    *,
    config: DetectConfig = DEFAULT_DETECT,
    filename: str | None = None,
    tracks: str = DEFAULT_TRACKS,
) -> tuple[dict[str, Any], dict[int | None, Melody]]:
    """:func:`check_file`, also returning the melody of each line checked (by MIDI track;
    ``None`` for audio), which the evidence pictures need."""
    from .fingerprint import extract_melody, sniff_format
    from .fingerprint.midi import read_source

    if tracks not in TRACK_MODES:
        raise InvalidInputError(f"tracks must be one of {TRACK_MODES}; got {tracks!r}")
    t0 = time.perf_counter()
    data, name = read_source(source)
    name = filename or name
    if tracks == "all" and sniff_format(data) == "midi":
        return check_tracks(data, catalogue, name=name, config=config, t0=t0)
    melody = extract_melody(data, filename=name)
    t_parse = time.perf_counter()
    rep = check_melody(melody, catalogue, config=config, query_info=query_info(melody, data, name))
    rep["timing_ms"]["parse"] = round(1000 * (t_parse - t0), 2)
    return rep, {melody.info.get("track"): melody}


def check_tracks(
    data: bytes,
    catalogue: Any,
    *,
    name: str = "<bytes>",
    config: DetectConfig = DEFAULT_DETECT,
    max_tracks: int = MAX_TRACKS,
    melody_share: float | None = MELODY_SHARE,
    t0: float | None = None,
) -> tuple[dict[str, Any], dict[int | None, Melody]]:
    """Check every pitched line of a MIDI file (its skyline; at most ``max_tracks``, those the
    melody heuristics rank highest) and merge the reports.

    Each match names its ``track``. Checking k lines gives chance k times the opportunities, so
    the E-values are corrected before the verdicts are drawn, and the default thresholds keep
    their meaning per file: a weighted Bonferroni correction, in which the line the heuristics
    call the melody gets ``melody_share`` of the false-alarm budget (its E-values are divided
    by it) and the other k-1 lines share the rest. ``None`` gives every line 1/k (E-values
    multiplied by k). A file of one line gets the single-line report, plus ``tracks_checked``.
    A work matched from several lines is reported
    once, from its best line. The report's ``query`` describes the melody line and lists
    ``tracks_checked``.
    """
    from .fingerprint.midi import midi_candidates

    t0 = time.perf_counter() if t0 is None else t0
    lines = [c for c in midi_candidates(data, filename=name) if len(c.melody) >= DEFAULT_MIN_NOTES][:max_tracks]
    if not lines:  # no line long enough: the single-line path's error says why
        from .fingerprint import extract_melody

        extract_melody(data, filename=name)
        raise MelodyTooShortError(f"{name}: no line has {DEFAULT_MIN_NOTES} notes")
    t_parse = time.perf_counter()
    k = len(lines)
    factors = line_factors(k, melody_share=melody_share)
    reports = []
    melodies: dict[int | None, Melody] = {}
    file_info = query_info(lines[0].melody, data, name)  # name, hash, format: the same for every line
    for c in lines:
        mel = c.melody
        melodies[c.track] = mel
        info = file_info | {"track": c.track, "track_name": c.name}
        reports.append((c, check_melody(mel, catalogue, config=config, query_info=info)))
    best: dict[Any, dict[str, Any]] = {}
    for (c, rep), f in zip(reports, factors):
        for m in rep["matches"]:
            e = min(float(m["score"]["evalue"]) * f, 1e300)
            if k > 1:  # one line: the report is the single-line check's, plus tracks_checked
                m = {**m, "score": {**m["score"], **_chance(e), "lines_checked": k, "evalue_factor": round(f, 4)},
                     "verdict": _verdict(e, config), "track": {"index": c.track, "name": c.name}}
            key = m["work"]["id"] if m["work"]["id"] is not None else id(m)
            if key not in best or e < best[key]["score"]["evalue"]:
                best[key] = m
    ranked = sorted(best.values(), key=lambda m: m["score"]["evalue"])
    # Passages of different lines are different passages of the file.
    shown = [{(m.get("track", {}).get("index"), int(i)) for s in m["segments"] for i, _ in s["pairs"]} for m in ranked]
    matches = [ranked[i] for i in select_matches([m["score"]["evalue"] for m in ranked], shown,
                                                 max_matches=config.max_matches, flag_evalue=config.review_evalue,
                                                 min_new=config.min_matched_notes)]
    head = reports[0][1]
    t_end = time.perf_counter()
    rep = {**head, "matches": matches, "verdict": matches[0]["verdict"] if matches else "clear"}
    # the best any line could do, corrected as its matches are
    exact = min(min(r["query"]["exact_copy_evalue"] * f, 1e300) for (_, r), f in zip(reports, factors))
    rep["query"] = {**head["query"], "exact_copy_evalue": float(f"{exact:.4g}"), "tracks_checked": [
        {"track": c.track, "track_name": c.name, "n_notes": len(c.melody),
         "best_evalue": float(f"{min(r['matches'][0]['score']['evalue'] * f, 1e300):.4g}") if r["matches"] else None}
        for (c, r), f in zip(reports, factors)]}
    rep["timing_ms"] = {"parse": round(1000 * (t_parse - t0), 2), "total": round(1000 * (t_end - t_parse), 2)}
    return rep, melodies


def query_info(melody: Melody, data: bytes, name: str) -> dict[str, Any]:
    """What a report says of its query file: name, hash, and where the melody came from."""
    info: dict[str, Any] = {"path": name, "sha256": hashlib.sha256(data).hexdigest(),
                            "source": melody.info.get("kind", "midi"), "has_beats": melody.has_beats}
    if info["source"] == "audio":
        for k in ("tracker", "tempo_bpm", "duration_seconds", "voiced_fraction", "extract_seconds"):
            info[k] = melody.info.get(k)
    else:
        info.update(track=melody.info.get("track"), track_name=melody.info.get("track_name"))
    return info


def config_dict(config: DetectConfig) -> dict[str, Any]:
    return asdict(config)
