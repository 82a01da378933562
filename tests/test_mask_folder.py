"""mask-folder: VOC, CVAT and index-mask trees written by the tests, built, read back pixel by pixel."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from segshards.writer.cli.main import main
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.palette import voc_palette as palette
from segshards.writer.recipes import mask_folder, mask_folder_walk
from tests.mnist_fixtures import (
    ROOT,
    SHARD_FILE,
    folder_bytes,
    kill_after_first_shard,
    read_set,
    read_shard,
)

# Real photographs to crop from: the shared coco-tiny images beside the repository (or a worktree of it).
COCO_TINY = next(
    (p / "shared/data/coco-tiny/images" for p in ROOT.parents if (p / "shared/data").is_dir()), None
)
VOC_PALETTE = [v for rgb in palette(256) for v in rgb]
CVAT_LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nperson:51,221,255::\n"
CVAT_COLOURS = [(0, 0, 0), (250, 50, 83), (51, 221, 255)]


# ---- fixtures written by the tests --------------------------------------------------------------------


def photo(index: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A distinct (H, W, 3) BGR crop of a real photograph (a synthetic one if coco-tiny is absent)."""
    h, w = size
    files = sorted(COCO_TINY.glob("*.jpg")) if COCO_TINY else []
    if files:
        source = cv2.imread(str(files[index % len(files)]))
        y, x = 3 * (index // len(files)), 5 * (index // len(files))
        return np.ascontiguousarray(cv2.resize(source[y : y + 4 * h, x : x + 4 * w], (w, h)))
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def regions(index: int, size: tuple[int, int], classes: int) -> np.ndarray:
    """(H, W) uint8 class indices: background with a rectangle and a disc of classes 1.. per image."""
    h, w = size
    mask = np.zeros(size, np.uint8)
    mask[h // 6 : h // 2, (index * 7) % (w // 2) : (index * 7) % (w // 2) + w // 3] = 1
    cv2.circle(mask, (w // 2 + index % 9, h // 2 + 4), h // 4, int(1 + (index + 1) % (classes - 1)), -1)
    return mask


def save_palette_png(path: Path, indices: np.ndarray) -> None:
    image = Image.fromarray(indices, "P")
    image.putpalette(VOC_PALETTE)
    image.save(path)


def write_png(path: Path, array: np.ndarray) -> None:
    assert cv2.imwrite(str(path), array)


@dataclass
class Tree:
    """A written source: its root, the images and masks folders, the truth (class indices) per stem."""

    root: Path
    images: Path
    masks: Path
    truth: dict[str, np.ndarray]

    def args(self, *more: str) -> list[str]:
        return ["--images", str(self.images), "--masks", str(self.masks), *more]


def voc_tree(root: Path, n: int = 12, *, splits: dict[str, range] | None = None) -> Tree:
    """PASCAL VOC layout: JPEGImages/, SegmentationClass/ palette PNGs with 255 boundaries,
    ImageSets/Segmentation/train.txt and val.txt (no test.txt), and two images that have no mask."""
    images, masks, lists = (
        root / "JPEGImages",
        root / "SegmentationClass",
        root / "ImageSets" / "Segmentation",
    )
    for folder in (images, masks, lists):
        folder.mkdir(parents=True)
    truth = {}
    for i in range(n + 2):
        stem = f"2007_{i:06d}"
        (images / f"{stem}.jpg").write_bytes(jpeg(photo(i)))
        if i >= n:
            continue  # VOC holds many more images than masks
        mask = regions(i, (48, 64), 3)
        edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        mask[edges] = 255  # VOC's boundary band
        save_palette_png(masks / f"{stem}.png", mask)
        truth[stem] = mask
    splits = splits or {"train": range(0, 8), "val": range(8, n)}
    for split, ids in splits.items():
        (lists / f"{split}.txt").write_text("".join(f"2007_{i:06d}\n" for i in ids))
    return Tree(root, images, masks, truth)


def cvat_tree(root: Path, n: int = 10) -> Tree:
    """CVAT "Segmentation mask 1.1": labelmap.txt, JPEGImages/, SegmentationClass/ RGB PNGs."""
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    images.mkdir(parents=True)
    masks.mkdir()
    (root / "labelmap.txt").write_text(CVAT_LABELMAP)
    truth = {}
    for i in range(n):
        stem = f"frame_{i:04d}"
        (images / f"{stem}.jpg").write_bytes(jpeg(photo(i)))
        mask = regions(i, (48, 64), 3)
        rgb = np.array(CVAT_COLOURS, np.uint8)[mask]
        write_png(masks / f"{stem}.png", rgb[..., ::-1])
        truth[stem] = mask
    return Tree(root, images, masks, truth)


def build(out: Path, *args: str) -> dict[str, Any]:
    assert main(["build", "mask-folder", "--out", str(out), *args]) == 0
    return json.loads((out / "manifest.json").read_text())


def samples_by_stem(out: Path) -> dict[str, dict[str, Any]]:
    """stem -> {split, sample} of every sample of a built set."""
    found = {}
    for split, samples in read_set(out).items():
        for sample in samples:
            meta = json.loads(sample["json"])
            found[meta["stem"]] = {"split": split, "sample": sample, "meta": meta}
    return found


def mask_of(sample: dict[str, Any]) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(sample["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)


# ---- formats -----------------------------------------------------------------------------------------


def test_voc_tree_palette_masks_and_split_lists(tmp_path: Path) -> None:
    tree = voc_tree(tmp_path / "voc")
    lists = tree.root / "ImageSets" / "Segmentation"
    manifest = build(tmp_path / "out", *tree.args("--split-lists", str(lists), "--jobs", "1"))
    found = samples_by_stem(tmp_path / "out")
    assert {s: manifest["splits"][s]["count"] for s in ("train", "val", "test")} == {
        "train": 8,
        "val": 4,
        "test": 0,
    }
    assert sorted(found) == sorted(tree.truth)
    for stem, got in found.items():
        assert got["split"] == ("train" if int(stem[-6:]) < 8 else "val")
        sample, meta = got["sample"], got["meta"]
        original = (tree.images / f"{stem}.jpg").read_bytes()
        assert sample["jpg"] == original  # the original file, byte for byte
        assert sample["__key__"] == pixel_key(
            cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR)
        )
        assert np.array_equal(mask_of(sample), tree.truth[stem])  # palette indices, 255 kept
        assert meta == {
            "stem": stem, "image": f"{stem}.jpg", "mask": f"{stem}.png", "width": 64, "height": 48,
            "classes": sorted(int(v) for v in np.unique(tree.truth[stem]) if v != 255), "unmatched_pixels": 0,
        }  # fmt: skip
    schema = manifest["schema"]
    assert schema["mask"]["classes"] == ["0", "1", "2"]  # no --classes: named by index
    assert (schema["mask"]["ignore"], schema["image"]["member"], schema["image"]["size"]) == (
        255,
        "jpg",
        [48, 64],
    )
    assert manifest["source"]["pairs"] == {"found": 12, "unlisted": 2}  # the two images without masks
    assert manifest["source"]["counts"] == {"train": 8, "val": 4, "test": 0}
    assert manifest["source"]["skipped"]["counts"] == {}
    pixels = manifest["splits"]["train"]["class_histogram"]["pixels"]
    assert pixels == {
        str(v): int(sum(np.count_nonzero(tree.truth[s] == v) for s in found if found[s]["split"] == "train"))
        for v in (0, 1, 2, 255)
    }


def test_cvat_export_rgb_masks_through_labelmap(tmp_path: Path) -> None:
    tree = cvat_tree(tmp_path / "cvat")
    args = tree.args("--classes", str(tree.root / "labelmap.txt"), "--jobs", "1")
    manifest = build(tmp_path / "out", *args)
    counts = {s: manifest["splits"][s]["count"] for s in ("train", "val", "test")}
    assert counts == {"train": 8, "val": 1, "test": 1}  # 10 pairs: val and test 10% each by default
    assert manifest["source"]["counts"] == counts and manifest["config"]["counts"]["train"] == "all"
    found = samples_by_stem(tmp_path / "out")
    assert len(found) == 10
    for stem, got in found.items():
        assert np.array_equal(mask_of(got["sample"]), tree.truth[stem])
    assert manifest["schema"]["mask"]["classes"] == ["background", "car", "person"]
    assert [c.get("color") for c in manifest["source"]["classes"]] == [list(c) for c in CVAT_COLOURS]
    assert manifest["config"]["classes"] == "labelmap.txt"
    assert manifest["source"]["unmatched"]["pixels"] == {"train": 0, "val": 0, "test": 0}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "mask pixels with a colour in no class (--unmatched error): 0 pixels in 0 masks" in card


def test_index_masks_with_ignore_and_json_classes(tmp_path: Path) -> None:
    images, masks = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    masks.mkdir()
    truth = {}
    for i in range(6):
        image = photo(i, (40, 56))
        write_png(images / f"p{i}.png", image)  # PNG images are stored as they are, too
        mask = regions(i, (40, 56), 4)
        mask[:3] = 255
        write_png(masks / f"p{i}_labelIds.png", mask)
        truth[f"p{i}"] = mask
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"name": n} for n in ("bg", "road", "car", "sign")], indent=1))
    manifest = build(tmp_path / "out", "--images", str(images), "--masks", str(masks), "--classes", str(classes),
                     "--mask-suffix", "_labelIds.png", "--train", "4", "--val", "1", "--test", "1")  # fmt: skip
    found = samples_by_stem(tmp_path / "out")
    assert sorted(found) == sorted(truth)
    for stem, got in found.items():
        assert got["sample"]["png"] == (images / f"{stem}.png").read_bytes()
        assert np.array_equal(mask_of(got["sample"]), truth[stem])
    assert manifest["schema"]["mask"]["classes"] == ["bg", "road", "car", "sign"]
    assert manifest["schema"]["image"]["member"] == "png"


def test_index_values_remapped_through_json_index(tmp_path: Path) -> None:
    """Cityscapes-style label ids (7 road, 26 car) to contiguous classes; 0 listed as background."""
    images, masks = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    masks.mkdir()
    source = np.zeros((32, 48), np.uint8)
    source[4:10], source[12:20, 5:30], source[25:] = 7, 26, 255
    (images / "a.jpg").write_bytes(jpeg(photo(0, (32, 48))))
    write_png(masks / "a.png", source)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"name": "void", "index": 0}, {"name": "road", "index": 7},
                                   {"name": "car", "index": 26}]))  # fmt: skip
    build(tmp_path / "out", "--images", str(images), "--masks", str(masks), "--classes", str(classes))
    expected = np.select([source == 7, source == 26, source == 255], [1, 2, 255], 0).astype(np.uint8)
    assert np.array_equal(mask_of(samples_by_stem(tmp_path / "out")["a"]["sample"]), expected)


