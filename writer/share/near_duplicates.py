"""Near-duplicate photographs: perceptual codes of an image, a banded index that finds candidate pairs
without comparing all pairs, a verification of each candidate, and union-find grouping.

Why these codes (measured on copies derived from the coco-tiny photographs, `tests/test_audit_quality.py`):
one 64-bit DCT pHash puts 10% crops up to 28 bits from their original while distinct photographs come as
close as 12, and a 9x8 dHash does no better on crops (27 vs 10): no single hash and threshold separates them.
Crops are met by alignment instead: each image keeps the codes of six views of itself (the whole image, its
central 90%, and its four 90% corners), and a pair is compared as one image's whole view against each of
the other's views, both ways, so a crop of up to 10% is within ~5% of one view of its original; and each
view against the same view, so a label pasted over one corner leaves the views without that corner alike
(a label moves the whole image's pHash by up to 26 bits). Distinct photographs that come close in one
code rarely come close in the other: a pair is a near-duplicate when, for some alignment, both the pHash
and the dHash differ by at most `threshold` bits (default 14: on the derived copies, 12 loses 2% of the
crops, 16 is where the first false link appears with 16-bit bands).
imagehash (pHash, dHash, wHash) would need SciPy and PyWavelets for the same few lines of DCT; OpenCV's
`img_hash` is only in the contrib build. So the codes are computed here with cv2 (`cv2.dct`, INTER_AREA).

Candidates: each 64-bit code is cut into three bands of 21 bits (six bands per view); an image's whole
view is looked up in each band, exactly and with each single bit flipped (multi-probe), against every
view of every image, and each other view against the same view of the others, exactly. A sorted array
per band does the lookup (`np.searchsorted`), one band and one bounded chunk at a time. Candidates are
verified with the full distances, and only while their two images are not linked yet (union-find), so a
bucket of k copies costs about k verifications, not k^2. Memory: the codes (96 bytes an image) plus
a few hundred bytes an image while one band is searched. Cost: a random pair becomes a candidate with
probability ~6 bands x 22 probes x 6 views / 2^21, so candidates per image grow slowly with N (not as
all pairs): on random codes 0.06 ms of CPU an image at 10,000 images, 0.09 ms at 40,000, against ~4 ms
to decode and hash a 640x480 photograph. On the derived copies, 21-bit bands lose no group that 16-bit
bands (7x the candidates) find.

Perceptual hashing is the wrong notion for small grey renderings such as MNIST digits, which look alike
by nature: `audit` compares those by their pixel keys only (`exact` mode).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from segshards.writer.format.images import MEMBER_KINDS, decode_image, quiet_stderr
from segshards.writer.format.limits import check_image

# The six views (x0, y0, x1, y1) as fractions of the image: whole, central 90%, the four 90% corners.
VIEWS = (
    (0.0, 0.0, 1.0, 1.0),
    (0.05, 0.05, 0.95, 0.95),
    (0.0, 0.0, 0.9, 0.9),
    (0.1, 0.0, 1.0, 0.9),
    (0.0, 0.1, 0.9, 1.0),
    (0.1, 0.1, 1.0, 1.0),
)
THUMB = 128  # the grey thumbnail every view is cut from (INTER_AREA once, then per view)
VIEW_SLICES = tuple(
    (slice(round(y0 * THUMB), round(y1 * THUMB)), slice(round(x0 * THUMB), round(x1 * THUMB)))
    for x0, y0, x1, y1 in VIEWS
)
BIT_VALUES = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)  # bit i of a code, most significant first
THRESHOLD = 14  # bits, for the pHash and the dHash alike
MAX_THRESHOLD = 32  # beyond this, unrelated photographs match (half a 64-bit code is chance)
BAND_BITS = 21  # three bands in each 64-bit code, six in all (the top bit of each code is left out)
PER_WORD = 64 // BAND_BITS
BANDS = 2 * PER_WORD
MAX_HITS = 1 << 19  # candidate pairs handled at once (bounds memory where a band's bucket is large)
QUERY_CHUNK = 1 << 16  # lookups per vectorised step


def _bits_to_u64(bits: np.ndarray) -> np.uint64:
    return np.packbits(bits.astype(np.uint8)).view(">u8")[0].astype(np.uint64)


def phash(grey: np.ndarray) -> np.uint64:
    """64-bit DCT pHash: the 8x8 lowest frequencies of a 32x32 thumbnail against their median (DC aside)."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    return _bits_to_u64(low > np.median(low[1:]))


def dhash(grey: np.ndarray) -> np.uint64:
    """64-bit dHash: whether each pixel of a 9x8 thumbnail is brighter than its left neighbour."""
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    return _bits_to_u64(small[:, 1:] > small[:, :-1])


