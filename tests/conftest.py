"""Shared fixtures: a loopback S3 API server (moto), AWS settings pointing at it, and small shard sets."""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from segshards.loaders import worker_pool
from segshards.writer.cli.main import main as writer_main

MOTO_START_TIMEOUT_S = 30.0
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session", autouse=True)
def source_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The prepared-source cache of the whole run, in a temp folder: tests never touch the user's cache."""
    root = tmp_path_factory.mktemp("source-cache")
    previous = os.environ.get("SEGSHARDS_CACHE")
    os.environ["SEGSHARDS_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("SEGSHARDS_CACHE", None)
    else:
        os.environ["SEGSHARDS_CACHE"] = previous


@pytest.fixture(autouse=True)
def stop_loader_workers() -> Iterator[None]:
    """After each test, the persistent workers of its loaders are stopped, even of a loader the test's
    frame keeps alive in a cycle (an exception's traceback holds the frame): left to the garbage collector,
    torch's iterator joins its workers at a random moment of a later test, inside its deadline."""
    yield
    worker_pool._stop_live_pools()  # what the loaders do at interpreter exit, here at each test's end


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_moto_server(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `python -m moto.server` on a free loopback port; yields its endpoint URL; always stops it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **(extra_env or {})}
    # Its log (a line per request) goes to a file: an unread pipe fills after some thousand requests and
    # the server then blocks, every later request timing out.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        try:
            wait_for_moto(proc, endpoint, log)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_moto(proc: subprocess.Popen[bytes], endpoint: str, log: Any) -> None:
    """Wait until the server answers; RuntimeError with the end of its log if it exits or never does."""
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise RuntimeError(f"moto server exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server not answering on {endpoint}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on loopback, shared by the session (accepts any credentials)."""
    with run_moto_server() as endpoint:
        yield endpoint


def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, **overrides: str) -> None:
    """Point the standard AWS settings at `endpoint`, isolated from the user's own AWS config files."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name, value in {**S3_KEYS, **overrides}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_ENDPOINT_URL, keys and region set for this test (to the moto server); yields the endpoint."""
    aws_env(monkeypatch, s3_server)
    return s3_server


@pytest.fixture
def s3_client(s3_env: str) -> Any:
    """A boto3 S3 client for the moto server."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_env)


@pytest.fixture
def make_bucket(s3_client: Any) -> Callable[..., str]:
    """`make_bucket(name=None) -> "s3://name"`: create a bucket (a fresh unique name by default)."""

    def create(name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        s3_client.create_bucket(Bucket=name)
        return f"s3://{name}"

    return create


@pytest.fixture
def s3_upload(make_bucket: Callable[..., str], s3_client: Any) -> Callable[[Path, str], str]:
    """`s3_upload(folder, prefix) -> "s3://bucket/prefix"`: copy a folder's files into a fresh bucket."""

    def upload(folder: Path, prefix: str = "set") -> str:
        bucket_url = make_bucket()
        bucket = bucket_url.removeprefix("s3://")
        for path in sorted(folder.iterdir()):
            if path.is_file():
                s3_client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
        return f"{bucket_url}/{prefix}"

    return upload


def build_set(out: Path, recipe: str, *args: str) -> Path:
    """Build a small shard set with the writer's CLI (one process, no worker pool)."""
    code = writer_main(["build", recipe, "--out", str(out), "--jobs", "1", *args])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def grid_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist-grid: train 250 samples in 5 shards (60, 60, 60, 60, 10), val 30 in one shard."""
    out = tmp_path_factory.mktemp("sets") / "grid"
    return build_set(out, "mnist-grid", "--train", "250", "--val", "30", "--test", "0", "--shard-size", "60")


@pytest.fixture(scope="session")
def circle_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist-circle: train 40 samples in 2 shards, val 10, test 10."""
    out = tmp_path_factory.mktemp("sets") / "circle"
    return build_set(
        out, "mnist-circle", "--train", "40", "--val", "10", "--test", "10", "--shard-size", "20"
    )
