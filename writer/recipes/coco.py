"""coco-semantic: a seeded subset of COCO images with class-index masks rendered from instance annotations."""

import argparse
import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xxhash
from joblib import cpu_count

from segshards.writer.errors import ConfigError, SourceError, StorageError
from segshards.writer.format.keys import pixel_digest
from segshards.writer.format.palette import voc_palette
from segshards.writer.format.schema import IGNORE, PHOTOGRAPH_TRAINING, SampleSchema
from segshards.writer.recipes.contract import (
    SPLITS,
    Candidates,
    Licence,
    RecipeBase,
    Rendered,
    SourceInfo,
    add_on_error,
    seeded_permutation,
)
from segshards.writer.recipes.walk import (
    Checked,
    Outcome,
    Prepared,
    Selection,
    Walk,
    load_prepared,
    outcomes,
    share_prepared,
    short_supply,
    tally,
)
from segshards.writer.sources import locations
from segshards.writer.sources.coco_annotations import Annotation, CocoIndex, ImageRecord, load_index
from segshards.writer.sources.coco_masks import OVERLAPS, Instance, annotation_rle, compose
from segshards.writer.sources.photos import BadRecord, decode_photo

DEFAULT_COUNTS = {"train": 8000, "val": 500, "test": 500}
SELECTION_STREAM = 5  # the permutation's stream: (seed, 5), apart from the planner's (seed, split 0..2)
WALK_RUN = 16  # images a walker checks in one call: ~50 ms of work, a few hundred KB of annotations to pickle
PREPARED = "coco-prepared"
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)  # render() leaves the JPEG undecoded: its key is the planned one


@dataclass(frozen=True)
class CocoSpec:
    """Where the source is and how to cut it; `prepared` is what the walk found, written for workers."""

    annotations: str
    images: str
    categories: tuple[str, ...] | None
    overlap: str
    on_error: str
    seed: int
    counts: tuple[int | None, ...]  # train, val, test
    sha256: str  # of the annotation file: keys the per-process caches
    jobs: int = 1  # processes that check images while walking (--jobs; 0 = all cores)
    prepared: str | None = None  # what workers render from (see `share`)
    near: Any = None  # set by the build under --near-duplicates reject: `codes(pixels)` and `index()`


class Instances(NamedTuple):
    """The facts of a checked image (`Checked.facts`): its checked instances, column by column. A few
    values per image pickle ~10x faster than a record and an RLE dict per instance, and every chosen
    image's are pickled twice (worker to walk, walk to renderers)."""

    classes: bytes  # per instance: its contiguous class
    crowd: bytes  # per instance: 1 for a crowd region
    ann_ids: tuple[int, ...]
    counts: tuple[bytes, ...]  # per instance: its compressed RLE counts

    @classmethod
    def of(cls, found: list[Instance]) -> "Instances":
        return cls(
            bytes(i.cls for i in found),
            bytes(i.crowd for i in found),
            tuple(i.ann_id for i in found),
            tuple(i.rle["counts"] for i in found),
        )

    def instances(self, record: ImageRecord) -> list[Instance]:
        size = [record.height, record.width]
        columns = zip(self.classes, self.crowd, self.ann_ids, self.counts, strict=True)
        return [Instance(c, bool(k), a, {"size": size, "counts": n}) for c, k, a, n in columns]


def spec_index(spec: CocoSpec) -> CocoIndex:
    return load_index(spec.annotations, spec.categories, spec.on_error, spec.sha256)


