"""Atomic writes: complete or absent, and one OutputError naming the path on failure."""

import hashlib
from pathlib import Path
from typing import Any

import pytest

from segshards.writer.errors import OutputError
from segshards.writer.storage.atomic import atomic_stream, atomic_write


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_below_a_file_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile"):
        atomic_write(tmp_path / "afile" / "out.json", b"{}")


class ShortFile:
    """A raw file that takes at most `chunk` bytes a call, and nothing at all after `capacity` bytes."""

    def __init__(self, handle: Any, *, chunk: int, capacity: int, lose: bool = False) -> None:
        self.handle, self.chunk, self.left, self.lose = handle, chunk, capacity, lose

    def write(self, data: Any) -> int:
        if self.lose:  # claims success, writes nothing: only the size check can tell
            return len(memoryview(data))
        n = min(self.chunk, self.left, len(memoryview(data)))
        self.left -= n
        return self.handle.write(bytes(memoryview(data)[:n])) if n else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> "ShortFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def short_writes(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> None:
    real_open = open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        handle = real_open(file, mode, *args, **kw)
        return ShortFile(handle, **kwargs) if "w" in mode else handle

    monkeypatch.setattr("builtins.open", fake_open)


def test_short_writes_are_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 1000
    short_writes(monkeypatch, chunk=1000, capacity=1 << 30)
    with atomic_stream(tmp_path / "x.tar", buffer=4096) as out:
        out.write(data)
        out.flush()
        assert (out.raw.size, out.raw.sha256.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "x.tar").read_bytes() == data


@pytest.mark.parametrize("lose", [False, True])
def test_full_disk_never_leaves_the_final_name(
    lose: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.tar").write_bytes(b"old")
    short_writes(monkeypatch, chunk=3000, capacity=100_000, lose=lose)
    reason = r"0 bytes on disk of 409600 written" if lose else "no space left on device"
    with (
        pytest.raises(OutputError, match=rf"^{tmp_path}/x.tar: cannot write \({reason}\)$"),
        atomic_stream(tmp_path / "x.tar", buffer=4096) as out,
    ):
        for _ in range(100):
            out.write(bytes(4096))
    assert [p.name for p in tmp_path.iterdir()] == ["x.tar"]
    assert (tmp_path / "x.tar").read_bytes() == b"old"
