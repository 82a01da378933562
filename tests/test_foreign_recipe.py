"""A set written by a recipe the reading installation does not know loads, trains and evaluates from its
manifest alone (issue 10, point 3): the recipe below exists only in this test module."""

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segshards.loaders import make_loader
from segshards.train.cli import eval_main, train_main
from segshards.writer.build.job import BuildConfig, build
from segshards.writer.format.keys import pixel_digest
from segshards.writer.format.schema import SampleSchema, Target

# The contract's original import path, as third-party recipes written before the layered writer use it.
from segshards.writer.recipe import Candidates, RecipeBase, Rendered, SourceInfo
from segshards.writer.recipes.registry import recipe_names

SIDE = 16


@dataclass(frozen=True)
class SquaresSpec:
    """Nothing to read: every sample is drawn from its item id."""

    side: int = SIDE


def draw(item: int, side: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A grey square of seeded place, size and brightness on a dark noisy field: image, mask, brightness."""
    rng = np.random.default_rng(item)
    image = rng.integers(0, 40, size=(side, side), dtype=np.uint8)
    size = int(rng.integers(4, side // 2 + 1))
    top, left = (int(v) for v in rng.integers(0, side - size + 1, size=2))
    brightness = float(rng.integers(120, 256))
    mask = np.zeros((side, side), np.uint8)
    mask[top : top + size, left : left + size] = 1
    image[mask == 1] = int(brightness)
    return image, mask, brightness / 255


class SquaresRecipe(RecipeBase):
    """Test-only recipe: mask 0 field / 1 square, and a made-up float32 scalar `brightness` in 0..1."""

    name = "test-squares"
    summary = "grey squares on noise (test only)"

    def default_counts(self) -> dict[str, int | None]:
        return {"train": 64, "val": 16, "test": 16}

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        pass

    def make_spec(self, options: argparse.Namespace) -> SquaresSpec:
        return SquaresSpec()

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        return {}

    def describe(self, spec: SquaresSpec) -> SourceInfo:
        return SourceInfo(kind="synthetic", files=[])

    def schema(self, spec: SquaresSpec) -> SampleSchema:
        brightness = Target("brightness", "float32", (), ("brightness",), "value")
        # No training hints: `segshards train` must fall back to its own defaults.
        return SampleSchema("png", 1, (spec.side, spec.side), ("field", "square"), targets=(brightness,))

    def candidates(self, spec: SquaresSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        while True:
            items = rng.integers(0, 2**40, size=(32, 1), dtype=np.int64)
            yield Candidates(
                items=items, digests=[pixel_digest(draw(int(i), spec.side)[0]) for i in items[:, 0]]
            )

    def render(self, spec: SquaresSpec, item: np.ndarray) -> Rendered:
        image, mask, brightness = draw(int(item[0]), spec.side)
        return Rendered(image=image, mask=mask, meta={"brightness": brightness, "id": int(item[0])})


def build_squares(out: Path, jobs: int) -> dict[str, Any]:
    recipe = SquaresRecipe()
    config = BuildConfig(
        recipe=recipe.name,
        out=out,
        counts=recipe.default_counts(),
        seed=0,
        shard_size=32,
        jobs=jobs,
        backend="loky",
        options={},
    )
    return build(recipe, SquaresSpec(), config)


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The set built with one job and with two: the same shards either way."""
    root = tmp_path_factory.mktemp("squares")
    one, two = build_squares(root / "one", jobs=1), build_squares(root / "two", jobs=2)
    assert one["splits"] == two["splits"]
    return root / "two"


def test_the_reader_does_not_know_the_recipe(squares: Path) -> None:
    assert "test-squares" not in recipe_names()
    manifest = json.loads((squares / "manifest.json").read_text())
    assert manifest["recipe"] == "test-squares"
    assert manifest["schema"]["targets"] == [
        {"name": "brightness", "dtype": "float32", "shape": [], "from": ["brightness"], "role": "value"}
    ]


def test_loader_yields_the_target_with_its_declared_dtype_and_shape(squares: Path) -> None:
    batch = next(iter(make_loader(squares, "val", 16, shuffle=False, with_meta=True)))
    assert batch["brightness"].dtype == torch.float32 and batch["brightness"].shape == (16,)
    assert batch["image"].shape == (16, 1, SIDE, SIDE) and batch["mask"].shape == (16, SIDE, SIDE)
    expected = torch.tensor([m["brightness"] for m in batch["meta"]], dtype=torch.float32)
    assert torch.equal(batch["brightness"], expected)
    assert set(torch.unique(batch["mask"]).tolist()) == {0, 1}


def test_train_and_eval_from_the_manifest_alone(
    squares: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert train_main(["--data", str(squares), "--out", str(run), "--threads", "1", "--no-progress"]) == 0
        assert eval_main([str(run), "--threads", "1", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert (
        "test-squares epoch 1: train loss" in out and "test miou" in out
    )  # no metrics hint: miou is the headline
    report = json.loads((run / "metrics.json").read_text())
    # No training hints in the schema: one epoch of batch 64 over the 64 train samples, a 3-level U-Net.
    assert report["config"]["epochs"] == 1 and report["config"]["batch_size"] == 64
    assert report["config"]["widths"] == [16, 32, 64] and report["training"]["steps"] == 1
    for split in ("val", "test"):
        metrics = report["splits"][split]
        assert metrics["samples"] == 16
        assert set(metrics["iou_per_class"]) == {"field", "square"}  # names from the schema
        assert 0 <= metrics["iou"] <= 1 and 0 <= metrics["miou"] <= 1
    for name in ("checkpoint.pt", "curves.png", "predictions.png", "predictions-test.png"):
        assert (run / name).stat().st_size > 0


def test_the_original_contract_path_re_exports_the_contract() -> None:
    import segshards.writer.recipe as old
    import segshards.writer.recipes.contract as contract

    assert old.__all__ == contract.__all__
    assert all(getattr(old, name) is getattr(contract, name) for name in contract.__all__)
