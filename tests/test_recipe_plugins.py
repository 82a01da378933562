"""Third-party recipes: a distribution that registers a `segshards.recipes` entry point is built like a
built-in recipe, listed by `build --help`, and its sets load from their manifest alone."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
from segshards.loaders import make_loader
from segshards.writer.cli import main
from segshards.writer.recipe import Recipe
from segshards.writer.recipes import get_recipe, load_ref, recipe_names

PLUGIN = '''
"""squares: a tiny third-party recipe, a bright square on black, its area as a float32 target."""

import numpy as np

from segshards.writer.keys import pixel_digest
from segshards.writer.recipe import Candidates, RecipeBase, Rendered, SourceInfo
from segshards.writer.schema import SampleSchema, Target


class SquaresRecipe(RecipeBase):
    """Image: a 16x16 grey square at a seeded place and size. Mask: 1 on the square."""

    name = "squares"
    summary = "a bright square on black (a test plugin)"

    def default_counts(self):
        return {"train": 20, "val": 4, "test": 4}

    def add_options(self, parser):
        parser.add_argument("--side-max", type=int, default=8)

    def make_spec(self, options):
        return int(options.side_max)

    def spec_config(self, options):
        return {"side_max": int(options.side_max)}

    def describe(self, spec):
        return SourceInfo(kind="synthetic-squares", files=[])

    def schema(self, spec):
        area = Target("area", "float32", (), ("area",))
        return SampleSchema("png", 1, (16, 16), ("background", "square"), targets=(area,))

    def candidates(self, spec, split, rng):
        while True:
            items = np.stack([rng.integers(0, 8, 64), rng.integers(0, 8, 64), rng.integers(2, spec, 64)], 1)
            yield Candidates(items=items, digests=[pixel_digest(image(item)) for item in items])

    def render(self, spec, item):
        mask = (image(item) > 0).astype(np.uint8)
        return Rendered(image=image(item), mask=mask, meta={"area": float(mask.sum())})


def image(item):
    y, x, side = (int(v) for v in item)
    out = np.zeros((16, 16), np.uint8)
    out[y : y + side, x : x + side] = 200
    return out
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution `squares-plugin`: its module and its dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "squares_plugin").mkdir(parents=True)
    (site / "squares_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "squares_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: squares-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[segshards.recipes]\nsquares = squares_plugin:SquaresRecipe\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # for worker processes
    yield site
    for name in [m for m in sys.modules if m.startswith("squares_plugin")]:
        del sys.modules[name]
    load_ref.cache_clear()


def test_plugin_recipe_is_registered_and_listed(plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "squares" in recipe_names()
    assert isinstance(get_recipe("squares"), Recipe)
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    assert "squares" in out and "a bright square on black (a test plugin)" in out
    assert "mnist-grid" in out and "`segshards build RECIPE --help`" in out
    with pytest.raises(SystemExit):
        main(["build", "squares", "--help"])
    assert "--side-max" in capsys.readouterr().out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_plugin_set_builds_and_loads_with_its_schema(plugin: Path, tmp_path: Path, jobs: str) -> None:
    out = tmp_path / "squares"
    assert main(["build", "squares", "--out", str(out), "--jobs", jobs, "--side-max", "6"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == "squares" and manifest["config"]["side_max"] == 6
    assert manifest["schema"]["targets"] == [
        {"name": "area", "dtype": "float32", "shape": [], "from": ["area"], "role": "value"}
    ]
    assert main(["verify", str(out)]) == 0
    batch = next(iter(make_loader(out, "train", 20, shuffle=False)))
    assert batch["area"].dtype.is_floating_point and batch["area"].shape == (20,)
    assert batch["area"].tolist() == batch["mask"].sum(dim=(1, 2)).float().tolist()


def test_unknown_and_misnamed_recipes_are_one_line_errors(
    plugin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin / "squares_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[segshards.recipes]\nsquares = squares_plugin:SquaresRecipe\nsquare = squares_plugin:SquaresRecipe\n"
    )
    assert main(["build", "square", "--out", "x"]) == 1
    assert "entry point 'square'" in capsys.readouterr().err
