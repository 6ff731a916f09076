"""Training the melody VAE (kept apart from inference in :mod:`melodyguard.model.encoder`).

Objective per batch of windows A and edited views B of the same windows:

- reconstruction: cross-entropy of A's pitch and rhythm tokens, decoded from z ~ q(z|A),
  with word dropout on the decoder's inputs so that the decoder must read z;
- KL with linear annealing to ``beta`` over the first ``anneal_frac`` of steps, and free bits
  (``free_bits`` nats per dimension), so the latent stays in use;
- contrastive (InfoNCE): the L2-normalised means of A and B must be each other's nearest
  neighbours in the batch. B is A's window edited by :mod:`melodyguard.augment` (light, medium
  or heavy), shifted by up to one note (unless ``TrainConfig.shift`` is off) and sometimes cut
  to 8-15 notes. This is what makes the latent a retrieval space and not only a reconstruction
  space. Pairs whose clean windows are identical (stock material repeated across tunes) are
  not counted as negatives.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import augment
from ..errors import ConfigError
from ..fingerprint.melody import Melody
from ..fingerprint.windows import PITCH_PAD, RHYTHM_PAD, encode_rows
from .config import VAEConfig
from .vae import MelodyVAE

#: Training windows the generation prior (``VAEConfig.fitted_prior``) is fitted to.
PRIOR_WINDOWS = 65536

__all__ = ["PHASE1", "PHASE2", "PRIOR_WINDOWS", "TrainConfig", "WindowSampler", "init_from", "train_vae", "vae_loss"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 8000
    batch_size: int = 256
    lr: float = 2e-3
    beta: float = 0.1
    free_bits: float = 0.25
    anneal_frac: float = 0.3
    word_dropout: float = 0.3
    contrastive_weight: float = 8.0
    temperature: float = 0.1
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 2
    #: probabilities of the edit level for view B (none = shift only)
    levels: tuple[tuple[str, float], ...] = (("none", 0.1), ("light", 0.3), ("medium", 0.35), ("heavy", 0.25))
    short_prob: float = 0.15
    #: view B starts up to one note away from A (-1, 0 or +1, uniformly), so that windows need
    #: not start on the same note to match. False: B starts on A's own note, which teaches the
    #: fingerprint to tell a window from its neighbours (catalogues index every note's window).
    shift: bool = True
    #: False: a fingerprint-first phase. Only the contrastive term is trained, on the
    #: fingerprint path alone (no decoder pass, no KL); a second phase with the fingerprint
    #: frozen then trains the variances, the detail encoder and the decoder. Each step costs
    #: about a third less, and all of it goes to the fingerprint.
    reconstruction: bool = True
    #: keep the fingerprint path (see ``MelodyVAE.fingerprint_parameters``) as initialised and
    #: train only the rest: the detail encoder, the variances and the decoder. Catalogues built
    #: with the initial weights stay valid. Needs initial weights; the contrastive term is moot.
    freeze_fingerprint: bool = False


#: First-phase stages of the two-phase presets (``training_job.FIRST_PHASE``), trained in order,
#: each from the one before: the contrastive term alone on the fingerprint path
#: (``reconstruction=False``); the second phase then trains the decoder. A step costs 0.27–0.31 s
#: against 0.42 s for both at once, so 11,000 steps take 49–57 minutes where the hour held 8,000
#: joint ones, and the fingerprint retrieves better (docs/benchmarks.md, "What the seventeenth
#: session shipped" and "Retraining the recipe": 54.9 minutes for both phases).
#: Earlier recipes trained 9,000 steps with edited views starting up to a note away from their
#: window at temperature 0.1, then 1,000 steps without that shift and 1,000 at temperature 0.05
#: (held-out window retrieval, medium edits, 0.7375 -> 0.758 -> 0.7735). The shift taught the
#: fingerprint that a window's neighbours are the same window, and a lower temperature weighs
#: the hardest negatives more; so the whole first phase now trains without the shift at 0.05, in
#: one stage: medium 0.81, heavy 0.5045 (docs/benchmarks.md, "One first-phase stage without the
#: shift at temperature 0.05"). Training a first-phase preset on its own keeps the joint recipe.
PHASE1: dict[str, tuple[TrainConfig, ...]] = {
    "default": (TrainConfig(steps=11000, reconstruction=False, shift=False, temperature=0.05),),
    "tiny": (TrainConfig(steps=3, batch_size=16, threads=1, reconstruction=False, shift=False, temperature=0.05),),
}

#: Second-phase settings (``--freeze-fingerprint``) per preset: reconstruction and KL only.
#: beta 0.1 lets the detail dimensions carry the notes (0.99 of held-out notes from mu) while
#: the fitted prior still generates plausible intervals (0.03: 0.99 but wandering melodies,
#: because the contrastive-only first phase leaves the fingerprint means unregularised; 0.3:
#: 0.95); 1,200 steps (5 min) keep both phases within the hour (docs/benchmarks.md,
#: "Reconstruction" and "What the seventeenth session shipped").
PHASE2: dict[str, TrainConfig] = {
    "default-detail": TrainConfig(steps=1200, lr=2e-3, beta=0.1, anneal_frac=0.2, word_dropout=0.0,
                                  contrastive_weight=0.0, freeze_fingerprint=True),
    "tiny-detail": TrainConfig(steps=3, batch_size=16, threads=1, contrastive_weight=0.0, freeze_fingerprint=True),
}


class WindowSampler:
    """Random (window, edited window) token pairs from a list of melodies."""

    def __init__(self, melodies: Sequence[Melody], *, length: int, seed: int = 0) -> None:
        self.length = length
        self.notes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.iois: list[np.ndarray] = []
        index: list[tuple[int, int]] = []
        for m in melodies:
            if len(m) < 8:
                continue
            p = np.asarray(m.pitches)
            o = np.asarray(m.onsets_beats)
            d = np.asarray(m.durations_beats)
            ioi = np.empty_like(o)
            ioi[:-1] = np.diff(o)
            ioi[-1] = d[-1]
            k = len(self.notes)
            self.notes.append((p, o, d))
            self.iois.append(np.maximum(ioi, 1e-6))
            for s in range(max(1, len(m) - length + 1)):
                index.append((k, s))
        self.index = np.asarray(index, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def sample(
        self, batch: int, *, levels: Sequence[tuple[str, float]], short_prob: float, pairs: bool = True,
        shift: bool = True,
    ) -> dict[str, torch.Tensor]:
        """A batch of windows A and, if ``pairs``, their edited views B (which start up to one
        note away from A when ``shift``, on A's own note otherwise)."""
        L = self.length
        rng = self.rng
        names = [lv for lv, _ in levels]
        probs = np.asarray([w for _, w in levels], dtype=np.float64)
        probs /= probs.sum()
        rows = self.index[rng.integers(0, len(self.index), size=batch)]
        # windows grouped by note count, each group tokenised at once after the loop
        a_rows: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        b_rows: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for b, (k, s) in enumerate(rows):
            p, o, d = self.notes[k]
            a_rows.setdefault(min(L, p.size - s), []).append((b, p[s:s + L], self.iois[k][s:s + L]))
            if not pairs:
                continue
            s2 = int(np.clip(s + rng.integers(-1, 2), 0, max(0, p.size - 8))) if shift else int(s)
            seg = (p[s2:s2 + L + 6], o[s2:s2 + L + 6], d[s2:s2 + L + 6])
            q, qo, qd = augment(seg, names[rng.choice(len(names), p=probs)], rng=rng)
            n = min(L, q.size)
            if rng.random() < short_prob and n > 8:
                n = int(rng.integers(8, n))
            ioi = np.empty(q.size)
            ioi[:-1] = np.diff(qo)
            ioi[-1] = qd[-1]
            b_rows.setdefault(n, []).append((b, q[:n], np.maximum(ioi[:n], 1e-6)))
        out = dict(zip(("a_pitch", "a_rhythm"), _encode_groups(a_rows, batch, L)))
        if pairs:
            out |= dict(zip(("b_pitch", "b_rhythm"), _encode_groups(b_rows, batch, L)))
        return {k: torch.from_numpy(v) for k, v in out.items()}


def _encode_groups(groups: dict[int, list[tuple[int, np.ndarray, np.ndarray]]], batch: int,
                   length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and rhythm tokens of ``batch`` windows given as (row, pitches, inter-onset intervals),
    grouped by note count; each group is tokenised in one vectorised call."""
    pitch = np.empty((batch, length), np.int64)
    rhythm = np.empty((batch, length), np.int64)
    for items in groups.values():
        rows = [b for b, _, _ in items]
        pt, rt, _, _ = encode_rows(np.stack([np.asarray(x, dtype=np.int64) for _, x, _ in items]),
                                   np.stack([np.asarray(y, dtype=np.float64) for _, _, y in items]), length=length)
        pitch[rows], rhythm[rows] = pt, rt
    return pitch, rhythm


def vae_loss(
    model: MelodyVAE, batch: dict[str, torch.Tensor], *, cfg: TrainConfig, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    ap, ar = batch["a_pitch"], batch["a_rhythm"]
    if not cfg.reconstruction:
        con, top1 = _contrastive(model.encode_fingerprint(ap, ar),
                                 model.encode_fingerprint(batch["b_pitch"], batch["b_rhythm"]), ap, ar, cfg=cfg)
        return con, {"loss": float(con.detach()), "con": float(con.detach()), "top1": top1}
    mu, logvar = model.encode(ap, ar)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    lp, lr = model.decode(z, ap, ar, word_dropout=cfg.word_dropout)
    # Summed over the notes of a window (not averaged), so that it weighs against the KL of
    # the whole window's latent; averaged over the batch.
    rec = (
        F.cross_entropy(lp.transpose(1, 2), ap, ignore_index=PITCH_PAD, reduction="sum")
        + F.cross_entropy(lr.transpose(1, 2), ar, ignore_index=RHYTHM_PAD, reduction="sum")
    ) / ap.shape[0]
    kl_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)
    kl = torch.clamp(kl_dim, min=cfg.free_bits).sum()
    if "b_pitch" not in batch:  # fingerprint frozen: nothing to make invariant
        loss = rec + beta * kl
        with torch.no_grad():
            acc = ((lp.argmax(-1) == ap) & (lr.argmax(-1) == ar))[ap != PITCH_PAD].float().mean()
        return loss, {"loss": float(loss.detach()), "rec": float(rec.detach()),
                      "kl": float(kl_dim.detach().sum()), "acc_tf": float(acc)}
    R = model.config.fingerprint_dim  # only the fingerprint part is made edit-invariant
    mu_b = model.encode_fingerprint(batch["b_pitch"], batch["b_rhythm"])
    con, top1 = _contrastive(mu[:, :R], mu_b, ap, ar, cfg=cfg)
    loss = rec + beta * kl + cfg.contrastive_weight * con
    with torch.no_grad():
        acc = ((lp.argmax(-1) == ap) & (lr.argmax(-1) == ar))[ap != PITCH_PAD].float().mean()
    return loss, {
        "loss": float(loss.detach()), "rec": float(rec.detach()), "kl": float(kl_dim.detach().sum()),
        "con": float(con.detach()), "acc_tf": float(acc), "top1": top1,
    }


def _contrastive(fa: torch.Tensor, fb: torch.Tensor, ap: torch.Tensor, ar: torch.Tensor, *,
                 cfg: TrainConfig) -> tuple[torch.Tensor, float]:
    """Symmetric InfoNCE between the fingerprints of windows A (tokens ``ap``, ``ar``) and of
    their edited views B, and the in-batch top-1 rate."""
    za = F.normalize(fa, dim=-1)
    zb = F.normalize(fb, dim=-1)
    logits = za @ zb.T / cfg.temperature
    # Identical clean windows are not negatives of each other.
    key = ap * 16 + ar
    same = (key.unsqueeze(1) == key.unsqueeze(0)).all(-1)
    eye = torch.eye(same.shape[0], dtype=torch.bool)
    logits = logits.masked_fill(same & ~eye, -1e4)
    target = torch.arange(logits.shape[0])
    con = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    with torch.no_grad():
        top1 = float((logits.argmax(1) == target).float().mean())
    return con, top1


def init_from(model: MelodyVAE, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``state`` that ``model`` has with the same shape; the fingerprint
    rows of ``to_mu``/``to_logvar`` when the model has a detail encoder and ``state`` has not.
    Returns the names copied. Raises ``ConfigError`` if the fingerprint path does not fit."""
    own = model.state_dict()
    fp_dim = model.config.fingerprint_dim
    copied = []
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            own[k] = v.clone()
        elif k.startswith(("to_mu.", "to_logvar.")) and v.shape[0] >= fp_dim and own[k].shape[0] == fp_dim \
                and v.shape[1:] == own[k].shape[1:]:
            own[k] = v[:fp_dim].clone()
        else:
            continue
        copied.append(k)
    missing = [k for k, _ in model.fingerprint_parameters() if k not in copied]
    if missing:
        raise ConfigError(f"initial weights do not fit this model's fingerprint path: {missing[:4]}")
    model.load_state_dict(own)
    return copied


def train_vae(
    melodies: Sequence[Melody],
    *,
    model_config: VAEConfig,
    train_config: TrainConfig = TrainConfig(),
    run_dir: Path,
    progress: bool = True,
    log: Any = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[MelodyVAE, dict[str, Any]]:
    """Train (or resume training) a VAE; checkpoints go to ``run_dir/checkpoint.pt``.

    ``init_state`` (a state dict) initialises every tensor that fits; with
    ``train_config.freeze_fingerprint`` the fingerprint path then stays fixed.
    Returns the model in eval mode and a summary dict (steps, seconds, last metrics).
    """
    from tqdm import tqdm

    cfg = train_config
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sampler = WindowSampler(melodies, length=model_config.window_length, seed=cfg.seed)
    model = MelodyVAE(model_config)
    if init_state is not None:
        init_from(model, init_state)
    elif cfg.freeze_fingerprint:
        raise ConfigError("freeze_fingerprint needs initial weights")
    if cfg.freeze_fingerprint and not cfg.reconstruction:
        raise ConfigError("a frozen fingerprint with reconstruction off leaves nothing to train")
    frozen = {k for k, _ in model.fingerprint_parameters()} if cfg.freeze_fingerprint else set()
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    step, elapsed = 0, 0.0
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)  # our own checkpoint, never a user upload
        if state["model_config"] != model_config.to_dict():
            raise ValueError(f"{ckpt} was trained with another model config; use a new --run-dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        sampler.rng = np.random.default_rng(cfg.seed + step)
        torch.manual_seed(cfg.seed + step)
    model.train()
    if frozen:  # no dropout in the frozen path: its outputs are the fingerprints as shipped
        model.encoder.eval()
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not progress)
    metrics: dict[str, float] = {}
    ema: dict[str, float] = {}
    while step < cfg.steps:
        frac = step / max(1, cfg.steps)
        beta = cfg.beta * min(1.0, frac / max(cfg.anneal_frac, 1e-9))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
        batch = sampler.sample(cfg.batch_size, levels=cfg.levels, short_prob=cfg.short_prob,
                               pairs=not cfg.freeze_fingerprint, shift=cfg.shift)
        loss, metrics = vae_loss(model, batch, cfg=cfg, beta=beta)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = {k: 0.95 * ema.get(k, v) + 0.05 * v for k, v in metrics.items()}
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "elapsed": time.perf_counter() - t0, "model_config": model_config.to_dict(),
                 "train_config": asdict(cfg)},
                tmp,
            )
            tmp.replace(ckpt)
            if log is not None:
                log.write(json.dumps({"step": step, "beta": beta, **ema}) + "\n")
                log.flush()
    bar.close()
    model.eval()
    if model_config.fitted_prior:
        # the generation prior: the aggregate posterior of the training windows
        windows = sampler.sample(PRIOR_WINDOWS, levels=cfg.levels, short_prob=0.0, pairs=False)
        model.fit_prior(windows["a_pitch"], windows["a_rhythm"])
    return model, {
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "windows": len(sampler),
        "final": {k: round(v, 4) for k, v in ema.items()},
        "train_config": asdict(cfg),
    }
