"""Class colours: the VOC colour map recorded in photo sets' manifests, the default colours of previews and
plots (ignore, 255, is white), and the overlay of a mask on its image."""

from typing import Any

import cv2
import numpy as np


def voc_palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map (RGB) for class ids 0..n-1: deterministic and well separated."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append([r, g, b])
    return colours


# Distinct colours (BGR) for classes 1..10; other classes get seeded colours, 255 (ignore) is white.
BASE_PALETTE = [
    (0, 0, 0),
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
]


def default_palette() -> np.ndarray:
    """(256, 3) uint8 BGR colours for class indices."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 256, size=(256, 3), dtype=np.uint8)
    palette[: len(BASE_PALETTE)] = BASE_PALETTE
    palette[255] = (255, 255, 255)
    return palette


def manifest_palette(manifest: dict[str, Any]) -> np.ndarray:
    """The set's own palette (RGB triples under source.palette) when it has one, else the default."""
    palette = default_palette()
    for i, rgb in enumerate(manifest.get("source", {}).get("palette", [])[:256]):
        palette[i] = rgb[::-1]
    return palette


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image (gray or BGR) with non-zero mask classes tinted in their palette colour."""
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    colour = palette[mask]
    tinted = (bgr * (1 - alpha) + colour * alpha).astype(np.uint8)
    return np.where((mask > 0)[..., None], tinted, bgr)
