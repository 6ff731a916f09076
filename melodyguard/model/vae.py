"""The melody VAE (torch): a small transformer encoder to (mu, logvar) and a causal transformer
decoder back to tokens -- MusicVAE's shape, with attention instead of recurrence because it is
several times faster on a CPU.

Shapes: ``pitch`` and ``rhythm`` token tensors are ``(batch, L)`` int64 with L the window
length; ``mu`` and ``logvar`` are ``(batch, latent_dim)``.

The first ``fingerprint_dim`` latent dimensions are the fingerprint. With ``detail_layers`` a
second, independent encoder yields the others, so the decoder side can be retrained while the
fingerprint path (:meth:`MelodyVAE.fingerprint_parameters`) stays frozen; with ``z_tokens`` the
decoder also attends to z turned into that many prefix vectors. With ``parallel_decoder`` the
decoder reads no previous tokens: L position queries attend to each other and to z, and every
note is predicted at once (greedy decoding is then the exact most probable window).
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
        # With a detail encoder, the shared trunk yields only the fingerprint dimensions and a
        # second, independent stack yields the rest (the details the decoder needs).
        shared = c.fingerprint_dim if c.detail_layers else c.latent_dim
        self.to_mu = nn.Linear(2 * c.d_model, shared)
        self.to_logvar = nn.Linear(2 * c.d_model, shared)
        if c.detail_layers:
            D = c.latent_dim - shared
            self.det_pitch = nn.Embedding(N_PITCH_TOKENS, c.d_model)
            self.det_rhythm = nn.Embedding(N_RHYTHM_TOKENS, c.d_model)
            self.det_pos = nn.Parameter(torch.randn(1, L + 1, c.d_model) * 0.02)
            self.det_cls = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
            self.det_encoder = _stack(c, c.detail_layers)
            self.det_norm = nn.LayerNorm(c.d_model)
            width = L * c.d_model if c.detail_flat else 2 * c.d_model
            self.det_mu = nn.Linear(width, D)
            self.det_logvar = nn.Linear(width, D)
        if not c.parallel_decoder:
            self.dec_pitch = nn.Embedding(N_PITCH_TOKENS, c.d_model)
            self.dec_rhythm = nn.Embedding(N_RHYTHM_TOKENS, c.d_model)
        self.dec_pos = nn.Parameter(torch.randn(1, L, c.d_model) * 0.02)
        self.z_in = nn.Linear(c.latent_dim, c.d_model)
        if c.parallel_decoder:
            # each position's query also gets its own projection of z
            self.z_seq = nn.Linear(c.latent_dim, L * c.d_model)
        if c.z_tokens:
            # z also becomes a prefix of z_tokens vectors that every position attends to: one
            # vector added everywhere is too narrow a channel for a note-exact reconstruction.
            self.z_prefix = nn.Linear(c.latent_dim, c.z_tokens * c.d_model)
            self.z_prefix_pos = nn.Parameter(torch.randn(1, c.z_tokens, c.d_model) * 0.02)
        self.decoder = _stack(c, c.dec_layers)
        self.dec_norm = nn.LayerNorm(c.d_model)
        self.out_pitch = nn.Linear(c.d_model, N_PITCH_TOKENS)
        self.out_rhythm = nn.Linear(c.d_model, N_RHYTHM_TOKENS)
        if c.fitted_prior:  # set by fit_prior after training; N(0, I) until then
            self.register_buffer("prior_mean", torch.zeros(c.latent_dim))
            self.register_buffer("prior_scale", torch.eye(c.latent_dim))
        K = c.z_tokens
        causal = torch.triu(torch.full((K + L, K + L), float("-inf")), diagonal=1)
        causal[:, :K] = 0.0  # the prefix is visible to all, and sees itself whole
        self.register_buffer("causal", causal, persistent=False)

    @staticmethod
    def _features(
        pitch: torch.Tensor, rhythm: torch.Tensor, emb_p: nn.Embedding, emb_r: nn.Embedding,
        pos: torch.Tensor, cls: torch.Tensor, stack: nn.TransformerEncoder, norm: nn.LayerNorm,
        flat_length: int = 0,
    ) -> torch.Tensor:
        """[CLS output, mean of the note outputs] of one transformer stack, ``(B, 2 d_model)``;
        with ``flat_length`` the note outputs themselves, padding zeroed and padded to that
        many notes, ``(B, flat_length * d_model)``."""
        B, L = pitch.shape
        x = emb_p(pitch) + emb_r(rhythm)
        x = torch.cat([cls.expand(B, 1, -1), x], 1) + pos[:, : L + 1]
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool), pitch == PITCH_PAD], 1)
        h = norm(stack(x, src_key_padding_mask=pad))
        keep = (~pad[:, 1:]).unsqueeze(-1).float()
        if flat_length:
            notes = nn.functional.pad(h[:, 1:] * keep, (0, 0, 0, flat_length - L))
            return notes.reshape(B, -1)
        pooled = (h[:, 1:] * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return torch.cat([h[:, 0], pooled], -1)

    def encode_fingerprint(self, pitch: torch.Tensor, rhythm: torch.Tensor) -> torch.Tensor:
        """Posterior means of the fingerprint dimensions only, ``(B, fingerprint_dim)``."""
        feat = self._features(pitch, rhythm, self.enc_pitch, self.enc_rhythm, self.enc_pos, self.cls,
                              self.encoder, self.enc_norm)
        return self.to_mu(feat)[:, : self.config.fingerprint_dim]

    def fingerprint_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """The named tensors that determine the fingerprint (sorted by name)."""
        prefixes = ("enc_pitch.", "enc_rhythm.", "enc_pos", "cls", "encoder.", "enc_norm.", "to_mu.")
        return sorted((k, v) for k, v in self.state_dict().items() if k.startswith(prefixes))

    def encode(self, pitch: torch.Tensor, rhythm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self._features(pitch, rhythm, self.enc_pitch, self.enc_rhythm, self.enc_pos, self.cls,
                              self.encoder, self.enc_norm)
        mu, logvar = self.to_mu(feat), self.to_logvar(feat)
        if self.config.detail_layers:
            det = self._features(pitch, rhythm, self.det_pitch, self.det_rhythm, self.det_pos, self.det_cls,
                                 self.det_encoder, self.det_norm,
                                 flat_length=self.config.window_length if self.config.detail_flat else 0)
            mu = torch.cat([mu, self.det_mu(det)], -1)
            logvar = torch.cat([logvar, self.det_logvar(det)], -1)
        return mu, logvar.clamp(-10.0, 10.0)

    def prior_latents(self, eps: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, latent_dim)`` for standard-normal draws ``eps``: ``eps`` itself under
        the N(0, I) prior, ``mean + scale @ eps`` under a fitted one."""
        if not self.config.fitted_prior:
            return eps
        mean: torch.Tensor = self.prior_mean  # type: ignore[assignment]
        scale: torch.Tensor = self.prior_scale  # type: ignore[assignment]
        return mean + eps @ scale.T

    @torch.no_grad()
    def fit_prior(self, pitch: torch.Tensor, rhythm: torch.Tensor, *, batch_size: int = 2048) -> None:
        """Fit the generation prior to the posterior means of token windows ``(n, L)``: their
        mean and the Cholesky factor of their covariance (a small ridge keeps it definite)."""
        if not self.config.fitted_prior:
            raise ValueError("this config has no fitted prior (fitted_prior=False)")
        was = self.training
        self.eval()
        mu = torch.cat([self.encode(pitch[i:i + batch_size], rhythm[i:i + batch_size])[0]
                        for i in range(0, pitch.shape[0], batch_size)]).double()
        self.train(was)
        mean = mu.mean(0)
        cov = torch.cov(mu.T) + 1e-4 * torch.eye(mu.shape[1], dtype=mu.dtype)
        self.prior_mean.copy_(mean.float())  # type: ignore[operator]
        self.prior_scale.copy_(torch.linalg.cholesky(cov).float())  # type: ignore[operator]

    def _decode_inputs(self, z: torch.Tensor, prev_p: torch.Tensor, prev_r: torch.Tensor) -> torch.Tensor:
        n = prev_p.shape[1]
        K = self.config.z_tokens
        causal: torch.Tensor = self.causal  # type: ignore[assignment]
        x = self.dec_pitch(prev_p) + self.dec_rhythm(prev_r) + self.dec_pos[:, :n] + self.z_in(z).unsqueeze(1)
        if K:
            prefix = self.z_prefix(z).view(z.shape[0], K, -1) + self.z_prefix_pos
            x = torch.cat([prefix, x], 1)
            h = self.decoder(x, mask=causal[: K + n, : K + n])[:, K:]
        else:
            h = self.decoder(x, mask=causal[:n, :n], is_causal=True)
        return self.dec_norm(h)

    def _parallel_logits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, L, n_tokens)`` of the parallel decoder: position queries plus z (and
        the z prefix when ``z_tokens``), under full (non-causal) attention."""
        L = self.config.window_length
        K = self.config.z_tokens
        x = self.dec_pos[:, :L] + self.z_in(z).unsqueeze(1) + self.z_seq(z).view(z.shape[0], L, -1)
        if K:
            prefix = self.z_prefix(z).view(z.shape[0], K, -1) + self.z_prefix_pos
            x = torch.cat([prefix, x], 1)
        h = self.dec_norm(self.decoder(x)[:, K:])
        return self.out_pitch(h), self.out_rhythm(h)

    def decode(
        self,
        z: torch.Tensor,
        pitch: torch.Tensor,
        rhythm: torch.Tensor,
        *,
        word_dropout: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits ``(B, L, n_tokens)`` for the target tokens (the parallel
        decoder reads only ``z``)."""
        if self.config.parallel_decoder:
            return self._parallel_logits(z)
        B, L = pitch.shape
        prev_p = torch.cat([torch.full((B, 1), PITCH_PAD, dtype=pitch.dtype), pitch[:, :-1]], 1)
        prev_r = torch.cat([torch.full((B, 1), RHYTHM_PAD, dtype=rhythm.dtype), rhythm[:, :-1]], 1)
        if word_dropout > 0 and self.training:
            drop = torch.rand(B, L) < word_dropout
            prev_p = prev_p.masked_fill(drop, PITCH_PAD)
            prev_r = prev_r.masked_fill(drop, RHYTHM_PAD)
        h = self._decode_inputs(z, prev_p, prev_r)
        return self.out_pitch(h), self.out_rhythm(h)

    @staticmethod
    def _pick(
        lp: torch.Tensor, lr: torch.Tensor, *, temperature: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens from logits ``(..., n_tokens)``, padding never emitted: the argmax at
        temperature 0, else one draw per position (pitch first, then rhythm)."""
        lp[..., PITCH_PAD] = -1e9
        lr[..., RHYTHM_PAD] = -1e9
        if temperature <= 0:
            return lp.argmax(-1), lr.argmax(-1)

        def draw(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(logits / temperature, -1).reshape(-1, logits.shape[-1])
            return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])

        return draw(lp), draw(lr)

    @torch.no_grad()
    def sample_tokens(
        self, z: torch.Tensor, *, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode autoregressively (the parallel decoder: every position at once); greedy when
        ``temperature`` is 0."""
        if self.config.parallel_decoder:
            return self._pick(*self._parallel_logits(z), temperature=temperature, generator=generator)
        B = z.shape[0]
        L = self.config.window_length
        prev_p = torch.full((B, 1), PITCH_PAD, dtype=torch.long)
        prev_r = torch.full((B, 1), RHYTHM_PAD, dtype=torch.long)
        for _ in range(L):
            h = self._decode_inputs(z, prev_p, prev_r)[:, -1]
            p, r = self._pick(self.out_pitch(h), self.out_rhythm(h), temperature=temperature, generator=generator)
            prev_p = torch.cat([prev_p, p.unsqueeze(1)], 1)
            prev_r = torch.cat([prev_r, r.unsqueeze(1)], 1)
        return prev_p[:, 1:], prev_r[:, 1:]

    @torch.no_grad()
    def beam_tokens(self, z: torch.Tensor, *, beam: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """The most probable windows given ``z`` by beam search over joint (pitch, rhythm) steps;
        ``beam=1`` is greedy decoding. The parallel decoder's notes are independent given z, so
        its greedy window is already the most probable one."""
        if self.config.parallel_decoder:
            return self.sample_tokens(z, temperature=0.0)
        B = z.shape[0]
        L = self.config.window_length
        K = max(1, int(beam))
        zz = z.repeat_interleave(K, 0)
        prev_p = torch.full((B * K, 1), PITCH_PAD, dtype=torch.long)
        prev_r = torch.full((B * K, 1), RHYTHM_PAD, dtype=torch.long)
        score = torch.full((B, K), float("-inf"))
        score[:, 0] = 0.0  # all beams start equal: keep one so that they do not repeat
        rows = torch.arange(B).unsqueeze(1) * K
        for _ in range(L):
            h = self._decode_inputs(zz, prev_p, prev_r)[:, -1]
            lp = torch.log_softmax(self.out_pitch(h), -1)
            lr = torch.log_softmax(self.out_rhythm(h), -1)
            lp[:, PITCH_PAD] = float("-inf")  # never emit padding
            lr[:, RHYTHM_PAD] = float("-inf")
            n_r = lr.shape[1]
            joint = (lp.unsqueeze(2) + lr.unsqueeze(1)).view(B, K, -1) + score.unsqueeze(2)
            score, flat = joint.view(B, -1).topk(K, dim=1)
            src = (rows + flat // joint.shape[2]).view(-1)
            tok = flat % joint.shape[2]
            prev_p = torch.cat([prev_p[src], (tok // n_r).view(-1, 1)], 1)
            prev_r = torch.cat([prev_r[src], (tok % n_r).view(-1, 1)], 1)
        best = rows.squeeze(1)  # topk is sorted: beam 0 holds the best of each row
        return prev_p[best, 1:], prev_r[best, 1:]

