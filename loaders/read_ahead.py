"""A shard's bytes read (and hashed) on a thread while the samples already read are decoded.

Reading a shard and hashing it (`verify="stream"`) takes a few % of a photograph's time in one process,
and from HTTP or S3 a read can wait on the network for longer than a batch takes to decode. A reader
thread keeps a few chunks ahead of the tar reader: file and socket reads and sha256 updates release the
GIL, so they overlap with decoding, as LitData's and MosaicML's download threads do.
"""

import atexit
import queue
import threading
import weakref
from types import TracebackType
from typing import IO

CHUNK = 1 << 20
DEPTH = 8  # chunks queued ahead: with the one being read and the one being consumed, ~10 MiB a shard
POLL = 0.05  # seconds between the reader's looks at `stop` while the queue is full
REMOTE_WAIT = 1.0  # seconds `close` waits for a network read to end (its retries may take a minute)


class ReadAhead:
    """`read(n)` over `stream`, whose reads run on a thread `depth` chunks ahead. The thread starts at the
    first read (after the tar reader has refused a stream that is not a regular file, which could block it
    forever). `close()` joins it: a file read it has begun ends before the caller closes the file, so it
    never reads a descriptor the system has reused; a network read is waited for `REMOTE_WAIT` seconds, then
    left to fail on the closed stream (`RetryingReader` refuses reads once closed). An error of the stream
    is raised by the `read` that reaches it, and by every read after it. With `ahead=False` (a shard already
    in memory) it reads in place."""

    def __init__(
        self, stream: IO[bytes], *, chunk: int | None = None, depth: int = DEPTH, ahead: bool = True
    ) -> None:
        self.stream, self.chunk, self.ahead = stream, chunk or CHUNK, ahead
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.rest, self.pos, self.ended = b"", 0, False
        self.error: BaseException | None = None
        self.closed = False

    def fileno(self) -> int:
        """The stream's descriptor (the tar reader refuses one that is not a regular file)."""
        return self.stream.fileno()

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left for n < 0); b"" at the end of the stream. A whole chunk is
        handed on without a copy; smaller reads (gzip's 8 KiB) copy only what they take."""
        if not self.ahead:
            return self.stream.read(n)
        if n < 0:
            return b"".join(iter(lambda: self.read(self.chunk), b""))
        if self.pos == len(self.rest):
            if self.ended:
                return b""
            self.rest, self.pos = self._next(), 0
        if self.pos == 0 and n >= len(self.rest):
            self.pos = len(self.rest)
            return self.rest
        out = self.rest[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def drain(self) -> None:
        """Read to the end of the stream (the bytes are dropped): the thread then ends by itself, so that
        `CheckedStream.finish()`, called after `close()`, never reads (and hashes) beside a network read
        that `close()` stopped waiting for."""
        while self.read(self.chunk):
            pass

    def close(self) -> None:
        """Stop the thread once its current read ends (see the class); the queued chunks are dropped. Once
        closed, a second call does nothing: it may come at the interpreter's exit (see `close_all`)."""
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            local = self._local()
            waited = 0.0
            while thread.is_alive() and (local or waited < REMOTE_WAIT):
                self._clear()
                thread.join(POLL)
                waited += POLL
        self._clear()
        self.rest, self.pos = b"", 0

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _local(self) -> bool:
        try:
            self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        return True

    def _next(self) -> bytes:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="segshards-read-ahead", daemon=True)
            self.thread.start()
            RUNNING.add(self)
        while True:
            try:
                item = self.queue.get(timeout=POLL)
                break
            except queue.Empty:
                if self.stop.is_set():
                    raise ValueError("read of a closed read-ahead stream") from None
        if isinstance(item, BaseException):
            self.error = item
            raise item
        self.ended = not item
        return item

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data: bytes | BaseException = bytes(self.stream.read(self.chunk))
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


RUNNING: "weakref.WeakSet[ReadAhead]" = weakref.WeakSet()  # those whose thread was started


@atexit.register
def close_all() -> None:
    """Close every read-ahead still open when the interpreter exits, while the modules `close` uses are
    still there. A script that takes one batch and ends (`next(iter(loader))`) leaves a loader's generator
    open in its globals; Python closes it only after it has cleared the modules' globals, and `close` then
    failed (a TypeError printed as "Exception ignored in: <generator object read_shards>")."""
    for ahead in list(RUNNING):
        ahead.close()
