"""Near-duplicate photographs: perceptual codes of an image, a banded index that finds candidate pairs in
about linear time, a verification of each candidate, and union-find grouping.

Why these codes (measured on copies derived from the coco-tiny photographs, `tests/test_audit_quality.py`):
one 64-bit DCT pHash puts 10% crops up to 28 bits from their original while distinct photographs come as
close as 12, and a 9x8 dHash does no better on crops (27 vs 10): no single hash and threshold separates them.
Crops are met by alignment instead: each image keeps the codes of six views of itself (the whole image, its
central 90%, and its four 90% corners), and a pair is compared as one image's whole view against each of
the other's views, both ways, so a crop of up to 10% is within ~5% of one view of its original. Labels and
logos pasted over a corner move the pHash a lot (up to 26 bits) but the dHash little (<= 4), and distinct
photographs that come close in one code rarely come close in the other: a pair is a near-duplicate when,
for some alignment, both the pHash and the dHash differ by at most `threshold` bits (default 14).
imagehash (pHash, dHash, wHash) would need SciPy and PyWavelets for the same few lines of DCT; OpenCV's
`img_hash` is only in the contrib build. So the codes are computed here with cv2 (`cv2.dct`, INTER_AREA).

Candidates: the 128-bit code (pHash, dHash) of every view is cut into 8 bands of 16 bits; an image's whole
view is looked up in each band, exactly and with each single bit flipped (multi-probe), against every view
of every image. A sorted array per band does the lookup (`np.searchsorted`), one band at a time, so the
index costs a few dozen bytes per image; the candidates are then verified with the full distances.

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
THRESHOLD = 14  # bits, for the pHash and the dHash alike
MAX_THRESHOLD = 32  # beyond this, unrelated photographs match (half a 64-bit code is chance)
BAND_BITS = 16
BANDS = 128 // BAND_BITS
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
    """(2, 6) uint64: the pHash (row 0) and dHash (row 1) of each view of an image (grey, BGR or BGRA)."""
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    grey = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    out = np.empty((2, len(VIEWS)), np.uint64)
    for i, (x0, y0, x1, y1) in enumerate(VIEWS):
        view = grey[round(y0 * THUMB) : round(y1 * THUMB), round(x0 * THUMB) : round(x1 * THUMB)]
        out[0, i], out[1, i] = phash(view), dhash(view)
    return out


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
    word, shift = divmod(band * BAND_BITS, 64)
    return ((codes[:, word, :] >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint32)


def _probes(values: np.ndarray) -> np.ndarray:
    """(N, 17): each value as it is and with each of its 16 bits flipped."""
    flips = np.concatenate([[0], 1 << np.arange(BAND_BITS)]).astype(values.dtype)
    return values[:, None] ^ flips[None, :]


def _lookups(keys: np.ndarray, queries: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(query row, index into sorted `keys`) of every key equal to a query; `queries` is (n, probes)."""
    rows = max(1, QUERY_CHUNK // queries.shape[1])
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        lo = np.searchsorted(keys, chunk.ravel(), "left")
        hits = np.searchsorted(keys, chunk.ravel(), "right") - lo
        if hits.any():
            who = np.repeat(np.arange(len(chunk)).repeat(chunk.shape[1]) + start, hits)
            yield who, np.repeat(lo - np.cumsum(hits) + hits, hits) + np.arange(hits.sum())


def _band_candidates(codes: np.ndarray, band: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of images where, in this band, one's whole view is within one bit of any view of the other
    (crops, both ways), or a view other than the whole is the same in both (an overlay outside it)."""
    views = _band(codes, band).astype(np.int64)  # (N, 6)
    n, k = views.shape
    order = np.argsort(views.ravel(), kind="stable")
    keys, owners = views.ravel()[order], order // k
    for who, at in _lookups(keys, _probes(views[:, 0])):
        yield who, owners[at]
    tagged = (views[:, 1:] + (np.arange(1, k) << BAND_BITS)).ravel()  # (view, value): same view only
    order = np.argsort(tagged, kind="stable")
    for who, at in _lookups(tagged[order], tagged[:, None]):
        yield who // (k - 1), order[at] // (k - 1)


def near_pairs(codes: np.ndarray, threshold: int = THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b) of near-duplicate images and their distances, from `codes` (N, 2, 6) uint64.

    Images whose codes are all identical are paired with the first of them without a lookup (a set of
    many copies would otherwise fill the buckets); the rest go through the banded index."""
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
    for band in range(BANDS):
        for q, o in _band_candidates(rep_codes, band):
            keep = q != o
            q, o = np.minimum(q[keep], o[keep]), np.maximum(q[keep], o[keep])
            if not len(q):
                continue
            pair = np.unique(q * len(reps) + o)
            q, o = pair // len(reps), pair % len(reps)
            dist = pair_distance(rep_codes, q, o)
            ok = dist <= threshold
            found_a.append(reps[q[ok]])
            found_b.append(reps[o[ok]])
            found_d.append(dist[ok])
    return _unique_pairs(np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d))


def _unique_pairs(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    key = lo * (int(hi.max(initial=0)) + 1) + hi
    _, index = np.unique(key, return_index=True)
    return lo[index], hi[index], d[index]


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The component of each of `n` items linked by the pairs (a[i], b[i]): its smallest member."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([root(i) for i in range(n)], np.int64)


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
