"""Shards against their manifest entries (byte count, sha256, each `verify` mode), decode limits passed to
the loader, and the samples a damaged shard still delivers."""

import hashlib
import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest

from segshards.loaders import SkippedDataWarning, make_loader
from segshards.loaders.integrity import CheckedStream, read_checked
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.limits import DecodeLimits
from segshards.writer.format.tar_writer import BLOCK

SHARD = "train-000004.tar"  # the grid set's last train shard: 10 samples (the others hold 60)


def checked(data: bytes, size: int, sha256: str | None) -> bytes:
    stream = CheckedStream(io.BytesIO(data), "s.tar", size=size, sha256=sha256)
    out = stream.read(7) + stream.read()
    stream.finish()
    return out


def test_checked_stream_compares_bytes_and_sha256_with_the_manifest() -> None:
    data = bytes(range(256)) * 40
    digest = hashlib.sha256(data).hexdigest()
    assert checked(data, len(data), digest) == data
    assert read_checked(io.BytesIO(data), "s.tar", size=len(data), sha256=digest) == data
    changed = data[:100] + b"\x00" + data[101:]
    with pytest.raises(ShardFormatError, match=r"^s.tar: sha256 differs from the manifest"):
        checked(changed, len(data), digest)
    assert checked(changed, len(data), None) == changed  # verify="off": the byte count only
    with pytest.raises(ShardFormatError, match=r"^s.tar: longer than the manifest's 10240 bytes$"):
        checked(data + b"\x00", len(data), digest)
    with pytest.raises(ShardFormatError, match=r"^s.tar: 10239 bytes, the manifest says 10240$"):
        checked(data[:-1], len(data), digest)


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def change_a_digit(shard: Path) -> None:
    """A one-character change in the first sample's JSON: still a valid tar, other data."""
    data = bytearray(shard.read_bytes())
    first_json = next(m for m in members(bytes(data)) if m.name.endswith(".json"))
    start = first_json.offset_data
    text = data[start : start + first_json.size]
    pos = next(i for i, c in enumerate(text) if chr(c) in "0123456789")
    data[start + pos] = ord("1" if text[pos] != ord("1") else "2")
    shard.write_bytes(bytes(data))


def keys_of(loader: object) -> list[str]:
    return [k for batch in loader for k in batch["key"]]  # type: ignore[attr-defined]


@pytest.fixture
def changed_set(grid_set: Path, tmp_path: Path) -> Path:
    folder = copy_set(grid_set, tmp_path / "grid")
    change_a_digit(folder / SHARD)
    return folder


def test_a_changed_shard_raises_naming_it(changed_set: Path) -> None:
    for verify in ("stream", "before"):
        with pytest.raises(ShardFormatError, match=rf"^\S*{SHARD}: sha256 differs from the manifest"):
            list(make_loader(changed_set, "train", 16, verify=verify))
    assert len(keys_of(make_loader(changed_set, "train", 16, verify="off"))) == 250  # unchecked: delivered


@pytest.mark.parametrize(("verify", "delivered"), [("stream", 250), ("before", 240)])
def test_skip_mode_counts_a_changed_shard_and_only_before_mode_holds_its_samples_back(
    changed_set: Path, verify: str, delivered: int
) -> None:
    loader = make_loader(changed_set, "train", 16, num_workers=2, on_error="skip", verify=verify)
    with pytest.warns(SkippedDataWarning, match="skipped 1 shard"):
        keys = keys_of(loader)
    assert len(keys) == len(set(keys)) == delivered  # "stream": the hash is known at the shard's end only
    assert loader.stats.shards_failed == 1 and loader.stats.samples_skipped == 0
    assert SHARD in loader.stats.errors[0] and "sha256 differs" in loader.stats.errors[0]


