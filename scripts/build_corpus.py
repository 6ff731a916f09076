#!/usr/bin/env python
"""Export music21's bundled melodies to the versioned corpus cache (resumable, parallel).

    python scripts/build_corpus.py [--limit N] [--jobs 2] [--out PATH]

A second run reuses every tune already exported; an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melodyguard._interrupt import exit_on_further_interrupts  # noqa: E402
from melodyguard.corpus import COLLECTIONS, DEFAULT_COLLECTIONS, build_corpus, default_corpus_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="export only the first N tunes (all collections interleaved)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    ap.add_argument("--out", type=Path, default=None, help=f"cache file (default {default_corpus_path()})")
    ap.add_argument("--collections", nargs="*", default=list(DEFAULT_COLLECTIONS), choices=list(COLLECTIONS),
                    help="default: the training and held-out folk collections; add palestrina for the other-style benchmark")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        stats = build_corpus(a.out, collections=a.collections, limit=a.limit, jobs=a.jobs, progress=not a.quiet)
    except KeyboardInterrupt:
        exit_on_further_interrupts()
        print("interrupted: the tunes exported so far are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
