"""Audio renditions of MIDI for tests and benchmarks: FluidSynth (Debian ``fluidsynth``) with a
General MIDI soundfont (Debian ``fluid-soundfont-gm``), plus noise and mixing helpers."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["SOUNDFONTS", "find_soundfont", "render_midi", "add_noise", "wav_bytes"]

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")


def find_soundfont() -> Path:
    for p in SOUNDFONTS:
        if Path(p).is_file():
            return Path(p)
    try:  # pretty_midi's small bundled soundfont
        import pretty_midi

        bundled = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    raise ConfigError("no General MIDI soundfont found: apt-get install fluid-soundfont-gm")


def render_midi(midi: bytes, *, sample_rate: int = 22050, soundfont: Path | None = None) -> np.ndarray:
    """Mono float32 audio of MIDI bytes, rendered by the ``fluidsynth`` program."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise ConfigError("the fluidsynth program is missing: apt-get install fluidsynth")
    import soundfile as sf

    sf2 = soundfont or find_soundfont()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in.mid").write_bytes(midi)
        subprocess.run([exe, "-ni", "-q", "-g", "0.6", "-F", str(Path(d) / "out.wav"), "-r", str(sample_rate),
                        str(sf2), str(Path(d) / "in.mid")], check=True, capture_output=True, timeout=300)
        y, _ = sf.read(Path(d) / "out.wav", dtype="float32", always_2d=True)
    return y.mean(axis=1)


def add_noise(y: np.ndarray, *, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` below the signal's power."""
    p = float(np.mean(y.astype(np.float64) ** 2))
    noise = rng.standard_normal(y.shape) * np.sqrt(p / 10 ** (snr_db / 10))
    return (y + noise).astype(np.float32)


def wav_bytes(y: np.ndarray, sample_rate: int, *, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """Encode samples (peak-normalised if they clip) as WAV/FLAC/OGG/MP3 bytes."""
    import soundfile as sf

    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y = y / peak * 0.99
    buf = io.BytesIO()
    sf.write(buf, y, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()
