"""Photographs with known near-duplicate groups, derived from the coco-tiny photographs, for measuring the
audit: re-encodes at several JPEG qualities, resizes (0.5-2x), crops of up to 10% and pasted labels and
logos of each photograph, and distinct photographs (3x3 tiles of each, enlarged).

coco-tiny holds one near-duplicate pair of its own (000000318219 and 000000554625: the same scene, shifted
by more than a 10% crop, 16 bits apart): `EXCLUDED` leaves the second out, so that every other pair is
known to be distinct.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SOURCE_ENV = "SEGSHARDS_COCO_TINY"
EXCLUDED = ("000000554625",)
Image = np.ndarray


def coco_tiny_images() -> Path | None:
    """$SEGSHARDS_COCO_TINY/images, else the first `shared/data/coco-tiny/images` beside the repository."""
    if os.environ.get(SOURCE_ENV):
        return Path(os.environ[SOURCE_ENV]) / "images"
    root = Path(__file__).resolve().parents[1]
    found = (p / "shared" / "data" / "coco-tiny" / "images" for p in root.parents)
    return next((p for p in found if p.is_dir()), None)


def jpeg(image: Image, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def resized(image: Image, scale: float) -> Image:
    h, w = image.shape[:2]
    inter = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=inter)


def cropped(image: Image, left: float, top: float, right: float, bottom: float) -> Image:
    """The image less these fractions of its width (left, right) and height (top, bottom)."""
    h, w = image.shape[:2]
    return image[round(top * h) : h - round(bottom * h), round(left * w) : w - round(right * w)]


def labelled(image: Image, corner: str, width: float, seed: int) -> Image:
    """A filled box with white text pasted in a corner ('tl', 'tr', 'bl', 'br'), `width` of the image wide."""
    out = image.copy()
    h, w = out.shape[:2]
    bw, bh = int(w * width), int(h * width * 0.4)
    x = 8 if corner[1] == "l" else w - bw - 8
    y = 8 if corner[0] == "t" else h - bh - 8
    colour = tuple(int(c) for c in np.random.default_rng(seed).integers(0, 256, 3))
    cv2.rectangle(out, (x, y), (x + bw, y + bh), colour, -1)
    scale, thick = bh / 40, max(1, bh // 15)
    cv2.putText(
        out, "SAMPLE(c)", (x + 4, y + bh * 3 // 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick
    )
    return out


def logo(image: Image, size: float = 0.12) -> Image:
    """A red and white disc pasted in the top right corner, `size` of the short side across."""
    out = image.copy()
    h, w = out.shape[:2]
    s = int(min(h, w) * size)
    cv2.circle(out, (w - s, s), s // 2, (0, 0, 255), -1)
    cv2.circle(out, (w - s, s), s // 4, (255, 255, 255), -1)
    return out


# Each kind of copy: (name, how it is made from the original pixels) -> JPEG bytes.
Variant = Callable[[Image], bytes]
KINDS: dict[str, list[Variant]] = {
    "reencode": [lambda i, q=q: jpeg(i, q) for q in (90, 70, 50, 30)],
    "resize": [lambda i, s=s: jpeg(resized(i, s)) for s in (0.5, 0.7, 1.5, 2.0)],
    "crop": [
        lambda i, c=c: jpeg(cropped(i, *c))
        for c in (
            (0.05, 0.05, 0.05, 0.05),
            (0.1, 0, 0, 0),
            (0, 0.1, 0, 0),
            (0, 0, 0.1, 0.1),
            (0.1, 0.1, 0, 0),
            (0.05, 0, 0.05, 0.1),
        )
    ],
    "label": [
        lambda i: jpeg(labelled(i, "br", 0.2, 0)),
        lambda i: jpeg(labelled(i, "tl", 0.25, 1)),
        lambda i: jpeg(logo(i)),
        lambda i: jpeg(labelled(i, "bl", 0.3, 2), 80),
    ],
}


@dataclass(frozen=True)
class Derived:
    """One derived photograph: its name, its group (the photograph it comes from; distinct ones have
    their own), how it was made ('original', a kind of KINDS, or 'distinct'), and its JPEG bytes."""

    name: str
    group: str
    kind: str
    data: bytes


def originals(folder: Path) -> list[tuple[str, Image]]:
    return [(p.stem, cv2.imread(str(p))) for p in sorted(folder.glob("*.jpg")) if p.stem not in EXCLUDED]


def derived(folder: Path, *, scale: float = 1.0, tiles: bool = True) -> Iterator[Derived]:
    """Each original (scaled by `scale` first) and its copies of every kind, then the distinct tiles."""
    photos = [(name, resized(image, scale) if scale != 1 else image) for name, image in originals(folder)]
    for name, image in photos:
        yield Derived(name, name, "original", jpeg(image, 95))
        for kind, makers in KINDS.items():
            for i, make in enumerate(makers):
                yield Derived(f"{name}-{kind}{i}", name, kind, make(image))
    if not tiles:
        return
    for name, image in photos:
        h, w = image.shape[:2]
        for r in range(3):
            for c in range(3):
                tile = image[r * h // 3 : (r + 1) * h // 3, c * w // 3 : (c + 1) * w // 3]
                tag = f"{name}-tile{r}{c}"
                yield Derived(tag, tag, "distinct", jpeg(cv2.resize(tile, (w // 2, h // 2))))
