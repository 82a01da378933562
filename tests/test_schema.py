"""writer.schema: the sample schema round-trips through the manifest, targets are read strictly, malformed
schemas are one-line errors, and format-1 sets (no schema) still load and verify."""

import json
from pathlib import Path

import pytest

from segshards.loaders import make_loader
from segshards.writer.cli.main import main
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.legacy import MNIST_SCHEMAS, legacy_schema_json
from segshards.writer.format.schema import SampleSchema, Target, schema_from_json, schema_of
from segshards.writer.recipes.circle import circle_schema
from segshards.writer.recipes.coco import CocoSemanticRecipe
from segshards.writer.recipes.foreground import foreground_schema
from segshards.writer.recipes.grid import grid_schema

CIRCLE = Target("circle", "float32", (3,), ("circle.cx", "circle.cy", "circle.r"), "circle")
DIGITS = Target("digits", "int64", (4,), ("digits",))


def test_schema_round_trips_through_json() -> None:
    for schema in (circle_schema((28, 28)), grid_schema((56, 56))):
        raw = json.loads(json.dumps(schema.to_json()))
        assert schema_from_json(raw, "m") == schema
    coco = SampleSchema("jpg", 3, None, ("background", "dog"), training={"size": [320, 320]})
    assert schema_from_json(coco.to_json(), "m") == coco


def test_targets_read_paths_and_nested_shapes() -> None:
    assert CIRCLE.value({"circle": {"cx": 1, "cy": 2.5, "r": 3.0}}) == [1.0, 2.5, 3.0]
    assert DIGITS.value({"digits": [9, 7, 2, 2]}) == [9, 7, 2, 2]
    grid = Target("g", "int64", (2, 2), ("g",))
    assert grid.value({"g": [[1, 2], [3, 4]]}) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"digits": [1.9, 2.5, -7, 300]}, "not an integer"),  # no silent truncation of floats
        ({"digits": [1, 2, 3]}, "not a list of 4"),
        ({"digits": [1, 2, 3, "4"]}, "str value"),
        ({"digits": [1, 2, 3, True]}, "bool value"),
        ({"digits": [1, 2, 3, 2**70]}, "integer outside int64"),
        ({"digits": [[1], 2, 3, 4]}, "list value"),
        ({"digit": [1, 2, 3, 4]}, "no 'digits'"),
        ([1, 2], "no 'digits'"),
    ],
)
def test_target_values_that_break_the_schema_are_refused(meta: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DIGITS.value(meta)


def test_non_finite_floats_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        CIRCLE.value({"circle": {"cx": float("nan"), "cy": 0, "r": 1}})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(image="x"), "field 'image' has the wrong type"),
        (lambda s: s.pop("mask"), "missing field 'mask'"),
        (lambda s: s["image"].update(channels=10**5000), "image.channels"),
        (lambda s: s["image"].update(size=[28]), "image.size"),
        (lambda s: s["mask"].update(classes="ab"), "mask: field .classes. has the wrong type"),
        (lambda s: s["mask"].update(classes=["a", 1]), "mask.classes: expected a list of names"),
        (lambda s: s["targets"][0].update(dtype="object"), "dtype 'object'"),
        (lambda s: s["targets"][0].update(shape=[1] * 9), "dimensions"),
        (lambda s: s["targets"][0].update(shape=[10**6]), "shape"),
        (lambda s: s["targets"][0].update(role="secret"), "role"),
        (lambda s: s["targets"][1].update({"from": ["a", "b"]}), "one path or one per element"),
    ],
)
def test_malformed_schemas_are_one_line_errors(mutate: object, message: str) -> None:
    raw = json.loads(json.dumps(circle_schema((28, 28)).to_json()))
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(ShardFormatError, match=message):
        schema_from_json(raw, "manifest.json: schema")


def as_format_1(folder: Path) -> None:
    """Rewrite a set's manifest as format 1 wrote it: no schema, no licence."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["schema"], manifest["source"]["licence"]
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")


def test_format_1_sets_load_and_verify(tmp_path: Path) -> None:
    out = tmp_path / "circle"
    assert (
        main(["build", "mnist-circle", "--out", str(out), "--train", "64", "--val", "0", "--test", "0"]) == 0
    )
    new = next(iter(make_loader(out, "train", 64, shuffle=False)))
    as_format_1(out)
    assert schema_of(json.loads((out / "manifest.json").read_text())) == circle_schema((28, 28))
    assert main(["verify", str(out)]) == 0
    old = next(iter(make_loader(out, "train", 64, shuffle=False)))
    assert old["key"] == new["key"] and old["label"].tolist() == new["label"].tolist()
    assert old["circle"].tolist() == new["circle"].tolist()


def test_format_1_manifest_of_an_unknown_recipe_is_refused() -> None:
    with pytest.raises(ShardFormatError, match="unknown recipe 'squares' has no schema"):
        schema_of({"format_version": 1, "recipe": "squares"}, "m")


def test_format_1_schemas_are_what_the_recipes_record_today() -> None:
    """legacy.py holds them as plain data (the format layer imports no recipe): they must not drift."""
    today = {
        "mnist-foreground": foreground_schema((28, 28)),
        "mnist-circle": circle_schema((28, 28)),
        "mnist-grid": grid_schema((56, 56)),
    }
    assert sorted(MNIST_SCHEMAS) == sorted(today)
    for recipe, schema in today.items():
        assert MNIST_SCHEMAS[recipe] == json.loads(json.dumps(schema.to_json())), recipe
    coco = {"recipe": "coco-semantic", "source": {"classes": [{"name": "cat"}, {"name": "dog"}]}}
    expected = SampleSchema(
        "jpg", 3, None, ("background", "cat", "dog"), training=CocoSemanticRecipe.training
    )
    assert legacy_schema_json(coco, "m") == json.loads(json.dumps(expected.to_json()))
