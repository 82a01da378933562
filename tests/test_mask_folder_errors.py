"""mask-folder bad input: one line naming the file and the problem, nothing written; with --on-error skip
the pair is left out and counted per reason."""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segshards.writer.cli.main import main
from segshards.writer.process_pool import map_in_order
from segshards.writer.recipes.mask_folder import MaskFolderRecipe
from segshards.writer.recipes.mask_folder_walk import check_pairs
from segshards.writer.sources.mask_pairs import Pair
from segshards.writer.sources.photos import BadRecord
from tests.test_mask_folder import CVAT_COLOURS, Tree, cvat_tree, samples_by_stem, voc_tree, write_png


def lists_of(tree: Tree) -> Path:
    return tree.root / "ImageSets" / "Segmentation"


def no_mask(tree: Tree) -> None:
    (tree.masks / "frame_0002.png").unlink()


def no_image(tree: Tree) -> None:
    (tree.images / "frame_0002.jpg").unlink()


def wrong_size(tree: Tree) -> None:
    write_png(tree.masks / "frame_0002.png", np.zeros((40, 64, 3), np.uint8))


def stray_colour(tree: Tree) -> None:
    mask = np.zeros((48, 64, 3), np.uint8)
    mask[:5, :7] = (9, 8, 7)  # BGR of RGB (7, 8, 9)
    write_png(tree.masks / "frame_0002.png", mask)


def index_too_high(tree: Tree) -> None:
    mask = np.zeros((48, 64), np.uint8)
    mask[0, :3] = 255  # ignore: allowed
    mask[1, :4] = 3  # the labelmap has classes 0..2
    write_png(tree.masks / "frame_0002.png", mask)


def truncated_image(tree: Tree) -> None:
    path = tree.images / "frame_0002.jpg"
    path.write_bytes(path.read_bytes()[:-300])


def truncated_mask(tree: Tree) -> None:
    path = tree.masks / "frame_0002.png"
    path.write_bytes(path.read_bytes()[:-40])


def not_an_image(tree: Tree) -> None:
    (tree.images / "frame_0002.jpg").write_text("hello")


def two_images(tree: Tree) -> None:
    write_png(tree.images / "frame_0002.png", np.zeros((48, 64, 3), np.uint8))


def rotated_by_exif(tree: Tree) -> None:
    path = tree.images / "frame_0002.jpg"
    image = Image.open(path)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": OpenCV turns the pixels, the mask stays as drawn
    image.save(path, exif=exif.tobytes(), quality=90)


# (defect, reason counted under skip, what the one-line error must say)
CASES: list[tuple[Callable[[Tree], None], str, str]] = [
    (no_mask, "missing-mask", "JPEGImages/frame_0002.jpg: no mask "),
    (no_image, "missing-image", "SegmentationClass/frame_0002.png: no image frame_0002.jpg/.png in "),
    (wrong_size, "size-mismatch", "frame_0002.png: mask is 64x40, its image frame_0002.jpg is 64x48"),
    (stray_colour, "unmatched-colour", "frame_0002.png: colour (7, 8, 9) is not in --classes (35 pixels;"),
    (index_too_high, "unknown-index", "frame_0002.png: index 3 (4 pixels) is above the last class (2)"),
    (truncated_image, "unreadable-image", "frame_0002.jpg: undecodable jpg image"),
    (truncated_mask, "unreadable-mask", "frame_0002.png: truncated or corrupt PNG"),
    (not_an_image, "unreadable-image", "frame_0002.jpg: not a JPEG or PNG file"),
    (
        two_images,
        "ambiguous-image",
        "JPEGImages: frame_0002.jpg and frame_0002.png share the stem frame_0002",
    ),
    (
        rotated_by_exif,
        "exif-orientation",
        "frame_0002.jpg: EXIF orientation turns the decoded pixels away from its mask",
    ),
]


