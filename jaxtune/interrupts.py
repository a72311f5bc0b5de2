"""Ctrl-C during a study: raised as usual, and remembered where it would be lost.

Example:
    >>> with remembered_interrupts() as interrupted:
    ...     interrupted()
    False
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["remembered_interrupts"]


@contextlib.contextmanager
def remembered_interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered: Python runs a
    signal handler wherever the main thread is, a garbage-collection callback included
    (JAX's ignores exceptions), where the KeyboardInterrupt would be lost. Yields
    whether a Ctrl-C came; the study checks it at every chunk boundary. Only in the
    main thread, and only over Python's default handler."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return
    hits: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)
