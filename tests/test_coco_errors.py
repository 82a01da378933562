"""coco-semantic on bad input: one line naming the record and the reason, or with --on-error skip the image
left out and counted per reason in the manifest."""

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from segshards.writer.cli.main import main
from segshards.writer.process_pool import map_in_order
from segshards.writer.recipes.coco import Work, check_images, permutation
from segshards.writer.sources.coco_annotations import load_index
from segshards.writer.sources.photos import BadRecord
from tests.coco_fixtures import CocoFixture, annotation, image_record, write_coco

Edit = Callable[[dict[str, Any]], None]
FileEdit = Callable[[Path], None]
ELIGIBLE = {1, 2, 3, 6, 7, 8, 9}


def drop(record: dict[str, Any], key: str) -> None:
    del record[key]


def exif_rotated(path: Path) -> None:
    """Rewrite the JPEG with EXIF orientation 3 (180 degrees), which cv2 applies when decoding."""
    image = pytest.importorskip("PIL.Image")
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    exif = image.Exif()
    exif[0x0112] = 3
    buf = io.BytesIO()
    image.fromarray(rgb).save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    path.write_bytes(buf.getvalue())


def truncate(path: Path) -> None:
    """Cut the JPEG short by its last 100 bytes, as an interrupted copy leaves it."""
    path.write_bytes(path.read_bytes()[:-100])


# (case, edit of the JSON, edit of the images folder, message, reason, image left out)
CASES: list[tuple[str, Edit | None, FileEdit | None, str, str, int]] = [
    ("annotation-key", lambda d: drop(annotation(d, 102), "segmentation"), None,
     "instances.json: annotation 102 (image 1): missing key 'segmentation'", "missing-key", 1),
    ("image-key", lambda d: drop(image_record(d, 2), "width"), None,
     "instances.json: image 2: missing key 'width'", "missing-key", 2),
    ("missing-file", None, lambda p: (p / "000000000003.jpg").unlink(),
     "instances.json: image 3: file 000000000003.jpg not found", "missing-image", 3),
    ("not-a-jpeg", None, lambda p: (p / "000000000007.jpg").write_bytes(b"GIF89a not a jpeg"),
     "instances.json: image 7 (000000000007.jpg): not a JPEG file", "unreadable-image", 7),
    ("undecodable", None, lambda p: (p / "000000000008.jpg").write_bytes(b"\xff\xd8\xff" + bytes(200)),
     "instances.json: image 8 (000000000008.jpg): corrupt JPEG (no marker at byte 4)", "unreadable-image", 8),
    ("truncated", None, lambda p: truncate(p / "000000000009.jpg"),
     "instances.json: image 9 (000000000009.jpg): undecodable jpg image", "unreadable-image", 9),
    ("short-polygon", lambda d: annotation(d, 101).update(segmentation=[[4, 4, 36, 4]]), None,
     "instances.json: annotation 101 (image 1): polygon part 0 has 2 point(s), needs at least 3", "bad-polygon", 1),
    ("rle-size", lambda d: annotation(d, 201)["segmentation"].update(size=[61, 80]), None,
     "instances.json: annotation 201 (image 2): RLE size 61x80 (HxW) disagrees with image 60x80", "rle-size", 2),
    ("crowd-rle-runs", lambda d: annotation(d, 301)["segmentation"]["counts"].append(5), None,
     "instances.json: annotation 301 (image 3): RLE runs cover 4037 pixels, the image has 4032", "bad-rle", 3),
    ("unknown-category", lambda d: annotation(d, 303).update(category_id=12), None,
     "instances.json: annotation 303 (image 3): category_id 12 is not in 'categories'", "unknown-category", 3),
    ("image-size", lambda d: image_record(d, 1).update(width=65), None,
     "instances.json: image 1 (000000000001.jpg): file is 64x48, annotations say 65x48", "image-size", 1),
    ("exif-orientation", None, lambda p: exif_rotated(p / "000000000006.jpg"),
     "instances.json: image 6 (000000000006.jpg): EXIF orientation turns the decoded pixels away from its annotations", "exif-orientation", 6),
    ("duplicate-image-id", lambda d: d["images"].append(dict(image_record(d, 9))), None,
     "instances.json: image 9: id appears twice in 'images'", "bad-field", 9),
    ("bool-crowd", lambda d: annotation(d, 601).update(iscrowd=True), None,
     "instances.json: annotation 601 (image 6): 'iscrowd' is bool true", "bad-field", 6),
]  # fmt: skip


