"""A shard's bytes against its manifest entry: the byte count always, the sha256 as chosen by `verify`.

- "stream" (the default): the bytes are hashed as the tar reader consumes them; the sha256 is known only
  at the shard's end, so the samples of a shard that fails were already handed on (the error, or in skip
  mode the counted failure, comes after them).
- "before": the whole shard is read (at most the manifest's byte count, ~40 MB for a default shard) and
  checked before any of its samples is handed on: a shard that fails delivers nothing.
- "off": no sha256 (the byte count is still checked: it costs nothing).

Shard URLs given without a manifest have neither hash nor byte count: nothing is checked.
"""

import hashlib
from typing import IO, Literal

from segshards.writer.errors import ShardFormatError

Verify = Literal["stream", "before", "off"]
VERIFY_MODES: tuple[Verify, ...] = ("stream", "before", "off")
CHUNK = 1 << 20


class CheckedStream:
    """Reads `stream` for the tar reader, counting and (with `sha256`) hashing; refuses to read past `size`
    bytes. `finish()` reads what the tar reader left (the padding after the end-of-archive) and compares."""

    def __init__(self, stream: IO[bytes], url: str, *, size: int, sha256: str | None) -> None:
        self.stream, self.url, self.size, self.expected = stream, url, size, sha256
        self.hash = hashlib.sha256() if sha256 is not None else None
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        left = self.size + 1 - self.count  # one byte more than the manifest allows shows a longer shard
        data = self.stream.read(left if n < 0 else min(n, left))
        self.count += len(data)
        if self.count > self.size:
            raise ShardFormatError(f"{self.url}: longer than the manifest's {self.size} bytes")
        if self.hash is not None:
            self.hash.update(data)
        return data

    def fileno(self) -> int:
        """The underlying file's descriptor (the tar reader refuses one that is not a regular file)."""
        return self.stream.fileno()

    def finish(self) -> None:
        """Read to the end, then raise unless the byte count (and sha256) match the manifest."""
        while self.read(CHUNK):
            pass
        if self.count != self.size:
            raise ShardFormatError(f"{self.url}: {self.count} bytes, the manifest says {self.size}")
        if self.hash is not None and self.hash.hexdigest() != self.expected:
            raise ShardFormatError(f"{self.url}: sha256 differs from the manifest (changed or damaged)")


def read_checked(stream: IO[bytes], url: str, *, size: int, sha256: str | None) -> bytes:
    """The whole shard, once its byte count and sha256 match the manifest ("before" mode)."""
    checked = CheckedStream(stream, url, size=size, sha256=sha256)
    parts = [checked.read()]  # a local file comes in one read: one buffer, no join
    while data := checked.read(CHUNK):
        parts.append(data)
    checked.finish()
    return parts[0] if len(parts) == 1 else b"".join(parts)
