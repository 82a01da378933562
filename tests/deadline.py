"""A per-case time limit for tests of inputs that once hung: SIGALRM raises in the main thread."""

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Hung(Exception):
    """The code under test ran past its deadline (a hang, or a read without end)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise `Hung` in the block if it runs longer than `seconds` (main thread, POSIX only)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
