"""COCO instances JSON: parse once, check every record's structure, index the annotations by image."""

import functools
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, NamedTuple

import orjson

from segshards.writer.errors import ConfigError, SourceError
from segshards.writer.sources import locations
from segshards.writer.sources.photos import BadRecord


class CocoClass(NamedTuple):
    """One mask class: contiguous id 1..K (category-id order), COCO category id and name."""

    class_id: int
    category_id: int
    name: str
    supercategory: str | None


class ImageRecord(NamedTuple):
    """One `images` entry."""

    id: int
    file_name: str
    width: int
    height: int
    license: int | None


class Annotation(NamedTuple):
    """One `annotations` entry; `segmentation` (polygons or RLE) is checked when it is rendered."""

    id: int
    image_id: int
    category_id: int
    iscrowd: bool
    segmentation: Any


@dataclass
class CocoIndex:
    """The checked content of an instances file, restricted to the selected categories."""

    name: str  # the file's name, for messages
    categories: list[dict[str, Any]]  # every category as {id, name, supercategory}, in id order
    classes: list[CocoClass]  # the selected categories
    images: dict[int, ImageRecord]
    annotations: dict[int, list[Annotation]]  # image id -> its selected annotations, by annotation id
    bad_images: dict[int, BadRecord] = field(default_factory=dict)  # image id -> first problem (skip mode)
    dropped: list[tuple[str, BadRecord]] = field(default_factory=list)  # (record, problem) naming no image
    n_images: int = 0
    n_annotations: int = 0
    licenses: list[dict[str, Any]] = field(default_factory=list)  # the `licenses` table: id, name, url

    def class_of(self) -> dict[int, int]:
        """COCO category id -> contiguous class id, for the selected categories."""
        return {c.category_id: c.class_id for c in self.classes}

    def eligible(self) -> list[int]:
        """Sorted ids of the sound images with at least one selected non-crowd annotation."""
        return sorted(
            i
            for i, anns in self.annotations.items()
            if i not in self.bad_images and i in self.images and any(not a.iscrowd for a in anns)
        )

    def problem(self, problem: BadRecord, *, on_error: str, image_id: int | None, record: str) -> None:
        """Raise `problem`, or (skip mode) remember it against its image, or as dropped when it names none."""
        if on_error == "raise":
            raise problem
        if image_id is None:
            self.dropped.append((record, problem))
        else:
            self.bad_images.setdefault(image_id, problem)


def _field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key] if it is present and of `kind` (bool never counts as int), else a BadRecord."""
    if not isinstance(record, dict):
        raise BadRecord("bad-field", f"{where}: not a JSON object")
    if key not in record:
        raise BadRecord("missing-key", f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        raise BadRecord("bad-field", f"{where}: {key!r} is {type(value).__name__} {_short(value)}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: str) -> Any:
    """The parsed JSON of `path` (a local file or a URL), or a SourceError naming it and what is wrong."""
    try:
        data = locations.read(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: annotation file not found") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return orjson.loads(data)  # ~2x faster than json on a large file, and this part is serial
    except orjson.JSONDecodeError:
        pass  # json below: it accepts what orjson refuses (NaN, huge integers) or names the problem
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 JSON ({exc.reason} at byte {exc.start})") from None


def parse_categories(raw: Any, name: str) -> list[dict[str, Any]]:
    """The category table in id order; any flaw here is fatal, since every class id depends on it."""
    if not isinstance(raw, list):
        raise SourceError(f"{name}: 'categories' is not a list")
    table: dict[int, dict[str, Any]] = {}
    names: dict[str, int] = {}
    for i, record in enumerate(raw):
        where = f"{name}: categories[{i}]"
        cid = _field(record, "id", int, where)
        cname = _field(record, "name", str, where)
        sup = record.get("supercategory")
        if cid in table:
            raise SourceError(f"{where}: category id {cid} appears twice")
        if cname in names:
            raise SourceError(f"{where}: category name {cname!r} used by ids {names[cname]} and {cid}")
        table[cid] = {"id": cid, "name": cname, "supercategory": sup if isinstance(sup, str) else None}
        names[cname] = cid
    if not table:
        raise SourceError(f"{name}: 'categories' is empty")
    if len(table) > 254:
        raise SourceError(f"{name}: {len(table)} categories do not fit a uint8 mask with 255 = ignore")
    return [table[k] for k in sorted(table)]


def select_classes(
    categories: list[dict[str, Any]], names: tuple[str, ...] | None, where: str
) -> list[CocoClass]:
    """Contiguous classes 1..K for the chosen category names (all when None), in category-id order."""
    if names is not None:
        known = {c["name"] for c in categories}
        for n in names:
            if n not in known:
                sample = ", ".join(c["name"] for c in categories[:8])
                raise ConfigError(f"--categories: {n!r} is not a category of {where} (it has {sample}, ...)")
        if len(set(names)) != len(names):
            raise ConfigError(f"--categories: a name is given twice ({', '.join(names)})")
        categories = [c for c in categories if c["name"] in names]
    return [CocoClass(i, c["id"], c["name"], c["supercategory"]) for i, c in enumerate(categories, 1)]


def safe_file_name(value: str, where: str) -> str:
    """A relative POSIX path inside the images folder."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise BadRecord("bad-field", f"{where}: file_name {value!r} is not a plain relative path")
    return value


