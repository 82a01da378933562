"""The sample schema: what a set's samples hold, recorded in its manifest so that readers need no recipe code.

A recipe declares its schema (`Recipe.schema`); the build writes it to `manifest.json` under `schema`:

    "schema": {
      "image": {"member": "png", "channels": 1, "size": [28, 28]},      # size null: images vary in size
      "mask": {"member": "mask.png", "dtype": "uint8", "classes": ["background", "circle"],
               "background": 0, "ignore": 255},
      "meta": {"member": "json"},
      "targets": [{"name": "label", "dtype": "int64", "shape": [], "from": ["label"],
                   "role": "class", "classes": ["0", ..., "9"]},
                  {"name": "circle", "dtype": "float32", "shape": [3],
                   "from": ["circle.cx", "circle.cy", "circle.r"], "role": "circle"}],
      "training": {"epochs": 3, "lr": 0.003, ...}                       # the recipe's suggested CPU run
    }

A target's `from` holds dotted paths into the sample's JSON: one path whose value has the target's shape
(`digits`: a list of 4), or one path per element (`circle`). `role` tells a trainer what a target means:
`class` (an integer in 0..len(classes)-1), `circle` ((cx, cy, r) in pixels), or `value` (anything else).
The loaders turn each target into a batch tensor of its dtype and shape; `segshards train` picks its task
from the roles. Manifests of format 1 have no `schema`: `schema_of` derives theirs from what format 1 recorded.
"""

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.legacy import legacy_schema_json

IGNORE = 255
DTYPES = ("int64", "float32", "uint8")
ROLES = ("class", "circle", "value")
INT64 = (-(2**63), 2**63 - 1)
MAX_DIMS, MAX_ELEMENTS = 4, 4096  # targets are small per-sample facts, not arrays


# Suggested training for photographs of any size: letterboxed to 320x320, a four-level U-Net at stem 2
# (total stride 16; the README's "Models" says why). Recipes of photographs add their metrics.
PHOTOGRAPH_TRAINING: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 8,
    "lr": 1e-3,
    "samples_per_epoch": None,
    "widths": [32, 64, 128, 256],
    "stem": 2,
    "size": [320, 320],
}


@dataclass(frozen=True)
class Target:
    """One per-sample value taken from the sample's JSON into the batch as `name`, (N, *shape) of `dtype`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: tuple[str, ...]  # dotted JSON paths: one holding the whole value, or one per element
    role: str = "value"
    classes: tuple[str, ...] = ()  # a `class` target's value names, by value

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "from": list(self.source)}
        out["role"] = self.role
        if self.classes:
            out["classes"] = list(self.classes)
        return out

    def value(self, meta: Any) -> list[Any]:
        """The target's elements from a sample's parsed JSON, flat and checked; ValueError says what is wrong."""
        if len(self.source) == 1:
            flat = list(_flatten(_lookup(meta, self.source[0]), self.shape, self.source[0]))
        else:
            flat = [_lookup(meta, path) for path in self.source]
        return [_check_scalar(v, self.dtype, self.name) for v in flat]


@dataclass(frozen=True)
class SampleSchema:
    """What every sample of a set holds: image, mask classes, per-sample targets, and training hints."""

    image: str  # image member extension: png, jpg
    channels: int  # 1 grey, 3 colour (RGB once decoded by the loaders)
    size: tuple[int, int] | None  # (H, W) of every image; None when sizes vary
    classes: tuple[str, ...]  # mask class names by class index
    background: int = 0
    ignore: int | None = IGNORE
    targets: tuple[Target, ...] = ()
    training: Mapping[str, Any] = field(default_factory=dict)  # the recipe's suggested training options
    mask: str = "mask.png"
    meta: str = "json"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": {"member": self.image, "channels": self.channels, "size": _list(self.size)},
            "mask": {
                "member": self.mask,
                "dtype": "uint8",
                "classes": list(self.classes),
                "background": self.background,
                "ignore": self.ignore,
            },
            "meta": {"member": self.meta},
            "targets": [t.to_json() for t in self.targets],
            "training": dict(self.training),
        }

    def target(self, role: str) -> Target | None:
        """The first target with `role`, if any."""
        return next((t for t in self.targets if t.role == role), None)


def _list(size: tuple[int, int] | None) -> list[int] | None:
    return None if size is None else list(size)


def _lookup(meta: Any, path: str) -> Any:
    value = meta
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"no {path!r} in the sample's JSON")
        value = value[part]
    return value


def _flatten(value: Any, shape: tuple[int, ...], path: str) -> Iterator[Any]:
    """The elements of a nested list of exactly `shape`, row-major."""
    if not shape:
        yield value
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise ValueError(f"{path!r} is not a list of {shape[0]}")
    for item in value:
        yield from _flatten(item, shape[1:], path)


def _check_scalar(value: Any, dtype: str, name: str) -> int | float:
    """`value` when it fits `dtype` exactly: integers for int types (no float truncation), finite numbers
    for float32."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: {type(value).__name__} value, expected {dtype}")
    if dtype == "float32":
        if not math.isfinite(value) or abs(value) > 3.4e38:
            raise ValueError(f"{name}: {value!r} is not a finite float32")
        return float(value)
    if not isinstance(value, int):
        raise ValueError(f"{name}: {value!r} is not an integer ({dtype})")
    low, high = (0, 255) if dtype == "uint8" else INT64
    if not low <= value <= high:
        raise ValueError(f"{name}: an integer outside {dtype}")
    return value


