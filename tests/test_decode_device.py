"""Decoding photographs on the device (`segshards.loaders.device_decode`): `decode_device="cpu"` runs the
same path as "cuda" (bytes from the workers, the batch decoded and letterboxed with torch ops in the main
process), so it is checked here against the default CPU path; the CUDA tests skip without a GPU."""

import importlib.util
import io
import tarfile
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segshards.loaders import Augment, DevicePrefetcher, SkippedDataWarning, make_loader, to_float
from segshards.loaders.decode import letterbox
from segshards.loaders.device_decode import (
    JPEGS,
    BatchDecoder,
    BytesAssembler,
    Pending,
    check_decode_options,
    exif_orientation,
    orient,
    resize,
)
from segshards.loaders.stages import Stats
from segshards.writer.cli.main import main
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.schema import SampleSchema
from tests.coco_fixtures import write_coco
from tests.test_photo import COCO_TINY, jpeg_sample, photo_like, rules

CUDA = torch.cuda.is_available() and importlib.util.find_spec("torchvision") is not None
SIZE = (64, 80)


def build(tmp_path: Path, *, tiny: bool = False, count: int = 6) -> Path:
    """A coco-semantic set: the coco-tiny photographs (`tiny`) or the drawn fixture."""
    out = tmp_path / "set"
    if tiny:
        source = ["--annotations", str(COCO_TINY / "instances.json"), "--images", str(COCO_TINY / "images")]
    else:
        source = write_coco(tmp_path / "src").args()
    argv = ["build", "coco-semantic", *source, "--out", str(out), "--jobs", "1", "--no-progress"]
    assert main([*argv, "--train", str(count), "--val", "0", "--test", "0"]) == 0
    return out


def batches(source: Any, **options: Any) -> list[dict[str, Any]]:
    options = {"batch_size": 4, "shuffle": False, "size": SIZE, "with_meta": True, **options}
    return list(make_loader(source, "train", **options))


def assert_same_but_images(ours: list[dict[str, Any]], cpu: list[dict[str, Any]]) -> None:
    """Keys, metadata and targets equal; masks equal byte for byte; images of the same layout and dtype."""
    assert len(ours) == len(cpu)
    for a, b in zip(ours, cpu, strict=True):
        assert a["key"] == b["key"] and a["meta"] == b["meta"] and sorted(a) == sorted(b)
        assert a["image"].shape == b["image"].shape and a["image"].dtype == b["image"].dtype == torch.uint8
        assert torch.equal(a["mask"], b["mask"])


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")
@pytest.mark.parametrize("workers", [0, 2])
def test_real_photographs_match_the_cpu_path(tmp_path: Path, workers: int) -> None:
    """The documented tolerance: each photograph within 3 levels (of 255) on average of the CPU path
    (which decodes at a reduced libjpeg-turbo scale), the median one's 99th percentile at 2 or less; and
    within 1 level everywhere of a full cv2 decode letterboxed by `segshards.loaders.decode.letterbox`."""
    folder = build(tmp_path, tiny=True, count=16)
    cpu = batches(folder, size=(320, 320))
    ours = batches(folder, size=(320, 320), num_workers=workers, decode_device="cpu")
    assert_same_but_images(ours, cpu)
    means, p99 = image_differences(ours, cpu)
    assert max(means) < 3.0 and len(p99) == 16 and np.median(p99) <= 2, (means, p99)


