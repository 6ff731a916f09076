"""Fingerprinting: files to melodies, melodies to windows.

``extract_melody`` is the entry point; it sniffs the format from the bytes.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_NOTES, DEFAULT_MIN_NOTES
from ..errors import CorruptFileError, UnsupportedFormatError
from .melody import Melody, TimeSignature, bar_positions
from .midi import HEURISTICS, MelodyCandidate, melody_from_midi, midi_candidates, read_source
from .windows import (
    DEFAULT_WINDOW,
    WINDOW_FORMAT_VERSION,
    WindowConfig,
    Windows,
    window_melody,
)

__all__ = [
    "Melody",
    "TimeSignature",
    "bar_positions",
    "MelodyCandidate",
    "HEURISTICS",
    "midi_candidates",
    "melody_from_midi",
    "extract_melody",
    "sniff_format",
    "WindowConfig",
    "Windows",
    "DEFAULT_WINDOW",
    "WINDOW_FORMAT_VERSION",
    "window_melody",
]

_MIDI_EXT = {".mid", ".midi", ".smf", ".kar"}
_AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".aif", ".aiff", ".m4a"}


def sniff_format(data: bytes) -> str | None:
    """``"midi"``, ``"audio"`` or None, from the first bytes."""
    if data.startswith(b"MThd"):
        return "midi"
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"RMID"):
        return "midi" if data[8:12] == b"RMID" else "audio"
    if data[:4] in (b"fLaC", b"OggS", b"FORM") or data[:3] == b"ID3":
        return "audio"
    if len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0:
        return "audio"  # MPEG audio frame sync
    return None


def extract_melody(
    source: str | Path | bytes,
    *,
    track: int | None = None,
    min_notes: int = DEFAULT_MIN_NOTES,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_notes: int = DEFAULT_MAX_NOTES,
    filename: str | None = None,
) -> Melody:
    """The melody of a file (path or bytes), whatever its format.

    Parameters
    ----------
    source : path or bytes
    track : int, optional
        MIDI only: force this instrument index.
    min_notes : int
        Fewest notes a melody needs to be compared (default 8).
    filename : str, optional
        Name to use in messages and to guess the format when ``source`` is bytes.

    Raises
    ------
    EmptyInputError, CorruptFileError, UnsupportedFormatError, InputTooLargeError,
    NoMelodyError, MelodyTooShortError
    """
    data, name = read_source(source, max_bytes=max_bytes)
    name = filename or name
    kind = sniff_format(data)
    ext = Path(name).suffix.lower()
    if kind == "midi":
        return melody_from_midi(data, track=track, min_notes=min_notes, max_bytes=max_bytes, max_notes=max_notes,
                                filename=name)
    if kind == "audio" or ext in _AUDIO_EXT:
        from .audio import melody_from_audio

        return melody_from_audio(data, min_notes=min_notes, max_bytes=max_bytes, filename=name)
    if ext in _MIDI_EXT:
        raise CorruptFileError(
            f"{name} has a MIDI extension but is not a Standard MIDI File (first bytes {data[:8]!r})"
        )
    raise UnsupportedFormatError(
        f"{name}: unrecognised format (first bytes {data[:8]!r}); melodyguard reads MIDI "
        "(.mid) and audio (WAV, FLAC, MP3, OGG)"
    )
