#!/usr/bin/env python
"""melodyguard benchmarks: model quality, detection quality against a baseline, speed.

    python scripts/benchmark.py                      # everything, as in docs/benchmarks.md
    python scripts/benchmark.py --sections model --window-queries 500   # quicker

All quality figures are on the corpus' *held-out* collections (Essen, Aird's Airs, miscFolk),
which the shipped weights never saw. The baseline (brute-force Smith-Waterman over pitch
intervals and duration ratios against every work) is measured in the same run, on the same
queries. Results are printed as Markdown and written to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard.align import (  # noqa: E402
    _sw_intervals,
    align_intervals,
    interval_features,
    is_near_duplicate,
    note_iois,
)
from melodyguard.augment import UNSEEN_EDITS, augment, unseen_edit  # noqa: E402
from melodyguard.config import DEFAULT_MIN_NOTES  # noqa: E402
from melodyguard.corpus import (  # noqa: E402
    DEFAULT_COLLECTIONS,
    HELDOUT_COLLECTIONS,
    STYLE_COLLECTIONS,
    TRAIN_COLLECTIONS,
    list_units,
    load_corpus,
)
from melodyguard.decoys import retrograde  # noqa: E402
from melodyguard.detect import DEFAULT_DETECT, query_windows  # noqa: E402
from melodyguard.fingerprint import Melody  # noqa: E402
from melodyguard.fingerprint.windows import PITCH_PAD, Windows, encode_notes  # noqa: E402
from melodyguard.model.encoder import Encoder, default_weights_path, load_encoder, record_evaluation  # noqa: E402

WHOLE_LEVELS = ("transpose", "tempo", "light", "medium", "heavy")
PARTIAL_LEVELS = ("light", "medium")
#: section "hooks": lengths of the hooks checked alone, and their edits
HOOK_LENGTHS = (8, 10, 12, 16, 20, 24)
HOOK_LEVELS = ("transpose", "light")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def notes_of(m: Melody) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(m.pitches), np.asarray(m.onsets_beats), np.asarray(m.durations_beats)


def to_melody(notes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Melody:
    p, o, d = notes
    return Melody.from_notes(p, o, d)


# ----------------------------------------------------------------------------- model section
#: The opt-in query procedure whose window retrieval is reported beside the encoder's own.
WITH_DELETIONS = dataclasses.replace(DEFAULT_DETECT, deletion_max_notes=10**6)


def interval_notes(m: Melody) -> tuple[np.ndarray, np.ndarray]:
    """A melody as the baseline aligns it: pitches and inter-onset intervals."""
    return np.asarray(m.pitches), note_iois(m.onsets_beats, m.durations_beats)


def baseline_scores(m: Melody, cat_notes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The baseline: Smith-Waterman of ``m`` against every catalogue melody (``interval_notes``)."""
    qp, qi = interval_notes(m)
    return np.array([align_intervals(qp, qi, p, i) for p, i in cat_notes])


def timed_checks(queries: list[dict[str, Any]], cat, stages: dict[str, list[float]], lat: list[float]):
    """Check each query's melody (after one warm-up check), appending its latency to ``lat``
    and its reported stage timings to ``stages``; yields ``(query, report)``."""
    from melodyguard.detect import check_melody

    check_melody(queries[0]["melody"], cat)  # warm-up (numba compile, caches)
    for q in queries:
        t0 = time.perf_counter()
        rep = check_melody(q["melody"], cat)
        lat.append(time.perf_counter() - t0)
        for k, v in rep["timing_ms"].items():
            stages.setdefault(k, []).append(v)
        yield q, rep


@njit(cache=True)
def _sw_windows(qi, qd, wi, wd, wn):  # pragma: no cover - numba
    """The baseline's score (:func:`melodyguard.align.align_intervals`) of one query against
    every window: ``wi``/``wd`` hold each window's intervals and log2 IOI ratios, ``wn`` how
    many of them are real."""
    out = np.zeros(wi.shape[0])
    for k in range(wi.shape[0]):
        n = wn[k]
        if n > 0 and qi.shape[0] > 0:
            out[k] = _sw_intervals(qi, qd, wi[k, :n], wd[k, :n])
    return out


def window_baseline_top1(scores: np.ndarray, hits: np.ndarray) -> float:
    """Probability that the baseline ranks a right window first, ties in a random order."""
    top = scores >= scores.max() - 1e-9
    return float((top & hits).sum() / top.sum())


