#!/usr/bin/env python
"""Audio benchmark: FluidSynth renditions of held-out tunes queried against a MIDI catalogue.

Conditions (each query: a random instrument of piano / flute / strings / saw lead / choir,
white noise at 20 dB SNR, a random shift of -2..+2 semitones, tempo x0.9..x1.1):

- ``solo``: the whole tune, alone;
- ``accompanied``: the same over block chords, bass and drums;
- ``partial``: 8-16 notes of the tune inside an unrelated host melody, solo.

Negatives are renditions of held-out tunes outside the catalogue (near-duplicates of catalogue
works dropped). Also: the real-time factor of extraction and of the whole check on a
3-minute track, and the pitch-tracker comparison (SwiftF0 vs librosa.pyin; pesto-pitch cannot
be installed beside torch 2.13, which has no matching torchaudio).

    python scripts/benchmark_audio.py --size 1000 --queries 60 --negatives 60
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import drop_near_duplicates, tpr_at_fpr  # noqa: E402

from melodyguard.corpus import HELDOUT_COLLECTIONS, load_corpus  # noqa: E402
from melodyguard.errors import MelodyGuardError  # noqa: E402
from melodyguard.fingerprint import extract_melody  # noqa: E402
from melodyguard.fingerprint.audio import AudioConfig, decode_audio, segment_notes, track_pitch  # noqa: E402
from melodyguard.model.encoder import load_encoder  # noqa: E402
from melodyguard.render import add_noise, render_midi, wav_bytes  # noqa: E402

SR = 22050
PROGRAMS = {"piano": 0, "flute": 73, "strings": 48, "saw lead": 81, "choir": 52}


def _midi(pitches, onsets, durs, *, tempo: float, program: int, accompany: bool = False) -> bytes:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    spb = 60.0 / tempo
    lead = pretty_midi.Instrument(program)
    for p, o, d in zip(pitches, onsets, durs):
        lead.notes.append(pretty_midi.Note(110, int(p), float(o) * spb, float(o + max(d, 0.1)) * spb))
    pm.instruments.append(lead)
    if accompany:
        chords, bass, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(33), pretty_midi.Instrument(0, is_drum=True)
        end = float(onsets[-1] + durs[-1])
        root = int(np.median(pitches)) - 12
        b = 0.0
        while b < end:
            r = root + [0, 5, 7, 2][int(b // 4) % 4] - 12
            for iv in (0, 4, 7):
                chords.notes.append(pretty_midi.Note(50, r + 12 + iv, b * spb, (b + 3.9) * spb))
            bass.notes.append(pretty_midi.Note(70, r - 12, b * spb, (b + 1.9) * spb))
            for j in range(4):
                drums.notes.append(pretty_midi.Note(80, 36 if j % 2 == 0 else 38, (b + j) * spb, (b + j + 0.1) * spb))
            b += 4
        pm.instruments += [chords, bass, drums]
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def _rendition(notes, rng, *, accompany: bool = False) -> tuple[bytes, dict[str, Any]]:
    p, o, d = notes
    name = list(PROGRAMS)[int(rng.integers(len(PROGRAMS)))]
    shift = int(rng.integers(-2, 3))
    tempo = 110.0 * float(rng.uniform(0.9, 1.1))
    y = render_midi(_midi(np.clip(p + shift, 36, 96), o, d, tempo=tempo, program=PROGRAMS[name], accompany=accompany),
                    sample_rate=SR)
    y = add_noise(y, snr_db=20.0, rng=rng)
    return wav_bytes(y, SR), {"instrument": name, "shift": shift, "tempo": round(tempo, 1), "seconds": round(len(y) / SR, 1)}


def _embed(host, src, start: int, n: int):
    """``n`` notes of ``src`` from ``start``, between the first 16 and the next 16 host notes."""
    hp, ho, hd = host
    p, o, d = src
    cut = min(16, len(hp))
    a_end = float(ho[cut - 1] + hd[cut - 1])
    ex_o = o[start:start + n] - o[start] + a_end
    ex_end = float(ex_o[-1] + d[start + n - 1])
    rest = slice(cut, cut + 16)
    tail_o = ho[rest] - (ho[cut] if cut < len(ho) else 0.0) + ex_end
    shift = int(np.median(hp) - np.median(p[start:start + n]))
    return (np.concatenate([hp[:cut], p[start:start + n] + shift, hp[rest]]),
            np.concatenate([ho[:cut], ex_o, tail_o]), np.concatenate([hd[:cut], d[start:start + n], hd[rest]]))


def _notes(m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(m.pitches), np.asarray(m.onsets_beats), np.asarray(m.durations_beats)


def _check(data: bytes, cat) -> tuple[dict[str, Any] | None, float, float]:
    from melodyguard.detect import check_melody

    t0 = time.perf_counter()
    try:
        mel = extract_melody(data, filename="q.wav")
    except MelodyGuardError:
        return None, time.perf_counter() - t0, 0.0
    t1 = time.perf_counter()
    rep = check_melody(mel, cat)
    return rep, t1 - t0, time.perf_counter() - t1


def _score(rep: dict[str, Any] | None, wid: int | None) -> tuple[int, float]:
    """(rank of the source work or 0, -log10 E of the source or of the best match for negatives)."""
    if rep is None or not rep["matches"]:
        return 0, -10.0
    ids = [m["work"]["id"] for m in rep["matches"]]
    if wid is None:
        return 0, -np.log10(max(rep["matches"][0]["score"]["evalue"], 1e-300))
    if wid not in ids:
        return 0, -10.0
    return ids.index(wid) + 1, -np.log10(max(rep["matches"][ids.index(wid)]["score"]["evalue"], 1e-300))


def tracker_comparison(pool, rng, *, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = []
    for t in [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]:
        p, o, d = _notes(t.melody)
        data, meta = _rendition((p, o, d), rng)
        items.append((data, p + meta["shift"]))
    for tracker in ("swift-f0", "pyin"):
        cfg = AudioConfig(tracker=tracker)
        acc, secs, audio_s = [], 0.0, 0.0
        for data, truth in items:
            y, facts = decode_audio(data, config=cfg)
            t0 = time.perf_counter()
            tr = track_pitch(y, config=cfg)
            secs += time.perf_counter() - t0
            audio_s += facts["duration_seconds"]
            est, _, _, _ = segment_notes(tr, config=cfg)
            acc.append(difflib.SequenceMatcher(a=list(truth), b=list(est), autojunk=False).ratio())
        out[tracker] = {"note_sequence_similarity": round(float(np.mean(acc)), 4),
                        "tracker_real_time_factor": round(secs / audio_s, 4), "audio_seconds": round(audio_s, 1)}
    out["pesto-pitch"] = "not measured: needs torchaudio, which has no build for torch 2.13"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1000, help="MIDI works in the catalogue")
    ap.add_argument("--queries", type=int, default=60, help="queries per condition")
    ap.add_argument("--negatives", type=int, default=60)
    ap.add_argument("--tracker-tunes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--conditions", nargs="*", default=["solo", "accompanied", "partial"])
    ap.add_argument("--no-timing", action="store_true", help="skip the 3-minute track and the tracker comparison")
    ap.add_argument("--json", type=Path, default=Path("runs/benchmark_audio.json"))
    a = ap.parse_args(argv)
    import torch

    from melodyguard.index import Catalogue

    torch.set_num_threads(2)
    rng = np.random.default_rng(a.seed)
    enc = load_encoder(None)
    pool = [t for t in load_corpus(splits=["heldout"], collections=HELDOUT_COLLECTIONS) if 24 <= len(t.melody) <= 120]
    order = rng.permutation(len(pool))
    cat_tunes = [pool[i] for i in order[: a.size]]
    hosts = [pool[i] for i in order[a.size: a.size + 3 * a.negatives]]
    res: dict[str, Any] = {"command": "python scripts/benchmark_audio.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                           "catalogue_works": len(cat_tunes), "weights": enc.fingerprint}
    tmp = Path(tempfile.mkdtemp(prefix="mg-audio-"))
    cat = Catalogue(tmp / "cat", encoder=enc)
    cat.add_melodies([{"melody": t.melody, "sha256": t.key, "title": t.title} for t in cat_tunes])
    wid = {w.sha256: w.id for w in cat.works()}
    src = [cat_tunes[i] for i in rng.choice(len(cat_tunes), size=a.queries, replace=False)]
    negatives, dropped = drop_near_duplicates(hosts, cat_tunes)
    negatives = negatives[: a.negatives]
    res["negatives_dropped_as_duplicates"] = dropped

    neg_scores, neg_verdicts, ext_t = [], [], []
    for t in negatives:
        data, _ = _rendition(_notes(t.melody), rng)
        rep, te, _ = _check(data, cat)
        neg_scores.append(_score(rep, None)[1])
        neg_verdicts.append(rep["verdict"] if rep else "no melody")
    neg = np.asarray(neg_scores)
    res["negatives"] = {"n": len(neg), "flagged_review_or_block": int(sum(v in ("review", "block") for v in neg_verdicts)),
                        "no_melody": int(sum(v == "no melody" for v in neg_verdicts))}
    for cond in a.conditions:
        ranks, scores, verdicts = [], [], []
        for i, t in enumerate(src):
            p, o, d = _notes(t.melody)
            if cond == "partial":
                n = int(rng.integers(8, 17))
                st = int(rng.integers(0, max(1, len(p) - n)))
                p, o, d = _embed(_notes(negatives[i % len(negatives)].melody), (p, o, d), st, n)
            data, _ = _rendition((p, o, d), rng, accompany=cond == "accompanied")
            rep, te, _tc = _check(data, cat)
            ext_t.append(te)
            r, sc = _score(rep, wid[t.key])
            ranks.append(r)
            scores.append(sc)
            verdicts.append(rep["verdict"] if rep else "no melody")
        ranks_a = np.asarray(ranks)
        res[cond] = {
            "n": len(ranks), "recall_at_1": round(float(np.mean(ranks_a == 1)), 4),
            "mrr": round(float(np.mean(np.where(ranks_a > 0, 1.0 / np.maximum(ranks_a, 1), 0.0))), 4),
            "tpr_at_1pct_fpr": round(tpr_at_fpr(np.asarray(scores), neg, 0.01), 4),
            "flagged_review_or_block": round(float(np.mean([v in ("review", "block") for v in verdicts])), 4),
            "no_melody": int(sum(v == "no melody" for v in verdicts)),
        }
        print(cond, json.dumps(res[cond]), flush=True)

    if a.no_timing:
        cat.close()
        print(json.dumps(res, indent=2, default=float))
        return 0
    # 3-minute track: tunes back to back, one instrument, extraction and check timed
    parts_p, parts_o, parts_d, t0b = [], [], [], 0.0
    for t in negatives:
        p, o, d = _notes(t.melody)
        parts_p.append(p)
        parts_o.append(o + t0b)
        parts_d.append(d)
        t0b += float(o[-1] + d[-1]) + 2
        if t0b * 60 / 110 > 185:
            break
    y = render_midi(_midi(np.concatenate(parts_p), np.concatenate(parts_o), np.concatenate(parts_d), tempo=110, program=73),
                    sample_rate=SR)
    y = add_noise(y[: 180 * SR], snr_db=20, rng=rng)
    data = wav_bytes(y, SR)
    timing = []
    for _ in range(2):  # the first includes one-off costs (numba JIT in librosa's beat tracker, ONNX session)
        rep, te, tc = _check(data, cat)
        timing.append({"extract_s": round(te, 2), "check_s": round(tc, 2), "total_s": round(te + tc, 2),
                       "real_time_factor": round((te + tc) / 180.0, 4)})
    res["three_minute_track"] = {"first_call": timing[0], "warm": timing[1]}
    res["trackers"] = tracker_comparison(pool, rng, n=a.tracker_tunes)
    cat.close()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
