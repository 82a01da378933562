"""Central, seeded planning: draw candidates per split, reject duplicate images globally, cut into shards."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from writer.errors import SupplyError
from writer.recipe import SPLITS, Recipe
from writer.shards import ShardTask

SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
ATTEMPTS_PER_SAMPLE = 20  # give up on a split after this many candidates per requested sample


@dataclass
class SplitPlan:
    """Accepted candidates of one split, in sample order, with their keys and the rejection count."""

    split: str
    items: np.ndarray
    keys: list[str]
    rejected: int


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator for one split, derived from (seed, split) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split]]))


def plan_split(
    recipe: Recipe, spec: Any, split: str, count: int | None, *, seed: int, seen: set[bytes]
) -> SplitPlan:
    """Accept candidates whose image digest is new to `seen` until `count` (None: all the source has)."""
    rows: list[np.ndarray] = []
    keys: list[str] = []
    rejected = attempts = 0
    limit = None if count is None else ATTEMPTS_PER_SAMPLE * count + 10_000
    batches = recipe.candidates(spec, split, split_rng(seed, split)) if count != 0 else iter(())
    for batch in batches:
        for row, digest in zip(batch.items, batch.digests, strict=True):
            if count is not None and len(keys) == count:
                break
            if digest in seen:
                rejected += 1
                continue
            seen.add(digest)
            rows.append(row)
            keys.append(digest.hex())
        attempts += len(batch.items)
        if (count is not None and len(keys) == count) or (limit is not None and attempts >= limit):
            break
    if count is not None and len(keys) < count:
        raise SupplyError(
            f"--{split} {count}: {recipe.name} can supply only {len(keys)} unique {split} samples from this source"
        )
    items = np.stack(rows) if rows else np.zeros((0, 1), dtype=np.int64)
    return SplitPlan(split=split, items=items, keys=keys, rejected=rejected)


def plan_all(
    recipe: Recipe, spec: Any, counts: dict[str, int | None], *, seed: int
) -> tuple[list[SplitPlan], int]:
    """Plan every split in fixed order with one global dedup index; returns the plans and its size."""
    seen: set[bytes] = set()
    plans = [plan_split(recipe, spec, split, counts[split], seed=seed, seen=seen) for split in SPLITS]
    return plans, len(seen)


def shard_tasks(
    recipe: Recipe, spec: Any, out_dir: str, plans: list[SplitPlan], shard_size: int
) -> list[ShardTask]:
    """Cut each split's plan into tasks of `shard_size` samples (the last one may be smaller)."""
    tasks = []
    for plan in plans:
        for index, start in enumerate(range(0, len(plan.keys), shard_size)):
            stop = start + shard_size
            tasks.append(
                ShardTask(
                    recipe.name,
                    spec,
                    out_dir,
                    plan.split,
                    index,
                    plan.items[start:stop],
                    tuple(plan.keys[start:stop]),
                )
            )
    return tasks
