"""One slice of a dedup index partitioned by digest prefix, and a split's candidate stream, as dask actors.

`IndexPartition` holds the accepted digests whose top bits name it, as sorted runs of two uint64 halves
(16 bytes a digest), and answers in two phases so that it records exactly what the central index would:
`step` first commits the digests of its previous probe that the coordinator accepted, then probes a new
slice of candidates (new = in neither the index nor earlier in that slice) without recording any.
`CandidateDrawer` runs a recipe's seeded candidate stream on a worker, so candidates are composed and
hashed there, not in the coordinator. Both are plain classes: `distributed` makes them actors.
"""

import os
import resource
from dataclasses import dataclass

import numpy as np

from segshards.writer.build.plan import split_rng
from segshards.writer.recipes.registry import load_ref

PREFIX_BITS = 16  # the digest bits that pick a partition


def digest_words(digests: list[bytes]) -> np.ndarray:
    """(n, 2) uint64: each 16-byte digest as its big-endian high and low halves."""
    return np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2).astype(np.uint64)


def words_hex(words: np.ndarray) -> list[str]:
    """The hex key of each (high, low) row: `digest.hex()` of the 16 bytes it came from."""
    text = words.astype(">u8").tobytes().hex()
    return [text[i : i + 32] for i in range(0, len(text), 32)]


def owners(words: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each digest, from its top 16 bits (xxh3 digests are uniform, so partitions fill evenly)."""
    top = words[:, 0] >> np.uint64(64 - PREFIX_BITS)
    return ((top * np.uint64(partitions)) >> np.uint64(PREFIX_BITS)).astype(np.intp)


def first_occurrence(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """True at each digest that does not occur earlier in (hi, lo)."""
    order = np.lexsort((lo, hi))  # stable: equal digests stay in their original order
    h, lo_sorted = hi[order], lo[order]
    repeat = (h[1:] == h[:-1]) & (lo_sorted[1:] == lo_sorted[:-1])
    first = np.ones(len(hi), bool)
    first[order[1:][repeat]] = False
    return first


Run = tuple[np.ndarray, np.ndarray]  # (high, low) halves, sorted by high


def merge_runs(a: Run, b: Run) -> Run:
    """Two runs sorted by high half merged into one (b's entries after a's equal highs)."""
    pos = np.searchsorted(a[0], b[0], "right") + np.arange(len(b[0]))
    from_b = np.zeros(len(a[0]) + len(b[0]), bool)
    from_b[pos] = True
    merged = []
    for old, new in zip(a, b, strict=True):
        out = np.empty(len(from_b), np.uint64)
        out[pos] = new
        out[~from_b] = old
        merged.append(out)
    return merged[0], merged[1]


class DigestRuns:
    """A set of 16-byte digests as sorted runs of (high, low) uint64 arrays, merged like a binary counter:
    16 bytes a digest, O(log n) runs, each lookup a vectorised binary search per run."""

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def __len__(self) -> int:
        return sum(len(run[0]) for run in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(run[0].nbytes + run[1].nbytes for run in self.runs)

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """True for each (hi, lo) digest held."""
        order = np.argsort(hi)  # sorted queries: the binary searches walk each run once
        qh, ql = hi[order], lo[order]
        found = np.zeros(len(hi), bool)
        for run_hi, run_lo in self.runs:
            left = np.searchsorted(run_hi, qh, "left")
            right = np.searchsorted(run_hi, qh, "right")
            one = np.flatnonzero(right - left == 1)
            found[one] |= run_lo[left[one]] == ql[one]
            for i in np.flatnonzero(right - left > 1):  # equal high halves: compare the low halves
                found[i] |= bool((run_lo[left[i] : right[i]] == ql[i]).any())
        out = np.empty_like(found)
        out[order] = found
        return out

    def add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """Add digests that are neither held nor repeated among themselves."""
        if len(hi) == 0:
            return
        order = np.argsort(hi, kind="stable")
        self.runs.append((hi[order], lo[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= len(self.runs[-1][0]):
            newer, older = self.runs.pop(), self.runs.pop()
            self.runs.append(merge_runs(older, newer))


class IndexPartition:
    """A dask actor: the digests of one prefix range, probed and committed in two phases."""

    def __init__(self) -> None:
        self.index = DigestRuns()
        self.pending: np.ndarray | None = None  # (n, 2) digests of the last probe, not yet recorded

    def step(self, keep: np.ndarray | None, words: np.ndarray) -> np.ndarray:
        """Record the last probe's digests at `keep` (bool), then probe `words` (n, 2), global order kept:
        True where a digest is new, i.e. neither recorded nor earlier among `words`. Records nothing new."""
        if keep is not None and self.pending is not None:
            kept = self.pending[keep]
            self.index.add(kept[:, 0].copy(), kept[:, 1].copy())
        hi, lo = words[:, 0], words[:, 1]
        self.pending = words
        return first_occurrence(hi, lo) & ~self.index.contains(hi, lo)

    def stats(self) -> tuple[int, int, int, int]:
        """(digests recorded, their bytes, this worker's process id, its peak resident bytes)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        return len(self.index), self.index.nbytes, os.getpid(), peak


@dataclass(frozen=True)
class Round:
    """Consecutive candidate batches of one split: rows (n, k), digests (n, 2) uint64, each batch's length."""

    items: np.ndarray
    words: np.ndarray
    lengths: tuple[int, ...]


class CandidateDrawer:
    """A split's candidate stream, drawn (and its images hashed) where it runs: on a worker as an actor,
    or in the coordinator for recipes whose candidates come from a walk already done there."""

    def __init__(self, recipe: str, spec: object, split: str, seed: int, round_size: int) -> None:
        self.batches = load_ref(recipe).candidates(spec, split, split_rng(seed, split))
        self.round_size = round_size

    def draw(self) -> Round:
        """The next batches, at least `round_size` candidates unless the stream ends (none: it has ended)."""
        items, words, lengths = [], [], []
        for batch in self.batches:
            items.append(batch.items)
            words.append(digest_words(batch.digests))
            lengths.append(len(batch.items))
            if sum(lengths) >= self.round_size:
                break
        if not lengths:
            return Round(np.zeros((0, 1), np.int64), np.zeros((0, 2), np.uint64), ())
        return Round(np.concatenate(items), np.concatenate(words), tuple(lengths))
