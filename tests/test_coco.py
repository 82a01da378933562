"""coco-semantic builds on the COCO-format fixture: masks pixel by pixel per overlap policy, the manifest,
determinism across workers, dedup, resume, verify and preview."""

import functools
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segshards.writer.cli.main import main
from segshards.writer.errors import SourceError
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.manifest import MARKER
from segshards.writer.recipes.coco import CocoSemanticRecipe, CocoSpec, file_sha256, select
from tests.coco_fixtures import CLASS_OF, CocoFixture, expected_mask, with_exif, write_coco
from tests.mnist_fixtures import comparable

ALL_TRAIN = ["--train", "7", "--val", "0", "--test", "0"]  # the 7 eligible fixture images, all in train
SPLIT_3 = ["--train", "4", "--val", "2", "--test", "1"]
ELIGIBLE = {1, 2, 3, 6, 7, 8, 9}


def build(fixture: CocoFixture, out: Path, *args: str) -> dict[str, Any]:
    assert main(["build", "coco-semantic", *fixture.args(), "--out", str(out), *args]) == 0
    return json.loads((out / "manifest.json").read_text())


def read_samples(out: Path) -> dict[str, list[dict[str, bytes]]]:
    """Every sample of every split, read with the standard library's tarfile."""
    manifest = json.loads((out / "manifest.json").read_text())
    found: dict[str, list[dict[str, bytes]]] = {}
    for split, info in manifest["splits"].items():
        samples: dict[str, dict[str, bytes]] = {}
        for entry in info["shards"]:
            with tarfile.open(out / entry["name"]) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.partition(".")
                    handle = tar.extractfile(member)
                    assert handle is not None
                    samples.setdefault(key, {"__key__": key.encode()})[ext] = handle.read()
        found[split] = list(samples.values())
    return found


def mask_of(sample: dict[str, bytes]) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(sample["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)


def folder_bytes(out: Path) -> dict[str, bytes]:
    files = {
        p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != "build-log.json"
    }
    return comparable(files, out)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> CocoFixture:
    return write_coco(tmp_path_factory.mktemp("coco"))


@functools.cache
def built(coco_root: str, overlap: str) -> Path:
    fixture = write_coco(Path(coco_root))  # rewritten identically: builds need no shared state
    out = Path(coco_root) / f"out-{overlap}"
    build(fixture, out, *ALL_TRAIN, "--overlap", overlap, "--jobs", "1")
    return out


@pytest.mark.parametrize("overlap", ["ignore", "z-order", "max"])
def test_masks_pixel_by_pixel(coco: CocoFixture, overlap: str) -> None:
    out = built(str(coco.annotations.parent), overlap)
    samples = read_samples(out)["train"]
    assert len(samples) == 7
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco.data["images"]}
    seen = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        image_id = meta["image_id"]
        seen.add(image_id)
        h, w = sizes[image_id]
        expected = expected_mask(coco.truth[image_id], h, w, overlap, CLASS_OF)
        mask = mask_of(sample)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert np.array_equal(mask, expected), f"image {image_id}: {np.argwhere(mask != expected)[:5]}"
    assert seen == ELIGIBLE  # no image without annotations (4), no crowd-only image (5)


@pytest.mark.parametrize(
    ("overlap", "person_dog", "dog_small_person", "tie", "same_class"),
    [("ignore", 255, 255, 255, 1), ("max", 2, 2, 3, 1), ("z-order", 2, 1, 1, 1)],
)
def test_the_policies_at_hand_picked_pixels(
    coco: CocoFixture, overlap: str, person_dog: int, dog_small_person: int, tie: int, same_class: int
) -> None:
    masks = {
        json.loads(s["json"])["image_id"]: mask_of(s)
        for s in read_samples(built(str(coco.annotations.parent), overlap))["train"]
    }
    assert masks[1][20, 30] == person_dog  # person (1) under a smaller dog (2)
    assert masks[1][27, 44] == dog_small_person  # a small person on the dog
    assert masks[3][8, 8] == tie  # hot dog (3, id 304) and person (1, id 305) of equal area
    assert masks[2][30, 45] == same_class  # two people overlapping: never ignored
    assert masks[3][40, 5] == 255 and masks[3][45, 35] == 255  # crowd, also over the toothbrush
    assert masks[3][45, 55] == 4  # the toothbrush (id 90) outside the crowd
    assert masks[1][45, 60] == 0


def test_samples_keep_the_original_jpeg_and_describe_the_image(coco: CocoFixture) -> None:
    out = built(str(coco.annotations.parent), "ignore")
    for sample in read_samples(out)["train"]:
        meta = json.loads(sample["json"])
        original = (coco.images / meta["file_name"]).read_bytes()
        assert sample["jpg"] == original
        pixels = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR)
        assert sample["__key__"].decode() == pixel_key(pixels) and pixels.ndim == 3
        assert meta["license"] == 3 and (meta["height"], meta["width"]) == pixels.shape[:2]
        if meta["image_id"] == 3:
            assert meta["categories"] == [
                {"class": 1, "id": 1, "name": "person", "instances": 1, "crowd": 1},
                {"class": 2, "id": 18, "name": "dog", "instances": 1, "crowd": 0},
                {"class": 3, "id": 58, "name": "hot dog", "instances": 1, "crowd": 0},
                {"class": 4, "id": 90, "name": "toothbrush", "instances": 1, "crowd": 0},
            ]


