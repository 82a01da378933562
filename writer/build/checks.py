"""Checks a build makes before it renders: what a count asks of the source, and how a folder's set differs."""

import json
from typing import Any

from segshards.writer.errors import SupplyError
from segshards.writer.recipes.contract import Recipe

MISSING = object()


def settings_diff(found: Any, wanted: dict[str, Any]) -> str:
    """Each setting that differs, as `NAME THERE there, ASKED asked` (nested ones as `counts.train`)."""
    there = flat_settings(found if isinstance(found, dict) else {})
    asked = flat_settings(wanted)
    keys = sorted(k for k in there.keys() | asked.keys() if there.get(k, MISSING) != asked.get(k, MISSING))
    return "; ".join(f"{k} {shown(there, k)} there, {shown(asked, k)} asked" for k in keys)


def shown(settings: dict[str, Any], key: str) -> str:
    return json.dumps(settings[key]) if key in settings else "(unset)"


def flat_settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings flattened to dotted names."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_supply(recipe: Recipe, spec: Any, counts: dict[str, int | None]) -> None:
    """Refuse, before any rendering, a count above what the recipe says a split can ever supply."""
    supply = getattr(recipe, "supply", None)
    for split, n in counts.items():
        limit = supply(spec, split) if supply is not None and n is not None else None
        if limit is not None and n is not None and n > limit:
            raise SupplyError(
                f"--{split} {n}: {recipe.name} can supply at most {limit:,} {split} samples from this source"
            )