# ---- RGB masks resized with interpolation: each --unmatched policy, pixel for pixel ---------------------


def interpolated_tree(root: Path) -> tuple[Tree, dict[str, np.ndarray]]:
    """CVAT colours drawn at 4x and shrunk with INTER_AREA: the edges hold blended colours."""
    tree = cvat_tree(root, n=3)
    rgb_masks = {}
    for stem, mask in tree.truth.items():
        big = cv2.resize(np.array(CVAT_COLOURS, np.uint8)[mask], (256, 192), interpolation=cv2.INTER_NEAREST)
        small = cv2.resize(big, (64, 48), interpolation=cv2.INTER_LINEAR)  # RGB
        small = cv2.GaussianBlur(small, (3, 3), 0)  # as resampling filters leave them
        write_png(tree.masks / f"{stem}.png", small[..., ::-1])
        rgb_masks[stem] = small
    return tree, rgb_masks


def expected_mask(rgb: np.ndarray, policy: str) -> tuple[np.ndarray, int]:
    """Class per pixel computed the slow, obvious way; and how many pixels matched no colour."""
    out = np.zeros(rgb.shape[:2], np.uint8)
    unmatched = 0
    for y, x in np.ndindex(*rgb.shape[:2]):
        colour = tuple(int(v) for v in rgb[y, x])
        if colour in CVAT_COLOURS:
            out[y, x] = CVAT_COLOURS.index(colour)
            continue
        unmatched += 1
        distances = [sum((a - b) ** 2 for a, b in zip(colour, c, strict=True)) for c in CVAT_COLOURS]
        out[y, x] = 255 if policy == "ignore" else distances.index(min(distances))
    return out, unmatched


