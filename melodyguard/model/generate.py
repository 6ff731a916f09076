"""Generation with the VAE's decoder: sample from the prior, interpolate between melodies.

Conventions
-----------
The decoder emits one window (16 notes, pitches relative to a reference pitch, durations
relative to a median inter-onset interval). A melody of ``bars`` 4/4 bars is built from
successive windows whose latents follow a slow random walk (each step keeps 85 % of the
previous standard-normal draw, mapped to a latent by the model's prior: N(0, I), or a Gaussian
fitted to the training windows), all centred on ``ref_pitch`` (MIDI, default 67 = G4) with a median
inter-onset interval of half a beat. Durations are snapped to a grid of common note values
(1/4 to 4 beats), and the melody is cut at the last bar line.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import InvalidInputError
from ..fingerprint.melody import Melody, TimeSignature
from .encoder import Encoder, tokens_to_notes

__all__ = ["sample_melodies", "interpolate", "melody_to_midi", "GRID_BEATS"]

GRID_BEATS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0])


def _snap(iois: np.ndarray) -> np.ndarray:
    idx = np.abs(np.log2(iois[:, None]) - np.log2(GRID_BEATS[None, :])).argmin(1)
    return GRID_BEATS[idx]


def _assemble(pitch_rows: np.ndarray, rhythm_rows: np.ndarray, *, bars: int | None, ref_pitch: int) -> Melody:
    P, D = [], []
    for p, r in zip(pitch_rows, rhythm_rows):
        pp, _, ioi = tokens_to_notes(p, r, ref_pitch=ref_pitch, median_ioi=0.5)
        P.append(pp)
        D.append(_snap(ioi))
    p = np.concatenate(P)
    d = np.concatenate(D)
    o = np.concatenate([[0.0], np.cumsum(d)[:-1]])
    if bars is not None:
        end = 4.0 * bars
        keep = o < end - 1e-9
        p, o, d = p[keep], o[keep], d[keep]
        if p.size:
            d[-1] = min(d[-1], end - o[-1])
    return Melody.from_notes(p, o, d, time_signatures=[TimeSignature(0.0, 4, 4)], info={"generated": True})


def sample_melodies(
    encoder: Encoder,
    n: int,
    *,
    bars: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    ref_pitch: int = 67,
) -> list[Melody]:
    """``n`` melodies of ``bars`` 4/4 bars sampled from the prior."""
    if n < 1 or bars < 1 or bars > 256:
        raise InvalidInputError(f"need n >= 1 and 1 <= bars <= 256; got n={n}, bars={bars}")
    if temperature < 0:
        raise InvalidInputError(f"temperature must be >= 0; got {temperature}")
    rng = np.random.default_rng(seed)
    d = encoder.latent_dim
    L = encoder.config.window_length
    per = int(np.ceil(4.0 * bars / (0.5 * L))) + 1  # windows needed at ~half a beat per note
    eps = rng.standard_normal((n, d)).astype(np.float32)
    pitch = np.empty((n, per, L), np.int64)
    rhythm = np.empty((n, per, L), np.int64)
    for k in range(per):
        pk, rk = encoder.decode(encoder.prior_latents(eps), temperature=temperature, seed=seed * 1000 + k)
        pitch[:, k], rhythm[:, k] = pk, rk
        eps = (0.85 * eps + np.sqrt(1 - 0.85**2) * rng.standard_normal((n, d))).astype(np.float32)
    return [_assemble(pitch[i], rhythm[i], bars=bars, ref_pitch=ref_pitch) for i in range(n)]


def interpolate(
    encoder: Encoder, a: Melody, b: Melody, *, steps: int = 5, ref_pitch: int = 67, beam: int = 4
) -> list[Melody]:
    """Melodies decoded along the spherical path between the first windows of ``a`` and ``b``
    (each the most probable window a beam search of width ``beam`` finds)."""
    if steps < 2:
        raise InvalidInputError(f"steps must be >= 2; got {steps}")
    import torch

    za = encoder.embed(a).windows
    zb = encoder.embed(b).windows
    with torch.inference_mode():
        mu_a, _ = encoder.model.encode(torch.from_numpy(za.pitch[:1]), torch.from_numpy(za.rhythm[:1]))
        mu_b, _ = encoder.model.encode(torch.from_numpy(zb.pitch[:1]), torch.from_numpy(zb.rhythm[:1]))
    u, v = mu_a.numpy()[0], mu_b.numpy()[0]
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-9))
    omega = np.arccos(np.clip(cos, -1, 1))
    out = []
    for t in np.linspace(0, 1, steps):
        if omega < 1e-4:
            z = (1 - t) * u + t * v
        else:
            z = (np.sin((1 - t) * omega) * u + np.sin(t * omega) * v) / np.sin(omega)
        p, r = encoder.decode(z[None].astype(np.float32), beam=beam)
        out.append(_assemble(p, r, bars=None, ref_pitch=ref_pitch))
    return out


def melody_to_midi(melody: Melody, *, program: int = 0, tempo_bpm: float = 120.0, velocity: int = 90) -> bytes:
    """A one-track Standard MIDI File of a melody (beats at ``tempo_bpm``)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo_bpm)
    for ts in melody.time_signatures:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(ts.numerator, ts.denominator, ts.beat * 60.0 / tempo_bpm))
    inst = pretty_midi.Instrument(program=program, name="melody")
    spb = 60.0 / tempo_bpm
    for p, o, d in zip(melody.pitches, melody.onsets_beats, melody.durations_beats):
        inst.notes.append(pretty_midi.Note(velocity, int(p), float(o) * spb, float(o + d) * spb))
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()
