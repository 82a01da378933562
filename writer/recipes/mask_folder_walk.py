"""mask-folder's walk: the spec, the checks of one image + mask pair, the splits' orders and default
counts, and what rendering reads of the chosen pairs (see `segshards.writer.recipes.walk`)."""

import contextlib
import functools
import hashlib
import os
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segshards.writer.errors import StorageError, SupplyError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import pixel_digest
from segshards.writer.format.sample import class_counts
from segshards.writer.format.schema import IGNORE
from segshards.writer.recipes.contract import SPLITS, seeded_permutation
from segshards.writer.recipes.walk import (
    Checked,
    Outcome,
    Prepared,
    Selection,
    Walk,
    blobs_of,
    load_prepared,
    outcomes,
    short_supply,
)
from segshards.writer.sources import locations
from segshards.writer.sources.class_map import ClassMap, read_mask
from segshards.writer.sources.mask_pairs import BadPair, Pair, pair_files, read_split_lists
from segshards.writer.sources.photos import BadRecord, decode_photo

HELD_OUT_SHARE = 10  # without --val/--test: each gets 1/10 of the usable pairs
ORDER_STREAM = 6  # the permutations' stream: (seed, 6[, split]), apart from the planner's (seed, split)
PAIR_RUN = 4  # pairs a walker checks in one call: ~0.2 s of work for 1280x1024 photos
MASK_CACHE_BYTES = 1 << 30  # class-index PNGs kept from the walk for rendering; beyond, masks are read again


@dataclass(frozen=True)
class MaskFolderSpec:
    """Where the folders are and how to cut them; `fingerprint` (of every file's name, size and mtime)
    keys the per-process caches, `prepared` is the walk's outcome written for worker processes."""

    images: str
    masks: str
    mask_suffix: str
    cmap: ClassMap
    classes_file: str | None
    split_lists: str | None
    counts: tuple[int | None, ...]  # train, val, test; None: the default
    seed: int
    on_error: str
    jobs: int  # processes that check pairs while walking (--jobs, capped; 0 = all cores)
    fingerprint: str
    prepared: str | None = None
    near: Any = None  # set by the build under --near-duplicates reject: `codes(pixels)` and `index()`


class PairFacts(NamedTuple):
    """The facts of a sound pair (`Checked.facts`): what its sample will say. The walk's `Checked` holds
    the image's pixel digest (its key), its file's sha256 and the class-index mask PNG (its blob)."""

    ext: str
    size: tuple[int, int]  # (H, W)
    classes: tuple[int, ...]  # class values present, 255 left out
    unmatched: int  # pixels whose colour was in no class
    mask_sha256: str


@dataclass
class FolderSelection(Selection):
    """The walk's outcome (items index `pairs`, skipped problems are named by stem), and what the
    manifest says of the folders."""

    pairs: list[Pair] = field(default_factory=list)  # every pair the folders hold, by stem
    counts: dict[str, int | None] = field(default_factory=dict)
    unlisted: int = 0
    list_files: list[str] = field(default_factory=list)


def fingerprint(paths: Iterable[str]) -> str:
    """sha256 of the name, size and mtime (a remote file's ETag) of every file under `paths`: a changed
    source misses the caches."""
    h = hashlib.sha256()
    for location in paths:
        if locations.is_remote(location):
            h.update(remote_fingerprint(location).encode())
            continue
        path = Path(location)
        if path.is_file():
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{root}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def remote_fingerprint(location: str) -> str:
    """The name, size and version of a remote file, or of every file under a remote s3:// folder."""
    if locations.is_http(location):  # a classes file, or a folder of split lists (never listed)
        files = [location, *(locations.join(location, f"{s}.txt") for s in SPLITS)]
        found = [(f, *locations.stat(f)) for f in files if locations.is_file(f)]
        return "".join(f"{f}\0{size}\0{version}\n" for f, size, version in found)
    if locations.is_file(location):
        size, version = locations.stat(location)
        return f"{location}\0{size}\0{version}\n"
    return "".join(f"{location}/{n}\0{s}\0{v}\n" for n, (s, v) in locations.listing(location).items())


