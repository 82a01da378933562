"""Where a source's files live: a local folder or file, or an `s3://` / `https://` URL.

The recipes that read others' photographs (coco-semantic, mask-folder) name their files through these
functions, so that a source in an object store is listed, read and checked as a folder on disk is: files
are read whole into memory one at a time (never copied to a local disk), through the process's one S3
client and the one retry policy of `segshards.writer.storage`; every worker process reads them itself.
A local path keeps its plain file system calls (no extra copy, no extra stat). A remote failure is one
`StorageError` naming the URL (missing, access denied, unreachable after the policy's attempts).

An https:// server cannot be listed: a folder option that needs listing (mask-folder's --images and
--masks) refuses an https:// location in one line; files named by the source itself (COCO's file names,
split lists, a classes file) are read from https:// as from anywhere else.
"""

import contextlib
import hashlib
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segshards.writer.errors import ConfigError, StorageError
from segshards.writer.format.keys import file_digest
from segshards.writer.storage.retry import RetryPolicy, retried
from segshards.writer.storage.s3 import s3_filesystem, s3_path
from segshards.writer.storage.urls import HTTP_TIMEOUT_S, open_url, read_url, scheme_of

REMOTE = ("s3", "http", "https")


def is_remote(location: str) -> bool:
    """True for an s3://, http:// or https:// location."""
    return scheme_of(location) in REMOTE


def is_http(location: str) -> bool:
    """True for an http:// or https:// location (one that cannot be listed)."""
    return scheme_of(location) in ("http", "https")


def resolved(location: str) -> str:
    """A local path made absolute (as the recipes record it for workers); a URL as given, less a final /."""
    return location.rstrip("/") if is_remote(location) else str(Path(location).resolve())


def join(folder: str, name: str) -> str:
    """`folder/name` (name: a relative POSIX path)."""
    return folder.rstrip("/") + "/" + name if is_remote(folder) else os.path.join(folder, name)


def base_name(location: str) -> str:
    """The last part of a path or URL, as the manifest records a source's name."""
    return location.rstrip("/").rpartition("/")[2] if is_remote(location) else Path(location).name


# s3 files fetched ahead by `prefetched`, taken (once) by `read`
_PREFETCHED: dict[str, bytes] = {}


@contextlib.contextmanager
def prefetched(paths: list[str]) -> Iterator[None]:
    """Fetch the s3:// files among `paths` at once (concurrent GETs: a walker's run of files costs about
    one round trip, not one per file) for `read` to take from memory. A file that fails here is simply
    read again by `read`, which retries and reports it as it would have; local paths are left alone."""
    keys = {s3_path(p): p for p in paths if scheme_of(p) == "s3"}
    found: dict[str, Any] = {}
    if len(keys) > 1:
        with contextlib.suppress(Exception):  # `read` meets the same failure again and reports it
            found = s3_filesystem().cat(list(keys), on_error="return")
    _PREFETCHED.update({keys[k]: bytes(v) for k, v in found.items() if k in keys and isinstance(v, bytes)})
    try:
        yield
    finally:
        _PREFETCHED.clear()


def read(location: str) -> bytes:
    """The whole content of one file: OSError for a local one, StorageError for a remote one."""
    if location in _PREFETCHED:
        return _PREFETCHED.pop(location)
    if scheme_of(location) == "s3":  # one GET (an s3fs file would HEAD it first), retried whole
        return bytes(_s3(lambda fs, key: fs.cat_file(key), location))
    if is_remote(location):
        return read_url(location)
    with open(location, "rb") as f:
        return f.read()


def _s3(action: Any, url: str) -> Any:
    """`action(fs, key)` on the S3 filesystem, under the retry policy (one StorageError naming `url`)."""
    return retried(lambda: action(s3_filesystem(), s3_path(url)), url, RetryPolicy())


def _head(url: str) -> dict[str, str]:
    """The headers of an http(s) object (HEAD request, retried)."""

    def head() -> dict[str, str]:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return {k.lower(): v for k, v in response.headers.items()}

    return retried(head, url, RetryPolicy())


def is_file(location: str) -> bool:
    """True when `location` names an existing file (object)."""
    scheme = scheme_of(location)
    if scheme == "s3":
        return bool(_s3(lambda fs, key: fs.isfile(key), location))
    if scheme in ("http", "https"):
        try:
            _head(location)
        except StorageError as exc:
            if exc.missing:
                return False
            raise
        return True
    return Path(location).is_file()


def listable(location: str, option: str) -> str:
    """`location`, refused in one line when it is an http(s) folder, which a server cannot list."""
    if is_http(location):
        raise ConfigError(
            f"{option} {location}: an http(s) server cannot be listed; put the folder on S3 or a local disk"
        )
    return location


def is_folder(location: str, option: str) -> bool:
    """True when `location` is a folder (an S3 prefix holding objects); https:// cannot be listed."""
    scheme = scheme_of(listable(location, option))
    if scheme == "s3":
        return bool(_s3(lambda fs, key: fs.isdir(key), location))
    return Path(location).is_dir()


def stat(location: str) -> tuple[int, str]:
    """(size in bytes, a version string that changes when the file does: mtime, ETag or Last-Modified)."""
    scheme = scheme_of(location)
    if scheme == "s3":
        info = _s3(lambda fs, key: fs.info(key), location)
        return int(info["size"]), str(info.get("ETag") or info.get("LastModified") or "")
    if scheme in ("http", "https"):
        headers = _head(location)
        version = headers.get("etag") or headers.get("last-modified") or ""
        if "content-length" in headers:
            return int(headers["content-length"]), version
        return len(read_url(location)), version
    st = os.stat(location)
    return st.st_size, str(st.st_mtime_ns)


def sha256(location: str) -> str:
    """Hex sha256 of a file's bytes, streamed (a remote file is never held whole)."""
    if not is_remote(location):
        return file_digest(Path(location))
    h = hashlib.sha256()
    with open_url(location) as stream:
        while block := stream.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def listing(folder: str) -> dict[str, tuple[int, str]]:
    """Relative POSIX path -> (size, version) of every file under a remote folder (one listing; hidden
    files and folders, whose names start with '.', passed over as on disk)."""
    if scheme_of(folder) != "s3":
        raise ConfigError(f"{folder}: an http(s) server cannot be listed")
    prefix = s3_path(folder).rstrip("/") + "/"
    found = _s3(lambda fs, key: fs.find(key, detail=True), folder)
    out: dict[str, tuple[int, str]] = {}
    for key, info in sorted(found.items()):
        rel = key[len(prefix) :] if key.startswith(prefix) else None
        if rel and info.get("type", "file") == "file" and not any(p.startswith(".") for p in rel.split("/")):
            out[rel] = (int(info["size"]), str(info.get("ETag") or info.get("LastModified") or ""))
    return out


def total_size(folder: str, names: list[str]) -> int:
    """Bytes of the files `names` (relative paths) under `folder`: one listing for a remote folder."""
    if is_remote(folder):
        sizes = listing(folder)
        return sum(sizes[n][0] if n in sizes else stat(join(folder, n))[0] for n in names)
    return sum(os.stat(os.path.join(folder, n)).st_size for n in names)
