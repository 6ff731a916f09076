"""The melody VAE (torch): a small transformer encoder to (mu, logvar) and a causal transformer
decoder back to tokens -- MusicVAE's shape, with attention instead of recurrence because it is
several times faster on a CPU.

Shapes: ``pitch`` and ``rhythm`` token tensors are ``(batch, L)`` int64 with L the window
length; ``mu`` and ``logvar`` are ``(batch, latent_dim)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fingerprint.windows import N_PITCH_TOKENS, N_RHYTHM_TOKENS, PITCH_PAD, RHYTHM_PAD
from .config import VAEConfig

__all__ = ["MelodyVAE"]


def _stack(c: VAEConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        c.d_model, c.heads, c.ff, dropout=c.dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class MelodyVAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        L = c.window_length
        self.enc_pitch = nn.Embedding(N_PITCH_TOKENS, c.d_model)
        self.enc_rhythm = nn.Embedding(N_RHYTHM_TOKENS, c.d_model)
        self.enc_pos = nn.Parameter(torch.randn(1, L + 1, c.d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.encoder = _stack(c, c.enc_layers)
        self.enc_norm = nn.LayerNorm(c.d_model)
        self.to_mu = nn.Linear(2 * c.d_model, c.latent_dim)
        self.to_logvar = nn.Linear(2 * c.d_model, c.latent_dim)
        self.dec_pitch = nn.Embedding(N_PITCH_TOKENS, c.d_model)
        self.dec_rhythm = nn.Embedding(N_RHYTHM_TOKENS, c.d_model)
        self.dec_pos = nn.Parameter(torch.randn(1, L, c.d_model) * 0.02)
        self.z_in = nn.Linear(c.latent_dim, c.d_model)
        self.decoder = _stack(c, c.dec_layers)
        self.dec_norm = nn.LayerNorm(c.d_model)
        self.out_pitch = nn.Linear(c.d_model, N_PITCH_TOKENS)
        self.out_rhythm = nn.Linear(c.d_model, N_RHYTHM_TOKENS)
        self.register_buffer("causal", torch.triu(torch.full((L, L), float("-inf")), diagonal=1), persistent=False)

    def encode(self, pitch: torch.Tensor, rhythm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = pitch.shape
        x = self.enc_pitch(pitch) + self.enc_rhythm(rhythm)
        x = torch.cat([self.cls.expand(B, 1, -1), x], 1) + self.enc_pos[:, : L + 1]
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool), pitch == PITCH_PAD], 1)
        h = self.enc_norm(self.encoder(x, src_key_padding_mask=pad))
        keep = (~pad[:, 1:]).unsqueeze(-1).float()
        pooled = (h[:, 1:] * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        feat = torch.cat([h[:, 0], pooled], -1)
        return self.to_mu(feat), self.to_logvar(feat).clamp(-10.0, 10.0)

    def _decode_inputs(self, z: torch.Tensor, prev_p: torch.Tensor, prev_r: torch.Tensor) -> torch.Tensor:
        n = prev_p.shape[1]
        causal: torch.Tensor = self.causal  # type: ignore[assignment]
        x = self.dec_pitch(prev_p) + self.dec_rhythm(prev_r) + self.dec_pos[:, :n] + self.z_in(z).unsqueeze(1)
        h = self.decoder(x, mask=causal[:n, :n], is_causal=True)
        return self.dec_norm(h)

    def decode(
        self,
        z: torch.Tensor,
        pitch: torch.Tensor,
        rhythm: torch.Tensor,
        *,
        word_dropout: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits ``(B, L, n_tokens)`` for the target tokens."""
        B, L = pitch.shape
        prev_p = torch.cat([torch.full((B, 1), PITCH_PAD, dtype=pitch.dtype), pitch[:, :-1]], 1)
        prev_r = torch.cat([torch.full((B, 1), RHYTHM_PAD, dtype=rhythm.dtype), rhythm[:, :-1]], 1)
        if word_dropout > 0 and self.training:
            drop = torch.rand(B, L) < word_dropout
            prev_p = prev_p.masked_fill(drop, PITCH_PAD)
            prev_r = prev_r.masked_fill(drop, RHYTHM_PAD)
        h = self._decode_inputs(z, prev_p, prev_r)
        return self.out_pitch(h), self.out_rhythm(h)

    @torch.no_grad()
    def sample_tokens(
        self, z: torch.Tensor, *, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode autoregressively; greedy when ``temperature`` is 0."""
        B = z.shape[0]
        L = self.config.window_length
        prev_p = torch.full((B, 1), PITCH_PAD, dtype=torch.long)
        prev_r = torch.full((B, 1), RHYTHM_PAD, dtype=torch.long)
        for _ in range(L):
            h = self._decode_inputs(z, prev_p, prev_r)[:, -1]
            lp, lr = self.out_pitch(h), self.out_rhythm(h)
            lp[:, PITCH_PAD] = -1e9  # never emit padding
            lr[:, RHYTHM_PAD] = -1e9
            if temperature <= 0:
                p = lp.argmax(-1, keepdim=True)
                r = lr.argmax(-1, keepdim=True)
            else:
                p = torch.multinomial(torch.softmax(lp / temperature, -1), 1, generator=generator)
                r = torch.multinomial(torch.softmax(lr / temperature, -1), 1, generator=generator)
            prev_p = torch.cat([prev_p, p], 1)
            prev_r = torch.cat([prev_r, r], 1)
        return prev_p[:, 1:], prev_r[:, 1:]
