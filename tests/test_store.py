"""segshards.writer.storage.store: local and s3:// locations, atomic writes with recorded sha256, clear errors, no secrets."""

import hashlib
import json
import logging
import pickle
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import segshards.loaders.errors as loader_errors
import segshards.loaders.storage as loader_storage
from segshards.writer.build.job import claim_output
from segshards.writer.errors import ConfigError, OutputError, StorageError
from segshards.writer.format.manifest import MARKER
from segshards.writer.storage.lock import LOCK
from segshards.writer.storage.retry import (
    ATTEMPTS_VARIABLE,
    RetryPolicy,
    classify,
    retried,
    with_retries,
)
from segshards.writer.storage.s3 import s3_filesystem
from segshards.writer.storage.store import LocalStore, ObjectInfo, S3Store, is_remote, open_store, safe_reason
from tests.moto_fixture import S3, SECRET, no_secret_in, s3_fixture  # noqa: F401  (fixtures)


def test_open_store_picks_by_location(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert is_remote("s3://bucket/prefix") and not is_remote(str(tmp_path)) and not is_remote(tmp_path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "only local folders and s3://bucket/prefix URLs are supported"),
        ("http://host/x", "only local folders and s3://bucket/prefix URLs are supported"),
        ("s3://", "is not a valid S3 bucket name"),
        ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid S3 bucket name"),
        ("s3://bucket/a/../b", "may not contain empty, '.' or '..' parts"),
        ("s3://bucket/a//b", "may not contain empty, '.' or '..' parts"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        open_store(url)


def test_s3_url_is_normalised(s3: S3) -> None:
    store = open_store(f"s3://{s3.bucket}/set/")
    assert isinstance(store, S3Store)
    assert (store.url, store.key("a.tar")) == (f"s3://{s3.bucket}/set", "set/a.tar")
    bare = open_store(f"s3://{s3.bucket}")
    assert isinstance(bare, S3Store) and bare.key("a.tar") == "a.tar"


def test_s3_round_trip_records_sha256(s3: S3, tmp_path: Path) -> None:
    store = open_store(s3.url("set"))
    store.write("a.tar", b"hello")
    local = tmp_path / "b.tar"
    local.write_bytes(b"x" * 70_000)
    sha_b = hashlib.sha256(local.read_bytes()).hexdigest()
    store.upload("b.tar", local, sha_b)
    store.write(".hidden.json", b"{}")
    s3.client.put_object(Bucket=s3.bucket, Key="set/deeper/c.tar", Body=b"c")  # not directly under the prefix
    assert store.read("a.tar") == b"hello"
    assert store.head("a.tar") == ObjectInfo(5, hashlib.sha256(b"hello").hexdigest())
    assert store.head("b.tar") == ObjectInfo(70_000, sha_b)
    assert s3.metadata("set", "b.tar") == {"sha256": sha_b}
    assert store.head("missing.tar") is None
    assert store.names() == [".hidden.json", "a.tar", "b.tar"]
    store.delete("a.tar")
    store.delete("a.tar")  # deleting a missing object is not an error
    assert store.names() == [".hidden.json", "b.tar"]
    assert open_store(s3.url("empty")).names() == []


def test_s3_missing_object_and_bucket(s3: S3) -> None:
    store = open_store(s3.url("set"))
    with pytest.raises(StorageError, match=rf"^s3://{s3.bucket}/set/nothing\.tar: no such object$"):
        store.read("nothing.tar")
    missing = open_store("s3://no-such-bucket-here/set")
    assert isinstance(missing, S3Store)
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-here: no such bucket"):
        missing.check()


def test_s3_unreachable_endpoint_names_url_not_secret(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.relay.stop()
    store = open_store(s3.url("set"))
    with pytest.raises(StorageError) as info:
        store.write("a.tar", b"data")
    message = str(info.value)
    assert message.startswith(f"s3://{s3.bucket}/set/a.tar: cannot upload (")
    assert "Could not connect" in message and SECRET not in message


def test_s3_bad_credentials_are_reported_without_the_secret(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any key, so bad credentials are simulated by the absence of any
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    with pytest.raises(StorageError, match=r"cannot upload \(Unable to locate credentials\)"):
        open_store(s3.url("set")).write("a.tar", b"data")


def test_safe_reason_drops_userinfo() -> None:
    exc = OSError("Could not connect to http://user:pa55word@host:9000/bucket")
    assert safe_reason(exc) == "Could not connect to http://host:9000/bucket"


def test_local_store(tmp_path: Path) -> None:
    store = open_store(tmp_path / "out")
    assert store.names() == [] and store.head("a.tar") is None
    (tmp_path / "out").mkdir()
    store.write("a.tar", b"abc")
    source = tmp_path / "src.tar"
    source.write_bytes(b"defg")
    store.upload("b.tar", source, hashlib.sha256(b"defg").hexdigest())
    assert store.read("b.tar") == b"defg"
    assert store.head("a.tar") == ObjectInfo(3, None)
    assert store.names() == ["a.tar", "b.tar"]  # no temp files left behind
    store.delete("a.tar")
    assert store.names() == ["b.tar"]
    with pytest.raises(StorageError, match=r"missing\.tar: cannot read"):
        store.read("missing.tar")


# ---- one client, one retry policy, one claim for both kinds ---------------------------------------------


FAST = RetryPolicy(attempts=8, base_delay=0.1, max_delay=0.2, total_s=30.0)


def test_writer_and_loaders_share_the_s3_client_and_the_retry_policy(s3: S3) -> None:
    store = open_store(s3.url("set"))
    assert isinstance(store, S3Store)
    assert (
        store.fs is s3_filesystem() is loader_storage.s3_filesystem()
    )  # one client per process and settings
    assert store.fs.retries == 1  # s3fs's own loop is off: `with_retries` is the only one
    assert loader_storage.RetryPolicy is RetryPolicy and loader_storage.classify is classify
    assert loader_storage.retried is retried  # the loaders' URL reads and the store: one helper
    assert StorageError is loader_errors.StorageError  # one error class for the writer and the loaders


def test_default_policy_is_bounded_and_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ATTEMPTS_VARIABLE, raising=False)
    policy = RetryPolicy()
    assert (policy.attempts, policy.total_s) == (6, 60.0)
    assert sum(policy.max_delay if i > 4 else 0.5 * 2**i for i in range(policy.attempts - 1)) == 15.5
    assert all(policy.delay(i) <= 1.25 * policy.max_delay for i in range(20))
    monkeypatch.setenv(ATTEMPTS_VARIABLE, "3")
    assert RetryPolicy().attempts == 3
    monkeypatch.setenv(ATTEMPTS_VARIABLE, "0")
    with pytest.raises(ValueError, match=f"{ATTEMPTS_VARIABLE}='0': must be a positive integer"):
        RetryPolicy()


def flaky(failures: list[BaseException]) -> tuple[list[int], Callable[[], str]]:
    """An action raising each of `failures` in turn, then returning "done"; and its call counter."""
    calls = [0]

    def action() -> str:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return "done"

    return calls, action


def test_retries_transient_failures_with_one_log_line_each(caplog: pytest.LogCaptureFixture) -> None:
    calls, action = flaky([ConnectionResetError("reset by peer"), TimeoutError("timed out")])
    with caplog.at_level(logging.WARNING, logger="segshards.storage"):
        assert with_retries(action, "s3://b/x.tar", FAST) == "done"
    assert calls == [3]
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
        "s3://b/x.tar: reset by peer; retry 1 of 7",
        "s3://b/x.tar: timed out; retry 2 of 7",
    ]


def test_missing_and_denied_are_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    for failure in (FileNotFoundError("gone"), PermissionError("no")):
        calls, action = flaky([failure])
        with pytest.raises(type(failure)):
            with_retries(action, "s3://b/x.tar", FAST)
        assert calls == [1]
    assert caplog.records == []


def test_retries_stop_at_the_time_budget(caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.05, total_s=0.5)
    calls, action = flaky([ConnectionRefusedError("refused")] * 1000)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        with_retries(action, "s3://b/x.tar", policy)
    assert time.monotonic() - started < 0.5 + 0.1
    assert 5 <= calls[0] < 20 and len(caplog.records) == calls[0] - 1


def test_retried_turns_each_kind_of_failure_into_one_storage_error(caplog: pytest.LogCaptureFixture) -> None:
    calls, action = flaky([ConnectionResetError("reset")])
    with caplog.at_level(logging.WARNING, logger="segshards.storage"):
        assert retried(action, "s3://b/x.tar", FAST) == "done"
    assert calls == [2] and len(caplog.records) == 1
    _, failing = flaky([ConnectionResetError("reset")] * 3)
    short = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01)
    with pytest.raises(StorageError, match=r"^s3://b/x\.tar: still failing after 2 attempts"):
        retried(failing, "s3://b/x.tar", short)
    for failure, message, missing in [
        (FileNotFoundError("gone"), r"not found \(FileNotFoundError: gone\)$", True),
        (PermissionError("no"), r"access denied; check the credentials and permissions", False),
        (IsADirectoryError("dir"), r"not found", True),
    ]:
        _, action = flaky([failure])
        with pytest.raises(StorageError, match=r"^s3://b/x\.tar: " + message) as info:
            retried(action, "s3://b/x.tar", FAST)
        assert info.value.missing is missing
        assert pickle.loads(pickle.dumps(info.value)).missing is missing  # crosses from a DataLoader worker
    _, action = flaky([KeyError("not storage")])
    with pytest.raises(KeyError):
        retried(action, "s3://b/x.tar", FAST)


def test_s3_store_rides_out_an_outage(
    s3: S3, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint is down when the upload starts and back 0.5 s later: the writer's store retries."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore gives up at once: the retry seen is ours
    store = open_store(s3.url("set"), retry=FAST)
    assert store.names() == []  # the client is made and connected before the outage
    s3.relay.stop()
    threading.Timer(0.5, s3.relay.start).start()
    with caplog.at_level(logging.WARNING, logger="segshards.storage"):
        store.write("a.tar", b"hello")
    assert s3.objects("set") == {"a.tar": b"hello"}
    assert caplog.records and all(
        r.getMessage().startswith(f"{s3.url('set')}/a.tar: ") for r in caplog.records
    )
    assert no_secret_in(*(r.getMessage() for r in caplog.records))


@pytest.fixture(params=["folder", "prefix"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty output location of each kind: a local folder, or a prefix in a fresh bucket."""
    if request.param == "folder":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3").url("out")


def test_a_build_stopped_before_its_first_shard_gives_way_to_other_settings(location: str) -> None:
    """Ctrl-C on seeing a wrong count leaves only the build marker: the corrected command takes the location
    over (it was refused, naming settings of a set that holds nothing)."""
    store = open_store(location)
    claim_output(store, {"recipe": "mnist-grid", "seed": 1})
    assert claim_output(store, {"recipe": "mnist-grid", "seed": 2}) == frozenset()
    assert json.loads(store.read(MARKER)) == {"config": {"recipe": "mnist-grid", "seed": 2}}


def test_claim_is_the_same_on_both_kinds(location: str) -> None:
    store = open_store(location)
    assert claim_output(store, {"recipe": "mnist-grid", "seed": 1}) == frozenset()
    assert set(store.names()) - {LOCK} == {MARKER}  # a folder also holds its build lock
    assert claim_output(store, {"recipe": "mnist-grid", "seed": 1}) == frozenset({MARKER})  # a resume
    store.write("train-000000.tar", b"a shard")
    with pytest.raises(OutputError) as info:
        claim_output(store, {"recipe": "mnist-grid", "seed": 2})
    assert str(info.value) == (
        f"--out {store.url}: holds a mnist-grid set built with other settings ({MARKER}: seed 1 there, 2 asked); "
        f"choose another {store.noun} or delete it"
    )
    store.delete("train-000000.tar")
    store.delete(MARKER)
    store.write("notes.txt", b"mine")
    with pytest.raises(OutputError, match=r"not empty and holds no segshards set \(notes\.txt \.\.\.\)$"):
        claim_output(store, {"recipe": "mnist-grid", "seed": 1})
    store.delete("notes.txt")
    store.write(MARKER, b"not json")
    with pytest.raises(OutputError, match=rf"^{re.escape(store.url)}/{MARKER}: unreadable, not a segshards"):
        claim_output(store, {"recipe": "mnist-grid", "seed": 1})
