"""Atomic file writes: a temp name in the same folder, fsync, then `os.replace`; temp removed on failure."""

import contextlib
import errno
import os
from pathlib import Path

from writer.errors import OutputError

TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """The hidden in-progress name of `path`, unique per process."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent, old, or complete, never partial."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