@pytest.mark.parametrize("policy", ["ignore", "nearest"])
def test_unmatched_colours_pixel_for_pixel(tmp_path: Path, policy: str) -> None:
    tree, rgb = interpolated_tree(tmp_path / "src")
    labelmap = str(tree.root / "labelmap.txt")
    args = tree.args(
        "--classes", labelmap, "--unmatched", policy, "--train", "3", "--val", "0", "--test", "0"
    )
    manifest = build(tmp_path / "out", *args)
    found = samples_by_stem(tmp_path / "out")
    total = masks = 0
    for stem, got in found.items():
        expected, unmatched = expected_mask(rgb[stem], policy)
        assert np.array_equal(mask_of(got["sample"]), expected)
        assert got["meta"]["unmatched_pixels"] == unmatched > 0
        total, masks = total + unmatched, masks + 1
    report = manifest["source"]["unmatched"]
    assert (report["policy"], report["pixels"]["train"], report["masks"]["train"]) == (policy, total, masks)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"(--unmatched {policy}): {total:,} pixels in {masks} masks" in card


def test_unmatched_error_names_file_colour_count_and_option(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree, rgb = interpolated_tree(tmp_path / "src")
    code = main(["build", "mask-folder", "--out", str(tmp_path / "out"),
                 *tree.args("--classes", str(tree.root / "labelmap.txt"))])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and not (tmp_path / "out").exists()
    first = sorted(rgb)[0]  # the walk meets this one first only by chance: find the one named
    assert "SegmentationClass/frame_" in err and "--unmatched ignore or nearest" in err
    stem = err.split("SegmentationClass/")[1].split(".png")[0]
    colours, counts = np.unique(rgb[stem].reshape(-1, 3), axis=0, return_counts=True)
    unmatched = [(tuple(int(v) for v in c), int(n)) for c, n in zip(colours, counts, strict=True)
                 if tuple(int(v) for v in c) not in CVAT_COLOURS]  # fmt: skip
    colour, n = max(unmatched, key=lambda t: t[1])
    assert f"colour {colour} is not in --classes ({n:,} pixels;" in err, (err, first)
    assert f"{sum(k for _, k in unmatched):,} pixels in all" in err


# ---- splits, counts and duplicates -----------------------------------------------------------------


def test_duplicate_across_split_lists_is_rejected_and_counted(tmp_path: Path) -> None:
    tree = voc_tree(tmp_path / "voc", n=8, splits={"train": range(0, 5), "test": range(5, 8)})
    copy = tree.images / "2007_000007.jpg"  # a test image that is a pixel copy of train's 2007_000002
    copy.write_bytes((tree.images / "2007_000002.jpg").read_bytes())
    lists = tree.root / "ImageSets" / "Segmentation"
    manifest = build(tmp_path / "out", *tree.args("--split-lists", str(lists)))
    splits = manifest["splits"]
    assert [splits[s]["count"] for s in ("train", "val", "test")] == [5, 0, 2]
    assert [splits[s]["duplicates_rejected"] for s in ("train", "val", "test")] == [0, 0, 1]
    assert manifest["source"]["duplicates"]["test"] == [
        {"stem": "2007_000007", "same_pixels_as": "2007_000002"}
    ]
    assert "2007_000007" not in samples_by_stem(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "train 0, val 0, test 1; 2007_000007 (test) = 2007_000002" in card


def test_counts_and_seed_cut_one_permutation(tmp_path: Path) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=10)
    labelmap = str(tree.root / "labelmap.txt")
    a = build(tmp_path / "a", *tree.args("--classes", labelmap, "--train", "5", "--val", "2", "--test", "3"))
    b = build(tmp_path / "b", *tree.args("--classes", labelmap, "--train", "5", "--val", "2", "--test", "3",
                                          "--seed", "1"))  # fmt: skip
    stems = {s: a["source"]["stems"][s] for s in ("train", "val", "test")}
    assert [len(v) for v in stems.values()] == [5, 2, 3]
    assert len(set().union(*map(set, stems.values()))) == 10  # disjoint
    assert b["source"]["stems"] != a["source"]["stems"]
    code = main(["build", "mask-folder", "--out", str(tmp_path / "c"),
                 *tree.args("--classes", labelmap, "--train", "9", "--val", "2")])  # fmt: skip
    assert code == 1 and not (tmp_path / "c" / "manifest.json").exists()


# ---- determinism, resume, loading and training -------------------------------------------------------


def test_jobs_1_and_all_cores_give_identical_bytes_and_verify(tmp_path: Path) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=20)
    args = tree.args("--classes", str(tree.root / "labelmap.txt"), "--shard-size", "4")
    build(tmp_path / "one", *args, "--jobs", "1")
    build(tmp_path / "all", *args, "--jobs", "0")
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "all")
    assert json.loads((tmp_path / "all" / "build-log.json").read_text())["jobs"] == (os.cpu_count() or 1)
    assert main(["verify", str(tmp_path / "all")]) == 0
    assert main(["preview", str(tmp_path / "all"), "-o", str(tmp_path / "sheet.png"), "--count", "4"]) == 0
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    assert not [p for p in (tmp_path / "all").iterdir() if p.name.startswith(".")]


