"""Decoding limits, and the checks that apply them to an image's header before a single pixel is decoded.

A shard from elsewhere can declare a 50000x50000 PNG in a few hundred bytes, or inflate a kilobyte into a
gigabyte: every size is checked against a limit first. The defaults fit any real photograph; each can be
raised with an environment variable (read once per process) or by passing a `DecodeLimits` explicitly.
"""

import functools
import os
import struct
from dataclasses import dataclass, fields

from segshards.writer.errors import ConfigError, ShardFormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels cv2 returns (a palette: BGR)
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # markers without a length
U16, U32 = struct.Struct(">H"), struct.Struct(">I")


@dataclass(frozen=True)
class DecodeLimits:
    """What one sample may cost to read; over a limit is a ShardFormatError (a counted skip in skip mode)."""

    max_pixels: int = 1 << 28  # width x height of one image: 268 M, a 16384 x 16384 square
    max_member_bytes: int = 256 << 20  # one tar member as stored (after gzip is undone)
    max_decoded_bytes: int = 1 << 30  # one decoded image array: max_pixels of 4 8-bit channels
    max_batch_bytes: int = 2 << 30  # the arrays of one loader batch

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> "DecodeLimits":
        """Defaults, overridden by SEGSHARDS_MAX_PIXELS, SEGSHARDS_MAX_MEMBER_BYTES, ... (positive integers)."""
        values = {}
        for field in fields(cls):
            name = env_name(field.name)
            if name in environ:
                text = environ[name].strip()
                if not text.isdigit() or len(text) > 19 or int(text) <= 0:
                    raise ConfigError(f"{name}={environ[name]!r}: expected a positive integer")
                values[field.name] = int(text)
        return cls(**values)


def env_name(field: str) -> str:
    """The environment variable that sets a limit: max_pixels -> SEGSHARDS_MAX_PIXELS."""
    return f"SEGSHARDS_{field.upper()}"


@functools.cache
def default_limits() -> DecodeLimits:
    """The process's limits: defaults and environment, read once."""
    return DecodeLimits.from_env()


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares: the size of the array it decodes to."""

    kind: str  # "png" or "jpeg"
    width: int
    height: int
    channels: int
    sample_bytes: int  # 1 for 8-bit samples, 2 for 16-bit

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.channels * self.sample_bytes


def png_header(payload: bytes, where: str) -> ImageHeader:
    """The IHDR of a PNG (the chunk the format requires first)."""
    if len(payload) < 33 or payload[12:16] != b"IHDR" or U32.unpack_from(payload, 8)[0] != 13:
        raise ShardFormatError(f"{where}: corrupt PNG (no IHDR chunk first)")
    width, height = U32.unpack_from(payload, 16)[0], U32.unpack_from(payload, 20)[0]
    depth, colour = payload[24], payload[25]
    if depth not in PNG_DEPTHS.get(colour, ()):
        raise ShardFormatError(f"{where}: corrupt PNG (bit depth {depth} with colour type {colour})")
    return ImageHeader("png", width, height, PNG_CHANNELS[colour], 2 if depth == 16 else 1)


def jpeg_header(payload: bytes, where: str) -> ImageHeader:
    """The frame header (SOFn) of a JPEG, found by walking its marker segments up to the scan."""
    pos = 2
    while pos + 4 <= len(payload):
        if payload[pos] != 0xFF:
            raise ShardFormatError(f"{where}: corrupt JPEG (no marker at byte {pos})")
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        if marker in JPEG_SOF and pos + 10 <= len(payload):
            height, width = U16.unpack_from(payload, pos + 5)[0], U16.unpack_from(payload, pos + 7)[0]
            channels = 3  # cv2 decodes JPEGs with IMREAD_COLOR
            return ImageHeader("jpeg", width, height, channels, 2 if payload[pos + 4] > 8 else 1)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + U16.unpack_from(payload, pos + 2)[0]  # the length counts itself: >= 2, so pos advances
    raise ShardFormatError(f"{where}: corrupt JPEG (no frame header)")


def image_header(payload: bytes, where: str) -> ImageHeader:
    """The header of a PNG or JPEG member; any other format is refused (cv2 would try a dozen decoders)."""
    if payload[:8] == PNG_SIGNATURE:
        return png_header(payload, where)
    if payload[:3] == b"\xff\xd8\xff":
        return jpeg_header(payload, where)
    if payload[:2] == b"\xff\xd8":  # a JPEG's start of image, then damage
        raise ShardFormatError(f"{where}: corrupt JPEG (no marker after its start of image)")
    raise ShardFormatError(f"{where}: neither a PNG nor a JPEG image")


def check_image(payload: bytes, where: str, limits: DecodeLimits | None = None) -> ImageHeader:
    """The image's header, once its declared size is within `limits` (see `DecodeLimits`)."""
    limits = limits or default_limits()
    header = image_header(payload, where)
    if not header.width or not header.height:
        raise ShardFormatError(f"{where}: {header.kind} image declares {header.width}x{header.height} pixels")
    if header.width * header.height > limits.max_pixels:
        raise ShardFormatError(
            f"{where}: {header.kind} image is {header.width}x{header.height} pixels, over the limit of "
            f"{limits.max_pixels:,} ({env_name('max_pixels')})"
        )
    if header.decoded_bytes > limits.max_decoded_bytes:
        raise ShardFormatError(
            f"{where}: {header.kind} image decodes to {header.decoded_bytes:,} bytes, over the limit of "
            f"{limits.max_decoded_bytes:,} ({env_name('max_decoded_bytes')})"
        )
    return header


def check_batch(rows: int, row_bytes: int, where: str, limits: DecodeLimits | None = None) -> None:
    """Refuse a batch of `rows` samples of `row_bytes` each when it would exceed the batch limit."""
    limits = limits or default_limits()
    if rows * row_bytes > limits.max_batch_bytes:
        raise ShardFormatError(
            f"{where}: a batch of {rows} samples of {row_bytes:,} bytes is over the limit of "
            f"{limits.max_batch_bytes:,} bytes ({env_name('max_batch_bytes')})"
        )
