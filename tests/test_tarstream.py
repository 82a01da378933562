"""The shard reader: same members as Python's tarfile, stock and GNU/PAX tars, hostile and broken tars."""

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.tar_reader import iter_members, iter_samples, read_regular
from segshards.writer.format.tar_writer import tar_bytes


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


def keys_before_error(data: bytes) -> tuple[list[str], str]:
    """The keys `iter_samples` yields from `data`, and the message of the error that then ends it."""
    keys = []
    with pytest.raises(ShardFormatError) as error:
        for sample in iter_samples(io.BytesIO(data), "bad.tar"):
            keys.append(str(sample["__key__"]))
    return keys, str(error.value)


@pytest.mark.parametrize("damage", ["size field", "name bit"])
def test_the_last_good_sample_before_a_damaged_header_is_delivered(damage: str) -> None:
    """Damage right after sample k2: k0..k2 come out (k2 used to be lost with the reader's current sample)."""
    data = bytearray(tar_bytes([(f"k{k}.{ext}", b"p" * 100) for k in range(5) for ext in ("json", "png")]))
    header = 3 * 2 * 2 * 512  # k3.json: 3 samples of two members, each a header and one payload block
    assert data[header : header + 7] == b"k3.json"
    if damage == "size field":
        data[header + 124 : header + 136] = b"-0000000001\0"  # the parser refuses it at once
        fix = bytearray(data[header : header + 512])
        fix[148:156] = b" " * 8
        data[header + 148 : header + 156] = b"%06o\0 " % sum(fix)
    else:
        data[header + 1] ^= 0x01  # "k2.json": parsed on, caught by the checksum at the end
    keys, message = keys_before_error(bytes(data))
    assert keys == ["k0", "k1", "k2"]
    assert message.startswith("bad.tar: corrupt tar header")


def test_a_sample_cut_inside_one_of_its_members_is_not_delivered() -> None:
    data = tar_bytes([(f"k{k}.{ext}", b"p" * 100) for k in range(5) for ext in ("json", "png")])
    header = 2 * 2 * 2 * 512 + 2 * 512  # k2.png, after k2.json
    assert data[header : header + 6] == b"k2.png"
    keys, message = keys_before_error(data[: header + 512 + 50])
    assert keys == ["k0", "k1"]  # k2 lost its image, so it is damage, not a sample
    assert message == "bad.tar: tar member 'k2.png' is truncated"


def test_no_sample_after_a_bad_checksum_is_delivered_even_when_the_rest_parses() -> None:
    data = bytearray(tar_bytes([(f"k{k}.{ext}", b"p" * 100) for k in range(40) for ext in ("json", "png")]))
    header = 10 * 4 * 512 + 2 * 512  # k10.png's header
    data[header + 134] ^= 0x04  # its size field: 100 -> 96 bytes (octal 144 -> 140), checksum left stale
    keys, message = keys_before_error(bytes(data))
    assert keys == [f"k{k}" for k in range(10)]
    assert "bad checksum" in message


