"""The partitioned dedup index decides exactly as the central one: its storage, its two phases, and whole
plans compared with `plan_tasks` in process (actors stood in for by local objects), lost workers included."""

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import xxhash

import segshards.writer.build.partition_plan as partition_plan
from segshards.writer.build.partition import (
    DigestRuns,
    IndexPartition,
    digest_words,
    first_occurrence,
    owners,
    words_hex,
)
from segshards.writer.build.partition_plan import check_handed, plan_tasks_partitioned
from segshards.writer.build.plan import SplitPlan, plan_tasks
from segshards.writer.errors import ClusterError, PlanError, SupplyError
from segshards.writer.recipes.contract import Candidates, RecipeBase


class DupRecipe(RecipeBase):
    """Candidates from a small pool of digests (many repeats), in batches of uneven length."""

    name = "dup-test"

    def candidates(self, spec: Any, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        pool, batches = spec
        for _ in range(batches):
            items = rng.integers(0, pool, size=(int(rng.integers(1, 40)), 2))
            yield Candidates(items, [xxhash.xxh3_128_digest(row.tobytes()) for row in items[:, :1]])

    def default_counts(self) -> dict[str, int | None]:
        return {"train": 10, "val": 0, "test": 0}

    def add_options(self, parser: Any) -> None:
        """No options: the tests build the spec."""

    def make_spec(self, options: Any) -> Any:
        return (300, 60)

    def spec_config(self, options: Any) -> dict[str, Any]:
        return {}

    def describe(self, spec: Any) -> Any:
        raise NotImplementedError("planning only")

    def schema(self, spec: Any) -> Any:
        raise NotImplementedError("planning only")


def words(n: int, seed: int = 0) -> np.ndarray:
    return digest_words([xxhash.xxh3_128_digest(i.to_bytes(8, "big")) for i in range(seed, seed + n)])


def test_digest_runs_hold_exactly_what_was_added_even_with_equal_high_halves() -> None:
    runs = DigestRuns()
    w = words(3000)
    w[:50, 0] = w[0, 0]  # 50 digests sharing one high half: the low halves decide
    for start in range(0, 2000, 137):
        runs.add(w[start : min(start + 137, 2000), 0].copy(), w[start : min(start + 137, 2000), 1].copy())
    assert len(runs) == 2000 and runs.nbytes == 2000 * 16
    assert len(runs.runs) <= 12  # merged like a binary counter
    found = runs.contains(w[:, 0], w[:, 1])
    assert found[:2000].all() and not found[2000:].any()


def test_first_occurrence_and_keys() -> None:
    w = words(5)[[0, 1, 0, 2, 1, 3]]
    assert first_occurrence(w[:, 0], w[:, 1]).tolist() == [True, True, False, True, False, True]
    digests = [xxhash.xxh3_128_digest(bytes([i])) for i in range(4)]
    assert words_hex(digest_words(digests)) == [d.hex() for d in digests]
    parts = owners(words(10_000), 7)
    assert parts.min() == 0 and parts.max() == 6 and np.bincount(parts).min() > 1200


def test_a_probe_records_nothing_until_its_accepted_digests_are_committed() -> None:
    part = IndexPartition()
    w = words(6)
    assert part.step(None, w[:4]).tolist() == [True] * 4
    assert part.step(np.array([True, False, True, False]), w[2:6]).tolist() == [False, True, True, True]
    assert part.stats()[:2] == (2, 32)  # the first probe's 0 and 2 only
    assert part.step(np.array([False, True, False, False]), w[:0]).tolist() == []
    assert part.stats()[:2] == (3, 48)


class LocalActor:
    """An object whose method calls answer with futures, as an actor's do; `lost` makes the nth call fail
    as a call to an actor whose worker died does."""

    def __init__(self, target: Any, lost: list[int]) -> None:
        self.target, self.lost = target, lost

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> Future[Any]:
            done: Future[Any] = Future()
            self.lost[0] -= 1
            if self.lost[0] == 0:
                done.set_exception(RuntimeError("Worker holding Actor was lost.  Status: error"))
            else:
                done.set_result(getattr(self.target, name)(*args))
            return done

        return call


class FakeClient:
    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": {"tcp://a": {}, "tcp://b": {}}}


@pytest.fixture
def local_actors(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Actors in this process; the returned counter is how many calls succeed before one is lost."""
    lost = [-1]
    monkeypatch.setattr(partition_plan, "connect", lambda address: contextlib.nullcontext(FakeClient()))
    monkeypatch.setattr(
        partition_plan,
        "start_actors",
        lambda client, cls, count, *args: [LocalActor(cls(*args), lost) for _ in range(count)],
    )
    monkeypatch.setattr(partition_plan, "ROUND", 50)  # several batches a round: cuts fall mid-round
    return lost


def both_plans(counts: dict[str, int | None], partitions: int, spec: Any = (300, 60)) -> tuple[Any, ...]:
    recipe = DupRecipe()
    kwargs: dict[str, Any] = {"seed": 5, "shard_size": 37, "task_spec": spec, "out_dir": "o"}
    central: list[SplitPlan] = []
    spread: list[SplitPlan] = []
    expected = list(plan_tasks(recipe, spec, counts, plans=central, **kwargs))
    got = list(
        plan_tasks_partitioned(
            recipe, spec, counts, plans=spread, scheduler="tcp://127.0.0.1:1", partitions=partitions, **kwargs
        )
    )
    return expected, got, central, spread


def same_tasks(expected: list[Any], got: list[Any]) -> None:
    assert [(t.split, t.index, t.keys) for t in got] == [(t.split, t.index, t.keys) for t in expected]
    assert all((a.items == b.items).all() for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("partitions", [1, 3, 8])
@pytest.mark.parametrize(
    "counts",
    [
        {"train": 150, "val": 40, "test": 0},
        {"train": 37, "val": 74, "test": 5},
        {"train": None, "val": 0, "test": None},
    ],
)
def test_partitioned_plan_equals_the_central_plan(
    local_actors: list[int], counts: dict[str, int | None], partitions: int
) -> None:
    expected, got, central, spread = both_plans(counts, partitions)
    same_tasks(expected, got)
    assert [(p.split, p.count, p.rejected) for p in spread] == [
        (p.split, p.count, p.rejected) for p in central
    ]
    assert sum(p.rejected for p in spread) > 0, "the case holds duplicates"


def test_a_short_supply_fails_as_the_central_plan_does(local_actors: list[int]) -> None:
    with pytest.raises(SupplyError) as central:
        list(plan_tasks(DupRecipe(), (30, 5), {"train": 29, "val": 0, "test": 0}, seed=1, shard_size=9,
                        task_spec=(30, 5), out_dir="o", plans=[]))  # fmt: skip
    with pytest.raises(SupplyError) as spread:
        list(plan_tasks_partitioned(DupRecipe(), (30, 5), {"train": 29, "val": 0, "test": 0}, seed=1,
                                    shard_size=9, task_spec=(30, 5), out_dir="o", plans=[], scheduler="tcp://h:1"))  # fmt: skip
    assert str(spread.value) == str(central.value)


@pytest.mark.parametrize("calls", [3, 15, 30])
def test_a_lost_worker_replays_the_plan_and_hands_out_each_task_once(
    local_actors: list[int], calls: int, capsys: pytest.CaptureFixture[str]
) -> None:
    local_actors[0] = calls  # the nth actor call of the build fails: its worker is gone
    expected, got, central, spread = both_plans({"train": 150, "val": 40, "test": 30}, 3)
    same_tasks(expected, got)
    assert [(p.count, p.rejected) for p in spread] == [(p.count, p.rejected) for p in central]
    assert "a worker holding part of the plan was lost" in capsys.readouterr().err


def test_losing_workers_again_and_again_stops_the_build(
    local_actors: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partition_plan, "MAX_REPLAYS", 0)
    local_actors[0] = 2
    with pytest.raises(ClusterError, match=r"^--scheduler tcp://127.0.0.1:1: planning lost a worker 1 times"):
        both_plans({"train": 150, "val": 40, "test": 30}, 3)


def test_a_replayed_shard_with_other_samples_is_refused() -> None:
    handed: dict[tuple[str, int], bytes] = {}
    assert check_handed(handed, "train", 0, ["a", "b"])
    assert not check_handed(handed, "train", 0, ["a", "b"])
    with pytest.raises(
        PlanError, match="^train shard 0: planned again after a lost worker, with other samples$"
    ):
        check_handed(handed, "train", 0, ["a", "c"])


def test_a_workers_own_error_is_not_taken_for_a_lost_worker(
    local_actors: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source a worker cannot read fails the build at once, with the worker's error, not after replays."""

    class Unreadable(IndexPartition):
        def step(self, keep: Any, words: Any) -> Any:
            raise FileNotFoundError("/data/mnist: no such folder")

    stand_in = partition_plan.start_actors
    monkeypatch.setattr(
        partition_plan,
        "start_actors",
        lambda client, cls, count, *args: stand_in(
            client, Unreadable if cls is IndexPartition else cls, count, *args
        ),
    )
    with pytest.raises(FileNotFoundError, match="no such folder"):
        both_plans({"train": 10, "val": 0, "test": 0}, 2)


def test_actors_go_round_robin_and_anywhere_while_no_worker_is_known() -> None:
    """Right after a worker is lost the scheduler may know none; distributed refuses `allow_other_workers`
    without `workers`, which once failed a replanning build."""
    assert partition_plan.placement([], 3) == {}
    assert [partition_plan.placement(["a", "b"], i)["workers"] for i in range(3)] == ["a", "b", "a"]
    assert partition_plan.placement(["a"], 0)["allow_other_workers"] is True