# ---- reading a manifest's schema -------------------------------------------------------------------


def _field(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ShardFormatError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise ShardFormatError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _small_int(value: Any, where: str, low: int = 0, high: int = 1 << 20) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShardFormatError(f"{where}: {type(value).__name__} value, expected an integer in {low}..{high}")
    if not low <= value <= high:  # never printed: it may have thousands of digits
        raise ShardFormatError(f"{where}: integer outside {low}..{high}")
    return value


def _names(values: Any, where: str) -> tuple[str, ...]:
    if not isinstance(values, list) or len(values) > 65536 or not all(isinstance(v, str) for v in values):
        raise ShardFormatError(f"{where}: expected a list of names")
    return tuple(values)


def _target_from_json(raw: Any, where: str) -> Target:
    name = _field(raw, "name", str, where)
    dtype = _field(raw, "dtype", str, where)
    if dtype not in DTYPES:
        raise ShardFormatError(f"{where}: dtype {dtype[:20]!r} is not one of {', '.join(DTYPES)}")
    shape_raw = _field(raw, "shape", list, where)
    if len(shape_raw) > MAX_DIMS:
        raise ShardFormatError(f"{where}: shape has more than {MAX_DIMS} dimensions")
    shape = tuple(_small_int(n, f"{where}: shape", 1, MAX_ELEMENTS) for n in shape_raw)
    source = _names(_field(raw, "from", list, where), f"{where}: from")
    role = raw.get("role", "value")
    if role not in ROLES:
        raise ShardFormatError(f"{where}: role {str(role)[:20]!r} is not one of {', '.join(ROLES)}")
    target = Target(name, dtype, shape, source, role, _names(raw.get("classes", []), f"{where}: classes"))
    if target.size > MAX_ELEMENTS or len(source) not in (1, target.size):
        raise ShardFormatError(f"{where}: 'from' must hold one path or one per element ({target.size})")
    return target


def schema_from_json(raw: Any, where: str) -> SampleSchema:
    """A schema read from a manifest's `schema` entry; ShardFormatError names the bad field."""
    image = _field(raw, "image", dict, where)
    mask = _field(raw, "mask", dict, where)
    size_raw = image.get("size")
    if size_raw is not None and (not isinstance(size_raw, list) or len(size_raw) != 2):
        raise ShardFormatError(f"{where}: image.size must be [H, W] or null")
    size = None if size_raw is None else tuple(_small_int(n, f"{where}: image.size", 1) for n in size_raw)
    ignore = mask.get("ignore")
    targets_raw = _field(raw, "targets", list, where)
    training = raw.get("training", {})
    if not isinstance(training, dict):
        raise ShardFormatError(f"{where}: training must be an object")
    return SampleSchema(
        image=_field(image, "member", str, f"{where}: image"),
        channels=_small_int(
            _field(image, "channels", int, f"{where}: image"), f"{where}: image.channels", 1, 4
        ),
        size=size,  # type: ignore[arg-type]
        classes=_names(_field(mask, "classes", list, f"{where}: mask"), f"{where}: mask.classes"),
        background=_small_int(mask.get("background", 0), f"{where}: mask.background", 0, 255),
        ignore=None if ignore is None else _small_int(ignore, f"{where}: mask.ignore", 0, 255),
        targets=tuple(_target_from_json(t, f"{where}: targets[{i}]") for i, t in enumerate(targets_raw)),
        training=training,
        mask=_field(mask, "member", str, f"{where}: mask"),
        meta=_field(_field(raw, "meta", dict, where), "member", str, f"{where}: meta"),
    )


def schema_of(manifest: dict[str, Any], where: str = "manifest") -> SampleSchema:
    """The sample schema of a parsed manifest: its `schema` entry, or for format 1 the one derived from it."""
    if "schema" in manifest:
        return schema_from_json(manifest["schema"], f"{where}: schema")
    return schema_from_json(legacy_schema_json(manifest, where), f"{where}: format-1 schema")