def fixture_with(tmp_path: Path, edit: Edit | None, file_edit: FileEdit | None) -> CocoFixture:
    fixture = write_coco(tmp_path / "src", mutate=edit)
    if file_edit is not None:
        file_edit(fixture.images)
    return fixture


def run(fixture: CocoFixture, out: Path, *args: str) -> int:
    return main(["build", "coco-semantic", *fixture.args(), "--out", str(out), *args])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("case", "edit", "file_edit", "message", "reason", "image_id"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_stops_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, edit: Edit | None, file_edit: FileEdit | None,
    message: str, reason: str, image_id: int,
) -> None:  # fmt: skip
    fixture = fixture_with(tmp_path, edit, file_edit)
    assert run(fixture, tmp_path / "out", "--train", "4", "--val", "2", "--test", "1") == 1
    assert one_error_line(capsys).startswith(f"segshards: error: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "edit", "file_edit", "message", "reason", "image_id"), CASES, ids=[c[0] for c in CASES]
)
def test_skip_leaves_the_image_out_and_counts_it(
    tmp_path: Path,
    case: str,
    edit: Edit | None,
    file_edit: FileEdit | None,
    message: str,
    reason: str,
    image_id: int,
) -> None:
    fixture = fixture_with(tmp_path, edit, file_edit)
    out = tmp_path / "out"
    # Six sound images remain; with a seed that does not put the bad image last, asking for all six walks
    # every eligible image, the bad one included (file problems are found only on images the walk reaches).
    seed = next(s for s in range(20) if permutation(sorted(ELIGIBLE), s)[-1] != image_id)
    args = ["--train", "4", "--val", "1", "--test", "1", "--on-error", "skip", "--seed", str(seed)]
    assert run(fixture, out, *args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["skipped"] == {
        "counts": {reason: 1},
        "image_ids": {reason: [image_id]},
        "annotations": {},
    }
    chosen = [i for ids in manifest["source"]["image_ids"].values() for i in ids]
    assert sorted(chosen) == sorted(ELIGIBLE - {image_id})
    assert manifest["config"]["on_error"] == "skip"


# The cases found while checking images, not while parsing the file: the walk's worker processes meet them.
STRUCTURAL = {"annotation-key", "image-key", "unknown-category", "duplicate-image-id", "bool-crowd"}
WALK_CASES = [c for c in CASES if c[0] not in STRUCTURAL]


@pytest.mark.parametrize(
    ("case", "edit", "file_edit", "message", "reason", "image_id"), WALK_CASES, ids=[c[0] for c in WALK_CASES]
)
def test_a_problem_found_in_a_worker_process_comes_back_as_found_here(
    tmp_path: Path, case: str, edit: Edit | None, file_edit: FileEdit | None,
    message: str, reason: str, image_id: int,
) -> None:  # fmt: skip
    fixture = fixture_with(tmp_path, edit, file_edit)
    index = load_index(str(fixture.annotations), None, "skip", case)
    found = [(index.images[image_id], index.annotations.get(image_id, []))]
    work = Work(str(fixture.images), index.name, index.class_of(), found)
    [here] = check_images(work)
    [[there]] = map_in_order(check_images, [work], workers=1, ahead=1)  # one item: the worker's
    assert isinstance(here, BadRecord) and isinstance(there, BadRecord)
    assert (there.reason, str(there)) == (here.reason, str(here))
    assert there.reason == reason and str(there).startswith(message)


def test_annotation_of_an_unknown_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def orphan(d: dict[str, Any]) -> None:
        d["annotations"].append({**annotation(d, 101), "id": 9999, "image_id": 77})

    fixture = fixture_with(tmp_path, orphan, None)
    assert run(fixture, tmp_path / "a", "--train", "7", "--val", "0", "--test", "0") == 1
    assert (
        one_error_line(capsys)
        == "segshards: error: instances.json: annotation 9999: image_id 77 is not in 'images'"
    )
    assert (
        run(fixture, tmp_path / "b", "--train", "7", "--val", "0", "--test", "0", "--on-error", "skip") == 0
    )
    skipped = json.loads((tmp_path / "b" / "manifest.json").read_text())["source"]["skipped"]
    assert skipped == {
        "counts": {"unknown-image": 1},
        "image_ids": {},
        "annotations": {"unknown-image": ["annotations[16]"]},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"images": [', "malformed JSON (Expecting value at line 1 column 13)"),
        ('{"images": [], "annotations": []}', "instances.json: missing key 'categories'"),
        ("[1, 2]", "instances.json: top level is list, expected an object"),
        (
            '{"images": {}, "annotations": [], "categories": []}',
            "instances.json: 'images' is dict, expected a list",
        ),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
            "instances.json: categories[1]: category id 1 appears twice",
        ),
        (
            '{"images": [], "annotations": [], "categories": [{"name": "a"}]}',
            "instances.json: categories[0]: missing key 'id'",
        ),
        (b'{"a": "\xc3\x28"}', "not UTF-8 JSON (invalid continuation byte at byte 7)"),
    ],
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_unusable_annotation_file_stops_either_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, message: str, on_error: str
) -> None:
    fixture = write_coco(tmp_path / "src")
    if isinstance(text, bytes):
        fixture.annotations.write_bytes(text)
    else:
        fixture.annotations.write_text(text)
    assert run(fixture, tmp_path / "out", "--on-error", on_error) == 1
    line = one_error_line(capsys)
    where = str(fixture.annotations) if "JSON (" in message else "instances.json"
    assert line.startswith(f"segshards: error: {where}: {message.removeprefix('instances.json: ')}")


