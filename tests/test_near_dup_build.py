"""`segshards build --near-duplicates off|report|reject` (and `segshards.build(..., near_duplicates=)`):
report changes no shard, its counts are what `segshards audit` finds; reject leaves near-duplicates out in
every split and still meets the counts, the same bytes for any --jobs; the manifest and the card say so."""

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import segshards
from bench.coco_bench import derive
from bench.derived_photos import KINDS, coco_tiny_images, jpeg, originals
from segshards.writer.build.near_dup_codes import NearIndex
from segshards.writer.cli.main import main
from segshards.writer.errors import ConfigError
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.share.near_duplicates import image_codes
from tests.coco_fixtures import write_coco
from tests.mnist_fixtures import error_lines
from tests.test_dask_backend import Cluster

PHOTOS = coco_tiny_images()
needs_photos = pytest.mark.skipif(PHOTOS is None, reason="coco-tiny photographs not found")
COUNTS = ["--train", "8", "--val", "3", "--test", "3", "--seed", "5", "--shard-size", "4"]


def files(folder: Path, *patterns: str) -> dict[str, str]:
    """sha256 by name of the files matching `patterns` (by default the shards, the indexes and the
    manifest: not the card, which names the folder, nor the run log)."""
    found = [
        p for pattern in patterns or ("*.tar", "*.wids.json", "manifest.json") for p in folder.glob(pattern)
    ]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(found)}


