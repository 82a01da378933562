"""Image codecs: PNG bytes with fixed settings, canonical JSON, and the one checked image decoder."""

import contextlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
from zlib_ng import zlib_ng

from segshards.writer.errors import ShardFormatError
from segshards.writer.format import png
from segshards.writer.format.limits import DecodeLimits, check_image

# Grayscale PNGs are assembled here around zlib-ng's deflate (level 1, no row filter): 2-3x faster than
# cv2.imencode, whose zlib dominates the cost of a shard, at the same size once padded into tar blocks.
# Other arrays go through OpenCV. Fixed settings keep the bytes reproducible.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_LEVEL = 1
MEMBER_KINDS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg"}  # member extension -> image format
CV2_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib_ng.crc32(data, zlib_ng.crc32(kind)))
    )


_IEND = _chunk(b"IEND", b"")


def encode_gray_png(array: np.ndarray) -> bytes:
    """PNG bytes (8-bit grayscale, filter type 0 on every row) of a uint8 (H, W) array."""
    height, width = array.shape
    rows = np.zeros((height, width + 1), np.uint8)  # each scanline starts with its filter-type byte, 0
    rows[:, 1:] = array
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib_ng.compress(rows.data, PNG_LEVEL)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _IEND


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array."""
    if array.dtype == np.uint8 and array.ndim == 2 and array.size:
        return encode_gray_png(array)
    ok, buf = cv2.imencode(".png", array, CV2_PNG_PARAMS)
    if not ok:
        raise ShardFormatError(f"cv2 could not PNG-encode an array of shape {array.shape}")
    return buf.tobytes()


def canonical_json(meta: dict[str, Any]) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: libpng and libjpeg print their own warnings and
    errors there ("libpng error: IDAT: CRC error"), beside the one line we report. Other threads' stderr
    output in the same moment is lost too, hence only around a decode call."""
    with _STDERR_LOCK:
        saved = os.dup(2)
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def decode_image(payload: bytes, ext: str, where: str, limits: DecodeLimits | None = None) -> np.ndarray:
    """The one image decoder of stored members: the pixels a key is computed from, as OpenCV gives them
    ((H, W) grey, (H, W, 3) BGR, (H, W, 4) BGRA; uint8), or one ShardFormatError naming `where`.

    Only 8-bit PNG and JPEG are decoded, only as the member name says (`png`, `mask.png`, `jpg`, `jpeg`),
    and only once the header declares a size within `limits`. A PNG's data must inflate to exactly what
    its header declares (`segshards.writer.format.png`); the writer's own PNGs (8-bit grey, no row filter)
    are then taken straight from the inflated rows, two to three times faster than cv2 (a read-only view).
    """
    header = check_image(payload, where, limits)
    kind = ext.rsplit(".", 1)[-1]
    if MEMBER_KINDS.get(kind) != header.kind:
        raise ShardFormatError(f"{where}: {ext} member holds a {header.kind} image")
    if header.sample_bytes != 1:
        raise ShardFormatError(f"{where}: {ext} image has 16-bit samples; only 8-bit images are stored")
    if header.kind == "png":
        plain = png.is_plain_grey(payload)
        raw = png.inflate_checked(payload, header, where, keep=plain)
        pixels = png.unfiltered(raw, header.width, header.height) if plain else None
        if pixels is not None:
            return pixels
    flag = cv2.IMREAD_COLOR if header.kind == "jpeg" else cv2.IMREAD_UNCHANGED
    return cv2_decode(payload, flag, ext, where)


def cv2_decode(payload: bytes, flag: int, ext: str, where: str) -> np.ndarray:
    """OpenCV's decode of checked bytes with `flag` (a scale, a colour mode), its stderr kept quiet, or one
    ShardFormatError naming `where` (limits are the caller's: checked from the header before this)."""
    try:
        with quiet_stderr():
            array = cv2.imdecode(np.frombuffer(payload, np.uint8), flag)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise ShardFormatError(f"{where}: undecodable {ext} image ({reason})") from None
    if array is None:
        raise ShardFormatError(f"{where}: undecodable {ext} image")
    return array
