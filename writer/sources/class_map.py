"""Class maps: classes files (CVAT labelmap.txt, JSON lists) and masks read as class indices through them."""

import functools
import io
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from segshards.writer.errors import ConfigError
from segshards.writer.format.schema import IGNORE
from segshards.writer.sources.mask_pairs import BadPair, read_text
from segshards.writer.sources.photos import PNG_MAGIC

UNMATCHED = ("error", "ignore", "nearest")
MAX_CLASSES = 255  # class indices 0..254; 255 is ignore


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


# ---- classes files -----------------------------------------------------------------------------------


def read_classes(path: str) -> tuple[ClassDef, ...]:
    """The classes of CVAT's labelmap.txt (`name:r,g,b:parts:actions`) or of a JSON list; ConfigError
    names the file and line of the first problem."""
    text = read_text(path, "--classes")
    if path.lower().endswith(".json") or text.lstrip().startswith("["):
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


def json_entries(text: str, path: str) -> list[tuple[int, Any]]:
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


def check_classes(entries: list[tuple[str, ClassDef]], path: str) -> tuple[ClassDef, ...]:
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
