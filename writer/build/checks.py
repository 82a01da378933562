"""Checks a build makes before it renders: what the counts ask of the source, and how a folder's set differs."""

import json
from collections.abc import Collection
from typing import Any

from segshards.writer.errors import SupplyError
from segshards.writer.recipes.contract import Recipe

MISSING = object()


def settings_diff(found: Any, wanted: dict[str, Any]) -> str:
    """Each setting that differs, as `NAME THERE there, ASKED asked` (nested ones as `counts.train`); only
    the recipe when the folder holds another recipe's set (its other settings are beside the point)."""
    there = flat_settings(found if isinstance(found, dict) else {})
    asked = flat_settings(wanted)
    keys = sorted(k for k in there.keys() | asked.keys() if there.get(k, MISSING) != asked.get(k, MISSING))
    if "recipe" in keys:
        keys = ["recipe"]
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


def check_supply(
    recipe: Recipe, spec: Any, counts: dict[str, int | None], *, defaulted: Collection[str] = ()
) -> None:
    """Refuse, before any rendering, counts above what the recipe says its source can ever supply: each
    split's own limit (`recipe.supply(spec, split)`) and the limit of all splits together when they draw
    from one pool (`recipe.supply_total(spec)`). Every count that cannot work is named in one message,
    with counts that fit; `defaulted` names the splits whose count is the recipe's default."""
    limits = split_limits(recipe, spec, counts)
    total_of = getattr(recipe, "supply_total", None)
    total = total_of(spec) if total_of is not None else None
    asked = {s: n for s, n in counts.items() if n is not None}
    over = [s for s, n in asked.items() if s in limits and n > limits[s]]
    pooled = total is not None and sum(asked.values()) > total
    if not over and not pooled:
        return
    problems = [f"{option(s, asked[s], defaulted)} (at most {limits[s]:,})" for s in over]
    if pooled:
        listed = ", ".join(option(s, n, defaulted) for s, n in asked.items())
        problems.append(
            f"{listed} ask for {sum(asked.values()):,} samples in all, and the source holds at most {total:,} "
            "for all splits together (no sample is in two splits)"
        )
    fit = fitting_counts(asked, limits, total, given=[s for s in asked if s not in defaulted])
    suggestion = " ".join(f"--{s} {n}" for s, n in fit.items())
    raise SupplyError(
        f"{recipe.name} cannot supply these counts from this source: {'; '.join(problems)}; "
        f"counts that fit: {suggestion}"
    )


def split_limits(recipe: Recipe, spec: Any, counts: dict[str, int | None]) -> dict[str, int]:
    """Each asked split's own limit, where the recipe states one."""
    supply = getattr(recipe, "supply", None)
    if supply is None:
        return {}
    limits = {s: supply(spec, s) for s, n in counts.items() if n is not None}
    return {s: n for s, n in limits.items() if n is not None}


def option(split: str, n: int, defaulted: Collection[str]) -> str:
    return f"--{split} {n}" + (" (the default)" if split in defaulted else "")


def fitting_counts(
    asked: dict[str, int], limits: dict[str, int], total: int | None, *, given: Collection[str]
) -> dict[str, int]:
    """Counts near the asked ones that the limits allow: each split capped at its own limit, then, over a
    shared pool, the counts given kept if they fit and the defaulted ones shrunk into what is left (else all
    shrunk in proportion)."""
    capped = {s: min(n, limits.get(s, n)) for s, n in asked.items()}
    if total is None or sum(capped.values()) <= total:
        return capped
    kept = {s: n for s, n in capped.items() if s in given}
    rest = {s: n for s, n in capped.items() if s not in given}
    if not rest or sum(kept.values()) > total:
        return shrunk(capped, total)
    fit = {**kept, **shrunk(rest, total - sum(kept.values()))}
    return {s: fit[s] for s in asked}  # in the splits' order


def shrunk(counts: dict[str, int], room: int) -> dict[str, int]:
    """`counts` scaled down to sum to `room` (largest remainders rounded up), every non-zero split keeping
    at least 1 while `room` allows."""
    whole = sum(counts.values())
    if whole <= room:
        return dict(counts)
    exact = {s: n * room / whole for s, n in counts.items()}
    out = {s: int(x) for s, x in exact.items()}
    for s in sorted(exact, key=lambda s: out[s] - exact[s])[: room - sum(out.values())]:
        out[s] += 1
    for s in [s for s, n in counts.items() if n and not out[s]]:
        donor = max(out, key=lambda k: out[k])
        if out[donor] > 1:
            out[donor] -= 1
            out[s] = 1
    return {s: out[s] for s in counts}
