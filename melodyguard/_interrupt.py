"""Ctrl-C around worker pools: a flag while the pool runs, a quiet exit after it.

Used by the batch audit (``audit``), the corpus export (``corpus.build_corpus``) and the
command lines that run them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["exit_on_further_interrupts", "sigint_as_flag"]


@contextlib.contextmanager
def sigint_as_flag() -> Iterator[threading.Event]:
    """Ctrl-C sets the yielded flag instead of raising, while a worker pool runs.

    A KeyboardInterrupt raised at an arbitrary point of the pool's bookkeeping can leave one of
    its locks held, and the interpreter then hangs at exit joining the pool's thread. Between
    waits the loop turns the flag into a KeyboardInterrupt itself; further Ctrl-Cs during the
    shutdown only set the flag again. Only the main thread can own signals, and a process that
    ignores SIGINT (or has its own handler) keeps it as it is.
    """
    import signal

    flag = threading.Event()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def exit_on_further_interrupts() -> None:
    """After Ctrl-C, another one ends the process at once, quietly (not a traceback from
    whatever exit handler it lands in, nor a wait on one that hangs)."""
    import os
    import signal

    def _now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a flush interrupted mid-write; exiting anyway
                pass
        os._exit(130)

    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _now)
