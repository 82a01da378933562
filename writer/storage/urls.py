"""Reading objects by URL (local paths, file://, http(s)://, s3://) with retries and one clear error, and
reading a set's manifest wherever the set lives: what `verify`, `info` and the loaders read through.

S3 goes through the process's one client (`segshards.writer.storage.s3`) and every call through the one
retry policy (`segshards.writer.storage.retry`): transient failures (connection errors, timeouts, HTTP
408/429/5xx, truncated responses) are retried with exponential backoff, at most ~60 s by default; a read
that fails mid-stream reopens the object at the byte it had reached. A missing object or refused
credentials is not retried and raises one `StorageError` naming the URL.
"""

import contextlib
import http.client
import io
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse, urlsplit, urlunsplit
from urllib.request import url2pathname

from segshards.writer.errors import ConfigError, ShardFormatError, StorageError
from segshards.writer.format.manifest import MANIFEST, parse_manifest
from segshards.writer.storage.retry import RetryPolicy, redacted, retried
from segshards.writer.storage.s3 import s3_filesystem, s3_path
from segshards.writer.storage.store import S3Store

HTTP_TIMEOUT_S = 60.0
S3_BLOCK = 8 << 20


def scheme_of(url: str) -> str:
    """'s3', 'http', 'https', or 'file' for local paths and file:// URLs."""
    scheme = urlparse(url).scheme
    return "file" if scheme in ("", "file") or len(scheme) == 1 else scheme  # len 1: a Windows drive letter


def local_path(url: str) -> str:
    """The file system path of a local path or file:// URL."""
    return url2pathname(urlparse(url).path) if url.startswith("file:") else url


def join_url(base: str, name: str) -> str:
    """`base/name` for a folder URL or local path; an http(s) URL's query (a token) stays at the end."""
    if scheme_of(base) == "file" and not base.startswith("file:"):
        return str(Path(base) / name)
    parts = urlsplit(base)
    if parts.scheme in ("http", "https") and (parts.query or parts.fragment):
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))
    return base.rstrip("/") + "/" + name


def url_path(url: str) -> str:
    """The path of an http(s) URL, without its query; any other URL or path as it is."""
    return urlsplit(url).path if scheme_of(url) in ("http", "https") else url


def refuse_credentials(url: str) -> str:
    """`url`, unless it carries `user:password@`: that would be printed in every log line and error
    naming the URL, and urllib does not send it (it took it for part of the host name, and retried a
    failing DNS lookup for a minute). One ConfigError, the credentials left out of it."""
    if scheme_of(url) in ("http", "https") and urlsplit(url).username is not None:
        raise ConfigError(
            f"{redacted(url)}: credentials in the URL are not supported (they would appear in logs and "
            "errors); put a token in the query string, or serve the set from s3:// with AWS_* credentials"
        )
    return url


class _HttpBody(io.RawIOBase):
    """An HTTP(S) response body started at `offset` (Range request; a server ignoring Range is caught up)."""

    def __init__(self, url: str, offset: int) -> None:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            self.response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:  # 416: offset is the end of the object
                raise
            self.response = io.BytesIO()
        if offset and getattr(self.response, "status", 206) == 200:
            while offset:
                offset -= len(self.read(min(offset, 1 << 20)))

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.response.read(size)
        if not data and size and getattr(self.response, "length", None):
            # http.client returns b"" when the server hangs up before Content-Length: that is a cut
            raise http.client.IncompleteRead(b"", self.response.length)
        return data

    def close(self) -> None:
        self.response.close()
        super().close()


def _open_at(url: str, offset: int) -> IO[bytes]:
    scheme = scheme_of(url)
    if scheme in ("http", "https"):
        return _HttpBody(url, offset)  # type: ignore[return-value]
    if scheme == "s3":
        # readahead in 8 MiB ranges: one GET per 8 MiB rather than per read call (1 MiB from the tar reader)
        stream = s3_filesystem().open(s3_path(url), "rb", cache_type="readahead", block_size=S3_BLOCK)
        if offset:
            stream.seek(offset)
        return stream
    raise StorageError(f"{url}: unsupported URL scheme {scheme!r} (use a local path, http(s):// or s3://)")


class RetryingReader:
    """A read-only stream over a remote object that survives transient failures by reopening at its offset."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        self.url, self.policy, self.offset, self.closed = url, policy, 0, False
        self._stream: IO[bytes] | None = retried(lambda: _open_at(url, 0), url, policy)

    def _read_once(self, size: int) -> bytes:
        if self.closed:  # a read racing close() (the loader's read-ahead thread) must not reconnect
            raise ValueError(f"{self.url}: read of a closed stream")
        if self._stream is None:
            self._stream = _open_at(self.url, self.offset)
        try:
            return self._stream.read(size)
        except BaseException:
            self._drop()
            raise

    def read(self, size: int = -1) -> bytes:
        data = retried(lambda: self._read_once(size), self.url, self.policy)
        self.offset += len(data)
        return data

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):  # the connection is already broken; nothing to release
                stream.close()

    def close(self) -> None:
        self.closed = True
        self._drop()

    def __enter__(self) -> "RetryingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_url(url: str, policy: RetryPolicy | None = None) -> IO[bytes]:
    """Open a local path, file://, http(s):// or s3:// URL for streaming reads."""
    policy = policy or RetryPolicy()
    refuse_credentials(url)
    if scheme_of(url) == "file":
        path = local_path(url)
        return retried(lambda: open(path, "rb", buffering=0), url, policy)  # noqa: SIM115 (caller closes)
    return RetryingReader(url, policy)  # type: ignore[return-value]


def read_url(url: str, policy: RetryPolicy | None = None) -> bytes:
    """The whole content of a (small) object, e.g. a manifest."""
    with open_url(url, policy) as stream:
        chunks = []
        while chunk := stream.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def read_set_manifest(
    location: str | Path, retry: RetryPolicy | None = None
) -> tuple[str, str, dict[str, Any]]:
    """(folder URL, manifest URL, validated manifest) of the finished set at `location`: a local folder,
    an http(s):// or s3:// prefix, or the manifest's own path or URL. A location without a manifest is a
    ShardFormatError ("not a finished segshards set"); one that cannot be read, a StorageError."""
    text = str(location)
    folder = text.removesuffix(MANIFEST).rstrip("/") if text.endswith(MANIFEST) else text
    manifest_url = join_url(folder, MANIFEST)
    if scheme_of(text) == "file" and Path(local_path(text)).is_file() and not text.endswith(MANIFEST):
        raise ShardFormatError(f"{text}: not a folder (expected a segshards set's folder holding {MANIFEST})")
    try:
        data = read_url(manifest_url, retry)
    except StorageError as exc:
        if exc.missing:
            refuse_missing_bucket(manifest_url, retry)
            raise ShardFormatError(f"{manifest_url}: no manifest (not a finished segshards set)") from None
        raise
    return folder, manifest_url, parse_manifest(data, manifest_url)


def refuse_missing_bucket(url: str, retry: RetryPolicy | None) -> None:
    """For an s3:// object that is missing, the bucket's own check (`S3Store.check`, as `verify` and `info`
    make it) when the bucket is missing too: a typo in the bucket is not an unfinished set. One more
    request, on the error path only."""
    if scheme_of(url) != "s3":
        return
    try:
        S3Store(f"s3://{s3_path(url).split('/', 1)[0]}", retry).check()
    except StorageError as exc:
        if exc.missing:
            raise
        # anything else (denied to look at the bucket, say): the manifest's own message stands
