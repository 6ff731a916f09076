"""Audio input: recordings (WAV, FLAC, MP3, OGG) to the same :class:`Melody` as MIDI.

Pipeline (pure functions, keyword-only settings in :class:`AudioConfig`):

1. **Decode** with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, MP3), refusing files over
   ``max_seconds`` from the header before decoding anything; mix to mono; resample to 16 kHz
   with librosa. Truncated files (fewer frames than the header declares) are refused.
2. **Suppress percussion** with librosa's harmonic-percussive separation (median filtering of
   a 1024-point STFT; the harmonic part is resynthesised).
3. **Track the pitch** with SwiftF0 (a small CNN whose ONNX weights ship in its wheel; 16 ms
   frames, 47-2093 Hz, calibrated voicing confidence). ``tracker="pyin"`` uses librosa.pyin on
   the same 16 ms grid instead: as accurate on clean solo lines, ~100x slower (figures in
   docs/benchmarks.md).
4. **Segment notes** from the pitch track: SwiftF0's exact dynamic-programming segmentation
   (one pitch per note, a cost per note, confidence-weighted pitch error, loudness dips),
   then notes shorter than ``min_note_seconds`` are dropped and isolated octave errors folded.
5. **Beat grid**: librosa's beat tracker gives the tempo and beat times; note onsets are mapped
   to beats linearly (tempo and phase of the beat grid), bars counted from the first beat in 4/4. Without a usable grid (fewer than 8
   beats) the melody has ``has_beats=False`` and evidence speaks in seconds only.

"No melody found" (:class:`NoMelodyError`) is raised for silence, noise and speech: too little
pitched audio, or pitch that glides within notes instead of holding (speech), or too few notes.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MIN_NOTES
from ..errors import (
    ConfigError,
    CorruptFileError,
    InputTooLargeError,
    MelodyTooShortError,
    NoMelodyError,
)
from .melody import Melody

__all__ = [
    "AudioConfig",
    "DEFAULT_AUDIO",
    "SAMPLE_RATE",
    "PitchTrack",
    "decode_audio",
    "suppress_percussion",
    "track_pitch",
    "segment_notes",
    "beat_grid",
    "melody_from_audio",
]

#: Analysis sample rate (SwiftF0's native rate).
SAMPLE_RATE = 16_000
_HOP = 256  # 16 ms at 16 kHz, the grid of both trackers
STEADY_CONFIDENCE = 0.8


@dataclass(frozen=True)
class AudioConfig:
    #: longest recording accepted, seconds (checked from the header before decoding)
    max_seconds: float = 600.0
    #: shortest recording worth analysing, seconds
    min_seconds: float = 2.0
    #: "hpss" (harmonic-percussive separation) or "none"
    percussion: str = "hpss"
    #: "swift-f0" or "pyin"
    tracker: str = "swift-f0"
    fmin: float = 65.0
    fmax: float = 1500.0
    #: SwiftF0 segmentation: cost of a note in ms of pitch evidence (higher: fewer, longer notes)
    pitch_hold_ms: float = 80.0
    min_note_seconds: float = 0.07
    #: split notes at spectral-flux onsets (legato repeated notes), with librosa's peak-picking
    #: ``delta``. Off by default: on 120 solo renditions it raised recall@1 from 0.84 to 0.88 but
    #: over-split vibrato and tremolo tones (square lead, some flute takes) -- see benchmarks.md.
    split_at_onsets: bool = False
    onset_delta: float = 0.07
    #: fewest voiced frames (confidence >= 0.5), as a fraction of the non-silent frames
    min_voiced_fraction: float = 0.25
    #: most in-note pitch wobble (median absolute deviation from the note's pitch, semitones)
    max_pitch_wobble: float = 0.35

    def __post_init__(self) -> None:
        if self.percussion not in ("hpss", "none"):
            raise ConfigError(f"percussion must be 'hpss' or 'none'; got {self.percussion!r}")
        if self.tracker not in ("swift-f0", "pyin"):
            raise ConfigError(f"tracker must be 'swift-f0' or 'pyin'; got {self.tracker!r}")
        if not 0 < self.min_seconds < self.max_seconds:
            raise ConfigError("need 0 < min_seconds < max_seconds")


DEFAULT_AUDIO = AudioConfig()


@dataclass(frozen=True)
class PitchTrack:
    """Frame-wise pitch: ``times`` (s), ``midi`` (float, NaN where unvoiced), ``confidence``
    (0-1; voiced at >= 0.5) and ``loudness_db``."""

    times: np.ndarray
    hz: np.ndarray
    confidence: np.ndarray
    loudness_db: np.ndarray

    @property
    def midi(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            m = 69.0 + 12.0 * np.log2(self.hz / 440.0)
        return np.where((self.confidence >= 0.5) & (self.hz > 0), m, np.nan)


# ----------------------------------------------------------------------------- decoding
def decode_audio(data: bytes, *, filename: str = "<bytes>", config: AudioConfig = DEFAULT_AUDIO) -> tuple[np.ndarray, dict[str, Any]]:
    """Mono float32 samples at :data:`SAMPLE_RATE` and facts about the file.

    Raises CorruptFileError (not decodable, truncated), InputTooLargeError (too long) and
    MelodyTooShortError (shorter than ``min_seconds``).
    """
    import soundfile as sf

    _check_wav_length(data, filename)
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile raises LibsndfileError/RuntimeError on junk
        why = re.sub(r"^Error opening <[^>]*>: ", "", str(exc))  # not the in-memory buffer's repr
        if "does not exist" in why:  # libsndfile's words for a stream it cannot identify
            why = "unrecognised or truncated audio data"
        raise CorruptFileError(f"{filename} is not decodable audio: {why}") from exc
    declared = info.frames / info.samplerate if info.samplerate else 0.0
    if declared > config.max_seconds:
        raise InputTooLargeError(
            f"{filename} is {declared:.0f} s long; the limit is {config.max_seconds:.0f} s (max_seconds)"
        )
    try:
        y, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise CorruptFileError(f"{filename} could not be decoded: {exc}") from exc
    if info.frames > 0 and y.shape[0] < 0.98 * info.frames and info.format != "MPEG":
        raise CorruptFileError(
            f"{filename} is truncated: the header declares {info.frames} frames, only {y.shape[0]} are there"
        )
    y = y.mean(axis=1)
    seconds = y.shape[0] / sr
    if seconds > config.max_seconds:
        raise InputTooLargeError(f"{filename} is {seconds:.0f} s long; the limit is {config.max_seconds:.0f} s")
    if seconds < config.min_seconds:
        raise MelodyTooShortError(
            f"{filename} is {seconds:.2f} s long; at least {config.min_seconds:g} s of audio is needed"
        )
    if not np.all(np.isfinite(y)):
        raise CorruptFileError(f"{filename} holds non-finite samples")
    clipped = float(np.mean(np.abs(y) >= 0.999))
    if sr != SAMPLE_RATE:
        import librosa

        y = librosa.resample(y, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    facts = {"format": info.format, "sample_rate": int(sr), "channels": int(info.channels),
             "duration_seconds": round(seconds, 3), "clipped_fraction": round(clipped, 5)}
    return np.ascontiguousarray(y, dtype=np.float32), facts


def _check_wav_length(data: bytes, filename: str) -> None:
    """libsndfile quietly reads a cut-off WAV up to where it ends; the RIFF header says how long
    it should be, so a truncated upload is refused instead of half-analysed."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    declared = int.from_bytes(data[4:8], "little") + 8
    if declared > len(data) + 1:  # one pad byte of slack
        raise CorruptFileError(
            f"{filename} is truncated: its header declares {declared} bytes, only {len(data)} are there"
        )