def test_manifest_records_classes_palette_checksum_and_choices(coco: CocoFixture, tmp_path: Path) -> None:
    manifest = build(coco, tmp_path / "out", *SPLIT_3, "--seed", "3")
    source = manifest["source"]
    assert source["classes"] == [
        {"class": 1, "category_id": 1, "name": "person"},
        {"class": 2, "category_id": 18, "name": "dog"},
        {"class": 3, "category_id": 58, "name": "hot dog"},
        {"class": 4, "category_id": 90, "name": "toothbrush"},
    ]
    assert source["palette"][:2] == [[0, 0, 0], [128, 0, 0]] and len(source["palette"]) == 5
    assert source["files"][0]["name"] == "instances.json"
    assert source["files"][0]["sha256"] == manifest["config"]["annotations_sha256"]
    ids = source["image_ids"]
    assert [len(ids[s]) for s in ("train", "val", "test")] == [4, 2, 1]
    assert len(set(ids["train"]) | set(ids["val"]) | set(ids["test"])) == 7
    assert set(ids["train"] + ids["val"] + ids["test"]) <= ELIGIBLE
    assert source["skipped"] == {"counts": {}, "image_ids": {}, "annotations": {}}
    assert source["licenses"] == [
        {"id": 3, "name": "Attribution-NonCommercial License", "url": "http://example.org/by-nc/2.0/"}
    ]
    assert source["annotation_file"] == {"images": 9, "annotations": 16, "eligible_images": 7}
    assert manifest["mask"] == {"dtype": "uint8", "num_classes": 5, "background": 0, "ignore_index": 255}
    assert manifest["sample"]["image"] == "jpg"
    assert manifest["config"]["categories"] == "all" and manifest["config"]["overlap"] == "ignore"
    assert "/" not in json.dumps(manifest["config"])  # no machine paths
    for split in ("train", "val", "test"):
        metas = [json.loads(s["json"]) for s in read_samples(tmp_path / "out")[split]]
        assert sorted(m["image_id"] for m in metas) == sorted(ids[split])
    other = build(coco, tmp_path / "other", *SPLIT_3, "--seed", "4")["source"]["image_ids"]
    assert other != ids


def test_categories_option_keeps_a_subset_in_id_order(coco: CocoFixture, tmp_path: Path) -> None:
    manifest = build(
        coco, tmp_path / "out", "--train", "5", "--val", "0", "--test", "0", "--categories", "dog,person"
    )
    assert [c["name"] for c in manifest["source"]["classes"]] == ["person", "dog"]
    assert manifest["mask"]["num_classes"] == 3
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco.data["images"]}
    samples = read_samples(tmp_path / "out")["train"]
    assert {json.loads(s["json"])["image_id"] for s in samples} == {1, 2, 3, 7, 9}
    for sample in samples:
        image_id = json.loads(sample["json"])["image_id"]
        expected = expected_mask(coco.truth[image_id], *sizes[image_id], "ignore", {1: 1, 18: 2})
        assert np.array_equal(mask_of(sample), expected)