def image_differences(
    ours: list[dict[str, Any]], cpu: list[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """Each photograph's mean and 99th-percentile absolute difference (levels of 255), batch for batch."""
    means, p99 = [], []
    for a, b in zip(ours, cpu, strict=True):
        for image, expected in zip(a["image"], b["image"], strict=True):
            diff = (image.int() - expected.int()).abs().float()
            means.append(float(diff.mean()))
            p99.append(float(diff.flatten().quantile(0.99)))
    return means, p99


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")
def test_the_device_letterbox_is_cv2s_within_one_level() -> None:
    """Full decode + torch letterbox against full decode + cv2 INTER_AREA / INTER_LINEAR letterbox."""
    for path in sorted((COCO_TINY / "images").glob("*.jpg")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for size in ((320, 320), (150, 150), (700, 700)):
            expected, mask = np.zeros((3, *size), np.uint8), np.zeros(size, np.uint8)
            letterbox(bgr, np.zeros(bgr.shape[:2], np.uint8), expected, mask)
            out = decode_batch([path.read_bytes()], size)[0]
            diff = np.abs(out.numpy().astype(int) - expected.astype(int))
            assert diff.max() <= 1, (path.name, size, diff.max())


def decode_batch(payloads: list[bytes], size: tuple[int, int]) -> torch.Tensor:
    """Photographs straight into the main process's decode (as the workers hand them on)."""
    batch = {"image": torch.zeros((len(payloads), 0, *size), dtype=torch.uint8), "key": ["k"] * len(payloads)}
    batch[JPEGS] = [Pending(p, "x.tar:k", exif_orientation(p)) for p in payloads]
    return BatchDecoder(torch.device("cpu"), "raise")(batch, Stats())["image"]


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")
@pytest.mark.parametrize("workers", [0, 2])
def test_augmented_photographs_match_the_cpu_paths_augment(tmp_path: Path, workers: int) -> None:
    """`Augment` on the device path: the same draws as the CPU path, so masks equal byte for byte, and
    images within rounding (measured: at most 0.3 levels on average, the 99th percentile 1 level): each
    photograph within 1 level on average, the median one's 99th percentile at 1 or less."""
    folder = build(tmp_path, tiny=True, count=16)
    options = {
        "batch_size": 4,
        "shuffle": False,
        "size": (320, 320),
        "augment": Augment(image_fill=7),
        "seed": 5,
    }
    cpu_loader = make_loader(folder, "train", **options, with_meta=True)
    our_loader = make_loader(
        folder, "train", **options, with_meta=True, num_workers=workers, decode_device="cpu"
    )
    for epoch in (0, 1):
        cpu_loader.set_epoch(epoch)
        our_loader.set_epoch(epoch)
        cpu, ours = list(cpu_loader), list(our_loader)
        assert_same_but_images(ours, cpu)
        means, p99 = image_differences(ours, cpu)
        assert max(means) < 1.0 and np.median(p99) <= 1, (means, p99)


def test_fixture_set_masks_and_targets_equal(tmp_path: Path) -> None:
    folder = build(tmp_path)
    assert_same_but_images(batches(folder, decode_device="cpu"), batches(folder))


@pytest.mark.parametrize("augment", [None, Augment()])
def test_resume_mid_epoch(tmp_path: Path, augment: Augment | None) -> None:
    folder = build(tmp_path)
    options: dict[str, Any] = {"size": SIZE, "seed": 3, "shuffle_buffer": 4, "augment": augment}
    loader = make_loader(folder, "train", 2, decode_device="cpu", **options)
    whole = [(b["key"], b["image"]) for b in make_loader(folder, "train", 2, decode_device="cpu", **options)]
    assert [keys for keys, _ in whole] == [b["key"] for b in make_loader(folder, "train", 2, **options)]
    iterator = iter(loader)
    first = next(iterator)
    state = loader.state_dict()
    iterator.close()
    again = make_loader(folder, "train", 2, decode_device="cpu", **options)
    again.load_state_dict(state)
    resumed = [(first["key"], first["image"]), *((b["key"], b["image"]) for b in again)]
    assert [keys for keys, _ in resumed] == [keys for keys, _ in whole]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, whole, strict=True))


def test_the_prefetcher_feeds_device_decoded_batches(tmp_path: Path) -> None:
    folder = build(tmp_path)
    feed = DevicePrefetcher(make_loader(folder, "train", 4, size=SIZE, decode_device="cpu"), "cpu", to_float)
    batch = next(iter(feed))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, *SIZE)
    assert batch["mask"].dtype == torch.int64 and float(batch["image"].max()) <= 1.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_turned_as_opencv_turns_it(orientation: int) -> None:
    image = Image.fromarray(photo_like(24, 40, orientation)[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    payload = buffer.getvalue()
    assert exif_orientation(payload) == orientation
    stored = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    turned = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    ours = orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0)
    np.testing.assert_array_equal(ours.numpy(), turned)


def test_the_area_resize_is_exact_on_whole_factors() -> None:
    image = torch.arange(2 * 4 * 6, dtype=torch.uint8).reshape(2, 4, 6)[None].expand(3, 2, 4, 6)[:, 0]
    expected = image.float().reshape(3, 2, 2, 3, 2).mean((2, 4)).round().to(torch.uint8)
    assert torch.equal(resize(image, 2, 3), expected)


def assemble(sample: dict[str, Any]) -> dict[str, Any]:
    schema = SampleSchema(image="jpg", channels=3, size=None, classes=tuple(map(str, range(8))))
    assembler = BytesAssembler(
        schema=schema, size=(32, 32), with_meta=True, allocate=lambda n: torch.zeros(n, dtype=torch.uint8)
    )

    return assembler([sample], raise_it)


def raise_it(exc: ShardFormatError) -> None:
    raise exc


@pytest.mark.parametrize("rule", sorted(set(rules()) - {"corrupt", "key of other pixels, full-size decode"}))
def test_the_workers_keep_the_photo_paths_rules(rule: str) -> None:
    """Every rule checked before decoding gives the photo path's message; a corrupt scan is found by the
    decode (below), and the pixels' hash is not checked, as with a scaled decode."""
    sample, message = rules()[rule]
    with pytest.raises(ShardFormatError, match=message):
        assemble(sample)


def corrupt_shard(folder: Path, out: Path) -> str:
    """The set's shard with the second JPEG cut before its scan; its key."""
    (shard,) = sorted(folder.glob("*.tar"))
    with tarfile.open(shard) as src, tarfile.open(out, "w") as dst:
        jpegs = 0
        bad = ""
        for info in src:
            handle = src.extractfile(info)
            assert handle is not None
            data = handle.read()
            if info.name.endswith(".jpg"):
                jpegs += 1
                if jpegs == 2:
                    data, bad = data[: data.index(b"\xff\xda") + 20], info.name.partition(".")[0]
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return bad


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_is_the_cpu_paths_error_or_skip(tmp_path: Path, workers: int) -> None:
    folder = build(tmp_path)
    bad_key = corrupt_shard(folder, tmp_path / "bad.tar")
    source = str(tmp_path / "bad.tar")
    options: dict[str, Any] = {"schema": folder, "num_workers": workers}
    with pytest.raises(ShardFormatError) as cpu_error:
        batches(source, **options)
    with pytest.raises(ShardFormatError) as our_error:
        batches(source, decode_device="cpu", **options)
    assert str(our_error.value) == str(cpu_error.value) and bad_key in str(our_error.value)
    assert "\n" not in str(our_error.value)
    results, masks = [], []
    for decode_device in (None, "cpu"):
        loader = make_loader(source, "train", 4, shuffle=False, size=SIZE, on_error="skip",
                             decode_device=decode_device, **options)  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = list(loader)
        assert any(issubclass(w.category, SkippedDataWarning) for w in caught)
        keys = [key for batch in got for key in batch["key"]]
        results.append((keys, loader.stats.samples_skipped, loader.stats.errors))
        masks.append(torch.cat([batch["mask"] for batch in got]))
        assert all(len(b["key"]) == len(b["image"]) == len(b["mask"]) for b in got)
    assert results[0] == results[1] and results[1][1] == 1 and bad_key not in results[1][0]
    assert torch.equal(masks[0], masks[1])  # the rows left are the same samples, the bad one's row gone


def test_settings_the_device_path_does_not_take_are_one_line_errors(tmp_path: Path) -> None:
    folder = build(tmp_path)
    refused = {
        "must be 'cpu', 'cuda'": {"decode_device": "tpu"},
        "transform runs on decoded pixels": {"decode_device": "cpu", "transform": lambda i, m: (i, m)},
    }
    if not torch.cuda.is_available():
        refused["no CUDA device here"] = {"decode_device": "cuda"}
    for message, options in refused.items():
        with pytest.raises(ConfigError, match=message) as error:
            make_loader(folder, "train", 4, size=SIZE, **options)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="stores png images"):
        check_decode_options("cpu", size=SIZE, transform=None, image_member="png")
    with pytest.raises(ConfigError, match="needs size"):
        check_decode_options("cpu", size=None, transform=None, image_member="jpg")


