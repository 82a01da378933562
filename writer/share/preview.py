"""`segshards preview`: a PNG (or JPEG) contact sheet of samples with masks overlaid in colour."""

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segshards.writer.errors import ConfigError, OutputError
from segshards.writer.format.images import decode_image, encode_png
from segshards.writer.format.manifest import read_manifest, shard_entries, split_names
from segshards.writer.format.palette import manifest_palette, overlay
from segshards.writer.format.tar_reader import iter_samples, open_shard
from segshards.writer.storage.atomic import atomic_write

CELL = 112


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


FORMATS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg"}  # output extension -> OpenCV encoder
JPEG_QUALITY = 90


def check_output(output: Path) -> str:
    """The encoder for `output`'s extension; ConfigError for one it cannot write."""
    encoder = FORMATS.get(output.suffix.lower())
    if encoder is None:
        raise ConfigError(
            f"-o {output}: cannot write {output.suffix or 'a file without an extension'}; use .png, .jpg or .jpeg"
        )
    return encoder


def check_request(manifest: dict[str, Any], folder: Path, split: str, count: int) -> list[dict[str, Any]]:
    """The shard entries to draw from; ConfigError for a count below 1, an unknown or an empty split."""
    if count < 1:
        raise ConfigError(f"--count {count}: must be at least 1")
    if split not in manifest["splits"]:
        raise ConfigError(f"--split {split!r}: not in {folder} (has {', '.join(split_names(manifest))})")
    entries = shard_entries(manifest, split)
    if not manifest["splits"][split]["count"]:
        non_empty = [s for s in split_names(manifest) if manifest["splits"][s]["count"]]
        raise ConfigError(
            f"--split {split}: holds no samples in {folder} (samples in: {', '.join(non_empty) or 'none'})"
        )
    return entries


def contact_sheet(folder: Path, *, split: str = "train", count: int = 64, columns: int = 8) -> np.ndarray:
    """BGR contact sheet of the first `count` samples of `split` (fewer when the split has fewer)."""
    manifest = read_manifest(folder)
    entries = check_request(manifest, folder, split, count)
    palette = manifest_palette(manifest)
    cells: list[np.ndarray] = []
    for entry in entries:
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


def encode_sheet(sheet: np.ndarray, encoder: str) -> bytes:
    """The sheet as PNG or JPEG bytes."""
    if encoder == ".png":
        return encode_png(sheet)
    ok, buffer = cv2.imencode(encoder, sheet, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OutputError(f"cannot encode the contact sheet as {encoder}")
    return buffer.tobytes()


def write_preview(folder: Path, output: Path, *, split: str, count: int) -> int:
    """Write the contact sheet of `folder` to `output` (PNG, or JPEG for .jpg/.jpeg); returns the samples
    drawn. Everything is checked before anything is drawn."""
    encoder = check_output(output)
    sheet = contact_sheet(folder, split=split, count=count)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)  # removed again if the write fails (see cli)
    except OSError as exc:
        raise OutputError(f"-o {output}: cannot create {output.parent} ({exc.strerror or exc})") from exc
    atomic_write(output, encode_sheet(sheet, encoder))
    return min(count, read_manifest(folder)["splits"][split]["count"])
