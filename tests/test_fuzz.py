"""A seeded mutation loop over a real shard: every outcome of `verify` and the loader (both on_error modes,
and skip mode with verify="before") is a clean error, a counted skip, or data identical to the original,
within a per-case deadline. Every mutation fails the shard's sha256: raise mode always raises, "before"
delivers nothing of the shard, and the default "stream" may hand on changed samples before the shard's end
but then counts the shard as failed.

SEGSHARDS_FUZZ_CASES sets the number of cases (default 300, about 15 s here); SEGSHARDS_FUZZ_SEED the seed.
The outcome table is printed (run with -s to see it).
"""

import collections
import json
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segshards.loaders import SkippedDataWarning, make_loader
from segshards.writer.errors import SegshardsError
from segshards.writer.format.tar_writer import BLOCK
from segshards.writer.share.verify import verify_location
from tests.conftest import build_set
from tests.deadline import deadline

CASES = int(os.environ.get("SEGSHARDS_FUZZ_CASES", "300"))
SEED = int(os.environ.get("SEGSHARDS_FUZZ_SEED", "0"))
CASE_SECONDS = 10.0
SHARD = "train-000000.tar"
Rng = np.random.Generator


def members(data: bytes) -> list[tuple[int, str, int]]:
    """(header offset, name, size) of each member of an intact, plain USTAR shard."""
    out, pos = [], 0
    while data[pos : pos + BLOCK] != bytes(BLOCK):
        name = data[pos : pos + 100].split(b"\0", 1)[0].decode()
        size = int(data[pos + 124 : pos + 135], 8)
        out.append((pos, name, size))
        pos += BLOCK + size + (-size % BLOCK)
    return out


def fix_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def flip_bits(data: bytes, rng: Rng) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.integers(0, len(out)))
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def truncate(data: bytes, rng: Rng) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


FIELDS = {"name": (0, 100), "mode": (100, 8), "size": (124, 12), "checksum": (148, 8), "type": (156, 1),
          "magic": (257, 6), "prefix": (345, 155)}  # fmt: skip
VALUES = [b"-0000000001\0", b"-1", b"\xff" * 12, b"\x80" + b"\xff" * 11, b"77777777777\0", b"00000000000\0",
          b"1_0\0", b" +12\0", b"x", b"5", b"3", b"L", b"g", b"../../etc/x.png", b"/abs.png", b"\0"]  # fmt: skip


def rewrite_header(data: bytes, rng: Rng) -> bytes:
    offset, _, _ = members(data)[int(rng.integers(0, len(members(data))))]
    start, width = list(FIELDS.values())[int(rng.integers(0, len(FIELDS)))]
    value = VALUES[int(rng.integers(0, len(VALUES)))][:width]
    header = bytearray(data[offset : offset + BLOCK])
    header[start : start + len(value)] = value
    if rng.random() < 0.8:  # mostly past the checksum, to reach the parser behind it
        fix_checksum(header)
    return data[:offset] + bytes(header) + data[offset + BLOCK :]


PAX_RECORDS = [b"0 size=3\n", b"9 size=3\n0 path=x\n", b"12 size=abc\n", b"11 size=-5\n", b"5 size=3\n",
               b"99999 size=3\n", b"30 size=99999999999999999999\n", b"8 nokey\n", b"19 path=../x.png\n",
               b"17 size=1000000\n", b"9 size=0\n", b"-9 size=3\n"]  # fmt: skip


