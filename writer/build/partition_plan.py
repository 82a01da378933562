"""Planning with the dedup index partitioned across dask workers: the central plan's decisions, exactly.

Whether a candidate is a duplicate depends only on earlier candidates with the same digest, and those all
live in the same partition. So if every partition sees its digests in the global candidate order, it makes
the decisions the central `set` would (`docs/SCALING.md`). Per round of candidate batches the coordinator
routes each digest to its partition, which answers "new" without recording it; the coordinator then
accepts new candidates batch by batch until the split has its count, exactly as
`segshards.writer.build.plan.plan_split` does, and the partitions record only the accepted digests (with
their next probe). The coordinator keeps counts, one round, and the shards in flight.

A worker lost with its partition (or a split's candidate stream) is rebuilt by planning again from the
start on the workers left: the plan is a function of the seed, so the rebuilt index is the lost one, and
each shard task already handed out is checked against the new plan (a digest of its keys) instead of
being handed out again.
"""

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segshards.writer.build.dask_backend import check_scheduler, connect
from segshards.writer.build.partition import CandidateDrawer, IndexPartition, Round, owners, words_hex
from segshards.writer.build.plan import ATTEMPTS_PER_SAMPLE, SplitPlan
from segshards.writer.build.shards import ShardTask
from segshards.writer.errors import ClusterError, PlanError, SupplyError
from segshards.writer.format.manifest import SPLITS
from segshards.writer.recipes.contract import Recipe
from segshards.writer.recipes.registry import recipe_ref

ROUND = 1 << 16  # candidates routed and settled per round trip to the partitions
PARTITIONS_PER_WORKER = 2
MAX_REPLAYS = 3  # plans started again after losing a worker, before giving up
CALL_TIMEOUT_S = 600


class IndexLost(Exception):
    """A worker holding part of the plan (a partition or a candidate stream) is gone."""


@contextlib.contextmanager
def lost_worker() -> Iterator[None]:
    """Turn what a call to an actor of a lost worker raises (when it is made or answered) into IndexLost."""
    try:
        yield
    except (RuntimeError, OSError, TimeoutError) as exc:
        if not is_lost(exc):
            raise  # the recipe's own error on a worker, e.g. a source it cannot read: not retried
        raise IndexLost(" ".join(str(exc).split()) or type(exc).__name__) from exc


def is_lost(exc: BaseException) -> bool:
    """Whether `exc` is what distributed raises for a call to an actor whose worker is gone (or a call
    that never returned)."""
    text = str(exc)
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "CommClosedError":
        return True
    return "Worker holding Actor was lost" in text or "Unable to contact Actor's worker" in text


def send(actor: Any, method: str, *args: Any) -> Any:
    """Call `method` of an actor (or a LocalDrawer): its future."""
    with lost_worker():
        return getattr(actor, method)(*args)


def wait(futures: list[Any]) -> list[Any]:
    """The results of actor calls."""
    with lost_worker():
        return [f.result(timeout=CALL_TIMEOUT_S) for f in futures]


def start_actors(client: Any, cls: type, count: int, *args: Any) -> list[Any]:
    """`count` actors of `cls`, spread round-robin over the workers alive now; with none alive (one lost,
    its nanny not back yet), wherever the scheduler places them once a worker comes."""
    workers = sorted(client.scheduler_info()["workers"])
    with client.as_current():  # actor handles bind to this client, not to a process-wide default one
        futures = [
            client.submit(cls, *args, actor=True, pure=False, **placement(workers, i)) for i in range(count)
        ]
        return wait(futures)


def placement(workers: list[str], i: int) -> dict[str, Any]:
    """The i-th actor's worker, round-robin, others allowed; nothing when no worker is known (distributed
    refuses `allow_other_workers` without `workers`)."""
    if not workers:
        return {}
    return {"workers": workers[i % len(workers)], "allow_other_workers": True}