def test_missing_annotation_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = write_coco(tmp_path / "src")
    fixture.annotations.unlink()
    assert run(fixture, tmp_path / "out") == 1
    assert one_error_line(capsys) == f"segshards: error: {fixture.annotations}: annotation file not found"


def test_unsafe_file_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = fixture_with(tmp_path, lambda d: image_record(d, 1).update(file_name="../../etc/passwd"), None)
    assert run(fixture, tmp_path / "out", "--train", "4", "--val", "2", "--test", "1") == 1
    assert "image 1: file_name '../../etc/passwd' is not a plain relative path" in one_error_line(capsys)


def test_skip_with_parallel_workers(tmp_path: Path) -> None:
    """With --jobs 2 the workers read the shared subset of the planned images; the skipped one is not in it."""
    fixture = fixture_with(tmp_path, None, lambda p: (p / "000000000002.jpg").unlink())
    out = tmp_path / "out"
    seed = next(s for s in range(20) if permutation(sorted(ELIGIBLE), s)[-1] != 2)
    args = [
        "--train",
        "4",
        "--val",
        "1",
        "--test",
        "1",
        "--on-error",
        "skip",
        "--jobs",
        "2",
        "--shard-size",
        "2",
    ]
    assert run(fixture, out, *args, "--seed", str(seed)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["skipped"]["image_ids"] == {"missing-image": [2]}
    assert [manifest["splits"][s]["count"] for s in ("train", "val", "test")] == [4, 1, 1]


def test_images_option_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = write_coco(tmp_path / "src")
    argv = [
        "build",
        "coco-semantic",
        "--annotations",
        str(fixture.annotations),
        "--images",
        str(tmp_path / "nope"),
    ]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert one_error_line(capsys) == f"segshards: error: --images {tmp_path / 'nope'}: not a folder"


def test_annotation_path_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = write_coco(tmp_path / "src")
    argv = ["build", "coco-semantic", "--annotations", str(fixture.images), "--images", str(fixture.images)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert one_error_line(capsys).startswith(
        f"segshards: error: {fixture.images}: cannot read (Is a directory)"
    )
