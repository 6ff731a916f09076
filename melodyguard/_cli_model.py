"""CLI commands of the model: train, generate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import EXIT_OK, command


def _setup_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default-detail",
                   help="model preset (default: default-detail, the shipped weights' recipe: phase 1 "
                   "is the 'default' preset, phase 2 trains the decoder with its fingerprint frozen; "
                   "with --init-from W --freeze-fingerprint only phase 2, from W); 'default' (phase "
                   "1 alone), 'small', 'tiny'")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--corpus", type=Path, default=None, help="corpus cache (default: scripts/build_corpus.py's)")
    p.add_argument("--midi-dir", type=Path, default=None, help="train on your own MIDI files instead of the corpus")
    p.add_argument("--run-dir", type=Path, default=Path("runs/vae"), help="checkpoints; re-run to resume")
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.pt; a manifest goes beside it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from these weights (every tensor that fits the preset is copied)")
    p.add_argument("--freeze-fingerprint", action="store_true",
                   help="with --init-from: keep the fingerprint path fixed and train the detail encoder and "
                        "decoder only; catalogues built with the initial weights stay valid")
    p.add_argument("--quiet", action="store_true")


def _cmd_train(a: argparse.Namespace) -> int:
    from .model.training_job import run_training

    manifest = run_training(
        preset=a.preset, steps=a.steps, batch_size=a.batch_size, corpus=a.corpus, midi_dir=a.midi_dir,
        run_dir=a.run_dir, out=a.out, seed=a.seed, progress=not a.quiet,
        init_from=a.init_from, freeze_fingerprint=a.freeze_fingerprint,
    )
    print(json.dumps({"weights": str(a.out), "training": manifest["training"]}))
    return EXIT_OK


_cmd_train.setup = _setup_train  # type: ignore[attr-defined]
command("train", "train the melody VAE on the corpus cache (or your MIDI files); resumable")(_cmd_train)


def _setup_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=8, help="how many melodies")
    p.add_argument("--out", type=Path, required=True, help="output folder for the MIDI files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="token sampling temperature (0 = greedy)")
    p.add_argument("--bars", type=int, default=8, help="length in 4/4 bars")
    p.add_argument("--interpolate", nargs=2, type=Path, metavar=("A", "B"), help="decode the latent path from A to B")
    p.add_argument("--steps", type=int, default=5, help="points on the --interpolate path")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--guard", action="store_true", help="screen every candidate against the catalogue; keep only clear ones")
    p.add_argument("--catalogue", type=Path, default=None, help="catalogue for --guard (default $MELODYGUARD_CATALOGUE)")
    p.add_argument("--budget", type=int, default=None, help="--guard: most candidates to try (default 10 x --n)")


def _cmd_generate(a: argparse.Namespace) -> int:
    from .fingerprint import extract_melody
    from .model.encoder import load_encoder
    from .model.generate import interpolate, melody_to_midi, sample_melodies

    enc = load_encoder(a.weights)
    if a.guard:
        return _guarded(a, enc)
    if a.interpolate:
        ma, mb = (extract_melody(p) for p in a.interpolate)
        mels = interpolate(enc, ma, mb, steps=a.steps)
        stem = "interp"
    else:
        mels = sample_melodies(enc, a.n, bars=a.bars, temperature=a.temperature, seed=a.seed)
        stem = "gen"
    a.out.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(mels):
        path = a.out / f"{stem}_{a.seed:04d}_{i:03d}.mid"
        path.write_bytes(melody_to_midi(m))
        print(json.dumps({"file": str(path), "notes": len(m), "beats": round(m.duration_beats, 2),
                          "pitch_range": int(m.pitches.max() - m.pitches.min()) if len(m) else 0}))
    return EXIT_OK


_cmd_generate.setup = _setup_generate  # type: ignore[attr-defined]
command("generate", "write new melodies sampled from the VAE (or a latent interpolation)")(_cmd_generate)


def _guarded(a: argparse.Namespace, enc) -> int:
    from .guard import guarded_generate
    from .index import Catalogue
    from .model.generate import melody_to_midi

    cat = Catalogue(a.catalogue, encoder=enc)
    res = guarded_generate(enc, cat, a.n, bars=a.bars, temperature=a.temperature, seed=a.seed, budget=a.budget)
    a.out.mkdir(parents=True, exist_ok=True)
    for i, (m, rep) in enumerate(res["kept"]):
        path = a.out / f"gen_{a.seed:04d}_{i:03d}.mid"
        path.write_bytes(melody_to_midi(m))
        closest = None
        if rep["matches"]:
            top = rep["matches"][0]
            closest = {"work": top["work"], "evalue": top["score"]["evalue"], "verdict": top["verdict"]}
        report = {"file": path.name, "verdict": rep["verdict"], "notes": len(m), "closest_match": closest}
        path.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
        print(json.dumps(report, default=float))
    reasons: dict[str, int] = {}
    for r in res["rejected"]:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    summary = {"kept": len(res["kept"]), "tried": res["tried"], "rejected": len(res["rejected"]), "rejected_by_reason": reasons,
               "rejections": res["rejected"]}
    (a.out / "guard_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps({k: v for k, v in summary.items() if k != "rejections"}))
    if len(res["kept"]) < a.n:
        print(f"melodyguard: warning: only {len(res['kept'])} of {a.n} candidates were clear within the budget", file=sys.stderr)
    return EXIT_OK
