"""The build job: determinism across workers, global dedup, manifest truth, resume after a kill."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from segshards.writer.cli.main import main
from segshards.writer.format.keys import pixel_key
from tests.mnist_fixtures import (
    BUNDLED,
    SHARD_FILE,
    SMALL,
    build_once,
    decode,
    folder_bytes,
    kill_after_first_shard,
    read_set,
    read_shard,
    tiny_source,
    visible_files,
)

RECIPES = ["mnist-foreground", "mnist-circle", "mnist-grid"]


def build(out: Path, recipe: str, *args: str) -> dict:
    assert main(["build", recipe, "--out", str(out), *args]) == 0
    return json.loads((out / "manifest.json").read_text())


def source_refs(samples: list[dict]) -> list[tuple[str, int]]:
    refs = []
    for sample in samples:
        meta = json.loads(sample["json"])
        refs += [(r["set"], r["index"]) for r in meta.get("sources", [meta.get("source")])]
    return refs


@pytest.mark.parametrize("recipe", ["mnist-grid", "mnist-circle"])
def test_jobs_1_and_jobs_2_give_identical_bytes(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, recipe: str
) -> None:
    serial = build_once(tmp_path_factory, recipe, *SMALL)
    parallel = tmp_path / "parallel"
    build(parallel, recipe, *SMALL, "--jobs", "2")
    assert json.loads((parallel / "build-log.json").read_text())["jobs"] == 2
    ours, theirs = folder_bytes(serial), folder_bytes(parallel)
    assert "manifest.json" in ours
    assert sorted(n for n in ours if n.endswith(".tar")) == [
        "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"
    ]  # fmt: skip
    assert ours == theirs
    assert sorted(p.name for p in parallel.iterdir()) == sorted(
        [*ours, "build-log.json"]
    )  # nothing hidden left


def test_seed_changes_the_samples(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    base = read_set(build_once(tmp_path_factory, "mnist-grid", *SMALL))
    other = build(
        tmp_path / "seed1", "mnist-grid", "--train", "300", "--val", "0", "--test", "0", "--seed", "1"
    )
    assert other["seed"] == 1 and other["config"]["seed"] == 1
    keys = {s["__key__"] for s in base["train"]}
    assert not keys & {s["__key__"] for s in read_set(tmp_path / "seed1")["train"]}


def test_duplicate_source_digits_are_rejected_and_counted(tmp_path: Path) -> None:
    # Tiny source, 48 train digits (pools: train 0..43, val 44..47) and 12 test digits, with three
    # pixel-identical copies: train 3 -> train 10, train 7 -> val 45, train 5 -> test 2.
    dups = [("train", 3, "train", 10), ("train", 7, "train", 45), ("train", 5, "test", 2)]
    source = tiny_source(tmp_path / "src", duplicates=dups)
    manifest = build(tmp_path / "out", "mnist-foreground", "--source", str(source), "--jobs", "1")
    splits = manifest["splits"]
    assert {s: (v["count"], v["duplicates_rejected"]) for s, v in splits.items()} == {
        "train": (43, 1),
        "val": (3, 1),
        "test": (11, 1),
    }
    assert manifest["duplicates_rejected"] == 3
    samples = read_set(tmp_path / "out")
    keys = [s["__key__"] for split in samples.values() for s in split]
    assert len(keys) == len(set(keys)) == 57
    assert all(pixel_key(decode(s["png"])) == s["__key__"] for split in samples.values() for s in split)
    train, val, test = (set(source_refs(samples[s])) for s in ("train", "val", "test"))
    assert len(train & {("train", 3), ("train", 10)}) == 1  # one copy kept, either one
    assert ("train", 7) in train and ("train", 45) not in val  # the earlier split keeps its digit
    assert ("train", 5) in train and ("test", 2) not in test
    assert val == {("train", i) for i in (44, 46, 47)}


def test_grid_dedup_keeps_exactly_the_distinct_images(tmp_path: Path) -> None:
    # Every train digit is a copy of digit 0 or 1: exactly 2**4 = 16 distinct 2x2 grids exist.
    dups = [("train", j % 2, "train", j) for j in range(2, 48)]
    source = tiny_source(tmp_path / "src", duplicates=dups)
    args = ["--source", str(source), "--train", "16", "--val", "0", "--test", "5", "--jobs", "1"]
    manifest = build(tmp_path / "out", "mnist-grid", *args)
    assert (
        manifest["splits"]["train"]["count"] == 16 and manifest["splits"]["train"]["duplicates_rejected"] > 0
    )
    assert manifest["duplicates_rejected"] == sum(
        v["duplicates_rejected"] for v in manifest["splits"].values()
    )
    train = read_set(tmp_path / "out")["train"]
    assert len({s["__key__"] for s in train}) == 16
    patterns = {tuple(r["index"] % 2 for r in json.loads(s["json"])["sources"]) for s in train}
    assert len(patterns) == 16


@pytest.mark.parametrize("recipe", RECIPES)
def test_manifest_agrees_with_the_shards(tmp_path_factory: pytest.TempPathFactory, recipe: str) -> None:
    folder = build_once(tmp_path_factory, recipe, *SMALL)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format"], manifest["recipe"], manifest["hash"]["algorithm"]) == (
        "segshards",
        recipe,
        "xxh3_128",
    )
    assert manifest["config"]["counts"] == {"train": 300, "val": 60, "test": 60}
    assert manifest["config"]["shard_size"] == 100 and manifest["seed"] == 0
    md5sums = {
        name: md5 for md5, name in (line.split() for line in (BUNDLED / "MD5SUMS").read_text().splitlines())
    }
    assert {f["name"]: f["md5"] for f in manifest["source"]["files"]} == md5sums
    assert manifest["duplicates_rejected"] == sum(
        v["duplicates_rejected"] for v in manifest["splits"].values()
    )
    listed = []
    for split, info in manifest["splits"].items():
        pixels: Counter[str] = Counter()
        labels: Counter[str] = Counter()
        total = 0
        for entry in info["shards"]:
            listed.append(entry["name"])
            data = (folder / entry["name"]).read_bytes()
            samples = read_shard(folder / entry["name"])
            assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
            assert entry["count"] == len(samples)
            total += len(samples)
            for sample in samples:
                counts = np.bincount(decode(sample["mask.png"]).ravel())
                pixels.update({str(c): int(n) for c, n in enumerate(counts) if n})
                meta = json.loads(sample["json"])
                labels.update(str(d) for d in meta.get("digits", [meta["label"]] if "label" in meta else []))
        assert info["count"] == total == manifest["config"]["counts"][split]
        assert info["class_histogram"]["pixels"] == dict(pixels)
        assert info["class_histogram"]["labels"] == dict(labels)
        assert max(int(c) for c in pixels) < manifest["mask"]["num_classes"]
    assert listed == sorted(listed)  # splits appear in sorted-key order, shards by index
    visible = visible_files(folder)
    assert sorted(n for n in visible if n.endswith(".tar")) == listed
    assert {"build-log.json", "manifest.json"} <= set(visible)


def test_rebuilding_a_finished_set_reuses_every_shard(tmp_path: Path) -> None:
    source = tiny_source(tmp_path / "src")
    args = ["--source", str(source), "--shard-size", "10", "--jobs", "1"]
    build(tmp_path / "out", "mnist-circle", *args)
    before = folder_bytes(tmp_path / "out")
    build(tmp_path / "out", "mnist-circle", *args)
    log = json.loads((tmp_path / "out" / "build-log.json").read_text())
    assert (log["shards_written"], log["shards_reused"]) == (0, 8)
    assert folder_bytes(tmp_path / "out") == before


def test_resume_after_sigkill_gives_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = [
        "mnist-grid",
        "--train",
        "8000",
        "--val",
        "500",
        "--test",
        "500",
        "--shard-size",
        "500",
        "--jobs",
        "1",
    ]
    left = kill_after_first_shard(["build", *args], out, hint="; raise --train")
    assert left and all(SHARD_FILE.fullmatch(name) for name in left), left  # no manifest, no partial name
    assert len(left) < 18, "killed too late to test resuming"
    for name in left:  # every visible shard is complete
        assert len(read_shard(out / name)) == 500
    hidden = {p.name for p in out.iterdir()} - set(left)
    assert all(
        n in (".segshards-build.json", ".segshards-build.lock")
        or n.startswith(".segshards-work")
        or ".tmp-" in n
        for n in hidden
    ), hidden

    build(out, *args)
    log = json.loads((out / "build-log.json").read_text())
    assert (log["shards_reused"], log["shards_written"]) == (len(left), 18 - len(left))
    assert {p.name for p in out.iterdir() if p.name.startswith(".")} == set()

    fresh = tmp_path / "fresh"
    build(fresh, *args)
    assert folder_bytes(out) == folder_bytes(fresh)
