"""`--near-duplicates` in a build: `reject` while planning (a candidate near one examined before it is left out,
the first in the seeded order winning), and the counts the manifest records per split.

`reject` needs each candidate's codes before it is chosen. A photo walk (coco-semantic, mask-folder), which
decodes every image it checks, computes them there from the pixels (`WalkCheck`, set in its spec), leaves
near-duplicates out of each split's count as it fills the splits, and hands the codes to the planner with
the candidates; for other recipes, the candidates that pass the exact check are rendered once more, in
pieces on the build's worker processes (`map_in_order`, results in order). Either way each candidate's codes are
checked against those of every candidate examined before it (`NearIndex`), in the same order, to the same
choices: a candidate near any of them is left out, so the first of each group (as `audit` groups them: a
copy of a copy too) is the one kept. The plan depends only on
those codes, computed in this machine's processes, so it is the same for any `--jobs` and backend.
`report` changes nothing that is chosen: a photo walk's codes come with the candidates, and for other
recipes each shard task computes the codes of the samples it writes; the pairs are grouped once every
shard is written.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from segshards.writer.build.near_dup_codes import NO_CODES, NearIndex, sample_codes, walks_photos
from segshards.writer.build.shards import ShardResult, ShardTask
from segshards.writer.format.keys import accept
from segshards.writer.process_pool import map_in_order
from segshards.writer.recipes.contract import Candidates, Recipe
from segshards.writer.recipes.registry import load_ref
from segshards.writer.share.near_duplicates import THRESHOLD, groups, near_pairs

PIECE = 256  # candidates checked at a time: shards are cut (and rendered) while planning goes on
RENDER_PIECE = 16  # candidates a worker renders for their codes per call


@dataclass(frozen=True)
class CodesTask:
    """Planned items whose codes a worker computes: small and picklable."""

    recipe: str
    spec: Any
    items: np.ndarray


def codes_of(task: CodesTask) -> np.ndarray:
    """(n, 2, 6) codes of the task's items, rendered by their recipe."""
    recipe = load_ref(task.recipe)
    found = [
        sample_codes(s, f"{task.recipe}: item {i}")
        for i, s in enumerate(recipe.render_batch(task.spec, task.items))
    ]
    return np.stack(found) if found else NO_CODES


class NearFilter:
    """The planner's `reject` check: one index of the codes examined across all splits, near-duplicates
    left out and counted per split."""

    def __init__(self, recipe: str, spec: Any, *, workers: int, threshold: int = THRESHOLD) -> None:
        self.recipe, self.spec, self.workers = recipe, spec, workers
        self.examined = NearIndex(threshold)
        self.rejected: dict[str, int] = {}

    def pieces(self, batches: Iterable[Candidates]) -> Iterator[Candidates]:
        """The recipe's candidate batches in pieces of at most PIECE, in order."""
        for batch in batches:
            for start in range(0, len(batch.digests), PIECE):
                part = slice(start, start + PIECE)
                codes = batch.codes[part] if batch.codes is not None else None
                yield Candidates(batch.items[part], batch.digests[part], codes)

    def accept(
        self, batch: Candidates, seen: set[bytes], need: int | None, split: str
    ) -> tuple[list[int], int]:
        """`keys.accept` followed by the near-duplicate check: indices of the batch's candidates kept, at
        most `need`, and how many were exact duplicates. Until `need` is met, candidates after a near-
        duplicate are examined in their turn."""
        kept: list[int] = []
        exact = 0
        start = 0
        while start < len(batch.digests) and (need is None or len(kept) < need):
            want = None if need is None else need - len(kept)
            found, rejected = accept(batch.digests[start:], seen, want)
            exact += rejected
            chosen = [start + i for i in found]
            start = chosen[-1] + 1 if want is not None and len(found) == want else len(batch.digests)
            if chosen:
                codes = batch.codes[chosen] if batch.codes is not None else self.codes(batch.items[chosen])
                keep = self.examined.admit(codes)
                kept.extend(i for i, k in zip(chosen, keep.tolist(), strict=True) if k)
                self.rejected[split] = self.rejected.get(split, 0) + int((~keep).sum())
        return kept, exact

    def codes(self, items: np.ndarray) -> np.ndarray:
        tasks = [
            CodesTask(self.recipe, self.spec, items[s : s + RENDER_PIECE])
            for s in range(0, len(items), RENDER_PIECE)
        ]
        found = map_in_order(codes_of, tasks, workers=self.workers, ahead=2 * self.workers)
        return np.concatenate(list(found))


