"""One input through a caller's function: its output checked and made a sample (BGR pixels, mask, meta).

`build(fn, inputs, ...)` calls `fn(input)` in the walk, on worker processes. What `fn` returns is checked
here, where the input is known, so a bad return names it: the image (uint8 (H, W) grey or (H, W, 3) RGB,
or encoded `image_bytes`), the mask (uint8 (H, W) class ids of the classes, or 255), the JSON `meta`.
Images arrive RGB, as PIL, torchvision and albumentations hold them; the format stores and keys pixels as
OpenCV decodes them (BGR), so they are converted once, here, and the key is what `verify` computes.
"""

import json
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.images import decode_image
from segshards.writer.format.sample import class_counts
from segshards.writer.format.schema import IGNORE
from segshards.writer.sources.photos import BadRecord

KEYS = frozenset({"image", "mask", "meta", "image_bytes"})
SIGNATURES = {b"\xff\xd8\xff": "jpg", b"\x89PNG\r\n\x1a\n": "png"}
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 60, 60, 4, 4


def shown(value: Any) -> str:
    """A repr of an input cut short, for one-line messages."""
    return _short.repr(value)


@dataclass(frozen=True)
class Input:
    """One input, as messages name it; its repr is made only when a message is."""

    split: str
    index: int
    value: Any

    def __str__(self) -> str:
        return f"{self.split} input {self.index} ({shown(self.value)})"


@dataclass(frozen=True)
class Made:
    """One input's sample: pixels as stored and keyed (grey or BGR), the mask, the meta, and the image
    member: `ext` with its bytes when `fn` gave them (stored as they are), else a PNG of `pixels`."""

    pixels: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]
    ext: str = "png"
    image_bytes: bytes | None = None


def call(fn: Callable[[Any], Any], value: Any, where: Input) -> Any:
    """fn(value); an exception becomes a BadRecord named by its type (the reason `on_error="skip"` counts)."""
    try:
        return fn(value)
    except Exception as exc:
        reason = type(exc).__name__
        raise BadRecord(
            reason, f"{where}: fn raised {reason}: {str(exc)[:200]}"
        ) from exc  # its traceback kept


def as_array(value: Any, name: str, where: Input) -> np.ndarray:
    """A uint8 array of `value` (a numpy array or anything with `__array_interface__`, e.g. a PIL image)."""
    if not isinstance(value, np.ndarray) and not hasattr(value, "__array_interface__"):
        raise ConfigError(f"{where}: {name} is a {type(value).__name__}, expected a uint8 numpy array")
    array = np.asarray(value)
    if array.dtype != np.uint8:
        raise ConfigError(f"{where}: {name} has dtype {array.dtype}, expected uint8")
    return array


def image_of(result: dict[str, Any], where: Input) -> tuple[np.ndarray, str, bytes | None]:
    """(pixels as stored, member extension, bytes to store as they are or None) of fn's output."""
    data = result.get("image_bytes")
    if data is not None and result.get("image") is not None:
        raise ConfigError(f"{where}: fn returned both 'image' and 'image_bytes'; give one of them")
    if data is not None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigError(f"{where}: image_bytes is a {type(data).__name__}, expected bytes")
        data = bytes(data)
        ext = next((e for sig, e in SIGNATURES.items() if data.startswith(sig)), None)
        if ext is None:
            raise ConfigError(f"{where}: image_bytes is neither a JPEG nor a PNG")
        try:
            pixels = decode_image(data, ext, str(where))  # the pixels verify will hash
        except ShardFormatError as exc:
            raise ConfigError(str(exc)) from None
        if pixels.ndim == 3 and pixels.shape[2] != 3:  # the loaders and the schema take grey or colour
            raise ConfigError(
                f"{where}: image_bytes is a {ext.upper()} of {pixels.shape[2]} channels, expected grey or RGB"
            )
        return pixels, ext, data
    if "image" not in result:
        raise ConfigError(f"{where}: fn returned no 'image' (nor 'image_bytes')")
    image = as_array(result["image"], "image", where)
    if image.ndim == 2 and image.size:
        return np.ascontiguousarray(image), "png", None
    if image.ndim == 3 and image.shape[2] == 3 and image.size:
        return np.ascontiguousarray(image[:, :, ::-1]), "png", None  # RGB in, BGR stored (module docstring)
    raise ConfigError(f"{where}: image has shape {image.shape}, expected (H, W) grey or (H, W, 3) RGB")


def mask_of(result: dict[str, Any], size: tuple[int, ...], classes: int, where: Input) -> np.ndarray:
    """fn's mask, once it is (H, W) uint8 of the image's size holding class ids below `classes` or 255."""
    if "mask" not in result:
        raise ConfigError(f"{where}: fn returned no 'mask'")
    mask = as_array(result["mask"], "mask", where)
    if mask.ndim != 2:
        raise ConfigError(f"{where}: mask has shape {mask.shape}, expected (H, W) class ids")
    if mask.shape != size:
        raise ConfigError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {size[1]}x{size[0]}")
    counts = class_counts(mask)
    bad = [v for v in np.flatnonzero(counts[classes:]) + classes if v != IGNORE]
    if bad:
        raise ConfigError(
            f"{where}: mask holds value {bad[0]}, not a class id (0..{classes - 1}) nor {IGNORE} (ignore)"
        )
    return np.ascontiguousarray(mask)


def meta_of(result: dict[str, Any], where: Input) -> dict[str, Any]:
    """fn's `meta`: a JSON-serialisable dict (default empty)."""
    meta = result.get("meta", {})
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: meta is a {type(meta).__name__}, expected a dict")
    try:
        json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: meta is not JSON-serialisable ({exc})") from None
    return meta


def make(fn: Callable[[Any], Any], value: Any, classes: int, where: Input) -> Made | None:
    """The sample of one input (None: fn skipped it). BadRecord when fn raised; ConfigError, naming the
    input, when its output breaks a rule."""
    result = call(fn, value, where)
    if result is None:
        return None
    if not isinstance(result, dict):
        raise ConfigError(f"{where}: fn returned a {type(result).__name__}, expected a dict or None")
    unknown = sorted(set(result) - KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: fn returned unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})"
        )
    pixels, ext, data = image_of(result, where)
    mask = mask_of(result, pixels.shape[:2], classes, where)
    return Made(pixels, mask, meta_of(result, where), ext, data)
