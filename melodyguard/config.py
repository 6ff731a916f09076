"""Named, typed defaults in one place."""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_NOTES",
    "DEFAULT_MIN_NOTES",
    "DEFAULT_TEMPO_BPM",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CATALOGUE_DIR",
    "DEFAULT_WORK_CACHE",
    "cache_dir",
    "catalogue_dir",
    "work_cache_size",
    "set_native_threads",
    "cap_native_threads",
]

#: Largest input file read, in bytes (20 MiB). A MIDI file this large is almost surely not a song.
DEFAULT_MAX_FILE_BYTES: int = 20 * 1024 * 1024
#: Largest number of notes read from one file (all tracks together).
DEFAULT_MAX_NOTES: int = 200_000
#: Fewest melody notes that can be compared: an 8-note hook.
DEFAULT_MIN_NOTES: int = 8
#: Tempo assumed where a melody has no tempo of its own (beats per minute, quarter = beat).
DEFAULT_TEMPO_BPM: float = 120.0

#: Catalogue works an open catalogue keeps parsed and prepared for verification (most recently
#: used first); ``MELODYGUARD_WORK_CACHE`` overrides it. About 18 kB per work of 50 notes, so a
#: server holding a 10k-work catalogue hot uses about 180 MB for it.
DEFAULT_WORK_CACHE: int = 16384
#: Where derived data (the corpus cache) lives; ``MELODYGUARD_CACHE`` overrides it.
DEFAULT_CACHE_DIR: Path = Path.home() / ".cache" / "melodyguard"
#: Where the catalogue lives; ``MELODYGUARD_CATALOGUE`` overrides it.
DEFAULT_CATALOGUE_DIR: Path = Path.home() / ".local" / "share" / "melodyguard" / "catalogue"


def cache_dir() -> Path:
    """The cache directory in force (``$MELODYGUARD_CACHE`` or :data:`DEFAULT_CACHE_DIR`)."""
    return Path(os.environ.get("MELODYGUARD_CACHE", DEFAULT_CACHE_DIR))


def catalogue_dir() -> Path:
    """The catalogue directory in force (``$MELODYGUARD_CATALOGUE`` or the default)."""
    return Path(os.environ.get("MELODYGUARD_CATALOGUE", DEFAULT_CATALOGUE_DIR))


def work_cache_size() -> int:
    """Works kept parsed per open catalogue (``$MELODYGUARD_WORK_CACHE`` or the default)."""
    raw = os.environ.get("MELODYGUARD_WORK_CACHE")
    if raw is None or raw.strip() == "":
        return DEFAULT_WORK_CACHE
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        from .errors import ConfigError

        raise ConfigError(f"MELODYGUARD_WORK_CACHE must be a whole number of works (0 or more); got {raw!r}")
    return n


#: the thread count this thread last set through :func:`set_native_threads`
_CAPPED = threading.local()


def set_native_threads(n: int) -> None:
    """Let each native call (torch's and faiss's OpenMP teams) use at most ``n`` threads.

    A server runs many checks at once in threads, and an audit runs one process per core. Each
    check's embedding (torch) and search (faiss, OpenMP) would otherwise start a team of one
    thread per core, and many concurrent teams on few cores spin against each other: on 2 cores,
    20 concurrent API clients got 4 checks/s with the default teams and 57 checks/s with ``n=1``
    (docs/benchmarks.md, "HTTP API").

    OpenMP keeps this count per thread: it holds for the calling thread (and threads it starts
    later inherit the process default, not this value). A thread pool calls
    :func:`cap_native_threads` in each of its threads.
    """
    if n < 1:
        from .errors import ConfigError

        raise ConfigError(f"threads must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)
    import faiss

    if hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(n)
    _CAPPED.n = n


def cap_native_threads(n: int) -> None:
    """:func:`set_native_threads` for the calling thread, once per thread and value."""
    if getattr(_CAPPED, "n", None) != n:
        set_native_threads(n)
