"""A whole training job: data selection, training, saving versioned weights."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..corpus import TRAIN_COLLECTIONS, default_corpus_path, load_corpus
from ..errors import ConfigError, MelodyGuardError
from .config import preset as get_preset
from .encoder import save_weights
from .train import PHASE1, PHASE2, TrainConfig, train_vae

__all__ = ["FIRST_PHASE", "run_training"]

#: Presets trained in two phases: the first phase's preset (the fingerprint), then this one
#: with the fingerprint frozen. ``run_training`` runs both when no ``init_from`` is given.
FIRST_PHASE: dict[str, str] = {"default-detail": "default", "tiny-detail": "tiny"}


def _melodies_from_dir(folder: Path) -> list[Any]:
    from ..fingerprint import extract_melody

    out = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in {".mid", ".midi"}:
            try:
                out.append(extract_melody(path))
            except MelodyGuardError:
                continue
    if not out:
        raise ConfigError(f"no usable MIDI melodies under {folder}")
    return out


def run_training(
    *,
    preset: str = "default-detail",
    steps: int | None = None,
    batch_size: int | None = None,
    corpus: Path | None = None,
    midi_dir: Path | None = None,
    run_dir: Path,
    out: Path,
    seed: int = 0,
    progress: bool = True,
    init_from: Path | None = None,
    freeze_fingerprint: bool = False,
    train_config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train on the corpus' training split (or a folder of MIDI files) and save weights.

    ``init_from`` (weights with a manifest, verified on load) initialises every tensor that
    fits the preset; ``freeze_fingerprint`` then trains only the detail encoder and the
    decoder, with the preset's second-phase settings (``PHASE2``). A two-phase preset
    (``FIRST_PHASE``, e.g. ``default-detail``) without ``init_from`` trains its first phase
    (``PHASE1``: the fingerprint alone, in stages) into ``run_dir/phase1.pt``,
    ``run_dir/phase1b.pt``, ... (checkpoints in ``run_dir/phase1``, ...; each reused when
    finished) and then the second from the last; ``steps`` and ``batch_size`` then apply to
    every stage and phase.
    ``train_config`` replaces the settings this call would choose (seed, ``steps`` and
    ``batch_size`` still apply). Returns the manifest written beside ``out``.
    """
    cfg = get_preset(preset)
    if freeze_fingerprint and init_from is None:
        raise ConfigError("--freeze-fingerprint needs --init-from WEIGHTS")
    if init_from is None and preset in FIRST_PHASE:
        init_from = _first_phase(FIRST_PHASE[preset], steps=steps, batch_size=batch_size, corpus=corpus,
                                 midi_dir=midi_dir, run_dir=Path(run_dir), seed=seed, progress=progress)
        freeze_fingerprint = True
    init_state, init_manifest = None, None
    if init_from is not None:
        from .encoder import Encoder
        from .train import init_from as _init
        from .vae import MelodyVAE

        init_enc = Encoder.load(init_from)
        init_state, init_manifest = init_enc.model.state_dict(), init_enc.manifest
        _init(MelodyVAE(cfg), init_state)  # refuse weights that do not fit before loading data
    tc = PHASE2.get(preset, PHASE2["default-detail"]) if freeze_fingerprint else TrainConfig()
    if train_config is not None:
        tc = train_config
    tc = dataclasses.replace(tc, seed=seed)
    if steps is not None:
        tc = dataclasses.replace(tc, steps=steps)
    if batch_size is not None:
        tc = dataclasses.replace(tc, batch_size=batch_size)
    if midi_dir is not None:
        melodies = _melodies_from_dir(midi_dir)
        data: dict[str, Any] = {"source": str(midi_dir), "collections": None, "split": None, "tunes": len(melodies)}
    else:
        tunes = load_corpus(corpus, splits=["train"], collections=TRAIN_COLLECTIONS)
        melodies = [t.melody for t in tunes]
        data = {
            "source": "music21 corpus cache " + str(corpus or default_corpus_path().name),
            "collections": list(TRAIN_COLLECTIONS),
            "split": "train (the 5% 'valid' and all 'heldout' collections excluded; never Essen)",
            "tunes": len(melodies),
        }
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(Path(run_dir) / "log.jsonl", "a") as log:
        model, summary = train_vae(
            melodies, model_config=cfg, train_config=tc, run_dir=run_dir, progress=progress, log=log,
            init_state=init_state,
        )
    if init_manifest is not None:
        prev = init_manifest
        summary["init_from"] = {"sha256": prev.get("sha256"), "preset": prev.get("preset"),
                                "training": prev.get("training"), "frozen_fingerprint": freeze_fingerprint}
    summary["data"] = data
    summary["wall_seconds_this_run"] = round(time.time() - t0, 1)
    return save_weights(model, out, extra={"training": summary})


def _first_phase(first: str, *, steps: int | None, batch_size: int | None, corpus: Path | None,
                 midi_dir: Path | None, run_dir: Path, seed: int, progress: bool) -> Path:
    """Train the first phase's stages (``PHASE1[first]``) in order, each initialised from the one
    before, into ``run_dir/phase1.pt``, ``run_dir/phase1b.pt``, ... (checkpoints in
    ``run_dir/phase1``, ``run_dir/phase1b``, ...). A stage whose weights and manifest exist is
    reused, unless it was trained from other weights than the stage before it: that raises
    ``ConfigError`` rather than build on a stale stage. Returns the last stage's weights."""
    from .encoder import sha256_file

    prev: Path | None = None
    for i, tc in enumerate(PHASE1.get(first, (TrainConfig(),))):
        name = "phase1" + ("" if i == 0 else chr(ord("a") + i))
        out = run_dir / f"{name}.pt"
        manifest = out.with_suffix(".manifest.json")
        if out.is_file() and manifest.is_file():
            if prev is not None:
                try:
                    began = json.loads(manifest.read_text())["training"]["init_from"]["sha256"]
                except (ValueError, KeyError, TypeError):
                    began = None
                if began != sha256_file(prev):
                    raise ConfigError(
                        f"{out} was trained from other weights than {prev.name}; remove {out.name} and "
                        f"{name}/ from {run_dir}, or use a new --run-dir")
        else:
            run_training(preset=first, steps=steps, batch_size=batch_size, corpus=corpus, midi_dir=midi_dir,
                         run_dir=run_dir / name, out=out, seed=seed, progress=progress, init_from=prev,
                         train_config=tc)
        prev = out
    assert prev is not None
    return prev


def export_checkpoint(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write the weights of a (possibly unfinished) training run's last checkpoint."""
    import torch

    from .config import VAEConfig
    from .vae import MelodyVAE

    state = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)  # our own file
    model = MelodyVAE(VAEConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return save_weights(model, out, extra={"training": {"steps": state["step"], "partial": True}})
