"""The ``melodyguard`` command: a thin layer over the library.

Exit codes (stable, for release pipelines):

====  =============================================================
0     success; for ``check``: every file is ``clear``
10    ``check``: the worst verdict is ``review``
20    ``check``: the worst verdict is ``block``
2     usage error (bad arguments)
3     an input or catalogue error (the message says what to fix)
====  =============================================================
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._interrupt import exit_on_further_interrupts
from .errors import MelodyGuardError

__all__ = ["main", "EXIT_OK", "EXIT_REVIEW", "EXIT_BLOCK", "EXIT_USAGE", "EXIT_ERROR"]

EXIT_OK = 0
EXIT_REVIEW = 10
EXIT_BLOCK = 20
EXIT_USAGE = 2
EXIT_ERROR = 3

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    def wrap(fn):
        _COMMANDS[name] = (fn.setup, fn, help)  # type: ignore[attr-defined]
        return fn

    return wrap


def _err(msg: str) -> None:
    print(f"melodyguard: error: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------- melody
def _setup_melody(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a MIDI file (.mid/.midi) or audio (WAV, FLAC, MP3, OGG)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--track", type=int, default=None, help="force this instrument index")
    p.add_argument("--all", action="store_true", help="list every candidate line, not only the chosen one")


def _cmd_melody(a: argparse.Namespace) -> int:
    from .fingerprint import extract_melody, midi_candidates

    mel = extract_melody(a.file, track=a.track)
    if a.json:
        d = mel.to_dict()
        if a.all:
            d["candidates_detail"] = [
                {"track": c.track, "name": c.name, "program": c.program, "score": c.score,
                 "reasons": list(c.reasons), "notes": c.melody.notes()}
                for c in midi_candidates(a.file)
            ]
        print(json.dumps(d, default=_json_default))
        return EXIT_OK
    info = mel.info
    print(f"file: {a.file}")
    if "track" in info:
        print(f"chosen track: {info['track']} '{info.get('track_name', '')}' program {info.get('program')} "
              f"(score {info.get('score')})")
        for r in info.get("reasons", []):
            print(f"  - {r}")
        others = [c for c in info.get("candidates", []) if c["track"] != info["track"]]
        for c in others:
            print(f"  other candidate: track {c['track']} '{c['name']}' score {c['score']} ({c['n_notes']} notes)")
    print(f"{len(mel)} notes, {mel.duration_beats:.2f} beats, {mel.duration_seconds:.2f} s")
    print(f"{'#':>4} {'pitch':>5} {'onset_beats':>11} {'dur_beats':>9} {'onset_s':>8} {'bar':>4} {'beat':>5}")
    for i, n in enumerate(mel.notes()):
        print(f"{i:>4} {n['pitch']:>5} {n['onset_beats']:>11.3f} {n['duration_beats']:>9.3f} "
              f"{n['onset_seconds']:>8.3f} {n['bar']:>4} {n['beat_in_bar']:>5.2f}")
    return EXIT_OK


_cmd_melody.setup = _setup_melody  # type: ignore[attr-defined]
command("melody", "print the melody melodyguard extracts from a file, and why that track")(_cmd_melody)


def _extra_commands() -> None:
    """Commands defined in other modules register themselves on import."""
    from . import _cli_catalogue, _cli_demo, _cli_keys, _cli_model  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    _extra_commands()
    ap = argparse.ArgumentParser(
        prog="melodyguard",
        description="Find copied melodies: fingerprint, catalogue, check, audit, generate.",
        epilog="Exit codes: 0 ok/clear, 10 review, 20 block, 2 usage, 3 input or catalogue error.",
    )
    from . import __version__

    ap.add_argument("--version", action="version", version=f"melodyguard {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (setup, _fn, help_) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        setup(p)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if not a.command:
        ap.print_help()
        return EXIT_USAGE
    _setup, fn, _help = _COMMANDS[a.command]
    try:
        return fn(a)
    except MelodyGuardError as exc:
        where = getattr(exc, "path", None)  # EmptyCatalogueError: which catalogue was empty
        _err((str(exc).splitlines()[0] if str(exc) else type(exc).__name__) + (f" (catalogue: {where})" if where else ""))
        return EXIT_ERROR
    except KeyboardInterrupt:
        exit_on_further_interrupts()
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)