def image_codes(image: np.ndarray) -> np.ndarray:
    """(2, 6) uint64: the pHash (row 0) and dHash (row 1) of each view of an image (grey, BGR or BGRA).

    The same bits as `phash` and `dhash` of each view, with the medians and the bit packing done for all
    six views at once (half the CPU of twelve separate calls; it runs for every photograph of a build)."""
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    grey = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    views = [grey[rows, cols] for rows, cols in VIEW_SLICES]
    low = np.stack(
        [
            cv2.dct(cv2.resize(v, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32))[:8, :8]
            for v in views
        ]
    )
    low = low.reshape(len(views), 64)
    small = np.stack([cv2.resize(v, (9, 8), interpolation=cv2.INTER_AREA) for v in views]).astype(np.int16)
    bits = np.stack(
        [
            low > np.median(low[:, 1:], axis=1)[:, None],
            (small[:, :, 1:] > small[:, :, :-1]).reshape(len(views), 64),
        ]
    )
    return np.bitwise_or.reduce(np.where(bits, BIT_VALUES, np.uint64(0)), axis=2)


REDUCED = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def decode_grey(payload: bytes, ext: str, where: str) -> np.ndarray:
    """The image of a stored member for its codes, within the format's limits: a JPEG decoded to grey at
    1/2, 1/4 or 1/8 scale while its short side stays >= THUMB (libjpeg-turbo's DCT scaling: a 640x480
    photograph in ~2 ms instead of ~4 ms, and no colour conversion); anything else by `decode_image`."""
    header = check_image(payload, where)
    factor = 1
    while factor < 8 and min(header.width, header.height) // (2 * factor) >= THUMB:
        factor *= 2
    if header.kind != "jpeg" or MEMBER_KINDS.get(ext) != "jpeg" or header.sample_bytes != 1 or factor == 1:
        return decode_image(payload, ext, where)
    with quiet_stderr():
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), REDUCED[factor])
    if image is None:
        return decode_image(payload, ext, where)  # raises with the format's message
    return image


def payload_codes(payload: bytes, ext: str, where: str) -> np.ndarray:
    """`image_codes` of a stored image member (what `audit` computes for each sample)."""
    return image_codes(decode_grey(payload, ext, where))


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int32)


