"""The tar layer: fixed USTAR headers, round trips, hostile members refused, stock readers reading our shards."""

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.keys import is_key, pixel_key
from segshards.writer.format.tar_reader import iter_members, iter_samples
from segshards.writer.format.tar_writer import BLOCK, RECORD, tar_bytes, ustar_header
from tests.mnist_fixtures import SMALL, build_once, decode

MEMBERS = [
    ("0123abcd.json", b'{"a":1}'),
    ("0123abcd.mask.png", bytes(range(256)) * 3),
    ("0123abcd.png", b"x" * BLOCK),
    ("ffff0000.json", b""),
    ("ffff0000.mask.png", b"m"),
    ("ffff0000.png", b"p" * 513),
]
needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")


def test_round_trip_through_our_reader() -> None:
    data = tar_bytes(MEMBERS)
    assert len(data) % RECORD == 0
    assert list(iter_members(io.BytesIO(data), "mem")) == MEMBERS
    samples = list(iter_samples(io.BytesIO(data), "mem"))
    assert samples == [
        {"__key__": "0123abcd", "json": b'{"a":1}', "mask.png": bytes(range(256)) * 3, "png": b"x" * BLOCK},
        {"__key__": "ffff0000", "json": b"", "mask.png": b"m", "png": b"p" * 513},
    ]


def test_headers_are_fixed_ustar_as_python_tarfile_reads_them() -> None:
    data = tar_bytes(MEMBERS)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        infos = archive.getmembers()
        assert [(i.name, i.size) for i in infos] == [(n, len(p)) for n, p in MEMBERS]
        for info in infos:
            assert info.type == tarfile.REGTYPE
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
            assert info.mode == 0o644
            assert info.pax_headers == {}
            handle = archive.extractfile(info)
            assert handle is not None
            assert handle.read() == dict(MEMBERS)[info.name]
    # The header we build is the one tarfile would build for the same fields (tarfile leaves the
    # device numbers of a regular file blank, we write zeros: both read as 0), with a valid checksum.
    info = tarfile.TarInfo("0123abcd.png")
    info.size, info.mtime, info.mode, info.uname, info.gname = 700, 0, 0o644, "", ""
    ours = ustar_header("0123abcd.png", 700)
    theirs = info.tobuf(format=tarfile.USTAR_FORMAT)
    assert ours[:148] == theirs[:148] and ours[156:329] == theirs[156:329]
    assert int(ours[148:154], 8) == sum(ours[:148]) + 8 * ord(" ") + sum(ours[156:])
    assert int(ours[329:336], 8) == int(ours[337:344], 8) == 0


def test_tar_bytes_refuses_long_names() -> None:
    with pytest.raises(ShardFormatError, match="longer than 100 bytes"):
        tar_bytes([("k" * 97 + ".png", b"")])


