"""A shard's bytes read (and hashed) on a thread while the samples already read are decoded.

Reading a shard and hashing it (`verify="stream"`) takes ~5% of a photograph's time in one process, and
from HTTP or S3 a read can wait on the network for longer than a batch takes to decode. A reader thread
keeps a few chunks ahead of the tar reader: file and socket reads and sha256 updates release the GIL, so
they overlap with decoding, as LitData's and MosaicML's download threads do.
"""

import queue
import threading
from types import TracebackType
from typing import IO

CHUNK = 1 << 20
DEPTH = 8  # chunks read ahead: 8 MiB, a fifth of a default shard
POLL = 0.05  # seconds between the reader's looks at `stop` while the queue is full


class ReadAhead:
    """`read(n)` over `stream`, whose reads run on a thread `depth` chunks ahead. The thread starts at the
    first read (after the tar reader has refused a stream that is not a regular file, which could block it
    forever) and is joined by `close()`: a read it has begun ends before the stream is closed, so it never
    reads a file descriptor the caller has closed and the system has reused. An error of the stream is
    raised by the `read` that reaches it. With `ahead=False` (a shard already in memory) it reads in place."""

    def __init__(
        self, stream: IO[bytes], *, chunk: int = CHUNK, depth: int = DEPTH, ahead: bool = True
    ) -> None:
        self.stream, self.chunk, self.ahead = stream, chunk, ahead
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.rest, self.ended = b"", False

    def fileno(self) -> int:
        """The stream's descriptor (the tar reader refuses one that is not a regular file)."""
        return self.stream.fileno()

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left for n < 0); b"" at the end of the stream."""
        if not self.ahead:
            return self.stream.read(n)
        if n < 0:
            return b"".join(iter(lambda: self.read(self.chunk), b""))
        if not self.rest and not self.ended:
            self.rest = self._next()
        out, self.rest = self.rest[:n], self.rest[n:]
        return out

    def drain(self) -> None:
        """Read to the end of the stream (the bytes are dropped): what `CheckedStream.finish` then checks
        was all read through it on the thread."""
        while self.read(self.chunk):
            pass

    def close(self) -> None:
        """Stop the thread once its current read ends; the queued chunks are dropped."""
        self.stop.set()
        if self.thread is not None:
            while self.thread.is_alive():
                self._clear()
                self.thread.join(POLL)
        self._clear()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _next(self) -> bytes:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="segshards-read-ahead", daemon=True)
            self.thread.start()
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        self.ended = not item
        return item

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data: bytes | BaseException = self.stream.read(self.chunk)
            except BaseException as exc:  # raised in the reading thread, by the read that reaches it
                data = exc
            if not self._put(data) or not isinstance(data, bytes) or not data:
                return

    def _put(self, item: bytes | BaseException) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _clear(self) -> None:
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass
