"""Pipeline stages: seeded shard order, rank/worker shares, shuffle buffer, grouping, skip-mode reading."""

import random
from pathlib import Path

import pytest

from segshards.loaders.stages import (
    Stats,
    derive_seed,
    groups,
    read_shards,
    shard_order,
    shuffle_buffer,
    take_share,
)
from segshards.loaders.storage import RetryPolicy
from segshards.writer.errors import ShardFormatError


def test_shard_order_is_a_permutation_seeded_by_seed_and_epoch() -> None:
    orders = {(s, e): tuple(shard_order(50, seed=s, epoch=e, shuffle=True)) for s in (0, 1) for e in (0, 1)}
    assert all(sorted(o) == list(range(50)) for o in orders.values())
    assert len(set(orders.values())) == 4
    assert tuple(shard_order(50, seed=0, epoch=1, shuffle=True)) == orders[(0, 1)]
    assert shard_order(5, seed=3, epoch=9, shuffle=False) == [0, 1, 2, 3, 4]


def test_shares_of_ranks_and_workers_partition_the_shards() -> None:
    shards = list(range(11))
    shares = [take_share(take_share(shards, r, 2), w, 3) for r in range(2) for w in range(3)]
    assert sorted(i for share in shares for i in share) == shards
    assert [len(s) for s in shares] == [2, 2, 2, 2, 2, 1]


def test_derive_seed_separates_its_inputs() -> None:
    seeds = {derive_seed(0, e, r, w, 2) for e in range(3) for r in range(3) for w in range(3)}
    assert len(seeds) == 27
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)


def test_shuffle_buffer_is_a_seeded_permutation() -> None:
    items = list(range(100))
    first = list(shuffle_buffer(items, 10, random.Random(1)))
    assert sorted(first) == items and first != items
    assert list(shuffle_buffer(items, 10, random.Random(1))) == first
    assert list(shuffle_buffer(items, 10, random.Random(2))) != first
    assert list(shuffle_buffer(items, 1000, random.Random(1))) != items  # larger than the input
    assert list(shuffle_buffer(items, 0, random.Random(1))) == items


def test_groups() -> None:
    assert list(groups(range(7), 3, drop_last=False)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(groups(range(7), 3, drop_last=True)) == [[0, 1, 2], [3, 4, 5]]
    assert list(groups([], 3, drop_last=False)) == []


def test_read_shards_checks_counts_and_skips_failing_shards(grid_set: Path, tmp_path: Path) -> None:
    good = str(grid_set / "train-000004.tar")  # 10 samples
    broken = tmp_path / "broken.tar"
    broken.write_bytes((grid_set / "train-000000.tar").read_bytes()[:20_000])
    urls = [good, str(broken), str(tmp_path / "missing.tar")]
    retry = RetryPolicy(attempts=1)
    stats = Stats()
    keys = [
        s["__key__"]
        for s in read_shards(
            urls, [0, 1, 2, 0], counts=None, retry=retry, on_error="skip", stats=stats, give_up_after=10
        )
    ]
    assert len(keys) == 20 + 5  # twice the good shard, plus the 5 complete samples ahead of the cut
    assert stats.shards_failed == 2 and stats.samples_skipped == 0
    assert str(broken) in stats.errors[0] and "missing.tar: not found" in stats.errors[1]
    with pytest.raises(ShardFormatError, match="train-000004.tar: 10 samples, the manifest says 11"):
        list(
            read_shards(
                urls, [0], counts=[11, 0, 0], retry=retry, on_error="raise", stats=stats, give_up_after=10
            )
        )
    with pytest.raises(ShardFormatError, match="broken.tar"):
        list(
            read_shards(
                urls, [1] * 20, counts=None, retry=retry, on_error="skip", stats=Stats(), give_up_after=3
            )
        )
