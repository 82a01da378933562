"""The shard reader's read-ahead thread: the same bytes as reading in place, the stream's errors raised where
they are reached, and no read of the stream once it is closed."""

import hashlib
import io
import threading
import time
from pathlib import Path

import pytest

from segshards.loaders import make_loader
from segshards.loaders.integrity import CheckedStream
from segshards.loaders.read_ahead import ReadAhead
from segshards.writer.errors import ShardFormatError


class Recording(io.BytesIO):
    """A stream that records which thread read it, when, and can fail at one offset."""

    def __init__(self, data: bytes, *, fail_at: int | None = None) -> None:
        super().__init__(data)
        self.fail_at = fail_at
        self.threads: set[str] = set()
        self.read_times: list[float] = []
        self.closed_at: float | None = None

    def read(self, n: int | None = -1) -> bytes:
        self.threads.add(threading.current_thread().name)
        self.read_times.append(time.monotonic())
        if self.fail_at is not None and self.tell() + (n or 0) > self.fail_at:
            raise OSError("connection reset")
        return super().read(n)


@pytest.mark.parametrize("sizes", [[1], [7, 1, 300], [5000], [-1]])
def test_reads_give_the_streams_bytes_in_order_whatever_the_sizes_asked(sizes: list[int]) -> None:
    data = bytes(range(256)) * 37
    out = b""
    with ReadAhead(Recording(data), chunk=100, depth=2) as ahead:
        while piece := ahead.read(sizes[len(out) % len(sizes)]):
            out += piece
    assert out == data


def test_the_stream_is_read_on_a_thread_started_by_the_first_read() -> None:
    stream = Recording(b"x" * 1000)
    with ReadAhead(stream, chunk=100) as ahead:
        assert ahead.thread is None and not stream.threads  # not before: a FIFO could block it forever
        assert ahead.read(10) == b"x" * 10
        assert stream.threads == {"segshards-read-ahead"}


def test_an_error_of_the_stream_is_raised_by_the_read_that_reaches_it() -> None:
    data = bytes(range(250)) * 4
    with ReadAhead(Recording(data, fail_at=450), chunk=100) as ahead:
        got = b"".join(ahead.read(100) for _ in range(4))
        assert got == data[:400]
        with pytest.raises(OSError, match="connection reset"):
            ahead.read(100)


def test_closing_mid_stream_ends_the_thread_before_it_returns() -> None:
    stream = Recording(b"y" * 100_000)
    ahead = ReadAhead(stream, chunk=100, depth=2)
    ahead.read(1)
    ahead.close()
    closed = time.monotonic()
    assert ahead.thread is not None and not ahead.thread.is_alive()
    time.sleep(0.2)  # the reader polls every 50 ms while the queue is full
    assert all(t <= closed for t in stream.read_times)  # nothing read once closed
    assert stream.tell() < 100_000  # it had stopped ahead of the end


def test_drained_checked_stream_has_hashed_every_byte_on_the_thread() -> None:
    data = bytes(range(256)) * 100
    checked = CheckedStream(
        io.BytesIO(data), "s.tar", size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    with ReadAhead(checked, chunk=1000) as ahead:
        ahead.read(10)
        ahead.drain()
    checked.finish()
    bad = CheckedStream(io.BytesIO(data), "s.tar", size=len(data), sha256="0" * 64)
    with ReadAhead(bad, chunk=1000) as ahead:
        ahead.drain()
    with pytest.raises(ShardFormatError, match="sha256 differs"):
        bad.finish()


def test_a_shard_set_reads_alike_in_every_verify_mode(grid_set: Path) -> None:
    """Read ahead ("stream", "off") and in memory ("before"): the same keys and pixels."""
    batches = {}
    for verify in ("stream", "before", "off"):
        loader = make_loader(grid_set, "train", batch_size=16, shuffle=False, verify=verify)
        batches[verify] = [(b["key"], b["image"].clone()) for b in loader]
    for verify in ("before", "off"):
        assert [k for k, _ in batches[verify]] == [k for k, _ in batches["stream"]]
        assert all((a == b).all() for (_, a), (_, b) in zip(batches[verify], batches["stream"], strict=True))
    assert not [t for t in threading.enumerate() if t.name == "segshards-read-ahead"]
