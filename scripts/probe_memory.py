"""Probe: does a cross-batch negative memory (TrainConfig.memory_size) help window retrieval?

Two arms per run, equal steps and seeds, evaluated on held-out windows (a 60k-window pool,
2,000 queries per edit level, top-1 with identical clean windows counted as hits)::

    # from scratch, the first-phase recipe (1,500 steps, one thread each, run both in parallel)
    python scripts/probe_memory.py --name base --steps 1500
    python scripts/probe_memory.py --name mem8k --steps 1500 --memory 8192 --warmup 300
    # continuing the shipped weights (600 steps at lr 3e-4, memory from the first step)
    python scripts/probe_memory.py --name ft0 --continue-shipped --steps 600 --lr 3e-4
    python scripts/probe_memory.py --name ft4k --continue-shipped --steps 600 --lr 3e-4 --memory 4096 --warmup 0
    # the shipped weights themselves
    python scripts/probe_memory.py --name shipped --eval-only

Runs go to runs/NAME/; the last printed line is the retrieval JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard.align import note_iois  # noqa: E402
from melodyguard.augment import augment  # noqa: E402
from melodyguard.corpus import HELDOUT_COLLECTIONS, TRAIN_COLLECTIONS, load_corpus  # noqa: E402
from melodyguard.fingerprint.windows import encode_notes  # noqa: E402
from melodyguard.model.config import preset  # noqa: E402
from melodyguard.model.encoder import Encoder, save_weights  # noqa: E402
from melodyguard.model.train import TrainConfig, train_vae  # noqa: E402

LEVELS = ("light", "medium", "heavy")


def _notes(melody: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(melody.pitches), np.asarray(melody.onsets_beats), np.asarray(melody.durations_beats)


def evaluate(enc: Encoder, tunes: list[Any], *, n_windows: int = 60000, n_queries: int = 2000,
             seed: int = 0) -> dict[str, float]:
    """Top-1 window retrieval of edited windows among ``n_windows`` held-out windows."""
    import faiss

    rng = np.random.default_rng(seed)
    L = enc.window_config.length
    pitch, rhythm, src = [], [], []
    for ti, tune in enumerate(tunes):
        p, o, d = _notes(tune.melody)
        ioi = note_iois(o, d)
        for s in range(max(1, len(p) - L + 1)):
            pt, rt, _, _ = encode_notes(p[s:s + L], ioi[s:s + L], length=L)
            pitch.append(pt)
            rhythm.append(rt)
            src.append((ti, s))
    P, R, S = np.asarray(pitch), np.asarray(rhythm), np.asarray(src)
    keep = np.sort(rng.choice(len(P), size=min(n_windows, len(P)), replace=False))
    P, R, S = P[keep], R[keep], S[keep]
    index = faiss.IndexFlatIP(enc.dim)
    index.add(enc.embed_tokens(P, R))
    queries = rng.choice(len(P), size=n_queries, replace=False)
    key = P * 16 + R
    out = {}
    for level in LEVELS:
        qp, qr = [], []
        for i in queries:
            ti, s = S[i]
            p, o, d = _notes(tunes[ti].melody)
            q, qo, qd = augment((p[s:s + L + 6], o[s:s + L + 6], d[s:s + L + 6]), level, rng=rng)
            n = min(L, q.size)
            pt, rt, _, _ = encode_notes(q[:n], note_iois(qo, qd)[:n], length=L)
            qp.append(pt)
            qr.append(rt)
        _, top = index.search(enc.embed_tokens(np.asarray(qp), np.asarray(qr)), 1)
        hit = (top[:, 0] == queries) | (key[top[:, 0]] == key[queries]).all(1)
        out[level] = round(float(hit.mean()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--memory", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--continue-shipped", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the shipped weights")
    a = ap.parse_args()
    torch.set_num_threads(1)
    held = load_corpus(splits=["heldout"], collections=HELDOUT_COLLECTIONS)
    shipped = Encoder.load()
    if a.eval_only:
        print(a.name, json.dumps(evaluate(shipped, held)), flush=True)
        return
    tunes = load_corpus(splits=["train"], collections=TRAIN_COLLECTIONS)
    if a.continue_shipped:
        config, init = shipped.config, shipped.model.state_dict()
        tc = TrainConfig(steps=a.steps, lr=a.lr, anneal_frac=0.0, memory_size=a.memory,
                         memory_warmup=a.warmup, threads=1, checkpoint_every=200, seed=1)
    else:
        config, init = preset("default"), None
        tc = TrainConfig(steps=a.steps, lr=a.lr, memory_size=a.memory, memory_warmup=a.warmup,
                         threads=1, checkpoint_every=500)
    run_dir = Path("runs") / a.name
    t0 = time.time()
    model, summary = train_vae([t.melody for t in tunes], model_config=config, train_config=tc,
                               run_dir=run_dir, progress=False, init_state=init)
    print(a.name, "train s", round(time.time() - t0), summary["final"], flush=True)
    save_weights(model, run_dir / "w.pt")
    print(a.name, json.dumps(evaluate(Encoder.load(run_dir / "w.pt"), held)), flush=True)


if __name__ == "__main__":
    main()
