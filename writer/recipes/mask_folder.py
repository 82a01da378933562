"""mask-folder: your own images beside masks of the same stems (PASCAL VOC, CVAT "Segmentation mask 1.1",
index masks), each image stored byte for byte with its mask as class indices."""

import argparse
import contextlib
import ctypes
import functools
import hashlib
import json
import mmap
import os
import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segshards.writer.errors import ConfigError, SourceError, SupplyError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import file_digest, pixel_digest
from segshards.writer.format.palette import voc_palette
from segshards.writer.format.sample import class_counts
from segshards.writer.format.schema import PHOTOGRAPH_TRAINING, SampleSchema
from segshards.writer.recipes.contract import (
    SPLITS,
    UNKNOWN_LICENCE,
    Candidates,
    RecipeBase,
    Rendered,
    SourceInfo,
    add_on_error,
    seeded_permutation,
)
from segshards.writer.sources.mask_pairs import (
    IGNORE,
    UNMATCHED,
    BadPair,
    ClassMap,
    Pair,
    decode_image,
    pair_files,
    read_classes,
    read_mask,
    read_split_lists,
)

HELD_OUT_SHARE = 10  # without --val/--test: each gets 1/10 of the usable pairs
ORDER_STREAM = 6  # the permutations' stream: (seed, 6[, split]), apart from the planner's (seed, split)
CHUNK = 64  # pairs checked ahead on threads while walking the order
MASK_CACHE_BYTES = 1 << 30  # class-index PNGs kept from the walk for rendering; beyond, masks are read again
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)  # render() leaves the image undecoded: its key is the planned one


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
    threads: int
    fingerprint: str
    prepared: str | None = None


@dataclass(frozen=True)
class Checked:
    """A sound pair: its image's pixel digest and what its sample will say."""

    digest: bytes
    ext: str
    size: tuple[int, int]  # (H, W)
    classes: tuple[int, ...]  # class values present, 255 left out
    unmatched: int  # pixels whose colour was in no class
    files_sha256: tuple[str, str]  # image, mask
    mask_png: bytes | None  # the class-index mask, kept for rendering


@dataclass
class Selection:
    """The outcome of walking the pairs in split order: per split, the pairs offered to the planner
    (duplicates included, which the planner rejects in the same order), and what the manifest says."""

    pairs: list[Pair]  # every pair the folders hold, by stem; planned items index this list
    offered: dict[str, list[int]] = field(default_factory=dict)
    chosen: dict[str, list[int]] = field(default_factory=dict)
    duplicates: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (pair, earlier twin)
    checked: dict[int, Checked] = field(default_factory=dict)
    skipped: dict[str, BadPair] = field(default_factory=dict)  # stem -> its problem
    counts: dict[str, int | None] = field(default_factory=dict)
    unlisted: int = 0
    list_files: list[Path] = field(default_factory=list)


@functools.cache
def keep_large_frees() -> bool:
    """Let glibc keep freed photo-sized arrays (up to 32 MiB each, 256 MiB in all) for the next image.

    By default it maps every array above its mmap threshold afresh and unmaps it when freed: the walk's
    decoded 1280x1024 images and masks then cost ~18 ms of system time per pair in page faults, a third of
    the walk on one core. Once per process; False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):
        return False


def fingerprint(paths: Iterable[Path]) -> str:
    """sha256 of the name, size and mtime of every file under `paths`: a changed source misses the caches."""
    h = hashlib.sha256()
    for path in paths:
        if path.is_file():
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{root}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_bytes(path: Path, reason: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadPair(reason, f"{path}: cannot read ({exc.strerror or exc})") from None


def index_mask(spec: MaskFolderSpec, pair: Pair, size: tuple[int, int]) -> tuple[np.ndarray, int, str]:
    """The pair's mask as class indices, its unmatched pixels and its file's sha256."""
    path = Path(spec.masks) / pair.mask
    data = read_bytes(path, "unreadable-mask")
    raw = read_mask(data, str(path))
    if raw.shape[:2] != size:
        raise BadPair("size-mismatch", f"{path}: mask is {raw.shape[1]}x{raw.shape[0]}, its image "
                      f"{pair.image} is {size[1]}x{size[0]}")  # fmt: skip
    mask, unmatched = spec.cmap.apply(raw, str(path))
    return mask, unmatched, hashlib.sha256(data).hexdigest()


def check_pair(spec: MaskFolderSpec, pair: Pair) -> Checked | BadPair:
    """The pair's digest and facts, or its first problem."""
    try:
        path = Path(spec.images) / pair.image
        data = read_bytes(path, "unreadable-image")
        pixels, ext = decode_image(data, str(path))
        size = (pixels.shape[0], pixels.shape[1])
        mask, unmatched, mask_sha = index_mask(spec, pair, size)
        return Checked(
            digest=pixel_digest(pixels),
            ext=ext,
            size=size,
            classes=present(mask),
            unmatched=unmatched,
            files_sha256=(hashlib.sha256(data).hexdigest(), mask_sha),
            mask_png=encode_png(mask),
        )
    except BadPair as problem:
        return problem


