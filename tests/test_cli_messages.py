"""What the command line says when a user gets something wrong, and what a build's summary reports: every
check by the message's content, through `main([...])` as a user types it."""

from pathlib import Path

import pytest

from segshards.writer.build.checks import fitting_counts, shrunk
from segshards.writer.cli.main import main
from segshards.writer.recipes.coco import permutation
from tests.coco_fixtures import write_coco
from tests.mnist_fixtures import error_lines, tiny_source

ELIGIBLE = [1, 2, 3, 6, 7, 8, 9]  # the coco fixture's images with a non-crowd annotation


def error_of(capsys: pytest.CaptureFixture[str], argv: list[str], *, status: int = 1) -> str:
    """The one error line of a failing `main(argv)` (argparse's errors exit 2 through SystemExit)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == status and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def coco_args(tmp_path: Path, *extra: str) -> list[str]:
    fixture = write_coco(tmp_path / "src")
    return ["build", "coco-semantic", *fixture.args(), "--out", str(tmp_path / "out"), "--jobs", "1", *extra]


# ---- counts the source cannot give: all of them at once ----------------------------------------------------


def test_default_counts_above_the_source_are_all_named_with_counts_that_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_of(capsys, coco_args(tmp_path))  # the defaults 8,000 / 500 / 500 on 7 eligible images
    assert line == (
        "segshards: error: coco-semantic cannot supply these counts from this source: --train 8000 (the "
        "default), --val 500 (the default), --test 500 (the default) ask for 9,000 samples in all, and the "
        "source holds at most 7 for all splits together (no sample is in two splits); counts that fit: "
        "--train 5 --val 1 --test 1"
    )
    assert not (tmp_path / "out").exists()


def test_counts_given_are_kept_when_they_fit_and_the_defaults_shrink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = error_of(capsys, coco_args(tmp_path, "--train", "3"))
    assert "--train 3, --val 500 (the default), --test 500 (the default) ask for 1,003" in line
    assert line.endswith("counts that fit: --train 3 --val 2 --test 2")


def test_the_counts_suggested_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_of(capsys, coco_args(tmp_path, "--train", "6", "--val", "2", "--test", "2"))
    suggested = line.split("counts that fit: ")[1].split()
    assert suggested == ["--train", "4", "--val", "2", "--test", "1"]
    assert main(coco_args(tmp_path, *suggested)) == 0
    assert "train 4, val 2, test 1 samples" in capsys.readouterr().out


def test_a_split_limit_and_the_defaults_in_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_source(tmp_path / "src")  # 44 train-pool digits, 4 val, 12 test
    argv = ["build", "mnist-foreground", "--source", str(source), "--out", str(tmp_path / "o"), "--jobs", "1"]
    line = error_of(capsys, [*argv, "--train", "45", "--test", "13"])
    assert "--train 45 (at most 44); --test 13 (at most 12)" in line
    assert line.endswith("counts that fit: --train 44 --test 12")


def test_fitting_counts_by_hand() -> None:
    assert shrunk({"train": 8000, "val": 500, "test": 500}, 16) == {"train": 14, "val": 1, "test": 1}
    assert shrunk({"train": 10, "val": 0, "test": 5}, 3) == {"train": 2, "val": 0, "test": 1}
    assert shrunk({"train": 2, "val": 2}, 9) == {"train": 2, "val": 2}
    asked = {"train": 8000, "val": 500, "test": 500}
    assert fitting_counts(asked, {}, 100, given=["val"]) == {"train": 89, "val": 6, "test": 5}  # all shrunk
    asked = {"train": 8000, "val": 20, "test": 30}
    fit = fitting_counts(asked, {}, 100, given=["val", "test"])
    assert list(fit.items()) == [("train", 50), ("val", 20), ("test", 30)]
    assert fitting_counts({"train": 50, "val": 5}, {"train": 40}, None, given=[]) == {"train": 40, "val": 5}


# ---- the recipe's real defaults in its help ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "train", "size"),
    [
        ("coco-semantic", "default: 8,000", "default: 1,000"),
        ("mnist-grid", "default: 250,000", "default: 10,000"),
        ("mnist-foreground", "default: all the source holds for it", "default: 10,000"),
        ("mask-folder", "default: decided from the source", "default: 1,000"),
    ],
)
def test_build_recipe_help_shows_its_defaults(
    capsys: pytest.CaptureFixture[str], recipe: str, train: str, size: str
) -> None:
    with pytest.raises(SystemExit):
        main(["build", recipe, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert f"--train N train samples ({train}" in text
    assert f"--shard-size K samples per shard ({size})" in text
    assert "--seed SEED seed of every random choice (default: 0)" in text
    assert "recipe's)" not in text


# ---- did you mean ---------------------------------------------------------------------------------------------


def test_a_mistyped_recipe_gets_the_nearest_name(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_of(capsys, ["build", "mnist-gird", "--out", "x"], status=2)
    assert line.startswith("segshards build: error: unknown recipe 'mnist-gird'; did you mean 'mnist-grid'?")
    assert "coco-semantic" in line  # and the list of recipes


@pytest.mark.parametrize("typo", [["--trian", "5"], ["--trian=5"]])
def test_a_mistyped_option_gets_the_nearest_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], typo: list[str]
) -> None:
    argv = ["build", "mnist-foreground", "--source", str(tmp_path), "--out", str(tmp_path / "o"), *typo]
    line = error_of(capsys, argv, status=2)
    assert line.startswith("segshards build: error: unknown option --trian: did you mean '--train'?")
    recipe_option = ["build", "mnist-foreground", "--sorce", str(tmp_path), "--out", str(tmp_path / "o")]
    assert "did you mean '--source'?" in error_of(capsys, recipe_option, status=2)  # the recipe's own options


def test_a_stray_argument_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_of(capsys, ["verify", "a", "b"], status=2)
    assert line == "segshards verify: error: unexpected argument: b"


# ---- another recipe's folder ----------------------------------------------------------------------------------


def test_another_recipes_folder_is_named_by_its_recipe_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tiny_source(tmp_path / "src"), tmp_path / "out"
    common = ["--source", str(source), "--out", str(out), "--jobs", "1"]
    assert main(["build", "mnist-foreground", *common]) == 0
    capsys.readouterr()
    line = error_of(capsys, ["build", "mnist-grid", *common, "--train", "8", "--val", "2", "--test", "2"])
    assert line == (
        f"segshards: error: --out {out}: holds a mnist-foreground set built with other settings (manifest.json: "
        'recipe "mnist-foreground" there, "mnist-grid" asked); choose another folder or delete it'
    )


# ---- what a build's summary says ----------------------------------------------------------------------------


def test_the_summary_counts_skipped_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = next(s for s in range(20) if permutation(ELIGIBLE, s)[-1] != 2)  # the walk reaches image 2
    argv = coco_args(tmp_path, "--train", "4", "--val", "1", "--test", "1", "--on-error", "skip")
    (tmp_path / "src" / "images" / "000000000002.jpg").unlink()
    assert main([*argv, "--seed", str(seed)]) == 0
    out = capsys.readouterr().out
    assert "; 1 skipped (--on-error skip: missing-image 1);" in out
    assert error_lines(capsys.readouterr().err) == []


def test_the_summary_says_when_nothing_was_skipped_under_skip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coco_args(tmp_path, "--train", "2", "--val", "1", "--test", "1", "--on-error", "skip")) == 0
    assert "; 0 skipped (--on-error skip);" in capsys.readouterr().out
