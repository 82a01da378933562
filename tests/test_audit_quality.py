"""Measured quality of the near-duplicate search on real photographs: copies derived from coco-tiny with
known groups (re-encodes, resizes, 10% crops, pasted labels) and distinct photographs, at the default
threshold; the banded index against a comparison of all pairs; the codes on hand-computed images."""

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations

import cv2
import numpy as np
import pytest

from bench.derived_photos import Derived, coco_tiny_images, derived
from segshards.writer.share import near_duplicates as nd

PHOTOS = coco_tiny_images()
needs_photos = pytest.mark.skipif(PHOTOS is None, reason="coco-tiny photographs not found")


@dataclass(frozen=True)
class Measured:
    items: list[Derived]
    codes: np.ndarray  # (N, 2, 6)
    component: np.ndarray  # (N,) the group found for each item


@pytest.fixture(scope="module")
def measured() -> Measured:
    assert PHOTOS is not None
    items = list(derived(PHOTOS))
    codes = np.stack([nd.payload_codes(d.data, "jpg", d.name) for d in items])
    a, b, _ = nd.near_pairs(codes)
    return Measured(items, codes, nd.components(len(items), a, b))


def original_pairs(m: Measured, kind: str) -> Iterator[tuple[int, int]]:
    """(original, copy) index pairs of one kind of copy."""
    originals = {d.group: i for i, d in enumerate(m.items) if d.kind == "original"}
    return ((originals[d.group], i) for i, d in enumerate(m.items) if d.kind == kind)


def recall(m: Measured, kind: str) -> float:
    pairs = list(original_pairs(m, kind))
    return sum(m.component[a] == m.component[b] for a, b in pairs) / len(pairs)


@needs_photos
@pytest.mark.parametrize(
    ("kind", "target"), [("reencode", 0.99), ("resize", 0.99), ("crop", 0.97), ("label", 0.97)]
)
def test_pair_recall_per_kind_of_copy(measured: Measured, kind: str, target: float) -> None:
    assert len(list(original_pairs(measured, kind))) >= 60  # 15 photographs x 4-6 copies
    assert recall(measured, kind) >= target


@needs_photos
def test_pair_precision_after_grouping(measured: Measured) -> None:
    """Every pair the groups create (one false link merging two groups creates many) is a true pair."""
    groups = [d.group for d in measured.items]
    found = true = 0
    for root in set(measured.component.tolist()):
        members = np.flatnonzero(measured.component == root).tolist()
        for a, b in combinations(members, 2):
            found += 1
            true += groups[a] == groups[b]
    assert found > 2000  # 15 groups of 19
    assert true / found >= 0.99


@needs_photos
def test_distinct_photographs_are_never_linked(measured: Measured) -> None:
    distinct = [i for i, d in enumerate(measured.items) if d.kind in ("original", "distinct")]
    assert len(distinct) == 15 + 15 * 9
    assert len({int(measured.component[i]) for i in distinct}) == len(distinct)


@needs_photos
def test_the_index_keeps_the_pairs_that_comparing_all_pairs_finds(measured: Measured) -> None:
    """The banded index (which never compares all pairs) puts together at least 99% of the pairs within
    the threshold, and nothing else: its candidates are verified with the same distance."""
    n = len(measured.codes)
    a, b = np.triu_indices(n, 1)
    close = nd.pair_distance(measured.codes, a, b) <= nd.THRESHOLD
    brute = nd.components(n, a[close], b[close])
    kept = measured.component[a[close]] == measured.component[b[close]]
    assert close.sum() > 2000 and kept.mean() >= 0.99
    # every group the index makes lies inside one group of all pairs
    assert all(
        len(set(brute[measured.component == c].tolist())) == 1 for c in set(measured.component.tolist())
    )


def test_codes_of_hand_computed_images() -> None:
    flat = np.full((64, 64), 128, np.uint8)
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # brighter to the right
    assert int(nd.dhash(flat)) == 0
    assert int(nd.dhash(ramp)) == 2**64 - 1
    assert int(nd.phash(flat)) == 1 << 63  # only the DC term is above the median of the others
    codes = nd.image_codes(ramp)
    assert codes.shape == (2, 6) and codes.dtype == np.uint64
    assert np.array_equal(nd.image_codes(cv2.cvtColor(ramp, cv2.COLOR_GRAY2BGR)), codes)


def test_copies_of_identical_codes_are_grouped_without_the_index() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, (5, 2, 6), dtype=np.uint64)
    codes[3] = codes[1]
    codes[4] = codes[1]
    a, b, d = nd.near_pairs(codes)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(1, 3), (1, 4)] and d.tolist() == [0, 0]
    found = nd.groups(5, a, b, d)
    assert [(g.members, g.max_distance) for g in found] == [((1, 3, 4), 0)]


def test_one_bit_flip_in_every_band_is_still_found() -> None:
    """Multi-probe: a copy whose codes differ by one bit in each of the 8 bands shares no band exactly."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**63, (2, 2, 6), dtype=np.uint64)
    flips = sum(1 << (16 * k + 3) for k in range(4))
    codes[1] = codes[0] ^ np.uint64(flips)
    a, b, d = nd.near_pairs(codes, threshold=4)
    assert (a.tolist(), b.tolist(), d.tolist()) == ([0], [1], [4])


@needs_photos
def test_the_codes_of_all_views_at_once_are_each_views_own_hashes() -> None:
    assert PHOTOS is not None
    images = [cv2.imread(str(p)) for p in sorted(PHOTOS.glob("*.jpg"))] + [
        np.full((50, 60), 7, np.uint8),
        np.zeros((40, 40, 4), np.uint8),
    ]
    for image in images:
        grey = (
            cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[-1] == 4 else cv2.COLOR_BGR2GRAY)
            if image.ndim == 3
            else image
        )
        thumb = cv2.resize(grey, (nd.THUMB, nd.THUMB), interpolation=cv2.INTER_AREA)
        views = [thumb[rows, cols] for rows, cols in nd.VIEW_SLICES]
        expected = [[nd.phash(v) for v in views], [nd.dhash(v) for v in views]]
        assert nd.image_codes(image).tolist() == np.array(expected, np.uint64).tolist()
