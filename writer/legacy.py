"""Schemas of format-1 manifests, which predate `schema`: derived from what format 1 recorded.

Format 1 was written only by the four built-in recipes, so their schemas are known; each is rebuilt with
the same function the recipe uses today.
"""

from typing import Any

from segshards.writer.errors import ShardFormatError
from segshards.writer.schema import IGNORE, SampleSchema


def legacy_schema(manifest: dict[str, Any], where: str) -> SampleSchema:
    """The schema of a format-1 manifest, or ShardFormatError when it names no format-1 recipe."""
    recipe = manifest.get("recipe")
    if recipe == "mnist-foreground":
        from segshards.writer.recipes.foreground import foreground_schema

        return foreground_schema((28, 28))
    if recipe == "mnist-circle":
        from segshards.writer.recipes.circle import circle_schema

        return circle_schema((28, 28))
    if recipe == "mnist-grid":
        from segshards.writer.recipes.grid import grid_schema

        return grid_schema((56, 56))
    if recipe == "coco-semantic":
        return _coco_schema(manifest, where)
    raise ShardFormatError(
        f"{where}: format_version 1 manifest of unknown recipe {str(recipe)[:40]!r} has no schema"
    )


def _coco_schema(manifest: dict[str, Any], where: str) -> SampleSchema:
    from segshards.writer.recipes.coco import CocoSemanticRecipe

    classes = manifest.get("source", {}).get("classes")
    if not isinstance(classes, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in classes
    ):
        raise ShardFormatError(f"{where}: source.classes is missing or malformed")
    names = ("background", *(c["name"] for c in classes))
    return SampleSchema("jpg", 3, None, names, ignore=IGNORE, training=CocoSemanticRecipe.training)