def codes_asked(
    tasks: Iterable[ShardTask], mode: str | None, spec: Any, walked: dict[str, ShardTask]
) -> Iterator[ShardTask]:
    """The shard tasks, each asked for its samples' codes under `report`; for a photo walk, whose codes
    come with its candidates, none is, and `walked` keeps each task by name for `add_walk_codes`."""
    from_walk = mode == "report" and walks_photos(spec) and spec.near is not None
    for task in tasks:
        if from_walk:
            walked[task.name] = task
        yield replace(task, codes=True) if mode == "report" and not from_walk else task


def add_walk_codes(
    recipe: Recipe,
    spec: Any,
    tasks: dict[str, ShardTask],
    results: list[ShardResult],
    rng_of: Callable[[str], np.random.Generator],
) -> None:
    """`report` for a photo walk, which computed each image's codes from the pixels it decoded and hands
    them over with the candidates: each result's codes, looked up by the items of its task (no shard task
    decodes an image again for them)."""
    for split in sorted({r.split for r in results}):
        found: dict[bytes, np.ndarray] = {}
        for batch in recipe.candidates(spec, split, rng_of(split)):
            assert batch.codes is not None, "a photo walk's candidates carry their codes"
            found.update(zip((row.tobytes() for row in batch.items), batch.codes, strict=True))
        for result in (r for r in results if r.split == split):
            rows = tasks[result.name].items
            result.codes = np.stack([found[row.tobytes()] for row in rows]) if len(rows) else NO_CODES


def split_counts(splits: list[str], codes: np.ndarray, where: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per split: `groups` of near-duplicates holding two or more of its images, the `images` in them,
    and `leaks`: per other split, its images with a near-duplicate there (in the same group)."""
    out: dict[str, dict[str, Any]] = {s: {"groups": 0, "images": 0, "leaks": {}} for s in splits}
    a, b, d = near_pairs(codes) if len(codes) else (np.zeros(0, np.int64),) * 3
    for group in groups(len(codes), a, b, d):
        members = where[list(group.members)]
        present = np.bincount(members, minlength=len(splits))
        for i, split in enumerate(splits):
            if present[i] >= 2:
                out[split]["groups"] += 1
                out[split]["images"] += int(present[i])
            for j, other in enumerate(splits):
                if i != j and present[i] and present[j]:
                    leaks = out[split]["leaks"]
                    leaks[other] = leaks.get(other, 0) + int(present[i])
    return out


def record(manifest: dict[str, Any], mode: str, results: list[ShardResult], near: NearFilter | None) -> None:
    """Add the near-duplicate counts to a manifest whose splits are in order: per split (`report`: from
    the shards' codes; `reject`: none is left by construction, and those left out), and the settings."""
    splits = list(manifest["splits"])
    top: dict[str, Any] = {"mode": mode}
    if mode != "off":
        top["threshold"] = THRESHOLD
        if mode == "report":
            ordered = [r for s in splits for r in results if r.split == s and r.codes is not None]
            codes = np.concatenate([r.codes for r in ordered]) if ordered else NO_CODES
            where = (
                np.concatenate([np.full(len(r.codes), splits.index(r.split)) for r in ordered])
                if ordered
                else np.zeros(0, np.int64)
            )
            counts = split_counts(splits, codes, where)
        else:
            counts = {s: {"groups": 0, "images": 0, "leaks": {}} for s in splits}
        rejected = near.rejected if near is not None else {}
        for split in splits:
            manifest["splits"][split]["near_duplicates"] = {
                **counts[split],
                "rejected": rejected.get(split, 0),
            }
        top["rejected"] = sum(rejected.values())
    manifest["near_duplicates"] = top
