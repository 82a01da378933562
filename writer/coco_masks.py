"""COCO instance masks via pycocotools, checked first, and the overlap policies that merge them into one mask."""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from writer.coco_annotations import Annotation, BadRecord

IGNORE = 255
OVERLAPS = ("ignore", "z-order", "max")


class Instance(NamedTuple):
    """One annotation ready to paint: its contiguous class, crowd flag, annotation id and RLE."""

    cls: int
    crowd: bool
    ann_id: int
    rle: dict[str, Any]


def finite_numbers(values: Sequence[Any]) -> bool:
    """True when every value is a finite int or float (bools excluded)."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def string_counts(counts: str, where: str) -> list[int]:
    """The run lengths of a compressed RLE string, decoded as pycocotools' rleFrString does."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p == len(counts):
                raise BadRecord("bad-rle", f"{where}: compressed RLE counts end in the middle of a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise BadRecord("bad-rle", f"{where}: compressed RLE counts hold {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def check_runs(runs: list[int], height: int, width: int, where: str) -> None:
    """Run lengths must be >= 0 and cover the image exactly (pycocotools decodes without bounds checks)."""
    if any(r < 0 for r in runs):
        raise BadRecord("bad-rle", f"{where}: RLE has a negative run length")
    if sum(runs) != height * width:
        raise BadRecord(
            "bad-rle", f"{where}: RLE runs cover {sum(runs)} pixels, the image has {height * width}"
        )


def rle_of(segmentation: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """An RLE segmentation (list or string counts) after checking its size and runs."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size is None or counts is None:
        missing = "size" if size is None else "counts"
        raise BadRecord("missing-key", f"{where}: RLE segmentation has no {missing!r}")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
        raise BadRecord("bad-rle", f"{where}: RLE size {size!r} is not [height, width]")
    if size != [height, width]:
        raise BadRecord(
            "rle-size", f"{where}: RLE size {size[0]}x{size[1]} (HxW) disagrees with image {height}x{width}"
        )
    if isinstance(counts, list):
        if not all(type(v) is int for v in counts):
            raise BadRecord("bad-rle", f"{where}: RLE counts are not all integers")
        check_runs(counts, height, width, where)
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        check_runs(string_counts(counts, where), height, width, where)
        return {"size": size, "counts": counts.encode("ascii")}
    raise BadRecord(
        "bad-rle", f"{where}: RLE counts are {type(counts).__name__}, expected a list or a string"
    )


def polygon_rle(parts: list[Any], height: int, width: int, where: str) -> dict[str, Any]:
    """The union of polygon parts; each needs an even number (>= 6) of finite coordinates."""
    if not parts:
        raise BadRecord("bad-polygon", f"{where}: empty segmentation")
    for k, part in enumerate(parts):
        if not isinstance(part, list) or not finite_numbers(part):
            raise BadRecord("bad-polygon", f"{where}: polygon part {k} is not a list of finite numbers")
        if len(part) < 6:
            raise BadRecord(
                "bad-polygon", f"{where}: polygon part {k} has {len(part) // 2} point(s), needs at least 3"
            )
        if len(part) % 2:
            raise BadRecord(
                "bad-polygon", f"{where}: polygon part {k} has an odd number ({len(part)}) of coordinates"
            )
    return mask_utils.merge(mask_utils.frPyObjects(parts, height, width))


def annotation_rle(ann: Annotation, height: int, width: int, where: str) -> dict[str, Any]:
    """pycocotools' annToRLE for one annotation (polygons merged, list counts converted, strings as they
    are), after the checks that keep pycocotools from raising, truncating or reading out of bounds."""
    where = f"{where}: annotation {ann.id} (image {ann.image_id})"
    if isinstance(ann.segmentation, list):
        return polygon_rle(ann.segmentation, height, width, where)
    return rle_of(ann.segmentation, height, width, where)


def decode_stack(rles: list[dict[str, Any]]) -> np.ndarray:
    """(H, W, N) uint8 0/1 masks, Fortran order, one per RLE."""
    return mask_utils.decode(rles)


def compose(instances: list[Instance], height: int, width: int, overlap: str) -> np.ndarray:
    """One (H, W) uint8 class-index mask: 0 background, classes 1..K, 255 on crowd regions and, under
    `ignore`, where instances of different classes overlap. `z-order` paints smaller instances over
    larger ones (equal areas: the higher annotation id on top); `max` keeps the highest class id."""
    if overlap not in OVERLAPS:
        raise ValueError(f"unknown overlap policy {overlap!r}")
    out = np.zeros((height, width), np.uint8, order="F")  # pycocotools masks are column-major
    things = [i for i in instances if not i.crowd]
    if things and overlap == "z-order":
        areas = mask_utils.area([i.rle for i in things])
        order = sorted(range(len(things)), key=lambda k: (-int(areas[k]), things[k].ann_id))
        masks = decode_stack([things[k].rle for k in order])
        for n, k in enumerate(order):
            np.copyto(out, things[k].cls, where=masks[:, :, n].view(bool))
    elif things:
        classes = sorted({i.cls for i in things})
        unions = [mask_utils.merge([i.rle for i in things if i.cls == c]) for c in classes]
        masks = decode_stack(unions)
        for n, c in enumerate(classes):  # ascending, so the highest class covering a pixel stays
            np.copyto(out, c, where=masks[:, :, n].view(bool))
        if overlap == "ignore" and len(classes) > 1:
            out[masks.sum(axis=2, dtype=np.uint8) > 1] = IGNORE
    crowd = [i.rle for i in instances if i.crowd]
    if crowd:
        np.copyto(out, IGNORE, where=decode_stack([mask_utils.merge(crowd)])[:, :, 0].view(bool))
    return np.ascontiguousarray(out)