def present(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.flatnonzero(class_counts(mask)) if v != IGNORE)


def checked(
    spec: MaskFolderSpec, pairs: list[Pair], order: list[int]
) -> Generator[tuple[int, Checked | BadPair]]:
    """(pair, outcome) along `order`, CHUNK pairs ahead on `spec.threads` threads (OpenCV decodes without
    the GIL); outcomes come in order, so the walk stays deterministic."""
    check = functools.partial(check_pair, spec)
    if spec.threads <= 1:
        yield from ((i, check(pairs[i])) for i in order)
        return
    with ThreadPoolExecutor(max_workers=spec.threads) as pool:
        for start in range(0, len(order), CHUNK):
            ahead = order[start : start + CHUNK]
            yield from zip(ahead, pool.map(check, [pairs[i] for i in ahead]), strict=True)


class Walk:
    """Fills the splits in order from a stream of checked pairs, as the planner will: problems raise or
    are skipped, a digest seen before is offered and counted as a duplicate."""

    def __init__(self, spec: MaskFolderSpec, sel: Selection) -> None:
        self.spec, self.sel = spec, sel
        self.seen: dict[bytes, int] = {}
        self.cached = 0

    def fill(
        self, split: str, count: int | None, outcomes: Iterator[tuple[int, Checked | BadPair]], *, drain: bool
    ) -> None:
        """Take outcomes until `count` unique pairs (None: all); `drain`: then the rest too, counting its
        problems and offering its duplicates (to be rejected) but no more unique pairs."""
        sel = self.sel
        offered, chosen = sel.offered.setdefault(split, []), sel.chosen.setdefault(split, [])
        dups = sel.duplicates.setdefault(split, [])
        while drain or count is None or len(chosen) < count:
            step = next(outcomes, None)
            if step is None:
                break
            i, outcome = step
            if isinstance(outcome, BadPair):
                if self.spec.on_error == "raise":
                    raise outcome
                sel.skipped[sel.pairs[i].stem] = outcome
                continue
            twin = self.seen.get(outcome.digest)
            if twin is None and count is not None and len(chosen) >= count:
                continue  # usable, but the counts are met
            offered.append(i)
            sel.checked[i] = outcome
            if twin is not None:
                dups.append((i, twin))
                continue
            self.seen[outcome.digest] = i
            chosen.append(i)
        if count is not None and len(chosen) < count:
            raise short_supply(self.spec, sel, split, count)

    def stream(self, order: list[int]) -> Generator[tuple[int, Checked | BadPair]]:
        """`checked` outcomes along `order`, each mask PNG dropped once MASK_CACHE_BYTES are held
        (rendering reads that mask again)."""
        with contextlib.closing(checked(self.spec, self.sel.pairs, order)) as outcomes:
            for i, outcome in outcomes:
                if isinstance(outcome, Checked) and (png := outcome.mask_png) is not None:
                    if self.cached + len(png) > MASK_CACHE_BYTES:
                        outcome = replace(outcome, mask_png=None)
                    else:
                        self.cached += len(png)
                yield i, outcome


def short_supply(spec: MaskFolderSpec, sel: Selection, split: str, count: int) -> SupplyError:
    earlier = sum(len(v) for s, v in sel.chosen.items() if s != split)
    where = f"{spec.split_lists}/{split}.txt" if spec.split_lists else f"{spec.images}"
    return SupplyError(
        f"--{split} {count}: {where} gives only {len(sel.chosen[split])} usable {split} pairs "
        f"(after {earlier} for earlier splits, {len(sel.skipped)} skipped and "
        f"{sum(len(v) for v in sel.duplicates.values())} duplicates)"
    )


