"""Class colours: the VOC colour map recorded in photo sets' manifests (never changed: it is part of the
format), the distinct colours previews and plots draw classes in, and the overlay of a mask on its image."""

import functools
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


# What figures paint ignored and padding pixels (255) in, as RGB; no class colour comes near it.
IGNORE_GREY = (150, 150, 150)
MIN_DELTA_E = 25.0  # CIE94 difference every class colour keeps from IGNORE_GREY, black and white
LEVELS = 12  # candidate colours: a 12 x 12 x 12 grid of the RGB cube


SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) sRGB 0..255 -> (N, 3) CIELAB (L in 0..100, D65), in numpy (cv2's float conversion costs
    half a second the first time it runs)."""
    c = np.asarray(rgb, np.float64).reshape(-1, 3) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ SRGB_TO_XYZ.T / D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def delta_e94(one: np.ndarray, many: np.ndarray) -> np.ndarray:
    """CIE94 colour differences between one CIELAB colour and (N, 3) others (chroma weighted by their
    geometric mean, so it is symmetric): unlike plain Lab distance, two saturated blues count as close."""
    d_lightness = one[0] - many[:, 0]
    c_one, c_many = np.hypot(one[1], one[2]), np.hypot(many[:, 1], many[:, 2])
    d_chroma = c_one - c_many
    d_hue_sq = np.maximum((one[1] - many[:, 1]) ** 2 + (one[2] - many[:, 2]) ** 2 - d_chroma**2, 0.0)
    c = np.sqrt(c_one * c_many)
    return np.sqrt(d_lightness**2 + (d_chroma / (1 + 0.045 * c)) ** 2 + d_hue_sq / (1 + 0.015 * c) ** 2)


@functools.cache
def distinct_colours(n: int = 254) -> tuple[tuple[int, int, int], ...]:
    """`n` RGB colours, each as far (CIE94) from those before it as the candidates allow.

    Greedy farthest-point picks from a grid of saturated colours of middle lightness: overlays on photos
    stay readable, the first dozen differ at a glance, and none comes near black (background, never
    tinted), white or the ignore grey.
    """
    levels = np.linspace(0, 255, LEVELS).round()
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    colours = lab(grid)
    anchors = lab(np.array([(0, 0, 0), IGNORE_GREY, (255, 255, 255)]))
    nearest = np.min([delta_e94(anchor, colours) for anchor in anchors], axis=0)
    chroma = np.hypot(colours[:, 1], colours[:, 2])
    usable = (chroma >= 35) & (colours[:, 0] >= 30) & (colours[:, 0] <= 90) & (nearest >= MIN_DELTA_E)
    grid, colours, nearest = grid[usable], colours[usable], nearest[usable]
    picked = []
    for _ in range(n):
        best = int(np.argmax(nearest))
        picked.append(best)
        nearest = np.minimum(nearest, delta_e94(colours[best], colours))
    return tuple((int(r), int(g), int(b)) for r, g, b in grid[picked])


def default_palette() -> np.ndarray:
    """(256, 3) uint8 BGR colours for class indices: 0 black (background, left untinted by `overlay`),
    1..254 `distinct_colours`, 255 (ignore) white."""
    palette = np.zeros((256, 3), np.uint8)
    palette[1:255] = np.array(distinct_colours(254), np.uint8)[:, ::-1]
    palette[255] = (255, 255, 255)
    return palette


def manifest_palette(manifest: dict[str, Any]) -> np.ndarray:
    """The colours to draw a set's classes in: `default_palette`, except the colours a set's source chose
    itself (a CVAT labelmap, recorded under source.palette) that are not near the ignore grey.

    Colours a recipe recorded from the VOC colour map are not kept: it gives many classes nearly the same
    dark red or olive, and grey (class 7 and others) close to the ignore grey.
    """
    palette = default_palette()
    recorded = manifest.get("source", {}).get("palette", [])[:255]
    if not recorded:
        return palette
    voc = voc_palette(len(recorded))
    grey = lab(np.array([IGNORE_GREY]))[0]
    for i, rgb in enumerate(recorded):
        if i and list(rgb) != voc[i] and delta_e94(grey, lab(np.array([rgb])))[0] >= MIN_DELTA_E:
            palette[i] = rgb[::-1]
    return palette


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image (gray or BGR) with non-zero mask classes tinted in their palette colour."""
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    colour = palette[mask]
    tinted = (bgr * (1 - alpha) + colour * alpha).astype(np.uint8)
    return np.where((mask > 0)[..., None], tinted, bgr)
