"""Where a shard set lives: a local folder or an `s3://bucket/prefix`, behind one small interface.

Writes are atomic in both: a local file goes through a temp name and `os.replace`; an S3 object is sent
with one PutObject, or a multipart upload for large files, and S3 makes neither visible under its key
until it is complete. Each S3 object carries the sha256 of its bytes in its metadata (`x-amz-meta-sha256`),
so a resumed build or publish can tell a finished object from a stale one without downloading it.

Endpoint, region and credentials come from the standard AWS sources (`AWS_ENDPOINT_URL`, `AWS_REGION`,
`AWS_PROFILE`, `AWS_ACCESS_KEY_ID` ..., `~/.aws/config`), read by botocore itself: nothing here stores,
prints or records a credential.
"""

import functools
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from segshards.writer.atomic import atomic_write, temp_path
from segshards.writer.errors import ConfigError, StoreError

SCHEME = "s3://"
SHA_META = "sha256"  # S3 user-metadata key holding the hex sha256 of the object's bytes
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


@dataclass(frozen=True)
class ObjectInfo:
    """An object's size, and the sha256 recorded when it was written (None when the store has none)."""

    size: int
    sha256: str | None


class Store(Protocol):
    """A flat namespace of named objects (shards, manifest, card) at one location."""

    url: str  # the location as the user wrote it, safe to print
    remote: bool

    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...

    def upload(self, name: str, path: Path, sha256: str) -> None: ...

    def head(self, name: str) -> ObjectInfo | None: ...

    def names(self) -> list[str]: ...

    def delete(self, name: str) -> None: ...


def is_remote(location: str | Path) -> bool:
    """True for a URL (`scheme://...`), False for a local path."""
    return isinstance(location, str) and "://" in location


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_reason(exc: BaseException) -> str:
    """A one-line reason for `exc` with any `user:password@` removed from URLs in it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return USERINFO.sub("", text)


class LocalStore:
    """A local folder."""

    remote = False

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = str(folder)

    def read(self, name: str) -> bytes:
        try:
            return (self.folder / name).read_bytes()
        except OSError as exc:
            raise StoreError(f"{self.folder / name}: cannot read ({exc.strerror or exc})") from exc

    def write(self, name: str, data: bytes) -> None:
        atomic_write(self.folder / name, data)

    def upload(self, name: str, path: Path, sha256: str) -> None:
        tmp = temp_path(self.folder / name)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            raise StoreError(f"{self.folder / name}: cannot write ({exc.strerror or exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def head(self, name: str) -> ObjectInfo | None:
        path = self.folder / name
        return ObjectInfo(path.stat().st_size, None) if path.is_file() else None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_file()) if self.folder.is_dir() else []

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


def _aws_environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


@functools.lru_cache(maxsize=4)
def _filesystem(environment: tuple[tuple[str, str], ...]) -> Any:
    """One s3fs filesystem per process and AWS environment (botocore reads the environment itself)."""
    del environment  # only the cache key: a changed AWS_* variable gets a new client
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


class S3Store:
    """An `s3://bucket/prefix` location on any S3-compatible store."""

    remote = True

    def __init__(self, url: str) -> None:
        bucket, _, prefix = url.removeprefix(SCHEME).partition("/")
        prefix = prefix.rstrip("/")
        if not BUCKET.fullmatch(bucket):
            raise ConfigError(f"{url}: {bucket!r} is not a valid S3 bucket name")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ConfigError(f"{url}: the prefix may not contain empty, '.' or '..' parts")
        self.bucket, self.prefix = bucket, prefix
        self.url = SCHEME + bucket + (f"/{prefix}" if prefix else "")
        self.fs = _filesystem(_aws_environment())

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextmanager
    def _errors(self, action: str, name: str | None) -> Iterator[None]:
        """Turn s3fs/botocore failures into one StoreError naming the object and what was tried."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"{self.url}/{name}" if name else self.url
        try:
            yield
        except PermissionError as exc:
            raise StoreError(f"{where}: cannot {action}: access denied ({safe_reason(exc)})") from exc
        except (OSError, BotoCoreError, ClientError, TimeoutError) as exc:
            raise StoreError(f"{where}: cannot {action} ({safe_reason(exc)})") from exc

    def check_bucket(self) -> None:
        """Fail early, and clearly, when the bucket is missing or unreachable."""
        with self._errors("reach the bucket", None):
            try:
                self.fs.call_s3("head_bucket", Bucket=self.bucket)
            except FileNotFoundError:
                raise StoreError(
                    f"s3://{self.bucket}: no such bucket (or not visible with these credentials)"
                ) from None

    def read(self, name: str) -> bytes:
        with self._errors("read", name):
            try:
                return bytes(self.fs.cat_file(f"{self.bucket}/{self.key(name)}"))
            except FileNotFoundError:
                raise StoreError(f"{self.url}/{name}: no such object") from None

    def write(self, name: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        with self._errors("upload", name):
            self.fs.pipe_file(f"{self.bucket}/{self.key(name)}", data, Metadata={SHA_META: sha})

    def upload(self, name: str, path: Path, sha256: str) -> None:
        with self._errors("upload", name):
            self.fs.put_file(str(path), f"{self.bucket}/{self.key(name)}", Metadata={SHA_META: sha256})

    def head(self, name: str) -> ObjectInfo | None:
        with self._errors("look up", name):
            try:
                out = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key(name))
            except FileNotFoundError:
                return None
        return ObjectInfo(int(out["ContentLength"]), out.get("Metadata", {}).get(SHA_META))

    def names(self) -> list[str]:
        """Objects directly under the prefix (not in deeper 'folders')."""
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        with self._errors("list", None):
            try:
                entries = self.fs.ls(root, detail=True, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")

    def delete(self, name: str) -> None:
        with self._errors("delete", name), suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.bucket}/{self.key(name)}")


def open_store(location: str | Path) -> LocalStore | S3Store:
    """The store for a local folder or an `s3://bucket/prefix` URL; other schemes are refused."""
    if not is_remote(location):
        return LocalStore(Path(location))
    text = str(location)
    if not text.startswith(SCHEME):
        raise ConfigError(f"{text}: only local folders and s3://bucket/prefix URLs are supported")
    return S3Store(text)