def test_only_photographs_reach_the_device_path() -> None:
    sample = jpeg_sample(photo_like(24, 32, 1), np.zeros((24, 32), np.uint8))
    sample["png"] = sample.pop("jpg")
    assembler = BytesAssembler(
        schema=None, size=(32, 32), with_meta=False, allocate=lambda n: torch.zeros(n, dtype=torch.uint8)
    )
    with pytest.raises(ShardFormatError, match="only JPEG photographs are decoded on the device"):
        assembler([sample], raise_it)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and torchvision")
def test_cuda_decode_matches_the_cpu_decode(tmp_path: Path) -> None:
    """nvjpeg's IDCT is not libjpeg-turbo's: images within 1 level on average, masks exact, on the GPU."""
    folder = build(tmp_path)
    cuda = batches(folder, decode_device="cuda", num_workers=2)
    cpu = batches(folder, decode_device="cpu")
    assert_same_but_images([{**b, "image": b["image"].cpu()} for b in cuda], cpu)
    for a, b in zip(cuda, cpu, strict=True):
        assert a["image"].device.type == "cuda" and a["mask"].device.type == "cpu"
        assert (a["image"].cpu().int() - b["image"].int()).abs().float().mean() < 1.0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and torchvision")
def test_cuda_decode_through_the_prefetcher(tmp_path: Path) -> None:
    folder = build(tmp_path)
    loader = make_loader(folder, "train", 4, size=SIZE, decode_device="cuda")
    for batch in DevicePrefetcher(loader, "cuda", transform=to_float):
        assert batch["image"].is_cuda and batch["mask"].is_cuda and batch["image"].dtype == torch.float32
