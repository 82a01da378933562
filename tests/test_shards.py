"""Shard tasks: exact per-class pixel counts, and every rendered sample's key checked against the plan."""

import argparse
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segshards.writer.build.shards import ShardTask, render_shard
from segshards.writer.errors import PlanError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.sample import class_counts
from segshards.writer.format.schema import SampleSchema
from segshards.writer.recipes.contract import Candidates, RecipeBase, Rendered, SourceInfo


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


class Stub(RecipeBase):
    """A recipe of 4x4 grey images, item i rendered as pixels of value i + spec; not a source of samples."""

    name = "stub"

    def image(self, spec: int, item: np.ndarray) -> np.ndarray:
        return np.full((4, 4), int(item[0]) + spec, np.uint8)

    def render(self, spec: int, item: np.ndarray) -> Rendered:
        return Rendered(self.image(spec, item), np.zeros((4, 4), np.uint8), {})

    def default_counts(self) -> dict[str, int | None]:
        raise NotImplementedError

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def make_spec(self, options: argparse.Namespace) -> Any:
        raise NotImplementedError

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, spec: Any) -> SourceInfo:
        raise NotImplementedError

    def schema(self, spec: Any) -> SampleSchema:
        raise NotImplementedError

    def candidates(self, spec: Any, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        raise NotImplementedError


class StoredStub(Stub):
    """Stores each image as given PNG bytes and vouches for the planned key, as the photograph recipes do."""

    planned_keys = True

    def render(self, spec: int, item: np.ndarray) -> Rendered:
        mask = np.zeros((4, 4), np.uint8)
        return Rendered(NO_PIXELS, mask, {}, image_bytes=encode_png(self.image(spec, item)))


class VouchedStub(StoredStub):
    """Also names the stored bytes' pixel key, as a photograph recipe whose walk decoded them does."""

    def render(self, spec: int, item: np.ndarray) -> Rendered:
        sample = super().render(spec, item)
        return replace(sample, bytes_key=pixel_key(self.image(spec, item)))


NO_PIXELS = np.zeros((0, 0), np.uint8)


def task(tmp_path: Path, recipe: type[Stub], spec: int, planned_from: int = 0) -> ShardTask:
    """A two-sample task planned from the images of spec `planned_from`, rendered with `spec`."""
    items = np.array([[0], [1]])
    keys = tuple(pixel_key(recipe().image(planned_from, item)) for item in items)
    return ShardTask(f"{__name__}:{recipe.__qualname__}", spec, str(tmp_path), "train", 3, items, keys)


@pytest.mark.parametrize("recipe", [Stub, StoredStub, VouchedStub])
def test_each_rendered_key_is_checked_against_the_plan(tmp_path: Path, recipe: type[Stub]) -> None:
    result = render_shard(task(tmp_path, recipe, 0))
    assert result.count == 2 and (tmp_path / "train-000003.tar").is_file()
    (tmp_path / "train-000003.tar").unlink()
    drifted = task(tmp_path, recipe, 5)  # renders other pixels than it planned
    planned, rendered = drifted.keys[0], pixel_key(recipe().image(5, np.array([0])))
    message = (
        f"{tmp_path}/train-000003.tar: sample 0 ({planned}): rendered image has key {rendered}, "
        f"not the planned one (is {drifted.recipe} deterministic?)"
    )
    with pytest.raises(PlanError) as info:
        render_shard(drifted)
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []  # the shard was never published


def test_a_vouched_key_spares_the_stored_image_a_second_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decode(*args: Any) -> np.ndarray:
        raise AssertionError("decoded again")

    monkeypatch.setattr("segshards.writer.build.shards.decode_image", no_decode)
    assert render_shard(task(tmp_path, VouchedStub, 0)).count == 2
    (tmp_path / "train-000003.tar").unlink()
    with pytest.raises(AssertionError, match="decoded again"):
        render_shard(task(tmp_path, StoredStub, 0))


def test_the_key_check_survives_python_optimise(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from tests.test_shards import Stub, task; "
        "from segshards.writer.build.shards import render_shard; "
        "render_shard(task(Path(sys.argv[1]), Stub, 5))"
    )
    run = subprocess.run([sys.executable, "-O", "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("segshards.writer.errors.PlanError: ")
