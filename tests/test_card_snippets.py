"""Every loading snippet of every recipe's card runs as written, against the set's real folder, and reads the
counts the manifest records: segshards' loader, stock webdataset, Hugging Face `datasets`, Ray Data, wids."""

import importlib.util
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs

from tests.mnist_fixtures import SMALL, build_once, read_set, tiny_source
from tests.moto_fixture import S3, s3_fixture  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
# coco-tiny (14 COCO val2017 photographs) lives in shared/, beside the checkout (or beside main's, for a
# worktree); copied to a temp folder before use. Without it the synthetic COCO fixture stands in.
COCO_TINY = [ROOT.parent / "shared" / "data" / "coco-tiny", ROOT.parents[1] / "shared" / "data" / "coco-tiny"]
CLIENTS = ["segshards", "webdataset", "datasets", "ray", "wids"]  # the order of the card's blocks
HF_TO_OURS = {"validation": "val"}  # Hugging Face's split names, where they differ from ours
MNIST_RECIPES = ["mnist-foreground", "mnist-circle", "mnist-grid"]
CLIENT_MODULES_PRESENT = {
    name: importlib.util.find_spec(name) is not None for name in ("datasets", "ray", "wids")
}


def code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def coco_source(tmp: Path) -> tuple[Path, list[str]]:
    """A COCO source folder and counts for a small build: coco-tiny, else the synthetic fixture."""
    tiny = next((p for p in COCO_TINY if p.is_dir()), None)
    if tiny is not None:
        return Path(shutil.copytree(tiny, tmp / "coco-src")), ["--train", "8", "--val", "3", "--test", "3"]
    from tests.coco_fixtures import write_coco

    write_coco(tmp / "coco-src")
    return tmp / "coco-src", ["--train", "4", "--val", "2", "--test", "1"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small set per recipe (several shards in train, one in val and test)."""
    built = {recipe: build_once(tmp_path_factory, recipe, *SMALL) for recipe in MNIST_RECIPES}
    tmp = tmp_path_factory.mktemp("coco")
    source, counts = coco_source(tmp)
    from segshards.writer.cli.main import main

    args = [*counts, "--shard-size", "2", "--jobs", "1"]
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


@pytest.fixture
def ray_with_s3(s3: S3) -> Iterator[None]:
    """A local Ray instance started inside the S3 server's environment (its workers inherit it)."""
    ray = pytest.importorskip("ray")
    ray.shutdown()  # the module's instance, started without the S3 settings
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clients' caches (Hugging Face datasets, wids downloads) in the test's folder, not the home's."""
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids-cache"))
    if CLIENT_MODULES_PRESENT["datasets"]:
        import datasets.config as config

        monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "hf")
        monkeypatch.setattr(config, "DOWNLOADED_DATASETS_PATH", tmp_path / "hf" / "downloads")
        monkeypatch.setattr(config, "EXTRACTED_DATASETS_PATH", tmp_path / "hf" / "downloads" / "extracted")
        monkeypatch.setattr(config, "HF_MODULES_CACHE", tmp_path / "hf-modules")


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


def test_datasets_snippet(set_folder: Path) -> None:
    pytest.importorskip("datasets")
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


def test_wids_snippet(set_folder: Path) -> None:
    pytest.importorskip("wids")
    manifest = manifest_of(set_folder)
    ns = run_snippet(set_folder, "wids")
    check_pair(ns["image"], ns["mask"], manifest)
    dataset = ns["dataset"]
    assert len(dataset) == manifest["splits"][first_split(manifest)]["count"]
    keys = {dataset[i]["__key__"] for i in range(len(dataset))}
    assert len(keys) == len(dataset)  # every index reaches its own sample


# ---- a published set: the card reads from its s3:// URL -----------------------------------------------


