"""Probe a second training phase: a fingerprint frozen, a detail encoder and the decoder
trained for a few steps; prints greedy reconstruction from mu on held-out windows.

    python scripts/probe_phase2.py --steps 600 --beta 0.03 --z-tokens 0 --parallel --flat \
        --init-from phase1.pt

Every tensor of ``--init-from`` that fits is copied (default: the shipped weights, which are
already a second phase). The probes in docs/benchmarks.md started from the first phase alone,
the weights shipped before the fourteenth session (sha256 6349a63d…):
``git show 45e5764~1:melodyguard/weights/default.pt > phase1.pt`` and the same for
``default.manifest.json`` (as ``phase1.manifest.json``).

Measures 3,000 held-out windows (600 tunes, every 4th window): a quicker, smaller sample than
``benchmark.py --sections model`` (5,000 windows), for comparing settings, not for the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard.corpus import TRAIN_COLLECTIONS, load_corpus  # noqa: E402
from melodyguard.fingerprint.windows import PITCH_PAD, encode_notes  # noqa: E402
from melodyguard.model.config import preset  # noqa: E402
from melodyguard.model.encoder import DEFAULT_WEIGHTS, Encoder, save_weights  # noqa: E402
from melodyguard.model.train import TrainConfig, train_vae  # noqa: E402


def heldout_windows(n_tunes: int = 600, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    held = load_corpus(None, splits=["heldout"])
    rng = np.random.default_rng(0)
    P, R = [], []
    for ti in rng.choice(len(held), n_tunes, replace=False):
        m = held[ti].melody
        p, o, d = np.asarray(m.pitches), np.asarray(m.onsets_beats), np.asarray(m.durations_beats)
        ioi = np.empty_like(o)
        ioi[:-1] = np.diff(o)
        ioi[-1] = d[-1]
        ioi = np.maximum(ioi, 1e-6)
        for s in range(0, max(1, len(p) - 15), 4):
            a, b, _, _ = encode_notes(p[s:s + 16], ioi[s:s + 16], length=16)
            P.append(a)
            R.append(b)
    return np.asarray(P)[:n], np.asarray(R)[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--detail-dims", type=int, default=64)
    ap.add_argument("--detail-layers", type=int, default=2)
    ap.add_argument("--z-tokens", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.002)
    ap.add_argument("--free-bits", type=float, default=0.25)
    ap.add_argument("--word-dropout", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--parallel", action="store_true", help="a parallel (non-autoregressive) decoder")
    ap.add_argument("--flat", action="store_true", help="a flattened (note-exact) detail code")
    ap.add_argument("--dec-layers", type=int, default=None, help="decoder layers (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None, help="also save the probe's weights (with a manifest) here")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/probe-phase2"))
    ap.add_argument("--init-from", type=Path, default=DEFAULT_WEIGHTS,
                    help="weights to start from (verified with their manifest; default: the shipped ones)")
    a = ap.parse_args()
    train = [t.melody for t in load_corpus(None, splits=["train"], collections=TRAIN_COLLECTIONS)]
    P, R = heldout_windows()
    cfg = dataclasses.replace(preset("default"), name="probe", latent_dim=64 + a.detail_dims,
                              detail_layers=a.detail_layers, z_tokens=a.z_tokens, parallel_decoder=a.parallel,
                              detail_flat=a.flat,
                              dec_layers=a.dec_layers or preset("default").dec_layers)
    tc = TrainConfig(steps=a.steps, beta=a.beta, free_bits=a.free_bits, word_dropout=a.word_dropout,
                     contrastive_weight=0.0, freeze_fingerprint=True, lr=a.lr, anneal_frac=0.2,
                     batch_size=a.batch_size)
    t0 = time.time()
    model, summary = train_vae(train, model_config=cfg, train_config=tc, run_dir=a.run_dir, progress=True,
                               init_state=Encoder.load(a.init_from).model.state_dict())
    enc, shipped = Encoder(model, {}), Encoder.load()
    if a.out is not None:
        save_weights(model, a.out, extra={"training": {"probe": vars(a) | {"run_dir": str(a.run_dir), "out": str(a.out)},
                                                       **summary}})
    same = bool(np.array_equal(enc.embed_tokens(P, R), shipped.embed_tokens(P, R)))
    mask = P != PITCH_PAD
    out = {}
    for name, e in (("shipped", shipped), ("probe", enc)):
        rp, rr = e.reconstruct(P, R)
        out[name] = {"note": round(float(((rp == P) & (rr == R))[mask].mean()), 4),
                     "pitch": round(float((rp == P)[mask].mean()), 4), "rhythm": round(float((rr == R)[mask].mean()), 4)}
    with torch.no_grad():
        mu, lv = model.encode(torch.from_numpy(P), torch.from_numpy(R))
        kl = float((0.5 * (mu.pow(2) + lv.exp() - 1 - lv)).sum(1).mean())
    print({"train_minutes": round((time.time() - t0) / 60, 1), "final": summary["final"], "kl_nats": round(kl, 1),
           "fingerprint_unchanged": same, "recon_from_mu": out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
