"""mask-folder: segshards against the loop a user writes, on image + RGB mask folders made from real photos.

The source: `--pairs` 1280x1024 JPEGs cropped from the COCO photographs in shared/data/coco-tiny (a
seeded crop, scale and flip each, so that no two share their pixels), with RGB masks of 4 colours
(background, person, outdoor things, indoor things) rendered from the photos' COCO annotations through
the same crop, and a CVAT labelmap.txt. It is written once and kept in `--source` for later runs.

Timed side by side in one run: the plain loop (PIL open, colour-to-index with numpy, cv2.imencode,
webdataset.ShardWriter, serial; it stores each JPEG as it is, as segshards does, but decodes no JPEG and
rejects no duplicate), then `segshards build mask-folder` with --jobs 1 and with every core.

`python -m bench mask_folder_bench [--pairs N] [--source DIR]`
"""

import argparse
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from bench.commands import segshards, timed

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = next(
    (p / "shared/data/coco-tiny" for p in ROOT.parents if (p / "shared/data/coco-tiny").is_dir()), None
)
OUT = Path("bench-out/mask-folder")
SIZE = (1024, 1280)  # (H, W)
GROUPS = {"person": 1, "animal": 2, "vehicle": 2, "outdoor": 2, "sports": 2, "accessory": 2}  # others: 3
COLOURS = [(0, 0, 0), (250, 50, 83), (51, 221, 255), (245, 147, 49)]  # RGB, by class
NAMES = ["background", "person", "outdoor", "indoor"]


# ---- the source ------------------------------------------------------------------------------------


def class_masks(coco_root: Path) -> list[tuple[Path, np.ndarray]]:
    """(photo, (H, W) class mask at the photo's size) for each coco-tiny image; later annotations on top."""
    data = json.loads((coco_root / "instances.json").read_text())
    group = {c["id"]: GROUPS.get(c["supercategory"], 3) for c in data["categories"]}
    out = []
    for image in sorted(data["images"], key=lambda i: i["id"]):
        h, w = image["height"], image["width"]
        mask = np.zeros((h, w), np.uint8)
        for a in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects([p for p in seg if len(p) >= 6], h, w))
            else:
                rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            mask[mask_utils.decode(rle).astype(bool)] = group[a["category_id"]]
        out.append((coco_root / "images" / image["file_name"], mask))
    return out