def parse_image(record: Any, name: str, position: int) -> ImageRecord:
    """One `images` entry; `name` (the file's) and `position` name it until its id is known."""
    image_id = _field(record, "id", int, f"{name}: images[{position}]")
    where = f"{name}: image {image_id}"
    file_name = safe_file_name(_field(record, "file_name", str, where), where)
    width, height = _field(record, "width", int, where), _field(record, "height", int, where)
    if width < 1 or height < 1:
        raise BadRecord("bad-field", f"{where}: size {width}x{height} is not positive")
    licence = record.get("license")
    if licence is not None and (not isinstance(licence, int) or isinstance(licence, bool)):
        raise BadRecord("bad-field", f"{where}: 'license' is {type(licence).__name__}")
    return ImageRecord(image_id, file_name, width, height, licence)


def parse_annotation(record: Any, name: str, position: int, categories: set[int]) -> Annotation:
    """The fields that every annotation needs; `position` names it until its id is known."""
    sound = sound_annotation(record, categories)
    if sound is not None:
        return sound
    ann_id = _field(record, "id", int, f"{name}: annotations[{position}]")
    image_id = _field(record, "image_id", int, f"{name}: annotation {ann_id}")
    where = f"{name}: annotation {ann_id} (image {image_id})"
    category_id = _field(record, "category_id", int, where)
    if category_id not in categories:
        raise BadRecord("unknown-category", f"{where}: category_id {category_id} is not in 'categories'")
    iscrowd = _field(record, "iscrowd", int, where)
    if iscrowd not in (0, 1):
        raise BadRecord("bad-field", f"{where}: iscrowd is {iscrowd}, expected 0 or 1")
    segmentation = _field(record, "segmentation", (list, dict), where)
    return Annotation(ann_id, image_id, category_id, bool(iscrowd), segmentation)


def sound_annotation(record: Any, categories: set[int]) -> Annotation | None:
    """The annotation when every field is exactly as it should be, else None (then `parse_annotation`'s
    checks, field by field, name the problem): a fast path through a file of 100,000s of records."""
    if type(record) is not dict:
        return None
    values: list[Any] = [record.get(k) for k in ("id", "image_id", "category_id", "iscrowd")]
    ann_id, image_id, category_id, iscrowd = values
    segmentation = record.get("segmentation")
    if {type(ann_id), type(image_id), type(category_id), type(iscrowd)} != {int}:
        return None
    if type(segmentation) not in (list, dict):
        return None
    if category_id not in categories or iscrowd not in (0, 1):
        return None
    return Annotation(ann_id, image_id, category_id, bool(iscrowd), segmentation)


def licence_table(raw: Any) -> list[dict[str, Any]]:
    """The `licenses` entries that have an int id, reduced to id, name and url (informative only)."""
    table = (
        [r for r in raw if isinstance(r, dict) and type(r.get("id")) is int] if isinstance(raw, list) else []
    )
    return [{k: r[k] for k in ("id", "name", "url") if isinstance(r.get(k), int | str)} for r in table]


def top_list(data: Any, key: str, name: str) -> list[Any]:
    if not isinstance(data, dict):
        raise SourceError(f"{name}: top level is {type(data).__name__}, expected an object")
    if key not in data:
        raise SourceError(f"{name}: missing key {key!r}")
    if not isinstance(data[key], list):
        raise SourceError(f"{name}: {key!r} is {type(data[key]).__name__}, expected a list")
    return data[key]


@functools.lru_cache(maxsize=2)
def load_index(path: str, names: tuple[str, ...] | None, on_error: str, version: str = "") -> CocoIndex:
    """Parse and check an instances file (cached per process; `version`, e.g. the file's sha256, keys the
    cache so that a rewritten file is read again). Structural problems raise, or with `on_error="skip"`
    mark their image bad (or drop an annotation that names no known image)."""
    name = locations.base_name(path)
    data = read_json(path)
    raw_images, raw_annotations = top_list(data, "images", name), top_list(data, "annotations", name)
    categories = parse_categories(top_list(data, "categories", name), name)
    classes = select_classes(categories, names, name)
    index = CocoIndex(
        name, categories, classes, {}, {}, n_images=len(raw_images), n_annotations=len(raw_annotations)
    )
    index.licenses = licence_table(data.get("licenses"))
    known_ids: set[int] = set()
    for i, record in enumerate(raw_images):
        raw_id = record.get("id") if isinstance(record, dict) else None
        image_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        try:
            if image_id in known_ids:
                raise BadRecord("bad-field", f"{name}: image {image_id}: id appears twice in 'images'")
            image = parse_image(record, name, i)
            index.images[image.id] = image
        except BadRecord as problem:
            index.problem(problem, on_error=on_error, image_id=image_id, record=f"images[{i}]")
        if image_id is not None:
            known_ids.add(image_id)
    selected = index.class_of()
    category_ids = {c["id"] for c in categories}
    seen_annotations: set[int] = set()
    for i, record in enumerate(raw_annotations):
        raw_image = record.get("image_id") if isinstance(record, dict) else None
        image_id = raw_image if raw_image in known_ids else None
        try:
            ann = parse_annotation(record, name, i, category_ids)
            if ann.image_id not in known_ids:
                raise BadRecord(
                    "unknown-image",
                    f"{name}: annotation {ann.id}: image_id {ann.image_id} is not in 'images'",
                )
            if ann.id in seen_annotations:
                raise BadRecord(
                    "bad-field", f"{name}: annotation {ann.id} (image {ann.image_id}): id appears twice"
                )
            seen_annotations.add(ann.id)
            if ann.category_id in selected:
                index.annotations.setdefault(ann.image_id, []).append(ann)
        except BadRecord as problem:
            index.problem(problem, on_error=on_error, image_id=image_id, record=f"annotations[{i}]")
    for anns in index.annotations.values():
        anns.sort(key=lambda a: a.id)
    return index
