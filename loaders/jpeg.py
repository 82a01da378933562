"""JPEG pixels at a libjpeg-turbo scale, through simplejpeg where OpenCV would not turn them.

simplejpeg and OpenCV both wrap libjpeg-turbo with its default settings (accurate integer IDCT, smooth
chroma upsampling), and give the same bits at every scale: checked on every seventh coco-tiny-derived
photograph and the 16 coco-tiny originals at 1/1, 1/2, 1/4 and 1/8 (`tests/test_jpeg.py` holds it).
simplejpeg reaches the decoder without OpenCV's `imdecode` layers (a buffer copy, its own EXIF pass, the
stderr guard OpenCV's warnings need): measured in one process on 200 quality-95 COCO-derived photographs,
1.14x OpenCV's full decode and 1.05x its half-scale decode. A JPEG whose EXIF orientation turns its pixels
is turned afterwards as OpenCV turns it (`decode_image` does when the writer computes keys), and a grey
one repeated into three channels as OpenCV repeats it: the same bits, and simplejpeg's strict decode
refuses the damage OpenCV would decode without a word. Only CMYK and Adobe RGB JPEGs, and those
simplejpeg refuses, go through OpenCV.

An augmented photograph needs only a window of its pixels: `decode_window` decodes just that, through a
small binding of libjpeg-turbo's own crop and skip (`loaders/jpeg_window.c`, built where the system's
libjpeg-turbo headers are), bit for bit the same pixels as a whole decode; without it, the whole JPEG.
"""

import io

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.images import cv2_decode
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.limits import ImageHeader

try:  # built by `pip install` where a C compiler and libjpeg-turbo's headers are (pyproject.toml)
    from segshards.loaders import _jpeg_window
except ImportError:  # pragma: no cover - depends on the machine that installed segshards
    _jpeg_window = None  # type: ignore[assignment]

EXIF_ORIENTATION = 0x0112
# OpenCV's flag for each libjpeg-turbo reduction, for the JPEGs `decode_bgr` leaves to OpenCV (EXIF turns
# them as `decode_image` does).
FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def scaled_size(size: int, denominator: int) -> int:
    """libjpeg-turbo's output size at 1/denominator: rounded up."""
    return -(-size // denominator)


def exif_orientation(payload: bytes) -> int:
    """The EXIF orientation (1-8) OpenCV would apply when decoding `payload`; 1 when it has none or it is
    unreadable (OpenCV then applies none either)."""
    if not has_exif(payload):
        return 1
    try:
        with Image.open(io.BytesIO(payload)) as image:
            value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # unreadable EXIF: OpenCV does not apply it either
        return 1
    return value if 1 <= value <= 8 else 1


def has_exif(payload: bytes) -> bool:
    """Whether an APP1 segment before the scan holds EXIF, where libjpeg keeps the markers OpenCV reads its
    orientation from: a walk over a few marker segments (searching the first 64 KiB took ~45 us)."""
    pos = 2
    while pos + 4 <= len(payload) and payload[pos] == 0xFF:
        marker = payload[pos + 1]
        if marker == 0xDA:  # start of scan: no marker after it is read
            return False
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill byte, standalone markers
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xE1 and payload[pos + 4 : pos + 10] == b"Exif\0\0":
            return True
        pos += 2 + int.from_bytes(payload[pos + 2 : pos + 4], "big")
    return False


def decode_bgr(
    payload: bytes, header: ImageHeader, denominator: int, where: str, key: str | None = None
) -> np.ndarray:
    """BGR pixels of a JPEG decoded at 1/denominator and turned as its EXIF says, or one ShardFormatError
    naming `where`. OpenCV decodes what simplejpeg would not give as OpenCV does: a JPEG stored as CMYK or
    Adobe RGB, a tiny one (`picks_exactly`), and one that TurboJPEG refuses (damage, or an encoder's slip
    that OpenCV decodes with a warning, as the writer did). With `key`, the pixels are checked against it
    as `verify` checks them where they are the full-size ones, and what OpenCV decodes at a reduced scale
    is first checked through a full decode (`decode_checked`): OpenCV says nothing of damage it decodes.
    simplejpeg's strict decode at a reduced scale is not: it refuses damage itself."""
    try:
        colorspace = simplejpeg.decode_jpeg_header(payload)[2]
        if colorspace in ("YCbCr", "Gray") and picks_exactly(header.height, header.width, denominator):
            image = turned(decode_simple(payload, header, denominator, colorspace), exif_orientation(payload))
            return image if key is None or denominator > 1 else keyed(image, key, where)
    except ValueError as exc:  # its header or its scan
        if key is not None:
            return decode_checked(payload, denominator, key, where, damage=str(exc))
    if key is not None:
        return decode_checked(payload, denominator, key, where)
    return cv2_decode(payload, FLAGS[denominator], "jpg", where)


def keyed(image: np.ndarray, key: str, where: str) -> np.ndarray:
    """`image`, full-size pixels as the writer decoded them, once they hash to `key` (`verify`'s rule)."""
    if pixel_key(image) != key:
        raise ShardFormatError(f"{where}: key does not match the hash of its image pixels")
    return image


def decode_simple(payload: bytes, header: ImageHeader, denominator: int, colorspace: str) -> np.ndarray:
    """A YCbCr or grey JPEG as stored, BGR at 1/denominator, by simplejpeg (strict: a ValueError on any
    damage libjpeg-turbo warns of); grey repeated into three channels, as OpenCV's colour decode does."""
    pixels = simplejpeg.decode_jpeg(
        payload,
        "BGR" if colorspace == "YCbCr" else "Gray",
        min_height=scaled_size(header.height, denominator),
        min_width=scaled_size(header.width, denominator),
    )
    return pixels if colorspace == "YCbCr" else cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)


