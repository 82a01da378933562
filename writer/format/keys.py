"""Content hashing: sample keys (hex xxh3-128 of the rendered image's pixels), file digests, and the
dedup rule `accept` that keeps the first sample of each key."""

import hashlib
import re
from pathlib import Path

import numpy as np
import xxhash

PIXEL_HASH_OF = (
    "image pixels as OpenCV decodes them: uint8, C order, (H, W) grey or (H, W, 3) in BGR channel order"
)
HASH_ALGORITHM = "xxh3_128"
KEY_LENGTH = 32
KEY = re.compile(f"[0-9a-f]{{{KEY_LENGTH}}}")  # a regex: ~10x faster than testing each character (per sample)


def pixel_key(image: np.ndarray) -> str:
    """Key of an image: hex xxh3-128 of its C-ordered uint8 pixel bytes."""
    if image.dtype != np.uint8:
        raise TypeError(f"pixel_key expects uint8 pixels, got {image.dtype}")
    return xxhash.xxh3_128_hexdigest(np.ascontiguousarray(image).data)


def pixel_digest(image: np.ndarray) -> bytes:
    """The 16-byte digest behind `pixel_key`, for compact dedup indexes."""
    return xxhash.xxh3_128_digest(np.ascontiguousarray(image).data)


def is_key(text: str) -> bool:
    """True when `text` looks like a sample key (32 lowercase hex digits)."""
    return KEY.fullmatch(text) is not None


def file_digests(
    path: Path, algorithms: tuple[str, ...] = ("md5", "sha256"), chunk: int = 1 << 20
) -> list[str]:
    """Hex digests of a file's bytes under several algorithms, in one read."""
    hashes = [hashlib.new(a) for a in algorithms]
    with open(path, "rb") as f:
        while block := f.read(chunk):
            for h in hashes:
                h.update(block)
    return [h.hexdigest() for h in hashes]


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (`sha256` or `md5`), read in chunks."""
    return file_digests(path, (algorithm,), chunk)[0]


def accept(digests: list[bytes], seen: set[bytes], need: int | None) -> tuple[list[int], int]:
    """Indices of the digests new to `seen` (added to it), at most `need`; and how many were rejected.

    Stops at the `need`-th acceptance: digests after it are neither examined nor counted.
    """
    accepted: list[int] = []
    rejected = 0
    for i, digest in enumerate(digests):
        if need is not None and len(accepted) == need:
            break
        if digest in seen:
            rejected += 1
            continue
        seen.add(digest)
        accepted.append(i)
    return accepted, rejected
