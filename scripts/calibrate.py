#!/usr/bin/env python
"""Fit the verification scoring and its extreme-value law (lambda, K) on the training split.

    python scripts/calibrate.py [--search] [--pairs 4000]

Everything here uses the corpus' *training* split only (O'Neill's, Ryan's, Bach), so the
held-out benchmarks stay unseen.

1. **Background.** Distributions of pitch intervals and duration ratios, for the note weights
   (:func:`melodyguard.align.note_weights`).
2. **Scoring search** (``--search``; ``--ornament-search`` searches only the ornament move). A small grid of per-note scores is tried. For each, the
   null scores of unrelated pairs are fitted to a Gumbel law and synthetic copies (partial
   copies inserted into other tunes, and whole copies, edited by :mod:`melodyguard.augment`)
   are scored; the grid point with the highest mean true-positive rate at a per-pair E-value
   of 1e-6 (about a 1 % false-positive rate over a 10k-work catalogue) wins.
3. **Null fit.** For unrelated pairs the transposition is chosen the way detection chooses it
   (from the windows' reference pitches, best of two), the best local alignment score S is
   recorded, and S is fitted by maximum likelihood to a Gumbel law with location
   ln(K m n) / lambda and scale 1 / lambda (m, n: the lengths in notes), as in BLAST's
   Karlin-Altschul statistics. The top 0.5 % of null scores are dropped: the collections
   print some tunes twice, and those pairs are not unrelated.
4. **Collapsed law** (``--collapsed``). The same fit for repeat-collapsed melodies (runs of one
   repeated pitch joined, :func:`melodyguard.fingerprint.melody.collapse_repeats`), which audio
   queries are also matched as. Collapsed melodies have no repeated notes and fewer, longer
   notes, so chance alignments score higher; they get their own (lambda, K), stored under
   ``"collapsed"`` in the calibration file next to the main law (which is left unchanged).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard.align import DEFAULT_SCORING, Scoring, align_notes, note_iois, note_weights  # noqa: E402
from melodyguard.augment import augment  # noqa: E402
from melodyguard.corpus import TRAIN_COLLECTIONS, load_corpus  # noqa: E402


def background_of(tunes) -> dict:
    iv_counts = np.ones(25)
    r_counts = np.ones(13)
    for t in tunes:
        p = np.asarray(t.melody.pitches)
        lg = np.log2(note_iois(t.melody.onsets_beats, t.melody.durations_beats))
        np.add.at(iv_counts, np.clip(np.diff(p), -12, 12) + 12, 1)
        np.add.at(r_counts, np.clip(np.rint(2 * np.diff(lg)), -6, 6).astype(int) + 6, 1)
    piv, pr = iv_counts / iv_counts.sum(), r_counts / r_counts.sum()
    s_iv, s_r = -np.log2(piv), -np.log2(pr)
    return {
        "interval_surprisal": [round(float(x), 4) for x in s_iv],
        "ratio_surprisal": [round(float(x), 4) for x in s_r],
        "mean_surprisal": round(float((piv * s_iv).sum() + (pr * s_r).sum()), 4),
    }


def _best(q, r, qi, ri, transpositions, ratio, scoring, bg) -> float:
    wq = note_weights(q, qi, bg, scoring=scoring)
    wr = note_weights(r, ri, bg, scoring=scoring)
    best = 0.0
    for t in transpositions:
        al = align_notes(q, qi, r, ri, transposition=int(t), tempo_ratio=ratio, max_segments=1,
                         q_weight=wq, r_weight=wr, scoring=scoring)
        if al:
            best = max(best, al[0].score)
    return best


def null_pairs(tunes, n, rng):
    out = []
    for _ in range(n):
        i, j = rng.choice(len(tunes), size=2, replace=False)
        q, r = tunes[i].melody, tunes[j].melody
        base = int(np.floor(np.median(r.pitches)) - np.floor(np.median(q.pitches)))
        ds = rng.choice([-2, -1, 0, 1, 2], size=2, replace=False)
        out.append((np.asarray(q.pitches), note_iois(q.onsets_beats, q.durations_beats), np.asarray(r.pitches),
                    note_iois(r.onsets_beats, r.durations_beats), [base + int(d) for d in ds]))
    return out


def positive_pairs(tunes, n, rng):
    """(kind, query notes, source notes, true transposition) for partial and whole copies."""
    out = []
    for kind, level in (("partial", "light"), ("partial", "medium"), ("whole", "medium"), ("whole", "heavy")):
        for _ in range(n):
            src = tunes[int(rng.integers(len(tunes)))].melody
            p, o, d = np.asarray(src.pitches), np.asarray(src.onsets_beats), np.asarray(src.durations_beats)
            t = int(rng.integers(-5, 6))
            if kind == "whole":
                q = augment((p + t, o, d), level, rng=rng)
                ratio = float(np.median(note_iois(o, d)) / np.median(note_iois(q[1], q[2])))
                out.append((kind + "-" + level, q[0], note_iois(q[1], q[2]), p, note_iois(o, d), ratio, t))
                continue
            ln = int(rng.integers(12, 25))
            if len(p) < ln + 1:
                continue
            s = int(rng.integers(0, len(p) - ln))
            ex = augment((p[s:s + ln] + t, o[s:s + ln] - o[s], d[s:s + ln]), level, rng=rng)
            host = tunes[int(rng.integers(len(tunes)))].melody
            hp, ho, hd = np.asarray(host.pitches), np.asarray(host.onsets_beats), np.asarray(host.durations_beats)
            k = int(rng.integers(0, len(hp) + 1))
            scale = float(np.median(note_iois(ho, hd)) / max(np.median(note_iois(ex[1], ex[2])), 1e-6))
            start = ho[k - 1] + hd[k - 1] if k > 0 else 0.0
            span = (ex[1][-1] + ex[2][-1]) * scale
            P = np.concatenate([hp[:k], ex[0], hp[k:]])
            O = np.concatenate([ho[:k], start + ex[1] * scale, ho[k:] + span])
            D = np.concatenate([hd[:k], ex[2] * scale, hd[k:]])
            ratio = float(np.median(note_iois(o[s:s + ln], d[s:s + ln])) / np.median(note_iois(ex[1] * scale, ex[2] * scale)))
            out.append((kind + "-" + level, P, note_iois(O, D), p, note_iois(o, d), ratio, t))
    return out


def scoring_with(base: Scoring, items: list[str]) -> Scoring:
    """``base`` with the ``NAME=VALUE`` overrides of ``--score`` (ValueError names the bad one)."""
    fields = [f.name for f in dataclasses.fields(base)]
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields or not value:
            raise ValueError(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
        kind = type(getattr(base, name))
        bools = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        try:
            v = bools[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            raise ValueError(f"{item!r}: {value!r} is not a {kind.__name__}") from None
        if kind is float and not np.isfinite(v):
            raise ValueError(f"{item!r}: the score must be finite")
        base = dataclasses.replace(base, **{name: v})
    return base


def fit_gumbel(S, M, N):
    from scipy.optimize import minimize

    keep = S <= np.quantile(S, 0.995)
    S, M, N = S[keep], M[keep].astype(float), N[keep].astype(float)
    lmn = np.log(M * N)

    def nll(theta):
        lam, lnK = np.exp(theta[0]), theta[1]
        z = lam * S - lnK - lmn
        return -np.sum(np.log(lam) - z - np.exp(-z))

    res = minimize(nll, x0=[np.log(0.5), np.log(0.05)], method="Nelder-Mead",
                   options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-6})
    return float(np.exp(res.x[0])), float(np.exp(res.x[1])), int(keep.sum())


def evaluate(scoring, bg, nulls, positives):
    S = np.array([_best(q, r, qi, ri, ts, float(np.median(ri) / np.median(qi)), scoring, bg) for q, qi, r, ri, ts in nulls])
    M = np.array([len(x[0]) for x in nulls])
    N = np.array([len(x[2]) for x in nulls])
    lam, K, _ = fit_gumbel(S, M, N)
    tpr: dict[str, list[bool]] = {}
    for kind, q, qi, r, ri, ratio, _t in positives:
        # augment() transposes again by an unknown amount; detection reads the transposition
        # off the window hits, so here the best of all transpositions stands in for it.
        s = _best(q, r, qi, ri, range(-12, 13), ratio, scoring, bg)
        e = K * len(q) * len(r) * np.exp(-lam * s)
        tpr.setdefault(kind, []).append(e <= 1e-6)
    return lam, K, {k: float(np.mean(v)) for k, v in tpr.items()}


def _search(candidates, bg, nulls, positives, log: list):
    """The candidate scoring with the highest mean true-positive rate (the first of equals);
    every candidate's figures are printed and appended to ``log``."""
    best, chosen = -1.0, candidates[0]
    for sc in candidates:
        lam, K, tpr = evaluate(sc, bg, nulls, positives)
        mean = float(np.mean(list(tpr.values())))
        log.append({"scoring": dataclasses.asdict(sc), "lambda": lam, "K": K, "tpr": tpr, "mean_tpr": mean})
        print(json.dumps(log[-1]), flush=True)
        if mean > best:
            best, chosen = mean, sc
    return chosen


