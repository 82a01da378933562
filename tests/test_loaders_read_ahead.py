"""The shard reader's read-ahead thread: the same bytes as reading in place, the stream's errors raised where
they are reached, and no read of the stream once it is closed."""

import hashlib
import io
import subprocess
import sys
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


def test_an_error_is_raised_again_by_every_later_read() -> None:
    with ReadAhead(Recording(b"z" * 1000, fail_at=0), chunk=100) as ahead:
        for _ in range(2):
            with pytest.raises(OSError, match="connection reset"):
                ahead.read(10)


def test_small_reads_take_a_chunk_piece_by_piece() -> None:
    """gzip reads 8 KiB at a time: each read takes its piece of the chunk; a whole chunk is not copied."""
    data = bytes(range(256)) * 64
    with ReadAhead(Recording(data), chunk=4096) as ahead:
        pieces = [ahead.read(100) for _ in range(41)]
        assert b"".join(pieces) == data[:4096] and len(pieces[-1]) == 96  # the chunk's end
        assert ahead.read(1 << 20) is ahead.rest  # the next chunk, handed on as it came
        assert ahead.read(1 << 20) == data[8192:12288]


def test_a_network_read_that_hangs_delays_close_by_about_a_second() -> None:
    reading, release = threading.Event(), threading.Event()

    class Hanging(io.RawIOBase):  # no file descriptor: a network stream
        def read(self, n: int = -1) -> bytes:
            reading.set()
            release.wait(30)
            return b"late"

    ahead = ReadAhead(Hanging(), chunk=100)  # type: ignore[arg-type]
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            ahead.read(1)
        except ValueError as exc:  # closed while it waited
            failures.append(exc)

    threading.Thread(target=consume, daemon=True).start()
    assert reading.wait(10)
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 5
    assert ahead.thread is not None and ahead.thread.is_alive()  # still in its read
    release.set()
    ahead.thread.join(5)
    assert not ahead.thread.is_alive()  # it saw `stop` once its read returned
    time.sleep(0.2)
    assert [str(e) for e in failures] == ["read of a closed read-ahead stream"]


def test_drained_checked_stream_has_hashed_every_byte_on_the_thread() -> None:
    data = bytes(range(256)) * 100
    raw = Recording(data)
    checked = CheckedStream(raw, "s.tar", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with ReadAhead(checked, chunk=1000) as ahead:
        ahead.read(10)
        ahead.drain()
        assert raw.tell() == len(data)  # drained: read (and hashed) on the thread, not by finish()
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


class RecordingFile(io.FileIO):
    """A shard file that records when it was read and when it was closed."""

    reads: list[float] = []
    closed_at: list[float] = []

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        RecordingFile.reads.append(time.monotonic())
        return super().read(n)

    def close(self) -> None:
        if not self.closed:
            RecordingFile.closed_at.append(time.monotonic())
        super().close()


@pytest.mark.parametrize("how", ["abandoned", "damaged"])
def test_a_shard_left_mid_way_is_not_read_once_its_file_is_closed(
    how: str, grid_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generator closed after one sample, or a shard damaged mid-way in skip mode: the reader thread has
    ended before the file is closed, and nothing reads it after."""
    from segshards.loaders import stages
    from segshards.writer.storage.retry import RetryPolicy

    shard = sorted(grid_set.glob("train-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    if how == "damaged":
        data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    copy = tmp_path / shard.name
    copy.write_bytes(bytes(data))
    RecordingFile.reads, RecordingFile.closed_at = [], []
    monkeypatch.setattr(stages, "open_url", lambda url, retry: RecordingFile(url, "rb"))
    monkeypatch.setattr("segshards.loaders.read_ahead.CHUNK", 4096)  # many chunks in one shard
    samples = stages.read_shards(
        [str(copy)], [0], counts=None, retry=RetryPolicy(), on_error="skip", stats=stages.Stats(),
        give_up_after=5,
    )  # fmt: skip
    if how == "abandoned":
        next(samples)
        samples.close()
    else:
        assert 0 < len(list(samples)) < 60
    assert len(RecordingFile.closed_at) == 1
    assert all(t <= RecordingFile.closed_at[0] for t in RecordingFile.reads)
    assert not [t for t in threading.enumerate() if t.name == "segshards-read-ahead"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_script_that_takes_one_batch_and_ends_exits_without_a_traceback(
    grid_set: Path, workers: int
) -> None:
    """An iterator kept in a script's globals (`batches = iter(loader)`, one `next`) leaves the loader's
    generator open mid-shard; Python closes it after clearing the modules' globals, where closing the
    read-ahead printed "Exception ignored in: <generator object read_shards>" and a TypeError."""
    script = (
        "from segshards.loaders import make_loader\n"
        f"loader = make_loader({str(grid_set)!r}, 'train', 4, num_workers={workers}, shuffle=False)\n"
        "batches = iter(loader)\n"
        "batch = next(batches)\n"
        "print(len(batch['key']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "4\n", "")