def model_section(enc: Encoder, tunes: list[Any], *, n_windows: int, n_queries: int, seed: int,
                  baseline_queries: int = 0) -> dict[str, Any]:
    import faiss
    import torch

    rng = np.random.default_rng(seed)
    L = enc.config.window_length
    # All hop-1 windows of the held-out tunes (capped), with their source note ranges.
    p_l: list[np.ndarray] = []
    r_l: list[np.ndarray] = []
    src_l: list[tuple[int, int]] = []
    for ti, t in enumerate(tunes):
        p, o, d = notes_of(t.melody)
        ioi = note_iois(o, d)
        for s in range(0, max(1, len(p) - L + 1)):
            pt, rt, _, _ = encode_notes(p[s:s + L], ioi[s:s + L], length=L)
            p_l.append(pt)
            r_l.append(rt)
            src_l.append((ti, s))
    P, R, src = np.asarray(p_l), np.asarray(r_l), np.asarray(src_l)
    if len(P) > n_windows:
        keep = np.sort(rng.choice(len(P), size=n_windows, replace=False))
        P, R, src = P[keep], R[keep], src[keep]
    out: dict[str, Any] = {"windows_indexed": int(len(P))}

    # Throughput (batched, eval mode).
    t0 = time.perf_counter()
    V = enc.embed_tokens(P, R)
    dt = time.perf_counter() - t0
    out["embed_windows_per_s"] = round(len(P) / dt, 1)

    # Reconstruction from mu (greedy), KL and active dimensions.
    sub = rng.choice(len(P), size=min(5000, len(P)), replace=False)

    def reconstruct(beam: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [enc.reconstruct(P[sub[i:i + 1000]], R[sub[i:i + 1000]], beam=beam) for i in range(0, len(sub), 1000)]
        return np.concatenate([x[0] for x in parts]), np.concatenate([x[1] for x in parts])

    rp, rr = reconstruct(1)
    mask = P[sub] != PITCH_PAD
    out["recon_note_accuracy"] = round(float(((rp == P[sub]) & (rr == R[sub]))[mask].mean()), 4)
    out["recon_pitch_accuracy"] = round(float((rp == P[sub])[mask].mean()), 4)
    out["recon_rhythm_accuracy"] = round(float((rr == R[sub])[mask].mean()), 4)
    # The same windows, each decoded as the most probable window a width-4 beam search finds.
    bp, br = reconstruct(4)
    out["recon_note_accuracy_beam4"] = round(float(((bp == P[sub]) & (br == R[sub]))[mask].mean()), 4)
    with torch.inference_mode():
        mu, logvar = enc.model.encode(torch.from_numpy(P[sub]), torch.from_numpy(R[sub]))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
        out["kl_per_window_nats"] = round(float(kl.sum(1).mean()), 2)
        out["active_dims"] = f"{int((mu.var(0) > 0.01).sum())}/{mu.shape[1]}"

    # Window retrieval: edited held-out windows against all indexed windows, exact search.
    index = faiss.IndexFlatIP(V.shape[1])
    index.add(V)
    qs = rng.choice(len(P), size=min(n_queries, len(P)), replace=False)
    key = P * 16 + R
    # The baseline on the first ``baseline_queries`` queries of each level: brute-force
    # Smith-Waterman (the detection baseline's) of the edited notes against every indexed window.
    nb = min(baseline_queries, len(qs))
    if nb:
        WI = np.zeros((len(P), L - 1))
        WD = np.zeros((len(P), L - 1))
        WN = np.zeros(len(P), dtype=np.int64)
        feats: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # each tune's, once: a window's are a slice
        for k, (ti, s) in enumerate(src):
            if ti not in feats:
                p, o, d = notes_of(tunes[ti].melody)
                feats[ti] = interval_features(p, note_iois(o, d))
            wi, wd = feats[ti][0][s:s + L - 1], feats[ti][1][s:s + L - 1]
            WI[k, :wi.size], WD[k, :wd.size], WN[k] = wi, wd, wi.size
        out["window_baseline_queries"] = nb
    for level in WHOLE_LEVELS:
        QP, QR, QN, checked, owner = [], [], [], [], []
        for j, i in enumerate(qs):
            ti, s = src[i]
            p, o, d = notes_of(tunes[ti].melody)
            seg = (p[s:s + L + 6], o[s:s + L + 6], d[s:s + L + 6])
            q, qo, qd = augment(seg, level, rng=rng)
            n = min(L, q.size)
            q_ioi = note_iois(qo, qd)[:n]
            pt, rt, _, _ = encode_notes(q[:n], q_ioi, length=L)
            QP.append(pt)
            QR.append(rt)
            QN.append(interval_features(q[:n], q_ioi))
            # As a check with deletion variants searches the edited notes (an opt-in setting):
            # their first window and its variants.
            qw, _, parent = query_windows([(to_melody((q, qo, qd)), np.arange(q.size))], length=L,
                                          config=WITH_DELETIONS)
            checked.append(qw.take(parent == 0))
            owner.append(np.full(int((parent == 0).sum()), j))
        QV = enc.embed_tokens(np.asarray(QP), np.asarray(QR))
        _, I = index.search(QV, 1)
        top = I[:, 0]
        # A hit: the original window, or one with identical tokens (repeats inside folk tunes).
        hit = (top == qs) | (key[top] == key[qs]).all(1)
        out[f"window_top1_{level}"] = round(float(hit.mean()), 4)
        # The same queries searched with deletion variants: each window's best hit over its
        # variants (the window alone when no note is short).
        cw, own = Windows.concat(checked), np.concatenate(owner)
        D2, I2 = index.search(enc.embed_tokens(cw.pitch, cw.rhythm), 1)
        best = np.full(len(qs), -np.inf)
        np.maximum.at(best, own, D2[:, 0])
        pick = np.flatnonzero(D2[:, 0] == best[own])
        pick = pick[np.unique(own[pick], return_index=True)[1]]  # the first row of each query's best
        top2 = I2[pick, 0]
        hit2 = (top2 == qs) | (key[top2] == key[qs]).all(1)
        out[f"window_top1_{level}_deletions"] = round(float(hit2.mean()), 4)
        out[f"window_variants_per_query_{level}"] = round(len(cw) / len(qs), 1)
        if nb:
            base = [window_baseline_top1(_sw_windows(qi, qd, WI, WD, WN), (key == key[qs[j]]).all(1))
                    for j, (qi, qd) in enumerate(QN[:nb])]
            out[f"window_top1_{level}_paired"] = round(float(hit[:nb].mean()), 4)
            out[f"window_top1_{level}_baseline"] = round(float(np.mean(base)), 4)
    return out


# ----------------------------------------------------------------------------- detection section
def make_queries(cat_tunes, hosts, *, n: int, rng, decoy_hosts=None) -> list[dict[str, Any]]:
    """Whole and partial copies; with ``decoy_hosts`` also partial copies inserted into decoys
    (kind ``partial, backwards host``), made after the others so those stay the same."""
    queries = []
    src_idx = rng.choice(len(cat_tunes), size=min(n, len(cat_tunes)), replace=False)
    for level in WHOLE_LEVELS:
        for i in src_idx:
            q = augment(notes_of(cat_tunes[i].melody), level, rng=rng)
            if len(q[0]) >= 8:
                queries.append({"kind": "whole", "level": level, "source": int(i), "melody": to_melody(q)})
    queries += _partials(cat_tunes, hosts, src_idx, rng=rng, kind="partial")
    if decoy_hosts is not None:
        queries += _partials(cat_tunes, decoy_hosts, src_idx, rng=rng, kind="partial, backwards host")
    return queries


def _partials(cat_tunes, hosts, src_idx, *, rng, kind: str, levels=PARTIAL_LEVELS,
              edit=lambda notes, level, rng: augment(notes, level, rng=rng)) -> list[dict[str, Any]]:
    """Partial copies: a 12-24-note excerpt of each source, edited by ``edit(notes, level, rng)``
    for each of ``levels``, inserted into a random host."""
    queries = []
    for level in levels:
        for i in src_idx:
            p, o, d = notes_of(cat_tunes[i].melody)
            ln = int(rng.integers(12, 25))
            if len(p) < ln:
                continue
            s = int(rng.integers(0, len(p) - ln + 1))
            ex = edit((p[s:s + ln], o[s:s + ln] - o[s], d[s:s + ln]), level, rng)
            host_tune = hosts[int(rng.integers(len(hosts)))]
            hp, ho, hd = notes_of(host_tune.melody)
            k = int(rng.integers(0, len(hp) + 1))
            # Scale the excerpt to the host's pace so the insert is not given away by tempo.
            scale = float(np.median(note_iois(ho, hd)) / max(np.median(note_iois(ex[1], ex[2])), 1e-6))
            ins_o = ex[1] * scale
            ins_d = ex[2] * scale
            start = ho[k - 1] + hd[k - 1] if k > 0 else 0.0
            span = ins_o[-1] + ins_d[-1]
            P = np.concatenate([hp[:k], ex[0], hp[k:]])
            O = np.concatenate([ho[:k], start + ins_o, ho[k:] + span])
            D = np.concatenate([hd[:k], ins_d, hd[k:]])
            queries.append({"kind": kind, "level": level, "source": int(i), "melody": Melody.from_notes(P, O, D),
                            "excerpt_notes": ln, "excerpt_start": s, "insert_at": k, "insert_len": len(ex[0]), "host": host_tune.key})
    return queries


def insert_excerpts(host: Melody, excerpts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    at: list[int]) -> tuple[Melody, list[tuple[int, int]]]:
    """``host`` with each excerpt (pitches, onsets from 0, durations), paced to the host's median
    inter-onset interval, inserted before host note ``at[i]`` (ascending); also the query notes
    each excerpt became, as ``(start, end)`` ranges."""
    hp, ho, hd = notes_of(host)
    med = float(np.median(note_iois(ho, hd)))
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    spans: list[tuple[int, int]] = []
    shift, prev, n = 0.0, 0, 0
    for (ep, eo, ed), k in zip(excerpts, at):
        pieces.append((hp[prev:k], ho[prev:k] + shift, hd[prev:k]))  # as in _partials: the host's
        n += k - prev                                                # timing, moved by what came in
        scale = med / max(float(np.median(note_iois(eo, ed))), 1e-6)
        start = (ho[k - 1] + hd[k - 1] if k > 0 else 0.0) + shift
        pieces.append((ep, start + eo * scale, ed * scale))
        spans.append((n, n + len(ep)))
        shift += float((eo[-1] + ed[-1]) * scale)
        n += len(ep)
        prev = k
    pieces.append((hp[prev:], ho[prev:] + shift, hd[prev:]))
    P, O, D = (np.concatenate([x[i] for x in pieces]) for i in range(3))
    return Melody.from_notes(P, O, D), spans


def two_phrase_row(cat, cat_tunes, hosts, wid_to_i, baseline, *, kind: str, n: int, baseline_queries: int,
                   rng) -> dict[str, Any]:
    """Queries that copy two 12-24-note phrases (light edits; the whole tune when it is
    shorter) of two catalogue works into one host. Per query: are both sources in the report, and does the report's match of each cover at
    least half of its phrase's notes ("located")? The baseline's counterpart: both sources among
    its five best-scoring works (works scoring the same as the fifth count as in)."""
    from melodyguard.detect import check_melody

    both = located = one = 0
    paired_ours = paired_base = 0
    for qn in range(n):
        src = [int(x) for x in rng.choice(len(cat_tunes), size=2, replace=False)]
        excerpts = []
        for i in src:
            p, o, d = notes_of(cat_tunes[i].melody)
            ln = min(int(rng.integers(12, 25)), len(p))
            s0 = int(rng.integers(0, len(p) - ln + 1))
            excerpts.append(augment((p[s0:s0 + ln], o[s0:s0 + ln] - o[s0], d[s0:s0 + ln]), "light", rng=rng))
        host = hosts[int(rng.integers(len(hosts)))].melody
        at = sorted(int(x) for x in rng.choice(len(host) + 1, size=2, replace=False))
        q, spans = insert_excerpts(host, excerpts, at)
        rep = check_melody(q, cat)
        found = {wid_to_i[m["work"]["id"]]: m for m in rep["matches"]}
        hit = [i in found for i in src]
        where = [i in found and 2 * sum(lo <= a < hi for g in found[i]["segments"] for a, _ in g["pairs"]) >= hi - lo
                 for i, (lo, hi) in zip(src, spans)]
        both += all(hit)
        one += any(hit)
        located += all(where)
        if qn < baseline_queries:
            sc = baseline(q)
            fifth = np.sort(sc)[-5]
            paired_base += all(sc[i] >= fifth for i in src)
            paired_ours += all(hit)
    m = min(n, baseline_queries)
    return {"kind": kind, "level": "light", "queries": n, "both_reported": round(both / n, 4),
            "both_located": round(located / n, 4), "at_least_one_reported": round(one / n, 4),
            "paired_queries": m, "ours_both_reported_paired": round(paired_ours / m, 4),
            "baseline_both_in_top5": round(paired_base / m, 4)}


def drop_near_duplicates(negatives, catalogue_tunes, *, identity: float = 0.8):
    """Negatives minus those that are near-duplicates of a catalogue work.

    The corpora print some tunes several times (variants, the same tune under two titles), so a
    tune outside the catalogue is not always unrelated to it. A negative is dropped when an
    exhaustive interval alignment with some catalogue work reaches ``identity`` of the perfect
    score of the shorter melody (:func:`melodyguard.align.is_near_duplicate`). Both systems are
    scored on the rest.
    """
    cat = [(np.asarray(t.melody.pitches), note_iois(t.melody.onsets_beats, t.melody.durations_beats)) for t in catalogue_tunes]
    kept, dropped = [], 0
    for h in negatives:
        hp, hi = np.asarray(h.melody.pitches), note_iois(h.melody.onsets_beats, h.melody.durations_beats)
        if any(is_near_duplicate(hp, hi, p, i, identity=identity) for p, i in cat):
            dropped += 1
        else:
            kept.append(h)
    return kept, dropped


def _transitions(m: Melody) -> tuple[np.ndarray, np.ndarray]:
    """Per note: the interval to the next note and the ratio of the next IOI to this one (log2,
    in 48ths of an octave), both invariant to key and pace."""
    p = np.asarray(m.pitches, np.int64)
    ioi = note_iois(m.onsets_beats, m.durations_beats)
    return np.diff(p), np.rint(48 * np.diff(np.log2(ioi))).astype(np.int64)


def mark_verbatim_holders(cat_tunes, queries, *, key: int = 4) -> None:
    """Set ``q["holders"]``: the catalogue works (indices) that contain the notes a query copied
    verbatim -- the same intervals and inter-onset ratios, in any key and at any pace. The
    source is one; the others are duplicates of the copied passage that the corpora print
    (the same tune twice, a shared strain). Naming any of them names the copied notes, so the
    ``dups_as_one`` figures count them as one answer. Ground truth from the notes alone, not
    from either system."""
    trans = [_transitions(t.melody) for t in cat_tunes]
    index: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for w, (d, r) in enumerate(trans):
        tok = d * 10_000 + r
        for a in range(len(tok) - key + 1):
            index.setdefault(tuple(tok[a:a + key].tolist()), []).append((w, a))
    for q in queries:
        d, r = trans[q["source"]]
        s = q.get("excerpt_start", 0)
        n = q.get("excerpt_notes", len(d) + 1)
        # intervals of the n-1 steps; IOI ratios of the n-2 steps inside (the last note's IOI
        # reaches past the copied notes)
        qd, qr = d[s:s + n - 1], r[s:s + n - 2]
        holders = {q["source"]}
        for w, a in index.get(tuple((qd[:key] * 10_000 + qr[:key]).tolist()), []):
            wd, wr = trans[w]
            if (a + n - 1 <= len(wd) and np.array_equal(wd[a:a + n - 1], qd)
                    and np.array_equal(wr[a:a + n - 2], qr)):
                holders.add(w)
        q["holders"] = holders


def dups_as_one(scores: np.ndarray, works: list[int], holders: set[int]) -> tuple[float, float]:
    """:func:`tie_aware` with every work holding the copied notes counted as one answer (its
    best score)."""
    rel = [s for s, w in zip(scores, works) if w in holders]
    if not rel:
        return 0.0, 0.0
    others = np.array([s for s, w in zip(scores, works) if w not in holders])
    return tie_aware(np.r_[others, max(rel)], max(rel))


def tie_aware(scores: np.ndarray, source_score: float) -> tuple[float, float]:
    """Expected recall@1 and reciprocal rank of the source when works tied with it are ordered
    at random (McSherry & Najork, ECIR 2008): the collections hold duplicate tunes, and a
    copy of a passage two works share cannot say which of them it came from. Higher is better."""
    better = int(np.sum(scores > source_score))
    tied = max(int(np.sum(scores == source_score)), 1)
    r1 = 1.0 / tied if better == 0 else 0.0
    rr = float(np.mean(1.0 / (better + np.arange(1, tied + 1))))
    return r1, rr


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    thr = np.quantile(neg, 1 - fpr, method="higher") if len(neg) else 0.0
    return float(np.mean(pos > thr))


def split_pool(pool, *, n_neg: int, size: int, rng) -> tuple[list[Any], list[Any]]:
    """Hosts/negatives and catalogue works drawn from ``pool``.

    Tunes that name their work (``Melody.info["work"]``: the voices of one Palestrina mass) are
    drawn by whole works, so no mass has voices on both sides: they imitate each other and
    share a chant, which would make every host a relative of the catalogue. Masses on the same
    chant (a numbered series, "Missa ... (I)", "(II)") count as one work.
    """
    works = [t.melody.info.get("work") for t in pool]
    if not any(works):
        order = rng.permutation(len(pool))
        return [pool[i] for i in order[:n_neg]], [pool[i] for i in order[n_neg:n_neg + size]]
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(works):
        groups.setdefault(re.sub(r"\s*\([IVX]+\)\s*$", "", w or ""), []).append(i)
    names = sorted(groups)
    hosts: list[Any] = []
    cat: list[Any] = []
    for g in rng.permutation(len(names)):
        members = [pool[i] for i in groups[names[g]]]
        if len(hosts) < n_neg:
            hosts += members
        elif len(cat) < size:
            cat += members
    return hosts[:n_neg], cat[:size]


def build_catalogue(enc: Encoder, cat_tunes, path: Path, *, index_kind: str):
    """A catalogue of ``cat_tunes`` at ``path``, added 500 at a time, its index built; also the
    seconds it took."""
    from melodyguard.index import Catalogue

    cat = Catalogue(path, encoder=enc, index_kind=index_kind)
    t0 = time.perf_counter()
    for b in range(0, len(cat_tunes), 500):
        cat.add_melodies([{"melody": t.melody, "sha256": t.key, "title": t.title, "owner": t.collection}
                          for t in cat_tunes[b:b + 500]])
    cat.index()
    return cat, time.perf_counter() - t0


def detection_section(enc: Encoder, pool, *, size: int, n_queries: int, n_neg: int, baseline_queries: int,
                      seed: int, index_kind: str, law: str = "shipped", law_decoys: int = 600) -> dict[str, Any]:
    """Detection quality and speed. With ``law="catalogue"`` the catalogue's own chance law is
    fitted after ingest (``melodyguard calibrate``: its works played backwards, their source left
    out); the rates of the default thresholds are given under both laws. Rankings, recall@1,
    MRR and TPR do not depend on the law (it multiplies every E-value of the catalogue alike)."""
    from melodyguard.decoys import check_decoy, fit_catalogue_law

    rng = np.random.default_rng(seed)
    hosts, cat_tunes = split_pool(pool, n_neg=n_neg, size=size, rng=rng)
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-"))
    res: dict[str, Any] = {"catalogue_works": len(cat_tunes)}
    try:
        r0 = rss_mb()
        cat, dt = build_catalogue(enc, cat_tunes, tmp / "cat", index_kind=index_kind)
        idx, table = cat.index()
        res["ingest_works_per_s"] = round(len(cat_tunes) / dt, 1)
        res["vectors"] = idx.ntotal
        res["index_kind"] = idx.manifest.kind
        disk = sum(f.stat().st_size for f in (tmp / "cat").rglob("*") if f.is_file())
        res["disk_bytes_per_work"] = int(disk / len(cat_tunes))
        res["ram_mb_growth_per_1k_works"] = round((rss_mb() - r0) / len(cat_tunes) * 1000, 2)
        # Recall of the approximate index against exact search, when approximate.
        if idx.manifest.kind != "flat":
            import faiss

            vec = np.frombuffer(b"".join(r[0] for r in cat._con().execute("SELECT vector FROM windows ORDER BY vid")),
                                dtype=np.float32).reshape(-1, enc.dim)
            flat = faiss.IndexFlatIP(enc.dim)
            flat.add(vec)
            qv = vec[rng.choice(len(vec), size=1000, replace=False)] + rng.normal(0, 0.05, (1000, enc.dim)).astype(np.float32)
            _, I1 = flat.search(qv, 10)
            _, I2 = idx.search(qv, 10)
            exact_ids = table.vid[I1]
            res["ann_recall_at_10"] = round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, I2)])), 4)

        factor = 1.0
        if law == "catalogue":
            fitted = fit_catalogue_law(cat, decoys=law_decoys, seed=seed)
            factor = fitted.factor
            res["catalogue_law"] = {k: fitted.info[k] for k in ("factor", "factor_empirical", "factor_tail_fit",
                                                                 "tail_slope", "decoys", "target", "flagged_before",
                                                                 "flagged_after", "blocked_before", "seconds")}
        sha_to_i = {t.key: i for i, t in enumerate(cat_tunes)}
        wid_to_i = {w.id: sha_to_i[w.sha256] for w in cat.works()}
        negatives, res["negatives_dropped_as_duplicates"] = drop_near_duplicates(hosts, cat_tunes)
        decoys = [SimpleNamespace(melody=retrograde(h.melody), key="backwards:" + h.key) for h in negatives]
        # Hosts of partial copies are "unrelated melodies not in the catalogue": the negatives,
        # near-duplicates of catalogue works dropped (looser relatives stay).
        queries = make_queries(cat_tunes, negatives, n=n_queries, rng=rng, decoy_hosts=decoys)
        mark_verbatim_holders(cat_tunes, queries)
        lat: list[float] = []
        stages: dict[str, list[float]] = {}
        for q, rep in timed_checks(queries, cat, stages, lat):
            ranks = [wid_to_i[m["work"]["id"]] for m in rep["matches"]]
            q["rank"] = ranks.index(q["source"]) + 1 if q["source"] in ranks else 0
            ev = [m["score"]["evalue"] for m in rep["matches"] if wid_to_i[m["work"]["id"]] == q["source"]]
            q["score"] = -np.log10(max(ev[0], 1e-300)) if ev else -10.0
            all_scores = np.array([-np.log10(max(m["score"]["evalue"], 1e-300)) for m in rep["matches"]])
            q["r1"], q["rr"] = tie_aware(all_scores, q["score"]) if ev else (0.0, 0.0)
            q["r1_dup"], q["rr_dup"] = dups_as_one(all_scores, ranks, q["holders"])
            q["verdict"] = rep["verdict"]
            q["best_e"] = rep["matches"][0]["score"]["evalue"] if rep["matches"] else math.inf
            if "insert_at" in q:  # which work the report names for the inserted notes
                lo, hi = q["insert_at"], q["insert_at"] + q["insert_len"]
                on = [m for m in rep["matches"]
                      if any(lo <= i < hi for seg in m["segments"] for i, _ in seg["pairs"])]
                ps = np.array([-np.log10(max(m["score"]["evalue"], 1e-300)) for m in on])
                src = [x for m, x in zip(on, ps) if wid_to_i[m["work"]["id"]] == q["source"]]
                q["passage_r1"] = tie_aware(ps, src[0])[0] if src else 0.0
                q["passage_r1_dup"] = dups_as_one(ps, [wid_to_i[m["work"]["id"]] for m in on], q["holders"])[0]
        neg_reports: list[dict[str, Any]] = []
        neg_scores, neg_verdicts = best_scores([h.melody for h in negatives], cat, reports=neg_reports)
        recorded, kin = kinship_figures(negatives, cat_tunes, neg_reports)
        res.update(kin)
        no_variant = np.array([h.key not in recorded for h in negatives], bool)
        dec_scores, dec_verdicts = best_scores([h.melody for h in decoys], cat)
        res["fpr_default_review_backwards_negatives"] = round(float(np.mean([v != "clear" for v in dec_verdicts])), 4)
        res["fpr_default_block_backwards_negatives"] = round(float(np.mean([v == "block" for v in dec_verdicts])), 4)
        if law == "catalogue":
            res["fpr_default_review_backwards_negatives_shipped_law"] = shipped_rate(dec_scores, factor)
            # The same decoys with their catalogue relatives left out, as the law's own decoys are.
            out = [check_decoy(h.melody, cat, law="catalogue")[0] for h in negatives]
            out_scores = np.array([-np.log10(max(r["matches"][0]["score"]["evalue"], 1e-300)) if r["matches"] else -10.0
                                   for r in out])
            res["fpr_default_review_backwards_negatives_relatives_out"] = round(
                float(np.mean([r["verdict"] != "clear" for r in out])), 4)
            res["fpr_default_review_backwards_negatives_relatives_out_shipped_law"] = shipped_rate(out_scores, factor)
        res["latency_ms_p50"] = round(1000 * float(np.percentile(lat, 50)), 1)
        res["latency_ms_p95"] = round(1000 * float(np.percentile(lat, 95)), 1)
        # Where the time goes (medians of each stage, as the reports time them).
        res["latency_stages_ms_p50"] = {k: round(float(np.median(v)), 1) for k, v in stages.items()}
        res["negatives"] = len(negatives)
        res["fpr_default_review"] = round(float(np.mean([v != "clear" for v in neg_verdicts])), 4)
        res["fpr_default_block"] = round(float(np.mean([v == "block" for v in neg_verdicts])), 4)
        if law == "catalogue":
            res["fpr_default_review_shipped_law"] = shipped_rate(neg_scores, factor)

        # Baseline on a subsample of queries (same queries for both systems in that table).
        cat_notes = [interval_notes(t.melody) for t in cat_tunes]
        align_intervals(cat_notes[0][0], cat_notes[0][1], cat_notes[1][0], cat_notes[1][1])  # compile

        def baseline(m: Melody) -> np.ndarray:
            return baseline_scores(m, cat_notes)

        bl_lat = []
        bq: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for q in queries:
            bq.setdefault((q["kind"], q["level"]), []).append(q)
        for qs in bq.values():
            for q in qs[:baseline_queries]:
                t1 = time.perf_counter()
                sc = baseline(q["melody"])
                bl_lat.append(time.perf_counter() - t1)
                order_ = np.argsort(-sc, kind="stable")
                q["bl_rank"] = int(np.flatnonzero(order_ == q["source"])[0]) + 1
                q["bl_score"] = float(sc[q["source"]])
                q["bl_r1"], q["bl_rr"] = tie_aware(sc, q["bl_score"])
                q["bl_r1_dup"] = dups_as_one(sc, list(range(len(sc))), q["holders"])[0]
        bl_neg = np.asarray([baseline(h.melody).max() for h in negatives])
        bl_dec = np.asarray([baseline(h.melody).max() for h in decoys])
        res["baseline_latency_ms_p50"] = round(1000 * float(np.percentile(bl_lat, 50)), 1)
        res["speedup_vs_baseline_p50"] = round(res["baseline_latency_ms_p50"] / max(res["latency_ms_p50"], 1e-9), 1)

        rows = []
        for (kind, level), qs in bq.items():
            rank_arr = np.array([q["rank"] for q in qs])
            scores = np.array([q["score"] for q in qs])
            sub = [q for q in qs if "bl_rank" in q]
            bs = np.array([q["bl_score"] for q in sub])
            ss = np.array([q["score"] for q in sub])
            # Partial copies in backwards hosts are scored against backwards negatives.
            negs, bl_negs = (dec_scores, bl_dec) if "backwards" in kind else (neg_scores, bl_neg)
            rows.append({
                "kind": kind, "level": level, "queries": len(qs),
                "recall@1": round(float(np.mean([q["r1"] for q in qs])), 4),
                "mrr": round(float(np.mean([q["rr"] for q in qs])), 4),
                "recall@1_strict": round(float(np.mean(rank_arr == 1)), 4),
                "tpr@1%fpr": round(tpr_at_fpr(scores, negs), 4),
                "flagged_default": round(float(np.mean([q["verdict"] != "clear" for q in qs])), 4),
                **({"flagged_default_shipped_law": shipped_rate(
                    np.array([-np.log10(max(q["best_e"], 1e-300)) for q in qs]), factor)} if law == "catalogue" else {}),
                **(host_without_variant(qs, recorded, neg_scores[no_variant]) if kind == "partial" else {}),
                **({"passage_recall@1": round(float(np.mean([q["passage_r1"] for q in qs])), 4),
                    "passage_recall@1_dups_as_one": round(float(np.mean([q["passage_r1_dup"] for q in qs])), 4)}
                   if kind != "whole" else {}),
                "queries_with_duplicates": int(sum(len(q["holders"]) > 1 for q in qs)),
                "recall@1_dups_as_one": round(float(np.mean([q["r1_dup"] for q in qs])), 4),
                "mrr_dups_as_one": round(float(np.mean([q["rr_dup"] for q in qs])), 4),
                "ours_recall@1_paired_dups_as_one": round(float(np.mean([q["r1_dup"] for q in sub])), 4),
                "baseline_recall@1_dups_as_one": round(float(np.mean([q["bl_r1_dup"] for q in sub])), 4),
                "paired_queries": len(sub),
                "ours_recall@1_paired": round(float(np.mean([q["r1"] for q in sub])), 4),
                "ours_tpr_paired": round(tpr_at_fpr(ss, negs), 4),
                "baseline_recall@1": round(float(np.mean([q["bl_r1"] for q in sub])), 4),
                "baseline_mrr": round(float(np.mean([q["bl_rr"] for q in sub])), 4),
                "baseline_recall@1_strict": round(float(np.mean([q["bl_rank"] == 1 for q in sub])), 4),
                "baseline_tpr@1%fpr": round(tpr_at_fpr(bs, bl_negs), 4),
            })
        res["levels"] = rows
        # Songs that copy two phrases of two works: is each source reported, where it is? Drawn
        # last, so every query above is the same as without them.
        res["two_phrases"] = [two_phrase_row(cat, cat_tunes, hosts_, wid_to_i, baseline, kind=kind, n=n_queries,
                                             baseline_queries=baseline_queries, rng=rng)
                              for kind, hosts_ in (("real host", negatives), ("backwards host", decoys))]
        cat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _excerpt(tune, length: int, rng) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A random ``length``-note excerpt of a tune: its start and notes (onsets from 0)."""
    p, o, d = notes_of(tune.melody)
    s0 = int(rng.integers(0, len(p) - length + 1))
    return s0, (p[s0:s0 + length], o[s0:s0 + length] - o[s0], d[s0:s0 + length])


def ready_catalogue(enc: Encoder, cat_tunes, path: Path, *, index_kind: str, law: str, seed: int,
                    res: dict[str, Any]) -> tuple[Any, dict[int, int], list[tuple[np.ndarray, np.ndarray]]]:
    """A section's catalogue of ``cat_tunes``, built, its own law fitted when ``law`` is
    "catalogue" (``res["law_factor"]``), the baseline compiled and a check warmed up; also the map
    from work ids to tune indices and the baseline's notes of every tune."""
    from melodyguard.decoys import fit_catalogue_law
    from melodyguard.detect import check_melody

    cat, _ = build_catalogue(enc, cat_tunes, path, index_kind=index_kind)
    res["law_factor"] = fit_catalogue_law(cat, seed=seed).factor if law == "catalogue" else 1.0
    sha_to_i = {t.key: i for i, t in enumerate(cat_tunes)}
    wid_to_i = {w.id: sha_to_i[w.sha256] for w in cat.works()}
    cat_notes = [interval_notes(t.melody) for t in cat_tunes]
    align_intervals(cat_notes[0][0], cat_notes[0][1], cat_notes[1][0], cat_notes[1][1])  # compile
    check_melody(cat_tunes[0].melody, cat)  # warm-up
    return cat, wid_to_i, cat_notes