def thresholds(a) -> int:
    """E-values of the best match of unrelated training-split tunes (1,500-work catalogue)."""
    import tempfile

    from melodyguard.detect import check_melody
    from melodyguard.index import Catalogue
    from melodyguard.model.encoder import load_encoder

    tunes = load_corpus(splits=["train", "valid"], collections=TRAIN_COLLECTIONS)
    rng = np.random.default_rng(a.seed + 1)
    order = rng.permutation(len(tunes))
    cat_t = [tunes[i] for i in order[:1500]]
    neg = [tunes[i] for i in order[1500:2100]]
    feats = [(np.asarray(t.melody.pitches), note_iois(t.melody.onsets_beats, t.melody.durations_beats)) for t in cat_t]
    from melodyguard.align import is_near_duplicate

    neg = [t for t in neg if not any(is_near_duplicate(np.asarray(t.melody.pitches),
                                                       note_iois(t.melody.onsets_beats, t.melody.durations_beats), p, i)
                                     for p, i in feats)]
    with tempfile.TemporaryDirectory() as d:
        cat = Catalogue(Path(d) / "c", encoder=load_encoder())
        cat.add_melodies([{"melody": t.melody, "sha256": t.key, "title": t.title} for t in cat_t])
        evs: list[float] = []
        for t in neg:
            rep = check_melody(t.melody, cat)
            evs.append(rep["matches"][0]["score"]["evalue"] if rep["matches"] else 1e9)
    ev = np.sort(np.asarray(evs))
    out = {"negatives": int(ev.size), "catalogue": len(cat_t), "quantile_1pct": float(np.quantile(ev, 0.01)),
           "quantile_5pct": float(np.quantile(ev, 0.05)), "min": float(ev[0]), "lowest_10": ev[:10].tolist(),
           "command": f"python scripts/calibrate.py --thresholds --seed {a.seed}"}
    print(json.dumps(out))
    cal = json.loads(a.out.read_text())
    cal["thresholds_measurement"] = out
    a.out.write_text(json.dumps(cal, indent=2) + "\n")
    return 0


