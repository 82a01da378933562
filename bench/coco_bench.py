"""coco-semantic on real photographs: the plain serial loop a user writes, `segshards build` with --jobs 1
and with all cores, on the same COCO-like images, in one run; images/s, ratios and the build's peak memory.

The images are derived from the 16 real COCO photographs of `coco-tiny` (read-only, so copied): each copy
has one 16x16 block changed (its pixels then differ from every other copy's) and is re-encoded as a JPEG,
keeping its photograph's annotations. They are generated once into bench-out/ and reused.

`python -m bench coco_bench [--images N] [--rounds R] [--shard-size K] [--source DIR]`
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from bench.commands import segshards

SOURCE_ENV = "SEGSHARDS_COCO_TINY"
CACHE = Path("bench-out")
JPEG_QUALITY = 95
BLOCK = 16
SAMPLE_S = 0.25


def default_source() -> Path | None:
    """$SEGSHARDS_COCO_TINY, else the first `shared/data/coco-tiny` beside the repository or a folder above."""
    if os.environ.get(SOURCE_ENV):
        return Path(os.environ[SOURCE_ENV])
    root = Path(__file__).resolve().parents[1]
    found = (p / "shared" / "data" / "coco-tiny" for p in root.parents)
    return next((p for p in found if (p / "instances.json").is_file()), None)


def derive(source: Path, dest: Path, n: int) -> Path:
    """`n` COCO-like images in `dest` (images/ and instances.json), made once; returns `dest`."""
    stamp = dest / "complete"
    if stamp.is_file() and stamp.read_text() == f"{n} {source}":
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    data = json.loads((source / "instances.json").read_text())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    photos = [
        (r, cv2.imread(str(source / "images" / r["file_name"]), cv2.IMREAD_UNCHANGED)) for r in data["images"]
    ]
    images, annotations = [], []
    for i in range(n):
        record, pixels = photos[i % len(photos)]
        copy = pixels.copy()
        # Block (i // 16) at a position of its own, filled with colours from the copy's number: every copy
        # of one photograph differs from the others in decoded pixels.
        k = i // len(photos)
        y, x = (k * 7) % (copy.shape[0] - BLOCK), (k * 13) % (copy.shape[1] - BLOCK)
        copy[y : y + BLOCK, x : x + BLOCK] = np.array([k & 255, (k >> 8) & 255, 128], np.uint8)
        ok, jpeg = cv2.imencode(".jpg", copy, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        image_id = i + 1
        name = f"{image_id:012d}.jpg"
        (dest / "images" / name).write_bytes(jpeg.tobytes())
        images.append({**record, "id": image_id, "file_name": name})
        for a in by_image.get(record["id"], []):
            annotations.append({**a, "id": len(annotations) + 1, "image_id": image_id})
    out = {**data, "images": images, "annotations": annotations}
    (dest / "instances.json").write_text(json.dumps(out))
    stamp.write_text(f"{n} {source}")
    return dest


def plain_loop(source: Path, out: Path, shard_size: int) -> None:
    """What a user writes by hand: PIL polygon per annotation at category_id*100, np.maximum where they
    overlap, a PNG per mask, the JPEG as it is, webdataset's ShardWriter."""
    data = json.loads((source / "instances.json").read_text())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for image in data["images"]:
            w, h = image["width"], image["height"]
            mask = np.zeros((h, w), np.uint8)
            for a in by_image.get(image["id"], []):
                if a["iscrowd"]:
                    continue  # crowd regions are RLE, not polygons
                canvas = Image.new("L", (w, h), 0)
                draw = ImageDraw.Draw(canvas)
                for part in a["segmentation"]:
                    draw.polygon(part, fill=a["category_id"] * 100)
                mask = np.maximum(mask, np.asarray(canvas))
            png = io.BytesIO()
            Image.fromarray(mask).save(png, format="PNG")
            jpeg = (source / "images" / image["file_name"]).read_bytes()
            meta = {"image_id": image["id"], "file_name": image["file_name"]}
            sink.write(
                {"__key__": f"{image['id']:012d}", "jpg": jpeg, "mask.png": png.getvalue(), "json": meta}
            )


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds of `cmd` and the peak of its process tree's summed resident memory (sampled every
    SAMPLE_S: listing a process tree reads all of /proc, which costs a busy 2-core machine more than a
    few percent when done every few ms); a failure ends the benchmark with its error output."""
    import psutil

    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass  # a process of the tree ended while being read
            time.sleep(SAMPLE_S)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(
                f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()[-2000:]}"
            )
    return elapsed, peak


def contenders(data: Path, out: Path, n: int, shard_size: int) -> dict[str, list[str]]:
    """The command of each contender; all of them write `n` samples from the same files."""
    val = test = n // 16
    build = segshards(
        "build", "coco-semantic", "--annotations", str(data / "instances.json"), "--images", str(data / "images"),
        "--train", str(n - val - test), "--val", str(val), "--test", str(test), "--shard-size", str(shard_size),
    )  # fmt: skip
    loop = [sys.executable, "-m", "bench.coco_bench", "--run-loop", str(data), "--out"]
    return {
        "loop": [*loop, str(out / "loop"), "--shard-size", str(shard_size)],
        "--jobs 1": [*build, "--out", str(out / "jobs1"), "--jobs", "1"],
        "all cores": [*build, "--out", str(out / "all"), "--jobs", "0"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench coco_bench")
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument(
        "--source", type=Path, default=None, help=f"coco-tiny folder (default: ${SOURCE_ENV}, ...)"
    )
    parser.add_argument("--run-loop", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.run_loop is not None:  # the loop, as a process of its own like the builds
        plain_loop(args.run_loop, args.out, args.shard_size)
        return 0
    source = args.source or default_source()
    if source is None or not (source / "instances.json").is_file():
        print(f"[coco] no coco-tiny folder (set ${SOURCE_ENV} or --source): skipped")
        return 0
    n = args.images
    data = derive(source, CACHE / f"coco-{n}", n).resolve()
    size_mb = sum(p.stat().st_size for p in (data / "images").iterdir()) / n / 1e3
    print(f"[coco] {n} JPEGs derived from the {source.name} photographs ({size_mb:.0f} KB each on average), "
          f"shards of {args.shard_size}, {os.cpu_count()} cores, best of {args.rounds} interleaved rounds")  # fmt: skip
    rates: dict[str, list[float]] = {}
    peaks: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        for _ in range(args.rounds):
            for name, cmd in contenders(data, Path(scratch), n, args.shard_size).items():
                for sub in ("loop", "jobs1", "all"):
                    shutil.rmtree(Path(scratch) / sub, ignore_errors=True)
                elapsed, peak = run_measured(cmd)
                rates.setdefault(name, []).append(n / elapsed)
                peaks[name] = max(peaks.get(name, 0), peak)
    report(rates, peaks)
    return 0


def report(rates: dict[str, list[float]], peaks: dict[str, int]) -> None:
    """The table: best images/s (and the range over rounds), ratios of the best and per round, peak RSS."""
    loop, one, every = rates["loop"], rates["--jobs 1"], rates["all cores"]
    print(f"[coco] {'':10s} {'images/s':>9s} {'(range)':>15s} {'peak RSS':>9s}")
    for name, values in rates.items():
        print(f"[coco] {name:10s} {max(values):9.1f} ({min(values):6.1f}-{max(values):6.1f}) "
              f"{peaks[name] / 2**20:6.0f} MB")  # fmt: skip
    vs_loop = [a / b for a, b in zip(every, loop, strict=True)]
    vs_one = [a / b for a, b in zip(every, one, strict=True)]
    print(
        f"[coco] all cores / loop:     {max(every) / max(loop):.2f}x (per round {min(vs_loop):.2f}-{max(vs_loop):.2f}x)"
    )
    print(
        f"[coco] all cores / --jobs 1: {max(every) / max(one):.2f}x (per round {min(vs_one):.2f}-{max(vs_one):.2f}x)"
    )
    print(f"[coco] --jobs 1 / loop:      {max(one) / max(loop):.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