def score_queries(qs: list[dict[str, Any]], cat, cat_tunes, wid_to_i: dict[int, int]) -> None:
    """Check each query of a hooks or edits row and set, besides ``holders``
    (:func:`mark_verbatim_holders`), its source's -log10 E (``score``; -10 when not reported),
    ``r1`` and ``rr`` (ties at random), ``r1_dup`` (duplicates as one) and ``verdict``."""
    from melodyguard.detect import check_melody

    mark_verbatim_holders(cat_tunes, qs)
    for q in qs:
        rep = check_melody(q["melody"], cat)
        ranks = [wid_to_i[m["work"]["id"]] for m in rep["matches"]]
        sc = np.array([-np.log10(max(m["score"]["evalue"], 1e-300)) for m in rep["matches"]])
        q["score"] = float(sc[ranks.index(q["source"])]) if q["source"] in ranks else -10.0
        q["r1"], q["rr"] = tie_aware(sc, q["score"]) if q["source"] in ranks else (0.0, 0.0)
        q["r1_dup"] = dups_as_one(sc, ranks, q["holders"])[0]
        q["verdict"] = rep["verdict"]


def hooks_section(enc: Encoder, pool, *, size: int, n: int, n_neg: int, baseline_queries: int, seed: int,
                  index_kind: str, law: str = "shipped") -> dict[str, Any]:
    """Short hooks checked on their own: how long a copied passage must be for a check to find
    and flag it. For each length in :data:`HOOK_LENGTHS`, ``n`` excerpts of that many notes of
    catalogue works (at random places; transposed, or with light edits), each checked alone;
    against them, excerpts as long of held-out tunes played backwards (decoys: the style's
    steps and rhythms, no real phrase) and of real held-out tunes (tune families included;
    near-duplicates of catalogue works left out, as in the detection tables).
    Recall@1 counts ties at random and, as in the detection tables, also with every catalogue
    work that holds the copied notes verbatim as one answer (a short hook is often in several
    works). The baseline scores the same queries and decoys (the first ``baseline_queries``)."""
    rng = np.random.default_rng(seed)
    hosts, cat_tunes = split_pool(pool, n_neg=n_neg, size=size, rng=rng)
    hosts, dropped = drop_near_duplicates(hosts, cat_tunes)  # as the detection tables' negatives
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-hooks-"))
    res: dict[str, Any] = {"catalogue_works": len(cat_tunes), "rows": [], "negatives_dropped_as_duplicates": dropped}
    try:
        cat, wid_to_i, cat_notes = ready_catalogue(enc, cat_tunes, tmp / "cat", index_kind=index_kind, law=law,
                                                   seed=seed, res=res)
        for length in HOOK_LENGTHS:
            src_pool = [i for i, t in enumerate(cat_tunes) if len(t.melody) >= length]
            src_idx = rng.choice(src_pool, size=min(n, len(src_pool)), replace=False)
            negs: dict[str, np.ndarray] = {}
            bl_neg = np.zeros(0)
            for name, tunes in (("backwards", [retrograde(h.melody) for h in hosts]), ("real", [h.melody for h in hosts])):
                mels = [Melody.from_notes(*_excerpt(SimpleNamespace(melody=m), length, rng)[1])
                        for m in tunes if len(m) >= length]
                sc, verdicts = best_scores(mels, cat)
                negs[name] = sc
                res.setdefault("negatives", {}).setdefault(str(length), {})[name] = {
                    "n": len(mels), "flagged": round(float(np.mean([v != "clear" for v in verdicts])), 4),
                    "block": round(float(np.mean([v == "block" for v in verdicts])), 4)}
                if name == "backwards":
                    bl_neg = np.asarray([baseline_scores(m, cat_notes).max() for m in mels[:baseline_queries]])
            for level in HOOK_LEVELS:
                qs: list[dict[str, Any]] = []
                for i in src_idx:
                    s0, ex = _excerpt(cat_tunes[int(i)], length, rng)
                    edited = augment(ex, level, rng=rng)
                    if len(edited[0]) >= DEFAULT_MIN_NOTES:  # light edits may take a note out: too short to check
                        qs.append({"source": int(i), "excerpt_start": s0, "excerpt_notes": length,
                                   "melody": to_melody(edited)})
                score_queries(qs, cat, cat_tunes, wid_to_i)
                sub = qs[:baseline_queries]
                bl = [baseline_scores(q["melody"], cat_notes) for q in sub]
                scores = np.array([q["score"] for q in qs])
                res["rows"].append({
                    "notes": length, "level": level, "queries": len(qs),
                    "recall@1": round(float(np.mean([q["r1"] for q in qs])), 4),
                    "recall@1_dups_as_one": round(float(np.mean([q["r1_dup"] for q in qs])), 4),
                    "with_duplicates": int(sum(len(q["holders"]) > 1 for q in qs)),
                    "flagged": round(float(np.mean([q["verdict"] != "clear" for q in qs])), 4),
                    "block": round(float(np.mean([q["verdict"] == "block" for q in qs])), 4),
                    "source_minus_log10_e_median": round(float(np.median(scores)), 2),
                    "tpr@1%fpr_vs_backwards": round(tpr_at_fpr(scores, negs["backwards"]), 4),
                    "paired_queries": len(sub),
                    "ours_recall@1_dups_as_one_paired": round(float(np.mean([q["r1_dup"] for q in sub])), 4),
                    "ours_tpr_paired": round(tpr_at_fpr(scores[:len(sub)], negs["backwards"][:baseline_queries]), 4),
                    "baseline_recall@1_dups_as_one": round(float(np.mean(
                        [dups_as_one(b, list(range(len(b))), q["holders"])[0] for b, q in zip(bl, sub)])), 4),
                    "baseline_tpr@1%fpr_vs_backwards": round(tpr_at_fpr(np.array([b[q["source"]] for b, q in zip(bl, sub)]),
                                                                        bl_neg), 4),
                })
                print(json.dumps(res["rows"][-1]), flush=True)
        cat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def edit_notes(notes, level: str, rng) -> Any:
    """The edit of a row of the ``edits`` section: a training level of :mod:`melodyguard.augment`
    or one of its :data:`~melodyguard.augment.UNSEEN_EDITS` (the signature :func:`_partials` takes)."""
    if level in UNSEEN_EDITS:
        return unseen_edit(notes, level, rng=rng)
    return augment(notes, level, rng=rng)


