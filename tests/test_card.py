"""segshards.writer.card: every build writes a deterministic README.md whose facts match the manifest and whose
loading snippets run as written."""

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from segshards.writer.card import PLACEHOLDER, render_card, shard_pattern
from segshards.writer.cli import main
from segshards.writer.recipe import UNKNOWN_LICENCE
from segshards.writer.recipes.coco import COCO_LICENCE
from segshards.writer.recipes.digits import MNIST_LICENCE
from segshards.writer.store import LocalStore

from tests.mnist_fixtures import SMALL, build_once, tiny_source


@pytest.fixture
def small_grid(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    return folder


def code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_card_states_the_manifest_facts(small_grid: Path) -> None:
    card = (small_grid / "README.md").read_text()
    data = (small_grid / "manifest.json").read_bytes()
    manifest = json.loads(data)
    assert card == render_card(manifest, data)  # a pure function of the manifest
    assert card.startswith("# mnist-grid: image segmentation shards\n\nmnist-grid: four digits of one split")
    assert "- seed: 0\n" in card
    assert '"shard_size": 100' in card and '"source": "bundled:data/mnist"' in card
    for row in ("| train | 300 | 3 |", "| val | 60 | 1 |", "| test | 60 | 1 |"):
        assert row in card
    assert MNIST_LICENCE.text in card and "CC BY-SA 3.0" in card and "Yann LeCun and Corinna Cortes" in card
    assert f"`manifest.json` sha256: `{hashlib.sha256(data).hexdigest()}`" in card
    for split in manifest["splits"].values():
        for e in split["shards"]:
            assert f"| {e['name']} | {e['count']:,} | {e['bytes']:,} | `{e['sha256']}` |" in card
    pixels = manifest["splits"]["train"]["class_histogram"]["pixels"]
    assert f"| 0 | {pixels['0']:,} |" in card and f"| 10 | {pixels['10']:,} |" in card
    assert "train-{000000..000002}.tar" in card


def test_card_is_written_before_the_manifest_and_the_same_for_any_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    write = LocalStore.write
    monkeypatch.setattr(
        LocalStore, "write", lambda self, name, data: (order.append(name), write(self, name, data))[1]
    )
    source = tiny_source(tmp_path / "src")
    args = [
        "mnist-grid",
        "--source",
        str(source),
        "--train",
        "40",
        "--val",
        "8",
        "--test",
        "8",
        "--shard-size",
        "16",
    ]
    assert main(["build", *args, "--out", str(tmp_path / "a"), "--jobs", "1"]) == 0
    assert main(["build", *args, "--out", str(tmp_path / "b"), "--jobs", "2"]) == 0
    capsys.readouterr()
    card = (tmp_path / "a" / "README.md").read_bytes()
    assert card == (tmp_path / "b" / "README.md").read_bytes()
    assert UNKNOWN_LICENCE.text in card.decode()  # a user-supplied source: licence unknown, said so
    written = [name for name in order if not name.startswith(".")]  # the build marker goes first
    assert written[:3] == ["README.md", "manifest.json", "build-log.json"]


def test_stock_webdataset_snippet_runs(small_grid: Path) -> None:
    stock = code_blocks((small_grid / "README.md").read_text())[1]
    assert len(stock.strip().splitlines()) == 3
    namespace: dict[str, Any] = {}
    exec(stock.replace(PLACEHOLDER, str(small_grid)), namespace)  # the snippet as a user pastes it
    image, mask, meta = namespace["image"], namespace["mask"], namespace["meta"]
    assert image.shape == mask.shape == (56, 56) and image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= set(range(11)) and len(meta["digits"]) == 4


def test_loader_snippet_runs(small_grid: Path) -> None:
    pytest.importorskip("segshards.loaders")
    ours = code_blocks((small_grid / "README.md").read_text())[0]
    assert len(ours.strip().splitlines()) == 3
    namespace: dict[str, Any] = {}
    exec(ours.replace(PLACEHOLDER, str(small_grid)), namespace)
    batch = namespace["batch"]
    assert tuple(batch["image"].shape) == (64, 1, 56, 56) and tuple(batch["mask"].shape) == (64, 56, 56)


def coco_manifest() -> dict[str, Any]:
    shard = {"name": "train-000000.tar", "count": 2, "bytes": 10240, "sha256": "0" * 64}
    return {
        "format": "segshards",
        "format_version": 1,
        "recipe": "coco-semantic",
        "seed": 3,
        "config": {"recipe": "coco-semantic", "seed": 3},
        "source": {
            "kind": "coco-instances",
            "files": [{"name": "instances.json", "bytes": 5, "sha256": "1" * 64}],
            "classes": [{"class": 1, "category_id": 18, "name": "dog"}],
            "licence": {"id": COCO_LICENCE.id, "text": COCO_LICENCE.text},
        },
        "sample": {"image": "jpg", "mask": "mask.png", "meta": "json"},
        "mask": {"dtype": "uint8", "num_classes": 2, "background": 0, "ignore_index": 255},
        "splits": {
            "train": {
                "count": 2,
                "shards": [shard],
                "class_histogram": {"pixels": {"0": 7, "1": 5}, "labels": {"1": 2}},
            }
        },
    }


def test_coco_card_licence_classes_and_colour_snippet() -> None:
    card = render_card(coco_manifest(), b"{}")
    assert COCO_LICENCE.text in card and "CC BY 4.0" in card and "Flickr" in card
    assert "255 = ignore" in card and "`KEY.jpg` (the image)" in card
    assert "| 1 | dog | 5 |" in card and "| 1 | dog | 2 |" in card
    assert 'wds.handle_extension("mask.png", wds.imagehandler("l8")), "rgb8")' in card
    assert 'to_tuple("jpg", "mask.png", "json")' in card
    assert "train-000000.tar" in card and "{" not in shard_pattern(["train-000000.tar"])


def test_shard_pattern() -> None:
    assert shard_pattern(["val-000000.tar", "val-000001.tar", "val-000002.tar"]) == "val-{000000..000002}.tar"
    assert shard_pattern(["test-000007.tar"]) == "test-000007.tar"