@functools.lru_cache(maxsize=2)
def select(spec: MaskFolderSpec) -> Selection:
    """Pair the files, then check pairs along each split's order until its count is met. Each file is
    read and decoded once here; rendering decodes the image again for its key and reuses the mask."""
    keep_large_frees()
    by_stem, problems = pair_files(Path(spec.images), Path(spec.masks), spec.mask_suffix)
    sel = Selection(pairs=list(by_stem.values()))
    index = {p.stem: i for i, p in enumerate(sel.pairs)}
    walk = Walk(spec, sel)
    if spec.split_lists:
        lists, twice, sel.list_files = read_split_lists(Path(spec.split_lists))
        listed = {stem: where for entries in lists.values() for stem, where in entries}
        sel.unlisted = sum(1 for stem in [*by_stem, *problems] if stem not in listed and stem not in twice)
        problems = {
            **twice,
            **{s: problems.get(s) or unknown(s, w) for s, w in listed.items() if s not in index},
        }
        refuse(spec, sel, problems)
        for k, split in enumerate(SPLITS):
            order = seeded_permutation(
                [index[s] for s, _ in lists[split] if s in index], spec.seed, ORDER_STREAM, k
            )
            with contextlib.closing(walk.stream(order)) as outcomes:
                walk.fill(split, spec.counts[k], outcomes, drain=False)
        sel.counts = {s: len(sel.chosen[s]) for s in SPLITS}
        return sel
    refuse(spec, sel, problems)
    order = seeded_permutation(list(range(len(sel.pairs))), spec.seed, ORDER_STREAM)
    with contextlib.closing(walk.stream(order)) as stream:
        walked: Iterator[tuple[int, Checked | BadPair]] = stream
        if None in spec.counts:  # the defaults depend on how many pairs are usable: check them all first
            done = list(stream)
            walked = iter(done)
            sel.counts = default_counts(spec, done)
        else:
            sel.counts = dict(zip(SPLITS, spec.counts, strict=True))
        for k, split in enumerate(SPLITS):
            # A defaulted test split takes what is left (its planner count is None: it examines them all).
            walk.fill(split, sel.counts[split], walked, drain=split == "test" and spec.counts[k] is None)
    return sel


def unknown(stem: str, where: str) -> BadPair:
    return BadPair("unknown-stem", f"{where}: {stem}: no image and no mask of this stem")


def refuse(spec: MaskFolderSpec, sel: Selection, problems: dict[str, BadPair | None]) -> None:
    """Raise the first problem found while pairing (under --on-error raise), or count them all as skipped."""
    for stem, problem in problems.items():
        assert problem is not None
        if spec.on_error == "raise":
            raise problem
        sel.skipped[stem] = problem


def default_counts(spec: MaskFolderSpec, done: list[tuple[int, Checked | BadPair]]) -> dict[str, int | None]:
    """Counts for the options not given: val and test 1/10 each of the unique usable pairs, train the rest."""
    bad = [o for _, o in done if isinstance(o, BadPair)]
    if bad and spec.on_error == "raise":
        raise bad[0]
    unique = len({o.digest for _, o in done if isinstance(o, Checked)})
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


PAIRS_FILE, MASKS_FILE = "mask-folder-{}.json", "mask-folder-{}.bin"


def share_selection(spec: MaskFolderSpec, folder: Path) -> MaskFolderSpec:
    """Write the offered pairs and their class-index PNGs for worker processes; the file names are unique
    to this build, so a worker process kept from an earlier build never reads an earlier build's files."""
    sel = select(spec)
    tag = f"{os.getpid()}-{time.time_ns()}"
    rows: dict[str, list[Any]] = {}
    offset = 0
    with open(folder / MASKS_FILE.format(tag), "wb") as blob:
        for i in sorted(i for s in SPLITS for i in sel.offered[s]):
            c, pair = sel.checked[i], sel.pairs[i]
            png = c.mask_png or b""
            blob.write(png)
            rows[str(i)] = [pair.stem, pair.image, pair.mask, c.unmatched, c.files_sha256[0], c.ext, *c.size]
            rows[str(i)] += [offset, len(png)]
            offset += len(png)
    (folder / PAIRS_FILE.format(tag)).write_text(json.dumps(rows))
    return replace(spec, prepared=str(folder / tag))


