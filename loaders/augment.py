"""Seeded training augmentation of photographs, fused with decoding: torchvision's segmentation reference
transform (random resize of the short side, horizontal flip, crop padded with 0 / 255) computed as one
affine map from each output pixel back to the decoded JPEG, so only the scale the crop needs is decoded and
only the kept pixels are resampled.

Every sample's parameters come from a generator seeded by (seed, epoch, sample key): the same batches, pixel
for pixel, whatever the worker count or the order samples reach a worker, and after a resume.
"""

from dataclasses import dataclass

import cv2
import numpy as np

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
    """The parameters of the sample `key` (32 hex digits) of an (h, w) image in `epoch`."""
    rng = np.random.default_rng([seed, epoch, int(key[:16], 16), int(key[16:32], 16)])
    (h, w), (oh, ow) = shape, size
    base = min(oh, ow)
    short = int(rng.integers(max(1, int(augment.scale[0] * base)), max(1, int(augment.scale[1] * base)) + 1))
    factor = short / min(h, w)
    rh, rw = max(1, round(h * factor)), max(1, round(w * factor))
    flip = bool(rng.random() < augment.flip)
    top = int(rng.integers(0, max(0, rh - oh) + 1))
    left = int(rng.integers(0, max(0, rw - ow) + 1))
    return Draw(rh, rw, flip, top, left)


def source_map(d: Draw, shape: tuple[int, int], denominator: int) -> np.ndarray:
    """The 2x3 matrix taking an output pixel (x, y) to its place in the image decoded at 1/denominator of
    `shape`: crop offset, flip, then resize, on pixel centres (libjpeg-turbo's scaled pixel u covers source
    pixels [u k, u k + k))."""
    h, w = shape
    sx, sy = w / d.rw / denominator, h / d.rh / denominator
    # Output column x is resized column left + x, or rw - 1 - (left + x) once flipped.
    step, start = (-sx, (d.rw - d.left - 0.5) * sx) if d.flip else (sx, (d.left + 0.5) * sx)
    return np.array([[step, 0.0, start - 0.5], [0.0, sy, (d.top + 0.5) * sy - 0.5]], np.float64)


def kept(d: Draw, size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the output that the resized image covers; the rest is padding."""
    return min(size[0], d.rh - d.top), min(size[1], d.rw - d.left)


@dataclass(frozen=True)
class Augmenting:
    """An `Augment` as one epoch of one loader applies it."""

    augment: Augment
    seed: int
    epoch: int


def paste_augmented(
    image: np.ndarray,
    mask: np.ndarray,
    out_image: np.ndarray,
    out_mask: np.ndarray,
    *,
    d: Draw,
    denominator: int,
    augment: Augment,
) -> None:
    """Resample BGR `image` (decoded at 1/denominator) and `mask` (full size) into `out_image` (3, H, W)
    RGB and `out_mask` (H, W) as `d` says: the image bilinear (edges replicated, never blended with the
    fill), the mask nearest-neighbour (class ids kept); padding where the resized image ends."""
    shape = mask.shape
    kh, kw = kept(d, out_mask.shape)
    flags = cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(
        image, source_map(d, shape, denominator), (kw, kh), flags=cv2.INTER_LINEAR | flags,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    out_image.fill(augment.image_fill)
    slot = out_image[:, :kh, :kw]
    cv2.split(warped, [slot[2], slot[1], slot[0]])
    out_mask.fill(augment.mask_fill)
    cv2.warpAffine(
        mask, source_map(d, shape, 1), (kw, kh), dst=out_mask[:kh, :kw], flags=cv2.INTER_NEAREST | flags,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def decode_denominator(d: Draw, shape: tuple[int, int]) -> int:
    """The largest libjpeg-turbo reduction (8, 4, 2, else 1) whose pixels are still no coarser than the
    output's: the crop is resampled down (or not at all), never up from a smaller decode."""
    factor = max(d.rh / shape[0], d.rw / shape[1])
    return next((k for k in (8, 4, 2) if factor * k <= 1.0), 1)
