"""Others' shards are untrusted: links, devices, absolute or '..' names, pickles, and manifests naming
files outside the set are each refused, by `verify` and by the loader, with a clear message; nothing is
ever unpickled."""

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import pytest

from segshards.writer.cli.main import main
from segshards.writer.errors import SegshardsError
from tests.deadline import deadline
from tests.mnist_fixtures import error_lines
from tests.moto_fixture import S3, s3_fixture  # noqa: F401  (fixtures)

KEY = "0123456789abcdef0123456789abcdef"


class Armed:
    """Unpickling this creates the folder `path`: proof, if it ever exists, that something unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def member(
    name: str, kind: bytes = tarfile.REGTYPE, payload: bytes = b"x", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, link, 0
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, payload


def stored_name(info: tarfile.TarInfo) -> str:
    """The name as the tar header holds it (tarfile adds '/' to directories)."""
    return info.name + "/" if info.isdir() else info.name


def shard_bytes(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for info, payload in members:
            archive.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return buffer.getvalue()


def manifest_for(shards: dict[str, bytes], names: dict[str, str] | None = None) -> dict[str, Any]:
    """A well-formed manifest listing `shards` (under `names` instead, where given)."""
    entries = [
        {
            "name": (names or {}).get(n, n),
            "count": 1,
            "bytes": len(d),
            "sha256": hashlib.sha256(d).hexdigest(),
        }
        for n, d in shards.items()
    ]
    return {
        "format": "segshards",
        "format_version": 1,
        "recipe": "mnist-foreground",
        "splits": {"train": {"count": len(entries), "shards": entries}},
    }


def write_set(folder: Path, shards: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in shards.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder


HOSTILE_MEMBERS = {
    "symlink": (
        member(f"{KEY}.png", tarfile.SYMTYPE, link="/etc/passwd"),
        "tar member {name!r} is not a regular file",
    ),
    "hardlink": (
        member(f"{KEY}.png", tarfile.LNKTYPE, link="/etc/passwd"),
        "tar member {name!r} is not a regular file",
    ),
    "char device": (member(f"{KEY}.png", tarfile.CHRTYPE), "tar member {name!r} is not a regular file"),
    "block device": (member(f"{KEY}.png", tarfile.BLKTYPE), "tar member {name!r} is not a regular file"),
    "fifo": (member(f"{KEY}.png", tarfile.FIFOTYPE), "tar member {name!r} is not a regular file"),
    "directory": (member(f"{KEY}", tarfile.DIRTYPE), "tar member {name!r} is not a regular file"),
    "absolute path": (member(f"/tmp/{KEY}.png"), "unsafe tar member name {name!r}"),
    "parent": (member(f"../{KEY}.png"), "tar member name {name!r} contains '..'"),
    "nested parent": (member(f"a/../../{KEY}.png"), "tar member name {name!r} contains '..'"),
    "pth": (member(f"{KEY}.pth"), "refusing pickled/serialised member {name!r}"),
    "npy": (member(f"{KEY}.npy"), "refusing pickled/serialised member {name!r}"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_verify_refuses_hostile_members(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (info, payload), message = HOSTILE_MEMBERS[case]
    data = shard_bytes([(info, payload)])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == [info.name]  # the hostile member really is in the tar
    folder = write_set(tmp_path / "set", {"train-000000.tar": data}, manifest_for({"train-000000.tar": data}))
    assert main(["verify", str(folder)]) == 1
    errors = error_lines(capsys.readouterr().err)
    assert errors[0].startswith(f"{folder}/train-000000.tar: " + message.format(name=stored_name(info)))
    assert errors[-1] == f"{folder}: {len(errors) - 1} problem(s)"


def test_pickles_are_refused_never_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    canary = tmp_path / "unpickled"
    payload = pickle.dumps(Armed(canary))
    shards = {
        f"train-00000{i}.tar": shard_bytes(
            [member(f"{KEY}.json", payload=b"{}"), member(f"{KEY}.{ext}", payload=payload)]
        )
        for i, ext in enumerate(["pkl", "pickle", "pyd"])
    }
    folder = write_set(tmp_path / "set", shards, manifest_for(shards))
    assert main(["verify", str(folder)]) == 1
    errors = error_lines(capsys.readouterr().err)
    for i, ext in enumerate(["pkl", "pickle", "pyd"]):
        assert f"{folder}/train-00000{i}.tar: refusing pickled/serialised member '{KEY}.{ext}'" in errors
    loaders = pytest.importorskip("segshards.loaders")
    with pytest.raises(SegshardsError, match="refusing pickled/serialised member"):
        next(iter(loaders.make_loader(folder, "train", batch_size=1, shuffle=False)))
    assert not canary.exists()
    pickle.loads(payload)  # the payload was live: loading it is exactly what must never happen
    assert canary.is_dir()


@pytest.mark.parametrize("case", ["symlink", "hardlink", "char device", "absolute path", "parent", "pth"])
def test_loader_refuses_hostile_members(case: str, tmp_path: Path) -> None:
    loaders = pytest.importorskip("segshards.loaders")
    (info, payload), message = HOSTILE_MEMBERS[case]
    data = shard_bytes([(info, payload)])
    folder = write_set(tmp_path / "set", {"train-000000.tar": data}, manifest_for({"train-000000.tar": data}))
    with pytest.raises(SegshardsError) as caught:
        next(iter(loaders.make_loader(folder, "train", batch_size=1, shuffle=False)))
    assert str(caught.value).startswith(
        f"{folder}/train-000000.tar: " + message.format(name=stored_name(info))
    )


HOSTILE_NAMES = [
    "../x.tar",
    "/etc/passwd",
    "a/b.tar",
    "..",
    ".hidden.tar",
    "x.tar/../../y.tar",
    "C:\\x.tar",
    "x.tar\n",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_manifest_names_outside_the_set_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shard_bytes([member(f"{KEY}.json", payload=b"{}")])
    folder = write_set(
        tmp_path / "set",
        {"train-000000.tar": data},
        manifest_for({"train-000000.tar": data}, {"train-000000.tar": name}),
    )
    expected = f"{folder}/manifest.json: splits.train.shards[0]: shard name {name!r} is not a plain file name"
    assert main(["verify", str(folder)]) == 1
    assert error_lines(capsys.readouterr().err) == [f"segshards: error: {expected}"]
    assert main(["publish", str(folder), str(tmp_path / "published")]) == 1
    assert error_lines(capsys.readouterr().err) == [f"segshards: error: {expected}"]
    assert not (tmp_path / "published").exists()
    loaders = pytest.importorskip("segshards.loaders")
    with pytest.raises(SegshardsError, match="is not a plain file name"):
        next(iter(loaders.make_loader(folder, "train", batch_size=1, shuffle=False)))


def test_remote_manifest_names_outside_the_set_are_refused(
    s3: S3, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = manifest_for({"train-000000.tar": b""}, {"train-000000.tar": "../../other/secret.tar"})
    s3.client.put_object(Bucket=s3.bucket, Key="set/manifest.json", Body=json.dumps(manifest).encode())
    s3.client.put_object(Bucket=s3.bucket, Key="other/secret.tar", Body=b"")
    assert main(["verify", s3.url("set")]) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"segshards: error: {s3.url('set')}/manifest.json: splits.train.shards[0]: "
        "shard name '../../other/secret.tar' is not a plain file name"
    ]


@pytest.mark.parametrize("kind", ["fifo", "dev zero"])
def test_special_files_as_shards_are_refused_without_hanging(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segshards.loaders import make_loader

    data = shard_bytes([member(f"{KEY}.png")])
    folder = write_set(tmp_path / "set", {}, manifest_for({"train-000000.tar": data}))
    shard = folder / "train-000000.tar"
    if kind == "fifo":
        os.mkfifo(shard)
    else:
        shard.symlink_to("/dev/zero")
    with deadline(20):
        assert main(["verify", str(folder)]) == 1
        assert f"{shard}: not a regular file (a shard must be one)" in capsys.readouterr().err
        with pytest.raises(SegshardsError, match=rf"^{shard}: not a regular file"):
            make_loader(folder, "train", batch_size=1, shuffle=False)


def good_manifest() -> dict[str, Any]:
    data = shard_bytes([member(f"{KEY}.png")])
    return {
        **manifest_for({"train-000000.tar": data}),
        "sample": {"image": "png", "mask": "mask.png", "meta": "json"},
    }


BAD_MANIFESTS: dict[str, tuple[str, str]] = {
    "sample is a string": (
        json.dumps({**good_manifest(), "sample": "x"}),
        "field 'sample' has the wrong type (str)",
    ),
    "sample lacks members": (json.dumps({**good_manifest(), "sample": {}}), "field 'sample' must name"),
    "sample of numbers": (
        json.dumps({**good_manifest(), "sample": {"image": 1, "mask": "m", "meta": "j"}}),
        "field 'sample.image' is not one of",
    ),
    "mask is a list": (json.dumps({**good_manifest(), "mask": []}), "field 'mask' has the wrong type (list)"),
    "num_classes a string": (
        json.dumps({**good_manifest(), "mask": {"num_classes": "2"}}),
        "'mask.num_classes' is not an integer",
    ),
    "empty object": ("{}", "missing field 'format'"),
    "a list": ("[1, 2]", "missing field 'format'"),
    "5,000-digit count": (
        json.dumps(good_manifest()).replace('"count": 1,', '"count": ' + "9" * 5000 + ",", 1),
        "not valid JSON (Exceeds the limit",
    ),
    "huge bytes": (
        json.dumps(good_manifest()).replace('"bytes": ', '"bytes": 1' + "0" * 40, 1),
        "bytes out of range",
    ),
    "deep nesting": (
        '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "not valid JSON (nested too deeply)",
    ),
    "split count negative": (
        json.dumps({**good_manifest(), "splits": {"train": {"count": -1, "shards": []}}}),
        "splits.train.count out of range",
    ),
    "not utf-8": (
        '{"format": "\xff"}'.encode("latin-1").decode("utf-8", "surrogateescape"),
        "not valid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_hostile_manifests_are_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = BAD_MANIFESTS[case]
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert main(["verify", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"segshards: error: {folder}/manifest.json: ")
    assert message in err