def insert_pax(data: bytes, rng: Rng) -> bytes:
    offset, _, _ = members(data)[int(rng.integers(0, len(members(data))))]
    records = PAX_RECORDS[int(rng.integers(0, len(PAX_RECORDS)))]
    header = bytearray(BLOCK)
    header[0:7], header[124:136], header[156:157] = b"paxhdr\0", b"%011o\0" % len(records), b"x"
    header[257:265] = b"ustar\x0000"
    fix_checksum(header)
    body = records + bytes(-len(records) % BLOCK)
    return data[:offset] + bytes(header) + body + data[offset:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def rewrite_png(data: bytes, rng: Rng) -> bytes:
    """Give one PNG member another IHDR (a huge size, another depth or colour type), CRC fixed, same length."""
    pngs = [m for m in members(data) if m[1].endswith("png")]
    offset, _, _ = pngs[int(rng.integers(0, len(pngs)))]
    start = offset + BLOCK
    width, height, depth, colour = struct.unpack(">IIBB", data[start + 16 : start + 26])
    choice = int(rng.integers(0, 5))
    if choice == 0:
        width, height = 50_000, 50_000
    elif choice == 1:
        width, height = int(rng.integers(1, 1 << 31)), int(rng.integers(1, 1 << 31))
    elif choice == 2:
        width, height = height, width + 1
    elif choice == 3:
        depth = int(rng.choice([1, 2, 4, 7, 16]))
    else:
        colour = int(rng.choice([2, 3, 4, 5, 6]))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return data[: start + 8] + png_chunk(b"IHDR", ihdr) + data[start + 33 :]


MUTATIONS: dict[str, Callable[[bytes, Rng], bytes]] = {
    "bit flips": flip_bits,
    "truncation": truncate,
    "header field": rewrite_header,
    "PAX record": insert_pax,
    "PNG header": rewrite_png,
}


def load(
    folder: Path, on_error: str, verify: str = "stream"
) -> tuple[dict[str, tuple[bytes, bytes, tuple[int, ...]]], Any]:
    """{key: (image bytes, mask bytes, digits)} of every sample delivered, and the loader's stats."""
    loader = make_loader(folder, "train", batch_size=4, shuffle=False, on_error=on_error, verify=verify)  # type: ignore[arg-type]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedDataWarning)
        for batch in loader:
            for i, key in enumerate(batch["key"]):
                digits = tuple(int(d) for d in batch["digits"][i])
                out[key] = (batch["image"][i].numpy().tobytes(), batch["mask"][i].numpy().tobytes(), digits)
    return out, loader.stats


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "set"
    return build_set(folder, "mnist-grid", "--train", "8", "--val", "0", "--test", "0", "--shard-size", "8")


def run_case(folder: Path, data: bytes, reference: dict[str, Any], original_data: bytes) -> list[str]:
    """The outcome of each of verify, loader raise mode, loader skip mode (asserting each is acceptable)."""
    (folder / SHARD).write_bytes(data)
    outcomes = []
    problems, _, _ = verify_location(folder)
    assert all("\n" not in p for p in problems)
    assert problems or data == original_data
    outcomes.append("verify: problems reported" if problems else "verify: ok (unchanged)")
    for mode, verify in (("raise", "stream"), ("skip", "stream"), ("skip", "before")):
        label = f"loader {mode}" + ("" if verify == "stream" else f", verify={verify}")
        try:
            delivered, stats = load(folder, mode, verify)
        except SegshardsError as exc:
            assert "\n" not in str(exc)
            outcomes.append(f"{label}: clean error")
            continue
        # Every changed shard fails its sha256 check: raise mode raises; "before" delivers none of it
        assert mode == "skip" or data == original_data
        assert verify == "stream" or data == original_data or (not delivered and stats.shards_failed == 1)
        changed = [k for k, v in delivered.items() if reference.get(k) != v]
        if changed:  # "stream": samples handed on before the shard's end, where its sha256 is known
            assert verify == "stream" and stats.shards_failed == 1, (mode, changed)
            outcomes.append(f"{label}: changed data, shard counted as failed")
        elif len(delivered) < len(reference):
            assert mode == "skip" and stats.shards_failed + stats.samples_skipped > 0
            outcomes.append(f"{label}: counted skip")
        else:
            outcomes.append(f"{label}: identical data")
    return outcomes


def test_fuzzed_shards_end_cleanly(
    original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "manifest.json").write_bytes((original / "manifest.json").read_bytes())
    original_data = (original / SHARD).read_bytes()
    with deadline(60):
        reference, _ = load(original, "raise")
    assert len(reference) == 8
    rng = np.random.default_rng(SEED)
    table: collections.Counter[tuple[str, str]] = collections.Counter()
    names = list(MUTATIONS)
    for case in range(CASES):
        kind = names[case % len(names)]
        data = MUTATIONS[kind](original_data, rng)
        with deadline(CASE_SECONDS):
            outcomes = run_case(folder, data, reference, original_data)
        table.update((kind, outcome) for outcome in outcomes)
    with capsys.disabled():
        print(f"\nfuzz: {CASES} cases, seed {SEED}")
        for (kind, outcome), count in sorted(table.items()):
            print(f"  {kind:13} {outcome:55} {count}")
    assert sum(table.values()) == 4 * CASES
    assert json.loads((folder / "manifest.json").read_text())["splits"]["train"]["count"] == 8