def test_duplicate_member_and_corrupt_gzip() -> None:
    with pytest.raises(ShardFormatError, match="duplicate member"):
        list(iter_samples(io.BytesIO(tar_bytes([("k.png", b"a"), ("k.png", b"b")])), "dup.tar"))
    zipped = gzip.compress(tar_bytes([("k.png", b"a" * 5000)]))
    with pytest.raises(ShardFormatError, match="gz.tar: corrupt or truncated gzip"):
        list(iter_samples(io.BytesIO(zipped[: len(zipped) // 2]), "gz.tar"))


def with_field(data: bytes, offset: int, start: int, value: bytes) -> bytes:
    """`data` with bytes [start, start+len(value)) of the header at `offset` replaced, checksum fixed."""
    header = bytearray(data[offset : offset + 512])
    header[start : start + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return data[:offset] + bytes(header) + data[offset + 512 :]


SIMPLE = tar_bytes([("k1.png", b"a" * 700), ("k1.json", b"{}"), ("k2.png", b"b")])


@pytest.mark.parametrize(
    "field",
    [b"-0000000001\0", b"-1\0", b"+0000000001", b"0000_000001\0", b"\xff" * 12, b"00000000009\0", b"0x1f\0"],
)
def test_size_fields_are_parsed_strictly(field: bytes) -> None:
    data = with_field(SIMPLE, 0, 124, field)
    with pytest.raises(ShardFormatError, match=r"^s: corrupt tar header \(size field"):
        list(iter_samples(io.BytesIO(data), "s"))


def test_size_field_padding_and_base256_still_read() -> None:
    assert list(iter_members(io.BytesIO(with_field(SIMPLE, 1536, 124, b" 1 \0 \0")), "s"))[-1] == (
        "k2.png",
        b"b",
    )
    base256 = b"\x80" + (1).to_bytes(11, "big")
    assert list(iter_members(io.BytesIO(with_field(SIMPLE, 1536, 124, base256)), "s"))[-1] == ("k2.png", b"b")


def pax_tar(records: bytes, payload: bytes = b"img") -> bytes:
    """A tar whose first member `k.png` is preceded by a PAX header holding `records` verbatim."""
    pax = tar_bytes([("pax", records)])[: 512 + -(-len(records) // 512) * 512]  # no end blocks
    pax = with_field(pax, 0, 156, b"x")
    return pax + tar_bytes([("k.png", payload)])


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (b"0 size=3\n", "malformed record at byte 0"),
        (b"5 size=3\n", "malformed record at byte 0"),
        (b"99 size=3\n", "malformed record at byte 0"),
        (b"-9 size=3\n", "malformed record at byte 0"),
        (b"9 size=3\n0 path=x\n", "malformed record at byte 9"),
        (b"9 size=3 ", "malformed record at byte 0"),
        (b"8 nokey\n", "record without key=value"),
        (b"12 size=abc\n", "size='abc'"),
        (b"11 size=-5\n", "size='-5'"),
        (b"8 size=\n", "size=''"),
    ],
)
def test_malformed_pax_records_are_one_error(records: bytes, message: str) -> None:
    with pytest.raises(ShardFormatError, match=rf"^p: corrupt PAX header \(.*{message}"):
        list(iter_samples(io.BytesIO(pax_tar(records)), "p"))


def test_well_formed_pax_records_are_honoured() -> None:
    data = pax_tar(b"9 size=2\n17 path=key.json\n", b"{}")
    assert list(iter_members(io.BytesIO(data), "p")) == [("key.json", b"{}")]


def test_oversized_extension_header_is_refused() -> None:
    data = with_field(pax_tar(b"9 size=3\n"), 0, 124, b"%011o\0" % (2 << 20))
    with pytest.raises(
        ShardFormatError, match="is 2,097,152 bytes, over the limit of 1,048,576 for a PAX/GNU header"
    ):
        list(iter_samples(io.BytesIO(data), "p"))


def test_member_limit_and_byte_bound() -> None:
    with pytest.raises(
        ShardFormatError,
        match=r"'k1.png' is 700 bytes, over the limit of 512 \(SEGSHARDS_MAX_MEMBER_BYTES\)$",
    ):
        list(iter_samples(io.BytesIO(SIMPLE), "s", max_member_bytes=512))
    with pytest.raises(ShardFormatError, match=r"^s: longer than the manifest's 2048 bytes"):
        list(iter_samples(io.BytesIO(SIMPLE + bytes(4096)), "s", max_bytes=2048))
    assert len(list(iter_samples(io.BytesIO(SIMPLE), "s", max_bytes=len(SIMPLE)))) == 2


def test_only_regular_files_are_read_as_shards(tmp_path: Path) -> None:
    fifo, zero = tmp_path / "fifo.tar", tmp_path / "zero.tar"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero, tmp_path):
        with pytest.raises(ShardFormatError, match="not a regular file"):
            read_regular(path)
    with (
        open("/dev/zero", "rb", buffering=0) as stream,
        pytest.raises(ShardFormatError, match="not a regular"),
    ):
        list(iter_samples(stream, "zero"))
    (tmp_path / "ok.tar").write_bytes(SIMPLE)
    assert read_regular(tmp_path / "ok.tar", len(SIMPLE)) == SIMPLE
    with pytest.raises(ShardFormatError, match="longer than the manifest's 10 bytes"):
        read_regular(tmp_path / "ok.tar", 10)
