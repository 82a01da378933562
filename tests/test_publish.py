"""`segshards publish`: the set lands complete, manifest last; reruns skip what is in place; outages resume."""

import json
import shutil
from pathlib import Path

import pytest

from segshards.writer.cli.main import main
from segshards.writer.share.card import render_card
from segshards.writer.storage.store import S3Store
from tests.mnist_fixtures import SMALL, build_once, error_lines, unlocated
from tests.moto_fixture import S3, no_secret_in, s3_fixture  # noqa: F401  (fixtures)

SET_FILES = [
    "README.md",
    "manifest.json",
    "test-000000.tar",
    "test.wids.json",
    "train-000000.tar",
    "train-000001.tar",
    "train-000002.tar",
    "train.wids.json",
    "val-000000.tar",
    "val.wids.json",
]


@pytest.fixture
def small_set(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    return folder


@pytest.fixture
def private_set(small_set: Path, tmp_path: Path) -> Path:
    """A copy of the small set, free to damage."""
    return Path(shutil.copytree(small_set, tmp_path / "set"))


def local_files(folder: Path) -> dict[str, bytes]:
    """The set's files, its card without its location (publish renders the card for the destination)."""
    return {name: unlocated(name, (folder / name).read_bytes(), folder) for name in SET_FILES}


def published(s3: S3, prefix: str, folder: Path) -> dict[str, bytes]:
    """The objects under `prefix`, having checked that the card is the one rendered for the prefix; with
    the local card in its place, for comparing with `local_files(folder)`."""
    objects = s3.objects(prefix)
    if "README.md" in objects:
        data = (folder / "manifest.json").read_bytes()
        card = render_card(json.loads(data), data, location=s3.url(prefix))
        assert objects["README.md"] == card.encode()
        objects["README.md"] = unlocated("README.md", (folder / "README.md").read_bytes(), folder)
    return objects


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert no_secret_in(captured.out, captured.err)
    return code, captured.out, error_lines(captured.err)


def test_publish_uploads_the_set_manifest_last(
    s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    upload, write = S3Store.upload, S3Store.write
    monkeypatch.setattr(
        S3Store, "upload", lambda self, name, *a: (order.append(name), upload(self, name, *a))[1]
    )
    monkeypatch.setattr(
        S3Store, "write", lambda self, name, data: (order.append(name), write(self, name, data))[1]
    )
    code, out, errors = run(capsys, "publish", str(small_set), s3.url("sets/grid"))
    assert (code, errors) == (0, [])
    total = sum(len(b) for b in s3.objects("sets/grid").values()) / 1e6
    assert out.startswith(f"{s3.url('sets/grid')}: uploaded 10 objects ({total:,.1f} MB, ")
    assert out.endswith(" MB/s), 0 already in place; manifest last\n")
    assert order[-1] == "manifest.json" and sorted(order) == SET_FILES
    assert published(s3, "sets/grid", small_set) == local_files(small_set)  # the build log stays local
    card = s3.objects("sets/grid")["README.md"].decode()
    assert str(small_set) not in card and f'make_loader("{s3.url("sets/grid")}"' in card
    manifest = json.loads((small_set / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            assert s3.metadata("sets/grid", entry["name"]) == {"sha256": entry["sha256"]}
    code, out, _ = run(capsys, "verify", s3.url("sets/grid"))
    assert (code, out) == (0, f"{s3.url('sets/grid')}: ok, 5 shards, 420 samples, keys unique\n")


def test_publish_again_skips_everything(s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "publish", str(small_set), s3.url("grid"))[0] == 0
    code, out, _ = run(capsys, "publish", str(small_set), s3.url("grid"))
    assert code == 0
    assert (
        out
        == f"{s3.url('grid')}: uploaded 0 objects (0.0 MB, 0.0 MB/s), 10 already in place; manifest last\n"
    )


def test_server_stopped_mid_publish_then_restarted_completes(
    s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The endpoint goes down in the middle of a shard's upload (its connection reset mid-body, the port
    closed); the error is one clear line, nothing incomplete and no manifest is visible; once the
    endpoint is back the same command completes the set, reusing the objects that were finished."""
    shard = (small_set / "train-000000.tar").stat().st_size
    s3.relay.cut_after(shard + shard // 2)  # uploads go in manifest order with --jobs 1
    code, out, errors = run(capsys, "publish", str(small_set), s3.url("grid"), "--jobs", "1")
    assert (code, out, s3.relay.cuts) == (1, "", 1)
    assert len(errors) == 1
    assert errors[0].startswith(f"segshards: error: {s3.url('grid')}/train-000001.tar: cannot upload (")
    assert errors[0].endswith(
        "; run the same command again to resume (finished objects are kept, the manifest goes last)"
    )
    partial = s3.objects("grid")
    assert "manifest.json" not in partial
    assert set(partial) == {"train-000000.tar"}  # finished before the outage; train-000001 never appeared
    assert all(data == (small_set / name).read_bytes() for name, data in partial.items())

    s3.relay.start()
    code, out, errors = run(capsys, "publish", str(small_set), s3.url("grid"), "--jobs", "1")
    assert (code, errors) == (0, [])
    assert "uploaded 9 objects" in out and ", 1 already in place;" in out
    assert published(s3, "grid", small_set) == local_files(small_set)
    assert run(capsys, "verify", s3.url("grid"))[0] == 0


def test_stale_and_foreign_copies_of_set_files(
    s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = (small_set / "train-000001.tar").read_bytes()
    stale = bytes([shard[0] ^ 0xFF]) + shard[1:]  # same size, other bytes, no recorded sha256
    s3.client.put_object(Bucket=s3.bucket, Key="grid/train-000001.tar", Body=stale)
    # the right bytes uploaded by another tool (no sha256 metadata) are recognised by reading them
    s3.client.put_object(
        Bucket=s3.bucket, Key="grid/val-000000.tar", Body=(small_set / "val-000000.tar").read_bytes()
    )
    code, out, _ = run(capsys, "publish", str(small_set), s3.url("grid"))
    assert code == 0 and "uploaded 9 objects" in out and ", 1 already in place;" in out
    assert published(s3, "grid", small_set) == local_files(small_set)


def test_refuses_a_prefix_holding_another_set(
    s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="grid/manifest.json", Body=b'{"other": 1}')
    code, _, errors = run(capsys, "publish", str(small_set), s3.url("grid"))
    assert (code, errors) == (
        1,
        [
            f"segshards: error: {s3.url('grid')}: already holds a different set (manifest.json differs); "
            "publish to another prefix or delete it"
        ],
    )
    assert set(s3.objects("grid")) == {"manifest.json"}


def test_refuses_a_prefix_with_foreign_objects(
    s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="grid/notes.txt", Body=b"mine")
    code, _, errors = run(capsys, "publish", str(small_set), s3.url("grid"))
    assert code == 1
    assert errors == [
        f"segshards: error: {s3.url('grid')}: holds objects that are not part of this set (notes.txt ...); "
        "publish to an empty prefix"
    ]


def test_refuses_a_damaged_local_set(s3: S3, private_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = private_set / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, errors = run(capsys, "publish", str(private_set), s3.url("grid"))
    assert code == 1
    assert errors == [
        f"segshards: error: {shard}: sha256 differs from the manifest; run segshards verify {private_set}"
    ]
    assert "manifest.json" not in s3.objects("grid") and "train-000002.tar" not in s3.objects("grid")
    shard.unlink()
    code, _, errors = run(capsys, "publish", str(private_set), s3.url("grid"))
    assert errors == [f"segshards: error: {shard}: listed in the manifest but not a regular file"]


def test_refuses_unfinished_builds_and_missing_buckets(
    s3: S3, private_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, errors = run(capsys, "publish", str(tmp_path), s3.url("grid"))
    assert errors == [
        f"segshards: error: {tmp_path / 'manifest.json'}: no manifest (not a finished segshards set)"
    ]
    (private_set / ".segshards-build.json").write_text("{}")
    code, _, errors = run(capsys, "publish", str(private_set), s3.url("grid"))
    assert errors == [
        f"segshards: error: {private_set}: a build is in progress there; run it to the end before publishing"
    ]
    (private_set / ".segshards-build.json").unlink()
    code, _, errors = run(capsys, "publish", str(private_set), "s3://no-such-bucket-here/grid")
    # no "run the same command again to resume": it cannot help
    assert (code, errors) == (
        1,
        [
            "segshards: error: s3://no-such-bucket-here: no such bucket (or not visible with these credentials)"
        ],
    )


def test_publish_to_a_local_folder(
    small_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "publish", str(small_set), str(tmp_path / "copy"))
    assert code == 0 and "uploaded 10 objects" in out
    assert local_files(tmp_path / "copy") == local_files(small_set)
    assert f'load_dataset("{tmp_path / "copy"}")' in (tmp_path / "copy" / "README.md").read_text()
    code, out, _ = run(capsys, "publish", str(small_set), str(tmp_path / "copy"))
    assert "uploaded 0 objects" in out and "10 already in place" in out


def test_verify_remote_set_finds_damage(s3: S3, small_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "publish", str(small_set), s3.url("grid"))[0] == 0
    data = bytearray((small_set / "val-000000.tar").read_bytes())
    data[3000] ^= 0xFF
    s3.client.put_object(Bucket=s3.bucket, Key="grid/val-000000.tar", Body=bytes(data))
    s3.client.put_object(Bucket=s3.bucket, Key="grid/train-000009.tar", Body=b"extra")
    code, out, errors = run(capsys, "verify", s3.url("grid"))
    assert (code, out) == (1, "")
    assert f"{s3.url('grid')}/val-000000.tar: sha256 differs from the manifest" in errors
    assert f"{s3.url('grid')}/train-000009.tar: shard not listed in the manifest" in errors
    assert errors[-1] == f"{s3.url('grid')}: {len(errors) - 1} problem(s)"
    code, _, errors = run(capsys, "verify", "s3://no-such-bucket-here/grid")
    assert code == 1 and errors[0].startswith("segshards: error: s3://no-such-bucket-here: no such bucket")
    code, _, errors = run(capsys, "verify", s3.url("nothing-here"))
    assert errors == [
        f"segshards: error: {s3.url('nothing-here')}/manifest.json: no manifest (not a finished segshards set)"
    ]


@pytest.mark.parametrize("refused", [False, True])
def test_publish_without_credentials_says_so_and_names_the_endpoint(
    s3: S3,
    small_set: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    refused: bool,
) -> None:
    if refused:  # moto takes any key: a refusal is what botocore raises for a 403 on the request
        from botocore.exceptions import ClientError

        def denied(self: S3Store, *args: object, **kwargs: object) -> None:
            error = {
                "Error": {"Code": "InvalidAccessKeyId", "Message": "The key you provided does not exist"}
            }
            with self._errors("reach the bucket", None):
                raise PermissionError(str(ClientError(error, "HeadBucket")))  # what s3fs turns a 403 into

        monkeypatch.setattr(S3Store, "check", denied)
    else:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)
    code, out, errors = run(capsys, "publish", str(small_set), s3.url("creds"))
    assert (code, out) == (1, "")
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith(f"segshards: error: {s3.url('creds')}: the S3 credentials were ")
    assert ("refused" if refused else "missing") in line
    assert f"endpoint {s3.endpoint}" in line and "AWS_ACCESS_KEY_ID" in line
    assert "again to resume" not in line