def pair_distance(codes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each pair (a[i], b[i]) of images with `codes` (N, 2, 6): over the alignments (one's whole
    view against each view of the other, both ways, and each view against the same view), the least of
    max(pHash bits, dHash bits)."""
    best = np.full(len(a), 64, np.int32)
    aligned = [(0, v) for v in range(len(VIEWS))] + [(v, v) for v in range(1, len(VIEWS))]
    for u, v in aligned:
        for x, y in ((a, b), (b, a)):
            p = popcount(codes[x, 0, u] ^ codes[y, 0, v])
            d = popcount(codes[x, 1, u] ^ codes[y, 1, v])
            best = np.minimum(best, np.maximum(p, d))
    return best


def _band(codes: np.ndarray, band: int) -> np.ndarray:
    """The 16-bit value of `band` in the 128-bit (pHash, dHash) code of each view of `codes` (N, 2, 6):
    (N, 6) uint32."""
    word, index = divmod(band, PER_WORD)
    mask = np.uint64((1 << BAND_BITS) - 1)
    return ((codes[:, word, :] >> np.uint64(index * BAND_BITS)) & mask).astype(np.uint32)


FLIPS = np.concatenate([[0], 1 << np.arange(BAND_BITS)]).astype(
    np.uint32
)  # a band as it is, each bit flipped


def _lookups(
    keys: np.ndarray, values: np.ndarray, flips: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(index into `values`, index into sorted `keys`) of every key equal to a value with one of `flips`
    applied, at most about MAX_HITS at a time; probes are made a chunk at a time, so memory stays a few
    dozen bytes per image whatever the buckets hold."""
    rows = max(1, QUERY_CHUNK // len(flips))
    for start in range(0, len(values), rows):
        probes = (values[start : start + rows, None] ^ flips[None, :]).ravel()
        lo = np.searchsorted(keys, probes, "left")
        hits = np.searchsorted(keys, probes, "right") - lo
        ends = np.cumsum(hits)
        cuts = np.searchsorted(
            ends, np.arange(MAX_HITS, int(ends[-1]) if len(ends) else 0, MAX_HITS), "right"
        )
        for first, last in zip([0, *cuts.tolist()], [*cuts.tolist(), len(probes)], strict=True):
            part = hits[first:last]
            total = int(part.sum())
            if total:
                who = np.repeat(np.arange(first, last) // len(flips) + start, part)
                offsets = np.arange(total) - np.repeat(np.cumsum(part) - part, part)
                yield who, np.repeat(lo[first:last], part) + offsets


def _band_candidates(codes: np.ndarray, band: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of images where, in this band, one's whole view is within one bit of any view of the other
    (crops, both ways), or a view other than the whole is the same in both (an overlay outside it)."""
    views = _band(codes, band)  # (N, 6) uint32
    k = views.shape[1]
    order = np.argsort(views.ravel(), kind="stable")
    for who, at in _lookups(views.ravel()[order], views[:, 0], FLIPS):
        yield who, order[at] // k
    tagged = (views[:, 1:] + (np.arange(1, k, dtype=np.uint32) << BAND_BITS)).ravel()  # (view, value)
    order = np.argsort(tagged, kind="stable")
    for who, at in _lookups(tagged[order], tagged, FLIPS[:1]):
        yield who // (k - 1), order[at] // (k - 1)


class Components:
    """Union-find over n items: each root is its component's smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def roots(self, items: np.ndarray) -> np.ndarray:
        """The root of each item, vectorised (parents are followed until nothing changes)."""
        up = self.parent[items]
        while not np.array_equal(nxt := self.parent[up], up):
            up = nxt
        return up

    def union(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Join the groups of each pair (a[i], b[i]), vectorised (roots hooked under the smallest until
        every pair shares one); True for one pair of each two groups that were apart (the links kept)."""
        ra, rb = self.roots(a), self.roots(b)
        key = np.minimum(ra, rb) * len(self.parent) + np.maximum(ra, rb)
        kept = np.zeros(len(a), bool)
        kept[np.unique(key, return_index=True)[1]] = True
        kept &= ra != rb
        while (apart := ra != rb).any():
            np.minimum.at(self.parent, np.maximum(ra[apart], rb[apart]), np.minimum(ra[apart], rb[apart]))
            ra, rb = self.roots(a), self.roots(b)
        return kept


def near_pairs(codes: np.ndarray, threshold: int = THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b) of near-duplicate images and their distances, from `codes` (N, 2, 6) uint64.

    Images whose codes are all identical are paired with the first of them without a lookup (a set of
    many copies would otherwise fill the buckets); the rest go through the banded index. A candidate
    whose two images are already linked, through pairs found before, is not verified: the pairs returned
    link every group found, not every near pair within it (a group of k copies costs ~k links, not k^2)."""
    if len(codes) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(np.int32)
    flat = codes.reshape(len(codes), -1)
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    same = np.flatnonzero(first[inverse] != np.arange(len(codes)))
    found_a, found_b, found_d = [first[inverse[same]]], [same], [np.zeros(len(same), np.int32)]
    reps = np.sort(first)
    rep_codes = codes[reps]
    linked = Components(len(reps))
    for band in range(BANDS):
        for q, o in _band_candidates(rep_codes, band):
            a, b, d = _verified(rep_codes, q, o, threshold, linked)
            found_a.append(reps[a])
            found_b.append(reps[b])
            found_d.append(d)
    return _unique_pairs(np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d))


def _verified(
    codes: np.ndarray, q: np.ndarray, o: np.ndarray, threshold: int, linked: Components
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs (q[i], o[i]) within `threshold` that join two groups not linked yet, linked.

    Three rounds, each over the candidates whose groups are still apart: one per image asking (every
    copy in a bucket asks the bucket's first image first), one per pair of groups, then all the rest (a
    pair of groups whose first candidate failed): a bucket of k copies costs ~k verifications, not k^2."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for round_ in ("per image", "per pair of groups", "all"):
        rq, ro = linked.roots(q), linked.roots(o)
        apart = rq != ro
        q, o, rq, ro = q[apart], o[apart], rq[apart], ro[apart]
        if not len(q):
            break
        if round_ == "per image":
            chosen = np.unique(q, return_index=True)[1]
        elif round_ == "per pair of groups":
            chosen = np.unique(
                np.minimum(rq, ro) * len(linked.parent) + np.maximum(rq, ro), return_index=True
            )[1]
        else:
            chosen = np.arange(len(q))
        dist = pair_distance(codes, q[chosen], o[chosen])
        near = dist <= threshold
        a, b = q[chosen[near]], o[chosen[near]]
        merged = linked.union(a, b)
        found.append((a[merged], b[merged], dist[near][merged]))
        rest = np.ones(len(q), bool)
        rest[chosen] = False
        q, o = q[rest], o[rest]
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]


def _unique_pairs(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    key = lo * (int(hi.max(initial=0)) + 1) + hi
    _, index = np.unique(key, return_index=True)
    return lo[index], hi[index], d[index]


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The component of each of `n` items linked by the pairs (a[i], b[i]): its smallest member."""
    found = Components(n)
    found.union(a, b)
    return found.roots(np.arange(n))


@dataclass(frozen=True)
class Group:
    """Indices of images found to be near-duplicates of each other, and the largest distance of a link."""

    members: tuple[int, ...]
    max_distance: int


def groups(n: int, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> list[Group]:
    """The connected components of two or more images, largest first (then by first member)."""
    comp = components(n, a, b)
    worst: dict[int, int] = {}
    for x, dist in zip(comp[a].tolist(), d.tolist(), strict=True):
        worst[x] = max(worst.get(x, 0), dist)
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(np.bincount(comp, minlength=n)[comp] > 1).tolist():
        members.setdefault(int(comp[i]), []).append(i)
    found = [Group(tuple(m), worst.get(root, 0)) for root, m in members.items()]
    return sorted(found, key=lambda g: (-len(g.members), g.members[0]))
