"""Decoding limits: image headers are checked before decoding, over a limit is one error naming it."""

import json
import re
import resource
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from segshards.loaders import SkippedDataWarning, make_loader
from segshards.loaders.decode import decode_member
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.images import decode_image, encode_gray_png, encode_png
from segshards.writer.format.limits import DecodeLimits, check_image, default_limits, image_header


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))
    assert ok
    return buf.tobytes()


def test_headers_give_the_declared_size() -> None:
    assert image_header(encode_png(np.zeros((5, 7), np.uint8)), "w") == image_header(png(7, 5, b""), "w")
    header = image_header(jpeg(30, 20), "w")
    assert (header.kind, header.width, header.height, header.channels) == ("jpeg", 30, 20, 3)
    rgb = image_header(encode_png(np.zeros((2, 3, 3), np.uint8)), "w")
    assert (rgb.width, rgb.height, rgb.channels, rgb.decoded_bytes) == (3, 2, 3, 18)


def test_huge_png_is_refused_from_its_header(capfd: pytest.CaptureFixture[str]) -> None:
    bomb = png(50_000, 50_000, zlib.compress(b"\0" * 1000))
    message = (
        r"^s.tar:k: png image is 50000x50000 pixels, over the limit of 268,435,456 \(SEGSHARDS_MAX_PIXELS\)$"
    )
    with pytest.raises(ShardFormatError, match=message):
        decode_image(bomb, "png", "s.tar:k")
    with pytest.raises(ShardFormatError, match=message):
        decode_member(bomb, "png", "s.tar:k")
    assert capfd.readouterr().err == ""


def test_huge_jpeg_is_refused_from_its_header() -> None:
    data = bytearray(jpeg(30, 20))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    with pytest.raises(ShardFormatError, match=r"jpeg image is 60000x60000 pixels, over the limit"):
        decode_image(bytes(data), "jpg", "w")


def test_decoded_bytes_limit_and_explicit_limits() -> None:
    image = encode_png(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(
        ShardFormatError, match=r"decodes to 300 bytes, over the limit of 299 \(SEGSHARDS_MAX"
    ):
        check_image(image, "w", DecodeLimits(max_decoded_bytes=299))
    with pytest.raises(ShardFormatError, match=r"10x10 pixels, over the limit of 99 "):
        decode_member(encode_gray_png(np.zeros((10, 10), np.uint8)), "png", "w", DecodeLimits(max_pixels=99))
    assert decode_member(encode_gray_png(np.ones((10, 10), np.uint8)), "png", "w").sum() == 100


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"GIF89a" + bytes(40), "neither a PNG nor a JPEG image"),
        (b"BM" + bytes(60), "neither a PNG nor a JPEG image"),
        (png(0, 5, b""), "declares 0x5 pixels"),
        (b"\x89PNG\r\n\x1a\n" + bytes(30), "corrupt PNG (no IHDR chunk first)"),
        (png(5, 5, b"")[:24] + b"\x07\x00" + png(5, 5, b"")[26:], "corrupt PNG (bit depth 7"),
        (b"\xff\xd8\xff\xdb\x00\x02\xff\xda", "corrupt JPEG (no frame header)"),
        (b"\xff\xd8\xff\xe0\x00\x00", "corrupt JPEG"),
        (b"\xff\xd8\x00\xe0\x00\x10JFIF", "corrupt JPEG (no marker after its start of image)"),
    ],
)
def test_malformed_headers_are_one_error(payload: bytes, message: str) -> None:
    with pytest.raises(ShardFormatError, match=rf"^w: .*{re.escape(message)}"):
        decode_image(payload, "png", "w")


@pytest.mark.parametrize("colour", [0, 2])  # grey (the fast path) and RGB (counted, then cv2)
def test_small_png_with_a_gigantic_idat_is_refused_without_inflating_it(colour: int) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bomb = png(56, 56, zlib.compress(bytes(128 << 20), 1), colour)  # 128 MiB of zeros in ~0.6 MB
    message = r"^w: corrupt PNG \(its data inflates past the [0-9,]+ bytes its header declares\)$"
    with pytest.raises(ShardFormatError, match=message):
        decode_member(bomb, "png", "w")
    with pytest.raises(ShardFormatError, match=message):
        decode_image(bomb, "png", "w")
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert growth_mib < 48  # inflating it whole would take 128


