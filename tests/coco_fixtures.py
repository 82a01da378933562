"""A COCO-format fixture built from scratch: JPEGs with drawn shapes, an instances JSON, and the truth.

Every instance is known as a boolean mask, so the tests compute expected class masks independently of
pycocotools: rectangles are stored as polygons (pycocotools fills [x0, x1) x [y0, y1) for an axis-aligned
rectangle with integer corners), free-form regions as list-count (crowd) or string-count RLE.
"""

import copy
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# The 80 COCO 2017 categories: ids 1..90 with gaps, as in instances_train2017.json.
COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}  # fmt: skip

# The fixture's categories, deliberately listed out of id order; contiguous classes follow id order.
FIXTURE_CATEGORIES = [90, 1, 58, 18]
CLASS_OF = {1: 1, 18: 2, 58: 3, 90: 4}  # person, dog, hot dog, toothbrush


@dataclass
class Truth:
    """One annotation as the tests know it: category, crowd flag, id and its exact boolean mask."""

    category_id: int
    crowd: bool
    ann_id: int
    mask: np.ndarray  # (H, W) bool


@dataclass
class CocoFixture:
    """Paths of a written fixture, its JSON content and the truth per image id."""

    annotations: Path
    images: Path
    data: dict[str, Any]
    truth: dict[int, list[Truth]] = field(default_factory=dict)

    def args(self) -> list[str]:
        return ["--annotations", str(self.annotations), "--images", str(self.images)]


def rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """The polygon of the pixel rectangle [x0, x1) x [y0, y1)."""
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def rect_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def list_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed RLE (column-major run lengths, starting with a 0-run), as COCO stores crowd masks."""
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def string_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE with string counts, as pycocotools' encode writes it."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def disc(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def jpeg(h: int, w: int, truth: list[Truth], seed: int) -> bytes:
    """A textured JPEG with each instance drawn in its own colour (the pixels only need to be distinct)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    for t in truth:
        image[t.mask] = [(t.category_id * 37) % 256, (t.ann_id * 91) % 256, 200]
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def fixture_images() -> list[tuple[int, int, int, list[tuple[int, bool, int, Any, np.ndarray]]]]:
    """(image id, height, width, [(category id, crowd, ann id, segmentation, mask)]) of each image."""
    specs: list[tuple[int, int, int, list[tuple[int, bool, int, Any, np.ndarray]]]] = []
    h, w = 48, 64  # 1: a person under a smaller dog (different classes), a small person on the dog
    specs.append((1, h, w, [
        (1, False, 101, [rect(4, 4, 36, 40)], rect_mask(h, w, 4, 4, 36, 40)),
        (18, False, 102, [rect(24, 10, 50, 30)], rect_mask(h, w, 24, 10, 50, 30)),
        (1, False, 103, [rect(40, 24, 48, 34)], rect_mask(h, w, 40, 24, 48, 34)),
    ]))  # fmt: skip
    h, w = 60, 80  # 2: a person as string RLE, a second person overlapping it, a hot dog on the first
    person = disc(h, w, 30, 30, 20)
    specs.append((2, h, w, [
        (1, False, 201, string_rle(person), person),
        (1, False, 202, [rect(40, 20, 70, 50)], rect_mask(h, w, 40, 20, 70, 50)),
        (58, False, 203, [rect(20, 25, 30, 35)], rect_mask(h, w, 20, 25, 30, 35)),
    ]))  # fmt: skip
    h, w = 56, 72  # 3: a crowd of people (list counts) under a toothbrush; a two-part dog polygon;
    crowd = rect_mask(h, w, 0, 30, 40, 56) | disc(h, w, 10, 20, 6)  # a hot dog and a person of equal area
    specs.append((3, h, w, [
        (1, True, 301, list_rle(crowd), crowd),
        (90, False, 302, [rect(30, 40, 60, 50)], rect_mask(h, w, 30, 40, 60, 50)),
        (18, False, 303, [rect(50, 2, 60, 12), rect(62, 2, 70, 12)],
         rect_mask(h, w, 50, 2, 60, 12) | rect_mask(h, w, 62, 2, 70, 12)),
        (58, False, 304, [rect(2, 2, 12, 12)], rect_mask(h, w, 2, 2, 12, 12)),
        (1, False, 305, [rect(6, 6, 16, 16)], rect_mask(h, w, 6, 6, 16, 16)),
    ]))  # fmt: skip
    h, w = 64, 64  # 4: no annotations at all (never chosen)
    specs.append((4, h, w, []))
    h, w = 40, 40  # 5: only a crowd region (not eligible: no non-crowd annotation)
    specs.append((5, h, w, [(18, True, 501, list_rle(disc(h, w, 20, 20, 10)), disc(h, w, 20, 20, 10))]))
    for image_id, (h, w) in zip((6, 7, 8, 9), ((50, 70), (44, 52), (52, 44), (36, 60)), strict=True):
        cat = FIXTURE_CATEGORIES[image_id % 4]
        x0, y0 = image_id, image_id + 2
        box = rect_mask(h, w, x0, y0, x0 + 20, y0 + 16)
        specs.append(
            (image_id, h, w, [(cat, False, image_id * 100 + 1, [rect(x0, y0, x0 + 20, y0 + 16)], box)])
        )
    return specs


