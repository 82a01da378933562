"""Seeded training augmentation of photographs, fused with decoding: torchvision's segmentation reference
transform (random resize of the short side, horizontal flip, crop padded with 0 / 255) turned into a window
of the decoded JPEG: only the scale the crop needs is decoded, and only the window is resized
(`segshards.loaders.photo.paste_augmented`).

Every sample's parameters come from a generator seeded by (seed, epoch, sample key): the same batches, pixel
for pixel, whatever the worker count or the order samples reach a worker, and after a resume.
"""

import hashlib
import math
import struct
from dataclasses import dataclass

from segshards.writer.errors import ConfigError
from segshards.writer.format.schema import IGNORE


@dataclass(frozen=True)
class Augment:
    """The reference train transform at the loader's `size` (H, W): the short side resized to a whole
    number of pixels drawn uniformly in [scale[0], scale[1]] x min(H, W), a horizontal flip with
    probability `flip`, a random (H, W) crop; where the resized image is smaller, the image is padded with
    `image_fill` and the mask with `mask_fill` (right and bottom, as torchvision pads)."""

    scale: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    image_fill: int = 0
    mask_fill: int = IGNORE

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0 < low <= high:
            raise ConfigError(f"Augment scale {self.scale}: expected 0 < low <= high")
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"Augment flip {self.flip}: expected a probability in [0, 1]")
        for name in ("image_fill", "mask_fill"):
            if not 0 <= getattr(self, name) <= 255:
                raise ConfigError(f"Augment {name} {getattr(self, name)}: expected 0..255")


@dataclass(frozen=True)
class Draw:
    """One sample's parameters: the resized size (rh, rw), the flip, the crop's origin in resized pixels."""

    rh: int
    rw: int
    flip: bool
    top: int
    left: int


def draw(
    augment: Augment, seed: int, epoch: int, key: str, shape: tuple[int, int], size: tuple[int, int]
) -> Draw:
    """The parameters of the sample `key` of an (h, w) image in `epoch`: four 64-bit words of a hash of
    (seed, epoch, key), the same in every process (building a numpy generator per sample cost ~0.1 ms)."""
    text = f"augment:{seed}:{epoch}:{key}".encode()
    words = struct.unpack("<4Q", hashlib.blake2b(text, digest_size=32).digest())
    (h, w), (oh, ow) = shape, size
    base = min(oh, ow)
    short = pick(words[0], max(1, int(augment.scale[0] * base)), max(1, int(augment.scale[1] * base)))
    factor = short / min(h, w)
    rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
    flip = words[1] < augment.flip * 2**64
    top = pick(words[2], 0, max(0, rh - oh))
    left = pick(words[3], 0, max(0, rw - ow))
    return Draw(rh, rw, flip, top, left)


def pick(word: int, low: int, high: int) -> int:
    """An integer in [low, high] from a uniform 64-bit word (bias under (high - low + 1) / 2**64)."""
    return low + (word * (high - low + 1) >> 64)


# How far back a window may start for its first pixel to fall on a whole output pixel: the window is
# resized at the reference's exact scale, so its start must sit on the output grid. The best start within
# 16 decoded pixels leaves 0.03 output pixel of shift on average and resizes ~6% more pixels than the kept
# ones; on coco-tiny-derived photographs the fused pixels then differ from resize-then-crop by 0.6 levels
# on average (2.4 with the start rounded to a whole decoded pixel, which shifts by up to half of one).
ALIGN_SEARCH = 16


@dataclass(frozen=True)
class Window:
    """One axis of the window cut from the decoded image: decoded pixels [start, stop), resized by `scale`
    (output pixels per decoded pixel), of which the kept output pixels begin at `offset`."""

    start: int
    stop: int
    scale: float
    offset: int


def window(first: int, count: int, resized: int, full: int, denominator: int) -> Window:
    """The decoded pixels that resized pixels [first, first + count) come from, along one axis of an
    image of `full` pixels resized to `resized` and decoded at 1/denominator.

    Resized pixel c samples decoded coordinate (c + 0.5) / scale - 0.5 (pixel centres; libjpeg-turbo's
    pixel u covers source pixels [u k, u k + k)); a window from `start` resized at `scale` samples
    start + (j + 0.5) / scale - 0.5, so c is its pixel j = c - start * scale: the start is picked among
    the last ALIGN_SEARCH decoded pixels before the first sample to make start * scale nearest a whole
    number, and the stop one past the last sample's right neighbour (bilinear reads
    two)."""
    scale = resized * denominator / full
    size = -(-full // denominator)
    last = min(size - 1, max(0, math.floor((first + 0.5) / scale - 0.5)))
    start, best = last, 1.0
    for x in range(last, max(0, last - ALIGN_SEARCH) - 1, -1):  # nearest first: ties keep the nearest
        off = abs(x * scale - round(x * scale))
        if off < best:
            start, best = x, off
    stop = min(size, math.floor((first + count - 0.5) / scale - 0.5) + 3)
    return Window(start, stop, scale, round(first - start * scale))


def kept(d: Draw, size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the output that the resized image covers; the rest is padding."""
    return min(size[0], d.rh - d.top), min(size[1], d.rw - d.left)


@dataclass(frozen=True)
class Augmenting:
    """An `Augment` as one epoch of one loader applies it."""

    augment: Augment
    seed: int
    epoch: int


def decode_denominator(d: Draw, shape: tuple[int, int]) -> int:
    """The largest libjpeg-turbo reduction (8, 4, 2, else 1) whose pixels are still no coarser than the
    output's: the crop is resampled down (or not at all), never up from a smaller decode."""
    factor = max(d.rh / shape[0], d.rw / shape[1])
    return next((k for k in (8, 4, 2) if factor * k <= 1.0), 1)