def test_png_data_must_inflate_to_exactly_the_declared_size() -> None:
    rows = bytes(57 * 56)  # 56 rows of a filter byte and 56 grey pixels
    assert decode_image(png(56, 56, zlib.compress(rows)), "png", "w").shape == (56, 56)
    with pytest.raises(
        ShardFormatError, match=r"^w: corrupt PNG \(its data inflates to 3,191 bytes, its header"
    ):
        decode_image(png(56, 56, zlib.compress(rows[:-1])), "png", "w")
    with pytest.raises(ShardFormatError, match=r"^w: corrupt PNG \(its data inflates past the 3,192 bytes"):
        decode_image(png(56, 56, zlib.compress(rows + b"\0")), "png", "w")
    with pytest.raises(ShardFormatError, match=r"^w: corrupt PNG \(zlib: "):
        decode_image(png(56, 56, zlib.compress(rows)[:-4] + b"XXXX"), "png", "w")  # bad Adler-32


def test_member_names_must_match_the_image_format_and_depth() -> None:
    with pytest.raises(ShardFormatError, match=r"^w: jpg member holds a png image$"):
        decode_image(encode_png(np.zeros((4, 4), np.uint8)), "jpg", "w")
    with pytest.raises(ShardFormatError, match=r"^w: mask.png member holds a jpeg image$"):
        decode_image(jpeg(8, 8), "mask.png", "w")
    deep = cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes()
    with pytest.raises(ShardFormatError, match=r"^w: png image has 16-bit samples"):
        decode_image(deep, "png", "w")


def test_libpng_messages_do_not_reach_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    data = bytearray(encode_png(np.zeros((8, 8, 3), np.uint8)))
    data[-14] ^= 0xFF  # the IDAT chunk's CRC (its zlib data is intact): libpng refuses it
    with pytest.raises(ShardFormatError, match=r"^w: undecodable png image"):
        decode_image(bytes(data), "png", "w")
    assert capfd.readouterr().err == ""


def test_limits_from_the_environment() -> None:
    assert DecodeLimits.from_env({}) == DecodeLimits()
    limits = DecodeLimits.from_env({"SEGSHARDS_MAX_PIXELS": "1000", "SEGSHARDS_MAX_BATCH_BYTES": " 5 "})
    assert (limits.max_pixels, limits.max_batch_bytes, limits.max_member_bytes) == (1000, 5, 256 << 20)
    for bad in ("0", "-1", "1e9", "x", "9" * 30):
        with pytest.raises(
            ConfigError, match=rf"^SEGSHARDS_MAX_PIXELS='{bad}': expected a positive integer$"
        ):
            DecodeLimits.from_env({"SEGSHARDS_MAX_PIXELS": bad})


@pytest.fixture
def limits_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def set_env(name: str, value: int) -> None:
        monkeypatch.setenv(name, str(value))
        default_limits.cache_clear()

    yield set_env
    default_limits.cache_clear()


def test_loader_reports_or_skips_samples_over_a_limit(grid_set: Path, limits_env) -> None:  # type: ignore[no-untyped-def]
    limits_env("SEGSHARDS_MAX_PIXELS", 3000)  # the grid images are 56x56 = 3136 pixels
    shard = grid_set / "train-000000.tar"
    with pytest.raises(
        ShardFormatError, match=rf"^{shard}:[0-9a-f]{{32}}: png image is 56x56 pixels, over the"
    ):
        next(iter(make_loader(grid_set, "train", batch_size=4, shuffle=False)))
    loader = make_loader(grid_set, "train", batch_size=4, shuffle=False, on_error="skip")
    with pytest.warns(SkippedDataWarning):
        assert sum(len(b["key"]) for b in loader) == 0
    total = json.loads((grid_set / "manifest.json").read_text())["splits"]["train"]["count"]
    assert (loader.stats.samples_skipped, loader.stats.shards_failed) == (total, 0)


def test_loader_batch_limit(grid_set: Path, limits_env) -> None:  # type: ignore[no-untyped-def]
    limits_env("SEGSHARDS_MAX_BATCH_BYTES", 4 * 2 * 56 * 56 - 1)
    with pytest.raises(
        ShardFormatError, match=r"a batch of 4 samples of 6,272 bytes is over the limit of 25,087"
    ):
        next(iter(make_loader(grid_set, "train", batch_size=4, shuffle=False)))
    assert len(next(iter(make_loader(grid_set, "train", batch_size=3, shuffle=False)))["key"]) == 3
