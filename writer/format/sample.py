"""One sample: what a recipe renders (`Rendered`), the members it is stored as, and what makes a stored
sample valid (`check_sample`), the one rule the writer, `verify` and the loaders share."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from segshards.writer.errors import SegshardsError
from segshards.writer.format.images import canonical_json, decode_image, encode_png
from segshards.writer.format.keys import is_key, pixel_key


@dataclass(frozen=True)
class Rendered:
    """One rendered sample: image (H, W[, 3]) uint8, mask (H, W) uint8 class indices, JSON metadata.

    `image_bytes`, when set, is stored as it is (e.g. an original JPEG) instead of a PNG of `image`.
    """

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]
    image_ext: str = "png"
    image_bytes: bytes | None = None


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


def check_sample(sample: dict[str, Any], layout: dict[str, str], where: str) -> Iterator[str]:
    """Problems with one sample: missing or extra members, a key that is not the image's pixel hash."""
    key = str(sample["__key__"])
    exts = {k for k in sample if k != "__key__"}
    expected = {layout["mask"], layout["meta"]}
    image_ext = next((e for e in exts - expected), None)
    if not is_key(key):
        yield f"{where}: member key {key!r} is not a 32-digit hex hash"
    if not expected <= exts or image_ext is None or len(exts) != 3:
        yield f"{where}: sample {key} has members {sorted(exts)}, expected image, {layout['mask']}, {layout['meta']}"
        return
    try:
        image = decode_image(sample[image_ext], image_ext, f"{where}:{key}")
    except SegshardsError as exc:
        yield str(exc)
        return
    if pixel_key(image) != key:
        yield f"{where}: sample {key} does not match the hash of its image pixels"


def class_counts(mask: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count per value of a uint8 mask.

    cv2.calcHist is ~20x faster than np.bincount (which widens to int64 first) but counts in float32,
    exact only below 2**24 pixels: larger masks take the exact slow path.
    """
    if mask.size >= 1 << 24:
        return np.bincount(mask.ravel(), minlength=256)
    hist = cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256])
    return hist.ravel().astype(np.int64)
