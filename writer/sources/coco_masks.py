"""COCO instance masks via pycocotools, checked first, and the overlap policies that merge them into one mask."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segshards.writer.format.schema import IGNORE
from segshards.writer.sources.coco_annotations import Annotation
from segshards.writer.sources.photos import BadRecord

NUMBER_TYPES = {int, float}
OVERLAPS = ("ignore", "z-order", "max")


class Instance(NamedTuple):
    """One annotation ready to paint: its contiguous class, crowd flag, annotation id and RLE."""

    cls: int
    crowd: bool
    ann_id: int
    rle: dict[str, Any]


def finite_numbers(values: Sequence[Any]) -> bool:
    """True when every value is a finite int or float (bools, which JSON also has, excluded)."""
    return set(map(type, values)) <= NUMBER_TYPES and bool(np.isfinite(np.array(values, np.float64)).all())


def numbers(c: np.ndarray) -> np.ndarray:
    """The signed numbers of compressed RLE characters `c` (each minus 48): 5 value bits per character,
    0x20 = more to come, 0x10 on the last one = negative. The last character must end a number."""
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    digits = ends - starts + 1
    x = np.add.reduceat((c & 0x1F) << (5 * (np.arange(c.size) - np.repeat(starts, digits))), starts)
    return np.where(c[ends] & 0x10, x - (1 << (5 * digits)), x)


def string_counts(counts: str | bytes, where: str) -> np.ndarray:
    """The run lengths (int64) of one compressed RLE string, checked and decoded as pycocotools'
    rleFrString does: characters from '0', and every run after the third stored as its difference to
    the run two before it."""
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
    if c[-1] & 0x20:
        raise BadRecord("bad-rle", f"{where}: compressed RLE counts end in the middle of a number")
    if np.diff(np.flatnonzero((c & 0x20) == 0), prepend=-1).max() > 7:  # no int64 overflow below
        raise BadRecord("bad-rle", f"{where}: compressed RLE counts hold a number of more than 7 digits")
    x = numbers(c)
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
    rles = mask_utils.frPyObjects(parts, height, width)
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles)  # merging one RLE would copy it


def annotation_rle(ann: Annotation, height: int, width: int, where: str) -> dict[str, Any]:
    """pycocotools' annToRLE for one annotation (polygons merged, list counts converted, strings as they
    are), after the checks that keep pycocotools from raising, truncating or reading out of bounds."""
    where = f"{where}: annotation {ann.id} (image {ann.image_id})"
    if isinstance(ann.segmentation, list):
        return polygon_rle(ann.segmentation, height, width, where)
    return rle_of(ann.segmentation, height, width, where)


def segment_cumsum(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each of the consecutive segments of `lengths` elements."""
    total = np.cumsum(values)
    before = np.concatenate([[0], total[np.cumsum(lengths)[:-1] - 1]]) if len(lengths) else total[:0]
    return total - np.repeat(before, lengths)


def one_runs(rles: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, owner) of the runs of ones of many checked RLEs, as offsets into the column-major
    pixel order; `owner` is the index of the RLE. All strings are decoded at once (string_counts' rule)."""
    texts = [r["counts"] for r in rles]
    c = np.frombuffer(b"".join(texts), np.uint8).astype(np.int64) - 48
    x = numbers(c)
    ends = np.flatnonzero((c & 0x20) == 0)
    per_rle = np.diff(np.searchsorted(ends, np.cumsum([len(t) for t in texts]), side="left"), prepend=0)
    owner = np.repeat(np.arange(len(texts)), per_rle)
    k = np.arange(len(x)) - np.repeat(np.cumsum(per_rle) - per_rle, per_rle)  # index within its RLE
    # Run k > 2 is stored as its difference to run k - 2: undo with sums along each parity chain.
    odd = k % 2 == 1
    even_chain = segment_cumsum(np.where(~odd & (k >= 2), x, 0), per_rle)
    runs = np.where(k == 0, x, np.where(odd, segment_cumsum(np.where(odd, x, 0), per_rle), even_chain))
    pos = segment_cumsum(runs, per_rle)  # where each run ends
    one = np.flatnonzero(odd)  # runs of ones are the odd ones, starting where the run before ends
    return pos[one - 1], pos[one], owner[one]


def compose(instances: list[Instance], height: int, width: int, overlap: str) -> np.ndarray:
    """One (H, W) uint8 class-index mask: 0 background, classes 1..K, 255 on crowd regions and, under
    `ignore`, where instances of different classes overlap. `z-order` paints smaller instances over
    larger ones (equal areas: the higher annotation id on top); `max` keeps the highest class id.

    Works on the runs rather than on decoded masks: every run start or end is an event; between two
    events the set of covering columns (instances or classes) is constant, so one label per segment and
    one np.repeat give the whole mask."""
    if overlap not in OVERLAPS:
        raise ValueError(f"unknown overlap policy {overlap!r}")
    if not instances:
        return np.zeros((height, width), np.uint8)
    starts, ends, owner = one_runs([i.rle for i in instances])
    things = [k for k, i in enumerate(instances) if not i.crowd]
    if overlap == "z-order":  # one column per instance, bottom to top
        area = np.bincount(owner, ends - starts, len(instances))
        things.sort(key=lambda k: (-area[k], instances[k].ann_id))
        column_class = np.array([instances[k].cls for k in things], np.uint8)
        column_of = {k: n for n, k in enumerate(things)}
    else:  # one column per class, ascending
        classes = sorted({instances[k].cls for k in things})
        column_class = np.array(classes, np.uint8)
        column_of = {k: classes.index(instances[k].cls) for k in things}
    crowd = len(column_class)  # the last column: every crowd region
    column = np.array([column_of.get(k, crowd) for k in range(len(instances))], np.int64)[owner]
    # Segments: the distinct event offsets, in order (each RLE's events are sorted already: timsort
    # merges such runs quickly). A column covers a segment when its starts so far outnumber its ends.
    events = np.concatenate([starts, ends])
    if not len(events):  # every instance is empty
        return np.zeros((height, width), np.uint8)
    order = np.argsort(events, kind="stable")
    ordered = events[order]
    fresh = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    at = ordered[fresh]
    segment = np.empty(len(events), np.int64)
    segment[order] = np.cumsum(fresh) - 1
    cells = (crowd + 1) * len(at)
    flat_index = np.concatenate([column, column]) * len(at) + segment
    up = np.bincount(flat_index[: len(starts)], minlength=cells)
    down = np.bincount(flat_index[len(starts) :], minlength=cells)
    covered = np.cumsum((up - down).reshape(crowd + 1, len(at)), axis=1) > 0  # (columns, segments)
    labels = np.zeros(len(at), np.uint8)
    for n, cls in enumerate(column_class.tolist()):  # classes ascending, or instances bottom to top
        labels[covered[n]] = cls
    if overlap == "ignore" and crowd > 1:
        labels[covered[:crowd].sum(axis=0) > 1] = IGNORE
    labels[covered[crowd]] = IGNORE
    lengths = np.diff(np.concatenate([[0], at, [height * width]]))
    flat = np.repeat(np.concatenate([[0], labels]).astype(np.uint8), lengths)
    return cv2.transpose(flat.reshape(width, height))  # column-major runs -> (H, W), C order