def fixture_json(specs: list[tuple[int, int, int, list[Any]]]) -> dict[str, Any]:
    categories = [{"id": c, "name": COCO_CATEGORIES[c], "supercategory": "thing"} for c in FIXTURE_CATEGORIES]
    images, annotations = [], []
    for image_id, h, w, anns in specs:
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h, "license": 3}
        )
        for cat, crowd, ann_id, segmentation, m in anns:
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": int(crowd),
                "segmentation": segmentation, "area": float(m.sum()), "bbox": [0.0, 0.0, 1.0, 1.0],
            })  # fmt: skip
    return {"info": {"description": "segshards test fixture"}, "licenses": [{"id": 3, "name": "Attribution-NonCommercial License", "url": "http://example.org/by-nc/2.0/"}], "images": images,
            "annotations": annotations, "categories": categories}  # fmt: skip


def write_coco(
    folder: Path,
    *,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    duplicate_of: int | None = None,
    exif: bool = False,
) -> CocoFixture:
    """Write the fixture under `folder` (instances.json, images/). `mutate` edits the JSON before it is
    written; `duplicate_of` adds image 10, a byte copy of that image with one annotation of its own
    (with `exif`, the copy has an EXIF segment added: other bytes, the same decoded pixels)."""
    specs = fixture_images()
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    fixture = CocoFixture(folder / "instances.json", images, {})
    for image_id, h, w, anns in specs:
        truth = [Truth(cat, crowd, ann_id, m) for cat, crowd, ann_id, _, m in anns]
        fixture.truth[image_id] = truth
        (images / f"{image_id:012d}.jpg").write_bytes(jpeg(h, w, truth, seed=image_id))
    if duplicate_of is not None:
        source_id, h, w, _ = next(s for s in specs if s[0] == duplicate_of)
        box = rect_mask(h, w, 2, 2, 12, 12)
        specs.append((10, h, w, [(1, False, 1001, [rect(2, 2, 12, 12)], box)]))
        fixture.truth[10] = [Truth(1, False, 1001, box)]
        data = (images / f"{source_id:012d}.jpg").read_bytes()
        (images / f"{10:012d}.jpg").write_bytes(with_exif(data) if exif else data)
    data = fixture_json(specs)
    if mutate is not None:
        mutate(data)
    fixture.data = copy.deepcopy(data)
    fixture.annotations.write_text(json.dumps(data))
    return fixture


def with_exif(jpeg_bytes: bytes) -> bytes:
    """The JPEG with an APP1 EXIF segment (camera make only, no orientation) right after its SOI marker."""
    payload = b"Exif\0\0" + tiff_make_tag(b"segshards\0")
    return jpeg_bytes[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg_bytes[2:]


def tiff_make_tag(make: bytes) -> bytes:
    """A big-endian TIFF header with one IFD holding tag 0x010F (Make), an ASCII value stored after it."""
    ifd_offset, entries = 8, 1
    value_offset = ifd_offset + 2 + 12 * entries + 4
    entry = struct.pack(">HHII", 0x010F, 2, len(make), value_offset)
    return b"MM\0\x2a" + struct.pack(">I", ifd_offset) + struct.pack(">H", entries) + entry + bytes(4) + make


def annotation(data: dict[str, Any], ann_id: int) -> dict[str, Any]:
    """The annotation record with id `ann_id` (for mutating tests)."""
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def image_record(data: dict[str, Any], image_id: int) -> dict[str, Any]:
    return next(i for i in data["images"] if i["id"] == image_id)


# ---- independent expectation of a class mask ----------------------------------------------------


def expected_mask(truth: list[Truth], h: int, w: int, overlap: str, class_of: dict[int, int]) -> np.ndarray:
    """The class mask, pixel by pixel: crowd -> 255; else the covering instances decide: `ignore` 255 when
    their classes differ, `max` the highest class, `z-order` the smallest instance (ties: highest id)."""
    out = np.zeros((h, w), np.uint8)
    kept = [t for t in truth if t.category_id in class_of]
    areas = {t.ann_id: int(t.mask.sum()) for t in kept}
    for y in range(h):
        for x in range(w):
            covering = [t for t in kept if t.mask[y, x]]
            if any(t.crowd for t in covering):
                out[y, x] = 255
                continue
            classes = {class_of[t.category_id] for t in covering}
            if not classes:
                continue
            if overlap == "ignore":
                out[y, x] = classes.pop() if len(classes) == 1 else 255
            elif overlap == "max":
                out[y, x] = max(classes)
            else:
                top = min(covering, key=lambda t: (areas[t.ann_id], -t.ann_id))
                out[y, x] = class_of[top.category_id]
    return out


# ---- synthetic annotations at scale (the bench) ---------------------------------------------------


def random_polygon(rng: np.random.Generator, h: int, w: int, *, vertices: int) -> list[float]:
    """A star-shaped polygon (x, y, x, y, ...) around a random centre, partly outside the image at times."""
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    radius = rng.uniform(0.03, 0.3) * min(h, w)
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.5, 1.0, vertices)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in xy.ravel()]


def synthetic_instances(
    n_images: int, per_image: int, *, height: int = 480, width: int = 640, seed: int = 0
) -> dict[str, Any]:
    """A COCO-format dict of `n_images` (no files) with `per_image` polygon annotations each, over the 80
    COCO categories; about one annotation in five has two parts."""
    rng = np.random.default_rng(seed)
    ids = sorted(COCO_CATEGORIES)
    categories = [{"id": c, "name": COCO_CATEGORIES[c], "supercategory": "thing"} for c in ids]
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        for _ in range(per_image):
            parts = [random_polygon(rng, height, width, vertices=int(rng.integers(6, 40)))]
            if rng.random() < 0.2:
                parts.append(random_polygon(rng, height, width, vertices=int(rng.integers(6, 20))))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.choice(ids)),
                "iscrowd": 0, "segmentation": parts,
            })  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories}
