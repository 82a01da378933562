"""Opening shard and manifest URLs (local paths, http(s), s3:// via s3fs) with retries and one clear error.

S3 settings come from the standard AWS environment and config files, as for any boto client:
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (MinIO, Ceph, moto ...), `AWS_REGION`/`AWS_DEFAULT_REGION`,
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`. The S3 client and the
retry policy are the writer's (`segshards.writer.storage.retry`): transient failures (connection errors, timeouts,
HTTP 408/429/5xx, truncated responses) are retried with exponential backoff, at most ~60 s by default;
a read that fails mid-stream reopens the object at the byte it had reached. A missing object or refused
credentials is not retried and raises one `StorageError` naming the URL.
"""

import contextlib
import http.client
import io
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from segshards.loaders.errors import StorageError
from segshards.writer.storage.retry import RetryPolicy, classify, s3_filesystem
from segshards.writer.storage.retry import with_retries as retrying

__all__ = [
    "RetryPolicy",
    "classify",
    "open_url",
    "read_url",
    "register_gopen",
    "s3_filesystem",
    "with_retries",
]

T = TypeVar("T")

HTTP_TIMEOUT_S = 60.0
S3_BLOCK = 8 << 20


def scheme_of(url: str) -> str:
    """'s3', 'http', 'https', or 'file' for local paths and file:// URLs."""
    scheme = urlparse(url).scheme
    return "file" if scheme in ("", "file") or len(scheme) == 1 else scheme  # len 1: a Windows drive letter


def join_url(base: str, name: str) -> str:
    """`base/name` for a folder URL or local path."""
    if scheme_of(base) == "file" and not base.startswith("file:"):
        return str(Path(base) / name)
    return base.rstrip("/") + "/" + name


def with_retries(action: Callable[[], T], url: str, policy: RetryPolicy) -> T:
    """Run `action` under the shared retry policy; a storage failure becomes one StorageError naming `url`."""
    try:
        return retrying(action, url, policy)
    except Exception as exc:
        kind = classify(exc)
        if kind is None:
            raise
        detail = f"{type(exc).__name__}: {exc}".strip()
        if kind == "missing":
            raise StorageError(f"{url}: not found ({detail})") from exc
        if kind == "denied":
            raise StorageError(
                f"{url}: access denied; check the credentials and permissions ({detail})"
            ) from exc
        if kind == "other":
            raise StorageError(f"{url}: cannot read ({detail})") from exc
        raise StorageError(f"{url}: still failing after {policy.attempts} attempts ({detail})") from exc


def _s3_path(url: str) -> str:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise StorageError(f"{url}: an s3 URL needs a bucket (s3://bucket/key)")
    return parsed.netloc + parsed.path


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
        stream = s3_filesystem().open(_s3_path(url), "rb", cache_type="readahead", block_size=S3_BLOCK)
        if offset:
            stream.seek(offset)
        return stream
    raise StorageError(f"{url}: unsupported URL scheme {scheme!r} (use a local path, http(s):// or s3://)")


class RetryingReader:
    """A read-only stream over a remote object that survives transient failures by reopening at its offset."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        self.url, self.policy, self.offset = url, policy, 0
        self._stream: IO[bytes] | None = with_retries(lambda: _open_at(url, 0), url, policy)

    def _read_once(self, size: int) -> bytes:
        if self._stream is None:
            self._stream = _open_at(self.url, self.offset)
        try:
            return self._stream.read(size)
        except BaseException:
            self._drop()
            raise

    def read(self, size: int = -1) -> bytes:
        data = with_retries(lambda: self._read_once(size), self.url, self.policy)
        self.offset += len(data)
        return data

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):  # the connection is already broken; nothing to release
                stream.close()

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> "RetryingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_url(url: str, policy: RetryPolicy | None = None) -> IO[bytes]:
    """Open a local path, file://, http(s):// or s3:// URL for streaming reads."""
    policy = policy or RetryPolicy()
    if scheme_of(url) == "file":
        path = url2pathname(urlparse(url).path) if url.startswith("file:") else url
        return with_retries(lambda: open(path, "rb", buffering=0), url, policy)  # noqa: SIM115 (caller closes)
    return RetryingReader(url, policy)  # type: ignore[return-value]


def read_url(url: str, policy: RetryPolicy | None = None) -> bytes:
    """The whole content of a (small) object, e.g. a manifest."""
    with open_url(url, policy) as stream:
        chunks = []
        while chunk := stream.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    """A `webdataset.gopen_schemes` handler: stock webdataset pipelines read s3:// through s3fs too."""
    if mode != "rb":
        raise ValueError(f"{url}: the s3 handler only reads (mode 'rb'), got {mode!r}")
    return io.BufferedReader(_ReaderIO(open_url(url)), buffer_size=max(bufsize, 1 << 20))


class _ReaderIO(io.RawIOBase):
    """Adapts a stream with `read` to `io.RawIOBase` (for io.BufferedReader)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def register_gopen() -> None:
    """Register the s3:// handler in `webdataset.gopen_schemes` (idempotent; replaces nothing else)."""
    from webdataset.gopen import gopen_schemes  # the module: the package exports a function of that name

    gopen_schemes["s3"] = gopen_s3