def make_pair(index: int, photo: np.ndarray, classes: np.ndarray, folder: Path) -> bytes:
    """Write pair `index`: a seeded crop of the photo at SIZE (JPEG) and its RGB mask (PNG); the crop's hash."""
    rng = np.random.default_rng([index, 13])
    h, w = photo.shape[:2]
    crop_w = int(min(w, h * SIZE[1] / SIZE[0]) * rng.uniform(0.55, 1.0))
    crop_h = int(crop_w * SIZE[0] / SIZE[1])
    x, y = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
    image = cv2.resize(photo[y : y + crop_h, x : x + crop_w], SIZE[::-1], interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(classes[y : y + crop_h, x : x + crop_w], SIZE[::-1], interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    stem = f"img_{index:05d}"
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    (folder / "JPEGImages" / f"{stem}.jpg").write_bytes(data.tobytes())
    rgb = np.array(COLOURS, np.uint8)[mask]
    assert cv2.imwrite(
        str(folder / "SegmentationClass" / f"{stem}.png"), np.ascontiguousarray(rgb[..., ::-1])
    )
    return hashlib.sha256(np.ascontiguousarray(image).data).digest()


def make_source(folder: Path, pairs: int) -> None:
    """The bench's CVAT-style export of `pairs` pairs, unless `folder` already holds it."""
    marker = folder / "done.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"pairs": pairs, "size": list(SIZE)}:
        return
    if COCO_TINY is None:
        raise SystemExit("mask_folder_bench: shared/data/coco-tiny not found beside the repository")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "JPEGImages").mkdir(parents=True)
    (folder / "SegmentationClass").mkdir()
    labelmap = "".join(f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in zip(NAMES, COLOURS, strict=True))
    (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + labelmap)
    sources = [(cv2.imread(str(p)), m) for p, m in class_masks(COCO_TINY)]
    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        hashes = list(pool.map(lambda i: make_pair(i, *sources[i % len(sources)], folder), range(pairs)))
    assert len(set(hashes)) == pairs, "two bench images share their pixels"
    marker.write_text(json.dumps({"pairs": pairs, "size": list(SIZE)}))
    print(f"[mask-folder] wrote {pairs:,} pairs to {folder} in {time.perf_counter() - started:.0f} s")


# ---- the contenders ----------------------------------------------------------------------------------


def plain_loop(source: Path, out: Path) -> float:
    """The loop a user writes: PIL opens, colour-to-index with numpy, cv2.imencode, ShardWriter; seconds."""
    out.mkdir(parents=True)
    started = time.perf_counter()
    with wds.ShardWriter(str(out / "pairs-%06d.tar"), maxcount=10_000, verbose=0) as sink:
        for path in sorted((source / "JPEGImages").glob("*.jpg")):
            image = Image.open(path)
            rgb = np.array(Image.open(source / "SegmentationClass" / f"{path.stem}.png").convert("RGB"))
            assert rgb.shape[:2] == (image.height, image.width)
            mask = np.zeros(rgb.shape[:2], np.uint8)
            for index, colour in enumerate(COLOURS):
                mask[np.all(rgb == colour, axis=-1)] = index
            ok, png = cv2.imencode(".png", mask)
            assert ok
            meta = {"image": path.name, "width": image.width, "height": image.height}
            sink.write(
                {"__key__": path.stem, "jpg": path.read_bytes(), "mask.png": png.tobytes(), "json": meta}
            )
    return time.perf_counter() - started


def build_cmd(source: Path, out: Path, jobs: int) -> list[str]:
    return segshards("build", "mask-folder", "--images", str(source / "JPEGImages"), "--masks",
                     str(source / "SegmentationClass"), "--classes", str(source / "labelmap.txt"), "--out",
                     str(out), "--jobs", str(jobs))  # fmt: skip


def same_masks(loop: Path, ours: Path, count: int = 5) -> bool:
    """The first `count` samples of our train split carry the loop's masks for the same stems."""
    theirs = {}
    for sample in wds.WebDataset(str(loop / "pairs-000000.tar"), shardshuffle=False, empty_check=False):
        theirs[sample["__key__"]] = sample["mask.png"]
    checked = 0
    for sample in wds.WebDataset(str(ours / "train-000000.tar"), shardshuffle=False, empty_check=False):
        stem = json.loads(sample["json"])["stem"]
        a, b = (
            cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_UNCHANGED)
            for x in (sample["mask.png"], theirs[stem])
        )
        if not np.array_equal(a, b):
            return False
        checked += 1
        if checked == count:
            break
    return checked == count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench mask_folder_bench")
    parser.add_argument("--pairs", type=int, default=2000, help="image + mask pairs (1280x1024)")
    parser.add_argument("--source", type=Path, default=OUT / "source", help="where the source is kept")
    args, _ = parser.parse_known_args(argv)
    make_source(args.source, args.pairs)
    for name in ("loop", "jobs1", "all"):
        shutil.rmtree(OUT / name, ignore_errors=True)
    cores = os.cpu_count() or 1
    os.sync()
    t_loop = plain_loop(args.source, OUT / "loop")
    os.sync()
    t_one = timed(build_cmd(args.source, OUT / "jobs1", 1))
    os.sync()
    t_all = timed(build_cmd(args.source, OUT / "all", 0))
    manifest = json.loads((OUT / "all" / "manifest.json").read_text())
    samples = sum(manifest["splits"][s]["count"] for s in ("train", "val", "test"))
    assert samples == args.pairs and manifest["duplicates_rejected"] == 0, "every pair is a sample"
    n = args.pairs
    print(
        f"mask-folder, {n:,} pairs of {SIZE[1]}x{SIZE[0]} JPEG + RGB mask (4 colours), {cores} cores, one run"
    )
    print(
        f"  plain loop (PIL, numpy, cv2.imencode, ShardWriter) : {t_loop:7.1f} s  {n / t_loop:6.1f} pairs/s"
    )
    print(f"  segshards --jobs 1                                 : {t_one:7.1f} s  {n / t_one:6.1f} pairs/s  "
          f"({t_loop / t_one:.2f}x the loop)")  # fmt: skip
    print(f"  segshards --jobs {cores} (all cores)                     : {t_all:7.1f} s  {n / t_all:6.1f} pairs/s  "
          f"({t_loop / t_all:.2f}x the loop, target >= 2x; {t_one / t_all:.2f}x --jobs 1, target >= 1.6x)")  # fmt: skip
    print(f"  masks equal to the loop's (5 samples checked)      : {same_masks(OUT / 'loop', OUT / 'all')}")
    for name in ("loop", "jobs1", "all"):
        shutil.rmtree(OUT / name, ignore_errors=True)


if __name__ == "__main__":
    main()