def read_bytes(path: str, reason: str) -> bytes:
    """A source file's bytes; a missing or unreadable one is the pair's problem (`reason`), while a
    remote store that refuses or cannot be reached stops the build (its StorageError names the URL)."""
    try:
        return locations.read(path)
    except StorageError as exc:
        if not exc.missing:
            raise
        raise BadPair(reason, f"{path}: cannot read (not found)") from None
    except OSError as exc:
        raise BadPair(reason, f"{path}: cannot read ({exc.strerror or exc})") from None


def index_mask(spec: MaskFolderSpec, pair: Pair, size: tuple[int, int]) -> tuple[np.ndarray, int, str]:
    """The pair's mask as class indices, its unmatched pixels and its file's sha256."""
    path = locations.join(spec.masks, pair.mask)
    data = read_bytes(path, "unreadable-mask")
    raw = read_mask(data, path)
    if raw.shape[:2] != size:
        raise BadPair("size-mismatch", f"{path}: mask is {raw.shape[1]}x{raw.shape[0]}, its image "
                      f"{pair.image} is {size[1]}x{size[0]}")  # fmt: skip
    mask, unmatched = spec.cmap.apply(raw, path)
    return mask, unmatched, hashlib.sha256(data).hexdigest()


def check_pair(spec: MaskFolderSpec, pair: Pair) -> Checked:
    """The pair's key, file digest, facts and class-index PNG; BadRecord for its first problem."""
    path = locations.join(spec.images, pair.image)
    data = read_bytes(path, "unreadable-image")
    pixels, ext = decode_photo(data, path, kinds=("jpg", "png"), frame="its mask")
    size = (pixels.shape[0], pixels.shape[1])
    mask, unmatched, mask_sha = index_mask(spec, pair, size)
    facts = PairFacts(ext, size, present(mask), unmatched, mask_sha)
    codes = spec.near.codes(pixels) if spec.near is not None else None
    return Checked(pixel_digest(pixels), hashlib.sha256(data).digest(), facts, encode_png(mask), codes)


def check_pairs(work: tuple[MaskFolderSpec, list[Pair]]) -> list[Outcome]:
    """A run of pairs checked by one walker (a worker process, or this one); problems are returned."""
    spec, pairs = work
    found: list[Outcome] = []
    files = [locations.join(spec.images, p.image) for p in pairs] + [
        locations.join(spec.masks, p.mask) for p in pairs
    ]
    with locations.prefetched(files):
        for pair in pairs:
            try:
                found.append(check_pair(spec, pair))
            except BadRecord as problem:
                found.append(problem)
    return found


def present(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.flatnonzero(class_counts(mask)) if v != IGNORE)


def walked(
    spec: MaskFolderSpec, sel: FolderSelection, walk: Walk, order: list[int]
) -> Generator[tuple[int, Outcome]]:
    """The outcomes along `order`, checked on the build's processes, mask PNGs held within the budget."""
    runs = outcomes(
        order, lambda r: (spec, [sel.pairs[i] for i in r]), check_pairs, jobs=spec.jobs, run=PAIR_RUN
    )
    return walk.budgeted(runs)


@functools.lru_cache(maxsize=2)
def select(spec: MaskFolderSpec) -> FolderSelection:
    """Pair the files, then check pairs along each split's order until its count is met. Each file is
    read and decoded once here; rendering reads the image again (not decoding it) and reuses the mask."""
    by_stem, problems = pair_files(spec.images, spec.masks, spec.mask_suffix)
    sel = FolderSelection(pairs=list(by_stem.values()))
    near = spec.near.index() if spec.near is not None else None
    walk = Walk(
        sel, on_error=spec.on_error, name=lambda i: sel.pairs[i].stem, budget=MASK_CACHE_BYTES, near=near
    )
    if spec.split_lists:
        select_listed(spec, sel, walk, problems, by_stem.keys())
        return sel
    for stem, problem in problems.items():
        sel.problem(stem, problem, spec.on_error)
    order = seeded_permutation(list(range(len(sel.pairs))), spec.seed, ORDER_STREAM)
    with contextlib.closing(walked(spec, sel, walk, order)) as stream:
        done: Iterator[tuple[int, Outcome]] = stream
        if None in spec.counts:  # the defaults depend on how many pairs are usable: check them all first
            everything = list(stream)
            done = iter(everything)
            sel.counts = default_counts(spec, everything)
        else:
            sel.counts = dict(zip(SPLITS, spec.counts, strict=True))
        for k, split in enumerate(SPLITS):
            # A defaulted test split takes what is left (its planner count is None: it examines them all).
            count = sel.counts[split]
            if not walk.fill(split, count, done, drain=split == "test" and spec.counts[k] is None):
                raise short_supply(sel, split, count or 0, f"{spec.images} holds {len(sel.pairs)} pairs")
    return sel


