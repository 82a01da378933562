"""segshards.writer.store: local and s3:// locations, atomic writes with recorded sha256, clear errors, no secrets."""

import hashlib
from pathlib import Path

import pytest
from segshards.writer.errors import ConfigError, StoreError
from segshards.writer.store import LocalStore, ObjectInfo, S3Store, is_remote, open_store, safe_reason

from tests.moto_fixture import S3, SECRET, s3_fixture  # noqa: F401  (fixtures)


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
    with pytest.raises(StoreError, match=rf"^s3://{s3.bucket}/set/nothing\.tar: no such object$"):
        store.read("nothing.tar")
    missing = open_store("s3://no-such-bucket-here/set")
    assert isinstance(missing, S3Store)
    with pytest.raises(StoreError, match=r"^s3://no-such-bucket-here: no such bucket"):
        missing.check_bucket()


def test_s3_unreachable_endpoint_names_url_not_secret(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.relay.stop()
    store = open_store(s3.url("set"))
    with pytest.raises(StoreError) as info:
        store.write("a.tar", b"data")
    message = str(info.value)
    assert message.startswith(f"s3://{s3.bucket}/set/a.tar: cannot upload (")
    assert "Could not connect" in message and SECRET not in message


def test_s3_bad_credentials_are_reported_without_the_secret(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any key, so bad credentials are simulated by the absence of any
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    with pytest.raises(StoreError, match=r"cannot upload \(Unable to locate credentials\)"):
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
    with pytest.raises(StoreError, match=r"missing\.tar: cannot read"):
        store.read("missing.tar")
