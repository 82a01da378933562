"""Where a shard set lives: a local folder or an `s3://bucket/prefix`, behind one small interface.

Writes are atomic in both: a local file goes through a temp name and `os.replace`; an S3 object is sent
with one PutObject, or a multipart upload for large files, and S3 makes neither visible under its key
until it is complete. Each S3 object carries the sha256 of its bytes in its metadata (`x-amz-meta-sha256`),
so a resumed build or publish can tell a finished object from a stale one without downloading it.

This module is the only place where the two kinds differ: callers (build, verify, publish, remote shard
tasks) claim, write, list, read and check a location through `Store` and never ask which kind it is.
S3 calls go through the one client (`segshards.writer.storage.s3`) and the one retry policy
(`segshards.writer.storage.retry`: transient failures retried for at most ~60 s by default), which the
loaders use too; every failure is one `StorageError` naming the object.
"""

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from segshards.writer.errors import ConfigError, OutputError, ShardFormatError, StorageError
from segshards.writer.format.tar_reader import read_regular
from segshards.writer.storage.atomic import atomic_write, remove_stale_temps, temp_path
from segshards.writer.storage.lock import claim_folder, release_folder
from segshards.writer.storage.retry import RetryPolicy, safe_reason, with_retries
from segshards.writer.storage.s3 import s3_filesystem

T = TypeVar("T")

SCHEME = "s3://"
SHA_META = "sha256"  # S3 user-metadata key holding the hex sha256 of the object's bytes
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class ObjectInfo:
    """An object's size, and the sha256 recorded when it was written (None when the store has none)."""

    size: int
    sha256: str | None


class Store(Protocol):
    """A flat namespace of named objects (shards, manifest, card) at one location."""

    url: str  # the location as the user wrote it, safe to print
    remote: bool
    noun: str  # "folder" or "prefix", for messages

    def check(self) -> None:
        """Fail early, and clearly, when the location cannot be reached (a missing bucket)."""

    def prepare(self, *, label: str = "") -> None:
        """Make the location ready to be written (create the folder, check the bucket); `label` prefixes
        errors (e.g. `--out `)."""

    def entries(self) -> list[str]:
        """Every visible name at the location: objects, and for a folder its sub-folders too."""

    def tidy(self, *, scratch: str | None = None) -> int:
        """Remove the in-progress temp files (and the hidden `scratch` folder) an interrupted writer left;
        returns how many temp files."""

    def is_folder(self, folder: Path) -> bool:
        """True when this store is the local folder `folder`."""

    def read(self, name: str, max_bytes: int | None = None) -> bytes: ...

    def lock(self) -> None: ...

    def release(self) -> None: ...

    def write(self, name: str, data: bytes) -> None: ...

    def upload(self, name: str, path: Path, sha256: str) -> None: ...

    def head(self, name: str) -> ObjectInfo | None: ...

    def names(self) -> list[str]: ...

    def delete(self, name: str) -> None: ...


def is_remote(location: str | Path) -> bool:
    """True for a URL (`scheme://...`), False for a local path."""
    return isinstance(location, str) and "://" in location


class LocalStore:
    """A local folder."""

    remote = False
    noun = "folder"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = str(folder)

    def check(self) -> None:
        """Nothing to reach: a missing folder shows as a missing object."""

    def prepare(self, *, label: str = "") -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"{label}{self.folder}: exists and is not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{label}{self.folder}: cannot create folder ({exc.strerror or exc})") from exc

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if not p.name.startswith("."))

    def tidy(self, *, scratch: str | None = None) -> int:
        if scratch is not None:
            shutil.rmtree(self.folder / scratch, ignore_errors=True)
        return remove_stale_temps(self.folder) if self.folder.is_dir() else 0

    def is_folder(self, folder: Path) -> bool:
        return self.folder.resolve() == folder.resolve()

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        """A regular file's bytes (never a FIFO or a device), refused when longer than `max_bytes`."""
        try:
            return read_regular(self.folder / name, max_bytes)
        except ShardFormatError as exc:  # missing, unreadable, not a regular file, too long
            raise StorageError(str(exc)) from None
        except OSError as exc:
            raise StorageError(f"{self.folder / name}: cannot read ({exc.strerror or exc})") from exc

    def lock(self) -> None:
        """One build per folder (see `segshards.writer.storage.lock`)."""
        claim_folder(self.folder)

    def release(self) -> None:
        release_folder(self.folder)

    def write(self, name: str, data: bytes) -> None:
        atomic_write(self.folder / name, data)

    def upload(self, name: str, path: Path, sha256: str) -> None:
        tmp = temp_path(self.folder / name)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            raise StorageError(f"{self.folder / name}: cannot write ({exc.strerror or exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def head(self, name: str) -> ObjectInfo | None:
        path = self.folder / name
        return ObjectInfo(path.stat().st_size, None) if path.is_file() else None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_file()) if self.folder.is_dir() else []

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


