#!/usr/bin/env python
"""Write a folder of MIDI files for audit runs: edited copies of catalogue tunes and unrelated tunes.

    python scripts/make_audit_set.py --out /tmp/audit-in --n 1000 --collections essenFolksong --catalogue-size 3000

The first ``--catalogue-size`` held-out tunes (sorted by key) are the catalogue (add them with
``melodyguard add --from-corpus essenFolksong --limit 3000``); a third of the files are
medium-edited copies of catalogue tunes, the rest are tunes beyond the catalogue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard.augment import augment  # noqa: E402
from melodyguard.corpus import load_corpus  # noqa: E402
from melodyguard.fingerprint import Melody  # noqa: E402
from melodyguard.model.generate import melody_to_midi  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--collections", nargs="+", default=["essenFolksong"])
    ap.add_argument("--catalogue-size", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tunes = load_corpus(collections=a.collections)
    cat, rest = tunes[: a.catalogue_size], tunes[a.catalogue_size:]
    rng = np.random.default_rng(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    for i in range(a.n):
        if i % 3 == 0:
            t = cat[int(rng.integers(len(cat)))]
            m = t.melody
            p, o, d = augment((m.pitches, m.onsets_beats, m.durations_beats), "medium", rng=rng)
            mel = Melody.from_notes(p, o, d)
            name = f"{i:05d}_copy.mid"
        else:
            mel = rest[int(rng.integers(len(rest)))].melody
            name = f"{i:05d}_other.mid"
        (a.out / name).write_bytes(melody_to_midi(mel))
    print(f"wrote {a.n} files to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
