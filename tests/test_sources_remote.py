"""Sources on object storage: coco-semantic and mask-folder built from s3:// give the bytes of the same
files on disk; a missing object, refused credentials, an unreachable endpoint or an https folder that would
need listing: one line naming the URL."""

from pathlib import Path
from typing import Any

import pytest

from segshards.writer.cli.main import main
from segshards.writer.errors import ConfigError, StorageError
from segshards.writer.sources import locations
from tests.coco_fixtures import write_coco
from tests.http_server import serve_folder
from tests.mnist_fixtures import comparable, folder_bytes
from tests.test_mask_folder import cvat_tree, voc_tree

COCO_COUNTS = ["--train", "4", "--val", "2", "--test", "1", "--jobs", "2"]


def upload_tree(s3_client: Any, bucket_url: str, root: Path) -> str:
    """Every file under `root`, at the same relative paths under `bucket_url`/src; returns that URL."""
    bucket = bucket_url.removeprefix("s3://")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3_client.upload_file(str(path), bucket, f"src/{path.relative_to(root).as_posix()}")
    return f"{bucket_url}/src"


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """The error line of a failing command (and that it is the only line on stderr)."""
    capsys.readouterr()
    assert main(args) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_coco_from_s3_is_byte_identical_to_disk(
    tmp_path: Path, s3_env: str, make_bucket: Any, s3_client: Any
) -> None:
    write_coco(tmp_path / "src")
    url = upload_tree(s3_client, make_bucket(), tmp_path / "src")
    local = ["--annotations", str(tmp_path / "src/instances.json"), "--images", str(tmp_path / "src/images")]
    remote = ["--annotations", f"{url}/instances.json", "--images", f"{url}/images"]
    assert main(["build", "coco-semantic", *local, "--out", str(tmp_path / "a"), *COCO_COUNTS]) == 0
    assert main(["build", "coco-semantic", *remote, "--out", str(tmp_path / "b"), *COCO_COUNTS]) == 0
    a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    assert any(name.endswith(".tar") for name in a) and a == b


@pytest.mark.parametrize("layout", ["voc", "cvat"])
def test_mask_folder_from_s3_is_byte_identical_to_disk(
    tmp_path: Path, s3_env: str, make_bucket: Any, s3_client: Any, layout: str
) -> None:
    if layout == "voc":  # split lists; the two images without a mask are counted as on disk
        tree = voc_tree(tmp_path / "src")
        more = ["--split-lists", "ImageSets/Segmentation", "--on-error", "skip"]
    else:  # a classes file mapping RGB masks
        tree = cvat_tree(tmp_path / "src")
        more = ["--classes", "labelmap.txt", "--train", "6", "--val", "2", "--test", "2"]
    url = upload_tree(s3_client, make_bucket(), tree.root)

    def args(base: str, out: Path) -> list[str]:
        named = [locations.join(base, more[1])] if more[0] in ("--split-lists", "--classes") else []
        folders = [
            "--images",
            locations.join(base, "JPEGImages"),
            "--masks",
            locations.join(base, "SegmentationClass"),
        ]
        return [
            "build",
            "mask-folder",
            *folders,
            more[0],
            *named,
            *more[2:],
            "--jobs",
            "2",
            "--out",
            str(out),
        ]

    assert main(args(str(tree.root), tmp_path / "a")) == 0
    assert main(args(url, tmp_path / "b")) == 0
    a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    assert any(name.endswith(".tar") for name in a) and a == b