def hostile_tar(add: str) -> bytes:
    """A tar holding one good member then one hostile member made with Python's tarfile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as archive:

        def regular(name: str, payload: bytes = b"data") -> None:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))

        regular("abc.json", b"{}")
        if add in ("symlink", "hardlink", "directory"):
            info = tarfile.TarInfo("abc.png")
            info.type = {
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "directory": tarfile.DIRTYPE,
            }[add]
            info.linkname = "/etc/passwd" if add != "directory" else ""
            archive.addfile(info)
        else:
            regular(add)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        ("symlink", "not a regular file"),
        ("hardlink", "not a regular file"),
        ("directory", "not a regular file"),
        ("/abs/abc.png", "unsafe"),
        ("../abc.png", r"'\.\.'"),
        ("dir/../../abc.png", r"'\.\.'"),
        ("abc.pkl", "pickled"),
        ("abc.pyd", "pickled"),
        ("abc.pth", "pickled"),
        ("abc.PICKLE", "pickled"),
        ("noextension", "KEY.EXTENSION"),
        (".hidden", "KEY.EXTENSION"),
    ],
)
def test_hostile_members_are_refused(hostile: str, message: str) -> None:
    data = hostile_tar(hostile)
    with pytest.raises(ShardFormatError, match=message) as caught:
        list(iter_samples(io.BytesIO(data), "evil.tar"))
    assert str(caught.value).startswith("evil.tar: ")


def test_truncated_and_garbage_tars_are_refused() -> None:
    data = tar_bytes(MEMBERS)
    with pytest.raises(ShardFormatError, match="evil.tar"):
        list(iter_members(io.BytesIO(data[: BLOCK + 100]), "evil.tar"))
    with pytest.raises(ShardFormatError, match="evil.tar"):
        list(iter_members(io.BytesIO(b"not a tar at all" * 64), "evil.tar"))


@pytest.mark.parametrize("damage", ["flipped-name", "zeroed-header", "bad-checksum"])
def test_damaged_header_after_the_first_member_is_an_error(damage: str) -> None:
    data = bytearray(tar_bytes(MEMBERS))
    header = 2 * BLOCK  # the second member's header (the first payload takes one block)
    if damage == "flipped-name":
        data[header + 3] ^= 0xFF
    elif damage == "zeroed-header":
        data[header : header + BLOCK] = bytes(BLOCK)
    else:
        data[header + 150] ^= 0x01
    with pytest.raises(ShardFormatError, match="evil.tar"):
        list(iter_members(io.BytesIO(bytes(data)), "evil.tar"))


def test_archive_cut_at_a_member_boundary_is_an_error() -> None:
    data = tar_bytes(MEMBERS)
    with pytest.raises(ShardFormatError, match="evil.tar"):
        list(iter_members(io.BytesIO(data[: 5 * BLOCK]), "evil.tar"))  # two whole members, no end marker


def test_duplicate_member_in_one_sample_is_refused() -> None:
    data = tar_bytes([("abc.png", b"1"), ("abc.png", b"2")])
    with pytest.raises(ShardFormatError, match="duplicate member"):
        list(iter_samples(io.BytesIO(data), "evil.tar"))


# ---- stock readers on a built set --------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_once(tmp_path_factory, "mnist-grid", *SMALL)


def shard_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar"))


def test_stock_webdataset_reads_every_sample(grid_set: Path) -> None:
    urls = [str(p) for p in shard_paths(grid_set)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 420
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 420 and all(is_key(k) for k in keys)
    for sample in samples:
        assert {k for k in sample if not k.startswith("__")} == {"json", "mask.png", "png"}
        image = decode(sample["png"])
        assert image.shape == (56, 56) and pixel_key(image) == sample["__key__"]
        assert decode(sample["mask.png"]).shape == (56, 56)
    by_url: dict[str, int] = {}
    for sample in samples:
        by_url[sample["__url__"]] = by_url.get(sample["__url__"], 0) + 1
    assert by_url == {url: 100 if "train" in url else 60 for url in urls}


@needs_gnu_tar
def test_gnu_tar_lists_plain_members(grid_set: Path) -> None:
    for path in shard_paths(grid_set):
        names = subprocess.run(
            ["tar", "-tf", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
        keys = [n.partition(".")[0] for n in names]
        assert len(names) == 3 * len(set(keys))
        for i in range(0, len(names), 3):
            assert names[i : i + 3] == [f"{keys[i]}.json", f"{keys[i]}.mask.png", f"{keys[i]}.png"]
        listing = subprocess.run(["tar", "-tvf", str(path)], capture_output=True, text=True, check=True)
        assert listing.stderr == ""
        lines = listing.stdout.splitlines()
        assert len(lines) == len(names)
        for line, name in zip(lines, names, strict=True):
            mode, owner, _size, date, time_, member = line.split()
            assert (mode, owner, date, time_, member) == ("-rw-r--r--", "0/0", "1970-01-01", "00:00", name)
        assert not any("PaxHeader" in n or "@" in n for n in names)


def test_shard_headers_have_no_pax_records(grid_set: Path) -> None:
    for path in shard_paths(grid_set):
        data = path.read_bytes()
        assert len(data) % RECORD == 0
        with tarfile.open(path) as archive:
            for info in archive:
                assert info.type == tarfile.REGTYPE and info.pax_headers == {}
                assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (
                    0,
                    0,
                    0,
                    "",
                    "",
                    0o644,
                )
                header = data[info.offset : info.offset + BLOCK]
                assert header[156:157] == b"0" and header[257:263] == b"ustar\x00"