def run(out: Path, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["build", "mask-folder", "--out", str(out), *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segshards: error")]
    return code, "\n".join(lines)


@pytest.mark.parametrize(
    ("defect", "reason", "message"), CASES, ids=[c[1] + "-" + c[0].__name__ for c in CASES]
)
def test_bad_pair_raises_or_is_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture, defect: Callable[[Tree], None], reason: str, message: str
) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=6)
    defect(tree)
    args = tree.args("--classes", str(tree.root / "labelmap.txt"), "--jobs", "1")
    code, err = run(tmp_path / "out", args, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder

    code, err = run(tmp_path / "skip", [*args, "--on-error", "skip"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    skipped = manifest["source"]["skipped"]
    assert skipped["counts"] == {reason: 1} and skipped["stems"] == {reason: ["frame_0002"]}
    assert message in skipped["first"][reason]
    assert sorted(samples_by_stem(tmp_path / "skip")) == [f"frame_{i:04d}" for i in (0, 1, 3, 4, 5)]
    assert f"pairs left out (--on-error skip): {reason} 1" in (tmp_path / "skip" / "README.md").read_text()


def unknown_stem(tree: Tree) -> None:
    with (lists_of(tree) / "val.txt").open("a") as f:
        f.write("2007_999999\n")


def listed_twice(tree: Tree) -> None:
    (lists_of(tree) / "test.txt").write_text("2007_000003\n")


def listed_twice_in_one(tree: Tree) -> None:
    with (lists_of(tree) / "train.txt").open("a") as f:
        f.write("2007_000003\n")


LIST_CASES = [
    (unknown_stem, "unknown-stem", "val.txt:5: 2007_999999: no image and no mask of this stem", 12),
    (listed_twice, "stem-in-two-splits", "test.txt:1: 2007_000003 is already listed at ", 11),
    (listed_twice_in_one, "repeated-stem", "train.txt:9: 2007_000003 is already listed at ", 11),
]


@pytest.mark.parametrize(("defect", "reason", "message", "kept"), LIST_CASES, ids=[c[1] for c in LIST_CASES])
def test_bad_split_list_raises_or_is_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture, defect: Callable[[Tree], None], reason: str, message: str,
    kept: int,
) -> None:  # fmt: skip
    tree = voc_tree(tmp_path / "voc")
    defect(tree)
    args = tree.args("--split-lists", str(lists_of(tree)), "--jobs", "1")
    code, err = run(tmp_path / "out", args, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    code, err = run(tmp_path / "skip", [*args, "--on-error", "skip"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert manifest["source"]["skipped"]["counts"] == {reason: 1}
    assert sum(manifest["splits"][s]["count"] for s in ("train", "val", "test")) == kept


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_empty_folder_is_refused_in_both_modes(
    tmp_path: Path, capsys: pytest.CaptureFixture, mode: str
) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run(tmp_path / "out", ["--images", str(empty), "--masks", str(tree.masks), "--on-error", mode],
                    capsys)  # fmt: skip
    assert code == 1 and err == f"segshards: error: --images {empty}: no .jpg, .jpeg or .png images"
    code, err = run(tmp_path / "out", ["--images", str(tree.images), "--masks", str(empty), "--on-error", mode],
                    capsys)  # fmt: skip
    assert code == 1 and err == f"segshards: error: --masks {empty}: no masks named STEM.png"
    assert not (tmp_path / "out").exists()


CLASS_FILES = [
    ("labelmap.txt", "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50::\n",
     "labelmap.txt:3: colour ['250', '50'] is not three integers 0..255"),
    ("labelmap.txt", "background:0,0,0::\n\ncar\n", "labelmap.txt:3: expected name:r,g,b:parts:actions"),
    ("labelmap.txt", "background:0,0,0::\ncar:0,0,0::\n", "labelmap.txt:2: colour (0, 0, 0) is already given at "),
    ("classes.json", '[\n  {"name": "bg", "color": [0, 0, 0]},\n  {"name": "car" "color": [1, 2, 3]}\n]',
     "classes.json:3: not valid JSON (Expecting ',' delimiter)"),
    ("classes.json", '[\n  {"name": "bg", "color": [0, 0, 0]},\n\n  {"name": "car", "color": [1, 2, 300]}\n]',
     "classes.json:4: colour [1, 2, 300] is not three integers 0..255"),
    ("classes.json", '[{"name": "bg", "color": [0, 0, 0]},\n {"name": "car"}]',
     "classes.json:2: 'car': give a colour to every class or to none"),
    ("classes.json", '[{"name": "bg"},\n {"name": "car", "colour": [1, 2, 3]}]',
     "classes.json:2: unknown field 'colour' (known: name, color, index, ignore)"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), CLASS_FILES)
def test_classes_file_that_does_not_parse_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, text: str, message: str
) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=2)
    (tmp_path / name).write_text(text)
    for mode in ("raise", "skip"):
        code, err = run(
            tmp_path / "out", tree.args("--classes", str(tmp_path / name), "--on-error", mode), capsys
        )
        assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_ignore_colour_from_json_and_rgba_mask(tmp_path: Path) -> None:
    """VOC's void colour listed as ignore becomes 255 and is not a class; an opaque RGBA mask reads as RGB."""
    tree = cvat_tree(tmp_path / "cvat", n=2)
    classes = [
        {"name": n, "color": list(c)} for n, c in zip(("bg", "car", "person"), CVAT_COLOURS, strict=True)
    ]
    classes.append({"name": "void", "color": [224, 224, 192], "ignore": True})
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    truth = tree.truth["frame_0000"].copy()
    truth[:2] = 255
    rgb = np.array([*CVAT_COLOURS, *[(0, 0, 0)] * 252, (224, 224, 192)], np.uint8)[truth]
    bgra = cv2.cvtColor(rgb[..., ::-1].copy(), cv2.COLOR_BGR2BGRA)
    write_png(tree.masks / "frame_0000.png", bgra)
    assert main(["build", "mask-folder", "--out", str(tmp_path / "out"),
                 *tree.args("--classes", str(tmp_path / "classes.json"))]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["schema"]["mask"]["classes"] == ["bg", "car", "person"]
    got = samples_by_stem(tmp_path / "out")["frame_0000"]["sample"]
    assert np.array_equal(cv2.imdecode(np.frombuffer(got["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED), truth)


# The problems found while checking a pair, not while pairing files: the walk's worker processes meet them.
PAIR_CASES = [c for c in CASES if c[0] not in (no_mask, no_image, two_images)]


@pytest.mark.parametrize(("defect", "reason", "message"), PAIR_CASES, ids=[c[1] for c in PAIR_CASES])
def test_a_problem_found_in_a_worker_process_comes_back_as_found_here(
    tmp_path: Path, defect: Callable[[Tree], None], reason: str, message: str
) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=3)
    defect(tree)
    parser = argparse.ArgumentParser()
    MaskFolderRecipe().add_options(parser)
    options = parser.parse_args(tree.args("--classes", str(tree.root / "labelmap.txt")))
    options.seed = 0
    spec = MaskFolderRecipe().make_spec(options)
    work = (spec, [Pair("frame_0002", "frame_0002.jpg", "frame_0002.png")])
    [here] = check_pairs(work)
    [[there]] = map_in_order(check_pairs, [work], workers=1, ahead=1)  # one item: the worker's
    assert type(here) is type(there) and isinstance(there, BadRecord)  # a BadPair, or the photo's BadRecord
    assert (there.reason, str(there)) == (here.reason, str(here)) and there.reason == reason
    assert message in str(there)
