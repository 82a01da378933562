"""Photographs read from others' folders: the one decode (the stored member's, limits first), the EXIF
check, glibc's handling of photo-sized arrays, and the problem of one record, which pickles."""

import ctypes
import functools
import io

import numpy as np
from PIL import Image

from segshards.writer.errors import ShardFormatError, SourceError
from segshards.writer.format.images import decode_image

JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
KIND_NAMES = {"jpg": "JPEG", "png": "PNG"}
EXIF_ORIENTATION = 0x0112
TURNING = frozenset(range(2, 9))  # EXIF orientations that OpenCV applies (1 is as stored; others invalid)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


class BadRecord(SourceError):
    """One record of a source (an image entry, an annotation, an image + mask pair) breaks a rule;
    `reason` is the slug counted under `--on-error skip`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type["BadRecord"], tuple[str, str]]:
        """Pickled with its class and reason: the walk's worker processes send problems back."""
        return type(self), (self.reason, str(self))


def photo_kind(data: bytes, where: str, kinds: tuple[str, ...]) -> str:
    """The member extension of an image file (`jpg` or `png`, among `kinds`), from its first bytes."""
    kind = "jpg" if data.startswith(JPEG_MAGIC) else "png" if data.startswith(PNG_MAGIC) else None
    if kind not in kinds:
        names = " or ".join(KIND_NAMES[k] for k in kinds)
        raise BadRecord("unreadable-image", f"{where}: not a {names} file")
    assert kind is not None
    return kind


def decode_photo(data: bytes, where: str, *, kinds: tuple[str, ...], frame: str) -> tuple[np.ndarray, str]:
    """(pixels, member extension) of an image file, decoded as `segshards verify` decodes the stored
    member (the same function, its size limits checked first), so that the walk's key is the one verify
    computes. Refused: other formats, anything but 8-bit grey or BGR pixels, and a JPEG whose EXIF
    orientation would turn the decoded pixels away from `frame` (its annotations, its mask)."""
    kind = photo_kind(data, where, kinds)
    try:
        pixels = decode_image(data, kind, where)
    except ShardFormatError as exc:
        raise BadRecord("unreadable-image", str(exc)) from None
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        raise BadRecord("image-format", f"{where}: image with {pixels.shape[2]} channels; "
                        "only 8-bit grey or RGB images are stored as they are")  # fmt: skip
    if kind == "jpg" and b"Exif" in data[:65536] and exif_turns(data):
        raise BadRecord(
            "exif-orientation", f"{where}: EXIF orientation turns the decoded pixels away from {frame}"
        )
    return pixels, kind


def exif_turns(data: bytes) -> bool:
    """True when the file's EXIF orientation makes OpenCV turn or flip the pixels as it decodes them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.getexif().get(EXIF_ORIENTATION, 1) in TURNING
    except Exception:  # unreadable EXIF: OpenCV does not apply it either
        return False


@functools.cache
def keep_large_frees() -> bool:
    """Let glibc keep freed photo-sized arrays (up to 32 MiB each, 256 MiB in all) for the next photo.

    By default it maps every array above its mmap threshold afresh and unmaps it when freed: decoded
    1280x1024 images and masks then cost ~18 ms of system time per pair in page faults, a third of a
    walk on one core. Once per process; False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):
        return False