def suppress_percussion(y: np.ndarray, *, kernel: int = 17) -> np.ndarray:
    """The harmonic part of ``y`` (librosa HPSS with a soft mask)."""
    import librosa

    D = librosa.stft(y, n_fft=1024, hop_length=_HOP)
    H, P = librosa.decompose.hpss(np.abs(D), kernel_size=kernel)
    mask = H / (H + P + 1e-9)
    return librosa.istft(D * mask, hop_length=_HOP, length=len(y)).astype(np.float32)


# ----------------------------------------------------------------------------- pitch
_SWIFT: dict[str, Any] = {}


def track_pitch(y: np.ndarray, *, config: AudioConfig = DEFAULT_AUDIO) -> PitchTrack:
    """Frame-wise pitch of a mono 16 kHz signal (16 ms frames)."""
    if config.tracker == "swift-f0":
        import swift_f0

        det = _SWIFT.get("det")
        if det is None:
            det = _SWIFT["det"] = swift_f0.SwiftF0(threads=2)
        r = det.detect(y, SAMPLE_RATE, fmin=config.fmin, fmax=config.fmax)
        return PitchTrack(np.asarray(r.timestamps, np.float64), np.asarray(r.pitch_hz, np.float64),
                          np.asarray(r.confidence, np.float64), np.asarray(r.loudness_db, np.float64))
    import librosa

    f0, _voiced, prob = librosa.pyin(y, fmin=config.fmin, fmax=config.fmax, sr=SAMPLE_RATE,
                                     frame_length=1024, hop_length=_HOP)
    times = librosa.times_like(f0, sr=SAMPLE_RATE, hop_length=_HOP)
    rms = librosa.feature.rms(y=y, frame_length=512, hop_length=_HOP)[0][: len(f0)]
    loud = 20 * np.log10(np.maximum(rms, 1e-6))
    return PitchTrack(times, np.nan_to_num(f0, nan=0.0), np.asarray(prob, np.float64), loud)


