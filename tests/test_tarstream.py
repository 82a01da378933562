"""The shard reader: same members as Python's tarfile, stock and GNU/PAX tars, hostile and broken tars."""

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from segshards.writer.errors import ShardFormatError
from segshards.writer.tarformat import tar_bytes
from segshards.writer.tarstream import iter_members, iter_samples


def members_tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, payload in members:
            info.size = len(payload) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return buf.getvalue()


def regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_same_members_as_pythons_tarfile(grid_set: Path) -> None:
    data = (grid_set / "train-000000.tar").read_bytes()
    assert len(list(iter_samples(io.BytesIO(data), "shard"))) == 60
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    assert list(iter_members(io.BytesIO(data), "shard")) == expected


def test_reads_stock_webdataset_tars_with_pax_headers_and_gzip() -> None:
    buf = io.BytesIO()
    with wds.TarWriter(buf) as sink:  # float mtimes: a PAX header before every member
        sink.write({"__key__": "k1", "png": b"x" * 10, "json": b"{}"})
        sink.write({"__key__": "k2", "png": b"y" * 600, "json": b"[]"})
    expected = [
        {"__key__": "k1", "json": b"{}", "png": b"x" * 10},
        {"__key__": "k2", "json": b"[]", "png": b"y" * 600},
    ]
    assert list(iter_samples(io.BytesIO(buf.getvalue()), "w")) == expected
    assert list(iter_samples(io.BytesIO(gzip.compress(buf.getvalue())), "w")) == expected


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names(fmt: int) -> None:
    key = "d" * 120
    data = members_tar([(regular(f"{key}.png"), b"img"), (regular(f"{key}.json"), b"{}")], fmt)
    assert list(iter_samples(io.BytesIO(data), "long")) == [{"__key__": key, "png": b"img", "json": b"{}"}]


def link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (link("k.png", tarfile.SYMTYPE), "not a regular file"),
        (link("k.png", tarfile.LNKTYPE), "not a regular file"),
        (link("k.png", tarfile.CHRTYPE), "not a regular file"),
        (link("dir", tarfile.DIRTYPE), "not a regular file"),
        (regular("/abs/k.png"), "unsafe"),
        (regular("../k.png"), "'..'"),
        (regular("a/../../k.png"), "'..'"),
        (regular("k.pkl"), "pickled"),
        (regular("k.pyd"), "pickled"),
        (regular("k.PTH"), "pickled"),
        (regular("noextension"), "KEY.EXTENSION"),
    ],
)
def test_hostile_members_are_refused(info: tarfile.TarInfo, message: str) -> None:
    data = members_tar([(regular("ok.png"), b"fine"), (regular("ok.json"), b"{}"), (info, b"payload")])
    with pytest.raises(ShardFormatError, match=message) as caught:
        list(iter_samples(io.BytesIO(data), "hostile.tar"))
    assert str(caught.value).startswith("hostile.tar: ")


def test_truncated_tar_names_the_shard_and_keeps_the_samples_before_the_damage() -> None:
    data = tar_bytes([(f"{k:032x}.{ext}", b"p" * 700) for k in range(40) for ext in ("json", "png")])
    yielded = []
    with pytest.raises(ShardFormatError, match="^cut.tar: .*truncated"):
        for sample in iter_samples(io.BytesIO(data[: 512 * 100 + 17]), "cut.tar"):
            yielded.append(sample["__key__"])
    assert yielded == [f"{k:032x}" for k in range(len(yielded))]
    assert 0 < len(yielded) < 40
    for cut in (0, 100, 512, 513, len(data) - 10240 - 1):
        with pytest.raises(ShardFormatError, match="truncated"):
            list(iter_samples(io.BytesIO(data[:cut]), "cut.tar"))


def test_corrupt_header_fails_its_checksum() -> None:
    data = bytearray(tar_bytes([("k1.png", b"a"), ("k1.json", b"{}"), ("k2.png", b"b"), ("k2.json", b"{}")]))
    second_sample = 4 * 512
    data[second_sample + 3] ^= 0x01  # one bit of k2.png's name
    with pytest.raises(ShardFormatError, match="bad checksum"):
        list(iter_samples(io.BytesIO(bytes(data)), "bad.tar"))
    data[second_sample + 3] ^= 0x01
    data[second_sample + 124 + 3] = ord("x")  # the size field
    with pytest.raises(ShardFormatError, match="corrupt tar header"):
        list(iter_samples(io.BytesIO(bytes(data)), "bad.tar"))


def test_duplicate_member_and_corrupt_gzip() -> None:
    with pytest.raises(ShardFormatError, match="duplicate member"):
        list(iter_samples(io.BytesIO(tar_bytes([("k.png", b"a"), ("k.png", b"b")])), "dup.tar"))
    zipped = gzip.compress(tar_bytes([("k.png", b"a" * 5000)]))
    with pytest.raises(ShardFormatError, match="gz.tar: corrupt or truncated gzip"):
        list(iter_samples(io.BytesIO(zipped[: len(zipped) // 2]), "gz.tar"))
