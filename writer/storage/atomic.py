"""Atomic file writes: a temp name in the same folder, fsync, then `os.replace`; temp removed on failure."""

import contextlib
import errno
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from segshards.writer.errors import OutputError

TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """The hidden in-progress name of `path`, unique per process."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent, old, or complete, never partial."""
    with atomic_stream(path) as f:
        f.write(data)


class HashingFile(io.RawIOBase):
    """A binary file that keeps the sha256 and size of everything written through it.

    Every write is checked: an OS write may take only part of the bytes (a disk filling up), so the rest
    is written again until it is all taken, and a write that takes nothing is a full disk (ENOSPC).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        done = 0
        while done < len(view):
            taken = self.raw.write(view[done:])
            if not taken:  # 0, or None from a non-blocking file: nothing was written
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += taken
        self.size += done
        return done


@contextlib.contextmanager
def atomic_stream(path: Path, buffer: int = 1 << 20) -> Iterator[Any]:
    """A buffered file to write `path` through piece by piece, with `atomic_write`'s guarantees.

    The file object yielded has `.raw`, a `HashingFile` with the sha256 and size of what was written.
    `path` appears, complete, only when the block ends without an error.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb", buffering=0) as f:
            counted = HashingFile(f)
            with io.BufferedWriter(counted, buffer_size=buffer) as out:
                yield out
            os.fsync(f.fileno())
            if os.fstat(f.fileno()).st_size != counted.size:  # a write lost without an error: never publish
                raise OSError(
                    errno.EIO, f"{os.fstat(f.fileno()).st_size} bytes on disk of {counted.size} written"
                )
        os.replace(tmp, path)
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise OutputError(f"{path}: cannot write ({reason})") from exc
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder itself is unusable: the error above says so
            tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> int:
    """Delete in-progress files left by an interrupted run; returns how many were removed."""
    stale = [p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