class S3Store:
    """An `s3://bucket/prefix` location on any S3-compatible store."""

    remote = True
    noun = "prefix"

    def __init__(self, url: str, retry: RetryPolicy | None = None) -> None:
        bucket, _, prefix = url.removeprefix(SCHEME).partition("/")
        prefix = prefix.rstrip("/")
        if not BUCKET.fullmatch(bucket):
            raise ConfigError(f"{url}: {bucket!r} is not a valid S3 bucket name")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ConfigError(f"{url}: the prefix may not contain empty, '.' or '..' parts")
        self.bucket, self.prefix = bucket, prefix
        self.url = SCHEME + bucket + (f"/{prefix}" if prefix else "")
        self.fs = s3_filesystem()
        self.retry = retry or RetryPolicy()

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextmanager
    def _errors(self, action: str, name: str | None) -> Iterator[None]:
        """Turn s3fs/botocore failures into one StorageError naming the object and what was tried."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"{self.url}/{name}" if name else self.url
        try:
            yield
        except PermissionError as exc:
            raise StorageError(f"{where}: cannot {action}: access denied ({safe_reason(exc)})") from exc
        except (OSError, BotoCoreError, ClientError, TimeoutError) as exc:
            raise StorageError(f"{where}: cannot {action} ({safe_reason(exc)})") from exc

    def _retried(self, call: Callable[[], T], name: str | None) -> T:
        """`call` under the shared retry policy (transient failures only)."""
        return with_retries(call, f"{self.url}/{name}" if name else self.url, self.retry)

    def check(self) -> None:
        """Fail early, and clearly, when the bucket is missing or unreachable."""
        with self._errors("reach the bucket", None):
            try:
                self._retried(lambda: self.fs.call_s3("head_bucket", Bucket=self.bucket), None)
            except FileNotFoundError:
                raise StorageError(
                    f"s3://{self.bucket}: no such bucket (or not visible with these credentials)",
                    missing=True,
                ) from None

    def prepare(self, *, label: str = "") -> None:
        self.check()

    def entries(self) -> list[str]:
        return [n for n in self.names() if not n.startswith(".")]

    def tidy(self, *, scratch: str | None = None) -> int:
        """Nothing to tidy: an object appears only when complete, and scratch space is never here."""
        return 0

    def is_folder(self, folder: Path) -> bool:
        return False

    def lock(self) -> None:
        """No lock on a prefix: S3 has no exclusive create to build one on (see the README)."""

    def release(self) -> None:
        """Nothing to release."""

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and (info := self.head(name)) is not None and info.size > max_bytes:
            raise StorageError(f"{self.url}/{name}: longer than the manifest's {max_bytes} bytes")
        with self._errors("read", name):
            try:
                return bytes(self._retried(lambda: self.fs.cat_file(f"{self.bucket}/{self.key(name)}"), name))
            except FileNotFoundError:
                raise StorageError(f"{self.url}/{name}: no such object") from None

    def write(self, name: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        with self._errors("upload", name):
            path = f"{self.bucket}/{self.key(name)}"
            self._retried(lambda: self.fs.pipe_file(path, data, Metadata={SHA_META: sha}), name)

    def upload(self, name: str, path: Path, sha256: str) -> None:
        with self._errors("upload", name):
            key = f"{self.bucket}/{self.key(name)}"
            self._retried(lambda: self.fs.put_file(str(path), key, Metadata={SHA_META: sha256}), name)

    def head(self, name: str) -> ObjectInfo | None:
        with self._errors("look up", name):
            try:
                out = self._retried(
                    lambda: self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key(name)), name
                )
            except FileNotFoundError:
                return None
        return ObjectInfo(int(out["ContentLength"]), out.get("Metadata", {}).get(SHA_META))

    def names(self) -> list[str]:
        """Objects directly under the prefix (not in deeper 'folders')."""
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        with self._errors("list", None):
            try:
                entries = self._retried(lambda: self.fs.ls(root, detail=True, refresh=True), None)
            except FileNotFoundError:
                return []
        return sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")

    def delete(self, name: str) -> None:
        with self._errors("delete", name), suppress(FileNotFoundError):
            self._retried(lambda: self.fs.rm_file(f"{self.bucket}/{self.key(name)}"), name)


def open_store(location: str | Path, *, retry: RetryPolicy | None = None) -> Store:
    """The store for a local folder or an `s3://bucket/prefix` URL; other schemes are refused.

    `retry` governs S3 calls (default: `RetryPolicy()`, about 60 s at most); local calls are not retried.
    """
    if not is_remote(location):
        return LocalStore(Path(location))
    text = str(location)
    if not text.startswith(SCHEME):
        raise ConfigError(f"{text}: only local folders and s3://bucket/prefix URLs are supported")
    return S3Store(text, retry)
