"""`segshards preview`: a PNG contact sheet of samples with masks overlaid in colour."""

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from segshards.writer.atomic import atomic_write
from segshards.writer.encode import decode_image, encode_png
from segshards.writer.manifest import read_manifest, shard_entries
from segshards.writer.tarstream import iter_samples, open_shard

CELL = 112
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


def cell(sample: dict[str, Any], palette: np.ndarray, where: str) -> np.ndarray:
    """One contact-sheet cell: the overlaid sample scaled to CELL x CELL, with its circle if it has one."""
    image_ext = next(k for k in sample if k not in ("__key__", "mask.png", "json"))
    image = decode_image(sample[image_ext], image_ext, where)
    mask = decode_image(sample["mask.png"], "png", where)
    meta = json.loads(sample["json"])
    scale = CELL / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    view = cv2.resize(overlay(image, mask, palette), size, interpolation=cv2.INTER_NEAREST)
    if "circle" in meta:
        c = meta["circle"]
        centre = (round((c["cx"] + 0.5) * scale), round((c["cy"] + 0.5) * scale))
        cv2.circle(view, centre, round(c["r"] * scale), (0, 255, 255), 1, cv2.LINE_AA)
    if "label" in meta:
        cv2.putText(view, str(meta["label"]), (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    canvas = np.zeros((CELL, CELL, 3), np.uint8)
    canvas[: view.shape[0], : view.shape[1]] = view
    return canvas


def contact_sheet(folder: Path, *, split: str = "train", count: int = 64, columns: int = 8) -> np.ndarray:
    """BGR contact sheet of the first `count` samples of `split`."""
    manifest = read_manifest(folder)
    palette = manifest_palette(manifest)
    cells: list[np.ndarray] = []
    for entry in shard_entries(manifest, split):
        path = folder / entry["name"]
        with open_shard(path) as f:
            for sample in iter_samples(f, str(path), max_bytes=entry["bytes"]):
                cells.append(cell(sample, palette, str(path)))
                if len(cells) == count:
                    break
        if len(cells) == count:
            break
    rows = max(1, -(-len(cells) // columns))
    sheet = np.full((rows * CELL, columns * CELL, 3), 32, np.uint8)
    for i, c in enumerate(cells):
        r, k = divmod(i, columns)
        sheet[r * CELL : (r + 1) * CELL, k * CELL : (k + 1) * CELL] = c
    return sheet


def write_preview(folder: Path, output: Path, *, split: str, count: int) -> None:
    """Write the contact sheet of `folder` to `output` (PNG)."""
    atomic_write(output, encode_png(contact_sheet(folder, split=split, count=count)))