def test_masks_beyond_the_cache_are_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=6)
    args = tree.args("--classes", str(tree.root / "labelmap.txt"), "--jobs", "1")
    build(tmp_path / "cached", *args)
    monkeypatch.setattr(mask_folder_walk, "MASK_CACHE_BYTES", 0)
    mask_folder_walk.select.cache_clear()  # walk again, keeping no mask
    build(tmp_path / "read-again", *args)
    assert folder_bytes(tmp_path / "cached") == folder_bytes(tmp_path / "read-again")


def test_resume_after_sigkill_gives_the_same_bytes(tmp_path: Path) -> None:
    tree = cvat_tree(tmp_path / "cvat", n=60)
    out = tmp_path / "killed"
    args = ["build", "mask-folder", *tree.args("--classes", str(tree.root / "labelmap.txt")),
            "--shard-size", "2", "--jobs", "1"]  # fmt: skip
    left = kill_after_first_shard(args, out)
    assert left and all(SHARD_FILE.fullmatch(n) for n in left), left  # no manifest, no partial name
    assert len(left) < 30, "killed too late to test resuming"
    assert all(len(read_shard(out / n)) == 2 for n in left)
    assert main([*args, "--out", str(out)]) == 0
    log = json.loads((out / "build-log.json").read_text())
    assert (log["shards_reused"], log["shards_written"]) == (len(left), 30 - len(left))
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0
    assert folder_bytes(out) == folder_bytes(tmp_path / "fresh")


