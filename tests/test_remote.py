"""`segshards build --out s3://...`: the same bytes as a local build, uploaded by the workers, resumable."""

import json
from pathlib import Path

import pytest

import segshards.writer.build.job
from segshards.writer.build.remote import run_remote_task
from segshards.writer.build.shards import ShardResult, ShardTask
from segshards.writer.cli.main import main
from segshards.writer.errors import OutputError
from tests.mnist_fixtures import SMALL, build_once, comparable, error_lines, folder_bytes
from tests.moto_fixture import S3, no_secret_in, s3_fixture  # noqa: F401  (fixtures)


@pytest.fixture
def local_set(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = build_once(tmp_path_factory, "mnist-grid", *SMALL)
    capsys.readouterr()
    return folder


def remote_set(s3: S3, prefix: str) -> dict[str, bytes]:
    """The set's objects, its card checked for its URL and made comparable with a local set's."""
    return comparable({k: v for k, v in s3.objects(prefix).items() if k != "build-log.json"}, s3.url(prefix))


def test_build_to_s3_matches_local_build(s3: S3, local_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", "mnist-grid", "--out", s3.url("grid"), *SMALL, "--jobs", "2"])
    captured = capsys.readouterr()
    assert (code, error_lines(captured.err)) == (0, [])
    summary = (
        f"{s3.url('grid')}: train 300, val 60, test 60 samples; 0 duplicates rejected; 5 shards written\n"
    )
    assert captured.out == summary
    objects = s3.objects("grid")
    assert remote_set(s3, "grid") == folder_bytes(local_set)  # shards, card, manifest: identical bytes
    assert ".segshards-build.json" not in objects
    log = json.loads(objects["build-log.json"])
    assert (log["shards_written"], log["shards_reused"], log["samples"]) == (5, 0, 420)
    manifest = json.loads(objects["manifest.json"])
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            assert s3.metadata("grid", entry["name"]) == {"sha256": entry["sha256"]}
    assert no_secret_in(captured.out, captured.err, *objects.values())
    assert main(["verify", s3.url("grid")]) == 0


def test_interrupted_build_to_s3_resumes(
    s3: S3, local_set: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def failing(task: ShardTask, present: frozenset[str]) -> ShardResult:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OutputError("simulated crash")
        return run_remote_task(task, present)

    monkeypatch.setattr(segshards.writer.build.job, "run_remote_task", failing)
    assert main(["build", "mnist-grid", "--out", s3.url("grid"), *SMALL, "--jobs", "1"]) == 1
    assert error_lines(capsys.readouterr().err) == ["segshards: error: simulated crash"]
    partial = s3.objects("grid")
    assert sorted(partial) == [".segshards-build.json", "train-000000.tar", "train-000001.tar"]
    # a shard of the right name but foreign bytes is not trusted: rendered again
    s3.client.put_object(Bucket=s3.bucket, Key="grid/train-000001.tar", Body=b"not a shard")

    monkeypatch.setattr(segshards.writer.build.job, "run_remote_task", run_remote_task)
    assert main(["build", "mnist-grid", "--out", s3.url("grid"), *SMALL, "--jobs", "1"]) == 0
    capsys.readouterr()
    log = json.loads(s3.objects("grid")["build-log.json"])
    assert (log["shards_reused"], log["shards_written"]) == (1, 4)
    assert remote_set(s3, "grid") == folder_bytes(local_set)


def test_build_to_s3_refuses_other_content(s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="mine/notes.txt", Body=b"mine")
    assert main(["build", "mnist-grid", "--out", s3.url("mine"), *SMALL]) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"segshards: error: --out {s3.url('mine')}: not empty and holds no segshards set (notes.txt ...)"
    ]
    other = {"config": {"recipe": "mnist-circle"}}
    s3.client.put_object(Bucket=s3.bucket, Key="set/manifest.json", Body=json.dumps(other).encode())
    assert main(["build", "mnist-grid", "--out", s3.url("set"), *SMALL]) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"segshards: error: --out {s3.url('set')}: holds a mnist-circle set built with other settings "
        '(manifest.json: recipe "mnist-circle" there, "mnist-grid" asked); choose another prefix or delete it'
    ]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("gs://bucket/set", "gs://bucket/set: only local folders and s3://bucket/prefix URLs are supported"),
        ("s3://UPPER/set", "s3://UPPER/set: 'UPPER' is not a valid S3 bucket name"),
    ],
)
def test_build_refuses_unsupported_urls(out: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "mnist-grid", "--out", out, *SMALL]) == 1
    assert error_lines(capsys.readouterr().err) == [f"segshards: error: {message}"]