def test_unknown_category_name_names_the_option(
    coco: CocoFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "build",
        "coco-semantic",
        *coco.args(),
        "--out",
        str(tmp_path / "o"),
        "--categories",
        "person,cat",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("segshards: error: --categories: 'cat' is not a category of instances.json")


def test_more_images_than_eligible_names_the_option(
    coco: CocoFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "build",
                "coco-semantic",
                *coco.args(),
                "--out",
                str(tmp_path / "o"),
                "--train",
                "5",
                "--val",
                "3",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("segshards: error: coco-semantic cannot supply these counts from this source: ")
    assert "--train 5, --val 3, --test 500 (the default) ask for 508 samples in all" in err
    assert (
        main(["build", "coco-semantic", *coco.args(), "--out", str(tmp_path / "d")]) == 1
    )  # the default 8000
    assert "--train 8000" in capsys.readouterr().err


def test_jobs_1_and_jobs_2_give_identical_bytes_and_verify(
    coco: CocoFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [*SPLIT_3, "--shard-size", "2", "--overlap", "z-order"]
    build(coco, tmp_path / "one", *common, "--jobs", "1")
    build(coco, tmp_path / "two", *common, "--jobs", "2")  # workers read the shared subset file
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").glob("*.tar")) == [
        "test-000000.tar", "train-000000.tar", "train-000001.tar", "val-000000.tar"
    ]  # fmt: skip
    assert not any(p.name.startswith(".") for p in (tmp_path / "two").iterdir())
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "two")]) == 0
    assert "ok, 4 shards, 7 samples" in capsys.readouterr().out
    assert main(["preview", str(tmp_path / "two"), "-o", str(tmp_path / "p.png"), "--split", "train"]) == 0
    sheet = cv2.imread(str(tmp_path / "p.png"))
    assert sheet is not None and sheet.shape[1] == 8 + 4 * (3 * 128 + 2 * 2 + 2 + 8)  # 4 framed tiles a row


def test_resume_rebuilds_only_what_is_missing(coco: CocoFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(coco, out, *SPLIT_3, "--shard-size", "2", "--jobs", "1")
    before = folder_bytes(out)
    # What an interrupted build leaves: the in-progress marker, no manifest, some shards missing or torn.
    config = json.loads((out / "manifest.json").read_text())["config"]
    (out / MARKER).write_text(json.dumps({"config": config}))
    (out / "manifest.json").unlink()
    (out / "train-000001.tar").unlink()
    (out / "val-000000.tar").write_bytes(b"truncated")
    build(coco, out, *SPLIT_3, "--shard-size", "2", "--jobs", "1")
    assert folder_bytes(out) == before
    log = json.loads((out / "build-log.json").read_text())
    assert (log["shards_written"], log["shards_reused"]) == (2, 2)


@pytest.mark.parametrize("exif", [False, True], ids=["byte-copy", "exif-resaved"])
def test_duplicate_images_are_rejected_and_counted(tmp_path: Path, exif: bool) -> None:
    # Image 10 has image 6's pixels: the same bytes, or with an EXIF segment added (other bytes).
    fixture = write_coco(tmp_path / "src", duplicate_of=6, exif=exif)
    sha = file_sha256(str(fixture.annotations))
    spec = CocoSpec(str(fixture.annotations), str(fixture.images), None, "ignore", "raise", 0, (7, 0, 0), sha)
    seed = next(s for s in range(50) if select(replace(spec, seed=s)).duplicates["train"])  # the copy is met
    manifest = build(
        fixture, tmp_path / "out", "--train", "7", "--val", "0", "--test", "0", "--seed", str(seed)
    )
    assert manifest["duplicates_rejected"] == manifest["splits"]["train"]["duplicates_rejected"] == 1
    dup = manifest["source"]["duplicate_image_ids"]["train"]
    chosen = manifest["source"]["image_ids"]["train"]
    assert len(dup) == 1 and dup[0] in (6, 10) and ({6, 10} - set(dup)) <= set(chosen)
    assert len({s["__key__"] for s in read_samples(tmp_path / "out")["train"]}) == 7


def test_an_image_changed_after_planning_is_refused(coco: CocoFixture, tmp_path: Path) -> None:
    """Rendering does not decode an image again: it checks it reads the very bytes the walk decoded."""
    fixture = write_coco(tmp_path / "src")
    sha = file_sha256(str(fixture.annotations))
    spec = CocoSpec(str(fixture.annotations), str(fixture.images), None, "ignore", "raise", 0, (7, 0, 0), sha)
    recipe = CocoSemanticRecipe()
    first = select(spec).chosen["train"][0]
    sample = recipe.render(spec, np.array([first]))
    path = fixture.images / f"{first:012d}.jpg"
    assert sample.image_bytes == path.read_bytes()
    path.write_bytes(with_exif(path.read_bytes()))  # the same pixels, other bytes
    with pytest.raises(SourceError, match=f"image {first}: {path.name} changed during the build"):
        recipe.render(spec, np.array([first]))