@dataclass
class PartitionedIndex:
    """The coordinator's handle on the partitions: routes each round, and says what to record next step."""

    actors: list[Any]
    keep: list[np.ndarray | None] = field(default_factory=list)
    routed: list[np.ndarray] = field(default_factory=list)

    def probe(self, words: np.ndarray) -> np.ndarray:
        """True at each candidate of `words` (n, 2) that is new, its partitions' last accepted recorded first."""
        owner = owners(words, len(self.actors))
        self.routed = [np.flatnonzero(owner == p) for p in range(len(self.actors))]
        keep = self.keep or [None] * len(self.actors)
        calls = [send(a, "step", k, words[r]) for a, k, r in zip(self.actors, keep, self.routed, strict=True)]
        new = np.zeros(len(words), bool)
        for rows, answer in zip(self.routed, wait(calls), strict=True):
            new[rows] = answer
        return new

    def accept(self, accepted: np.ndarray) -> None:
        """Record the candidates at `accepted` (positions in the last probe) with each partition's next step."""
        chosen = np.zeros(sum(len(r) for r in self.routed), bool)
        chosen[accepted] = True
        self.keep = [chosen[rows] for rows in self.routed]

    def stats(self) -> list[tuple[int, int, int, int]]:
        """(digests, bytes, worker pid, its peak RSS) of each partition, the last accepted recorded."""
        empty = np.zeros((0, 2), np.uint64)
        self.probe(empty)
        self.keep = []
        return wait([send(a, "stats") for a in self.actors])


@dataclass
class SplitRun:
    """What one split's planning needs besides the index: its request, account and candidate stream."""

    count: int | None
    plan: SplitPlan
    drawer: Any
    name: str  # the recipe's, for the error a short supply gives
    attempts: int = 0

    @property
    def limit(self) -> int | None:
        return None if self.count is None else ATTEMPTS_PER_SAMPLE * self.count + 10_000

    def done(self) -> bool:
        reached = self.count is not None and self.plan.count == self.count
        return reached or (self.limit is not None and self.attempts >= self.limit)

    def settle(self, new: np.ndarray, lengths: tuple[int, ...]) -> np.ndarray:
        """Positions accepted in a round, batch by batch as `plan_split` accepts them (`need` cut included)."""
        taken, start = [], 0
        for length in lengths:
            idx = start + np.flatnonzero(new[start : start + length])
            examined = length
            if self.count is not None and len(idx) >= self.count - self.plan.count:
                idx = idx[: self.count - self.plan.count]
                examined = int(idx[-1]) + 1 - start if len(idx) else 0
            self.plan.count += len(idx)
            self.plan.rejected += examined - len(idx)
            taken.append(idx)
            self.attempts += length
            start += length
            if self.done():
                break
        return np.concatenate(taken) if taken else np.zeros(0, np.intp)


def draw_next(run: SplitRun, drawn: int) -> bool:
    """Whether another round will surely be needed after one of `drawn` candidates (so draw it now)."""
    if run.count is None:
        return True
    short = run.count - run.plan.count > drawn
    return short and (run.limit is None or run.attempts + drawn < run.limit)


def split_chunks(
    index: PartitionedIndex, run: SplitRun, chunk: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The accepted (items, keys) of one split in chunks of `chunk`, as `plan_split` yields them."""
    items: list[np.ndarray] = []
    keys: list[str] = []
    future = send(run.drawer, "draw") if run.count != 0 else None
    while future is not None:
        rnd: Round = wait([future])[0]
        if not rnd.lengths:
            break
        future = (
            send(run.drawer, "draw") if draw_next(run, len(rnd.items)) else None
        )  # drawn while this settles
        accepted = run.settle(index.probe(rnd.words), rnd.lengths)
        index.accept(accepted)
        items.append(rnd.items[accepted])
        keys.extend(words_hex(rnd.words[accepted]))
        while len(keys) >= chunk:
            pending = np.concatenate(items) if len(items) > 1 else items[0]
            yield pending[:chunk].copy(), keys[:chunk]  # a copy: the task must not keep the whole round
            items, keys = [pending[chunk:]], keys[chunk:]
        if run.done():
            break
        if future is None:
            future = send(run.drawer, "draw")
    if run.count is not None and run.plan.count < run.count:
        raise SupplyError(
            f"--{run.plan.split} {run.count}: {run.name} can supply only {run.plan.count} unique "
            f"{run.plan.split} samples from this source"
        )
    if keys:
        yield np.concatenate(items), keys


@dataclass
class LocalDrawer:
    """A candidate stream drawn in this process, answering like an actor (`draw().result()`)."""

    drawer: CandidateDrawer

    def draw(self) -> "Future[Round]":
        done: Future[Round] = Future()
        done.set_result(self.drawer.draw())
        return done


def start_drawer(client: Any, recipe: Recipe, specs: tuple[Any, Any], split: str, seed: int) -> Any:
    """A split's candidate stream: an actor on a worker (reading `specs[1]`, the workers' spec), or drawn
    here (from `specs[0]`) for recipes whose candidates come from the coordinator's own walk."""
    args = (recipe_ref(recipe), split, seed, ROUND)
    if getattr(recipe, "walked_in_build", False):  # its walk ran here: a worker would have to walk again
        return LocalDrawer(CandidateDrawer(args[0], specs[0], *args[1:]))
    return start_actors(client, CandidateDrawer, 1, args[0], specs[1], *args[1:])[0]