def read_image(folder: str, record: ImageRecord, where: str) -> bytes:
    """The image file's bytes, or a BadRecord for a missing or unreadable file."""
    try:
        return locations.read(locations.join(folder, record.file_name))
    except StorageError as exc:
        if not exc.missing:
            raise  # a store that refuses or cannot be reached stops the build: one line naming the URL
        raise BadRecord(
            "missing-image", f"{where}: image {record.id}: file {record.file_name} not found"
        ) from None
    except FileNotFoundError:
        raise BadRecord(
            "missing-image", f"{where}: image {record.id}: file {record.file_name} not found"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BadRecord(
            "unreadable-image", f"{where}: image {record.id}: cannot read {record.file_name} ({reason})"
        ) from None


def decode_jpeg(data: bytes, record: ImageRecord, where: str) -> np.ndarray:
    """(H, W, 3) BGR pixels as `segshards verify` decodes them (`decode_photo`), of the record's size."""
    where = f"{where}: image {record.id} ({record.file_name})"
    pixels, _ = decode_photo(data, where, kinds=("jpg",), frame="its annotations")
    if pixels.shape[:2] != (record.height, record.width):
        raise BadRecord(
            "image-size",
            f"{where}: file is {pixels.shape[1]}x{pixels.shape[0]}, "
            f"annotations say {record.width}x{record.height}",
        )
    return pixels


def instances(
    class_of: dict[int, int], name: str, record: ImageRecord, found: list[Annotation]
) -> list[Instance]:
    """The image's selected annotations as checked RLEs with their contiguous classes."""
    return [
        Instance(
            class_of[a.category_id], a.iscrowd, a.id, annotation_rle(a, record.height, record.width, name)
        )
        for a in found
    ]


class Work(NamedTuple):
    """A run of images for one walker (a worker process, or this one): all it needs to check them."""

    folder: str
    name: str  # the annotation file's, for messages
    class_of: dict[int, int]
    images: list[tuple[ImageRecord, list[Annotation]]]
    near: Any = None  # the spec's: each image's near-duplicate codes are computed from its pixels


def check_images(work: Work) -> list[Outcome]:
    """Each image checked whole, annotations first (a bad one means its file is not opened), then its
    file read, decoded and hashed; problems are returned, not raised, so the walk reports them in order."""
    found: list[Outcome] = []
    with locations.prefetched([locations.join(work.folder, r.file_name) for r, _ in work.images]):
        for record, annotations in work.images:
            try:
                facts = Instances.of(instances(work.class_of, work.name, record, annotations))
                data = read_image(work.folder, record, work.name)
                pixels = decode_jpeg(data, record, work.name)
                codes = work.near.codes(pixels) if work.near is not None else None
                found.append(Checked(pixel_digest(pixels), xxhash.xxh3_128_digest(data), facts, None, codes))
            except BadRecord as problem:
                found.append(problem)
    return found


def permutation(eligible: list[int], seed: int) -> list[int]:
    return seeded_permutation(eligible, seed, SELECTION_STREAM)


@functools.lru_cache(maxsize=2)
def select(spec: CocoSpec) -> Selection:
    """Walk one seeded permutation of the eligible images, cutting consecutive runs for train, val and
    test (so they are disjoint); images with problems raise or are skipped. Each image is read, decoded
    and hashed once, here; rendering checks it meets the same file bytes."""
    index = spec_index(spec)
    class_of = index.class_of()

    def work_of(run: list[int]) -> Work:
        images = [(index.images[i], index.annotations.get(i, [])) for i in run]
        return Work(spec.images, index.name, class_of, images, spec.near)

    sel = Selection()
    walk = Walk(sel, on_error=spec.on_error, name=int, near=spec.near.index() if spec.near else None)
    order = permutation(index.eligible(), spec.seed)
    with contextlib.closing(outcomes(order, work_of, check_images, jobs=spec.jobs, run=WALK_RUN)) as stream:
        for split, count in zip(SPLITS, spec.counts, strict=True):
            if not walk.fill(split, count, stream):
                assert count is not None
                raise short_supply(sel, split, count, supply(spec, index))
    return sel


def supply(spec: CocoSpec, index: CocoIndex) -> str:
    kept = " of --categories" if spec.categories else ""
    return f"{index.name} has {len(index.eligible())} eligible images (with a non-crowd annotation{kept})"


@functools.lru_cache(maxsize=2)
def prepared(spec: CocoSpec) -> Prepared:
    """What rendering needs: the annotation file's name and classes, and per chosen image its record and
    what the walk learnt. From the file `share` wrote or, in the walking process, from the selection;
    cached by the whole spec, so a reused worker process never takes one build's for another's."""
    if spec.prepared is not None:
        return load_prepared(spec.prepared)
    index, sel = spec_index(spec), select(spec)
    chosen = (i for s in SPLITS for i in sel.chosen[s])
    return Prepared((index.name, index.classes), {i: (index.images[i], sel.checked[i]) for i in chosen})


@functools.lru_cache(maxsize=4)
def annotation_sha256(path: str, size: int, version: str) -> str:
    return locations.sha256(path)


def file_sha256(path: str) -> str:
    """sha256 of the annotation file, cached while its size and mtime (a remote one's ETag) stay the same."""
    try:
        return annotation_sha256(path, *locations.stat(path))
    except FileNotFoundError:
        raise SourceError(f"{path}: annotation file not found") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def skip_report(index: CocoIndex, sel: Selection) -> dict[str, Any]:
    """Counts per reason, with the image ids (or records naming no image) left out under --on-error skip."""
    images = tally(sorted([*index.bad_images.items(), *sel.skipped.items()], key=lambda p: p[0]))
    records = tally(index.dropped)
    counts = dict(images.counts)
    for r, n in records.counts.items():
        counts[r] = counts.get(r, 0) + n
    return {"counts": dict(sorted(counts.items())), "image_ids": images.names, "annotations": records.names}


COCO_LICENCE = Licence(
    "cc-by-4.0",
    "Source: COCO 2017 (https://cocodataset.org). The annotations, and the masks and metadata derived "
    "from them here, are licensed by the COCO Consortium under Creative Commons Attribution 4.0 "
    "(CC BY 4.0, https://creativecommons.org/licenses/by/4.0/). The images are Flickr photos, each under "
    "its own licence: the `license` id in a sample's JSON refers to the `licenses` table of the COCO "
    "annotation file. The COCO Consortium does not own the images' copyright; check each image's licence "
    "before redistributing it.",
)


class CocoSemanticRecipe(RecipeBase):
    """Image: the original COCO JPEG. Mask: 0 background, 1..K classes in category-id order, 255 ignore."""

    name = "coco-semantic"
    summary = "COCO instance annotations (polygons, RLE) as semantic masks of the original photographs"
    # Photographs of every size train letterboxed to `size`; 81 classes (background + 80 categories). The
    # U-Net's four levels at stem 2 (total stride 16): the deepest features see ~136 px of the 320 px image,
    # each output logit ~200 px. The README's "Models" says why, and what it costs on a CPU.
    training = {**PHOTOGRAPH_TRAINING, "metrics": ["miou", "miou_objects", "pixel_accuracy"]}
    shard_size = 1_000  # ~110 MB shards of photographs, and enough of them to keep every core busy
    planned_keys = True  # render() vouches for the planned key (see render): the writer need not hash pixels
    walked_in_build = True  # candidates come from the walk `describe` ran in the build's process

    def default_counts(self) -> dict[str, int | None]:
        return dict(DEFAULT_COUNTS)

    def supply_total(self, spec: CocoSpec) -> int:
        """The most samples the splits together can give: one per eligible image (the splits are disjoint)."""
        return len(spec_index(spec).eligible())

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--annotations", required=True, metavar="FILE", help="COCO instances JSON")
        parser.add_argument("--images", required=True, metavar="DIR", help="folder holding the image files")
        parser.add_argument(
            "--categories",
            default=None,
            metavar="NAMES",
            help="comma-separated category names to keep (default: all); others become background",
        )
        parser.add_argument(
            "--overlap",
            choices=OVERLAPS,
            default="ignore",
            help="pixels of overlapping instances: ignore (255 where classes differ), "
            "z-order (smaller on top), max (highest class id)",
        )
        add_on_error(parser, "image")

    def make_spec(self, options: argparse.Namespace) -> CocoSpec:
        counts = tuple(
            getattr(options, s) if getattr(options, s, None) is not None else DEFAULT_COUNTS[s]
            for s in SPLITS
        )
        names = tuple(n.strip() for n in options.categories.split(",")) if options.categories else None
        images = locations.resolved(options.images)
        if not locations.is_http(images) and not locations.is_folder(images, "--images"):
            raise ConfigError(
                f"--images {options.images}: not a folder"
            )  # https: files are named, not listed
        annotations = locations.resolved(options.annotations)
        return CocoSpec(
            annotations=annotations,
            images=images,
            categories=names,
            overlap=options.overlap,
            on_error=options.on_error,
            seed=options.seed,
            counts=counts,
            sha256=file_sha256(annotations),
            jobs=max(getattr(options, "jobs", 1) or cpu_count(), 1),
        )

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        spec = self.make_spec(options)
        return {
            "annotations": locations.base_name(spec.annotations),
            "annotations_sha256": spec.sha256,
            "images": locations.base_name(spec.images),
            "categories": list(spec.categories) if spec.categories else "all",
            "overlap": spec.overlap,
            "on_error": spec.on_error,
        }

    def describe(self, spec: CocoSpec) -> SourceInfo:
        index, sel = spec_index(spec), select(spec)
        path = spec.annotations
        files = [{"name": locations.base_name(path), "bytes": locations.stat(path)[0], "sha256": spec.sha256}]
        classes = [{"class": c.class_id, "category_id": c.category_id, "name": c.name} for c in index.classes]
        extra = {
            "classes": classes,
            "palette": voc_palette(len(classes) + 1),
            "overlap": spec.overlap,
            "annotation_file": {
                "images": index.n_images,
                "annotations": index.n_annotations,
                "eligible_images": len(index.eligible()),
            },
            "licenses": index.licenses,
            "image_ids": {s: sel.chosen[s] for s in SPLITS},
            "duplicate_image_ids": {s: [i for i, _ in sel.duplicates[s]] for s in SPLITS},
            "skipped": skip_report(index, sel),
        }
        mask = {"num_classes": len(classes) + 1, "ignore_index": IGNORE}
        return SourceInfo(kind="coco-instances", files=files, extra=extra, mask=mask, licence=COCO_LICENCE)

    def schema(self, spec: CocoSpec) -> SampleSchema:
        """Colour JPEGs of any size; mask 0 background, 1..K the kept categories, 255 crowd/overlap/ignore."""
        names = tuple(c.name for c in spec_index(spec).classes)
        return SampleSchema("jpg", 3, None, ("background", *names), ignore=IGNORE, training=self.training)

    def candidates(self, spec: CocoSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        # One permutation for all splits keeps them disjoint, so the per-split `rng` is not used.
        sel = select(spec)
        ids = sel.offered[split]
        digests = [sel.checked[i].key for i in ids]
        codes = np.array([sel.checked[i].codes for i in ids]) if spec.near is not None else None
        yield Candidates(np.array(ids, np.int64).reshape(-1, 1), digests, codes)

    def share(self, spec: CocoSpec, folder: Path, *, local: bool) -> CocoSpec:
        """Write what rendering needs of the chosen images (records, digests, checked RLEs), so that
        workers neither parse the annotation file nor check annotations again."""
        return replace(spec, prepared=share_prepared(folder, PREPARED, prepared(spec)))

    def render(self, spec: CocoSpec, item: np.ndarray) -> Rendered:
        """The sample of one chosen image. Its file is read whole again but not decoded: the walk decoded
        it and planned its key, and the file's digest proves these are the same bytes."""
        prep = prepared(spec)
        name, classes = prep.head
        record, seen = prep.rows[int(item[0])]
        data = read_image(spec.images, record, name)
        if xxhash.xxh3_128_digest(data) != seen.file:
            raise SourceError(f"{name}: image {record.id}: {record.file_name} changed during the build")
        found = seen.facts.instances(record)
        mask = compose(found, record.height, record.width, spec.overlap)
        present: dict[int, list[int]] = {}
        for inst in found:
            counts = present.setdefault(inst.cls, [0, 0])
            counts[inst.crowd] += 1
        meta = {
            "image_id": record.id,
            "file_name": record.file_name,
            "license": record.license,
            "width": record.width,
            "height": record.height,
            "categories": [
                {
                    "class": c.class_id,
                    "id": c.category_id,
                    "name": c.name,
                    "instances": present[c.class_id][0],
                    "crowd": present[c.class_id][1],
                }
                for c in classes
                if c.class_id in present
            ],
        }
        return Rendered(NO_PIXELS, mask, meta, "jpg", data, bytes_key=seen.key.hex())

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return [int(c["class"]) for c in meta["categories"]]
