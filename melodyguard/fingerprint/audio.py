"""Audio input (recordings to melodies). Not built yet: see the audio issue."""

from __future__ import annotations

from ..errors import UnsupportedFormatError
from .melody import Melody

__all__ = ["melody_from_audio"]


def melody_from_audio(data: bytes, *, min_notes: int, max_bytes: int, filename: str) -> Melody:
    raise UnsupportedFormatError(
        f"{filename}: audio input is not supported yet; convert it to MIDI first"
    )
