"""make_loader over the network: a loopback HTTP server (plain, and one that fails) and moto's S3 server."""

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from segshards.loaders import RetryPolicy, StorageError, make_loader
from segshards.loaders.storage import classify, open_url, read_url
from segshards.writer.cli.main import main
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.storage.retry import retried
from tests.conftest import aws_env, run_moto_server
from tests.test_loaders import batch_keys, flat, manifest_keys

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


class FolderHandler(SimpleHTTPRequestHandler):
    """Serves a folder; honours `Range: bytes=N-` unless told not to; first plays the server's `plan` of
    failures for a path ("503", "404", or "cut": promise the whole body, send a third, hang up)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        plan: dict[str, list[str]] = self.server.plan  # type: ignore[attr-defined]
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        action = plan[self.path].pop(0) if plan.get(self.path) else None
        path = Path(self.translate_path(self.path))
        if action == "503":
            self.send_error(503, "slow down")
            return
        if not path.is_file() or action == "404":
            self.send_error(404)
            return
        data = path.read_bytes()
        honour = self.server.honour_range and self.headers["Range"]  # type: ignore[attr-defined]
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if honour else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if action == "cut":  # promise everything, send a third, hang up
            self.wfile.write(data[start : start + len(data) // 3])
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def http_server(grid_set: Path) -> Iterator[Any]:
    """An HTTP server on loopback serving the grid set's folder; `server.url`, `server.plan`, `server.requests`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(FolderHandler, directory=str(grid_set)))
    server.plan, server.requests, server.honour_range = {}, [], True  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_set_with_two_workers(http_server: Any, grid_set: Path) -> None:
    loader = make_loader(http_server.url, "train", 16, num_workers=2)
    keys = flat(batch_keys(loader))
    assert len(keys) == 250 and set(keys) == set(manifest_keys(grid_set))


def test_http_transient_failures_are_retried_and_cut_reads_resume(http_server: Any, grid_set: Path) -> None:
    http_server.plan.update({"/manifest.json": ["503", "503"], "/train-000001.tar": ["503", "cut", "cut"]})
    loader = make_loader(http_server.url, "train", 16, shuffle=False, retry=FAST_RETRY)
    assert flat(batch_keys(loader)) == manifest_keys(grid_set)
    assert http_server.requests.count("/train-000001.tar") == 4  # 503, cut, cut resumed with Range, rest


def test_http_errors_name_the_url(http_server: Any) -> None:
    with pytest.raises(ShardFormatError, match=rf"^{http_server.url}/nothing/manifest.json: no manifest \("):
        make_loader(f"{http_server.url}/nothing", "train", 16, retry=FAST_RETRY)
    http_server.plan["/train-000003.tar"] = ["404"]
    with pytest.raises(StorageError, match=rf"^{http_server.url}/train-000003.tar: not found"):
        list(make_loader(http_server.url, "train", 16, num_workers=2, retry=FAST_RETRY))
    http_server.plan["/manifest.json"] = ["503"] * 4
    with pytest.raises(StorageError, match="manifest.json: still failing after 4 attempts"):
        make_loader(http_server.url, "train", 16, retry=FAST_RETRY)


def test_http_server_ignoring_range_is_caught_up(http_server: Any, grid_set: Path) -> None:
    http_server.honour_range = False
    http_server.plan["/train-000003.tar"] = ["cut"]
    loader = make_loader(http_server.url, "train", 16, shuffle=False, retry=FAST_RETRY)
    assert flat(batch_keys(loader)) == manifest_keys(grid_set)
    assert http_server.requests.count("/train-000003.tar") == 2


def test_failure_classification() -> None:
    import http.client
    import urllib.error

    def http_error(code: int) -> urllib.error.HTTPError:
        return urllib.error.HTTPError("u", code, "m", None, None)  # type: ignore[arg-type]

    assert classify(http.client.IncompleteRead(b"")) == "transient"
    assert [classify(http_error(c)) for c in (404, 403, 503, 400)] == [
        "missing",
        "denied",
        "transient",
        "other",
    ]
    assert classify(ConnectionResetError()) == "transient" and classify(TimeoutError()) == "transient"
    assert classify(FileNotFoundError()) == "missing" and classify(PermissionError()) == "denied"
    assert classify(ValueError()) is None


def test_s3_set_with_two_workers(s3_upload: Any, grid_set: Path) -> None:
    url = s3_upload(grid_set, "sets/grid")
    loader = make_loader(url, "train", 16, num_workers=2)
    keys = flat(batch_keys(loader))
    assert len(keys) == 250 and set(keys) == set(manifest_keys(grid_set))
    assert read_url(f"{url}/manifest.json") == (grid_set / "manifest.json").read_bytes()
    # stock webdataset pipelines read s3:// through the handler registered in gopen_schemes
    assert len(list(wds.WebDataset(f"{url}/val-000000.tar", shardshuffle=False))) == 30


