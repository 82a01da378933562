"""Image + mask folders: files paired by stem, split lists, classes files, and masks read as class indices."""

import functools
import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from segshards.writer.errors import ConfigError, SourceError
from segshards.writer.format.manifest import SPLITS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE = 255
UNMATCHED = ("error", "ignore", "nearest")
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
MAX_CLASSES = 255  # class indices 0..254; 255 is ignore


class BadPair(SourceError):
    """One image + mask pair breaks a rule; `reason` is the slug counted under `--on-error skip`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Pair:
    """An image and its mask, as paths relative to --images and --masks."""

    stem: str
    image: str
    mask: str


@dataclass(frozen=True)
class ClassDef:
    """One entry of a classes file: a mask class, or (`ignore`) a colour or value that means 255.

    `color` is the class's RGB colour in RGB masks; `value` its pixel value in index masks (when the
    source's values are not already the class indices, as with Cityscapes' label ids).
    """

    name: str
    color: tuple[int, int, int] | None = None
    value: int | None = None
    ignore: bool = False


# ---- files paired by stem -----------------------------------------------------------------------


def list_files(folder: Path, keep: Any) -> dict[str, list[str]]:
    """Stem -> relative paths (POSIX) of the files under `folder` that `keep(name)` gives a stem for;
    hidden files and folders are passed over."""
    found: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(folder)
        for name in sorted(files):
            stem = None if name.startswith(".") else keep(name)
            if stem is not None:
                found.setdefault((rel / stem).as_posix(), []).append((rel / name).as_posix())
    return found


def image_stem(name: str) -> str | None:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else None


def mask_stem(suffix: str) -> Any:
    def stem(name: str) -> str | None:
        return (
            name[: -len(suffix)]
            if name.lower().endswith(suffix.lower()) and len(name) > len(suffix)
            else None
        )

    return stem


def pair_files(images: Path, masks: Path, suffix: str) -> tuple[dict[str, Pair], dict[str, BadPair]]:
    """Every stem with exactly one image and one mask, and the problem of every other stem."""
    if not images.is_dir():
        raise ConfigError(f"--images {images}: not a folder")
    if not masks.is_dir():
        raise ConfigError(f"--masks {masks}: not a folder")
    in_masks = mask_stem(suffix)
    same = images.resolve() == masks.resolve()
    found = list_files(images, lambda n: None if same and in_masks(n) else image_stem(n))
    mask_files = list_files(masks, in_masks)
    if not found:
        raise ConfigError(f"--images {images}: no .jpg, .jpeg or .png images")
    if not mask_files:
        raise ConfigError(f"--masks {masks}: no masks named STEM{suffix}")
    pairs, problems = {}, {}
    for stem in sorted(found.keys() | mask_files.keys()):
        image, mask = found.get(stem, []), mask_files.get(stem, [])
        if len(image) > 1:
            problems[stem] = BadPair(
                "ambiguous-image", f"{images}: {' and '.join(image)} share the stem {stem}"
            )
        elif not mask:
            problems[stem] = BadPair(
                "missing-mask", f"{images / image[0]}: no mask {masks / (stem + suffix)}"
            )
        elif not image:
            problems[stem] = BadPair(
                "missing-image", f"{masks / mask[0]}: no image {stem}.jpg/.png in {images}"
            )
        else:
            pairs[stem] = Pair(stem, image[0], mask[0])
    return pairs, problems


# ---- split lists ------------------------------------------------------------------------------------


def read_split_lists(
    folder: Path,
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, BadPair], list[Path]]:
    """The (stem, file:line) of `folder`/{train,val,test}.txt (a missing file: an empty split), the
    problem of every stem listed twice, and the files read."""
    if not folder.is_dir():
        raise ConfigError(f"--split-lists {folder}: not a folder")
    files = [folder / f"{s}.txt" for s in SPLITS if (folder / f"{s}.txt").is_file()]
    if not files:
        raise ConfigError(f"--split-lists {folder}: holds none of train.txt, val.txt, test.txt")
    where: dict[str, str] = {}
    lists: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    problems: dict[str, BadPair] = {}
    for path in files:
        for number, line in enumerate(read_text(path, "--split-lists").splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            stem, here = words[0], f"{path}:{number}"
            if stem in where:
                reason = (
                    "repeated-stem" if Path(where[stem].rpartition(":")[0]) == path else "stem-in-two-splits"
                )
                problems[stem] = BadPair(reason, f"{here}: {stem} is already listed at {where[stem]}")
                continue
            where[stem] = here
            lists[path.stem].append((stem, here))
    return {s: [t for t in v if t[0] not in problems] for s, v in lists.items()}, problems, files


def read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{option} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read ({exc.strerror or exc})") from None


# ---- classes files -----------------------------------------------------------------------------------


def read_classes(path: Path) -> tuple[ClassDef, ...]:
    """The classes of CVAT's labelmap.txt (`name:r,g,b:parts:actions`) or of a JSON list; ConfigError
    names the file and line of the first problem."""
    text = read_text(path, "--classes")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        entries = [(n, parse_json_class(raw, f"{path}:{n}")) for n, raw in json_entries(text, path)]
    else:
        lines = enumerate(text.splitlines(), 1)
        entries = [(n, c) for n, line in lines if (c := parse_labelmap_line(line, f"{path}:{n}")) is not None]
    return check_classes([(f"{path}:{n}", c) for n, c in entries], path)


def parse_labelmap_line(line: str, where: str) -> ClassDef | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split(":")
    if len(fields) < 2 or not fields[0].strip():
        raise ConfigError(f"{where}: expected name:r,g,b:parts:actions, got {text[:60]!r}")
    return ClassDef(fields[0].strip(), parse_colour(fields[1].split(","), where))


def parse_colour(parts: Any, where: str) -> tuple[int, int, int]:
    try:
        values = [int(p) for p in parts] if isinstance(parts, list) else []
    except (TypeError, ValueError):
        values = []
    if (
        len(values) != 3
        or not all(0 <= v <= 255 for v in values)
        or not all(type(p) is not bool for p in parts)
    ):
        raise ConfigError(f"{where}: colour {parts!r} is not three integers 0..255 (r, g, b)")
    return values[0], values[1], values[2]


def json_entries(text: str, path: Path) -> list[tuple[int, Any]]:
    """(line, element) of each element of the JSON list in `text`."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}:1: expected a non-empty JSON list of classes")
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    out, pos = [], text.index("[") + 1
    for item in items:
        pos = gap.match(text, pos).end()  # type: ignore[union-attr]
        out.append((text.count("\n", 0, pos) + 1, item))
        pos = decoder.raw_decode(text, pos)[1]
    return out


