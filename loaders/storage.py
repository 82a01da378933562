"""The loaders' storage: URLs are read through the writer's one storage layer (`segshards.writer.storage`:
`urls` for local, http(s) and s3 reads, `s3` for the client, `retry` for the retry policy and its
`StorageError`); this module adds the s3:// handler for stock webdataset pipelines.
"""

import io
from typing import IO, Any

from segshards.writer.storage.retry import RetryPolicy, classify, retried
from segshards.writer.storage.s3 import s3_filesystem
from segshards.writer.storage.urls import join_url, local_path, open_url, read_url, scheme_of

__all__ = [
    "RetryPolicy",
    "classify",
    "join_url",
    "local_path",
    "open_url",
    "read_url",
    "register_gopen",
    "retried",
    "s3_filesystem",
    "scheme_of",
]


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
