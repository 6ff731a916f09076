"""Shared fixtures: a seeded rng and tiny MIDI files written with pretty_midi."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pretty_midi
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261124)


def random_melody(rng: np.random.Generator, n: int = 32, *, low: int = 62, high: int = 79):
    """A folk-like melody: mostly steps, some leaps; durations in beats on an eighth grid."""
    steps = rng.choice([-4, -3, -2, -1, 1, 2, 3, 5, 0], size=n - 1, p=[.05, .08, .2, .2, .2, .15, .06, .03, .03])
    p = [int(rng.integers(low + 3, high - 3))]
    for s in steps:
        nxt = p[-1] + int(s)
        if nxt < low or nxt > high:
            nxt = p[-1] - int(s)
        p.append(nxt)
    durs = rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0], size=n)
    onsets = np.concatenate([[0.0], np.cumsum(durs)[:-1]])
    return np.asarray(p), onsets, durs.astype(float)


def melody_midi(pitches, onsets, durations, *, tempo: float = 120.0, program: int = 0, name: str = "") -> bytes:
    """One-track MIDI bytes of a melody given in beats."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    inst = pretty_midi.Instrument(program=program, name=name)
    spb = 60.0 / tempo
    for p, o, d in zip(pitches, onsets, durations):
        inst.notes.append(pretty_midi.Note(velocity=90, pitch=int(p), start=float(o) * spb, end=float(o + d) * spb))
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def two_line_midi(lead, inner, *, tempo: float = 110.0) -> bytes:
    """A lead line (flute, named as the melody) over an inner voice (viola, an octave lower)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    spb = 60.0 / tempo
    for (p, o, d), program, name, shift in ((lead, 73, "Lead melody", 0), (inner, 41, "Viola", -12)):
        inst = pretty_midi.Instrument(program=program, name=name)
        for pi, oi, di in zip(p, o, d):
            inst.notes.append(pretty_midi.Note(90, int(pi) + shift, oi * spb, (oi + di * 0.95) * spb))
        pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def drums_only_midi() -> bytes:
    """MIDI bytes with 16 kick-drum hits and nothing else."""
    pm = pretty_midi.PrettyMIDI()
    dr = pretty_midi.Instrument(0, is_drum=True)
    dr.notes = [pretty_midi.Note(100, 36, k * 0.5, k * 0.5 + 0.1) for k in range(16)]
    pm.instruments.append(dr)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def pop_arrangement(rng: np.random.Generator, *, names: bool = True, tempo_change: bool = True):
    """A 4-track song: drums, bass, block chords, lead; the tempo changes mid-song.

    Returns (midi_bytes, lead_pitches, lead_onsets_beats).
    """
    lp, lo, ld = random_melody(rng, 48)
    total_beats = float(lo[-1] + ld[-1])
    # Tempo map: 100 bpm, then 140 bpm from beat 32. Build it through ticks so beats are exact.
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=100.0)
    def t_of(beat: float) -> float:
        # Written at a constant 100 bpm so ticks = beats x 480 exactly; the tempo events are
        # then replaced (100 -> 140 bpm at beat 32), which moves seconds but not beats.
        return beat * 60.0 / 100.0

    lead = pretty_midi.Instrument(program=80, name="Lead Synth" if names else "")
    for p, o, d in zip(lp, lo, ld):
        lead.notes.append(pretty_midi.Note(100, int(p), t_of(o), t_of(o + d)))
    bass = pretty_midi.Instrument(program=33, name="Bass" if names else "")
    chords = pretty_midi.Instrument(program=0, name="Chords" if names else "")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="Drums" if names else "")
    roots = [48, 53, 55, 50]
    b = 0.0
    while b < total_beats:
        r = roots[int(b // 4) % 4]
        bass.notes.append(pretty_midi.Note(90, r - 12, t_of(b), t_of(b + 1.9)))
        bass.notes.append(pretty_midi.Note(90, r - 5, t_of(b + 2), t_of(b + 3.9)))
        for iv in (0, 4, 7, 12):  # chord tones up to an octave above the root
            chords.notes.append(pretty_midi.Note(70, r + 12 + iv, t_of(b), t_of(b + 3.9)))
        for k in range(4):
            drums.notes.append(pretty_midi.Note(100, 36 if k % 2 == 0 else 38, t_of(b + k), t_of(b + k + 0.1)))
        b += 4
    pm.instruments.extend([drums, bass, chords, lead])
    buf = io.BytesIO()
    if tempo_change:
        import mido

        pm.write(buf)
        mid = mido.MidiFile(file=io.BytesIO(buf.getvalue()))
        # Replace the tempo track's tempo events with 100 -> 140 bpm at beat 32.
        tr = mid.tracks[0]
        others = [m for m in tr if m.type != "set_tempo"]
        new = mido.MidiTrack()
        new.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0))
        new.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(140), time=32 * 480))
        # keep the rest (time signatures, end of track) at their absolute times
        abs_t = 0
        rest = []
        for m in others:
            abs_t += m.time
            rest.append((abs_t, m))
        events = [(0, new[0]), (32 * 480, new[1])] + rest
        events.sort(key=lambda e: (e[0], e[1].type != "set_tempo"))
        tr2 = mido.MidiTrack()
        last = 0
        for t, m in events:
            tr2.append(m.copy(time=t - last))
            last = t
        mid.tracks[0] = tr2
        out = io.BytesIO()
        mid.save(file=out)
        return out.getvalue(), lp, lo
    pm.write(buf)
    return buf.getvalue(), lp, lo


@pytest.fixture
def write(tmp_path: Path):
    def _w(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    return _w


@pytest.fixture(scope="session")
def shipped_encoder():
    """The weights shipped in the package."""
    from melodyguard.model.encoder import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny VAE trained for a few steps on generated melodies, saved with its manifest."""
    from melodyguard import Melody
    from melodyguard.model.config import preset
    from melodyguard.model.encoder import save_weights
    from melodyguard.model.train import TrainConfig, train_vae

    rng = np.random.default_rng(7)
    mels = [Melody.from_notes(*random_melody(rng, 30)) for _ in range(20)]
    d = tmp_path_factory.mktemp("tiny")
    model, _ = train_vae(mels, model_config=preset("tiny"), train_config=TrainConfig(steps=3, batch_size=16, threads=1),
                         run_dir=d / "run", progress=False)
    out = d / "tiny.pt"
    save_weights(model, out, extra={"training": {"test": True}})
    return out


def make_catalogue_melodies(rng: np.random.Generator, n: int, length: int = 40):
    from melodyguard import Melody

    return [Melody.from_notes(*random_melody(rng, length)) for _ in range(n)]


def interruptible(cmd: list[str], **kwargs):
    """Start ``cmd`` with SIGINT reaching Python's handler (not inherited as ignored from a
    background shell), stdout and stderr piped as text."""
    import signal
    import subprocess

    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def interrupt_when(proc, ready, *, presses: int, too_soon: str, timeout: float = 120.0, poll: float = 0.01) -> None:
    """Wait until ``ready()`` (or ``timeout``), require that ``proc`` still runs (``too_soon``
    otherwise), then press Ctrl-C up to ``presses`` times, 10 ms apart, until it exits: a double
    Ctrl-C, `timeout -s INT` (process, then group), an impatient user."""
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(poll)
    assert proc.poll() is None, too_soon
    for _ in range(presses):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)


def load_script(name: str):
    """``scripts/<name>.py`` as a module, loaded once per process and registered under its own
    name in ``sys.modules``: numba's on-disk cache records the module of each compiled kernel,
    and a module it cannot import again makes the next run's cache load fail."""
    import importlib.util
    import sys
    from pathlib import Path

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod
