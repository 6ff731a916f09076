"""Inference: load versioned weights, embed melody windows, generate melodies.

Weights are a torch state dict (``*.pt``, loaded with ``weights_only=True``) beside a
``*.manifest.json`` that records the model format version, the preset and its config, the
latent dimension, the window format version, the training data, metrics, the package version
and the weights' sha256. Loading refuses any mismatch with :class:`ModelVersionError`.

The shipped ``default`` weights live in ``melodyguard/weights/``; ``$MELODYGUARD_WEIGHTS``
(a ``.pt`` path) or the ``weights=`` argument points melodyguard at others.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ModelVersionError
from ..fingerprint.melody import Melody
from ..fingerprint.windows import (
    PITCH_PAD,
    PITCH_RANGE,
    RHYTHM_RANGE,
    WINDOW_FORMAT_VERSION,
    WindowConfig,
    Windows,
    window_melody,
)
from .config import MODEL_FORMAT_VERSION, VAEConfig
from .vae import MelodyVAE

__all__ = [
    "Encoder",
    "Embedding",
    "DEFAULT_WEIGHTS",
    "default_weights_path",
    "save_weights",
    "record_evaluation",
    "load_encoder",
    "sha256_file",
    "fingerprint_digest",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "default.pt"
_CACHE: dict[str, Encoder] = {}
_LOCK = threading.Lock()


def default_weights_path() -> Path:
    env = os.environ.get("MELODYGUARD_WEIGHTS")
    return Path(env) if env else DEFAULT_WEIGHTS


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_path(weights: Path) -> Path:
    return weights.with_suffix(".manifest.json")


def save_weights(model: MelodyVAE, path: Path, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``path`` (state dict) and its manifest, atomically. Returns the manifest."""
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp)
    tmp.replace(path)
    manifest = {
        "format": "melodyguard-vae",
        "format_version": MODEL_FORMAT_VERSION,
        "preset": model.config.name,
        "config": model.config.to_dict(),
        "latent_dim": model.config.latent_dim,
        "fingerprint_dim": model.config.fingerprint_dim,
        "fingerprint_id": fingerprint_digest(model),
        "window_format_version": model.config.window_format_version,
        "package_version": __version__,
        "sha256": sha256_file(path),
        **(extra or {}),
    }
    _write_manifest(_manifest_path(path), manifest)
    return manifest


