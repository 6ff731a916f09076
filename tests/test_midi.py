"""MIDI to melody: track choice, skyline, positions, invariant windows, bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pretty_midi
import pytest
from conftest import drums_only_midi, melody_midi, pop_arrangement, random_melody

from melodyguard import cli
from melodyguard.errors import (
    CorruptFileError,
    EmptyInputError,
    InputTooLargeError,
    InvalidInputError,
    MelodyTooShortError,
    NoMelodyError,
    UnsupportedFormatError,
)
from melodyguard.fingerprint import (
    Melody,
    TimeSignature,
    extract_melody,
    midi_candidates,
    window_melody,
)
from melodyguard.fingerprint.windows import WindowConfig, encode_notes, encode_rows


def _match_rate(mel: Melody, pitches, onsets) -> float:
    got = {(int(p), round(float(o), 3)) for p, o in zip(mel.pitches, mel.onsets_beats)}
    want = [(int(p), round(float(o), 3)) for p, o in zip(pitches, onsets)]
    return sum(w in got for w in want) / len(want)


@pytest.mark.parametrize("names", [True, False])
def test_pop_arrangement_lead_recovered(rng, names):
    data, lp, lo = pop_arrangement(rng, names=names)
    mel = extract_melody(data)
    assert mel.info["program"] == 80
    assert _match_rate(mel, lp, lo) >= 0.95
    assert len(mel) == len(lp)


def test_tempo_change_keeps_beats_and_moves_seconds(rng):
    data, lp, lo = pop_arrangement(rng)
    mel = extract_melody(data)
    np.testing.assert_allclose(mel.onsets_beats, lo, atol=1e-3)
    # Before beat 32 a beat lasts 0.6 s (100 bpm); after it 60/140 s.
    i = int(np.searchsorted(lo, 40.0))
    expected = 32 * 0.6 + (lo[i] - 32) * 60 / 140
    assert mel.onsets_seconds[i] == pytest.approx(expected, abs=1e-3)


def test_drums_ignored_and_candidates_listed(rng):
    data, _, _ = pop_arrangement(rng)
    cands = midi_candidates(data)
    assert {c.program for c in cands} == {80, 33, 0}  # drums are not candidates
    assert cands[0].program == 80 and cands[0].score > cands[1].score


def test_skyline_keeps_top_voice():
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(0)
    for k in range(10):
        t = k * 0.5
        inst.notes.append(pretty_midi.Note(90, 72 + k % 3, t, t + 0.5))
        inst.notes.append(pretty_midi.Note(90, 60, t, t + 0.5))  # lower voice, same onset
    inst.notes.append(pretty_midi.Note(90, 55, 0.25, 0.4))  # starts under a sounding higher note
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    mel = extract_melody(buf.getvalue())
    assert list(mel.pitches) == [72 + k % 3 for k in range(10)]


def test_bars_with_time_signature_change_and_pickup():
    on = np.arange(12, dtype=float)  # one note per beat
    sigs = [TimeSignature(0.0, 4, 4), TimeSignature(5.0, 3, 4)]
    mel = Melody.from_notes([60] * 12, on, np.ones(12), time_signatures=sigs, bar_offset_beats=1.0)
    # beat 0: pickup (bar 0); beats 1-4: bar 1; change at 5: bars of 3 beats -> 5-7 bar 2, 8-10 bar 3
    assert list(mel.bars) == [0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert list(mel.beats_in_bar[:6]) == [0.0, 0.0, 1.0, 2.0, 3.0, 0.0]


def test_time_signature_read_from_midi(rng):
    p, o, d = random_melody(rng, 24)
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(3, 4, 0.0))
    inst = pretty_midi.Instrument(0)
    for a, b, c in zip(p, o, d):
        inst.notes.append(pretty_midi.Note(90, int(a), b * 0.5, (b + c) * 0.5))
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    mel = extract_melody(buf.getvalue())
    np.testing.assert_array_equal(mel.bars, (np.floor(o / 3) + 1).astype(int))


@pytest.mark.parametrize("shift", [-5, -1, 3, 7])
@pytest.mark.parametrize("tempo", [60.0, 97.0, 180.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_windows_invariant_to_transposition_and_tempo(rng, shift, tempo, scale):
    p, o, d = random_melody(rng, 40)
    base = window_melody(extract_melody(melody_midi(p, o, d)))
    moved = window_melody(extract_melody(melody_midi(p + shift, o * scale, d * scale, tempo=tempo)))
    np.testing.assert_array_equal(base.pitch, moved.pitch)
    np.testing.assert_array_equal(base.rhythm, moved.rhythm)
    np.testing.assert_array_equal(base.start, moved.start)


def test_windows_shape_and_positions(rng):
    p, o, d = random_melody(rng, 40)
    mel = extract_melody(melody_midi(p, o, d))
    w = window_melody(mel, config=WindowConfig(length=16, hop=4))
    assert w.pitch.shape == (len(w), 16)
    assert list(w.start) == [0, 4, 8, 12, 16, 20, 24]
    assert w.start[-1] + 16 == 40  # the end is covered


def test_short_melody_gives_one_padded_window(rng):
    p, o, d = random_melody(rng, 10)
    w = window_melody(extract_melody(melody_midi(p, o, d)))
    assert len(w) == 1 and w.n_notes[0] == 10
    assert (w.pitch[0, 10:] == 49).all()


def test_rows_encoded_together_get_the_tokens_each_gets_alone(rng):
    """``encode_rows`` (the training sampler tokenises a batch's windows with it, grouped by
    note count) gives every row exactly what ``encode_notes`` gives that row alone, so batching
    the sampler changed no training batch."""
    for n in (8, 11, 16):
        p = rng.integers(40, 90, size=(7, n))
        d = rng.choice([0.25, 0.5, 0.75, 1.0, 1.5, 2.0], size=(7, n)) * rng.uniform(0.3, 3.0, size=(7, 1))
        pitch, rhythm, refs, meds = encode_rows(p, d, length=16)
        assert pitch.shape == rhythm.shape == (7, 16)
        for i in range(7):
            one = encode_notes(p[i], d[i], length=16)
            np.testing.assert_array_equal(pitch[i], one[0])
            np.testing.assert_array_equal(rhythm[i], one[1])
            assert (refs[i], meds[i]) == (one[2], one[3])
        assert len({tuple(r) for r in pitch}) > 1  # the rows differ, so a mix-up would show
    for bad_p, bad_d in ((np.zeros((2, 17), int), np.ones((2, 17))), (np.zeros((2, 8), int), np.ones((2, 9))),
                         (np.zeros((2, 8), int), np.zeros((2, 8))), (np.zeros(8, int), np.ones(8))):
        with pytest.raises(InvalidInputError):
            encode_rows(bad_p, bad_d, length=16)


def test_bad_input_errors(tmp_path, rng):
    with pytest.raises(CorruptFileError, match="not a Standard MIDI File"):
        extract_melody(b"\x00\x01garbage" * 10, filename="x.mid")
    with pytest.raises(CorruptFileError, match="corrupt MIDI"):
        extract_melody(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff\xff\xff")
    good = melody_midi(np.arange(60, 72), np.arange(12.0), np.ones(12))
    with pytest.raises(CorruptFileError, match="EOFError: the data ends in the middle of a chunk"):
        extract_melody(good[:30], filename="cut.mid")  # a truncated upload: the message says what happened
    with pytest.raises(EmptyInputError, match="empty"):
        extract_melody(b"")
    with pytest.raises(UnsupportedFormatError, match="unrecognised format"):
        extract_melody(b"hello world, this is text", filename="notes.txt")
    empty = pretty_midi.PrettyMIDI()
    empty.instruments.append(pretty_midi.Instrument(0))
    buf = io.BytesIO()
    empty.write(buf)
    with pytest.raises(NoMelodyError, match="no notes"):
        extract_melody(buf.getvalue())
    with pytest.raises(NoMelodyError, match="only drum notes"):
        extract_melody(drums_only_midi())
    p, o, d = random_melody(rng, 5)
    with pytest.raises(MelodyTooShortError, match="melody has 5 notes; at least 8"):
        extract_melody(melody_midi(p, o, d))
    big = tmp_path / "big.mid"
    big.write_bytes(b"MThd" + b"\x00" * 2000)
    with pytest.raises(InputTooLargeError, match="limit is 1000 bytes"):
        extract_melody(big, max_bytes=1000)
    p, o, d = random_melody(rng, 50)
    with pytest.raises(InputTooLargeError, match="the limit is 20"):
        extract_melody(melody_midi(p, o, d), max_notes=20)


def test_cli_melody_json(write, rng, capsys):
    data, lp, lo = pop_arrangement(rng)
    path = write("song.mid", data)
    assert cli.main(["melody", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["info"]["program"] == 80
    assert [n["pitch"] for n in out["notes"]] == [int(x) for x in lp]
    assert {"pitch", "onset_beats", "duration_beats", "onset_seconds", "bar"} <= set(out["notes"][0])


def test_cli_corrupt_file_one_line_error(write, capsys):
    path = write("bad.mid", b"definitely not midi")
    assert cli.main(["melody", str(path)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Standard MIDI File" in err and "Traceback" not in err
