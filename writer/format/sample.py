"""One sample: what a recipe renders (`Rendered`), the members it is stored as, and what makes a stored
sample valid (`read_sample`), the one definition the writer, `verify` and the loaders share."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.images import canonical_json, decode_image, encode_png
from segshards.writer.format.keys import is_key, pixel_key
from segshards.writer.format.limits import DecodeLimits


@dataclass(frozen=True)
class Rendered:
    """One rendered sample: image (H, W[, 3]) uint8, mask (H, W) uint8 class indices, JSON metadata.

    `image_bytes`, when set, is stored as it is (e.g. an original JPEG) instead of a PNG of `image`.
    `bytes_key`, when set, is the pixel key of `image_bytes` that the recipe already knows: its walk
    decoded these very bytes (their file digest proves it), so the writer need not decode them again.
    """

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]
    image_ext: str = "png"
    image_bytes: bytes | None = None
    bytes_key: str | None = None


def sample_members(sample: Rendered, key: str | None = None) -> tuple[str, list[tuple[str, bytes]]]:
    """(key, [(member name, payload)]) of a rendered sample, members in sorted name order; `key`, when
    given, is the key of the image's pixels computed before (they are not hashed again)."""
    key = key or pixel_key(sample.image)
    image = sample.image_bytes if sample.image_bytes is not None else encode_png(sample.image)
    members = [
        (f"{key}.json", canonical_json(sample.meta)),
        (f"{key}.mask.png", encode_png(sample.mask)),
        (f"{key}.{sample.image_ext}", image),
    ]
    return key, sorted(members)


@dataclass(frozen=True)
class Layout:
    """The member names of a stored sample; `image` None accepts any one image member (shard URLs read
    without a schema)."""

    image: str | None = "png"
    mask: str = "mask.png"
    meta: str = "json"


@dataclass(frozen=True)
class StoredSample:
    """A stored sample that passed `read_sample`, decoded as OpenCV decodes it (the pixels its key hashes)."""

    key: str
    image_ext: str
    image: np.ndarray  # (H, W) grey, (H, W, 3) BGR or (H, W, 4) BGRA, uint8
    mask: np.ndarray  # (H, W) uint8 class indices
    meta: dict[str, Any]


def read_sample(
    sample: dict[str, Any],
    layout: Layout,
    where: str,
    *,
    limits: DecodeLimits | None = None,
    check_key: bool = True,
) -> StoredSample:
    """The one definition of a valid stored sample, shared by the writer, `verify` and the loaders.

    Rules, in order (the first broken one is a ShardFormatError naming `where:key`): the key is 32 hex
    digits; the members are exactly the image, the mask and the metadata; the image is an 8-bit PNG or
    JPEG (as its member name says) within `limits`, and a PNG's data inflates to exactly the size its
    header declares (`segshards.writer.format.png`); the mask is an 8-bit one-channel PNG of the image's
    height and width under the same rules; the metadata is a JSON object; with `check_key`, the key is the
    hash of the image's pixels.
    """
    key = str(sample["__key__"])
    at = f"{where}:{key}"
    if not is_key(key):
        raise ShardFormatError(f"{where}: member key {key!r} is not a 32-digit hex hash")
    image_ext = image_member(sample, layout, at)
    image = decode_image(sample[image_ext], image_ext, at, limits)
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ShardFormatError(f"{at}: image has {image.shape[2]} channels, expected 1, 3 or 4")
    mask = decode_image(sample[layout.mask], "png", at, limits)
    if mask.ndim != 2:
        raise ShardFormatError(f"{at}: mask has {mask.shape[2]} channels, expected one (class indices)")
    if mask.shape != image.shape[:2]:
        raise ShardFormatError(
            f"{at}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}"
        )
    meta = parse_meta(sample[layout.meta], at)
    if check_key and pixel_key(image) != key:
        raise ShardFormatError(f"{at}: key does not match the hash of its image pixels")
    return StoredSample(key, image_ext, image, mask, meta)


def image_member(sample: dict[str, Any], layout: Layout, where: str) -> str:
    """The image member's extension, once the sample holds exactly image, mask and metadata."""
    members = sorted(k for k in sample if not k.startswith("__"))
    others = [m for m in members if m not in (layout.mask, layout.meta)]
    if len(members) != 3 or len(others) != 1 or layout.image not in (None, others[0]):
        expected = f"{layout.image or 'an image'}, {layout.mask}, {layout.meta}"
        raise ShardFormatError(f"{where}: sample has members {members}, expected {expected}")
    return others[0]


def parse_meta(payload: Any, where: str) -> dict[str, Any]:
    """A sample's metadata member parsed: a JSON object."""
    try:
        meta = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ShardFormatError(f"{where}: invalid json metadata ({str(exc)[:80]})") from None
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}: json metadata is a {type(meta).__name__}, expected an object")
    return meta


def check_sample(sample: dict[str, Any], layout: Layout, where: str) -> Iterator[str]:
    """The problem with one sample (`read_sample`'s first broken rule), for reports that go on."""
    try:
        read_sample(sample, layout, where)
    except ShardFormatError as exc:
        yield str(exc)


def class_counts(mask: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count per value of a uint8 mask.

    cv2.calcHist is ~20x faster than np.bincount (which widens to int64 first) but counts in float32,
    exact only below 2**24 pixels: larger masks take the exact slow path.
    """
    if mask.size >= 1 << 24:
        return np.bincount(mask.ravel(), minlength=256)
    hist = cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256])
    return hist.ravel().astype(np.int64)