@pytest.fixture
def published(
    s3: S3, sets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> tuple[str, dict[str, Any]]:
    """The small mnist-grid set published to the loopback S3 server; (its URL, its manifest)."""
    from segshards.writer.cli.main import main

    url = s3.url("shared/grid")
    assert main(["publish", str(sets["mnist-grid"]), url]) == 0
    capsys.readouterr()
    return url, manifest_of(sets["mnist-grid"])


def run_published(s3: S3, url: str, client: str) -> dict[str, Any]:
    """Execute the card's block for `client` of the set published at `url`; returns its variables."""
    # Each test's S3 server listens on a port of its own; s3fs would reuse an instance made for an earlier one.
    s3fs.S3FileSystem.clear_instance_cache()
    card = s3.objects(url.removeprefix(f"s3://{s3.bucket}/"))["README.md"].decode()
    block = code_blocks(card)[CLIENTS.index(client)]
    assert url in block
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    return namespace


@pytest.mark.parametrize("client", CLIENTS)
def test_published_card_snippets_read_from_s3(
    s3: S3, published: tuple[str, dict[str, Any]], client: str, request: pytest.FixtureRequest
) -> None:
    url, manifest = published
    if client in CLIENT_MODULES_PRESENT and not CLIENT_MODULES_PRESENT[client]:
        pytest.skip(f"{client} is not installed")
    if client == "ray":
        request.getfixturevalue("ray_with_s3")
    ns = run_published(s3, url, client)
    if client == "segshards":
        check_pair(ns["batch"]["image"][0, 0].numpy(), ns["batch"]["mask"][0].numpy(), manifest)
    else:
        check_pair(ns["image"], ns["mask"], manifest)
    assert samples_read(client, ns) == manifest["splits"]["train"]["count"]


def samples_read(client: str, ns: dict[str, Any]) -> int:
    """How many samples of the snippet's split the objects it made yield."""
    if client == "segshards":  # the epoch goes on after the snippet's first batch
        return len(ns["batch"]["key"]) + sum(len(b["key"]) for b in ns["loader"])
    if client == "webdataset":
        return sum(1 for _ in ns["dataset"])
    if client == "datasets":
        return int(ns["ds"]["train"].num_rows)
    if client == "ray":
        return int(ns["ds"].count())
    return len(ns["dataset"])


# ---- a set rebuilt in place: every snippet reads the set that is there now -----------------------------

# Two builds of one place: other counts, another seed (so other samples and other shard contents).
REBUILDS = [(("12", "4", "4"), "1"), (("7", "5", "3"), "2")]


def build_tiny(out: Path, source: Path, counts: tuple[str, str, str], seed: str) -> None:
    """Remove `out` and build a small mnist-grid set there."""
    from segshards.writer.cli.main import main

    shutil.rmtree(out, ignore_errors=True)
    train, val, test = counts
    args = [
        "--train",
        train,
        "--val",
        val,
        "--test",
        test,
        "--seed",
        seed,
        "--shard-size",
        "4",
        "--jobs",
        "1",
    ]
    assert main(["build", "mnist-grid", "--source", str(source), "--out", str(out), *args]) == 0


def split_keys(folder: Path) -> dict[str, list[str]]:
    """Every split's sample keys, read from the shards the manifest lists (without any client)."""
    return {split: sorted(s["__key__"] for s in samples) for split, samples in read_set(folder).items()}


def keys_read(client: str, ns: dict[str, Any]) -> dict[str, list[str]]:
    """The keys a snippet's objects yield, per split they cover (datasets: every split; others: train)."""
    if client == "segshards":  # the epoch goes on after the snippet's first batch
        keys = [*ns["batch"]["key"], *(k for b in ns["loader"] for k in b["key"])]
    elif client == "webdataset":
        keys = [s["__key__"] for s in ns["dataset"]]
    elif client == "datasets":
        return {HF_TO_OURS.get(name, name): sorted(split["__key__"]) for name, split in ns["ds"].items()}
    elif client == "ray":
        keys = [row["__key__"] for row in ns["ds"].take_all()]
    else:
        keys = [ns["dataset"][i]["__key__"] for i in range(len(ns["dataset"]))]
    return {"train": sorted(keys)}


def expected_keys(client: str, folder: Path) -> dict[str, list[str]]:
    """The keys the client's snippet must yield from the set in `folder`, checked against the manifest's counts."""
    truth, manifest = split_keys(folder), manifest_of(folder)
    assert {s: len(k) for s, k in truth.items()} == {s: i["count"] for s, i in manifest["splits"].items()}
    return {s: k for s, k in truth.items() if k} if client == "datasets" else {"train": truth["train"]}


def skip_missing(client: str, request: pytest.FixtureRequest, *, ray_fixture: str) -> None:
    if client in CLIENT_MODULES_PRESENT and not CLIENT_MODULES_PRESENT[client]:
        pytest.skip(f"{client} is not installed")
    if client == "ray":
        request.getfixturevalue(ray_fixture)


@pytest.mark.parametrize("client", CLIENTS)
def test_snippets_read_a_set_rebuilt_in_place(
    client: str, tmp_path: Path, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]
) -> None:
    skip_missing(client, request, ray_fixture="ray_session")
    source, out = tiny_source(tmp_path / "src"), tmp_path / "sets" / "set"
    seen = []
    for counts, seed in REBUILDS:
        build_tiny(out, source, counts, seed)
        expected = expected_keys(client, out)
        capfd.readouterr()
        ns = run_snippet(out, client)
        assert capfd.readouterr().out == ""  # the snippet prints nothing on stdout
        assert keys_read(client, ns) == expected, f"{client} after building {counts}"
        seen.append(expected["train"])
    assert seen[0] != seen[1]  # the rebuild really changed what the split holds


def test_datasets_snippet_tells_sets_with_the_same_folder_name_apart(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    source = tiny_source(tmp_path / "src")
    folders = [tmp_path / "a" / "set", tmp_path / "b" / "set"]  # one folder name, two places, two sets
    for folder, (counts, seed) in zip(folders, REBUILDS, strict=True):
        build_tiny(folder, source, counts, seed)
    for folder in [*folders, folders[0]]:
        assert keys_read("datasets", run_snippet(folder, "datasets")) == expected_keys("datasets", folder)


def empty_prefix(s3: S3, prefix: str) -> None:
    """Delete every object under `prefix/` (what a user does before publishing another set there)."""
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"{prefix}/")
    for page in pages:
        for item in page.get("Contents", []):
            s3.client.delete_object(Bucket=s3.bucket, Key=item["Key"])


@pytest.mark.parametrize("client", CLIENTS)
def test_published_snippets_read_a_set_replaced_in_place(
    s3: S3, client: str, tmp_path: Path, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]
) -> None:
    from segshards.writer.cli.main import main

    skip_missing(client, request, ray_fixture="ray_with_s3")
    source, url = tiny_source(tmp_path / "src"), s3.url("shared/grid")
    for i, (counts, seed) in enumerate(REBUILDS):
        folder = tmp_path / f"set{i}"
        build_tiny(folder, source, counts, seed)
        empty_prefix(s3, "shared/grid")
        assert main(["publish", str(folder), url]) == 0
        capfd.readouterr()
        ns = run_published(s3, url, client)
        assert capfd.readouterr().out == ""  # the snippet prints nothing on stdout
        assert keys_read(client, ns) == expected_keys(client, folder), f"{client}, set {i}"
