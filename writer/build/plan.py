"""Central, seeded planning: draw candidates per split, reject duplicate images globally, cut into shards."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from segshards.writer.build.near_dup_plan import NearFilter
from segshards.writer.build.shards import ShardTask
from segshards.writer.errors import SupplyError
from segshards.writer.format.keys import accept
from segshards.writer.format.manifest import SPLITS
from segshards.writer.recipes.contract import Recipe
from segshards.writer.recipes.registry import recipe_ref

SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
ATTEMPTS_PER_SAMPLE = 20  # give up on a split after this many candidates per requested sample


@dataclass
class SplitPlan:
    """Running account of one split's planning: samples accepted and duplicates rejected."""

    split: str
    count: int = 0
    rejected: int = 0


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator for one split, derived from (seed, split) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split]]))


def plan_split(
    recipe: Recipe,
    spec: Any,
    count: int | None,
    *,
    seed: int,
    seen: set[bytes],
    chunk: int,
    plan: SplitPlan,
    near: NearFilter | None = None,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Accept candidates whose image digest is new to `seen` until `count` (None: all the source has).

    Yields the accepted (items, keys) in chunks of `chunk` as they fill, so shards can be rendered while
    planning goes on; the last, shorter chunk comes only once the split is known to be complete.
    """
    split = plan.split
    items: list[np.ndarray] = []  # accepted rows not yet yielded, a block per candidate batch
    keys: list[str] = []
    attempts = 0
    limit = None if count is None else ATTEMPTS_PER_SAMPLE * count + 10_000
    batches = recipe.candidates(spec, split, split_rng(seed, split)) if count != 0 else iter(())
    if near is not None:  # `--near-duplicates reject`: its own check after the exact one
        batches = near.pieces(batches)
    for batch in batches:
        need = None if count is None else count - plan.count
        if near is None:
            accepted, rejected = accept(batch.digests, seen, need)
        else:
            accepted, rejected = near.accept(batch, seen, need, split)
        plan.count, plan.rejected = plan.count + len(accepted), plan.rejected + rejected
        items.append(batch.items[accepted])
        keys.extend(batch.digests[i].hex() for i in accepted)
        while len(keys) >= chunk:
            pending = np.concatenate(items)
            yield pending[:chunk], keys[:chunk]
            items, keys = [pending[chunk:]], keys[chunk:]
        attempts += len(batch.items)
        if (count is not None and plan.count == count) or (limit is not None and attempts >= limit):
            break
    if count is not None and plan.count < count:
        raise SupplyError(
            f"--{split} {count}: {recipe.name} can supply only {plan.count} unique {split} samples from this source"
        )
    if keys:
        yield np.concatenate(items), keys


def plan_tasks(
    recipe: Recipe,
    spec: Any,
    counts: dict[str, int | None],
    *,
    seed: int,
    shard_size: int,
    task_spec: Any,
    out_dir: str,
    plans: list[SplitPlan],
    near: NearFilter | None = None,
) -> Iterator[ShardTask]:
    """Plan every split in fixed order with one global dedup index, yielding each shard's task as soon as
    its samples are chosen; `plans` receives each split's account. `task_spec` is what workers load."""
    seen: set[bytes] = set()
    for split in SPLITS:
        plan = SplitPlan(split)
        plans.append(plan)
        chunks = plan_split(
            recipe, spec, counts[split], seed=seed, seen=seen, chunk=shard_size, plan=plan, near=near
        )
        for index, (items, keys) in enumerate(chunks):
            yield ShardTask(recipe_ref(recipe), task_spec, out_dir, split, index, items, tuple(keys))


def plan_all(recipe: Recipe, spec: Any, counts: dict[str, int | None], *, seed: int) -> list[ShardTask]:
    """The whole plan at once, one task per split (for inspection and measurement)."""
    plans: list[SplitPlan] = []
    tasks = plan_tasks(
        recipe, spec, counts, seed=seed, shard_size=2**62, task_spec=spec, out_dir="", plans=plans
    )
    return list(tasks)