def segment_notes(track: PitchTrack, *, config: AudioConfig = DEFAULT_AUDIO,
                  onsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Notes from a pitch track: ``(midi pitches, onsets s, offsets s, wobble)`` where wobble is
    the median in-note pitch deviation (semitones) -- large for speech, small for instruments."""
    import swift_f0
    from swift_f0.core import PitchResult

    res = PitchResult(timestamps=track.times, pitch_hz=track.hz, confidence=track.confidence,
                      loudness_db=track.loudness_db)
    notes = swift_f0.segment_notes(res, pitch_hold_ms=config.pitch_hold_ms)
    on = np.asarray([n.start for n in notes], np.float64)
    off = np.asarray([n.end for n in notes], np.float64)
    hz = np.asarray([n.pitch_hz for n in notes], np.float64)
    keep = (off - on >= config.min_note_seconds) & (hz > 0)
    on, off, hz = on[keep], off[keep], hz[keep]
    fine = 69.0 + 12.0 * np.log2(hz / 440.0) if hz.size else hz
    pitches = np.rint(fine).astype(np.int64)
    # in-note wobble: frames' deviation from their note's pitch
    midi = track.midi
    devs = []
    for a, b, f in zip(on, off, fine):
        sel = (track.times >= a) & (track.times < b) & np.isfinite(midi)
        if sel.sum() >= 2:
            devs.append(float(np.median(np.abs(midi[sel] - f))))
    wobble = float(np.median(devs)) if devs else 0.0
    # isolated octave errors: a note one or two octaves away from both neighbours, which agree
    for i in range(1, len(pitches) - 1):
        a, b, c = pitches[i - 1], pitches[i], pitches[i + 1]
        for s in (12, -12, 24, -24):
            if abs(b - s - a) <= 4 and abs(b - s - c) <= 4 and abs(b - a) >= 9:
                pitches[i] = b - s
                break
    pitches, on, off = _merge_split_notes(pitches, on, off, track)
    if onsets is not None:
        pitches, on, off = _split_at_onsets(pitches, on, off, onsets, min_part=config.min_note_seconds)
    ok = (pitches >= 0) & (pitches <= 127)
    return pitches[ok], on[ok], off[ok], wobble


def _split_at_onsets(pitches: np.ndarray, on: np.ndarray, off: np.ndarray, onsets: np.ndarray, *,
                     min_part: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a note where an attack (spectral-flux onset) falls inside it: a repeated note
    played legato has no pitch change for the segmentation to see, only a new attack."""
    P: list[int] = []
    A: list[float] = []
    B: list[float] = []
    for p, a, b in zip(pitches.tolist(), on.tolist(), off.tolist()):
        cuts = [float(t) for t in onsets if a + min_part * 1.5 <= t <= b - min_part * 1.5]
        starts = [a, *cuts]
        ends = [*cuts, b]
        for x, y in zip(starts, ends):
            P.append(p)
            A.append(x)
            B.append(y)
    return np.asarray(P, np.int64), np.asarray(A), np.asarray(B)


def _merge_split_notes(pitches: np.ndarray, on: np.ndarray, off: np.ndarray, track: PitchTrack, *,
                       max_gap: float = 0.25, min_rise_db: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join consecutive notes of one pitch split by a decaying tone (piano, plucked strings) or
    a tremolo dip (synth leads): a boundary with no loudness rise, or one where the voicing
    confidence never drops (no attack transient), is no new attack."""
    if len(pitches) < 2:
        return pitches, on, off
    t, loud = track.times, track.loudness_db
    keep_p, keep_on, keep_off = [int(pitches[0])], [float(on[0])], [float(off[0])]
    for p, a, b in zip(pitches[1:].tolist(), on[1:].tolist(), off[1:].tolist()):
        if p == keep_p[-1] and a - keep_off[-1] <= max_gap:
            before = loud[(t >= a - 0.048) & (t <= a + 0.016)]
            after = loud[(t >= a) & (t <= a + 0.064)]
            near = (t >= a - 0.048) & (t <= a + 0.048)
            steady = bool(near.any()) and float(track.confidence[near].min()) >= STEADY_CONFIDENCE  # no attack transient
            if steady or (before.size and after.size and float(after.max() - before.min()) < min_rise_db):
                keep_off[-1] = b
                continue
        keep_p.append(p)
        keep_on.append(a)
        keep_off.append(b)
    return np.asarray(keep_p, np.int64), np.asarray(keep_on), np.asarray(keep_off)


# ----------------------------------------------------------------------------- beats
def beat_grid(y: np.ndarray) -> tuple[float, np.ndarray]:
    """``(tempo_bpm, beat_times)`` from librosa's beat tracker (empty when it finds no beat)."""
    import librosa

    oenv = librosa.onset.onset_strength(y=y, sr=SAMPLE_RATE, hop_length=_HOP)
    tempo, beats = librosa.beat.beat_track(onset_envelope=oenv, sr=SAMPLE_RATE, hop_length=_HOP, units="time")
    return float(np.atleast_1d(tempo)[0]), np.asarray(beats, np.float64)


# ----------------------------------------------------------------------------- entry point
def melody_from_audio(
    data: bytes,
    *,
    min_notes: int = DEFAULT_MIN_NOTES,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    filename: str = "<bytes>",
    config: AudioConfig = DEFAULT_AUDIO,
) -> Melody:
    """The predominant melody of a recording.

    Raises
    ------
    CorruptFileError, InputTooLargeError, MelodyTooShortError, NoMelodyError
    """
    import time

    if len(data) > max_bytes:
        raise InputTooLargeError(f"{filename} is {len(data)} bytes; the limit is {max_bytes} bytes")
    t0 = time.perf_counter()
    y, facts = decode_audio(data, filename=filename, config=config)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak < 1e-3:
        raise NoMelodyError(f"no melody found in {filename}: the recording is silent (peak {peak:.1e})")
    y = y / peak * 0.9
    yh = suppress_percussion(y) if config.percussion == "hpss" else y
    track = track_pitch(yh, config=config)
    audible = track.loudness_db > (np.max(track.loudness_db) - 40.0)
    voiced = (track.confidence >= 0.5) & audible
    vfrac = float(voiced.sum() / max(audible.sum(), 1))
    if vfrac < config.min_voiced_fraction:
        raise NoMelodyError(
            f"no melody found in {filename}: only {vfrac:.0%} of the audible frames are pitched "
            "(noise, percussion or silence)"
        )
    import librosa

    onsets = None
    if config.split_at_onsets:
        onsets = librosa.onset.onset_detect(y=yh, sr=SAMPLE_RATE, hop_length=_HOP, units="time",
                                            backtrack=False, delta=config.onset_delta)
    pitches, on, off, wobble = segment_notes(track, config=config,
                                             onsets=None if onsets is None else np.asarray(onsets, np.float64))
    if wobble > config.max_pitch_wobble:
        raise NoMelodyError(
            f"no melody found in {filename}: the pitch glides within notes ({wobble:.2f} semitones median "
            "deviation), as in speech, instead of holding steady notes"
        )
    if len(pitches) < min_notes:
        raise NoMelodyError(
            f"no melody found in {filename}: {len(pitches)} steady notes were found; at least {min_notes} are needed"
        )
    tempo, beats = beat_grid(yh)
    has_beats = len(beats) >= 8 and 30.0 <= tempo <= 300.0
    if has_beats:
        # A linear map (the tracker's tempo, phase from its beats) keeps inter-onset ratios
        # exact; interpolating between individual beats would pass on the tracker's jitter.
        period = 60.0 / tempo
        phase = float(np.median((beats - beats[0]) % period)) + float(beats[0] % period)
        ob = (on - phase) / period
        first_beat = float(np.floor(ob.min()))
        ob = ob - first_beat
        eb = ob + (off - on) / period
    else:
        tempo = 120.0
        ob, eb = on * 2.0, off * 2.0
    db = np.maximum(eb - ob, 1e-3)
    step = max(1, len(track.times) // 4000)
    info = {
        "kind": "audio", "tracker": config.tracker, "percussion": config.percussion,
        "tempo_bpm": round(tempo, 2), "beats_found": int(len(beats)), "voiced_fraction": round(vfrac, 3),
        "pitch_wobble": round(wobble, 3), **facts,
        "pitch_track": {"times": track.times[::step].round(3).tolist(),
                        "midi": [None if not np.isfinite(v) else round(float(v), 2) for v in track.midi[::step]]},
        "extract_seconds": round(time.perf_counter() - t0, 3),
    }
    return Melody.from_notes(pitches, ob, db, onsets_seconds=on, durations_seconds=off - on, tempo_bpm=tempo,
                             info=info, has_beats=has_beats)