@dataclass(frozen=True)
class Source:
    """What rendering pair `i` needs: the pair and what the walk found (its class-index PNG if kept)."""

    pair: Pair
    unmatched: int
    image_sha256: str  # of the file whose pixels the walk hashed
    ext: str
    size: tuple[int, int]
    mask_png: bytes | None


@functools.lru_cache(maxsize=2)
def shared_rows(prepared: str) -> tuple[dict[str, list[Any]], mmap.mmap | None]:
    folder, tag = Path(prepared).parent, Path(prepared).name
    rows = json.loads((folder / PAIRS_FILE.format(tag)).read_text())
    with open(folder / MASKS_FILE.format(tag), "rb") as f:
        blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else None
    return rows, blob


def source_of(spec: MaskFolderSpec, i: int) -> Source:
    if spec.prepared is None:
        sel = select(spec)
        c = sel.checked[i]
        return Source(sel.pairs[i], c.unmatched, c.files_sha256[0], c.ext, c.size, c.mask_png)
    rows, blob = shared_rows(spec.prepared)
    stem, image, mask, unmatched, sha256, ext, height, width, offset, length = rows[str(i)]
    png = blob[offset : offset + length] if length and blob is not None else None
    return Source(Pair(stem, image, mask), unmatched, sha256, ext, (height, width), png)


# ---- the recipe -------------------------------------------------------------------------------------


