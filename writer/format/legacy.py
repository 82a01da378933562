"""Schemas of format-1 manifests, which predate `schema`, as plain data.

Format 1 was written only by the four built-in recipes, so their schemas are known: each entry below is the
JSON schema the recipe records today for the same set (MNIST recipes at their fixed sizes; coco-semantic
with the class names its format-1 manifest lists under `source.classes`).
"""

from typing import Any

from segshards.writer.errors import ShardFormatError

_GREY = {"channels": 1, "member": "png"}
_MASK = {"background": 0, "dtype": "uint8", "ignore": 255, "member": "mask.png"}
_META = {"member": "json"}
_DIGITS = [str(d) for d in range(10)]
_SMALL = {"batch_size": 64, "lr": 0.003, "samples_per_epoch": None, "stem": 1}

MNIST_SCHEMAS: dict[str, dict[str, Any]] = {
    "mnist-foreground": {
        "image": {**_GREY, "size": [28, 28]},
        "mask": {**_MASK, "classes": ["background", "foreground"]},
        "meta": _META,
        "targets": [],
        "training": {**_SMALL, "epochs": 2, "metrics": ["iou"], "widths": [8, 16, 32]},
    },
    "mnist-circle": {
        "image": {**_GREY, "size": [28, 28]},
        "mask": {**_MASK, "classes": ["background", "circle"]},
        "meta": _META,
        "targets": [
            {"classes": _DIGITS, "dtype": "int64", "from": ["label"], "name": "label", "role": "class", "shape": []},
            {"dtype": "float32", "from": ["circle.cx", "circle.cy", "circle.r"], "name": "circle", "role": "circle", "shape": [3]},
        ],
        "training": {**_SMALL, "epochs": 3, "metrics": ["accuracy", "circle_iou"], "widths": [16, 32]},
    },
    "mnist-grid": {
        "image": {**_GREY, "size": [56, 56]},
        "mask": {**_MASK, "classes": ["background", *_DIGITS]},
        "meta": _META,
        "targets": [{"classes": _DIGITS, "dtype": "int64", "from": ["digits"], "name": "digits", "role": "value", "shape": [4]}],
        "training": {"batch_size": 64, "epochs": 4, "lr": 0.006, "metrics": ["dice_macro"], "samples_per_epoch": 32000, "stem": 2, "widths": [16, 32, 64]},
    },
}  # fmt: skip
COCO_TRAINING = {"batch_size": 8, "epochs": 1, "lr": 0.001, "metrics": ["miou", "miou_objects", "pixel_accuracy"], "samples_per_epoch": None, "size": [320, 320], "stem": 2, "widths": [32, 64, 128, 256]}  # fmt: skip


def legacy_schema_json(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    """The JSON schema of a format-1 manifest, or ShardFormatError when it names no format-1 recipe."""
    recipe = manifest.get("recipe")
    if isinstance(recipe, str) and recipe in MNIST_SCHEMAS:
        return MNIST_SCHEMAS[recipe]
    if recipe == "coco-semantic":
        return _coco_schema(manifest, where)
    raise ShardFormatError(
        f"{where}: format_version 1 manifest of unknown recipe {str(recipe)[:40]!r} has no schema"
    )


def _coco_schema(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    classes = manifest.get("source", {}).get("classes")
    if not isinstance(classes, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in classes
    ):
        raise ShardFormatError(f"{where}: source.classes is missing or malformed")
    return {
        "image": {"channels": 3, "member": "jpg", "size": None},
        "mask": {**_MASK, "classes": ["background", *(c["name"] for c in classes)]},
        "meta": _META,
        "targets": [],
        "training": COCO_TRAINING,
    }
