"""MIDI to melody: read a file, pick the melody line, reduce it to one voice.

Conventions
-----------
Beats are quarter notes taken from the file's own tempo map (ticks / resolution), so a bar
number in the evidence is the bar a musician sees in the score. Seconds are real time.

How the melody track is chosen
------------------------------
Every non-drum instrument with notes is a *candidate line*. Each is first reduced to one voice
by a **skyline**: at any moment the highest sounding note wins; a note that starts while a
higher one still sounds is dropped, and a note is cut where the next one starts. Each candidate
then gets a score, the sum of these documented terms (see :data:`HEURISTICS`):

- **name**: +3 when the track or instrument name says vocal, voice, vox, lead, melody, sing,
  solo, theme or tune; -3 when it says bass, drum, perc, chord, pad, comp, accomp, rhythm;
- **program**: General MIDI bass programs (32-39) -2, pads (88-95) -1, synth leads (80-87)
  and voices (52-54) +1;
- **monophony**: +3 x the share of notes that do not overlap another note of the track
  (before the skyline), so chord tracks lose;
- **register**: +1 when the mean pitch lies in 55..84, -2 when it is below 48;
- **density**: +1 for 0.4..4 notes per beat over the track's span, -1 below 0.2;
- **coverage**: +1 x the share of the song's length the track spans.

The highest score wins; ties go to the higher mean pitch. ``melodyguard melody FILE`` prints
the scores and reasons, which is the first thing to read when a match is missed.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_NOTES, DEFAULT_MIN_NOTES
from ..errors import (
    CorruptFileError,
    EmptyInputError,
    InputTooLargeError,
    InvalidInputError,
    MelodyTooShortError,
    NoMelodyError,
)
from .melody import Melody, TimeSignature

__all__ = ["MelodyCandidate", "HEURISTICS", "read_source", "midi_candidates", "melody_from_midi"]

HEURISTICS = {
    "name_melody": 3.0,
    "name_accompaniment": -3.0,
    "program_bass": -2.0,
    "program_pad": -1.0,
    "program_lead": 1.0,
    "monophony": 3.0,
    "register_ok": 1.0,
    "register_low": -2.0,
    "density_ok": 1.0,
    "density_sparse": -1.0,
    "coverage": 1.0,
}

_MELODY_NAMES = re.compile(r"vocal|voice|vox|lead|melod|sing|solo|theme|tune", re.I)
_ACCOMP_NAMES = re.compile(r"bass|drum|perc|chord|pad|comp|accomp|rhythm|kick|snare|hat", re.I)


@dataclass(frozen=True)
class MelodyCandidate:
    """One candidate line of a file: its skyline melody, where it came from and its score."""

    melody: Melody
    track: int
    name: str
    program: int
    score: float
    reasons: tuple[str, ...]


def read_source(source: str | Path | bytes, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[bytes, str]:
    """Read a path or bytes, enforcing the size limit before reading a large file.

    Returns
    -------
    data : bytes
    name : str
        The file name, or ``"<bytes>"``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "<bytes>"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise InvalidInputError(f"{path} is a folder, not a file")
        if not path.is_file():
            raise InvalidInputError(f"no such file: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise InputTooLargeError(
                f"{path.name} is {size} bytes; the limit is {max_bytes} bytes (max_bytes)"
            )
        data = path.read_bytes()
        name = str(path)
    else:
        raise InvalidInputError(f"expected a path or bytes; got {type(source).__name__}")
    if len(data) == 0:
        raise EmptyInputError(f"{name} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InputTooLargeError(f"{name} is {len(data)} bytes; the limit is {max_bytes} bytes")
    return data, name


def _parse(data: bytes, name: str):
    import pretty_midi

    if not data.startswith(b"MThd"):
        raise CorruptFileError(
            f"{name} is not a Standard MIDI File: it does not start with 'MThd' "
            f"(first bytes {data[:8]!r})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as exc:  # mido and pretty_midi raise many types on bad bytes
        why = str(exc) or ("the data ends in the middle of a chunk (a truncated file?)" if isinstance(exc, EOFError)
                           else "no detail given")
        raise CorruptFileError(f"{name} is a corrupt MIDI file: {type(exc).__name__}: {why}") from exc


def _beats_of(pm, times: np.ndarray) -> np.ndarray:
    """Seconds to quarter-note beats through the file's tempo map."""
    change_times, tempi = pm.get_tempo_changes()
    if len(change_times) == 0:
        change_times, tempi = np.array([0.0]), np.array([120.0])
    change_times = np.asarray(change_times, dtype=np.float64)
    tempi = np.asarray(tempi, dtype=np.float64)
    seg_beats = np.diff(change_times) * tempi[:-1] / 60.0
    cum = np.concatenate([[0.0], np.cumsum(seg_beats)])
    k = np.clip(np.searchsorted(change_times, times, side="right") - 1, 0, len(change_times) - 1)
    beats = cum[k] + (times - change_times[k]) * tempi[k] / 60.0
    # Snap to a 1/480 beat grid to remove float noise from tick->time->beat.
    return np.round(beats * 480.0) / 480.0


def _skyline(p: np.ndarray, on: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Indices of the notes that form the top line (notes sorted by onset, pitch descending)."""
    keep: list[int] = []
    cur_end = -np.inf
    cur_pitch = -1
    for i in range(p.size):
        if on[i] < cur_end - 1e-6 and p[i] <= cur_pitch:
            continue  # starts under a higher (or equal) sounding note
        if keep and abs(on[i] - on[keep[-1]]) < 1e-6:
            continue  # same onset as the kept (higher) note
        keep.append(i)
        cur_end, cur_pitch = off[i], p[i]
    return np.asarray(keep, dtype=np.int64)


def midi_candidates(
    source: str | Path | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_notes: int = DEFAULT_MAX_NOTES,
    filename: str | None = None,
) -> list[MelodyCandidate]:
    """All candidate melody lines of a MIDI file, best first.

    Raises
    ------
    EmptyInputError, CorruptFileError, InputTooLargeError
        For unreadable input.
    NoMelodyError
        When the file has no pitched (non-drum) notes.
    """
    data, name = read_source(source, max_bytes=max_bytes)
    name = filename or name
    pm = _parse(data, name)
    total = sum(len(inst.notes) for inst in pm.instruments)
    if total > max_notes:
        raise InputTooLargeError(f"{name} has {total} notes; the limit is {max_notes} (max_notes)")
    pitched = [(i, inst) for i, inst in enumerate(pm.instruments) if not inst.is_drum and inst.notes]
    if not pitched:
        why = "only drum notes" if total else "no notes"
        raise NoMelodyError(f"{name} has {why}; a melody needs pitched notes")

    sigs = []
    for ts in pm.time_signature_changes:
        b = float(_beats_of(pm, np.array([ts.time]))[0])
        sigs.append(TimeSignature(b, int(ts.numerator), int(ts.denominator)))
    song_end = max(n.end for _, inst in pitched for n in inst.notes)
    song_beats = float(_beats_of(pm, np.array([song_end]))[0]) or 1.0

    out: list[MelodyCandidate] = []
    for idx, inst in pitched:
        notes = sorted(inst.notes, key=lambda n: (n.start, -n.pitch))
        p = np.array([n.pitch for n in notes], dtype=np.int64)
        s = np.array([n.start for n in notes], dtype=np.float64)
        e = np.array([n.end for n in notes], dtype=np.float64)
        sb, eb = _beats_of(pm, s), _beats_of(pm, e)
        # Share of notes overlapping the next one (polyphony) before reduction.
        overlap = np.zeros(p.size, dtype=bool)
        if p.size > 1:
            running_end = np.maximum.accumulate(eb)
            overlap[1:] = sb[1:] < running_end[:-1] - 1e-3
        mono = 1.0 - float(overlap.mean())
        k = _skyline(p, sb, eb)
        mel = Melody.from_notes(
            p[k], sb[k], eb[k] - sb[k],
            onsets_seconds=s[k], durations_seconds=e[k] - s[k],
            time_signatures=sigs,
            info={"source": name, "track": idx, "track_name": inst.name, "program": inst.program},
        )
        score, reasons = 0.0, []
        label = f"{inst.name} {_program_name(inst.program)}"
        if _MELODY_NAMES.search(inst.name or ""):
            score += HEURISTICS["name_melody"]
            reasons.append(f"name '{inst.name}' suggests melody (+{HEURISTICS['name_melody']:g})")
        if _ACCOMP_NAMES.search(label):
            score += HEURISTICS["name_accompaniment"]
            reasons.append(f"name '{label.strip()}' suggests accompaniment ({HEURISTICS['name_accompaniment']:g})")
        prog = int(inst.program)
        if 32 <= prog <= 39:
            score += HEURISTICS["program_bass"]
            reasons.append(f"bass program {prog} ({HEURISTICS['program_bass']:g})")
        elif 88 <= prog <= 95:
            score += HEURISTICS["program_pad"]
            reasons.append(f"pad program {prog} ({HEURISTICS['program_pad']:g})")
        elif 80 <= prog <= 87 or 52 <= prog <= 54:
            score += HEURISTICS["program_lead"]
            reasons.append(f"lead/voice program {prog} (+{HEURISTICS['program_lead']:g})")
        score += HEURISTICS["monophony"] * mono
        reasons.append(f"monophony {mono:.2f} (+{HEURISTICS['monophony'] * mono:.2f})")
        mean_pitch = float(mel.pitches.mean())
        if 55 <= mean_pitch <= 84:
            score += HEURISTICS["register_ok"]
            reasons.append(f"mean pitch {mean_pitch:.1f} in melody register (+{HEURISTICS['register_ok']:g})")
        elif mean_pitch < 48:
            score += HEURISTICS["register_low"]
            reasons.append(f"mean pitch {mean_pitch:.1f} is low ({HEURISTICS['register_low']:g})")
        span = max(mel.duration_beats, 1e-6)
        density = len(mel) / span
        if 0.4 <= density <= 4.0:
            score += HEURISTICS["density_ok"]
            reasons.append(f"{density:.2f} notes/beat (+{HEURISTICS['density_ok']:g})")
        elif density < 0.2:
            score += HEURISTICS["density_sparse"]
            reasons.append(f"{density:.2f} notes/beat is sparse ({HEURISTICS['density_sparse']:g})")
        cov = min(span / song_beats, 1.0)
        score += HEURISTICS["coverage"] * cov
        reasons.append(f"covers {cov:.0%} of the song (+{HEURISTICS['coverage'] * cov:.2f})")
        out.append(MelodyCandidate(mel, idx, inst.name, prog, round(score, 4), tuple(reasons)))
    out.sort(key=lambda c: (-c.score, -float(c.melody.pitches.mean())))
    return out


def _program_name(program: int) -> str:
    try:
        import pretty_midi

        return str(pretty_midi.program_to_instrument_name(program))
    except Exception:
        return ""


def melody_from_midi(
    source: str | Path | bytes,
    *,
    track: int | None = None,
    min_notes: int = DEFAULT_MIN_NOTES,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_notes: int = DEFAULT_MAX_NOTES,
    filename: str | None = None,
) -> Melody:
    """The melody of a MIDI file (path or bytes; ``filename`` names bytes in messages).

    Parameters
    ----------
    track : int, optional
        Force this instrument index instead of the heuristic choice.
    min_notes : int
        Fewest notes a melody must have to be compared.

    Raises
    ------
    MelodyTooShortError
        When the chosen line has fewer than ``min_notes`` notes.
    """
    cands = midi_candidates(source, max_bytes=max_bytes, max_notes=max_notes, filename=filename)
    if track is not None:
        chosen = [c for c in cands if c.track == track]
        if not chosen:
            raise InvalidInputError(
                f"track {track} has no pitched notes; candidates are {[c.track for c in cands]}"
            )
        best = chosen[0]
    else:
        best = cands[0]
    mel = best.melody
    info = dict(mel.info)
    info["reasons"] = list(best.reasons)
    info["score"] = best.score
    info["candidates"] = [
        {"track": c.track, "name": c.name, "program": c.program, "score": c.score, "n_notes": len(c.melody)}
        for c in cands
    ]
    mel = Melody(
        mel.pitches, mel.onsets_beats, mel.durations_beats, mel.onsets_seconds,
        mel.durations_seconds, mel.bars, mel.beats_in_bar, mel.time_signatures, info, mel.has_beats,
    )
    if len(mel) < min_notes:
        n = len(mel)
        raise MelodyTooShortError(
            f"the melody has {n} note{'' if n == 1 else 's'}; "
            f"at least {min_notes} are needed to compare (min_notes)"
        )
    return mel
