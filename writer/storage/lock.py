"""One build per output folder: a lock file, held with flock, that names its owner's pid and host.

The claim of a folder used to be check-then-write: two builds started together could both pass it. The
lock is an advisory `flock` on `.segshards-build.lock`, taken without waiting: the kernel releases it when
its owner exits, however it exits, so a lock left by a killed build is stale by construction and simply
taken over (its file still names the dead pid, which the new owner overwrites). The owner unlinks the
file while still holding the lock; a builder that opened the old file before that sees its inode gone and
tries again, so two builds never both hold a lock on the folder's current file.
"""

import atexit
import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

from segshards.writer.errors import OutputError

LOCK = ".segshards-build.lock"
_held: dict[Path, int] = {}  # folder -> locked file descriptor, in this process


def _owner(fd: int) -> str:
    """`pid N on host H` from a lock file's content, or what is known when it is unreadable."""
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        data = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(data['pid'])} on host {str(data['host'])[:100]}"
    return "owner unknown"


def _still_linked(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def claim_folder(folder: Path) -> None:
    """Lock `folder` for this process's build; OutputError naming the owner when another build holds it.

    Re-entrant within one process; released by `release_folder` or when the process ends.
    """
    folder = folder.resolve()
    if folder in _held:
        return
    path = folder / LOCK
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"--out {folder}: cannot create {LOCK} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise OutputError(
                f"--out {folder}: another build is writing this folder ({owner}); wait for it to end"
            ) from None
        if not _still_linked(fd, path):  # its owner released it between our open and our flock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        if not _held:
            atexit.register(release_all)
        _held[folder] = fd
        return
    raise OutputError(f"--out {folder}: {LOCK} keeps changing hands; is another build starting?")


def release_folder(folder: Path) -> None:
    """Give up this process's lock on `folder` (no-op when not held): the file goes, then the lock."""
    fd = _held.pop(folder.resolve(), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        (folder / LOCK).unlink()
    os.close(fd)


def release_all() -> None:
    """Release every lock this process holds (at exit)."""
    for folder in list(_held):
        release_folder(folder)