def select_listed(
    spec: MaskFolderSpec, sel: FolderSelection, walk: Walk, problems: dict[str, BadPair], stems: Iterable[str]
) -> None:
    """The splits of --split-lists: each list's stems in an order of its own, cut to its count."""
    assert spec.split_lists is not None
    lists, twice, sel.list_files = read_split_lists(spec.split_lists)
    index = {p.stem: i for i, p in enumerate(sel.pairs)}
    listed = {stem: where for entries in lists.values() for stem, where in entries}
    sel.unlisted = sum(1 for stem in [*stems, *problems] if stem not in listed and stem not in twice)
    unknown = {s: problems.get(s) or unknown_stem(s, w) for s, w in listed.items() if s not in index}
    for stem, problem in {**twice, **unknown}.items():
        sel.problem(stem, problem, spec.on_error)
    for k, split in enumerate(SPLITS):
        order = seeded_permutation(
            [index[s] for s, _ in lists[split] if s in index], spec.seed, ORDER_STREAM, k
        )
        with contextlib.closing(walked(spec, sel, walk, order)) as stream:
            count = spec.counts[k]
            if not walk.fill(split, count, stream):
                where = f"{spec.split_lists}/{split}.txt lists {len(lists[split])} stems"
                raise short_supply(sel, split, count or 0, where)
    sel.counts = {s: len(sel.chosen[s]) for s in SPLITS}


def unknown_stem(stem: str, where: str) -> BadPair:
    return BadPair("unknown-stem", f"{where}: {stem}: no image and no mask of this stem")


def default_counts(spec: MaskFolderSpec, done: list[tuple[int, Outcome]]) -> dict[str, int | None]:
    """Counts for the options not given: val and test 1/10 each of the unique usable pairs, train the rest."""
    bad = [o for _, o in done if isinstance(o, BadRecord)]
    if bad and spec.on_error == "raise":
        raise bad[0]
    unique = len({o.key for _, o in done if isinstance(o, Checked)})
    if not unique:
        raise SupplyError(f"{spec.images}: no usable pairs ({len(bad)} left out, see --on-error)")
    train, val, test = spec.counts
    val = unique // HELD_OUT_SHARE if val is None else val
    test = unique // HELD_OUT_SHARE if test is None else test
    if train is None:
        train = unique - val - test
        if train < 0:
            raise SupplyError(
                f"--val {val} --test {test}: {spec.images} has only {unique} usable unique pairs"
            )
    return {"train": train, "val": val, "test": test}


# ---- what workers render from -------------------------------------------------------------------------


class Source(NamedTuple):
    """What rendering pair `i` needs: the pair, what the walk found, and its class-index PNG if kept."""

    pair: Pair
    checked: Checked


@functools.lru_cache(maxsize=2)
def prepared(spec: MaskFolderSpec) -> Prepared:
    """The chosen pairs with what the walk found: from the file `share` wrote, or from the selection."""
    if spec.prepared is not None:
        return load_prepared(spec.prepared)
    sel = select(spec)
    chosen = sorted(i for s in SPLITS for i in sel.chosen[s])
    rows = {i: (sel.pairs[i], sel.checked[i]._replace(blob=None)) for i in chosen}
    return Prepared(None, rows, blobs_of(sel, chosen))


def source_of(spec: MaskFolderSpec, i: int) -> Source:
    prep = prepared(spec)
    pair, checked = prep.rows[i]
    return Source(pair, checked._replace(blob=prep.blob(i)))
