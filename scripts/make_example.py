#!/usr/bin/env python
"""Write the bundled example: a new 4-track song whose lead lifts bars 1-4 of an O'Neill tune.

    python scripts/make_example.py

The song is in 4/4 at 96 bpm: bars 1-8 and 13-16 of its lead are new (a seeded random
melody), bars 9-12 are bars 1-4 of "The Little Heathy Hill" (O'Neill's 1850), transposed up
3 semitones. Drums, bass and chords play underneath. The expected evidence is written beside
it as copied_phrase.json; ``melodyguard demo`` checks it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pretty_midi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard.corpus import build_corpus, load_corpus  # noqa: E402

SOURCE_KEY = "oneills1850/0001-0050.abc#2"
OUT = Path(__file__).resolve().parents[1] / "melodyguard" / "examples"


def main() -> int:
    build_corpus(collections=["oneills1850"], limit=60, progress=False)
    tune = next(t for t in load_corpus(collections=["oneills1850"]) if t.key == SOURCE_KEY)
    m = tune.melody
    sel = (m.bars >= 1) & (m.bars <= 4)
    ph_p = m.pitches[sel] + 3
    bar1 = m.onsets_beats[sel][0] - m.beats_in_bar[sel][0]
    ph_o = m.onsets_beats[sel] - bar1
    ph_d = m.durations_beats[sel]
    rng = np.random.default_rng(2026)

    def new_line(n_beats: float, start_pitch: int) -> tuple[list[int], list[float], list[float]]:
        P: list[int] = []
        O: list[float] = []
        D: list[float] = []
        t, p = 0.0, start_pitch
        while t < n_beats - 1e-9:
            d = float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
            d = min(d, n_beats - t)
            p = int(np.clip(p + rng.choice([-3, -2, -1, 0, 1, 2, 4]), 62, 81))
            P.append(p)
            O.append(t)
            D.append(d)
            t += d
        return P, O, D

    a = new_line(32.0, 72)
    b = new_line(16.0, 70)
    lead_p = a[0] + list(ph_p) + b[0]
    lead_o = a[1] + list(32.0 + ph_o) + [48.0 + x for x in b[1]]
    lead_d = a[2] + list(ph_d) + b[2]
    bpm = 96.0
    spb = 60.0 / bpm
    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    lead = pretty_midi.Instrument(program=73, name="Lead")
    for p, o, d in zip(lead_p, lead_o, lead_d):
        lead.notes.append(pretty_midi.Note(100, int(p), o * spb, (o + d) * spb))
    bass = pretty_midi.Instrument(program=33, name="Bass")
    chords = pretty_midi.Instrument(program=0, name="Piano chords")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="Drums")
    roots = [50, 55, 57, 50]
    for bar in range(16):
        r = roots[bar % 4]
        t = bar * 4.0
        bass.notes.append(pretty_midi.Note(90, r - 12, t * spb, (t + 1.9) * spb))
        bass.notes.append(pretty_midi.Note(90, r - 5, (t + 2) * spb, (t + 3.9) * spb))
        for iv in (0, 4, 7):
            chords.notes.append(pretty_midi.Note(60, r + iv, t * spb, (t + 3.9) * spb))
        for k in range(8):
            drums.notes.append(pretty_midi.Note(90, [36, 42, 38, 42][k % 4], (t + k / 2) * spb, (t + k / 2 + 0.1) * spb))
    pm.instruments.extend([drums, bass, chords, lead])
    OUT.mkdir(parents=True, exist_ok=True)
    pm.write(str(OUT / "copied_phrase.mid"))
    expected = {
        "file": "copied_phrase.mid",
        "source_key": SOURCE_KEY,
        "source_title": tune.title,
        "query_bars": [9, 12],
        "reference_bars": [1, 4],
        "transposition_semitones": 3,
        "copied_notes": int(sel.sum()),
    }
    (OUT / "copied_phrase.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(json.dumps(expected))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
