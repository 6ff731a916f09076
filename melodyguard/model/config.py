"""Named model presets, as frozen configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError
from ..fingerprint.windows import WINDOW_FORMAT_VERSION

__all__ = ["VAEConfig", "PRESETS", "preset", "MODEL_FORMAT_VERSION"]

#: Bumped whenever the weights' layout or the manifest's meaning changes.
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the melody VAE (window length in notes)."""

    name: str = "default"
    window_length: int = 16
    d_model: int = 128
    heads: int = 4
    ff: int = 256
    enc_layers: int = 2
    dec_layers: int = 2
    dropout: float = 0.1
    latent_dim: int = 64
    #: the first ``retrieval_dim`` latent dimensions form the fingerprint (trained to be
    #: invariant to edits); the rest carry the details the decoder needs. 0 = all of them.
    retrieval_dim: int = 0
    #: layers of a separate detail encoder for the non-fingerprint dimensions (0 = they come
    #: from the fingerprint's own encoder). Lets the decoder be retrained with the fingerprint
    #: frozen, so that catalogues stay valid.
    detail_layers: int = 0
    #: the decoder also attends to z turned into this many prefix vectors (0 = z is only added
    #: to every input position).
    z_tokens: int = 0
    #: the decoder predicts every note of the window at once from z, attending only to z (no
    #: previous tokens): no exposure bias, and nothing reaches the output but through the
    #: latent. False = the autoregressive (causal) decoder.
    parallel_decoder: bool = False
    #: the detail encoder maps its note outputs position by position (flattened) to the detail
    #: dimensions, instead of their pooled summary: a note-exact code, for reconstruction.
    detail_flat: bool = False
    #: generation draws z from a full-covariance Gaussian fitted to the posterior means of the
    #: training windows (kept with the weights), not from N(0, I): with a low beta the detail
    #: dimensions carry the notes but no longer look like N(0, I).
    fitted_prior: bool = False
    window_format_version: int = WINDOW_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.retrieval_dim <= self.latent_dim:
            raise ConfigError(f"retrieval_dim must be in 0..latent_dim; got {self.retrieval_dim}")
        if self.detail_layers and not 0 < self.retrieval_dim < self.latent_dim:
            raise ConfigError("a detail encoder needs 0 < retrieval_dim < latent_dim")
        if self.detail_flat and not self.detail_layers:
            raise ConfigError("detail_flat needs a detail encoder (detail_layers > 0)")

    @property
    def fingerprint_dim(self) -> int:
        return self.retrieval_dim or self.latent_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"model config does not match this melodyguard: {exc}") from exc


PRESETS: dict[str, VAEConfig] = {
    # 96 latent dimensions: 64 form the fingerprint, 32 keep the notes' details for the decoder.
    "default": VAEConfig(latent_dim=96, retrieval_dim=64),
    # "default" plus a separate detail encoder whose 64 more dimensions code the window note by
    # note, a parallel decoder and a fitted generation prior: a second phase on top of
    # "default" weights, with the fingerprint frozen. The shipped weights are this preset.
    "default-detail": VAEConfig(name="default-detail", latent_dim=128, retrieval_dim=64, detail_layers=2,
                                parallel_decoder=True, detail_flat=True, fitted_prior=True),
    "small": VAEConfig(name="small", d_model=64, heads=4, ff=128, enc_layers=2, dec_layers=1, latent_dim=32),
    # For tests: trains in seconds.
    "tiny": VAEConfig(name="tiny", d_model=16, heads=2, ff=32, enc_layers=1, dec_layers=1, latent_dim=8),
    # For tests: "tiny" plus a detail encoder, for a second phase initialised from "tiny".
    "tiny-detail": VAEConfig(name="tiny-detail", d_model=16, heads=2, ff=32, enc_layers=1, dec_layers=1,
                             latent_dim=12, retrieval_dim=8, detail_layers=1,
                             parallel_decoder=True, detail_flat=True, fitted_prior=True),
}


def preset(name: str) -> VAEConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