def build(out: Path, *args: str) -> dict[str, Any]:
    assert main(["build", *args, "--out", str(out)]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """coco-semantic arguments for 64 photographs: four re-encoded copies of each coco-tiny photograph,
    each with a 16x16 block changed (`bench/coco_bench.py`)."""
    if PHOTOS is None:
        pytest.skip("coco-tiny photographs not found")
    data = derive(PHOTOS.parent, tmp_path_factory.mktemp("copies") / "coco", 64)
    return ["coco-semantic", "--annotations", str(data / "instances.json"), "--images", str(data / "images")]


def audit_counts(out: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's per-split counts, as computed from `segshards audit --json`'s groups."""
    report = tmp_path / "audit.json"
    assert main(["audit", str(out), "--json", str(report)]) == 0
    splits = ("train", "val", "test")
    found: dict[str, dict[str, Any]] = {s: {"groups": 0, "images": 0, "leaks": {}} for s in splits}
    for group in json.loads(report.read_text())["groups"]:
        present = Counter(m["split"] for m in group["members"])
        for s, n in present.items():
            if n >= 2:
                found[s]["groups"] += 1
                found[s]["images"] += n
            for other in present:
                if other != s:
                    found[s]["leaks"][other] = found[s]["leaks"].get(other, 0) + n
    return found


def test_report_writes_the_same_shards_as_off(tmp_path: Path) -> None:
    source = write_coco(tmp_path / "src")
    args = ["coco-semantic", *source.args(), "--train", "3", "--val", "2", "--test", "2", "--jobs", "2"]
    off = build(tmp_path / "off", *args, "--near-duplicates", "off")
    report = build(tmp_path / "report", *args)  # the default for photographs
    assert files(tmp_path / "off", "*.tar") == files(tmp_path / "report", "*.tar")
    assert files(tmp_path / "off", "*.wids.json") == files(tmp_path / "report", "*.wids.json")
    assert off["near_duplicates"] == {"mode": "off"} and "near_duplicates" not in off["splits"]["train"]
    assert report["near_duplicates"] == {"mode": "report", "threshold": 14, "rejected": 0}
    assert off["config"] == report["config"]  # report and off choose the same: not a setting of the set
    for split in ("train", "val", "test"):
        assert set(report["splits"][split]["near_duplicates"]) == {"groups", "images", "leaks", "rejected"}


def test_report_counts_what_audit_finds_and_resume_counts_the_same(copies: list[str], tmp_path: Path) -> None:
    out = tmp_path / "set"
    manifest = build(out, *copies, *COUNTS, "--jobs", "2")
    counts = {s: dict(v["near_duplicates"]) for s, v in manifest["splits"].items()}
    assert all(c.pop("rejected") == 0 for c in counts.values())
    assert counts == audit_counts(out, tmp_path)
    assert sum(sum(c["leaks"].values()) for c in counts.values()) > 0  # copies land in several splits
    # Built again in place, the shards still there are read back (their codes recomputed from the stored
    # JPEGs) and the missing one rendered: the same manifest.
    first = (out / "manifest.json").read_bytes()
    (out / "val-000000.tar").unlink()
    assert build(out, *copies, *COUNTS, "--jobs", "1") == json.loads(first)
    assert (out / "manifest.json").read_bytes() == first
    assert json.loads((out / "build-log.json").read_text())["shards_reused"] == 3


def test_reject_leaves_copies_out_and_meets_the_counts(copies: list[str], tmp_path: Path) -> None:
    one = build(tmp_path / "j1", *copies, *COUNTS, "--jobs", "1", "--near-duplicates", "reject")
    two = build(tmp_path / "j2", *copies, *COUNTS, "--jobs", "2", "--near-duplicates", "reject")
    assert files(tmp_path / "j1") == files(tmp_path / "j2")
    assert one == two
    assert {s: v["count"] for s, v in one["splits"].items()} == {"train": 8, "val": 3, "test": 3}
    rejected = {s: v["near_duplicates"]["rejected"] for s, v in one["splits"].items()}
    assert sum(rejected.values()) == one["near_duplicates"]["rejected"] > 0
    assert one["config"]["near_duplicates"] == "reject"
    zero = {"groups": 0, "images": 0, "leaks": {}}
    assert audit_counts(tmp_path / "j1", tmp_path) == {s: zero for s in ("train", "val", "test")}
    card = (tmp_path / "j1" / "README.md").read_text()
    assert f"- near-duplicates: `reject`, {sum(rejected.values()):,} rejected" in card
    for split, n in rejected.items():
        assert f"| {split} | 0 | 0 | 0 | {n:,} |" in card


def test_reject_is_refused_on_a_set_built_without_it(copies: list[str], tmp_path: Path) -> None:
    build(tmp_path / "set", *copies, *COUNTS, "--jobs", "1")
    assert (
        main(["build", *copies, *COUNTS, "--out", str(tmp_path / "set"), "--near-duplicates", "reject"]) == 1
    )


def test_card_shows_the_counts_and_the_class_statistics(copies: list[str], tmp_path: Path) -> None:
    manifest = build(tmp_path / "set", *copies, *COUNTS, "--jobs", "2")
    card = (tmp_path / "set" / "README.md").read_text()
    assert "## Near-duplicates" in card and "`--near-duplicates report`: counted, none removed" in card
    for split, entry in manifest["splits"].items():
        near = entry["near_duplicates"]
        leaks = ", ".join(f"{n:,} ({o})" for o, n in sorted(near["leaks"].items())) or "0"
        assert f"| {split} | {near['groups']:,} | {near['images']:,} | {leaks} | 0 |" in card
    histogram = manifest["splits"]["train"]["class_histogram"]
    assert histogram["images"]["0"] == 8  # every mask holds background
    total = sum(histogram["pixels"].values())
    person = f"{100 * histogram['pixels']['1'] / total:.2f}%"
    held = histogram["images"]["1"]
    assert f"| 1 | person | {person} | {held} ({100 * held / 8:.2f}%) |" in card


def fn(item: tuple[str, bytes]) -> dict[str, Any]:
    """A sample of a JPEG stored as given, with a blank mask."""
    image = cv2.imdecode(np.frombuffer(item[1], np.uint8), cv2.IMREAD_COLOR)
    return {"image_bytes": item[1], "mask": np.zeros(image.shape[:2], np.uint8), "meta": {"name": item[0]}}


@needs_photos
def test_python_build_rejects_copies_of_train_photographs_in_val(tmp_path: Path) -> None:
    assert PHOTOS is not None
    photos = [
        (n, cv2.resize(i, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)) for n, i in originals(PHOTOS)
    ]
    train = [(n, jpeg(image, 95)) for n, image in photos[:4]]
    made = [
        (f"{n}-{k}{i}", make(image))
        for n, image in photos[:4]
        for k, ms in KINDS.items()
        for i, make in enumerate(ms)
    ]
    others = [(n, jpeg(image, 95)) for n, image in photos[4:]]
    inputs = {"train": train, "val": made + others}
    results = [
        segshards.build(
            fn, inputs, tmp_path / f"j{jobs}", classes=["bg"], jobs=jobs, near_duplicates="reject"
        )
        for jobs in (1, 2)
    ]
    assert files(tmp_path / "j1") == files(tmp_path / "j2")
    splits = results[0].manifest["splits"]
    rejected = splits["val"]["near_duplicates"]["rejected"]
    # The audit's recall on crops and labels is >= 0.97: a copy near only copies after it can stay.
    assert len(made) >= rejected >= 0.97 * len(made)
    assert results[0].counts == {"train": 4, "val": len(others) + len(made) - rejected, "test": 0}
    assert splits["val"]["near_duplicates"]["leaks"] == {}  # what stays is near nothing in train
    kept = {
        json.loads(sample["json"])["name"]
        for shard in sorted((tmp_path / "j1").glob("val-*.tar"))
        for sample in iter_samples(io.BytesIO(shard.read_bytes()), str(shard))
    }
    assert {n for n, _ in others} <= kept  # no distinct photograph is lost


def test_grey_sets_are_not_checked_by_default_and_report_changes_no_shard(tmp_path: Path) -> None:
    args = ["mnist-grid", "--train", "40", "--val", "10", "--test", "10", "--shard-size", "16", "--jobs", "1"]
    off = build(tmp_path / "off", *args)
    assert off["near_duplicates"] == {"mode": "off"}
    assert "Not checked (`--near-duplicates off`)." in (tmp_path / "off" / "README.md").read_text()
    report = build(tmp_path / "report", *args, "--near-duplicates", "report")
    assert report["near_duplicates"]["mode"] == "report"
    assert files(tmp_path / "off", "*.tar") == files(tmp_path / "report", "*.tar")


@pytest.mark.parametrize("recipe", ["mnist-grid", "coco-semantic", "mask-folder"])
def test_option_is_in_every_recipes_help(recipe: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["build", recipe, "--help"])
    assert exit_.value.code == 0
    assert "--near-duplicates {off,report,reject}" in capsys.readouterr().out


def test_a_bad_mode_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["build", "mnist-grid", "--out", str(tmp_path / "x"), "--near-duplicates", "some"])
    assert exit_.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert "argument --near-duplicates: invalid choice: 'some'" in lines[-1]
    with pytest.raises(ConfigError, match=r"^near_duplicates 'some': must be one of off, report, reject$"):
        segshards.build(fn, [], tmp_path / "y", classes=["bg"], near_duplicates="some")


@needs_photos
def test_accepted_codes_keep_the_first_of_each_group_in_order() -> None:
    assert PHOTOS is not None
    photos = [cv2.resize(i, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA) for _, i in originals(PHOTOS)]
    decoded = [cv2.imdecode(np.frombuffer(jpeg(p, 95), np.uint8), cv2.IMREAD_COLOR) for p in photos]
    copies = [
        cv2.imdecode(np.frombuffer(make(p), np.uint8), cv2.IMREAD_COLOR)
        for p in photos[:6]
        for makers in KINDS.values()
        for make in makers
    ]
    index = NearIndex()
    first = index.admit(np.stack([image_codes(i) for i in decoded[:6]]))
    assert first.all() and index.count == 6
    # The copies in batches of various sizes, the other originals among them: only those are admitted.
    queue = [*copies[:10], *decoded[6:9], *copies[10:], *decoded[9:]]
    kept = [
        index.admit(np.stack([image_codes(i) for i in queue[s : s + 7]])) for s in range(0, len(queue), 7)
    ]
    admitted = np.concatenate(kept)
    is_original = np.array(
        [i in (10, 11, 12) or i >= len(queue) - len(decoded[9:]) for i in range(len(queue))]
    )
    assert admitted[is_original].all()  # no distinct photograph is lost
    assert admitted[~is_original].sum() <= 0.03 * len(copies)  # the audit's recall on crops: >= 0.97
    assert index.count == 6 + len(queue)  # every image examined is indexed, those left out too
    # Two copies of a new photograph in one batch: the first wins.
    index = NearIndex()
    assert index.admit(np.stack([image_codes(copies[0]), image_codes(copies[1])])).tolist() == [True, False]


def test_reject_on_dask_gives_the_local_bytes(copies: list[str], tmp_path: Path) -> None:
    local = build(tmp_path / "local", *copies, *COUNTS, "--jobs", "1", "--near-duplicates", "reject")
    cluster = Cluster(2, tmp_path)
    try:
        args = ["--backend", "dask", "--scheduler", cluster.address, "--near-duplicates", "reject"]
        remote = build(tmp_path / "dask", *copies, *COUNTS, *args)
    finally:
        cluster.close()
    assert remote == local and local["near_duplicates"]["rejected"] > 0
    assert files(tmp_path / "dask") == files(tmp_path / "local")


def test_reject_that_cannot_fill_a_split_says_how_many_were_near_duplicates(
    copies: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = ["--train", "12", "--val", "3", "--test", "3"]  # coco-tiny holds 15 distinct photographs
    assert main(["build", *copies, *counts, "--out", str(tmp_path / "x"), "--near-duplicates", "reject"]) == 1
    line = error_lines(capsys.readouterr().err)[-1]
    assert "near-duplicates (--near-duplicates reject), only" in line and line.startswith(
        "segshards: error: --"
    )
    assert not (tmp_path / "x").exists()
