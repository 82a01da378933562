"""`segshards preview`: a PNG (or JPEG) contact sheet of samples, each shown as image | mask | overlay in a
framed tile, with a legend naming the class of every colour drawn; of a set in a folder, on `s3://` or
served over `http(s)://` (shards streamed: only the samples drawn are read)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from segshards.writer.errors import ConfigError, OutputError
from segshards.writer.format.images import decode_image, encode_png
from segshards.writer.format.manifest import shard_entries, split_names
from segshards.writer.format.palette import manifest_palette, overlay
from segshards.writer.format.schema import schema_of
from segshards.writer.format.tar_reader import iter_samples, open_shard
from segshards.writer.storage.atomic import atomic_write
from segshards.writer.storage.urls import join_url, local_path, open_url, read_set_manifest, scheme_of

SIZE = 128  # default pixels per panel (each sample: three panels side by side)
SIZES = (16, 1024)  # the panel sizes --size accepts
COLUMNS = 4  # tiles per row
GAP, MARGIN = 2, 8  # pixels between a tile's panels, and between tiles
BACKGROUND, PANEL, FRAME, TEXT = (24, 24, 24), (48, 48, 48), (150, 150, 150), (235, 235, 235)
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.45
LINE = 20  # legend line height
FORMATS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg"}  # output extension -> OpenCV encoder
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Drawn:
    """One sample as the sheet draws it: BGR image, class mask, and its JSON."""

    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]


def decoded(sample: dict[str, Any], where: str) -> Drawn:
    """The sample's image (as BGR), mask and JSON."""
    image_ext = next(k for k in sample if k not in ("__key__", "mask.png", "json"))
    image = decode_image(sample[image_ext], image_ext, where)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    mask = decode_image(sample["mask.png"], "png", where)
    return Drawn(np.ascontiguousarray(image), mask, json.loads(sample["json"]))


def fitted(view: np.ndarray, size: int, *, smooth: bool) -> tuple[np.ndarray, float]:
    """`view` scaled to fit `size` x `size`, centred on a panel; returns the panel and the scale. Masks and
    upscaled images use nearest neighbour (class ids must never blend; small digits stay crisp)."""
    scale = size / max(view.shape[:2])
    h, w = max(round(view.shape[0] * scale), 1), max(round(view.shape[1] * scale), 1)
    method = cv2.INTER_AREA if smooth and scale < 1 else cv2.INTER_NEAREST
    panel = np.full((size, size, 3), PANEL, np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    panel[top : top + h, left : left + w] = cv2.resize(view, (w, h), interpolation=method)
    return panel, scale


def tile(drawn: Drawn, palette: np.ndarray, size: int) -> np.ndarray:
    """One framed tile: image | mask in class colours | overlay (with the sample's circle, if any)."""
    image, _ = fitted(drawn.image, size, smooth=True)
    mask, _ = fitted(palette[drawn.mask], size, smooth=False)
    tinted, scale = fitted(overlay(drawn.image, drawn.mask, palette), size, smooth=False)
    meta = drawn.meta
    if isinstance(meta.get("circle"), dict):
        h, w = drawn.mask.shape[:2]
        top, left = (size - round(h * scale)) // 2, (size - round(w * scale)) // 2
        c = meta["circle"]
        centre = (left + round((c["cx"] + 0.5) * scale), top + round((c["cy"] + 0.5) * scale))
        cv2.circle(tinted, centre, round(c["r"] * scale), (0, 255, 255), 1, cv2.LINE_AA)
    if "label" in meta:
        cv2.putText(image, str(meta["label"]), (3, 14), FONT, FONT_SCALE, TEXT, 1, cv2.LINE_AA)
    gap = np.full((size, GAP, 3), BACKGROUND, np.uint8)
    body = np.concatenate([image, gap, mask, gap, tinted], axis=1)
    return cv2.copyMakeBorder(body, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=FRAME)


def legend_labels(classes: list[int], names: tuple[str, ...], ignore: int | None) -> list[str]:
    """The legend's text for each class id drawn: `name (id)`, from the set's schema."""
    return [
        f"{'ignore' if c == ignore else names[c] if c < len(names) else 'unnamed'} ({c})" for c in classes
    ]


def legend(
    classes: list[int], names: tuple[str, ...], ignore: int | None, palette: np.ndarray, width: int
) -> np.ndarray:
    """Rows of colour swatches, each with its class name and id, wrapped to `width`."""
    entries = list(zip(classes, legend_labels(classes, names, ignore), strict=True))
    lines: list[list[tuple[int, str, int]]] = [[]]
    x = MARGIN
    for c, text in entries:
        span = LINE + cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0] + 14
        if lines[-1] and x + span > width - MARGIN:
            lines.append([])
            x = MARGIN
        lines[-1].append((c, text, x))
        x += span
    out = np.full((len(lines) * LINE + MARGIN, width, 3), BACKGROUND, np.uint8)
    for row, line in enumerate(lines):
        y = row * LINE
        for c, text, x0 in line:
            cv2.rectangle(out, (x0, y + 4), (x0 + 12, y + 16), tuple(int(v) for v in palette[c]), -1)
            cv2.rectangle(out, (x0, y + 4), (x0 + 12, y + 16), FRAME, 1)
            cv2.putText(out, text, (x0 + 18, y + 15), FONT, FONT_SCALE, TEXT, 1, cv2.LINE_AA)
    return out