def collapsed_law(a) -> int:
    from types import SimpleNamespace

    from melodyguard.detect import load_calibration
    from melodyguard.fingerprint.melody import collapse_repeats

    t0 = time.time()
    cal = load_calibration(a.out)
    tunes = [SimpleNamespace(melody=collapse_repeats(t.melody)[0]) for t in load_corpus(splits=["train"], collections=TRAIN_COLLECTIONS)]
    tunes = [t for t in tunes if len(t.melody) >= 8]
    rng = np.random.default_rng(a.seed)
    bg = cal.info.get("background")
    nulls = null_pairs(tunes, a.pairs, rng)
    S = np.array([_best(q, r, qi, ri, ts, float(np.median(ri) / np.median(qi)), cal.scoring, bg) for q, qi, r, ri, ts in nulls])
    M = np.array([len(x[0]) for x in nulls])
    N = np.array([len(x[2]) for x in nulls])
    lam, K, kept = fit_gumbel(S, M, N)
    d = json.loads(a.out.read_text())
    d["collapsed"] = {"lambda": lam, "K": K, "pairs": kept, "seconds": round(time.time() - t0, 1),
                      "command": f"python scripts/calibrate.py --collapsed --pairs {a.pairs} --seed {a.seed}"}
    a.out.write_text(json.dumps(d, indent=2) + "\n")
    print(json.dumps(d["collapsed"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--search", action="store_true", help="search the scoring grid first")
    ap.add_argument("--ornament-search", action="store_true",
                    help="search only the ornament move's cost and interval (other scores as they are) first")
    ap.add_argument("--thresholds", action="store_true",
                    help="measure the E-values of unrelated training-split tunes against a training-split catalogue "
                         "with the shipped encoder, to set the default verdict thresholds")
    ap.add_argument("--collapsed", action="store_true",
                    help="fit only the law for repeat-collapsed melodies and add it to the existing file")
    ap.add_argument("--score", action="append", default=[], metavar="NAME=VALUE",
                    help="override one per-note score of melodyguard.align.Scoring before fitting (repeatable), "
                         "e.g. --score near=-0.6 --out cal.json, to compare scorings by detection "
                         "(MELODYGUARD_CALIBRATION=cal.json python scripts/benchmark.py --pool train ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "melodyguard" / "calibration.json")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.thresholds:
        return thresholds(a)
    if a.collapsed:
        return collapsed_law(a)
    try:
        scoring = scoring_with(DEFAULT_SCORING, a.score)
    except ValueError as e:
        raise SystemExit(f"--score: {e}") from None
    tunes = load_corpus(splits=["train"], collections=TRAIN_COLLECTIONS)
    rng = np.random.default_rng(a.seed)
    bg = background_of(tunes)
    search: list[Any] = []
    if a.search:
        nulls = null_pairs(tunes, 1500, rng)
        positives = positive_pairs(tunes, 100, rng)
        grid = itertools.product([-1.7, -3.0], [-0.6, -1.2], [-1.0, -2.0], [0.3, 0.7], [-0.7, -1.5], [True, False])
        scoring = _search([dataclasses.replace(scoring, other=other, near=near, gap=gap, rhythm_hit=rh,
                                               rhythm_miss=rm, weighted=weighted)
                           for other, near, gap, rh, rm, weighted in grid], bg, nulls, positives, search)
    if a.ornament_search:
        nulls = null_pairs(tunes, 1500, rng)
        positives = positive_pairs(tunes, 300, rng)
        scoring = _search([dataclasses.replace(scoring, ornament=orn, ornament_interval=iv)
                           for orn, iv in itertools.product([-0.8, -1.0, -1.3, -1.6], [2, 4])],
                          bg, nulls, positives, search)
    nulls = null_pairs(tunes, a.pairs, rng)
    S = np.array([_best(q, r, qi, ri, ts, float(np.median(ri) / np.median(qi)), scoring, bg) for q, qi, r, ri, ts in nulls])
    M = np.array([len(x[0]) for x in nulls])
    N = np.array([len(x[2]) for x in nulls])
    lam, K, kept = fit_gumbel(S, M, N)
    E = K * M * N * np.exp(-lam * S)
    out = {
        "lambda": lam,
        "K": K,
        "pairs": kept,
        "scoring": dataclasses.asdict(scoring),
        "background": bg,
        "fitted_on": "corpus train split (" + ", ".join(TRAIN_COLLECTIONS) + ")",
        "check_share_E_below_0.01": float(np.mean(E <= 0.01)),
        "check_share_E_below_0.1": float(np.mean(E <= 0.1)),
        "search": sorted(search, key=lambda r: -r["mean_tpr"])[:5],
        "seconds": round(time.time() - t0, 1),
        "command": "python scripts/calibrate.py" + (" --search" if a.search else "")
        + (" --ornament-search" if a.ornament_search else "") + "".join(f" --score {x}" for x in a.score)
        + f" --pairs {a.pairs} --seed {a.seed}",
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("background", "search")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
