"""Near-duplicates at build time: the `--near-duplicates` modes, the perceptual codes of a rendered or a
stored sample (the very codes `segshards audit` computes from the shard), and an index of the codes of the
candidates examined, which grows one candidate batch at a time.

The codes and the distance are `segshards.writer.share.near_duplicates`' (a pHash and a dHash of six views
per image, 14 bits). The index finds the same candidate pairs as its banded search, in both directions,
since a new image must be compared with images indexed before it: in each band, the new image's whole
view within one bit of any view of an indexed image, any of its views within one bit of an indexed
whole view, and each other view equal to the same view; each candidate is verified with the full distance.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segshards.writer.errors import ConfigError
from segshards.writer.format.images import MEMBER_KINDS
from segshards.writer.format.sample import Rendered
from segshards.writer.format.schema import SampleSchema
from segshards.writer.share.near_duplicates import (
    BAND_BITS,
    BANDS,
    FLIPS,
    PER_WORD,
    THRESHOLD,
    VIEWS,
    image_codes,
    pair_distance,
    payload_codes,
)

MODES = ("off", "report", "reject")
NO_CODES = np.zeros((0, 2, len(VIEWS)), np.uint64)


def check_mode(mode: Any, option: str = "--near-duplicates") -> None:
    """Refuse a mode that is none of MODES (None: the schema's default), naming the option."""
    if mode is not None and mode not in MODES:
        shown = mode if option.startswith("--") else repr(mode)
        raise ConfigError(f"{option} {shown}: must be one of {', '.join(MODES)}")


def resolved_mode(mode: str | None, schema: SampleSchema) -> str:
    """The mode asked for, or the default: `report` for colour images (photographs), `off` for grey ones,
    whose renderings (MNIST digits) look alike by nature."""
    if mode is not None:
        return mode
    return "report" if schema.channels >= 3 else "off"


def sample_codes(sample: Rendered, where: str) -> np.ndarray:
    """(2, 6) codes of a rendered sample: of its image bytes as stored (decoded as `audit` decodes them),
    else of its pixels (which its PNG gives back unchanged)."""
    if sample.image_bytes is not None:
        return payload_codes(sample.image_bytes, sample.image_ext, where)
    return image_codes(sample.image)


def stored_codes(payload: bytes, ext: str, pixels: np.ndarray, where: str) -> np.ndarray:
    """(2, 6) codes of a stored image member whose decoded `pixels` are at hand: a JPEG decoded again at
    the reduced scale `sample_codes` used, any other image from its pixels."""
    if MEMBER_KINDS.get(ext) == "jpeg":
        return payload_codes(payload, ext, where)
    return image_codes(pixels)


def band_values(codes: np.ndarray, band: int) -> np.ndarray:
    """(N, 6) uint32: the `band`-th BAND_BITS of each view's (pHash, dHash) code, as the audit's index cuts them."""
    word, index = divmod(band, PER_WORD)
    mask = np.uint64((1 << BAND_BITS) - 1)
    return ((codes[:, word, :] >> np.uint64(index * BAND_BITS)) & mask).astype(np.uint32)


def lookup(keys: np.ndarray, owners: np.ndarray, probes: np.ndarray, who: np.ndarray) -> np.ndarray:
    """(prober, owner) pairs of every sorted key equal to a probe; `who[i]` is probe i's prober."""
    lo = np.searchsorted(keys, probes, "left")
    hits = np.searchsorted(keys, probes, "right") - lo
    total = int(hits.sum())
    if not total:
        return np.zeros((0, 2), np.int64)
    offsets = np.arange(total) - np.repeat(np.cumsum(hits) - hits, hits)
    return np.stack([np.repeat(who, hits), owners[np.repeat(lo, hits) + offsets]], axis=1)


VIEW_TAGS = np.arange(len(VIEWS), dtype=np.uint32) << BAND_BITS  # a view's number above its band value
BAND_TAGS = np.arange(BANDS, dtype=np.uint32)[:, None, None] << (BAND_BITS + 3)  # and the band's above both


def tagged_bands(codes: np.ndarray) -> np.ndarray:
    """(BANDS, N, 6) uint32: each band value of each view, with its band's number above it (so that one
    sorted table holds every band)."""
    return np.stack([band_values(codes, band) for band in range(BANDS)])


class Run:
    """The banded tables of the indexed images `lo..hi`, every band in one table (band numbers above the
    values): every view, the whole view, and each other view tagged with its number, each as sorted
    values with their images."""

    def __init__(self, codes: np.ndarray, lo: int) -> None:
        self.lo, self.hi = lo, lo + len(codes)
        ids = np.arange(self.lo, self.hi)
        views = len(VIEWS)
        values = tagged_bands(codes)  # (BANDS, n, views)
        parts = [
            (values + BAND_TAGS, np.tile(np.repeat(ids, views), BANDS)),
            (values[:, :, 0] + BAND_TAGS[:, :, 0], np.tile(ids, BANDS)),
            (values[:, :, 1:] + VIEW_TAGS[1:] + BAND_TAGS, np.tile(np.repeat(ids, views - 1), BANDS)),
        ]
        self.every, self.whole, self.tagged = (sorted_table(v.ravel(), o) for v, o in parts)

    def candidates(self, values: np.ndarray) -> list[np.ndarray]:
        """(query row, indexed image) pairs that share a band value as the module docstring says, for the
        queries' `tagged_bands` (BANDS, m, views)."""
        rows = np.arange(values.shape[1], dtype=np.int64)[None, :, None]
        shape = values.shape
        flips = FLIPS[None, None, :]
        probe = (values[:, :, :1] ^ flips) + BAND_TAGS  # whole view, one bit flipped, vs every view
        found = [lookup(*self.every, probe.ravel(), np.broadcast_to(rows, probe.shape).ravel())]
        probe = (values[..., None] ^ flips[..., None, :]) + BAND_TAGS[..., None]  # any view vs whole views
        found.append(
            lookup(*self.whole, probe.ravel(), np.broadcast_to(rows[..., None], probe.shape).ravel())
        )
        mine = values[:, :, 1:] + VIEW_TAGS[1:] + BAND_TAGS  # each other view vs the same view
        found.append(
            lookup(*self.tagged, mine.ravel(), np.broadcast_to(rows, (*shape[:2], shape[2] - 1)).ravel())
        )
        return found


def size(run: Run) -> int:
    return run.hi - run.lo


def sorted_table(values: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    return values[order], owners[order]


class NearIndex:
    """The codes of every image examined so far, admitted or left out, and their banded index: runs whose
    sizes shrink from the oldest, a run merged with the one before it (built again from the codes) once
    that one is no larger, as a binary counter carries: each image is indexed O(log N) times, a lookup
    searches O(log N) runs."""

    def __init__(self, threshold: int = THRESHOLD) -> None:
        self.threshold = threshold
        self.codes = np.zeros((1024, 2, len(VIEWS)), np.uint64)
        self.count = 0
        self.runs: list[Run] = []

    def near(self, query: np.ndarray) -> np.ndarray:
        """Whether each (2, 6) code of `query` is within the threshold of an image examined before."""
        values = tagged_bands(query)
        return self.close(query, [part for run in self.runs for part in run.candidates(values)])

    def close(
        self, query: np.ndarray, found: list[np.ndarray], among: np.ndarray | None = None
    ) -> np.ndarray:
        """Whether each query row has a candidate pair in `found` within the threshold: pairs with an
        indexed image, or with an earlier query row when `among` (the query itself) is given."""
        out = np.zeros(len(query), bool)
        pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
        if among is not None:
            pairs = pairs[pairs[:, 1] < pairs[:, 0]]
        if len(pairs):
            rows, k = pairs[:, 0], len(pairs)
            others = among[pairs[:, 1]] if among is not None else self.codes[pairs[:, 1]]
            near = pair_distance(np.concatenate([query[rows], others]), np.arange(k), np.arange(k, 2 * k))
            out[rows[near <= self.threshold]] = True
        return out

    def admit(self, query: np.ndarray) -> np.ndarray:
        """Which of `query`, taken in order, are near no image examined before them (here or in `query`):
        the first of each group wins, and a copy of a left-out copy is left out too, as `audit` links
        them into one group. All of `query` is added."""
        keep = ~self.near(query)
        if len(query) > 1:  # within the batch, the pairs the index would find were they added one by one
            keep &= ~self.close(query, Run(query, 0).candidates(tagged_bands(query)), among=query)
        self.add(query)
        return keep

    def add(self, codes: np.ndarray) -> None:
        if not len(codes):
            return
        while self.count + len(codes) > len(self.codes):
            self.codes = np.concatenate([self.codes, np.zeros_like(self.codes)])
        self.codes[self.count : self.count + len(codes)] = codes
        self.runs.append(Run(codes, self.count))
        self.count += len(codes)
        while len(self.runs) > 1 and size(self.runs[-2]) <= size(self.runs[-1]):
            top, below = self.runs.pop(), self.runs.pop()
            self.runs.append(Run(self.codes[below.lo : top.hi], below.lo))


@dataclass(frozen=True)
class WalkCheck:
    """What a photo walk needs under `reject`, set in its spec (`near`): the codes of each image it decodes
    (in its worker processes) and, where it fills the splits, a check that admits an image's codes unless
    they are near those admitted before. Stateless, so a spec holding it still pickles and caches by value."""

    threshold: int = THRESHOLD
    reject: bool = True  # False (`report`): the codes only, handed to the planner with the candidates

    def codes(self, pixels: np.ndarray) -> np.ndarray:
        return image_codes(pixels)

    def index(self) -> Callable[[np.ndarray], bool] | None:
        if not self.reject:
            return None
        examined = NearIndex(self.threshold)
        return lambda codes: bool(examined.admit(codes[None])[0])


def walks_photos(spec: Any) -> bool:
    """Whether `spec` is a photo walk's, which takes a `WalkCheck` (a `near` field)."""
    fields = dataclasses.fields(spec) if dataclasses.is_dataclass(spec) and not isinstance(spec, type) else ()
    return any(f.name == "near" for f in fields)


def with_walk_check(spec: Any, mode: str | None) -> Any:
    """`spec` with a `WalkCheck` when its recipe's walk takes one, unless `mode` is off: the walk computes
    each image's codes from the pixels it decodes (for `report` too, its default: photographs), and leaves
    near-duplicates out under `reject`."""
    if not walks_photos(spec) or spec.near is not None or (mode or "report") == "off":
        return spec
    return dataclasses.replace(spec, near=WalkCheck(reject=mode == "reject"))