def test_a_shard_longer_or_shorter_than_the_manifest_says_is_an_error(grid_set: Path, tmp_path: Path) -> None:
    folder = copy_set(grid_set, tmp_path / "grid")
    shard = folder / SHARD
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes() + bytes(BLOCK))  # still a valid tar: only the count tells
    for verify in ("stream", "before", "off"):
        with pytest.raises(ShardFormatError, match=rf"{SHARD}: longer than the manifest's {size} bytes"):
            list(make_loader(folder, "train", 16, verify=verify))
    shard.write_bytes(shard.read_bytes()[: size - BLOCK])  # one block of the trailing zeros less
    for verify in ("stream", "off"):
        with pytest.raises(
            ShardFormatError, match=rf"{SHARD}: {size - BLOCK} bytes, the manifest says {size}"
        ):
            list(make_loader(folder, "train", 16, verify=verify))


def test_shard_urls_without_a_manifest_have_nothing_to_check(changed_set: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = make_loader(f"{changed_set}/train-{{000000..000004}}.tar", "train", 16, on_error="skip")
        assert len(keys_of(loader)) == 250


def test_unknown_verify_mode_and_limits_are_refused(grid_set: Path) -> None:
    with pytest.raises(ConfigError, match="verify 'full': must be one of 'stream', 'before', 'off'"):
        make_loader(grid_set, "train", 16, verify="full")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limits 5: must be a DecodeLimits"):
        make_loader(grid_set, "train", 16, limits=5)  # type: ignore[arg-type]


def test_limits_reach_the_decoder_and_the_tar_reader(grid_set: Path) -> None:
    small = DecodeLimits(max_pixels=56 * 56 - 1)
    with pytest.raises(ShardFormatError, match=r"image is 56x56 pixels, over the limit of 3,135"):
        list(make_loader(grid_set, "train", 16, limits=small))
    loader = make_loader(grid_set, "train", 16, num_workers=2, on_error="skip", limits=small)
    with pytest.warns(SkippedDataWarning, match="skipped 0 shard.* and 250 sample"):
        assert keys_of(loader) == []
    with pytest.raises(ShardFormatError, match=r"over the limit of 100 \(SEGSHARDS_MAX_MEMBER_BYTES\)"):
        list(make_loader(grid_set, "train", 16, limits=DecodeLimits(max_member_bytes=100)))
    batch = DecodeLimits(max_batch_bytes=16 * 2 * 56 * 56 - 1)
    with pytest.raises(ShardFormatError, match=r"a batch of 16 samples .* over the limit"):
        list(make_loader(grid_set, "train", 16, limits=batch))


def test_skip_mode_keeps_the_last_good_sample_before_a_damaged_header(grid_set: Path, tmp_path: Path) -> None:
    """Damage right after the 5th sample of a shard: with verify="stream" the 5 samples before it are
    delivered (the 5th used to be lost); with "before" the changed bytes fail the sha256 first."""
    folder = copy_set(grid_set, tmp_path / "grid")
    shard = folder / SHARD
    data = bytearray(shard.read_bytes())
    listed = members(bytes(data))
    order = list(dict.fromkeys(m.name.split(".", 1)[0] for m in listed))
    sixth = next(m for m in listed if m.name.startswith(order[5]))
    header = bytearray(data[sixth.offset : sixth.offset + BLOCK])
    header[124:136] = b"-0000000001\0"  # a negative size: refused by the parser at once
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[sixth.offset : sixth.offset + BLOCK] = header
    shard.write_bytes(bytes(data))
    manifest = json.loads((folder / "manifest.json").read_text())
    others = 250 - manifest["splits"]["train"]["shards"][4]["count"]
    cases = [("stream", order[:5], "corrupt tar header"), ("before", [], "sha256 differs")]
    for verify, expected, error in cases:
        loader = make_loader(folder, "train", 16, shuffle=False, on_error="skip", verify=verify)
        with pytest.warns(SkippedDataWarning, match="skipped 1 shard"):
            keys = keys_of(loader)
        assert keys[others:] == expected
        assert error in loader.stats.errors[0]
