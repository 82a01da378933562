"""segshards.build(fn, inputs, out) against the loop a user writes around the same function.

The function: one 256x256 tile of a coco-tiny photograph (shared/data/coco-tiny) per input, a seeded crop
scaled to the tile, with its 3-class mask (background, person, other) rasterised from the photo's COCO
annotations. Each call reads and decodes the JPEG and rasterises the annotations again, as a function
that knows nothing of the others does. Inputs are (photo, tile number) pairs; no two tiles share pixels.

Timed side by side in one run, each in a fresh process (imports and worker start-up included): the plain
loop (fn, then `webdataset.ShardWriter` with its default encoders: PIL PNG), `segshards.build` with
`jobs=1`, and with every core.

`python -m bench python_build_bench [--tiles-per-photo N] [--small]`
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = next(
    (
        p / "shared/data/coco-tiny"
        for p in ROOT.parents
        if (p / "shared/data/coco-tiny/instances.json").is_file()
    ),
    None,
)
OUT = Path("bench-out/python-build")
TILE = 256
CLASSES = ["background", "person", "other"]


class CocoTiles:
    """fn(input) -> sample: a seeded tile of a coco-tiny photo, RGB, with its class mask.

    Pickled, it is only its folder: each process reads the annotations once, on its first call."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._annotations: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "_annotations": None}

    def annotations(self) -> dict[str, Any]:
        if self._annotations is None:
            data = json.loads((self.root / "instances.json").read_text())
            by_image: dict[int, list[Any]] = {}
            for a in data["annotations"]:
                by_image.setdefault(a["image_id"], []).append(a)
            self._annotations = {"images": {i["file_name"]: i for i in data["images"]}, "by_image": by_image}
        return self._annotations

    def class_mask(self, image: dict[str, Any]) -> np.ndarray:
        """(H, W) classes of the photo: 1 person, 2 anything else annotated, 0 background."""
        h, w = image["height"], image["width"]
        mask = np.zeros((h, w), np.uint8)
        for a in self.annotations()["by_image"].get(image["id"], []):
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects([p for p in seg if len(p) >= 6], h, w))
            else:
                rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            mask[mask_utils.decode(rle).astype(bool)] = 1 if a["category_id"] == 1 else 2
        return mask

    def __call__(self, ref: tuple[str, int]) -> dict[str, Any]:
        name, k = ref
        image = self.annotations()["images"][name]
        photo = cv2.cvtColor(cv2.imread(str(self.root / "images" / name)), cv2.COLOR_BGR2RGB)
        mask = self.class_mask(image)
        rng = np.random.default_rng([image["id"], k])
        h, w = mask.shape
        side = int(min(h, w) * rng.uniform(0.3, 0.9))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        tile = cv2.resize(photo[y : y + side, x : x + side], (TILE, TILE), interpolation=cv2.INTER_AREA)
        tile_mask = cv2.resize(
            mask[y : y + side, x : x + side], (TILE, TILE), interpolation=cv2.INTER_NEAREST
        )
        return {"image": tile, "mask": tile_mask, "meta": {"photo": name, "box": [x, y, side]}}


def coco_tiles(root: Path) -> CocoTiles:
    return CocoTiles(root)


def tile_inputs(root: Path, per_photo: int) -> list[tuple[str, int]]:
    """(photo file, tile number) for every photo of `root`, `per_photo` tiles each."""
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))
    return [(name, k) for k in range(per_photo) for name in names]


# ---- the contenders (each run in its own process by `main`) --------------------------------------------


def plain_loop(root: Path, inputs: list[tuple[str, int]], out: Path) -> None:
    """The loop a user writes: fn, then ShardWriter with its default encoders (PIL PNG)."""
    import webdataset as wds  # here: each contender's process imports only what it runs

    fn = coco_tiles(root)
    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for i, ref in enumerate(inputs):
            s = fn(ref)
            sink.write({"__key__": f"{i:06d}", "png": s["image"], "mask.png": s["mask"], "json": s["meta"]})


def ours(root: Path, inputs: list[tuple[str, int]], out: Path, jobs: int) -> None:
    import segshards  # here: each contender's process imports only what it runs

    result = segshards.build(coco_tiles(root), inputs, out, classes=CLASSES, jobs=jobs)
    assert result.counts["train"] == len(inputs) and result.total == len(inputs), result


def contender(argv: list[str]) -> None:
    """`python -m bench.python_build_bench --run KIND OUT PER_PHOTO`: one contender, in this process."""
    kind, out, per_photo = argv[1], Path(argv[2]), int(argv[3])
    assert COCO_TINY is not None
    inputs = tile_inputs(COCO_TINY, per_photo)
    if kind == "loop":
        plain_loop(COCO_TINY, inputs, out)
    else:
        ours(COCO_TINY, inputs, out, int(kind.removeprefix("jobs")))


def spin(n: int) -> float:
    """Seconds of a pure-Python loop: the measure of how much CPU this machine gives a process now."""
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - started


def ceiling(cores: int, n: int = 4_000_000) -> float:
    """How much faster `cores` processes finish `cores` loops than one process does: what the machine
    allows a build on `cores` processes right now (other work on it lowers this below `cores`)."""
    one = sum(spin(n) for _ in range(cores))
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(spin, [1000] * cores))  # started
        started = time.perf_counter()
        list(pool.map(spin, [n] * cores))
        return one / (time.perf_counter() - started)


def timed_run(kind: str, per_photo: int) -> float:
    out = OUT / kind
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "bench.python_build_bench", "--run", kind, str(out), str(per_photo)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"python_build_bench {kind} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench python_build_bench")
    parser.add_argument(
        "--tiles-per-photo", type=int, default=48, help="tiles cut from each of the 16 photos"
    )
    parser.add_argument("--small", action="store_true", help="8 tiles per photo (128 samples)")
    args, _ = parser.parse_known_args(argv)
    if COCO_TINY is None:
        print("[python-build] shared/data/coco-tiny not found beside the repository: skipped")
        return
    per_photo = 8 if args.small else args.tiles_per_photo
    n = len(tile_inputs(COCO_TINY, per_photo))
    cores = os.cpu_count() or 1
    before = ceiling(cores)
    t_loop, t_one, t_all = (timed_run(k, per_photo) for k in ("loop", "jobs1", f"jobs{cores}"))
    after = ceiling(cores)
    print(f"segshards.build, {n:,} tiles of {TILE}x{TILE} cut from coco-tiny photos, {cores} cores, one run")
    print(f"  plain loop (fn + webdataset.ShardWriter) : {t_loop:6.1f} s  {n / t_loop:6.1f} samples/s")
    print(f"  segshards.build(jobs=1)                  : {t_one:6.1f} s  {n / t_one:6.1f} samples/s")
    print(f"  segshards.build(jobs={cores})                  : {t_all:6.1f} s  {n / t_all:6.1f} samples/s  "
          f"({t_one / t_all:.2f}x jobs=1, target >= 1.6x; {t_loop / t_all:.2f}x the loop, target >= 1.8x)")  # fmt: skip
    print(f"  {cores} processes vs one on a pure-Python loop, before and after: {before:.2f}x, {after:.2f}x "
          f"(below {cores}x: the machine is shared, and the jobs={cores} ratio is capped near it)")  # fmt: skip
    for kind in ("loop", "jobs1", f"jobs{cores}"):
        shutil.rmtree(OUT / kind, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        contender(sys.argv[1:])
    else:
        main()
