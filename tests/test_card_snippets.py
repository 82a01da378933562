"""Every loading snippet of every recipe's card runs as written, against the set's real folder, and reads the
counts the manifest records: segshards' loader, stock webdataset, Hugging Face `datasets`, Ray Data, wids."""

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.mnist_fixtures import SMALL, build_once

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = Path("/work/shared/data/coco-tiny")  # copied to a temp folder before use
CLIENTS = ["segshards", "webdataset", "datasets", "ray", "wids"]  # the order of the card's blocks
MNIST_RECIPES = ["mnist-foreground", "mnist-circle", "mnist-grid"]


def code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def coco_source(tmp: Path) -> Path:
    """coco-tiny from shared/, or the test fixture's synthetic COCO set where shared/ is absent."""
    if COCO_TINY.is_dir():
        return Path(shutil.copytree(COCO_TINY, tmp / "coco-src"))
    from tests.coco_fixtures import write_coco

    return write_coco(tmp / "coco-src")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small set per recipe (several shards in train, one in val and test)."""
    built = {recipe: build_once(tmp_path_factory, recipe, *SMALL) for recipe in MNIST_RECIPES}
    tmp = tmp_path_factory.mktemp("coco")
    source = coco_source(tmp)
    from segshards.writer.cli import main

    args = ["--train", "8", "--val", "3", "--test", "3", "--shard-size", "4", "--jobs", "1"]
    out = tmp / "set"
    assert main(["build", "coco-semantic", *source_args(source), "--out", str(out), *args]) == 0
    built["coco-semantic"] = out
    return built


def source_args(source: Path) -> list[str]:
    annotations = next(source.glob("*.json"))
    return ["--annotations", str(annotations), "--images", str(source / "images")]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One small local Ray instance for the module (Ray Data would start a full-size one by itself)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def run_snippet(folder: Path, client: str) -> dict[str, Any]:
    """Execute the card's block for `client` as a user pastes it; returns its variables."""
    blocks = code_blocks((folder / "README.md").read_text())
    assert len(blocks) == len(CLIENTS)
    block = blocks[CLIENTS.index(client)]
    assert str(folder.resolve()) in block  # the set's real location, no placeholder
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    return namespace


def check_pair(image: Any, mask: Any, manifest: dict[str, Any]) -> None:
    """A decoded image and its mask: uint8, the mask one channel of known class values."""
    image, mask = np.asarray(image), np.asarray(mask)
    schema = manifest["schema"]
    channels = schema["image"]["channels"]
    assert image.dtype == mask.dtype == np.uint8
    assert mask.ndim == 2 and image.shape[:2] == mask.shape
    assert image.ndim == (2 if channels == 1 else 3)
    allowed = set(range(len(schema["mask"]["classes"]))) | {schema["mask"]["ignore"]}
    assert set(np.unique(mask).tolist()) <= allowed


def first_split(manifest: dict[str, Any]) -> str:
    return next(s for s in ("train", "val", "test") if manifest["splits"][s]["shards"])


@pytest.fixture(params=[*MNIST_RECIPES, "coco-semantic"])
def set_folder(request: pytest.FixtureRequest, sets: dict[str, Path]) -> Path:
    return sets[request.param]


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def test_segshards_loader_snippet(set_folder: Path) -> None:
    pytest.importorskip("segshards.loaders")
    manifest = manifest_of(set_folder)
    ns = run_snippet(set_folder, "segshards")
    batch = ns["batch"]
    assert batch["image"].ndim == 4 and batch["mask"].ndim == 3
    check_pair(batch["image"][0].permute(1, 2, 0).squeeze(-1).numpy(), batch["mask"][0].numpy(), manifest)
    rest = sum(len(b["key"]) for b in ns["loader"])  # the epoch goes on after the snippet's first batch
    total = len(batch["key"]) + rest
    assert total == manifest["splits"][first_split(manifest)]["count"]


def test_webdataset_snippet(set_folder: Path) -> None:
    manifest = manifest_of(set_folder)
    ns = run_snippet(set_folder, "webdataset")
    check_pair(ns["image"], ns["mask"], manifest)
    assert isinstance(ns["meta"], dict)
    samples = list(ns["dataset"])
    assert len(samples) == manifest["splits"][first_split(manifest)]["count"]
    assert all(np.asarray(s["mask.png"]).ndim == 2 for s in samples)


def test_datasets_snippet(set_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    manifest = manifest_of(set_folder)
    ns = run_snippet(set_folder, "datasets")
    check_pair(ns["image"], ns["mask"], manifest)
    counts = {name: split.num_rows for name, split in ns["ds"].items()}
    expected = {
        {"val": "validation"}.get(s, s): info["count"]
        for s, info in manifest["splits"].items()
        if info["shards"]
    }
    assert counts == expected


def test_ray_snippet(set_folder: Path, ray_session: None) -> None:
    manifest = manifest_of(set_folder)
    ns = run_snippet(set_folder, "ray")
    check_pair(ns["image"], ns["mask"], manifest)
    assert ns["ds"].count() == manifest["splits"][first_split(manifest)]["count"]


def test_wids_snippet(set_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wids")
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids-cache"))
    manifest = manifest_of(set_folder)
    ns = run_snippet(set_folder, "wids")
    check_pair(ns["image"], ns["mask"], manifest)
    dataset = ns["dataset"]
    assert len(dataset) == manifest["splits"][first_split(manifest)]["count"]
    keys = {dataset[i]["__key__"] for i in range(len(dataset))}
    assert len(keys) == len(dataset)  # every index reaches its own sample
