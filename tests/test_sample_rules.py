"""One definition of a valid sample (`read_sample`): for every rule, `verify`'s check and the loader refuse
the same sample with the same one-line message (raise mode), or count it as a skip (skip mode)."""

import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from segshards.loaders import SkippedDataWarning, make_loader
from segshards.loaders.decode import BatchAssembler
from segshards.writer.cli.main import main
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.sample import Layout, check_sample, read_sample
from segshards.writer.format.schema import SampleSchema
from segshards.writer.format.tar_writer import tar_bytes
from tests.mnist_fixtures import error_lines
from tests.test_hostile import manifest_for, write_set

Sample = dict[str, Any]
IMAGE = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
SCHEMA = SampleSchema("png", 1, (28, 28), ("background", "foreground"))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def overrun_png(image: np.ndarray, extra: int) -> bytes:
    """A PNG of `image` whose zlib stream goes on for `extra` bytes of zeros past the rows it declares."""
    rows = np.zeros((image.shape[0], image.shape[1] + 1), np.uint8)
    rows[:, 1:] = image
    return grey_png(image.shape[1], image.shape[0], zlib.compress(rows.tobytes() + bytes(extra), 1))


def good(image: np.ndarray = IMAGE) -> Sample:
    return {
        "__key__": pixel_key(image),
        "__url__": "s.tar",
        "png": encode_png(image),
        "mask.png": encode_png((image > 100).astype(np.uint8)),
        "json": b'{"label": 1}',
    }


def huge_jpeg() -> bytes:
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    return bytes(data)


def replace(**members: Any) -> Callable[[Sample], Sample]:
    return lambda s: {k: v for k, v in {**s, **members}.items() if v is not None}


KEY = pixel_key(IMAGE)
RULES: dict[str, tuple[Callable[[Sample], Sample], str]] = {
    "key not hex": (
        replace(__key__="not-a-key"),
        r"s.tar: member key 'not-a-key' is not a 32-digit hex hash",
    ),
    "missing member": (replace(json=None), r"s.tar:\w+: sample has members \['mask.png', 'png'\], expected"),
    "extra member": (
        replace(txt=b"x"),
        r"s.tar:\w+: sample has members \['json', 'mask.png', 'png', 'txt'\]",
    ),
    "other image member": (
        lambda s: {**replace(png=None)(s), "jpg": s["png"]},
        r"s.tar:\w+: sample has members \['jpg', 'json', 'mask.png'\], expected png, mask.png, json",
    ),
    "png over the pixel limit": (
        replace(png=grey_png(50_000, 50_000, zlib.compress(bytes(100)))),
        r"s.tar:\w+: png image is 50000x50000 pixels, over the limit of 268,435,456 \(SEGSHARDS_MAX_PIXELS\)",
    ),
    "jpeg over the pixel limit": (
        replace(png=huge_jpeg()),  # the limits come before the member name: nothing more is read
        r"s.tar:\w+: jpeg image is 60000x60000 pixels, over the limit",
    ),
    "png inflating past its header": (
        replace(png=overrun_png(IMAGE, 64 << 20)),
        r"s.tar:\w+: corrupt PNG \(its data inflates past the 812 bytes its header declares\)",
    ),
    "mask inflating past its header": (
        replace(**{"mask.png": overrun_png(np.zeros((28, 28), np.uint8), 1 << 20)}),
        r"s.tar:\w+: corrupt PNG \(its data inflates past the 812 bytes",
    ),
    "png member holding a jpeg": (
        replace(png=cv2.imencode(".jpg", IMAGE)[1].tobytes()),
        r"s.tar:\w+: png member holds a jpeg image",
    ),
    "colour mask": (
        replace(**{"mask.png": encode_png(np.zeros((28, 28, 3), np.uint8))}),
        r"s.tar:\w+: mask has 3 channels, expected one \(class indices\)",
    ),
    "mask of another size": (
        replace(**{"mask.png": encode_png(np.zeros((28, 27), np.uint8))}),
        r"s.tar:\w+: mask is 27x28, its image 28x28",
    ),
    "metadata not json": (replace(json=b"{label"), r"s.tar:\w+: invalid json metadata \("),
    "metadata not an object": (
        replace(json=b"[1]"),
        r"s.tar:\w+: json metadata is a list, expected an object",
    ),
    "key of other pixels": (
        replace(png=encode_png(IMAGE.T)),
        rf"s.tar:{KEY}: key does not match the hash of its image pixels",
    ),
}


def test_a_good_sample_passes() -> None:
    stored = read_sample(good(), Layout("png"), "s.tar")
    assert (stored.key, stored.image_ext, stored.meta) == (KEY, "png", {"label": 1})
    np.testing.assert_array_equal(stored.image, IMAGE)
    assert list(check_sample(good(), Layout("png"), "s.tar")) == []


def allocate(nbytes: int) -> torch.Tensor:
    return torch.zeros(nbytes, dtype=torch.uint8)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_verify_and_the_loader_refuse_alike(rule: str) -> None:
    edit, message = RULES[rule]
    bad = edit(good())
    problems = list(check_sample(bad, Layout("png"), "s.tar"))
    assert len(problems) == 1 and re.fullmatch(message + ".*", problems[0]), problems
    assembler = BatchAssembler(schema=SCHEMA, size=None, with_meta=False, allocate=allocate)

    def fail(exc: ShardFormatError) -> None:
        raise exc

    with pytest.raises(ShardFormatError) as info:
        assembler([good(), bad], fail)
    assert str(info.value) == problems[0]
    skipped: list[str] = []
    batch = assembler([bad, good(), bad], lambda exc: skipped.append(str(exc)))
    assert batch["key"] == [KEY] and skipped == problems * 2


def test_a_shard_whose_png_inflates_past_its_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case that verify refused and the loader delivered: now both refuse it."""
    bad = {**good(IMAGE.T), "png": overrun_png(IMAGE.T, 300 << 20)}  # ~300 KB inflating to 300 MB
    members = [
        (f"{s['__key__']}.{ext}", s[ext]) for s in (good(), bad) for ext in ("json", "mask.png", "png")
    ]
    data = tar_bytes(members)
    manifest = manifest_for({"train-000000.tar": data})
    manifest["splits"]["train"]["shards"][0]["count"] = manifest["splits"]["train"]["count"] = 2
    folder = write_set(tmp_path / "set", {"train-000000.tar": data}, manifest)
    shard = folder / "train-000000.tar"
    message = (
        f"{shard}:{bad['__key__']}: corrupt PNG (its data inflates past the 812 bytes its header declares)"
    )

    assert main(["verify", str(folder)]) == 1
    assert error_lines(capsys.readouterr().err) == [message, f"{folder}: 1 problem(s)"]
    with pytest.raises(ShardFormatError) as info:
        list(make_loader(folder, "train", 2, shuffle=False))
    assert str(info.value) == message
    loader = make_loader(folder, "train", 2, shuffle=False, on_error="skip")
    with pytest.warns(SkippedDataWarning):
        keys = [k for batch in loader for k in batch["key"]]
    assert keys == [KEY] and (loader.stats.samples_skipped, loader.stats.shards_failed) == (1, 0)
    assert loader.stats.errors == [message]
