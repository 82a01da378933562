"""coco-semantic: a seeded subset of COCO images with class-index masks rendered from instance annotations."""

import argparse
import contextlib
import functools
import json
import os
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from segshards.writer.coco_annotations import (
    ON_ERROR,
    BadRecord,
    CocoIndex,
    ImageRecord,
    load_index,
    subset_json,
)
from segshards.writer.coco_masks import IGNORE, OVERLAPS, Instance, annotation_rle, compose
from segshards.writer.errors import ConfigError, SourceError, SupplyError
from segshards.writer.keys import file_digest, pixel_digest
from segshards.writer.recipe import SPLITS, Candidates, Licence, RecipeBase, Rendered, SourceInfo
from segshards.writer.schema import SampleSchema

DEFAULT_COUNTS = {"train": 8000, "val": 500, "test": 500}
SELECTION_STREAM = 5  # the permutation's stream: (seed, 5), apart from the planner's (seed, split 0..2)
CHUNK = 64  # images checked ahead in parallel threads while walking the permutation
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class CocoSpec:
    """Where the source is and how to cut it; `prepared` is a COCO-format subset written for workers."""

    annotations: str
    images: str
    categories: tuple[str, ...] | None
    overlap: str
    on_error: str
    seed: int
    counts: tuple[int | None, ...]  # train, val, test
    sha256: str  # of the annotation file: keys the per-process caches
    prepared: str | None = None


@dataclass
class Selection:
    """The outcome of walking the seeded permutation: per split, the image ids offered to the planner
    (duplicates included, which the planner rejects in the same order) and their pixel digests."""

    offered: dict[str, list[int]] = field(default_factory=dict)
    chosen: dict[str, list[int]] = field(default_factory=dict)
    duplicates: dict[str, list[int]] = field(default_factory=dict)
    digests: dict[int, bytes] = field(default_factory=dict)
    skipped: dict[int, BadRecord] = field(default_factory=dict)  # image id -> problem met in the walk
    eligible: int = 0


def spec_index(spec: CocoSpec) -> CocoIndex:
    return load_index(spec.prepared or spec.annotations, spec.categories, spec.on_error, spec.sha256)


def read_image(folder: str, record: ImageRecord, where: str) -> bytes:
    """The image file's bytes, or a BadRecord for a missing or unreadable file."""
    path = Path(folder) / record.file_name
    try:
        return path.read_bytes()
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
    """(H, W, 3) BGR pixels as `segshards verify` decodes them, checked against the record's size and
    against EXIF orientation (which would turn the pixels away from the annotations' frame)."""
    where = f"{where}: image {record.id} ({record.file_name})"
    if not data.startswith(JPEG_MAGIC):
        raise BadRecord("unreadable-image", f"{where}: not a JPEG file")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise BadRecord("unreadable-image", f"{where}: undecodable JPEG")
    if b"Exif\0\0" in data[:65536]:
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if raw is None or raw.shape != pixels.shape or not np.array_equal(raw, pixels):
            raise BadRecord(
                "exif-orientation",
                f"{where}: EXIF orientation rotates the decoded pixels away from the annotations' frame",
            )
    if pixels.shape[:2] != (record.height, record.width):
        raise BadRecord(
            "image-size",
            f"{where}: file is {pixels.shape[1]}x{pixels.shape[0]}, "
            f"annotations say {record.width}x{record.height}",
        )
    return pixels


def instances(index: CocoIndex, record: ImageRecord) -> list[Instance]:
    """The image's selected annotations as checked RLEs with their contiguous classes."""
    class_of = index.class_of()
    return [
        Instance(
            class_of[a.category_id],
            a.iscrowd,
            a.id,
            annotation_rle(a, record.height, record.width, index.name),
        )
        for a in index.annotations.get(record.id, [])
    ]