def edits_section(enc: Encoder, pool, *, size: int, n: int, n_neg: int, baseline_queries: int, seed: int,
                  index_kind: str, law: str = "shipped") -> dict[str, Any]:
    """Copies disguised by edits the weights never trained on (:data:`UNSEEN_EDITS`: a change of
    mode, swing, split and merged notes, grace notes, a humanized performance), next to the
    training level ``light`` in the same run: ``n`` whole copies and ``n`` partial copies (a
    12-24-note excerpt inserted into a held-out tune played backwards, and into a real held-out
    tune) per edit. TPR@1%FPR is against the held-out tunes played backwards (whole copies and
    backwards hosts); the baseline scores the first ``baseline_queries`` of each row."""
    rng = np.random.default_rng(seed)
    hosts, cat_tunes = split_pool(pool, n_neg=n_neg, size=size, rng=rng)
    hosts, dropped = drop_near_duplicates(hosts, cat_tunes)
    decoys = [SimpleNamespace(melody=retrograde(h.melody), key="backwards:" + h.key) for h in hosts]
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-edits-"))
    res: dict[str, Any] = {"catalogue_works": len(cat_tunes), "rows": [], "negatives_dropped_as_duplicates": dropped}
    try:
        cat, wid_to_i, cat_notes = ready_catalogue(enc, cat_tunes, tmp / "cat", index_kind=index_kind, law=law,
                                                   seed=seed, res=res)
        dec_scores, dec_verdicts = best_scores([h.melody for h in decoys], cat)
        res["backwards_negatives"] = {"n": len(decoys),
                                      "flagged": round(float(np.mean([v != "clear" for v in dec_verdicts])), 4)}
        bl_dec = np.asarray([baseline_scores(h.melody, cat_notes).max() for h in decoys[:baseline_queries]])
        src_idx = rng.choice(len(cat_tunes), size=min(n, len(cat_tunes)), replace=False)
        for level in ("light",) + UNSEEN_EDITS:
            whole: list[dict[str, Any]] = []
            for i in src_idx:
                q = edit_notes(notes_of(cat_tunes[int(i)].melody), level, rng)
                if len(q[0]) >= DEFAULT_MIN_NOTES:
                    whole.append({"kind": "whole", "source": int(i), "melody": to_melody(q)})
            rows: dict[str, list[dict[str, Any]]] = {"whole": whole}
            for kind, hs in (("partial, backwards host", decoys), ("partial, real host", hosts)):
                rows[kind] = _partials(cat_tunes, hs, src_idx, rng=rng, kind=kind, levels=(level,), edit=edit_notes)
            for kind, qs in rows.items():
                score_queries(qs, cat, cat_tunes, wid_to_i)
                sub = qs[:baseline_queries]
                bl = [baseline_scores(q["melody"], cat_notes) for q in sub]
                scores = np.array([q["score"] for q in qs])
                backwards = kind != "partial, real host"
                row = {
                    "edit": level, "kind": kind, "queries": len(qs),
                    "recall@1": round(float(np.mean([q["r1"] for q in qs])), 4),
                    "mrr": round(float(np.mean([q["rr"] for q in qs])), 4),
                    "recall@1_dups_as_one": round(float(np.mean([q["r1_dup"] for q in qs])), 4),
                    "flagged": round(float(np.mean([q["verdict"] != "clear" for q in qs])), 4),
                    "block": round(float(np.mean([q["verdict"] == "block" for q in qs])), 4),
                    "paired_queries": len(sub),
                    "ours_recall@1_dups_as_one_paired": round(float(np.mean([q["r1_dup"] for q in sub])), 4),
                    "baseline_recall@1_dups_as_one": round(float(np.mean(
                        [dups_as_one(b, list(range(len(b))), q["holders"])[0] for b, q in zip(bl, sub)])), 4),
                }
                if backwards:
                    row["tpr@1%fpr"] = round(tpr_at_fpr(scores, dec_scores), 4)
                    row["ours_tpr_paired"] = round(tpr_at_fpr(scores[:len(sub)], dec_scores[:baseline_queries]), 4)
                    row["baseline_tpr@1%fpr"] = round(tpr_at_fpr(np.array([b[q["source"]] for b, q in zip(bl, sub)]),
                                                                 bl_dec), 4)
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
        cat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def host_without_variant(qs: list[dict[str, Any]], recorded: set[str], neg_scores: np.ndarray) -> dict[str, Any]:
    """Partial copies in real hosts, restricted to hosts without a variant in the catalogue by
    the editors' numbering (:func:`essen_songs`), against negatives restricted alike."""
    sub = [q for q in qs if q["host"] not in recorded]
    if not sub:
        return {}
    return {"host_without_recorded_variant_queries": len(sub),
            "host_without_recorded_variant_recall@1": round(float(np.mean([q["r1"] for q in sub])), 4),
            "host_without_recorded_variant_tpr@1%fpr": round(tpr_at_fpr(np.array([q["score"] for q in sub]), neg_scores), 4)}


