"""A persistent cache of prepared sources: decoded once per machine, memory-mapped by every later build.

An entry is a folder named by a digest of the source files' bytes and of what turns them into arrays
(the cache format and the OpenCV version, which computes the Otsu thresholds). It is written under a
temporary name and renamed when complete, and it holds a checksum of its arrays: an entry that fails to
load or to match is prepared again, never used. Where the cache lives: `$SEGSHARDS_CACHE`, else
`$XDG_CACHE_HOME/segshards`, else `~/.cache/segshards`; `SEGSHARDS_CACHE=off` turns it off.
"""

import contextlib
import hashlib
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2

from segshards.writer.format.keys import file_digest

CACHE_FORMAT = 1
ENV = "SEGSHARDS_CACHE"
DISABLED = ("off", "none", "0", "false")


def cache_root() -> Path | None:
    """The cache folder, or None when the cache is turned off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in DISABLED or not value.strip() else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segshards"


def source_digest(kind: str, files: Iterable[Path]) -> str:
    """Digest naming an entry: the kind, the cache format, OpenCV's version and every file's bytes."""
    h = hashlib.sha256(f"{kind}\0{CACHE_FORMAT}\0{cv2.__version__}\0".encode())
    for path in files:
        h.update(f"{path.name}\0{file_digest(path)}\0".encode())
    return h.hexdigest()[:32]


def entry_path(kind: str, files: Iterable[Path]) -> Path | None:
    """Where the entry of these source files lives (None: cache off)."""
    root = cache_root()
    return None if root is None else root / kind / source_digest(kind, files)


def store_entry(entry: Path, write: Callable[[Path], None]) -> bool:
    """Create `entry` with `write(folder)` into a temporary folder renamed when complete.

    A cache that cannot be written (read-only home, full disk) costs speed, not the build: one line on
    stderr and False. An entry another process completed first is kept.
    """
    temp = entry.with_name(f".{entry.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        temp.mkdir(parents=True)
        write(temp)
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)  # an entry found unusable: replaced
        try:
            os.rename(temp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # another build completed the same entry first: same source, same arrays
        return True
    except OSError as exc:
        print(f"segshards: note: source cache {entry.parent} not written ({exc})", file=sys.stderr)
        return False
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(temp)
