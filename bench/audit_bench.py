"""`segshards audit` measured: its quality on photographs with known groups, and its time against the
build of the same photographs.

Quality: the copies of `bench.derived_photos` (re-encodes, resizes, 10% crops, pasted labels of the
coco-tiny photographs, and distinct tiles), hashed and grouped in this process at several thresholds:
pair recall per kind of copy (original and copy in one group), pair precision after grouping (every pair
a group makes), and links between distinct photographs.

Time: the COCO bench's derived set (`bench.coco_bench.derive`: copies of the 16 photographs, each with one
block changed) built with `segshards build coco-semantic` on all cores, then audited on all cores; wall
time, images/s and peak RSS of each, best of `--rounds`.

`python -m bench audit_bench [--images N] [--rounds R] [--small]` (--small: 800 images, one round)
"""

import argparse
import json
import os
import shutil
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np

from bench.coco_bench import CACHE, default_source, derive, run_measured
from bench.commands import segshards
from bench.derived_photos import coco_tiny_images, derived
from segshards.writer.share import near_duplicates as nd

KINDS = ("reencode", "resize", "crop", "label")
THRESHOLDS = (10, 12, 14, 16, 18)


def quality(folder: Path) -> None:
    """Recall per kind, precision after grouping and false links, per threshold."""
    items = list(derived(folder))
    codes = np.stack([nd.payload_codes(d.data, "jpg", d.name) for d in items])
    originals = {d.group: i for i, d in enumerate(items) if d.kind == "original"}
    print(f"[audit] quality: {len(items)} photographs, {len(originals)} groups of 1 + 18 copies, "
          f"{sum(d.kind == 'distinct' for d in items)} distinct tiles")  # fmt: skip
    print(f"[audit] {'threshold':>9s} " + " ".join(f"{k:>8s}" for k in KINDS) + "  precision  false links")
    for threshold in THRESHOLDS:
        a, b, _ = nd.near_pairs(codes, threshold)
        comp = nd.components(len(items), a, b)
        recall = []
        for kind in KINDS:
            pairs = [(originals[d.group], i) for i, d in enumerate(items) if d.kind == kind]
            recall.append(sum(comp[x] == comp[y] for x, y in pairs) / len(pairs))
        made = true = 0
        for root in set(comp.tolist()):
            for x, y in combinations(np.flatnonzero(comp == root).tolist(), 2):
                made, true = made + 1, true + (items[x].group == items[y].group)
        false_links = sum(
            items[x].group != items[y].group for x, y in zip(a.tolist(), b.tolist(), strict=True)
        )
        mark = " (default)" if threshold == nd.THRESHOLD else ""
        print(f"[audit] {threshold:>9d} " + " ".join(f"{r:8.3f}" for r in recall)
              + f"  {true / made:9.4f}  {false_links:>11d}{mark}")  # fmt: skip


def timing(source: Path, n: int, rounds: int, shard_size: int) -> None:
    """Build then audit the derived COCO set; the audit's time against the build's."""
    data = derive(source, CACHE / f"coco-{n}", n).resolve()
    val = test = n // 16
    rows: dict[str, list[tuple[float, int]]] = {"build": [], "audit": []}
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        out, record = Path(scratch) / "set", Path(scratch) / "audit.json"
        build = segshards(
            "build", "coco-semantic", "--annotations", str(data / "instances.json"), "--images",
            str(data / "images"), "--train", str(n - val - test), "--val", str(val), "--test", str(test),
            "--shard-size", str(shard_size), "--out", str(out), "--jobs", "0",
        )  # fmt: skip
        for _ in range(rounds):
            shutil.rmtree(out, ignore_errors=True)
            rows["build"].append(run_measured(build))
            rows["audit"].append(run_measured(segshards("audit", str(out), "--json", str(record))))
        report = json.loads(record.read_text())
    print(
        f"[audit] time: {n} COCO-like JPEGs, shards of {shard_size}, {os.cpu_count()} cores, best of {rounds}"
    )
    for name, runs in rows.items():
        best = min(t for t, _ in runs)
        peak = max(m for _, m in runs)
        print(f"[audit] {name:6s} {best:7.1f} s  {n / best:7.1f} images/s  peak RSS {peak / 2**20:5.0f} MB")
    build_s, audit_s = min(t for t, _ in rows["build"]), min(t for t, _ in rows["audit"])
    print(f"[audit] audit / build time: {audit_s / build_s:.2f}x (target <= 1)")
    counts = report["counts"]
    assert isinstance(counts, dict)
    print(f"[audit] found {counts['groups']} groups of {counts['images_in_groups']} images; leaks "
          f"{counts['leak']['groups']} groups ({counts['leak']['images']} images)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit_bench")
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--small", action="store_true", help="800 images, one round")
    args, _ = parser.parse_known_args(argv)
    photos = coco_tiny_images()
    if photos is None:
        print("[audit] no coco-tiny folder (set $SEGSHARDS_COCO_TINY): skipped")
        return 0
    quality(photos)
    source = default_source()
    if source is not None:
        n, rounds = (800, 1) if args.small else (args.images, args.rounds)
        timing(source, n, rounds, min(args.shard_size, max(n // 8, 1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