def shipped_rate(scores: np.ndarray, factor: float) -> float:
    """Share of queries the default review threshold flags under the shipped law, from their
    best -log10 E under a catalogue law of ``factor`` (which multiplies every E-value alike;
    -10 stands for no match at all)."""
    scores = np.asarray(scores)
    shipped = scores + np.log10(factor)
    return round(float(np.mean((shipped >= -np.log10(DEFAULT_DETECT.review_evalue)) & (scores > -10.0))), 4)


def best_scores(melodies: list[Melody], cat, *, exclude: list[int] | None = None,
                reports: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, list[str]]:
    """-log10 E-value of each query's best match (-10 without one) and its verdict; each
    report is also appended to ``reports`` when given."""
    from melodyguard.detect import check_melody

    scores, verdicts = [], []
    for i, m in enumerate(melodies):
        rep = check_melody(m, cat, exclude_work=exclude[i] if exclude else None)
        scores.append(-np.log10(max(rep["matches"][0]["score"]["evalue"], 1e-300)) if rep["matches"] else -10.0)
        verdicts.append(rep["verdict"])
        if reports is not None:
            reports.append(rep)
    return np.asarray(scores), verdicts


def essen_songs() -> dict[str, tuple[str, str]]:
    """The Essen editors' own numbering of songs: corpus key -> (file group, song number).

    An EsAC signature (the ABC field ``N:``, e.g. ``A0004B``) numbers the variants of one song
    with a letter, so tunes that share the number without the letter are variants of one song
    that the editors themselves recorded: ground truth of kinship that owes nothing to either
    system (it misses the many tune-family relations they did not record). Each file group
    numbers its own songs. Read from the same ABC units, under the same keys, as the corpus
    cache (which keeps titles only)."""
    out: dict[str, tuple[str, str]] = {}
    for key, _, _, tune in list_units(("essenFolksong",)):
        sig = re.findall(r"^N:\s*([A-Z]+\d+)[A-Z]?\s*$", tune, re.M)
        if sig:
            out[key] = (re.sub(r"\d*\.abc#\d+$", "", key.split("/", 1)[1]), sig[0])
    return out


def kinship_figures(negatives, cat_tunes, reports: list[dict[str, Any]]) -> tuple[set[str], dict[str, Any]]:
    """Which negatives have a variant in the catalogue by the editors' numbering
    (:func:`essen_songs`), and what the default thresholds flag in real held-out tunes: their
    share without such a variant, and how long the flagged matches are (a long shared passage
    is kinship; a short one in a long tune could be a stock formula)."""
    songs = essen_songs()
    in_cat = {songs[t.key] for t in cat_tunes if t.key in songs}
    recorded = {h.key for h in negatives if songs.get(h.key) in in_cat}
    flagged = [(h, r) for h, r in zip(negatives, reports) if r["verdict"] != "clear"]
    rest = [r for h, r in zip(negatives, reports) if h.key not in recorded]
    matched = np.array([r["matches"][0]["segments"][0]["matched_notes"] for _, r in flagged] or [0])
    cover = np.array([r["matches"][0]["coverage"]["query"] for _, r in flagged] or [0.0])
    return recorded, {
        "negatives_with_recorded_variant": len(recorded),
        "fpr_default_review_no_recorded_variant": round(float(np.mean([r["verdict"] != "clear" for r in rest])), 4)
        if rest else None,
        "flagged_negatives": {
            "n": len(flagged), "with_recorded_variant": sum(h.key in recorded for h, _ in flagged),
            "matched_notes_median": float(np.median(matched)), "query_coverage_median": round(float(np.median(cover)), 3),
            "at_most_16_notes_under_40pct": int(np.sum((matched <= 16) & (cover < 0.4)))},
    }


def null_section(enc: Encoder, pool, *, size: int, n: int, seed: int, index_kind: str) -> dict[str, Any]:
    """Where the false positives come from: best-match E-values of (a) held-out tunes outside
    the catalogue, (b) decoys (catalogue works played backwards, their source left out) and (c)
    catalogue works checked against the rest of the catalogue (leave-one-out)."""
    from melodyguard.index import Catalogue

    rng = np.random.default_rng(seed)
    hosts, cat_tunes = split_pool(pool, n_neg=500, size=size, rng=rng)
    tmp = Path(tempfile.mkdtemp(prefix="mg-null-"))
    try:
        cat = Catalogue(tmp / "cat", encoder=enc, index_kind=index_kind)
        for b in range(0, len(cat_tunes), 500):
            cat.add_melodies([{"melody": t.melody, "sha256": t.key} for t in cat_tunes[b:b + 500]])
        wid = {w.sha256: w.id for w in cat.works()}
        negatives, _ = drop_near_duplicates(hosts, cat_tunes)
        pick = np.random.default_rng(seed + 1).choice(len(cat_tunes), size=min(n, len(cat_tunes)), replace=False)
        own = [wid[cat_tunes[i].key] for i in pick]
        rows = {
            "held-out tunes outside the catalogue": best_scores([h.melody for h in negatives], cat),
            "decoys: catalogue works backwards": best_scores([retrograde(cat_tunes[i].melody) for i in pick], cat, exclude=own),
            "catalogue works against the rest (leave-one-out)": best_scores([cat_tunes[i].melody for i in pick], cat,
                                                                            exclude=own),
        }
        cat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {"catalogue_works": len(cat_tunes), "rows": []}
    for name, (a, verdicts) in rows.items():
        out["rows"].append({"queries": name, "n": len(a),
                            "review_rate": round(float(np.mean([v != "clear" for v in verdicts])), 4),
                            "block_rate": round(float(np.mean([v == "block" for v in verdicts])), 4),
                            "minus_log10_e_p90": round(float(np.quantile(a, 0.9)), 1),
                            "minus_log10_e_p99": round(float(np.quantile(a, 0.99)), 1)})
    return out


def parse_latency(enc: Encoder, pool, *, n: int, seed: int) -> dict[str, Any]:
    """Latency of check_file (MIDI parsing included) on a small catalogue, for one-line files:
    the default (every line) and the melody line only."""
    import io

    import pretty_midi

    from melodyguard.detect import check_file
    from melodyguard.index import Catalogue

    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-parse-"))
    try:
        cat = Catalogue(tmp / "cat", encoder=enc)
        cat.add_melodies([{"melody": t.melody, "sha256": t.key, "title": t.title} for t in pool[:1000]])
        cat.index()
        files = []
        for i in rng.choice(len(pool), size=n, replace=False):
            m = pool[int(i)].melody
            pm = pretty_midi.PrettyMIDI(initial_tempo=120)
            inst = pretty_midi.Instrument(0)
            for p, o, d in zip(m.pitches, m.onsets_seconds, m.durations_seconds):
                inst.notes.append(pretty_midi.Note(90, int(p), float(o), float(o + d)))
            pm.instruments.append(inst)
            b = io.BytesIO()
            pm.write(b)
            files.append(b.getvalue())
        check_file(files[0], cat)
        out: dict[str, Any] = {}
        for tracks, suffix in (("all", ""), ("melody", "_melody_line_only")):
            lat = []
            for f in files:
                t0 = time.perf_counter()
                check_file(f, cat, tracks=tracks)
                lat.append(time.perf_counter() - t0)
            out |= {f"with_parse_ms_p50{suffix}": round(1000 * float(np.percentile(lat, 50)), 1),
                    f"with_parse_ms_p95{suffix}": round(1000 * float(np.percentile(lat, 95)), 1)}
        return out | {"catalogue_works": 1000}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def memorization_section(enc: Encoder, pool, *, n: int, seed: int, index_kind: str) -> dict[str, Any]:
    """Does the generator copy what it was trained on? Generated 8-bar melodies checked against a
    catalogue of the weights' own training tunes, beside human 8-bar openings of the same style
    that the weights never saw (the 5 % 'valid' split of the same collections, Aird's Airs), and
    the generated melodies against a catalogue of held-out Essen tunes (unrelated by construction:
    the weights never saw Essen)."""
    from melodyguard.corpus import TRAIN_COLLECTIONS
    from melodyguard.detect import check_melody
    from melodyguard.index import Catalogue
    from melodyguard.model.generate import sample_melodies

    rng = np.random.default_rng(seed)

    def opening(m: Melody) -> Melody | None:
        k = int(np.searchsorted(m.onsets_beats, m.onsets_beats[0] + 32.0))
        return m.slice(0, k) if k >= 8 else None

    def humans(tunes) -> list[Melody]:
        pick = rng.permutation(len(tunes))[:n]
        return [o for o in (opening(tunes[int(i)].melody) for i in pick) if o is not None]

    train = load_corpus(splits=["train"], collections=TRAIN_COLLECTIONS)
    valid = load_corpus(splits=["valid"], collections=TRAIN_COLLECTIONS)
    aird = [t for t in pool if t.collection == "airdsAirs"]
    essen = [t for t in pool if t.collection == "essenFolksong"]
    gen = {t: [m for m in sample_melodies(enc, n, bars=8, temperature=t, seed=seed) if len(m) >= 8] for t in (1.0, 0.5)}
    out: dict[str, Any] = {"rows": []}

    def row(name: str, mels: list[Melody], cat) -> None:
        best = []
        for m in mels:
            rep = check_melody(m, cat)
            top = rep["matches"][0] if rep["matches"] else None
            best.append((rep["verdict"], -np.log10(max(top["score"]["evalue"], 1e-300)) if top else -10.0,
                         top["segments"][0]["matched_notes"] if top else 0))
        v = [b[0] for b in best]
        sc = np.array([b[1] for b in best])
        flagged_notes = [b[2] for b in best if b[0] != "clear"]
        out["rows"].append({"queries": name, "n": len(mels),
                            "review_rate": round(float(np.mean([x != "clear" for x in v])), 4),
                            "block_rate": round(float(np.mean([x == "block" for x in v])), 4),
                            "minus_log10_e_p99": round(float(np.quantile(sc, 0.99)), 1),
                            "median_equal_notes_flagged": float(np.median(flagged_notes)) if flagged_notes else 0.0})

    tmp = Path(tempfile.mkdtemp(prefix="mg-mem-"))
    try:
        cat = Catalogue(tmp / "train", encoder=enc, index_kind=index_kind)
        for b in range(0, len(train), 500):
            cat.add_melodies([{"melody": t.melody, "sha256": t.key} for t in train[b:b + 500]])
        out["training_catalogue_works"] = len(cat.works())
        for t, mels in gen.items():
            row(f"generated, temperature {t:g}, against the training tunes", mels, cat)
        row("valid split (same collections, not trained on) against the training tunes", humans(valid), cat)
        row("Aird's Airs (held out) against the training tunes", humans(aird), cat)
        cat.close()
        ecat = Catalogue(tmp / "essen", encoder=enc, index_kind=index_kind)
        pick = rng.permutation(len(essen))[:1000]
        ecat.add_melodies([{"melody": essen[int(i)].melody, "sha256": essen[int(i)].key} for i in pick])
        row("generated, temperature 1, against 1,000 Essen tunes", gen[1.0], ecat)
        ecat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def chorale_songs(n: int) -> list[bytes]:
    """The first ``n`` Bach chorales of music21's corpus as 4-track MIDI files (soprano, alto,
    tenor, bass), real multi-line music in which the three lower voices are real melodic lines
    that copy nothing. Parsed notes are cached in ``~/.cache/melodyguard/chorale_parts_v1.json``
    (music21 parses about 3 chorales/s)."""
    import io

    import pretty_midi

    from melodyguard.corpus import _corpus_root

    cache = Path.home() / ".cache" / "melodyguard" / "chorale_parts_v1.json"
    parts: dict[str, list[list[list[float]]]] = json.loads(cache.read_text()) if cache.exists() else {}
    paths = sorted((_corpus_root() / "bach").glob("bwv*.mxl"))
    out: list[bytes] = []
    for path in paths:
        if len(out) == n:
            break
        if path.name not in parts:
            import warnings

            from music21 import converter

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sc = converter.parse(str(path))
            voices = []
            for part in list(getattr(sc, "parts", []))[:4]:
                notes = []
                for el in part.stripTies().flatten().notes:
                    if el.quarterLength > 0 and not el.duration.isGrace:
                        notes.append([float(max(p.midi for p in el.pitches)), float(el.offset), float(el.quarterLength)])
                voices.append(notes)
            parts[path.name] = voices
        voices = parts[path.name]
        if len(voices) != 4 or min(len(v) for v in voices) < 8:
            continue
        pm = pretty_midi.PrettyMIDI(initial_tempo=80)
        for (name, prog), notes in zip((("Soprano", 52), ("Alto", 53), ("Tenor", 52), ("Bass", 42)), voices):
            inst = pretty_midi.Instrument(prog, name=name)
            for p, o, d in notes:
                inst.notes.append(pretty_midi.Note(80, int(p), o * 0.75, (o + d * 0.95) * 0.75))
            pm.instruments.append(inst)
        buf = io.BytesIO()
        pm.write(buf)
        out.append(buf.getvalue())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(parts))
    tmp.replace(cache)
    return out