def plan_once(
    client: Any,
    recipe: Recipe,
    specs: tuple[Any, Any],
    counts: dict[str, int | None],
    *,
    seed: int,
    shard_size: int,
    partitions: int,
    plans: dict[str, SplitPlan],
    report: Callable[[list[tuple[int, int, int, int]]], None] | None = None,
) -> Iterator[tuple[str, int, np.ndarray, list[str]]]:
    """Plan every split in fixed order on fresh partitions: (split, shard index, items, keys) per shard;
    `report` receives the partitions' `stats` at the end."""
    index = PartitionedIndex(start_actors(client, IndexPartition, partitions))
    for split in SPLITS:
        plan = plans[split]
        plan.count = plan.rejected = 0  # a plan started again counts again
        drawer = start_drawer(client, recipe, specs, split, seed) if counts[split] != 0 else None
        run = SplitRun(counts[split], plan, drawer, name=recipe.name)
        for number, (items, keys) in enumerate(split_chunks(index, run, shard_size)):
            yield split, number, items, keys
    if report is not None:
        report(index.stats())


def plan_tasks_partitioned(
    recipe: Recipe,
    spec: Any,
    counts: dict[str, int | None],
    *,
    seed: int,
    shard_size: int,
    task_spec: Any,
    out_dir: str,
    plans: list[SplitPlan],
    scheduler: str | None,
    partitions: int | None = None,
    near: None = None,
    report: Callable[[list[tuple[int, int, int, int]]], None] | None = None,
) -> Iterator[ShardTask]:
    """`plan_tasks` with the dedup index partitioned over the cluster at `scheduler` (its decisions, its
    tasks, in its order); `partitions` defaults to PARTITIONS_PER_WORKER per worker. No near-duplicate
    check (`near` is always None here): that build plans centrally. `report`: see `plan_once`."""
    accounts = {split: SplitPlan(split) for split in SPLITS}
    plans.extend(accounts.values())
    handed: dict[tuple[str, int], bytes] = {}  # a digest of each handed-out task's keys
    with connect(check_scheduler(scheduler)) as client:
        count = partitions or PARTITIONS_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
        for attempt in range(MAX_REPLAYS + 1):
            shards = plan_once(
                client, recipe, (spec, task_spec), counts, seed=seed, shard_size=shard_size,
                partitions=count, plans=accounts, report=report,
            )  # fmt: skip
            try:
                for split, number, items, keys in shards:
                    if check_handed(handed, split, number, keys):
                        yield ShardTask(
                            recipe_ref(recipe), task_spec, out_dir, split, number, items, tuple(keys)
                        )
                return
            except IndexLost as exc:
                if attempt == MAX_REPLAYS:
                    raise ClusterError(
                        f"--scheduler {scheduler}: planning lost a worker {attempt + 1} times ({exc})"
                    ) from exc
                print(f"segshards: warning: a worker holding part of the plan was lost ({exc}); "
                      "planning again from the seed", file=sys.stderr)  # fmt: skip


def check_handed(handed: dict[tuple[str, int], bytes], split: str, number: int, keys: list[str]) -> bool:
    """True for a shard task not yet handed out (recorded now); a replayed one must match what was handed."""
    digest = hashlib.blake2b("".join(keys).encode(), digest_size=16).digest()
    if (split, number) not in handed:
        handed[split, number] = digest
        return True
    if handed[split, number] != digest:
        raise PlanError(f"{split} shard {number}: planned again after a lost worker, with other samples")
    return False