def _write_manifest(mpath: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically (temporary file, then rename)."""
    tmp = mpath.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(mpath)


def record_evaluation(weights: Path, evaluation: dict[str, Any], *, command: str) -> dict[str, Any]:
    """Record held-out figures measured on ``weights`` in their manifest, under ``evaluation``.

    The figures carry the checksum of the weights they were measured on and the command that
    measured them; the manifest is rewritten atomically and the weights are not touched.
    Raises :class:`ModelVersionError` if the weights no longer match their manifest (the
    figures would describe other weights). Returns the new manifest.
    """
    path = Path(weights)
    mpath = _manifest_path(path)
    if not path.is_file() or not mpath.is_file():
        raise ModelVersionError(f"no weights with a manifest at {path}")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as exc:
        raise ModelVersionError(f"manifest {mpath} is not valid JSON: {exc}") from exc
    digest = sha256_file(path)
    if digest != manifest.get("sha256"):
        raise ModelVersionError(
            f"{path.name} checksum {digest[:12]}… does not match its manifest; not recording figures for it")
    manifest["evaluation"] = {"weights_sha256": digest, "command": command, **evaluation}
    _write_manifest(mpath, manifest)
    return manifest


@dataclass(frozen=True, eq=False)
class Embedding:
    """Vectors of one melody's windows.

    ``vectors`` is ``(n_windows, d)`` float32, L2-normalised; row i belongs to window i of
    ``windows`` (its first note is ``windows.start[i]``).
    """

    vectors: np.ndarray
    windows: Windows


class Encoder:
    """A loaded VAE in eval mode: embeds windows, decodes latents."""

    def __init__(self, model: MelodyVAE, manifest: dict[str, Any]) -> None:
        self.model = model.eval()
        self.manifest = manifest
        self.config: VAEConfig = model.config
        #: the fingerprint's dimension (the first ``dim`` latent dimensions, L2-normalised)
        self.dim = model.config.fingerprint_dim
        #: the whole latent's dimension (what the decoder reads)
        self.latent_dim = model.config.latent_dim
        self.window_config = WindowConfig(length=model.config.window_length, hop=1)
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, weights: str | Path | None = None) -> Encoder:
        """Load and verify weights (default: ``$MELODYGUARD_WEIGHTS`` or the shipped ones)."""
        path = Path(weights) if weights else default_weights_path()
        mpath = _manifest_path(path)
        if not path.is_file():
            raise ModelVersionError(f"no weights file at {path}")
        if not mpath.is_file():
            raise ModelVersionError(f"weights {path} have no manifest {mpath.name}; refusing to load")
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as exc:
            raise ModelVersionError(f"manifest {mpath} is not valid JSON: {exc}") from exc
        if manifest.get("format") != "melodyguard-vae" or manifest.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelVersionError(
                f"{path.name}: model format {manifest.get('format')!r} v{manifest.get('format_version')}; "
                f"this melodyguard reads melodyguard-vae v{MODEL_FORMAT_VERSION}"
            )
        if manifest.get("window_format_version") != WINDOW_FORMAT_VERSION:
            raise ModelVersionError(
                f"{path.name} was trained on window format v{manifest.get('window_format_version')}; "
                f"this melodyguard makes v{WINDOW_FORMAT_VERSION} windows. Retrain or upgrade."
            )
        digest = sha256_file(path)
        if digest != manifest.get("sha256"):
            raise ModelVersionError(
                f"{path.name} checksum {digest[:12]}… does not match its manifest "
                f"({str(manifest.get('sha256'))[:12]}…): the file is corrupt or was replaced"
            )
        config = VAEConfig.from_dict(manifest["config"])
        if config.latent_dim != manifest.get("latent_dim"):
            raise ModelVersionError(f"{path.name}: manifest latent_dim disagrees with its config")
        model = MelodyVAE(config)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise ModelVersionError(f"cannot load weights {path}: {type(exc).__name__}: {exc}") from exc
        return cls(model, manifest)

    @property
    def fingerprint(self) -> str:
        """Identifies the fingerprint these weights compute, in catalogue and index manifests.

        A digest of the tensors on the fingerprint's path only (see
        ``MelodyVAE.fingerprint_parameters``) and of the window length, so that weights whose
        decoder was retrained with the fingerprint frozen keep their catalogues valid.
        """
        if self._fingerprint is None:
            self._fingerprint = fingerprint_digest(self.model)
        return self._fingerprint

    @property
    def legacy_ids(self) -> tuple[str, ...]:
        """Earlier names of these weights' fingerprint (the weights file's checksum, used by
        catalogues built before the fingerprint digest); such catalogues are renamed on open."""
        sha = str(self.manifest.get("sha256", ""))
        return (sha[:16],) if sha else ()

    @torch.inference_mode()
    def embed_tokens(self, pitch: np.ndarray, rhythm: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
        """Fingerprints of token windows: the first ``dim`` dimensions of the posterior means,
        L2-normalised, ``(n, dim)`` float32.

        Windows are embedded in groups of equal width (up to their last note), each cut to that
        width: the encoder masks padding, so trailing pad tokens only cost time (a check's
        short windows are 10 notes of 16)."""
        n = pitch.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        real = np.asarray(pitch) != PITCH_PAD
        widths = np.where(real.any(1), real.shape[1] - np.argmax(real[:, ::-1], 1), real.shape[1])
        for width in np.unique(widths).tolist():
            rows = np.flatnonzero(widths == width)
            for i in range(0, rows.size, batch_size):
                sel = rows[i:i + batch_size]
                mu = self.model.encode_fingerprint(
                    torch.from_numpy(np.ascontiguousarray(pitch[sel, :width])),
                    torch.from_numpy(np.ascontiguousarray(rhythm[sel, :width])),
                )
                out[sel] = torch.nn.functional.normalize(mu, dim=-1).numpy()
        return out

    def embed(self, melody: Melody, *, hop: int = 1, min_notes: int | None = None) -> Embedding:
        """Window a melody (``hop`` notes apart) and embed every window."""
        cfg = WindowConfig(
            length=self.config.window_length, hop=hop,
            min_notes=min_notes if min_notes is not None else self.window_config.min_notes,
        )
        w = window_melody(melody, config=cfg)
        return Embedding(self.embed_tokens(w.pitch, w.rhythm), w)

    @torch.no_grad()
    def decode(
        self, z: np.ndarray, *, temperature: float = 0.0, seed: int | None = None, beam: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``(n, L)`` decoded from latents ``(n, d)``: sampled at ``temperature`` > 0; at
        temperature 0 greedy (``beam=1``) or the most probable window a beam search finds."""
        if beam < 1:
            raise ConfigError(f"beam must be >= 1; got {beam}")
        zt = torch.as_tensor(z, dtype=torch.float32)
        if temperature <= 0 and beam > 1:
            p, r = self.model.beam_tokens(zt, beam=beam)
        else:
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            p, r = self.model.sample_tokens(zt, temperature=temperature, generator=g)
        return p.numpy(), r.numpy()

    @torch.no_grad()
    def prior_latents(self, eps: np.ndarray) -> np.ndarray:
        """Latents ``(n, latent_dim)`` float32 for standard-normal draws ``eps`` under the
        model's generation prior (see ``MelodyVAE.prior_latents``)."""
        return self.model.prior_latents(torch.as_tensor(eps, dtype=torch.float32)).numpy()

    @torch.no_grad()
    def reconstruct(self, pitch: np.ndarray, rhythm: np.ndarray, *, beam: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruction from the posterior mean: greedy (``beam=1``) or the most probable
        window found by a beam search of that width."""
        mu, _ = self.model.encode(torch.from_numpy(pitch), torch.from_numpy(rhythm))
        return self.decode(mu.numpy(), beam=beam)


def fingerprint_digest(model: MelodyVAE) -> str:
    """16 hex digits of sha256 over the fingerprint path's tensors (the fingerprint rows of
    ``to_mu`` only) and the window length."""
    h = hashlib.sha256(f"window_length={model.config.window_length};dim={model.config.fingerprint_dim}".encode())
    F = model.config.fingerprint_dim
    for name, t in model.fingerprint_parameters():
        if name.startswith("to_mu."):
            t = t[:F]
        h.update(name.encode())
        h.update(np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def tokens_to_notes(
    pitch: np.ndarray, rhythm: np.ndarray, *, ref_pitch: int, median_ioi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undo the window encoding: tokens -> (pitches, onsets, durations) in beats."""
    mask = pitch != PITCH_PAD
    p = pitch[mask].astype(np.int64) - PITCH_RANGE + ref_pitch
    r = rhythm[mask].astype(np.float64) - RHYTHM_RANGE
    iois = median_ioi * np.power(2.0, np.clip(r, -RHYTHM_RANGE, RHYTHM_RANGE) / 2.0)
    onsets = np.concatenate([[0.0], np.cumsum(iois)[:-1]])
    return np.clip(p, 0, 127), onsets, iois


def load_encoder(weights: str | Path | None = None) -> Encoder:
    """Load an encoder once per process and path (thread-safe cache)."""
    key = str(Path(weights) if weights else default_weights_path())
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Encoder.load(key)
        return _CACHE[key]