def tracks_section(enc: Encoder, pool, *, seed: int, index_kind: str, n: int = 40) -> dict[str, Any]:
    """Every line of a MIDI file against the melody line alone: 6-track arrangements (a lead,
    bass, piano chords, a pad, a counter-line and drums) against 1,000 held-out works.

    The copy (a whole catalogue tune transposed +2, or a light-edited 12-24-note phrase of one
    inserted into a held-out tune played backwards) sits in the lead, or an octave down in a
    viola under an unrelated lead. Songs without a catalogue tune have a real held-out lead
    (whose relatives may be in the catalogue) or only decoy lines (backwards held-out tunes),
    which measures what checking more lines costs in chance false alarms; and 100 Bach
    chorales (:func:`chorale_songs`), whose alto, tenor and bass are real melodic lines. Modes: the melody
    line; every line with the default weighted correction; every line with the plain one."""
    import io

    import pretty_midi

    from melodyguard.detect import MELODY_SHARE, check_melody, check_tracks
    from melodyguard.fingerprint import extract_melody
    from melodyguard.index import Catalogue

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    cat_tunes = [pool[i] for i in order[:1000]]
    others = [pool[i] for i in order[1000:1000 + 4 * n]]
    from types import SimpleNamespace

    leads, counters = [t.melody for t in others[:n]], others[2 * n:]
    hosts = [SimpleNamespace(melody=retrograde(t.melody), key=t.key + "/backwards") for t in others[n:2 * n]]
    decoys = [retrograde(t.melody) for t in counters]

    def notes(m: Melody, shift: int = 0, dur: float = 1.0) -> list[tuple[float, float, float]]:
        return [(p + shift, o, d * dur) for p, o, d in zip(m.pitches, m.onsets_beats, m.durations_beats)]

    def song(lead: Melody, *, viola: Melody | None = None, counter: Melody | None = None) -> bytes:
        pm = pretty_midi.PrettyMIDI(initial_tempo=100)
        spb = 0.6

        def add(name, prog, ns, drum=False):
            inst = pretty_midi.Instrument(prog, is_drum=drum, name=name)
            for p, o, d in ns:
                inst.notes.append(pretty_midi.Note(90, int(p), o * spb, (o + max(d, 0.05)) * spb))
            pm.instruments.append(inst)

        add("Lead", 73, notes(lead, 0, 0.9))
        if viola is not None:
            add("Viola", 41, notes(viola, -12))
        end = float(max(lead.onsets_beats[-1], viola.onsets_beats[-1] if viola is not None else 0) + 4)
        add("Bass", 33, [(rng.integers(36, 48), b, 0.9) for b in np.arange(0, end, 1.0)])
        add("Piano", 0, [(60 + x, b, 1.9) for b in np.arange(0, end, 2.0) for x in (0, 4, 7)])
        add("Pad", 89, [(55 + x, b, 3.9) for b in np.arange(0, end, 4.0) for x in (0, 3, 7)])
        if counter is not None:  # a held-out tune played backwards, a fourth below the lead's register
            add("Counter", 71, notes(counter, -5, 0.9))
        else:
            add("Counter", 71, [(rng.integers(60, 72), b, 0.45) for b in np.arange(0, end, 0.5)])
        add("Drums", 0, [(36, b, 0.1) for b in np.arange(0, end, 0.5)], drum=True)
        buf = io.BytesIO()
        pm.write(buf)
        return buf.getvalue()

    src = rng.choice(len(cat_tunes), size=n, replace=False)
    phrases = [(q["melody"], q["source"]) for q in _partials(cat_tunes, hosts, src, rng=rng, kind="partial")
               if q["level"] == "light"]
    whole = [Melody.from_notes(np.asarray(cat_tunes[i].melody.pitches) + 2, cat_tunes[i].melody.onsets_beats,
                               cat_tunes[i].melody.durations_beats) for i in src]
    cases: dict[str, list[tuple[bytes, int | None]]] = {
        "whole tune in the lead": [(song(whole[j], counter=decoys[j]), int(src[j])) for j in range(n)],
        "whole tune in an inner voice": [(song(leads[j], viola=whole[j], counter=decoys[j]), int(src[j])) for j in range(n)],
        "lifted phrase in the lead": [(song(ph, counter=decoys[j]), i) for j, (ph, i) in enumerate(phrases)],
        "lifted phrase in an inner voice": [(song(retrograde(leads[j]), viola=ph, counter=decoys[j]), i)
                                            for j, (ph, i) in enumerate(phrases)],
        "no catalogue tune, real lead": [(song(leads[j], counter=decoys[j]), None) for j in range(n)],
        "no catalogue tune, decoy lines": [(song(hosts[j].melody, viola=decoys[(j + 1) % n], counter=decoys[j]), None)
                                           for j in range(n)],
        "no catalogue tune, Bach chorales (4 real voices)": [(c, None) for c in chorale_songs(100)],
    }
    tmp = Path(tempfile.mkdtemp(prefix="mg-tracks-"))
    out: dict[str, Any] = {"rows": [], "songs_per_case": n}
    try:
        cat = Catalogue(tmp / "cat", encoder=enc, index_kind=index_kind)
        cat.add_melodies([{"melody": t.melody, "sha256": t.key} for t in cat_tunes])
        wid = {w.sha256: w.id for w in cat.works()}
        # the melody line alone (None), or every line with the melody line's share of the budget
        # (the default, or None inside check_tracks: the plain correction)
        modes: dict[str, tuple[bool, float | None]] = {
            "melody line": (False, None), "every line (weighted, default)": (True, MELODY_SHARE),
            "every line (plain Bonferroni)": (True, None)}
        check_tracks(cases["whole tune in the lead"][0][0], cat, name="warm.mid")
        for name, items in cases.items():
            for mode, (every, share) in modes.items():
                hits, flagged, lat = 0, 0, []
                for data, source in items:
                    t0 = time.perf_counter()
                    if every:
                        rep, _ = check_tracks(data, cat, name="song.mid", melody_share=share)
                    else:
                        rep = check_melody(extract_melody(data, filename="song.mid"), cat)
                    lat.append(time.perf_counter() - t0)
                    flagged += rep["verdict"] != "clear"
                    if source is not None:
                        hits += bool(rep["matches"]) and rep["matches"][0]["work"]["id"] == wid.get(cat_tunes[source].key)
                out["rows"].append({"songs": name, "lines": mode, "n": len(items),
                                    "recall@1": round(hits / len(items), 3) if items[0][1] is not None else None,
                                    "flagged": round(flagged / len(items), 3),
                                    "latency_ms_p50": round(1000 * float(np.median(lat)), 1)})
                print(out["rows"][-1], flush=True)
        cat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def filler_melodies(sources: list[Melody], n: int, *, rng: np.random.Generator) -> list[Melody]:
    """``n`` synthetic catalogue works for speed measurements at sizes the corpus cannot reach:
    each splices the first part of one corpus melody to the second part of another and plays
    the result backwards, inverted (intervals mirrored) or both, in a random key and at a random
    pace. The style's intervals, rhythms and lengths stay (so the index, the votes and the
    verification see realistic load) but no filler is a real tune. Not for quality figures."""
    out = []
    for _ in range(n):
        a, b = sources[int(rng.integers(len(sources)))], sources[int(rng.integers(len(sources)))]
        pa, oa, da = notes_of(a)
        pb, ob, db = notes_of(b)
        ka, kb = int(rng.integers(4, max(5, len(pa)))), int(rng.integers(0, max(1, len(pb) - 4)))
        p = np.concatenate([pa[:ka], pb[kb:] - pb[kb] + pa[ka - 1] + int(rng.integers(-2, 3))])
        ioi = np.concatenate([note_iois(oa, da)[:ka], note_iois(ob, db)[kb:] * float(np.median(note_iois(oa, da)) /
                                                                                  np.median(note_iois(ob, db)))])
        mode = int(rng.integers(3))
        if mode in (0, 2):  # backwards
            p, ioi = p[::-1], ioi[::-1]
        if mode in (1, 2):  # inverted
            p = 2 * p[0] - p
        p = np.clip(p - int(np.median(p)) + 67 + int(rng.integers(-5, 6)), 30, 100)
        ioi = np.maximum(ioi * float(np.exp(rng.uniform(-0.7, 0.7))), 1e-3)
        o = np.concatenate([[0.0], np.cumsum(ioi)[:-1]])
        out.append(Melody.from_notes(p.copy(), o, ioi * 0.9))
    return out