def test_s3_missing_objects_name_the_url(s3_upload: Any, s3_client: Any, grid_set: Path) -> None:
    url = s3_upload(grid_set, "grid")
    s3_client.delete_object(Bucket=url.removeprefix("s3://").split("/")[0], Key="grid/train-000002.tar")
    with pytest.raises(StorageError, match=rf"^{url}/train-000002.tar: not found"):
        list(make_loader(url, "train", 16, num_workers=2, retry=FAST_RETRY))
    with pytest.raises(
        ShardFormatError, match=rf"^{url}/elsewhere/manifest.json: no manifest \(not a finished"
    ):
        make_loader(f"{url}/elsewhere", "train", 16, retry=FAST_RETRY)
    # a typo in the bucket is not an unfinished set: said as `verify` and `info` say it
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-here: no such bucket \(or not visible"):
        make_loader("s3://no-such-bucket-here/set", "train", 16, retry=FAST_RETRY)


def test_s3_corrupt_shard_is_skipped_or_named(s3_upload: Any, s3_client: Any, grid_set: Path) -> None:
    url = s3_upload(grid_set, "grid")
    bucket = url.removeprefix("s3://").split("/")[0]
    data = (grid_set / "train-000001.tar").read_bytes()
    s3_client.put_object(Bucket=bucket, Key="grid/train-000001.tar", Body=data[:5000])
    with pytest.raises(ShardFormatError, match=rf"^{url}/train-000001.tar: "):
        list(make_loader(url, "train", 16, num_workers=2))
    loader = make_loader(url, "train", 16, on_error="skip")
    with pytest.warns(match="skipped 1 shard"):
        assert len(flat(batch_keys(loader))) == 250 - 60 + 1  # one sample complete before the cut
    with open_url(f"{url}/train-000000.tar", FAST_RETRY) as stream:
        assert stream.read(4) == (grid_set / "train-000000.tar").read_bytes()[:4]


def test_s3_refused_credentials_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # INITIAL_NO_AUTH_ACTION_COUNT=0: moto checks every request's keys against its own IAM
    with run_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        aws_env(monkeypatch, endpoint, AWS_ACCESS_KEY_ID="AKIAUNKNOWNKEY000000")
        with pytest.raises(StorageError, match="^s3://bucket/set/manifest.json: access denied"):
            make_loader("s3://bucket/set", "train", 16, retry=FAST_RETRY)


def test_credentials_in_a_url_are_refused_and_never_printed(
    http_server: Any, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """urllib does not send `user:password@` (it took it for part of the host name and retried the failing
    lookup for a minute), and every log line and error printed it."""
    secret = http_server.url.replace("http://", "http://alice:s3cret@")
    for source in (secret, f"{secret}/train-{{000000..000004}}.tar"):
        with pytest.raises(ConfigError, match="credentials in the URL are not supported") as info:
            make_loader(source, "train", 16, retry=FAST_RETRY)
        assert "s3cret" not in str(info.value) and str(info.value).startswith(http_server.url)
    assert main(["verify", secret]) == 1
    assert "s3cret" not in capsys.readouterr().err + caplog.text
    assert http_server.requests == []


def test_retry_lines_and_errors_leave_credentials_out(caplog: pytest.LogCaptureFixture) -> None:
    def failing() -> None:
        raise ConnectionResetError("reset by peer")

    with pytest.raises(StorageError) as info:
        retried(failing, "https://alice:s3cret@example.org/set/train-000000.tar", FAST_RETRY)
    assert str(info.value).startswith(
        "https://example.org/set/train-000000.tar: still failing after 4 attempts"
    )
    assert "retry 1 of 3" in caplog.text and "s3cret" not in caplog.text + str(info.value)
    with pytest.raises(StorageError, match=r"still failing after 1 attempt \("):
        retried(failing, "https://example.org/x.tar", RetryPolicy(attempts=1))


def test_a_token_in_the_query_string_goes_with_every_request(http_server: Any, grid_set: Path) -> None:
    """A token-protected server (`?token=...`): the query stays at the end of the manifest's and each
    shard's URL, for a set's folder and for brace-expanded shard URLs alike (the latter was taken for a
    folder: `...tar?token=abc/manifest.json`)."""
    folder = make_loader(f"{http_server.url}/?token=abc", "train", 16, shuffle=False)
    assert flat(batch_keys(folder)) == manifest_keys(grid_set)
    pattern = f"{http_server.url}/train-{{000000..000004}}.tar?token=abc"
    assert flat(batch_keys(make_loader(pattern, "train", 16, shuffle=False))) == manifest_keys(grid_set)
    assert http_server.requests and all(r.endswith("?token=abc") for r in http_server.requests)
