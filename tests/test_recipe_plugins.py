"""Third-party recipes: a distribution that registers a `segshards.recipes` entry point is built like a
built-in recipe, listed by `build --help`, and its sets load from their manifest alone."""

import json
import sys
from pathlib import Path

import pytest

from segshards.loaders import make_loader
from segshards.writer.cli.main import main
from segshards.writer.recipes.contract import Recipe
from segshards.writer.recipes.registry import get_recipe, load_ref, recipe_names

ROOT = Path(__file__).resolve().parents[1]


def documented_recipe() -> str:
    """The example recipe of the "Writing a recipe" section of docs/RECIPES.md, as written there."""
    text = (ROOT / "docs" / "RECIPES.md").read_text()
    section = text[text.index("## Writing a recipe") :]
    return section[section.index("```python\n") + 10 : section.index("\n```\n", section.index("```python"))]


PLUGIN = documented_recipe()


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution `squares-plugin`: its module and its dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "squares_plugin").mkdir(parents=True)
    (site / "squares_plugin" / "__init__.py").write_text(PLUGIN)
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