class MaskFolderRecipe(RecipeBase):
    """Image: the original JPEG or PNG, byte for byte. Mask: class indices (0 background, 255 ignore),
    from index, palette (VOC) or RGB (CVAT) mask files."""

    name = "mask-folder"
    summary = "your images with masks of the same stems (PASCAL VOC, CVAT segmentation masks, index masks)"
    shard_size = 1_000  # photographs: shards of ~100-300 MB, and enough of them to keep every core busy
    planned_keys = True  # render() vouches for the planned key (see render): the writer need not hash pixels
    # Photographs of any size train letterboxed to `size`, as coco-semantic's do.
    training = {**PHOTOGRAPH_TRAINING, "metrics": ["miou"]}

    def default_counts(self) -> dict[str, int | None]:
        # Resolved from the data (see `default_counts` above); the manifest records them under source.counts.
        return {"train": None, "val": None, "test": None}

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--images", required=True, metavar="DIR", help="folder of .jpg/.jpeg/.png images")
        parser.add_argument(
            "--masks", required=True, metavar="DIR", help="folder of masks named STEM + suffix"
        )
        parser.add_argument(
            "--mask-suffix", default=".png", metavar="SUFFIX", help="mask name after the stem"
        )
        parser.add_argument(
            "--classes",
            default=None,
            metavar="FILE",
            help="CVAT labelmap.txt or a JSON list of {name, color | index}; the first is background (0). "
            "Default: index masks taken as they are",
        )
        parser.add_argument(
            "--split-lists",
            default=None,
            metavar="DIR",
            help="folder of train.txt, val.txt, test.txt stem lists (VOC's ImageSets/Segmentation); "
            "default: one seeded permutation cut by --train/--val/--test (val, test 10%% each)",
        )
        parser.add_argument(
            "--unmatched",
            choices=UNMATCHED,
            default="error",
            help="an RGB mask colour not in --classes: stop (error), 255 (ignore), nearest class colour",
        )
        add_on_error(parser, "pair")

    def make_spec(self, options: argparse.Namespace) -> MaskFolderSpec:
        images, masks = Path(options.images).resolve(), Path(options.masks).resolve()
        if not options.mask_suffix:
            raise ConfigError("--mask-suffix: must not be empty")
        classes_file = Path(options.classes).resolve() if options.classes else None
        if classes_file is not None and not classes_file.is_file():
            raise ConfigError(f"--classes {options.classes}: no such file")
        lists = Path(options.split_lists).resolve() if options.split_lists else None
        cmap = ClassMap(read_classes(classes_file) if classes_file else None, options.unmatched)
        jobs = getattr(options, "jobs", 0) or 0
        return MaskFolderSpec(
            images=str(images),
            masks=str(masks),
            mask_suffix=options.mask_suffix,
            cmap=cmap,
            classes_file=str(classes_file) if classes_file else None,
            split_lists=str(lists) if lists else None,
            counts=tuple(getattr(options, s, None) for s in SPLITS),
            seed=options.seed,
            on_error=options.on_error,
            threads=jobs if jobs > 0 else os.cpu_count() or 1,
            fingerprint=fingerprint(p for p in (images, masks, classes_file, lists) if p is not None),
        )

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        spec = self.make_spec(options)
        return {
            "images": Path(spec.images).name,
            "masks": Path(spec.masks).name,
            "mask_suffix": spec.mask_suffix,
            "classes": Path(spec.classes_file).name if spec.classes_file else None,
            "classes_sha256": file_digest(Path(spec.classes_file)) if spec.classes_file else None,
            "split_lists": Path(spec.split_lists).name if spec.split_lists else None,
            "unmatched": spec.cmap.unmatched,
            "on_error": spec.on_error,
        }

    def describe(self, spec: MaskFolderSpec) -> SourceInfo:
        sel = select(spec)
        names = self.class_names(spec)
        colours = dict((i, c) for c, i in spec.cmap.targets("color"))
        classes = [
            {"class": k, "name": n, **({"color": list(colours[k])} if k in colours else {})}
            for k, n in enumerate(names)
        ]
        extra = {
            "classes": classes,
            "palette": [list(colours.get(k, c)) for k, c in enumerate(voc_palette(len(names)))],
            "pairs": {"found": len(sel.pairs), "unlisted": sel.unlisted},
            "counts": sel.counts,
            "stems": {s: [sel.pairs[i].stem for i in sel.chosen[s]] for s in SPLITS},
            "duplicates": {
                s: [
                    {"stem": sel.pairs[i].stem, "same_pixels_as": sel.pairs[j].stem}
                    for i, j in sel.duplicates[s]
                ]
                for s in SPLITS
            },
            "unmatched": unmatched_report(spec, sel),
            "skipped": skip_report(sel),
        }
        extra["notes"] = notes(spec, extra)
        mask = {"num_classes": len(names), "ignore_index": IGNORE}
        return SourceInfo("image-mask-folders", source_files(spec, sel), extra, mask, UNKNOWN_LICENCE)

    def class_names(self, spec: MaskFolderSpec) -> tuple[str, ...]:
        """--classes' names; without it, index masks name their classes by index, up to the largest seen."""
        if spec.cmap.classes is not None:
            return spec.cmap.names
        sel = select(spec)
        top = max((max(sel.checked[i].classes, default=0) for s in SPLITS for i in sel.chosen[s]), default=0)
        return tuple(str(k) for k in range(max(top + 1, 2)))

    def schema(self, spec: MaskFolderSpec) -> SampleSchema:
        """Colour images (JPEG, or PNG if none is a JPEG) of any size; mask 0 background, 255 ignore."""
        sel = select(spec)
        chosen = [sel.checked[i] for s in SPLITS for i in sel.chosen[s]]
        ext = "jpg" if any(c.ext == "jpg" for c in chosen) or not chosen else "png"
        sizes = {c.size for c in chosen}
        size = sizes.pop() if len(sizes) == 1 else None
        return SampleSchema(ext, 3, size, self.class_names(spec), ignore=IGNORE, training=self.training)

    def candidates(self, spec: MaskFolderSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        # The walk fixed each split's order (seeded by --seed), so the planner's `rng` is not used.
        sel = select(spec)
        ids = sel.offered[split]
        yield Candidates(
            items=np.array(ids, np.int64).reshape(-1, 1), digests=[sel.checked[i].digest for i in ids]
        )

    def share(self, spec: MaskFolderSpec, folder: Path, *, local: bool) -> MaskFolderSpec:
        return share_selection(spec, folder)

    def render(self, spec: MaskFolderSpec, item: np.ndarray) -> Rendered:
        """The sample of one planned pair. The image file is read again but not decoded: the walk decoded
        it and planned its key, and the file's sha256 proves these are the same bytes."""
        source = source_of(spec, int(item[0]))
        pair, unmatched = source.pair, source.unmatched
        path = Path(spec.images) / pair.image
        data = read_bytes(path, "unreadable-image")
        if hashlib.sha256(data).hexdigest() != source.image_sha256:
            raise SourceError(f"{path}: changed while the set was being built")
        if source.mask_png is not None:
            mask = cv2.imdecode(np.frombuffer(source.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
        else:
            mask, unmatched, _ = index_mask(spec, pair, source.size)
        if mask is None or mask.shape != source.size:
            raise SourceError(f"{Path(spec.masks) / pair.mask}: changed while the set was being built")
        meta = {
            "stem": pair.stem,
            "image": pair.image,
            "mask": pair.mask,
            "width": source.size[1],
            "height": source.size[0],
            "classes": list(present(mask)),
            "unmatched_pixels": unmatched,
        }
        return Rendered(image=NO_PIXELS, mask=mask, meta=meta, image_ext=source.ext, image_bytes=data)

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return [int(c) for c in meta["classes"]]


def unmatched_report(spec: MaskFolderSpec, sel: Selection) -> dict[str, Any]:
    """Pixels and masks whose colours were in no class, per split of the set, and what became of them."""
    pixels = {s: sum(sel.checked[i].unmatched for i in sel.chosen[s]) for s in SPLITS}
    masks = {s: sum(sel.checked[i].unmatched > 0 for i in sel.chosen[s]) for s in SPLITS}
    became = {
        "error": "none (the build stops)",
        "ignore": "255 (ignore)",
        "nearest": "the nearest class colour",
    }
    return {
        "policy": spec.cmap.unmatched,
        "became": became[spec.cmap.unmatched],
        "pixels": pixels,
        "masks": masks,
    }


def skip_report(sel: Selection) -> dict[str, Any]:
    """Pairs left out under --on-error skip: counts and stems per reason, and the first message of each."""
    stems: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for stem, problem in sorted(sel.skipped.items()):
        stems.setdefault(problem.reason, []).append(stem)
        first.setdefault(problem.reason, str(problem))
    return {
        "counts": {r: len(v) for r, v in sorted(stems.items())},
        "stems": dict(sorted(stems.items())),
        "first": dict(sorted(first.items())),
    }


def notes(spec: MaskFolderSpec, extra: dict[str, Any]) -> list[str]:
    """Lines for the card: what was altered, rejected or left out on the way from the folders to the set."""
    u = extra["unmatched"]
    out = [
        f"mask pixels with a colour in no class (--unmatched {u['policy']}): "
        f"{sum(u['pixels'].values()):,} pixels in {sum(u['masks'].values()):,} masks, made {u['became']}; "
        + ", ".join(f"{s} {u['pixels'][s]:,} px / {u['masks'][s]:,} masks" for s in SPLITS)
    ]
    dups = extra["duplicates"]
    out.append(
        "images rejected as pixel-identical to an earlier image (split order train, val, test): "
        + ", ".join(f"{s} {len(dups[s])}" for s in SPLITS)
        + "".join(f"; {d['stem']} ({s}) = {d['same_pixels_as']}" for s in SPLITS for d in dups[s][:5])
    )
    skipped = extra["skipped"]["counts"]
    if skipped:
        out.append("pairs left out (--on-error skip): " + ", ".join(f"{r} {n}" for r, n in skipped.items()))
    if spec.split_lists:
        out.append(f"files of stems in no split list (not used): {extra['pairs']['unlisted']:,}")
    return out


def source_files(spec: MaskFolderSpec, sel: Selection) -> list[dict[str, Any]]:
    """The classes file and split lists with their checksums, and per folder the files read: their count,
    bytes and the sha256 of the sorted `path sha256` lines."""
    files = [
        {"name": p.name, "bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in [*([Path(spec.classes_file)] if spec.classes_file else []), *sel.list_files]
    ]
    used = sorted(i for s in SPLITS for i in sel.offered[s])
    for k, (folder, attr) in enumerate(((spec.images, "image"), (spec.masks, "mask"))):
        lines = "".join(f"{getattr(sel.pairs[i], attr)} {sel.checked[i].files_sha256[k]}\n" for i in used)
        total = sum((Path(folder) / getattr(sel.pairs[i], attr)).stat().st_size for i in used)
        files.append({
            "name": f"{Path(folder).name}/ ({len(used):,} files)",
            "bytes": total,
            "sha256": hashlib.sha256(lines.encode()).hexdigest(),
        })  # fmt: skip
    return files