def test_https_files_named_by_the_source_are_read_as_on_disk(tmp_path: Path) -> None:
    """COCO's annotation file and images, a classes file and split lists need no listing: https works."""
    write_coco(tmp_path / "coco")
    voc = voc_tree(tmp_path / "voc")
    lists = "ImageSets/Segmentation"
    local = [
        "--annotations",
        str(tmp_path / "coco/instances.json"),
        "--images",
        str(tmp_path / "coco/images"),
    ]
    assert main(["build", "coco-semantic", *local, "--out", str(tmp_path / "a"), *COCO_COUNTS]) == 0
    folders = voc.args("--on-error", "skip", "--jobs", "2")
    assert (
        main(
            [
                "build",
                "mask-folder",
                *folders,
                "--split-lists",
                str(voc.root / lists),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    with serve_folder(tmp_path) as url:
        remote = ["--annotations", f"{url}/coco/instances.json", "--images", f"{url}/coco/images"]
        assert main(["build", "coco-semantic", *remote, "--out", str(tmp_path / "b"), *COCO_COUNTS]) == 0
        listed = ["--split-lists", f"{url}/voc/{lists}"]
        assert main(["build", "mask-folder", *folders, *listed, "--out", str(tmp_path / "d")]) == 0
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    assert folder_bytes(tmp_path / "c") == folder_bytes(tmp_path / "d")


def test_missing_object_names_the_url(
    tmp_path: Path, s3_env: str, make_bucket: Any, s3_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket.removeprefix("s3://"), Key="src/images/1.jpg", Body=b"x")
    url = f"{bucket}/src"
    args = ["build", "coco-semantic", "--annotations", f"{url}/instances.json", "--images", f"{url}/images"]
    line = one_line_error(capsys, [*args, "--out", str(tmp_path / "out")])
    assert line.startswith("segshards: error: ") and f"{url}/instances.json: not found" in line


def test_refused_credentials_and_unreachable_endpoint_name_the_url(
    tmp_path: Path, s3_env: str, make_bucket: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_coco(tmp_path / "src")
    url = upload_tree(s3_client, make_bucket(), tmp_path / "src")
    monkeypatch.setenv("SEGSHARDS_STORAGE_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto takes any key: refuse by having none
        monkeypatch.delenv(key)
    with pytest.raises(StorageError, match=rf"^{url}/instances\.json: access denied; .*credentials"):
        locations.read(f"{url}/instances.json")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(StorageError) as info:
        locations.read(f"{url}/images/000000000001.jpg")
    assert str(info.value).startswith(f"{url}/images/000000000001.jpg: ")
    assert "\n" not in str(info.value)


def test_https_folders_that_need_listing_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = voc_tree(tmp_path / "src", n=4)
    args = ["build", "mask-folder", "--images", "https://example.invalid/voc/JPEGImages"]
    line = one_line_error(capsys, [*args, "--masks", str(tree.masks), "--out", str(tmp_path / "out")])
    assert "--images https://example.invalid/voc/JPEGImages: an http(s) server cannot be listed" in line
    with pytest.raises(ConfigError, match="cannot be listed"):
        locations.is_folder("http://example.invalid/masks", "--masks")


def test_local_locations_keep_plain_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x.txt").write_bytes(b"abc")
    folder = locations.resolved(str(tmp_path / "a"))
    assert locations.join(folder, "x.txt") == str(tmp_path / "a/x.txt")
    assert locations.read(locations.join(folder, "x.txt")) == b"abc"
    assert locations.stat(locations.join(folder, "x.txt"))[0] == 3
    assert (
        locations.base_name("s3://bucket/some/images/")
        == "images"
        == locations.base_name(str(tmp_path / "images"))
    )
    assert locations.is_folder(folder, "--images") and not locations.is_file(folder)


def test_dask_workers_read_an_s3_source_themselves(
    tmp_path: Path, s3_env: str, make_bucket: Any, s3_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Source and set both on S3: no worker sees a local file of the source, and the bytes are a local build's."""
    pytest.importorskip("distributed")
    from tests.test_dask_backend import Cluster

    write_coco(tmp_path / "src")
    url = upload_tree(s3_client, make_bucket(), tmp_path / "src")
    out = make_bucket()
    remote = ["--annotations", f"{url}/instances.json", "--images", f"{url}/images", *COCO_COUNTS[:-2]]
    own = Cluster(2, tmp_path)  # started after s3_env exported the AWS settings: workers inherit them
    try:
        dask = ["--backend", "dask", "--scheduler", own.address, "--shard-size", "2"]
        assert main(["build", "coco-semantic", *remote, "--out", f"{out}/set", *dask]) == 0
    finally:
        own.close()
    local = ["--annotations", str(tmp_path / "src/instances.json"), "--images", str(tmp_path / "src/images")]
    assert (
        main(
            [
                "build",
                "coco-semantic",
                *local,
                *COCO_COUNTS[:-2],
                "--shard-size",
                "2",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    bucket = out.removeprefix("s3://")
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="set/")["Contents"]
    objects = {
        o["Key"].removeprefix("set/"): s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }
    built = comparable({k: v for k, v in objects.items() if k != "build-log.json"}, f"{out}/set")
    assert sum(k.endswith(".tar") for k in built) >= 3 and built == folder_bytes(tmp_path / "a")
