"""Shard task helpers: exact per-class pixel counts."""

import platform

import numpy as np
import pytest

from segshards.writer.format.sample import class_counts


@pytest.mark.parametrize("shape", [(1, 1), (56, 56), (480, 640), (3, 7)])
def test_class_counts_equal_bincount(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(class_counts(mask), np.bincount(mask.ravel(), minlength=256))


def test_class_counts_of_a_strided_view() -> None:
    mask = np.random.default_rng(1).integers(0, 11, (56, 56), dtype=np.uint8)[:, 5:40:2]
    counts = class_counts(mask)
    assert counts.dtype == np.int64
    assert np.array_equal(counts, np.bincount(mask.ravel(), minlength=256))
    assert counts.sum() == mask.size


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_shard_tasks_set_glibc_to_reuse_freed_memory_once_per_process() -> None:
    from segshards.writer.build.shards import keep_freed_memory

    keep_freed_memory.cache_clear()
    assert keep_freed_memory() is True  # both mallopt calls accepted
    assert keep_freed_memory.cache_info().misses == 1 and keep_freed_memory() is True
    assert keep_freed_memory.cache_info().hits == 1
