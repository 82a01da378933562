"""What `--near-duplicates report` and `reject` cost a coco-semantic build: CPU seconds of `segshards build
--jobs 1` (one process, so its CPU time is the build's whole cost) per mode, and the ratio to `off`, in
interleaved rounds.

Two sources of N 640x480 JPEGs: `copies`, coco_bench's re-encoded copies of the coco-tiny photographs
(every image is a near-duplicate of 1/16 of the others: report only, since reject cannot fill the
counts from 16 photographs), and `distinct`, seeded random scenes (shapes, gradients and noise, one
polygon annotation per shape) that are no near-duplicates of each other, built with each mode.

`python -m bench near_dup_bench [--images N] [--rounds R]`
"""

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.coco_bench import CACHE, default_source, derive
from bench.commands import segshards

W, H = 640, 480


def scene(rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]]]:
    """A random scene and the polygon of each shape drawn on it."""
    # Random low frequencies (what the perceptual codes see), then fine noise (what JPEG has to code).
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.float32)
    image = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (H, W, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    polygons = []
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = rng.integers(60, W - 60), rng.integers(60, H - 60), int(rng.integers(20, 90))
        k = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(image, [points], tuple(int(v) for v in rng.integers(0, 256, 3)))
        polygons.append([float(v) for v in points.ravel()])
    return image, polygons


def distinct(dest: Path, n: int) -> Path:
    """`n` COCO-like scenes in `dest` (images/ and instances.json), made once; returns `dest`."""
    stamp = dest / "complete"
    if stamp.is_file() and stamp.read_text() == str(n):
        return dest
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        image, polygons = scene(rng)
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(dest / "images" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        for p in polygons:
            xs, ys = p[0::2], p[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": 1 + len(annotations) % 3,
                 "segmentation": [p], "area": box[2] * box[3], "bbox": box, "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": k, "name": name} for k, name in enumerate(("square", "star", "blob"), 1)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (dest / "instances.json").write_text(json.dumps(data))
    stamp.write_text(str(n))
    return dest


def cpu_seconds(cmd: list[str]) -> float:
    """User + system CPU seconds of running `cmd` to completion (it and the processes it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{done.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def build_cmd(data: Path, out: Path, n: int, mode: str) -> list[str]:
    val = test = n // 16
    return segshards(
        "build", "coco-semantic", "--annotations", str(data / "instances.json"), "--images",
        str(data / "images"), "--train", str(n - val - test), "--val", str(val), "--test", str(test),
        "--jobs", "1", "--out", str(out), "--near-duplicates", mode,
    )  # fmt: skip


def measure(name: str, data: Path, n: int, modes: tuple[str, ...], rounds: int, scratch: Path) -> None:
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            out = scratch / f"{name}-{mode}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            cpu[mode].append(cpu_seconds(build_cmd(data, out, n, mode)))
    base = min(cpu["off"])
    for mode in modes:
        best = min(cpu[mode])
        manifest = json.loads((scratch / f"{name}-{mode}" / "manifest.json").read_text())
        found = manifest["near_duplicates"]
        leaks = sum(
            sum(s.get("near_duplicates", {}).get("leaks", {}).values()) for s in manifest["splits"].values()
        )
        print(f"[near-dup] {name:8s} {mode:6s} {best:7.2f} CPU-s ({1000 * best / n:5.2f} ms/image) "
              f"x{best / base:.3f} of off; rejected {found.get('rejected', '-')}, leaked images {leaks}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench near_dup_bench")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args, _ = parser.parse_known_args(argv)
    n = args.images
    scratch = CACHE / "near-dup"
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"[near-dup] coco-semantic --jobs 1, {n} images, CPU seconds, best of {args.rounds} interleaved rounds"
    )
    measure(
        "distinct",
        distinct(CACHE / f"scenes-{n}", n).resolve(),
        n,
        ("off", "report", "reject"),
        args.rounds,
        scratch,
    )
    source = default_source()
    if source is not None:
        copies = derive(source, CACHE / f"coco-{n}", n).resolve()
        measure("copies", copies, n, ("off", "report"), args.rounds, scratch)
    print(f"[near-dup] {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
