"""Reading a PNG's pixel data safely: the chunk walk, an inflate bounded by the size the header declares,
and the fast path for the writer's own PNGs (8-bit grey, no row filter).

Every PNG that `segshards.writer.format.images.decode_image` decodes goes through `inflate_checked` first:
its zlib stream must end, with a valid Adler-32, at exactly the byte count that its IHDR implies. A stream
that runs past it (a few KB that inflate to hundreds of MB, which libpng would silently read through and
drop) or stops short is refused before cv2 sees it, so no PNG costs more than its header declares.
"""

import importlib
import struct
import types
import zlib

import numpy as np

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.limits import ImageHeader


def _inflater() -> types.ModuleType:
    """zlib-ng when installed (it inflates these small PNGs about twice as fast, same output), else zlib."""
    try:
        return importlib.import_module("zlib_ng.zlib_ng")
    except ImportError:  # pragma: no cover - depends on the environment
        return zlib


inflater = _inflater()
ZLIB_ERRORS: tuple[type[Exception], ...] = (zlib.error, inflater.error)
CHUNK_HEAD = struct.Struct(">I4s")
U32 = struct.Struct(">I")
FIRST_CHUNK = 33  # signature (8) + IHDR (4 length + 4 type + 13 data + 4 CRC)
COUNT_STEP = 1 << 20  # inflated bytes held at once while only counting (colour PNGs go to cv2 after)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def raw_size(payload: bytes, header: ImageHeader) -> int:
    """Bytes of filtered scanlines the IHDR implies: per row one filter byte and the packed samples,
    summed over the seven Adam7 passes when the image is interlaced."""
    depth, colour, interlace = payload[24], payload[25], payload[28]
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols = (header.width - x0 + dx - 1) // dx if header.width > x0 else 0
        rows = (header.height - y0 + dy - 1) // dy if header.height > y0 else 0
        if cols and rows:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def idat(payload: bytes, where: str) -> bytes:
    """The concatenated IDAT data, walking the chunks from the one after IHDR up to IEND."""
    pos, parts = FIRST_CHUNK, []
    if payload[37:41] == b"IDAT":  # the writer's layout: IHDR, one IDAT, IEND
        (length,) = U32.unpack_from(payload, FIRST_CHUNK)
        if payload[length + 49 : length + 53] == b"IEND":
            return payload[41 : 41 + length]
    while True:
        if pos + 8 > len(payload):
            raise ShardFormatError(f"{where}: corrupt PNG (truncated before its IEND chunk)")
        length, kind = CHUNK_HEAD.unpack_from(payload, pos)
        if pos + 12 + length > len(payload):
            raise ShardFormatError(f"{where}: corrupt PNG ({kind!r} chunk runs past the end of the file)")
        if kind == b"IDAT":
            parts.append(payload[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            return parts[0] if len(parts) == 1 else b"".join(parts)
        pos += 12 + length


def inflate_checked(payload: bytes, header: ImageHeader, where: str, *, keep: bool) -> bytes:
    """The inflated scanlines (`keep`, else b"") once the zlib stream ends at exactly the size the IHDR
    implies; ShardFormatError when it runs past it, stops short or is corrupt. At most that size plus one
    byte is ever inflated (with `keep=False` in 1 MiB steps, never held at once)."""
    expected = raw_size(payload, header)
    data, inflate, got, kept = idat(payload, where), inflater.decompressobj(), 0, b""
    try:
        out = inflate.decompress(data, (expected + 1) if keep else min(expected + 1, COUNT_STEP))
        got, kept = len(out), out if keep else b""
        while not keep and not inflate.eof and got <= expected:
            step = len(inflate.decompress(inflate.unconsumed_tail, min(expected + 1 - got, COUNT_STEP)))
            if not step:
                break
            got += step
    except ZLIB_ERRORS as exc:
        raise ShardFormatError(f"{where}: corrupt PNG (zlib: {exc})") from None
    if got > expected:
        raise ShardFormatError(
            f"{where}: corrupt PNG (its data inflates past the {expected:,} bytes its header declares)"
        )
    if not inflate.eof or got != expected:
        raise ShardFormatError(
            f"{where}: corrupt PNG (its data inflates to {got:,} bytes, its header declares {expected:,})"
        )
    return kept


def is_plain_grey(payload: bytes) -> bool:
    """True for an 8-bit grey, non-interlaced PNG (what the writer stores for masks and MNIST images)."""
    return payload[24] == 8 and payload[25] == 0 and payload[28] == 0


def unfiltered(raw: bytes, width: int, height: int) -> np.ndarray | None:
    """The (H, W) pixels of inflated 8-bit grey rows when every row's filter byte is 0 (a read-only view
    of `raw`), else None (cv2 then undoes the filters)."""
    stride = width + 1
    if len(raw) != height * stride or raw[::stride].count(0) != height:
        return None
    return np.frombuffer(raw, np.uint8).reshape(height, stride)[:, 1:]
