"""COCO instance masks via pycocotools, checked first, and the overlap policies that merge them into one mask."""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
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


def string_counts(counts: str | bytes, where: str) -> np.ndarray:
    """The run lengths (int64) of a compressed RLE string, decoded as pycocotools' rleFrString does:
    6-bit characters from '0', 5 value bits each, 0x20 = more to come, 0x10 of the last = negative, and
    every run after the third stored as the difference to the run two before it."""
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
    except UnicodeEncodeError:
        raise BadRecord("bad-rle", f"{where}: compressed RLE counts are not ASCII") from None
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    if not c.size:
        return c
    if c.min() < 0 or c.max() >= 64:
        bad = raw[int(np.flatnonzero((c < 0) | (c >= 64))[0])]
        raise BadRecord("bad-rle", f"{where}: compressed RLE counts hold {chr(bad)!r}")
    more = (c & 0x20) != 0
    if more[-1]:
        raise BadRecord("bad-rle", f"{where}: compressed RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    digits = ends - starts + 1
    if digits.max() > 7:  # 35 bits: far beyond any image, and no int64 overflow below
        raise BadRecord("bad-rle", f"{where}: compressed RLE counts hold a number of {digits.max()} digits")
    shift = 5 * (np.arange(c.size) - np.repeat(starts, digits))
    x = np.add.reduceat((c & 0x1F) << shift, starts)
    x = np.where(c[ends] & 0x10, x - (1 << (5 * digits)), x)
    runs = x.copy()
    runs[3::2] = np.cumsum(x[3::2]) + x[1] if len(x) > 3 else runs[3::2]
    runs[4::2] = np.cumsum(x[4::2]) + x[2] if len(x) > 4 else runs[4::2]
    return runs


def check_runs(runs: np.ndarray, height: int, width: int, where: str) -> None:
    """Run lengths must be >= 0 and cover the image exactly (pycocotools decodes without bounds checks)."""
    if runs.size and runs.min() < 0:
        raise BadRecord("bad-rle", f"{where}: RLE has a negative run length")
    if int(runs.sum()) != height * width:
        raise BadRecord(
            "bad-rle", f"{where}: RLE runs cover {int(runs.sum())} pixels, the image has {height * width}"
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
        if counts and not 0 <= min(counts) <= max(counts) < 2**32:
            raise BadRecord("bad-rle", f"{where}: RLE has a run length outside 0..2**32-1")
        check_runs(np.array(counts, np.int64), height, width, where)
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


def one_runs(rle: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of ones of an RLE, as offsets into the column-major pixel order."""
    pos = np.cumsum(string_counts(rle["counts"], "rle"))
    ends = pos[1::2]
    return pos[0 : 2 * len(ends) : 2], ends


def compose(instances: list[Instance], height: int, width: int, overlap: str) -> np.ndarray:
    """One (H, W) uint8 class-index mask: 0 background, classes 1..K, 255 on crowd regions and, under
    `ignore`, where instances of different classes overlap. `z-order` paints smaller instances over
    larger ones (equal areas: the higher annotation id on top); `max` keeps the highest class id.

    Works on the runs rather than on decoded masks: every run start or end is an event; between two
    events the set of covering instances is constant, so one label per segment and one np.repeat
    give the whole mask."""
    if overlap not in OVERLAPS:
        raise ValueError(f"unknown overlap policy {overlap!r}")
    n = height * width
    things = [i for i in instances if not i.crowd]
    runs = {id(i): one_runs(i.rle) for i in instances}
    if overlap == "z-order":  # one column per instance, bottom to top
        area = {id(i): int((runs[id(i)][1] - runs[id(i)][0]).sum()) for i in things}
        things.sort(key=lambda i: (-area[id(i)], i.ann_id))
        column = {id(i): k for k, i in enumerate(things)}
        column_class = np.array([i.cls for i in things], np.uint8)
    else:  # one column per class, ascending
        classes = sorted({i.cls for i in things})
        column = {id(i): classes.index(i.cls) for i in things}
        column_class = np.array(classes, np.uint8)
    crowd_column = len(column_class)
    columns = crowd_column + 1
    events, owners, deltas = [], [], []
    for i in instances:
        starts, ends = runs[id(i)]
        col = crowd_column if i.crowd else column[id(i)]
        events += [starts, ends]
        owners.append(np.full(2 * len(starts), col, np.int64))
        deltas += [np.ones(len(starts), np.int64), -np.ones(len(ends), np.int64)]
    if not events:
        return np.zeros((height, width), np.uint8)
    at, where = np.unique(np.concatenate(events), return_inverse=True)
    change = np.bincount(where * columns + np.concatenate(owners), np.concatenate(deltas), len(at) * columns)
    covered = np.cumsum(change.reshape(len(at), columns), axis=0) > 0.5  # (segments, columns)
    things_covered = covered[:, :crowd_column]
    if not things:
        labels = np.zeros(len(at), np.uint8)
    elif overlap == "z-order":  # the top-most covering column
        top = crowd_column - 1 - np.argmax(things_covered[:, ::-1], axis=1)
        labels = np.where(things_covered.any(axis=1), column_class[top], 0)
    else:
        labels = np.where(things_covered, column_class, 0).max(axis=1, initial=0)
        if overlap == "ignore":
            labels[things_covered.sum(axis=1) > 1] = IGNORE
    labels[covered[:, crowd_column]] = IGNORE
    lengths = np.diff(np.concatenate([[0], at, [n]]))
    flat = np.repeat(np.concatenate([[0], labels]).astype(np.uint8), lengths)
    return cv2.transpose(flat.reshape(width, height))  # column-major runs -> (H, W), C order