def check_output(output: Path) -> str:
    """The encoder for `output`'s extension; ConfigError for one it cannot write."""
    encoder = FORMATS.get(output.suffix.lower())
    if encoder is None:
        raise ConfigError(
            f"-o {output}: cannot write {output.suffix or 'a file without an extension'}; use .png, .jpg or .jpeg"
        )
    return encoder


def check_request(
    manifest: dict[str, Any], folder: str, split: str, count: int, size: int = SIZE
) -> list[dict[str, Any]]:
    """The shard entries to draw from; ConfigError for a count below 1, a size out of range, an unknown or
    an empty split."""
    if count < 1:
        raise ConfigError(f"--count {count}: must be at least 1")
    if not SIZES[0] <= size <= SIZES[1]:
        raise ConfigError(f"--size {size}: must be {SIZES[0]} to {SIZES[1]} pixels")
    if split not in manifest["splits"]:
        raise ConfigError(f"--split {split!r}: not in {folder} (has {', '.join(split_names(manifest))})")
    entries = shard_entries(manifest, split)
    if not manifest["splits"][split]["count"]:
        non_empty = [s for s in split_names(manifest) if manifest["splits"][s]["count"]]
        raise ConfigError(
            f"--split {split}: holds no samples in {folder} (samples in: {', '.join(non_empty) or 'none'})"
        )
    return entries


def open_stream(url: str) -> IO[bytes]:
    """A shard for streaming: a local file as `verify` opens one (regular files only), else by URL."""
    return open_shard(local_path(url)) if scheme_of(url) == "file" else open_url(url)


def first_samples(folder: str, entries: list[dict[str, Any]], count: int) -> Iterator[Drawn]:
    """The first `count` samples of the shards, read as a stream (a photo shard is never read whole)."""
    drawn = 0
    for entry in entries:
        url = join_url(folder, entry["name"])
        with open_stream(url) as f:
            for sample in iter_samples(f, url, max_bytes=entry["bytes"]):
                yield decoded(sample, url)
                drawn += 1
                if drawn == count:
                    return


def contact_sheet(
    location: str | Path, *, split: str = "train", count: int = 64, size: int = SIZE
) -> np.ndarray:
    """BGR contact sheet of the first `count` samples of `split` (fewer when the split has fewer) of the set
    at `location` (a folder, `s3://` or `http(s)://`): tiles of image | mask | overlay, COLUMNS to a row,
    and a legend of the classes drawn."""
    return drawn_sheet(location, split=split, count=count, size=size)[0]


def drawn_sheet(location: str | Path, *, split: str, count: int, size: int) -> tuple[np.ndarray, int]:
    """`contact_sheet` and the number of samples it draws."""
    folder, manifest_url, manifest = read_set_manifest(location)
    entries = check_request(manifest, folder, split, count, size)
    palette = manifest_palette(manifest)
    schema = schema_of(manifest, manifest_url)
    samples = list(first_samples(folder, entries, count))
    tiles = [tile(d, palette, size) for d in samples]
    th, tw = tiles[0].shape[:2]
    columns = min(COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = np.full(
        (MARGIN + rows * (th + MARGIN), MARGIN + columns * (tw + MARGIN), 3), BACKGROUND, np.uint8
    )
    for i, t in enumerate(tiles):
        r, k = divmod(i, columns)
        y, x = MARGIN + r * (th + MARGIN), MARGIN + k * (tw + MARGIN)
        sheet[y : y + th, x : x + tw] = t
    title = f"{split}, {len(samples)} sample{'s' * (len(samples) != 1)}: image | mask | overlay"
    width = max(sheet.shape[1], cv2.getTextSize(title, FONT, FONT_SCALE, 1)[0][0] + 2 * MARGIN)
    sheet = cv2.copyMakeBorder(sheet, 0, 0, 0, width - sheet.shape[1], cv2.BORDER_CONSTANT, value=BACKGROUND)
    present = sorted(set(np.unique(np.concatenate([d.mask.ravel() for d in samples])).tolist()))
    key = legend(present, schema.classes, schema.ignore, palette, width)
    return np.concatenate([caption(title, width), sheet, key], axis=0), len(samples)


def caption(text: str, width: int) -> np.ndarray:
    """A line of text above the sheet, saying what its panels are."""
    band = np.full((LINE + MARGIN // 2, width, 3), BACKGROUND, np.uint8)
    cv2.putText(band, text, (MARGIN, LINE - 2), FONT, FONT_SCALE, TEXT, 1, cv2.LINE_AA)
    return band


def encode_sheet(sheet: np.ndarray, encoder: str) -> bytes:
    """The sheet as PNG or JPEG bytes."""
    if encoder == ".png":
        return encode_png(sheet)
    ok, buffer = cv2.imencode(encoder, sheet, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OutputError(f"cannot encode the contact sheet as {encoder}")
    return buffer.tobytes()


def write_preview(location: str | Path, output: Path, *, split: str, count: int, size: int = SIZE) -> int:
    """Write the contact sheet of the set at `location` to `output` (PNG, or JPEG for .jpg/.jpeg); returns
    the samples drawn. Everything is checked before anything is drawn."""
    encoder = check_output(output)
    sheet, drawn = drawn_sheet(location, split=split, count=count, size=size)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)  # removed again if the write fails (see cli)
    except OSError as exc:
        raise OutputError(f"-o {output}: cannot create {output.parent} ({exc.strerror or exc})") from exc
    atomic_write(output, encode_sheet(sheet, encoder))
    return drawn