def scale_section(enc: Encoder, pool, *, sizes: list[int], seed: int, n_queries: int = 200,
                  baseline_queries: int = 20, index_kind: str = "auto") -> dict[str, Any]:
    """Speed at catalogue sizes beyond the corpus: the held-out catalogue of the 10k detection
    table (the same draw), topped up with synthetic filler (:func:`filler_melodies`) to each size.
    Queries: light partial and medium whole copies of real catalogue works, as in the detection
    tables. Reports ingest rate, memory and disk, our latency (with its stages) and the
    baseline's on the first ``baseline_queries`` queries. Recall is printed as a sanity check of
    the search, not as a quality figure (the filler is not real music)."""
    from melodyguard.index import Catalogue

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    hosts = [pool[i] for i in order[:500]]
    cat_tunes = [pool[i] for i in order[500:500 + 10000]]
    negatives, _ = drop_near_duplicates(hosts, cat_tunes)
    queries = [q for q in make_queries(cat_tunes, negatives, n=n_queries // 2, rng=rng)
               if (q["kind"], q["level"]) in {("whole", "medium"), ("partial", "light")}]
    # Filler comes from the default collections only, so the figures do not depend on whether
    # another style (``build_corpus.py --collections palestrina``) was exported on this machine.
    sources = [t.melody for t in load_corpus(splits=None, collections=DEFAULT_COLLECTIONS)]
    frng = np.random.default_rng(seed + 1)
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-scale-"))
    res: dict[str, Any] = {"real_works": len(cat_tunes), "rows": []}
    try:
        r0 = rss_mb()
        cat = Catalogue(tmp / "cat", encoder=enc, index_kind=index_kind)
        for b in range(0, len(cat_tunes), 500):
            cat.add_melodies([{"melody": t.melody, "sha256": t.key, "title": t.title} for t in cat_tunes[b:b + 500]])
        n_works = len(cat_tunes)
        sha_to_i = {t.key: i for i, t in enumerate(cat_tunes)}
        wid_to_i = {w.id: sha_to_i[w.sha256] for w in cat.works()}
        cat_notes = [interval_notes(t.melody) for t in cat_tunes]
        align_intervals(cat_notes[0][0], cat_notes[0][1], cat_notes[1][0], cat_notes[1][1])  # compile
        for size in sorted(sizes):
            t1 = time.perf_counter()
            k = 0
            while n_works < size:
                m = min(2000, size - n_works)
                fill = filler_melodies(sources, m, rng=frng)
                cat.add_melodies([{"melody": f, "sha256": f"filler:{n_works + j}", "title": "filler"}
                                  for j, f in enumerate(fill)])
                cat_notes += [interval_notes(f) for f in fill]
                n_works += m
                k += m
            t_add = time.perf_counter() - t1
            t2 = time.perf_counter()
            idx, _ = cat.index()
            t_index = time.perf_counter() - t2
            lat: list[float] = []
            stages: dict[str, list[float]] = {}
            r1: list[bool] = []
            for q, rep in timed_checks(queries, cat, stages, lat):
                r1.append(bool(rep["matches"]) and wid_to_i.get(rep["matches"][0]["work"]["id"]) == q["source"])
            bl = []
            for q in queries[:baseline_queries]:
                t4 = time.perf_counter()
                baseline_scores(q["melody"], cat_notes)
                bl.append(time.perf_counter() - t4)
            disk = sum(f.stat().st_size for f in (tmp / "cat").rglob("*") if f.is_file())
            row = {"works": n_works, "vectors": idx.ntotal, "index_kind": idx.manifest.kind,
                   "index_params": idx.manifest.params,
                   "ingest_works_per_s": round(k / t_add, 1) if k else None, "index_build_s": round(t_index, 1),
                   "disk_mb": round(disk / 2**20), "rss_mb_growth": round(rss_mb() - r0),
                   "latency_ms_p50": round(1000 * float(np.median(lat)), 1),
                   "latency_ms_p95": round(1000 * float(np.percentile(lat, 95)), 1),
                   "latency_stages_ms_p50": {key: round(float(np.median(v)), 1) for key, v in stages.items()},
                   "baseline_latency_ms_p50": round(1000 * float(np.median(bl)), 1),
                   "speedup_vs_baseline_p50": round(float(np.median(bl)) / max(float(np.median(lat)), 1e-9), 1),
                   "queries": len(queries), "sanity_recall@1_strict": round(float(np.mean(r1)), 3)}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
        cat.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def generation_section(enc: Encoder, pool, *, n: int, seed: int) -> dict[str, Any]:
    """Simple statistics of generated melodies against held-out corpus melodies (first 32 beats)."""
    from melodyguard.model.generate import sample_melodies

    rng = np.random.default_rng(seed)

    def stats(mels) -> dict[str, Any]:
        iv = np.zeros(25)
        du: dict[float, int] = {}
        ranges, variety = [], []
        for m in mels:
            p = np.asarray(m.pitches)
            np.add.at(iv, np.clip(np.diff(p), -12, 12) + 12, 1)
            d = np.round(note_iois(m.onsets_beats, m.durations_beats) / np.median(note_iois(m.onsets_beats, m.durations_beats)), 2)
            for x in d:
                du[x] = du.get(x, 0) + 1
            ranges.append(int(p.max() - p.min()))
            variety.append(len(set(d.tolist())))
        return {"iv": iv / iv.sum(), "du": du, "range": float(np.mean(ranges)), "variety": float(np.mean(variety))}

    def tv(a: dict, b: dict) -> float:
        keys = set(a) | set(b)
        sa, sb = sum(a.values()), sum(b.values())
        return 0.5 * sum(abs(a.get(k, 0) / sa - b.get(k, 0) / sb) for k in keys)

    corpus = []
    for i in rng.choice(len(pool), size=n, replace=False):
        m = pool[int(i)].melody
        k = int(np.searchsorted(m.onsets_beats, m.onsets_beats[0] + 32.0))
        if k >= 8:
            corpus.append(m.slice(0, k))
    gen = sample_melodies(enc, n, bars=8, seed=seed)
    walk = []
    for _ in range(n):
        p = 67 + np.cumsum(rng.integers(-4, 5, size=48))
        d = rng.choice([0.25, 0.5, 1.0, 2.0], size=48)
        walk.append(Melody.from_notes(p, np.concatenate([[0], np.cumsum(d)[:-1]]), d))
    c, g, w = stats(corpus), stats(gen), stats(walk)
    return {
        "melodies": n,
        "pitch_range_semitones": {"corpus": round(c["range"], 1), "generated": round(g["range"], 1), "random_walk": round(w["range"], 1)},
        "interval_histogram_tv_to_corpus": {"generated": round(0.5 * float(np.abs(g["iv"] - c["iv"]).sum()), 3),
                                            "random_walk": round(0.5 * float(np.abs(w["iv"] - c["iv"]).sum()), 3)},
        "duration_histogram_tv_to_corpus": {"generated": round(tv(g["du"], c["du"]), 3), "random_walk": round(tv(w["du"], c["du"]), 3)},
        "distinct_durations_per_melody": {"corpus": round(c["variety"], 2), "generated": round(g["variety"], 2),
                                          "random_walk": round(w["variety"], 2)},
    }


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def print_markdown(results: dict[str, Any]) -> None:
    if "model" in results:
        m = results["model"]
        print("\n### Model (held-out windows)\n")
        print("| metric | value |\n|---|---|")
        for k, v in m.items():
            print(f"| {k} | {v} |")
    pool = "" if results.get("pool", "folk") in ("folk", "train") else f" ({results['pool']})"
    kind = "training-split" if results.get("pool") == "train" else "held-out"
    for key in sorted(k for k in results if k.startswith("detect_")):
        d = results[key]
        _table(f"Detection, catalogue of {d['catalogue_works']} {kind} works{pool} ({d['index_kind']} index, {d['vectors']} vectors)",
               ["query", "level", "n", "recall@1", "(as ranked)", "MRR", "TPR@1%FPR",
                "flagged by default" + (" (catalogue law; shipped law)" if "catalogue_law" in d else ""),
                "baseline recall@1", "(as ranked)", "baseline MRR", "baseline TPR@1%FPR", "ours on the same n"],
               [[r["kind"], r["level"], r["queries"], f"{r['recall@1']:.3f}", f"{r.get('recall@1_strict', r['recall@1']):.3f}",
                 f"{r['mrr']:.3f}", f"{r['tpr@1%fpr']:.3f}", f"{r['flagged_default']:.3f}"
                 + (f" ({r['flagged_default_shipped_law']:.3f})" if "flagged_default_shipped_law" in r else ""), f"{r['baseline_recall@1']:.3f}",
                 f"{r.get('baseline_recall@1_strict', r['baseline_recall@1']):.3f}", f"{r['baseline_mrr']:.3f}",
                 f"{r['baseline_tpr@1%fpr']:.3f}",
                 f"R@1 {r['ours_recall@1_paired']:.3f}, TPR {r['ours_tpr_paired']:.3f} (n={r['paired_queries']})"]
                for r in d["levels"]])
        print()
        for k in ("catalogue_law", "negatives", "negatives_dropped_as_duplicates", "fpr_default_review",
                  "fpr_default_review_shipped_law", "fpr_default_block", "fpr_default_review_backwards_negatives",
                  "fpr_default_review_backwards_negatives_shipped_law",
                  "fpr_default_review_backwards_negatives_relatives_out",
                  "fpr_default_review_backwards_negatives_relatives_out_shipped_law",
                  "negatives_with_recorded_variant", "fpr_default_review_no_recorded_variant", "flagged_negatives",
                  "fpr_default_block_backwards_negatives",
                  "ingest_works_per_s",
                  "latency_ms_p50", "latency_ms_p95", "latency_stages_ms_p50", "baseline_latency_ms_p50",
                  "speedup_vs_baseline_p50",
                  "disk_bytes_per_work", "ram_mb_growth_per_1k_works", "ann_recall_at_10"):
            if k in d:
                print(f"- {k}: {d[k]}")
        if any("recall@1_dups_as_one" in r for r in d["levels"]):
            _table("Duplicates of the copied notes counted as one answer",
                   ["query", "level", "n", "with a duplicate in the catalogue", "recall@1", "MRR",
                    "passage recall@1", "ours on the paired n", "baseline recall@1"],
                   [[r["kind"], r["level"], r["queries"], r["queries_with_duplicates"],
                     f"{r['recall@1_dups_as_one']:.3f}", f"{r['mrr_dups_as_one']:.3f}",
                     f"{r['passage_recall@1_dups_as_one']:.3f}" if "passage_recall@1_dups_as_one" in r else "",
                     f"{r['ours_recall@1_paired_dups_as_one']:.3f}", f"{r['baseline_recall@1_dups_as_one']:.3f}"]
                    for r in d["levels"] if "recall@1_dups_as_one" in r])
        for r in d["levels"]:
            if "passage_recall@1" in r:
                print(f"- passage_recall@1 ({r['kind']}, {r['level']}): {r['passage_recall@1']}")
            if "host_without_recorded_variant_recall@1" in r:
                print(f"- hosts without a recorded variant in the catalogue ({r['kind']}, {r['level']}): "
                      f"n {r['host_without_recorded_variant_queries']}, recall@1 "
                      f"{r['host_without_recorded_variant_recall@1']}, TPR@1%FPR {r['host_without_recorded_variant_tpr@1%fpr']}")
        if "two_phrases" in d:
            _table("Two phrases of two works copied into one song",
                   ["host", "level", "n", "both sources reported", "both located", "at least one reported",
                    "ours: both reported (paired n)", "baseline: both in its top 5"],
                   [[r["kind"], r["level"], r["queries"], f"{r['both_reported']:.3f}", f"{r['both_located']:.3f}",
                     f"{r['at_least_one_reported']:.3f}", f"{r['ours_both_reported_paired']:.3f} (n={r['paired_queries']})",
                     f"{r['baseline_both_in_top5']:.3f}"] for r in d["two_phrases"]])
    for key in sorted(k for k in results if k.startswith("hooks_")):
        d = results[key]
        _table(f"Short hooks checked alone, catalogue of {d['catalogue_works']} {kind} works{pool} (law x{d['law_factor']:.3g})",
               ["notes", "edits", "n", "recall@1", "dups as one", "flagged review or block", "block",
                "source -log10 E (median)", "TPR@1%FPR vs backwards hooks", "backwards hooks flagged",
                "real hooks flagged", "baseline (dups as one; TPR)", "ours on the same n"],
               [[r["notes"], r["level"], r["queries"], f"{r['recall@1']:.3f}", f"{r['recall@1_dups_as_one']:.3f}",
                 f"{r['flagged']:.3f}", f"{r['block']:.3f}", r["source_minus_log10_e_median"],
                 f"{r['tpr@1%fpr_vs_backwards']:.3f}", f"{d['negatives'][str(r['notes'])]['backwards']['flagged']:.3f}",
                 f"{d['negatives'][str(r['notes'])]['real']['flagged']:.3f}",
                 f"{r['baseline_recall@1_dups_as_one']:.3f}; {r['baseline_tpr@1%fpr_vs_backwards']:.3f}",
                 f"{r['ours_recall@1_dups_as_one_paired']:.3f}; {r['ours_tpr_paired']:.3f} (n={r['paired_queries']})"]
                for r in d["rows"]])
    for key in sorted(k for k in results if k.startswith("edits_")):
        d = results[key]
        _table(f"Edits the weights never trained on, catalogue of {d['catalogue_works']} {kind} works{pool} "
               f"(law x{d['law_factor']:.3g}; backwards negatives flagged {d['backwards_negatives']['flagged']:.3f})",
               ["edit", "copy", "n", "recall@1", "MRR", "dups as one", "flagged review or block", "block",
                "TPR@1%FPR", "baseline (dups as one; TPR)", "ours on the same n"],
               [[r["edit"], r["kind"], r["queries"], f"{r['recall@1']:.3f}", f"{r['mrr']:.3f}",
                 f"{r['recall@1_dups_as_one']:.3f}", f"{r['flagged']:.3f}", f"{r['block']:.3f}",
                 f"{r['tpr@1%fpr']:.3f}" if "tpr@1%fpr" in r else "—",
                 f"{r['baseline_recall@1_dups_as_one']:.3f}; " + (f"{r['baseline_tpr@1%fpr']:.3f}"
                                                                  if "baseline_tpr@1%fpr" in r else "—"),
                 f"{r['ours_recall@1_dups_as_one_paired']:.3f}; " + (f"{r['ours_tpr_paired']:.3f}"
                                                                     if "ours_tpr_paired" in r else "—")
                 + f" (n={r['paired_queries']})"]
                for r in d["rows"]])
    if "memorization" in results:
        d = results["memorization"]
        _table(f"Does the generator copy its training tunes? ({d['training_catalogue_works']} training works)",
               ["queries (8 bars)", "n", "flagged review or block", "block", "-log10 E, 99th pct",
                "equal notes in flagged matches (median)"],
               [[r["queries"], r["n"], f"{r['review_rate']:.3f}", f"{r['block_rate']:.3f}", r["minus_log10_e_p99"],
                 r["median_equal_notes_flagged"]] for r in d["rows"]])
    if "tracks" in results:
        _table("Multi-track MIDI: the melody line against every line (1,000 held-out works)",
               ["songs (6 tracks)", "lines checked", "n", "recall@1", "flagged review or block", "latency p50 (ms, with parsing)"],
               [[r["songs"], r["lines"], r["n"], "—" if r["recall@1"] is None else f"{r['recall@1']:.3f}",
                 f"{r['flagged']:.3f}", r["latency_ms_p50"]] for r in results["tracks"]["rows"]])
    if "scale" in results:
        d = results["scale"]
        _table(f"Speed at larger catalogues ({d['real_works']} held-out works plus synthetic filler)",
               ["works", "vectors", "index", "ingest works/s", "index build (s)", "disk (MB)", "RSS growth (MB)",
                "p50 (ms)", "p95 (ms)", "stages p50 (ms)", "baseline p50 (ms)", "speed-up", "sanity recall@1"],
               [[r["works"], r["vectors"], f"{r['index_kind']} {r['index_params']}", r["ingest_works_per_s"],
                 r["index_build_s"], r["disk_mb"], r["rss_mb_growth"], r["latency_ms_p50"], r["latency_ms_p95"],
                 ", ".join(f"{k} {v}" for k, v in r["latency_stages_ms_p50"].items()), r["baseline_latency_ms_p50"],
                 f"{r['speedup_vs_baseline_p50']}x", r["sanity_recall@1_strict"]] for r in d["rows"]])
    for key in sorted(k for k in results if k.startswith("null_")):
        d = results[key]
        _table(f"Where false positives come from, catalogue of {d['catalogue_works']} {kind} works{pool}",
               ["queries", "n", "flagged review or block (E <= 1e-4)", "block (E <= 1e-8)", "-log10 E, 90th pct", "99th pct"],
               [[r["queries"], r["n"], f"{r['review_rate']:.3f}", f"{r['block_rate']:.3f}", r["minus_log10_e_p90"],
                 r["minus_log10_e_p99"]] for r in d["rows"]])
    if "generation" in results:
        print("\n### Generation (8 bars, temperature 1) against held-out melodies\n")
        for k, v in results["generation"].items():
            print(f"- {k}: {v}")
    if "parse" in results:
        print("\n### Latency with MIDI parsing\n")
        for k, v in results["parse"].items():
            print(f"- {k}: {v}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="*", default=["model", "generation", "memorization", "detect", "null", "tracks", "parse"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[1000, 10000])
    ap.add_argument("--scale-sizes", nargs="*", type=int, default=[30000, 100000],
                    help="section 'scale': catalogue sizes reached with synthetic filler (speed only)")
    ap.add_argument("--queries", type=int, default=200, help="source works per level")
    ap.add_argument("--negatives", type=int, default=500)
    ap.add_argument("--baseline-queries", type=int, default=100, help="queries per level also run through the baseline")
    ap.add_argument("--window-index", type=int, default=150_000)
    ap.add_argument("--window-queries", type=int, default=2000)
    ap.add_argument("--window-baseline-queries", type=int, default=300,
                    help="window retrieval: queries per level also run through the brute-force alignment baseline")
    ap.add_argument("--index-kind", default="auto")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", choices=["folk", "palestrina", "train"], default="folk",
                    help="held-out tunes for detection and the null study: the folk collections (default) or, "
                         "another style, the voices of Palestrina's masses (scripts/build_corpus.py --collections palestrina); "
                         "'train' uses the weights' own training tunes instead (O'Neill's, Ryan's, Bach; about 3.3k, "
                         "so --sizes 2500), for choosing detection settings without looking at the held-out data")
    ap.add_argument("--law", choices=["catalogue", "shipped"], default="shipped",
                    help="detection: keep the shipped chance law (default, as a catalogue has until `melodyguard "
                         "calibrate` is run), or fit each catalogue's own law on its works played backwards before "
                         "the queries; then the default thresholds' rates are given under both laws")
    ap.add_argument("--law-decoys", type=int, default=600, help="decoys the catalogue law is fitted on")
    ap.add_argument("--json", type=Path, default=Path("runs/benchmark.json"))
    ap.add_argument("--record-manifest", action="store_true",
                    help="write the held-out model and generation figures into the weights' manifest "
                         "(section 'evaluation'; the issue's record of shipped weights)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    enc = load_encoder(a.weights)
    # The other style is for detection and the null study only; every other section measures
    # the folk collections (loaded only when one asks for them).
    other = [s for s in a.sections if s not in ("detect", "null", "hooks", "edits")]
    folk = load_corpus(splits=["heldout"], collections=HELDOUT_COLLECTIONS) if a.pool == "folk" or other else []
    if a.pool == "folk":
        pool = folk
    elif a.pool == "train":
        pool = load_corpus(splits=["train"], collections=TRAIN_COLLECTIONS)
    else:
        pool = load_corpus(splits=["heldout"], collections=STYLE_COLLECTIONS)
    size_key = "training_tunes" if a.pool == "train" else "heldout_tunes"
    if not pool:
        raise SystemExit(f"no held-out tunes of pool {a.pool!r} in the corpus cache; run scripts/build_corpus.py"
                         + (" --collections palestrina" if a.pool == "palestrina" else ""))
    results: dict[str, Any] = {"command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                               "weights": enc.fingerprint, "pool": a.pool, size_key: len(pool), "cpu_count": os.cpu_count()}
    t0 = time.time()
    if "model" in a.sections:
        results["model"] = model_section(enc, folk, n_windows=a.window_index, n_queries=a.window_queries, seed=a.seed,
                                         baseline_queries=a.window_baseline_queries)
        print(json.dumps(results["model"]), flush=True)
    if "generation" in a.sections:
        results["generation"] = generation_section(enc, folk, n=200, seed=a.seed)
        print(json.dumps(results["generation"]), flush=True)
    if "detect" in a.sections:
        for size in a.sizes:
            r = detection_section(enc, pool, size=size, n_queries=a.queries, n_neg=a.negatives,
                                  baseline_queries=a.baseline_queries, seed=a.seed, index_kind=a.index_kind,
                                  law=a.law, law_decoys=a.law_decoys)
            results[f"detect_{size}"] = r
            print(json.dumps(r), flush=True)
    if "hooks" in a.sections:
        for size in a.sizes:
            results[f"hooks_{size}"] = hooks_section(enc, pool, size=size, n=a.queries, n_neg=a.negatives,
                                                     baseline_queries=a.baseline_queries, seed=a.seed,
                                                     index_kind=a.index_kind, law=a.law)
    if "edits" in a.sections:
        for size in a.sizes:
            results[f"edits_{size}"] = edits_section(enc, pool, size=size, n=a.queries, n_neg=a.negatives,
                                                     baseline_queries=a.baseline_queries, seed=a.seed,
                                                     index_kind=a.index_kind, law=a.law)
    if "null" in a.sections:
        for size in a.sizes:
            results[f"null_{size}"] = null_section(enc, pool, size=size, n=300, seed=a.seed, index_kind=a.index_kind)
            print(json.dumps(results[f"null_{size}"]), flush=True)
    if "memorization" in a.sections:
        results["memorization"] = memorization_section(enc, folk, n=300, seed=a.seed, index_kind=a.index_kind)
        print(json.dumps(results["memorization"]), flush=True)
    if "tracks" in a.sections:
        results["tracks"] = tracks_section(enc, folk, seed=a.seed, index_kind=a.index_kind)
        print(json.dumps(results["tracks"]), flush=True)
    if "parse" in a.sections:
        results["parse"] = parse_latency(enc, folk, n=100, seed=a.seed)
    if "scale" in a.sections:
        results["scale"] = scale_section(enc, folk, sizes=a.scale_sizes, seed=a.seed, index_kind=a.index_kind)
    results["seconds"] = round(time.time() - t0, 1)
    if a.record_manifest:
        if "model" not in results:
            raise SystemExit("--record-manifest needs the 'model' section")
        record_evaluation(a.weights or default_weights_path(),
                          {"split": "heldout (Essen, Aird's Airs, miscFolk; never trained on)",
                           "model": results["model"], **({"generation": results["generation"]}
                                                         if "generation" in results else {})},
                          command=results["command"])
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=2, default=float))
    print_markdown(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