# OpenCV's EXIF turn (its ExifTransform) for orientations 2-8: whether to transpose first, then the code of
# the flip (1 left-right, 0 upside down, -1 both; None: none).
TURNS: dict[int, tuple[bool, int | None]] = {
    2: (False, 1),
    3: (False, -1),
    4: (False, 0),
    5: (True, None),
    6: (True, 1),
    7: (True, -1),
    8: (True, 0),
}


def turned(image: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels as stored, turned as EXIF `orientation` says, with OpenCV's own steps (numpy's
    transposed copy of a colour image took ~3x as long)."""
    if orientation not in TURNS:
        return image
    transpose, flip = TURNS[orientation]
    image = cv2.transpose(image) if transpose else image
    return image if flip is None else cv2.flip(image, flip)


def decode_checked(
    payload: bytes, denominator: int, key: str, where: str, damage: str | None = None
) -> np.ndarray:
    """A JPEG that OpenCV decodes, checked as `verify` checks it: OpenCV's full decode (the writer's) must
    hash to its key. OpenCV decodes a scan ended early by an end marker, or with damaged data, into grey or
    garbled blocks without an error, so without this such a file would pass at every reduced scale, where
    a sound JPEG's key is not checked; a COCO original with a stray byte still passes, as its key was
    computed from the same decode. Costs a full decode more, for the few JPEGs simplejpeg leaves to OpenCV
    (CMYK, Adobe RGB) or refuses (`damage`, its reason)."""
    # Where OpenCV refuses it too: OpenCV's error, the one the device path gives.
    full = cv2_decode(payload, cv2.IMREAD_COLOR, "jpg", where)
    if damage is None:
        keyed(full, key, where)
    elif pixel_key(full) != key:
        raise ShardFormatError(
            f"{where}: damaged JPEG (libjpeg-turbo: {damage}); its pixels do not match its key"
        )
    return full if denominator == 1 else cv2_decode(payload, FLAGS[denominator], "jpg", where)


def picks_exactly(h: int, w: int, denominator: int) -> bool:
    """Whether simplejpeg, asked for at least the 1/denominator size of an (h, w) JPEG, gives OpenCV's
    pixels at that scale. It takes the smallest of libjpeg-turbo's n/8 scales that reaches the size, and in
    an image a few pixels across the next smaller one can round up to the same size (3x3 at 3/8 is 2x2, as
    at 1/2); and below one MCU (16 pixels) the two builds of libjpeg-turbo differ at 1/4 and 1/8. Such
    images go through OpenCV, where they cost nothing."""
    if min(h, w) < 16:
        return False
    smaller = 8 // denominator - 1
    return (
        smaller == 0
        or -(-smaller * h // 8) < scaled_size(h, denominator)
        or -(-smaller * w // 8) < scaled_size(w, denominator)
    )


def plain_ycbcr(payload: bytes) -> bool:
    """Whether simplejpeg decodes `payload` as OpenCV does: a YCbCr JPEG its EXIF does not turn. A
    ValueError when TurboJPEG refuses its header, or warns of damage in it."""
    colorspace = simplejpeg.decode_jpeg_header(payload)[2]
    return colorspace == "YCbCr" and exif_orientation(payload) == 1


def window_decoder_built() -> bool:
    """Whether `decode_window` can decode a window alone (the binding was built at install)."""
    return _jpeg_window is not None


def decode_window(
    payload: bytes, header: ImageHeader, denominator: int, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray | None:
    """BGR pixels of decoded rows [rows) and columns [cols) of a JPEG at 1/denominator, and only those
    decoded: on coco-tiny-derived photographs an augmented crop keeps ~45% of the pixels, and the window
    decode took ~0.85 of the whole one's instructions. None where it does not apply, and the caller
    decodes the whole JPEG: not built, a JPEG OpenCV would turn or that is not YCbCr (as `decode_bgr`), one under an MCU or
    sampled unusually, a progressive one whose scans stop short, and one libjpeg-turbo refuses or warns
    about anywhere (the rows below the window are entropy-decoded too): damage meets the whole decode's
    rules, whatever the window."""
    if _jpeg_window is None or min(header.height, header.width) < 16:
        return None
    out = np.empty((rows[1] - rows[0], cols[1] - cols[0], 3), np.uint8)
    try:
        if not plain_ycbcr(payload):
            return None
        _jpeg_window.decode_window(payload, denominator, *rows, *cols, out)
    except ValueError:
        return None
    return out