def test_loader_and_a_few_training_steps(tmp_path: Path) -> None:
    from segshards.loaders import make_loader
    from segshards.train.cli import train_main

    tree = cvat_tree(tmp_path / "cvat", n=20)
    build(tmp_path / "set", *tree.args("--classes", str(tree.root / "labelmap.txt")))
    batch = next(iter(make_loader(str(tmp_path / "set"), split="train", batch_size=4)))
    assert tuple(batch["image"].shape) == (4, 3, 48, 64) and tuple(batch["mask"].shape) == (4, 48, 64)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    run = tmp_path / "run"
    code = train_main(["--data", str(tmp_path / "set"), "--out", str(run), "--epochs", "1", "--batch-size", "4",
                       "--samples-per-epoch", "8", "--widths", "8,16", "--size", "32", "48", "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "miou" in json.dumps(metrics)


def test_an_image_changed_after_planning_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Rendering does not decode the image again: the file's sha256 must still be the one planned."""
    tree = cvat_tree(tmp_path / "cvat", n=4)
    original = mask_folder.source_of

    def touched(spec: Any, i: int) -> Any:
        source = original(spec, i)
        path = tree.images / source.pair.image
        path.write_bytes(jpeg(photo(99)))  # another photo under the planned name
        return source

    monkeypatch.setattr(mask_folder, "source_of", touched)
    code = main(["build", "mask-folder", "--out", str(tmp_path / "out"), "--jobs", "1",
                 *tree.args("--classes", str(tree.root / "labelmap.txt"))])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "JPEGImages/frame_" in err and ".jpg: changed while the set was being built" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
