"""`segshards verify`: exit 0 on a good set, one stderr line per problem otherwise."""

import json
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segshards.writer.cli.main import main
from tests.mnist_fixtures import SMALL, build_once, error_lines


@pytest.fixture
def copy(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    """A private copy of the small grid set, free to damage."""
    folder = Path(shutil.copytree(build_once(tmp_path_factory, "mnist-grid", *SMALL), tmp_path / "set"))
    capsys.readouterr()  # the build's own output, if it ran just now
    return folder


def problems(capsys: pytest.CaptureFixture[str], folder: Path) -> list[str]:
    """Run verify, expect failure; returns the problem lines after checking the closing count line."""
    assert main(["verify", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = error_lines(captured.err)
    assert lines[-1] == f"{folder}: {len(lines) - 1} problem(s)"
    return lines[:-1]


def member_offset(shard: Path, index: int, ext: str) -> int:
    """Byte offset of the payload of member `ext` of the `index`-th sample."""
    with tarfile.open(shard) as archive:
        info = [i for i in archive.getmembers() if i.name.endswith(f".{ext}") and i.name.count(".") == 1][
            index
        ]
        return info.offset_data


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_good_set(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(copy)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{copy}: ok, 5 shards, 420 samples, keys unique\n"
    assert error_lines(captured.err) == []


def test_flipped_byte_in_metadata(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = copy / "train-000001.tar"
    flip(shard, member_offset(shard, 7, "json") + 2)
    found = problems(capsys, copy)
    assert found[0] == f"{copy}/train-000001.tar: sha256 differs from the manifest"
    assert len(found) == 2 and re.fullmatch(
        rf"{re.escape(str(shard))}:[0-9a-f]{{32}}: invalid json metadata \(.*\)", found[1]
    )


def test_flipped_byte_in_an_image(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = copy / "val-000000.tar"
    flip(shard, member_offset(shard, 3, "png") + 60)
    found = problems(capsys, copy)
    assert len(found) == 2
    assert found[0] == f"{copy}/val-000000.tar: sha256 differs from the manifest"
    assert found[1].startswith(f"{copy}/val-000000.tar:")  # undecodable, or not its key's pixels


def test_flipped_byte_in_a_tar_header(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = copy / "test-000000.tar"
    with tarfile.open(shard) as archive:
        header = archive.getmembers()[3].offset  # the 2nd sample's first header
    flip(shard, header + 5)  # its name: the header checksum no longer matches
    found = problems(capsys, copy)
    assert found[0] == f"{copy}/test-000000.tar: sha256 differs from the manifest"
    assert len(found) >= 2 and all(line.startswith(f"{copy}/test-000000.tar") for line in found)


def test_deleted_shard(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "train-000002.tar").unlink()
    found = problems(capsys, copy)
    assert len(found) == 1 and found[0].startswith(f"{copy}/train-000002.tar: cannot read")


def test_shard_count_edited_in_the_manifest(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["splits"]["train"]["shards"][1]["count"] = 99
        manifest["splits"]["train"]["count"] = 299

    edit_manifest(copy, edit)
    assert problems(capsys, copy) == [
        f"{copy}/train-000001.tar: 100 samples, manifest says 99",
        f"{copy}/train.wids.json: does not list the split's shards as the manifest does",
    ]


def test_split_count_disagreeing_with_its_shards(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_manifest(copy, lambda m: m["splits"]["val"].update(count=61))
    assert main(["verify", str(copy)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"segshards: error: {copy}/manifest.json: splits.val.count disagrees with its shards"]


def test_unlisted_shard_and_duplicate_keys(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(copy / "train-000000.tar", copy / "train-000003.tar")
    # The test shard replaced by the val shard, the manifest made to agree: 60 keys now appear twice.
    shutil.copy(copy / "val-000000.tar", copy / "test-000000.tar")
    edit_manifest(copy, lambda m: m["splits"]["test"]["shards"][0].update(
        {k: v for k, v in m["splits"]["val"]["shards"][0].items() if k != "name"}))  # fmt: skip
    found = problems(capsys, copy)
    duplicates = [line for line in found if ": duplicate key " in line]
    assert len(duplicates) == 60 and len(found) == 61  # the two shards have the same size: the index agrees
    assert found[-1] == f"{copy}/train-000003.tar: shard not listed in the manifest"


def test_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"segshards: error: {tmp_path}/manifest.json: no manifest")


def test_verify_a_file_instead_of_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["verify", str(tmp_path / "afile")]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"segshards: error: {tmp_path / 'afile'}")


# ---- the wids indexes ---------------------------------------------------------------------------------


def test_each_split_has_a_wids_index_listed_in_the_manifest(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        index = json.loads((copy / f"{split}.wids.json").read_text())
        assert info["index"]["name"] == f"{split}.wids.json"
        assert info["index"]["bytes"] == (copy / f"{split}.wids.json").stat().st_size
        assert index == {
            "wids_version": 1,
            "name": f"mnist-grid {split}",
            "shardlist": [
                {"url": e["name"], "nsamples": e["count"], "filesize": e["bytes"]} for e in info["shards"]
            ],
        }


def test_damaged_or_missing_index(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = copy / "val.wids.json"
    index.write_text(index.read_text().replace('"nsamples": 60', '"nsamples": 61'))
    (copy / "test.wids.json").unlink()
    found = problems(capsys, copy)
    assert found == [
        f"{index}: sha256 differs from the manifest",
        f"{index}: does not list the split's shards as the manifest does",
        f"{copy}/test.wids.json: cannot read (No such file or directory)",
    ]


@pytest.mark.parametrize("name", ["../elsewhere.wids.json", "/etc/passwd", "train.json", 7])
def test_index_name_that_is_not_a_plain_file_name(
    copy: Path, capsys: pytest.CaptureFixture[str], name: Any
) -> None:
    edit_manifest(copy, lambda m: m["splits"]["train"]["index"].update(name=name))
    (found,) = problems(capsys, copy)
    assert found.startswith(f"{copy}/manifest.json: splits.train.index")


def test_a_set_without_indexes_still_verifies(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_manifest(copy, lambda m: [info.pop("index") for info in m["splits"].values()])
    assert main(["verify", str(copy)]) == 0
