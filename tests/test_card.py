"""segshards.writer.share.card: every build writes a deterministic README.md whose facts match the manifest and whose
loading snippets run as written."""

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from segshards.writer.cli.main import main
from segshards.writer.recipes.coco import COCO_LICENCE
from segshards.writer.recipes.contract import UNKNOWN_LICENCE
from segshards.writer.recipes.digits import MNIST_LICENCE
from segshards.writer.share.card import render_card
from segshards.writer.share.snippets import content_key, shard_pattern, size_category
from segshards.writer.storage.store import LocalStore
from tests.mnist_fixtures import SMALL, build_once, tiny_source, unlocated


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
    assert card == render_card(manifest, data, location=small_grid)  # a pure function of manifest and place
    assert "\n---\n\n# mnist-grid: image segmentation shards\n\nmnist-grid: four digits of one split" in card
    assert "- seed: 0\n" in card
    assert '"shard_size": 100' in card and '"source": "bundled:data/mnist"' in card
    for row in (
        "| train | 300 | 3 | train.wids.json |",
        "| val | 60 | 1 | val.wids.json |",
        "| test | 60 | 1 |",
    ):
        assert row in card
    assert MNIST_LICENCE.text in card and "CC BY-SA 3.0" in card and "Yann LeCun and Corinna Cortes" in card
    assert f"`manifest.json` sha256: `{hashlib.sha256(data).hexdigest()}`" in card
    for split in manifest["splits"].values():
        for e in split["shards"]:
            assert f"| {e['name']} | {e['count']:,} | {e['bytes']:,} | `{e['sha256']}` |" in card
    train = manifest["splits"]["train"]["class_histogram"]
    pixels, total = train["pixels"], sum(train["pixels"].values())
    for value, name in (("0", "background"), ("10", "9")):
        held = train["images"][value]
        share = f"{100 * pixels[value] / total:.2f}%"
        assert f"| {value} | {name} | {share} | {held:,} ({100 * held / 300:.2f}%) |" in card
    assert train["images"]["0"] == 300  # every grid holds background
    assert (
        "| 0 | background | background |\n| 1 | 0 | class |" in card and "| 255 | ignore | not scored" in card
    )
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
    card = unlocated("README.md", (tmp_path / "a" / "README.md").read_bytes(), tmp_path / "a")
    assert card == unlocated("README.md", (tmp_path / "b" / "README.md").read_bytes(), tmp_path / "b")
    assert UNKNOWN_LICENCE.text in card.decode()  # a user-supplied source: licence unknown, said so
    written = [name for name in order if not name.startswith(".")]  # the build marker goes first
    indexes = ["train.wids.json", "val.wids.json", "test.wids.json"]
    assert written[:6] == [*indexes, "README.md", "manifest.json", "build-log.json"]


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
    card = render_card(coco_manifest(), b"{}", location="s3://bucket/sets/coco")
    assert COCO_LICENCE.text in card and "CC BY 4.0" in card and "Flickr" in card
    assert card.startswith('---\nlicense: "cc-by-4.0"\n')
    assert "255 = ignore" in card and "`KEY.jpg` (the image)" in card
    assert "| 0 | background | background |\n| 1 | dog | class |\n| 255 | ignore | not scored" in card
    # Pixel shares; images holding each class are unknown to a manifest without `images` (earlier sets).
    assert "| 0 | background | 58.33% | - |" in card and "| 1 | dog | 41.67% | - |" in card
    assert "| 1 | dog | 2 |" in card  # labels
    assert "## Near-duplicates" not in card  # nor does it record any
    assert '.decode(wds.imagehandler("l8", ["png"]), wds.imagehandler("rgb8"))' in card
    assert 'to_tuple("jpg", "mask.png", "json")' in card
    assert '"pipe:aws s3 cp s3://bucket/sets/coco/train-000000.tar -"' in card
    assert 'make_loader("s3://bucket/sets/coco", split="train"' in card
    assert 'data_files={"train": "s3://bucket/sets/coco/train-*.tar"}' in card
    assert 'wids.ShardListDataset("s3://bucket/sets/coco/train.wids.json"' in card
    assert "{" not in shard_pattern(["train-000000.tar"])


def test_card_front_matter_is_what_hugging_face_reads(small_grid: Path) -> None:
    hub = pytest.importorskip("huggingface_hub")
    data = hub.DatasetCard.load(small_grid / "README.md").data.to_dict()
    digest = hashlib.sha256((small_grid / "manifest.json").read_bytes()).hexdigest()
    assert data == {
        "license": "cc-by-sa-3.0",
        "pretty_name": "mnist-grid segmentation shards",
        "task_categories": ["image-segmentation"],
        "size_categories": ["n<1K"],
        "tags": ["webdataset", "segshards"],
        "configs": [
            {
                "config_name": f"manifest-{digest[:16]}",  # datasets names its cache for it
                "default": True,
                "data_files": [
                    {"split": "train", "path": "train-*.tar"},
                    {"split": "validation", "path": "val-*.tar"},
                    {"split": "test", "path": "test-*.tar"},
                ],
            }
        ],
    }


def test_card_of_a_set_with_an_empty_split_and_an_unknown_licence() -> None:
    manifest = coco_manifest()
    manifest["source"]["licence"] = {"id": "other", "text": UNKNOWN_LICENCE.text}
    manifest["splits"]["val"] = {"count": 0, "shards": [], "class_histogram": {}}
    card = render_card(manifest, b"{}", location="/data/sets/coco")
    front = card.split("\n---\n", 1)[0]
    assert 'license: "other"\nlicense_name: "unknown"' in front
    assert '"train-*.tar"' in front and "val-*" not in front  # no pattern that matches no file
    assert 'load_dataset("/data/sets/coco")' in card


@pytest.mark.parametrize(
    ("samples", "category"), [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (70_000, "10K<n<100K")]
)
def test_size_category(samples: int, category: str) -> None:
    assert size_category(samples) == category


def test_shard_pattern() -> None:
    assert shard_pattern(["val-000000.tar", "val-000001.tar", "val-000002.tar"]) == "val-{000000..000002}.tar"
    assert shard_pattern(["test-000007.tar"]) == "test-000007.tar"


def test_what_clients_cache_is_named_for_the_manifest_bytes() -> None:
    """Another manifest (another seed, counts, source) gives another config name and wids cache folder, in
    the local and the remote card alike; the same manifest gives the same card, wherever it is rendered."""
    manifest = coco_manifest()
    data = json.dumps(manifest, sort_keys=True).encode()
    other = json.dumps(manifest | {"seed": 4}, sort_keys=True).encode()
    assert content_key(data) == f"manifest-{hashlib.sha256(data).hexdigest()[:16]}" != content_key(other)
    for location in ("/data/sets/coco", "s3://bucket/sets/coco"):
        card = render_card(manifest, data, location=location)
        assert card == render_card(manifest, data, location=location)
        assert f'config_name: "{content_key(data)}"' in card
        assert f'"segshards-{content_key(data)}")' in card  # the wids cache folder
        assert content_key(other) in render_card(manifest, other, location=location)
    remote = render_card(manifest, data, location="s3://bucket/sets/coco")
    assert "download_config=DownloadConfig(use_etag=True)" in remote  # downloads checked against ETags
    assert "aws s3 cp --only-show-errors" in remote