def check_image(index: CocoIndex, folder: str, image_id: int) -> bytes | BadRecord:
    """The pixel digest of a sound image, or the first problem with its annotations or its file."""
    record = index.images[image_id]
    try:
        instances(index, record)
        return pixel_digest(decode_jpeg(read_image(folder, record, index.name), record, index.name))
    except BadRecord as problem:
        return problem


def permutation(eligible: list[int], seed: int) -> list[int]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, SELECTION_STREAM]))
    return [eligible[i] for i in rng.permutation(len(eligible))]


def checked(index: CocoIndex, folder: str, order: list[int]) -> Generator[tuple[int, bytes | BadRecord]]:
    """(image id, digest or problem) along `order`, checked CHUNK images ahead on threads (OpenCV
    decodes without the GIL); outcomes come in order, so the walk stays deterministic."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(order), CHUNK):
            ahead = order[start : start + CHUNK]
            yield from zip(ahead, pool.map(functools.partial(check_image, index, folder), ahead), strict=True)


@functools.lru_cache(maxsize=2)
def select(spec: CocoSpec) -> Selection:
    """Walk one seeded permutation of the eligible images, cutting consecutive runs for train, val and
    test (so they are disjoint); images with problems raise or are skipped, duplicates are offered to
    the planner, which rejects them exactly as counted here. Files are read and decoded once, here."""
    index = spec_index(spec)
    eligible = index.eligible()
    sel = Selection(eligible=len(eligible))
    seen: set[bytes] = set()
    with contextlib.closing(checked(index, spec.images, permutation(eligible, spec.seed))) as walk:
        for split, count in zip(SPLITS, spec.counts, strict=True):
            offered, chosen = sel.offered.setdefault(split, []), sel.chosen.setdefault(split, [])
            dups = sel.duplicates.setdefault(split, [])
            while count is None or len(chosen) < count:
                step = next(walk, None)
                if step is None:
                    if count is None:
                        break
                    raise short_supply(spec, index.name, sel, split, count)
                image_id, outcome = step
                if isinstance(outcome, BadRecord):
                    if spec.on_error == "raise":
                        raise outcome
                    sel.skipped[image_id] = outcome
                    continue
                offered.append(image_id)
                sel.digests[image_id] = outcome
                if outcome in seen:
                    dups.append(image_id)
                    continue
                seen.add(outcome)
                chosen.append(image_id)
    return sel


def short_supply(spec: CocoSpec, name: str, sel: Selection, split: str, count: int) -> SupplyError:
    """The error for a split the eligible images cannot fill, naming the option and where images went."""
    earlier = sum(len(v) for s, v in sel.chosen.items() if s != split)
    kept = " of --categories" if spec.categories else ""
    return SupplyError(
        f"--{split} {count}: {name} has {sel.eligible} eligible images (with a non-crowd annotation{kept}); "
        f"after {earlier} for earlier splits, {len(sel.skipped)} skipped and "
        f"{sum(len(v) for v in sel.duplicates.values())} duplicates, only {len(sel.chosen[split])} remain "
        f"for {split}"
    )


@functools.lru_cache(maxsize=4)
def annotation_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def file_sha256(path: str) -> str:
    """sha256 of the annotation file, cached while its size and mtime stay the same."""
    try:
        st = os.stat(path)
        return annotation_sha256(path, st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        raise SourceError(f"{path}: annotation file not found") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map (RGB) for class ids 0..n-1: deterministic and well separated."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append([r, g, b])
    return colours


def skip_report(index: CocoIndex, sel: Selection) -> dict[str, Any]:
    """Counts per reason, with the image ids (or records naming no image) left out under --on-error skip."""
    images: dict[str, list[int]] = {}
    for image_id, problem in [*index.bad_images.items(), *sel.skipped.items()]:
        images.setdefault(problem.reason, []).append(image_id)
    records: dict[str, list[str]] = {}
    for record, problem in index.dropped:
        records.setdefault(problem.reason, []).append(record)
    counts = {r: len(v) for r, v in images.items()}
    for r, v in records.items():
        counts[r] = counts.get(r, 0) + len(v)
    return {
        "counts": dict(sorted(counts.items())),
        "image_ids": {r: sorted(v) for r, v in sorted(images.items())},
        "annotations": {r: v for r, v in sorted(records.items())},
    }


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
    training = {
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-3,
        "samples_per_epoch": None,
        "widths": [32, 64, 128, 256],
        "stem": 2,
        "size": [320, 320],
        "metrics": ["miou", "miou_objects", "pixel_accuracy"],
    }

    def default_counts(self) -> dict[str, int | None]:
        return dict(DEFAULT_COUNTS)

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
        parser.add_argument(
            "--on-error",
            choices=ON_ERROR,
            default="raise",
            dest="on_error",
            help="bad input: stop (raise) or leave the image out and count it (skip)",
        )

    def make_spec(self, options: argparse.Namespace) -> CocoSpec:
        counts = tuple(
            getattr(options, s) if getattr(options, s, None) is not None else DEFAULT_COUNTS[s]
            for s in SPLITS
        )
        names = tuple(n.strip() for n in options.categories.split(",")) if options.categories else None
        images = Path(options.images).resolve()
        if not images.is_dir():
            raise ConfigError(f"--images {options.images}: not a folder")
        annotations = str(Path(options.annotations).resolve())
        return CocoSpec(
            annotations=annotations,
            images=str(images),
            categories=names,
            overlap=options.overlap,
            on_error=options.on_error,
            seed=options.seed,
            counts=counts,
            sha256=file_sha256(annotations),
        )

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        spec = self.make_spec(options)
        return {
            "annotations": Path(spec.annotations).name,
            "annotations_sha256": spec.sha256,
            "images": Path(spec.images).name,
            "categories": list(spec.categories) if spec.categories else "all",
            "overlap": spec.overlap,
            "on_error": spec.on_error,
        }

    def describe(self, spec: CocoSpec) -> SourceInfo:
        index, sel = spec_index(spec), select(spec)
        path = Path(spec.annotations)
        files = [{"name": path.name, "bytes": path.stat().st_size, "sha256": spec.sha256}]
        classes = [{"class": c.class_id, "category_id": c.category_id, "name": c.name} for c in index.classes]
        extra = {
            "classes": classes,
            "palette": palette(len(classes) + 1),
            "overlap": spec.overlap,
            "annotation_file": {
                "images": index.n_images,
                "annotations": index.n_annotations,
                "eligible_images": sel.eligible,
            },
            "licenses": index.licenses,
            "image_ids": {s: sel.chosen[s] for s in SPLITS},
            "duplicate_image_ids": {s: sel.duplicates[s] for s in SPLITS},
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
        yield Candidates(items=np.array(ids, np.int64).reshape(-1, 1), digests=[sel.digests[i] for i in ids])

    def share(self, spec: CocoSpec, folder: Path, *, local: bool) -> CocoSpec:
        """Write the planned images' records as a small COCO file, so workers need not parse the full one."""
        sel, index = select(spec), spec_index(spec)
        path = folder / "coco-subset.json"
        ids = [i for s in SPLITS for i in sel.offered[s]]
        path.write_text(json.dumps(subset_json(index, ids)))
        return replace(spec, prepared=str(path), on_error="raise")

    def render(self, spec: CocoSpec, item: np.ndarray) -> Rendered:
        index = spec_index(spec)
        record = index.images[int(item[0])]
        data = read_image(spec.images, record, index.name)
        image = decode_jpeg(data, record, index.name)
        found = instances(index, record)
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
                for c in index.classes
                if c.class_id in present
            ],
        }
        return Rendered(image=image, mask=mask, meta=meta, image_ext="jpg", image_bytes=data)

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return [int(c["class"]) for c in meta["categories"]]