def parse_json_class(raw: Any, where: str) -> ClassDef:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise ConfigError(f'{where}: expected an object with a non-empty "name"')
    unknown = sorted(raw.keys() - {"name", "color", "index", "ignore"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: name, color, index, ignore)")
    colour = None if raw.get("color") is None else parse_colour(raw["color"], where)
    value = raw.get("index")
    if value is not None and (type(value) is not int or not 0 <= value <= 255):
        raise ConfigError(f"{where}: index {value!r} is not an integer 0..255")
    if type(raw.get("ignore", False)) is not bool:
        raise ConfigError(f"{where}: ignore must be true or false")
    return ClassDef(raw["name"].strip(), colour, value, raw.get("ignore", False))


def check_classes(entries: list[tuple[str, ClassDef]], path: Path) -> tuple[ClassDef, ...]:
    """The entries, if names, colours and values are unique and given for every class or for none."""
    classes = [c for _, c in entries if not c.ignore]
    if not classes:
        raise ConfigError(f"{path}: no classes")
    if len(classes) > MAX_CLASSES:
        raise ConfigError(f"{path}: {len(classes)} classes; at most {MAX_CLASSES} (255 is ignore)")
    seen: dict[Any, str] = {}
    for where, c in entries:
        for key in (("name", c.name), ("colour", c.color), ("index", c.value)):
            if key[1] is not None and key in seen:
                raise ConfigError(f"{where}: {key[0]} {key[1]!r} is already given at {seen[key]}")
            seen[key] = where
        if c.value == IGNORE and not c.ignore:
            raise ConfigError(f'{where}: index 255 is ignore; mark the entry "ignore": true')
        for attr, what in (("color", "a colour"), ("value", "an index")):
            if (getattr(c, attr) is None) != (getattr(classes[0], attr) is None) and not c.ignore:
                raise ConfigError(f"{where}: {c.name!r}: give {what} to every class or to none")
    return tuple(c for _, c in entries)


# ---- images ------------------------------------------------------------------------------------------


def decode_image(data: bytes, where: str) -> tuple[np.ndarray, str]:
    """(pixels as `segshards verify` decodes the stored member, member extension) of an image file."""
    if data.startswith(JPEG_MAGIC):
        ext, flag = "jpg", cv2.IMREAD_COLOR
    elif data.startswith(PNG_MAGIC):
        ext, flag = "png", cv2.IMREAD_UNCHANGED
    else:
        raise BadPair("unreadable-image", f"{where}: not a JPEG or PNG file")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if pixels is None:
        raise BadPair("unreadable-image", f"{where}: truncated or corrupt {ext.upper()}")
    if pixels.dtype != np.uint8 or pixels.ndim == 3 and pixels.shape[2] != 3:
        raise BadPair("image-format", f"{where}: {pixels.dtype} image with {pixels.shape[2:] or 1} channels; "
                      "only 8-bit grey or RGB images are stored as they are")  # fmt: skip
    if ext == "jpg" and b"Exif" in data[:65536] and exif_rotates(data):
        raise BadPair("exif-orientation", f"{where}: EXIF orientation turns the image away from its mask")
    return pixels, ext


def exif_rotates(data: bytes) -> bool:
    """True when the file's EXIF orientation makes decoders turn or flip it (OpenCV does)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    except Exception:  # unreadable EXIF: OpenCV does not apply it either
        return False


# ---- masks -------------------------------------------------------------------------------------------


def read_mask(data: bytes, where: str) -> np.ndarray:
    """The mask's values: (H, W) indices (grey value, or palette index as in VOC) or (H, W, 3) BGR colours.

    OpenCV never returns palette indices, so palette PNGs (and anything but 8-bit grey/RGB PNGs) go
    through PIL.
    """
    fast = data.startswith(PNG_MAGIC) and len(data) > 26 and data[24] == 8 and data[25] in (0, 2, 4, 6)
    if fast:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise BadPair("unreadable-mask", f"{where}: truncated or corrupt PNG")
    else:
        array = pil_mask(data, where)
    if array.ndim == 3 and array.shape[2] in (2, 4):
        if not np.all(array[..., -1] == 255):
            raise BadPair("mask-format", f"{where}: mask has transparent pixels")
        array = array[..., :-1] if array.shape[2] == 4 else array[..., 0]
    return array


def pil_mask(data: bytes, where: str) -> np.ndarray:
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except Exception as exc:  # PIL raises many kinds for broken files
        raise BadPair("unreadable-mask", f"{where}: truncated or corrupt image ({exc})") from None
    if mode in ("P", "L", "1"):
        return array.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return np.ascontiguousarray(array[..., 2::-1] if mode == "RGB" else array[..., [2, 1, 0, 3]])
    if mode.startswith("I") and array.size and int(array.max()) <= 255 and int(array.min()) >= 0:
        return array.astype(np.uint8)
    raise BadPair("mask-format", f"{where}: {mode} mask; expected 8-bit index, palette or RGB")


@dataclass(frozen=True)
class ClassMap:
    """How source masks become class indices: RGB through the classes' colours (unmatched colours by
    `unmatched`), index masks through their values (or as they are), 255 always ignore."""

    classes: tuple[ClassDef, ...] | None  # None: index masks taken as they are
    unmatched: str = "error"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes or () if not c.ignore)

    def targets(self, attr: str) -> list[tuple[Any, int]]:
        """(colour or value, class index or 255) of every entry giving one."""
        out, index = [], 0
        for c in self.classes or ():
            if getattr(c, attr) is not None:
                out.append((getattr(c, attr), IGNORE if c.ignore else index))
            index += not c.ignore
        return out

    def apply(self, array: np.ndarray, where: str) -> tuple[np.ndarray, int]:
        """(H, W) uint8 class indices and how many pixels had a colour not in the classes."""
        if array.ndim == 3:
            return self.colours(array, where)
        return self.values(array, where), 0

    def values(self, array: np.ndarray, where: str) -> np.ndarray:
        lut, valid = index_tables(self)
        counts = np.bincount(array.ravel(), minlength=256) if array.size else np.zeros(256, np.int64)
        bad = np.flatnonzero(counts * ~valid)
        if bad.size:
            v = int(bad[0])
            limit = (
                f"above the last class ({len(self.names) - 1})"
                if not self.targets("value")
                else "not in --classes"
            )
            raise BadPair(
                "unknown-index", f"{where}: index {v} ({counts[v]:,} pixels) is {limit} and not 255"
            )
        return cv2.LUT(array, lut) if self.targets("value") else array

    def colours(self, bgr: np.ndarray, where: str) -> tuple[np.ndarray, int]:
        if not self.targets("color"):
            raise BadPair("rgb-without-colours", f"{where}: RGB mask, but --classes gives no colours "
                          "(pass CVAT's labelmap.txt or a JSON list with \"color\")")  # fmt: skip
        code = pack_bgr(bgr)
        lut, listed = colour_tables(self)
        out = lut[code]
        unmatched = out == IGNORE
        if listed.size:  # colours listed as ignore also give 255
            unmatched &= ~np.isin(code, listed)
        n = int(np.count_nonzero(unmatched))
        if n:
            out[unmatched] = self.remap(code[unmatched], where)
        return out, n

    def remap(self, codes: np.ndarray, where: str) -> np.ndarray:
        """Class indices of pixels whose colour is in no class, by the --unmatched policy."""
        found, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        if self.unmatched == "error":
            top = int(np.argmax(counts))
            code = int(found[top])
            colour = (code >> 16, (code >> 8) & 255, code & 255)
            raise BadPair("unmatched-colour", f"{where}: colour {colour} is not in --classes ({counts[top]:,} pixels; "
                          f"{len(found)} such colours, {codes.size:,} pixels in all); --unmatched ignore or "
                          "nearest maps them")  # fmt: skip
        if self.unmatched == "ignore":
            return np.full(codes.shape, IGNORE, np.uint8)
        colours = self.targets("color")
        palette = np.array([c for c, _ in colours], np.int64)  # (K, 3) RGB
        rgb = np.stack([(found >> 16) & 255, (found >> 8) & 255, found & 255], axis=1).astype(np.int64)
        nearest = np.argmin(((rgb[:, None, :] - palette[None]) ** 2).sum(axis=2), axis=1)  # first on ties
        return np.array([i for _, i in colours], np.uint8)[nearest][inverse]


def pack_bgr(bgr: np.ndarray) -> np.ndarray:
    """(H, W) uint32 0xRRGGBB codes of a (H, W, 3) BGR array."""
    bgra = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2BGRA)  # alpha 255 in the top byte
    code = bgra.view(np.uint32).reshape(bgr.shape[:2])
    code &= 0xFFFFFF
    return code


@functools.cache
def colour_tables(cmap: ClassMap) -> tuple[np.ndarray, np.ndarray]:
    """A 2**24 lookup table colour code -> class (255 for unlisted colours), and the codes listed as ignore."""
    lut = np.full(1 << 24, IGNORE, np.uint8)
    listed = []
    for (r, g, b), index in cmap.targets("color"):
        lut[(r << 16) | (g << 8) | b] = index
        if index == IGNORE:
            listed.append((r << 16) | (g << 8) | b)
    return lut, np.array(listed, np.uint32)


@functools.cache
def index_tables(cmap: ClassMap) -> tuple[np.ndarray, np.ndarray]:
    """Value -> class lookup table, and which values are allowed (the classes' values or 0..K-1, and 255)."""
    valid = np.zeros(256, bool)
    valid[IGNORE] = True
    lut = np.arange(256, dtype=np.uint8)
    if cmap.classes is None:
        valid[:] = True
    elif targets := cmap.targets("value"):
        lut[:] = IGNORE
        for value, index in targets:
            lut[value], valid[value] = index, True
    else:
        valid[: len(cmap.names)] = True
    return lut, valid
