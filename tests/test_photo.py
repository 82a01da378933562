"""The photo path (`segshards.loaders.photo`): the decode scale it picks, its pixels against a full decode
then resize (within the documented tolerance), masks exact, and the sample rules it keeps."""

import struct
import tarfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from segshards.loaders import make_loader
from segshards.loaders.decode import letterbox
from segshards.loaders.photo import decode_scale, fit, put_mask, put_planes, read_photo, resize
from segshards.writer.cli.main import main
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.sample import Layout
from tests.coco_fixtures import write_coco

LAYOUT = Layout("jpg")
REPO = Path(__file__).resolve().parents[1]
# The project keeps coco-tiny in a `shared/` folder beside the checkout (or beside the worktrees' folder).
SHARED = [p for p in (REPO / "shared", REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()]
COCO_TINY = (SHARED[0] if SHARED else REPO / "shared") / "data" / "coco-tiny"
MEAN_TOLERANCE, P99_TOLERANCE = 2.0, 8  # levels of 255: interpolation error only (see the module's docstring)


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """A BGR picture with a photograph's spectrum: smooth gradients, blurred texture, a few edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200, y / h * 180, (x + y) / (w + h) * 220], axis=2)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    image = np.clip(base + texture, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (w // 5, h // 4), (w // 2, h // 2), (30, 200, 90), -1)
    return image


def jpeg_sample(image: np.ndarray, mask: np.ndarray, quality: int = 92) -> dict[str, Any]:
    payload = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    return {
        "__key__": pixel_key(decoded),
        "__url__": "s.tar",
        "jpg": payload,
        "mask.png": encode_png(mask),
        "json": b'{"image_id": 1}',
    }


def class_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 3, 7, -1)
    mask[: h // 6, : w // 6] = 3
    mask[-5:, :] = 255
    return mask


def through_photo_path(sample: dict[str, Any], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    out_image, out_mask = np.empty((3, *size), np.uint8), np.empty(size, np.uint8)
    read_photo(sample, LAYOUT, "s.tar", out_image, out_mask, limits=None, check_key=True)
    return out_image, out_mask


def reference(sample: dict[str, Any], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode everything, then letterbox (INTER_AREA): what the loader did before the photo path."""
    image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    mask = cv2.imdecode(np.frombuffer(sample["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    out_image, out_mask = np.empty((3, *size), np.uint8), np.empty(size, np.uint8)
    letterbox(image, mask, out_image, out_mask)
    return out_image, out_mask


def assert_close(ours: np.ndarray, truth: np.ndarray) -> None:
    diff = np.abs(ours.astype(np.int16) - truth.astype(np.int16))
    assert diff.mean() < MEAN_TOLERANCE, diff.mean()
    assert np.percentile(diff, 99) <= P99_TOLERANCE, np.percentile(diff, 99)


@pytest.mark.parametrize(
    ("h", "w", "slot", "denominator"),
    [
        (480, 640, (320, 320), 2),
        (480, 640, (120, 160), 4),
        (3000, 4000, (320, 320), 8),
        (336, 500, (320, 320), 1),
    ],
)
def test_the_smallest_decode_that_covers_the_slot(
    h: int, w: int, slot: tuple[int, int], denominator: int
) -> None:
    _, _, nh, nw = fit(h, w, *slot)
    assert decode_scale(h, w, nh, nw) == denominator


def test_fit_centres_and_keeps_the_aspect_ratio() -> None:
    assert fit(480, 640, 320, 320) == (40, 0, 240, 320)
    assert fit(640, 480, 320, 320) == (0, 40, 320, 240)
    assert fit(10, 10, 320, 320) == (0, 0, 320, 320)


@pytest.mark.parametrize(
    ("h", "w", "size"), [(480, 640, (320, 320)), (427, 640, (160, 160)), (500, 375, (320, 320))]
)
def test_scaled_decode_is_decode_then_resize_within_tolerance(h: int, w: int, size: tuple[int, int]) -> None:
    sample = jpeg_sample(photo_like(h, w, seed=h + w), class_mask(h, w))
    image, mask = through_photo_path(sample, size)
    truth_image, truth_mask = reference(sample, size)
    assert_close(image, truth_image)
    np.testing.assert_array_equal(mask, truth_mask)  # nearest neighbour, the same box: identical


def test_masks_keep_exact_class_ids() -> None:
    mask = np.random.default_rng(3).choice(np.array([0, 5, 9, 200], np.uint8), size=(480, 640))
    _, out = through_photo_path(jpeg_sample(photo_like(480, 640, 1), mask), (100, 100))
    assert set(np.unique(out)) <= {0, 5, 9, 200, 255}
    assert (out[:12] == 255).all() and (out[12:87] != 255).all()  # 75 rows of picture, centred


def test_the_batch_is_rgb() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    image[:] = (255, 0, 0)  # pure blue in OpenCV's BGR
    out, _ = through_photo_path(jpeg_sample(image, class_mask(480, 640)), (320, 320))
    assert out[2, 160, 160] > 240 and out[0, 160, 160] < 15  # blue plane full, red empty
    assert (out[:, :40] == 0).all() and (out[:, 280:] == 0).all()  # padding rows


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")
def test_real_photographs_within_tolerance() -> None:
    """On the 16 coco-tiny photographs: each within 3 levels on average; half of them with 99% of values
    within 2 (an odd size at the decode scale shifts edges by up to half a pixel: those differ more)."""
    p99 = []
    for path in sorted((COCO_TINY / "images").glob("*.jpg")):
        payload = path.read_bytes()
        decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        sample = {**jpeg_sample(decoded, class_mask(*decoded.shape[:2])), "jpg": payload}
        sample["__key__"] = pixel_key(decoded)
        image, _ = through_photo_path(sample, (320, 320))
        diff = np.abs(image.astype(np.int16) - reference(sample, (320, 320))[0].astype(np.int16))
        assert diff.mean() < 3.0, (path.name, diff.mean())
        p99.append(np.percentile(diff, 99))
    assert len(p99) == 16 and np.median(p99) <= 2, p99


def huge_header(payload: bytes) -> bytes:
    data = bytearray(payload)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    return bytes(data)


def rules() -> dict[str, tuple[dict[str, Any], str]]:
    good = jpeg_sample(photo_like(480, 640, 5), class_mask(480, 640))
    small = jpeg_sample(photo_like(48, 64, 5), class_mask(48, 64))
    return {
        "over the pixel limit": (
            {**good, "jpg": huge_header(good["jpg"])},
            r"s.tar:\w+: jpeg image is 60000x60000 pixels, over the limit",
        ),
        "corrupt": ({**good, "jpg": good["jpg"][:600]}, r"s.tar:\w+: undecodable jpg image"),
        "png in a jpg member": (
            {**good, "jpg": good["mask.png"]},
            r"s.tar:\w+: jpg member holds a png image",
        ),
        "mask of another size": (
            {**good, "mask.png": encode_png(np.zeros((480, 600), np.uint8))},
            r"s.tar:\w+: mask is 600x480, its image 640x480",
        ),
        "colour mask": (
            {**good, "mask.png": encode_png(np.zeros((480, 640, 3), np.uint8))},
            r"s.tar:\w+: mask has 3 channels",
        ),
        "metadata not an object": ({**good, "json": b"[1]"}, r"s.tar:\w+: json metadata is a list"),
        "missing member": ({k: v for k, v in good.items() if k != "json"}, r"s.tar:\w+: sample has members"),
        "key of other pixels, full-size decode": (
            {**small, "__key__": "0" * 32},
            r"s.tar:0{32}: key does not match the hash of its image pixels",
        ),
    }


@pytest.mark.parametrize("rule", sorted(rules()))
def test_bad_samples_are_one_clear_error(rule: str) -> None:
    sample, message = rules()[rule]
    with pytest.raises(ShardFormatError, match=message):
        through_photo_path(sample, (320, 320))


def test_a_scaled_decode_does_not_rehash_the_full_pixels() -> None:
    """Documented: the key is checked only when the JPEG is decoded at full size (the shard's sha256
    covers the bytes)."""
    good = jpeg_sample(photo_like(480, 640, 5), class_mask(480, 640))
    through_photo_path({**good, "__key__": "0" * 32}, (320, 320))


def shard_samples(folder: Path) -> dict[str, dict[str, Any]]:
    """Every sample of a set's shards, by key, as raw members."""
    samples: dict[str, dict[str, Any]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                handle = tar.extractfile(info)
                assert handle is not None
                samples.setdefault(key, {"__key__": key, "__url__": str(shard)})[ext] = handle.read()
    return samples


def test_the_loader_letterboxes_a_coco_set_through_the_photo_path(tmp_path: Path) -> None:
    fixture = write_coco(tmp_path / "src")
    argv = ["build", "coco-semantic", *fixture.args(), "--out", str(tmp_path / "set"), "--jobs", "1"]
    assert main([*argv, "--train", "6", "--val", "0", "--test", "0"]) == 0
    raw = shard_samples(tmp_path / "set")
    loader = make_loader(tmp_path / "set", "train", 4, shuffle=False, size=(24, 32), verify="before")
    seen = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 24, 32) and batch["mask"].shape[1:] == (24, 32)
        for key, image, mask in zip(batch["key"], batch["image"], batch["mask"], strict=True):
            expected_image, expected_mask = through_photo_path(raw[key], (24, 32))
            np.testing.assert_array_equal(image.numpy(), expected_image)
            np.testing.assert_array_equal(mask.numpy(), expected_mask)
            seen += 1
    assert seen == 6


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("width", [40, 33])  # the whole slot's width (planes contiguous), or narrower
def test_planes_are_rgb_and_flipped_in_place(width: int, flip: bool) -> None:
    image = np.random.default_rng(width).integers(0, 256, (20, width, 3), dtype=np.uint8)
    out = np.zeros((3, 30, 40), np.uint8)
    slot = out[:, 5:25, :width]
    put_planes(image, slot, flip=flip)
    expected = image[:, ::-1] if flip else image
    np.testing.assert_array_equal(slot, expected[:, :, ::-1].transpose(2, 0, 1))
    assert (out[:, :5] == 0).all() and (out[:, 25:] == 0).all() and (out[:, :, width:] == 0).all()


@pytest.mark.parametrize("shape", [(428, 640), (427, 640), (60, 90)])
def test_masks_are_cv2_nearest_whatever_the_factor(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(1).integers(0, 9, shape, dtype=np.uint8)
    target = np.zeros((214, 320), np.uint8)
    put_mask(mask, target)
    np.testing.assert_array_equal(target, cv2.resize(mask, (320, 214), interpolation=cv2.INTER_NEAREST))


def test_fractional_shrinks_stay_near_inter_area_and_whole_ones_are_it() -> None:
    image = photo_like(336, 500, 3)
    two_step = resize(image, 215, 320)  # a factor of 1.56: linear to twice the box, then area by 2
    area = cv2.resize(image, (320, 215), interpolation=cv2.INTER_AREA)
    assert two_step.shape == area.shape and np.abs(two_step.astype(np.int16) - area).mean() < 1.0
    big = photo_like(900, 1200, 4)  # a factor of 3.75: beyond two, INTER_AREA as it is
    np.testing.assert_array_equal(
        resize(big, 240, 320), cv2.resize(big, (320, 240), interpolation=cv2.INTER_AREA)
    )


@pytest.mark.parametrize("device", [False, True])
def test_a_failed_first_photo_leaves_its_slots_to_the_next(device: bool) -> None:
    """In skip mode a batch whose first photo fails once its slots are made (its mask does not fit) takes
    them once: made again, they would take a second share of a worker's ring slot."""
    from segshards.loaders.decode import BatchAssembler, unpack
    from segshards.loaders.device_decode import BytesAssembler
    from segshards.writer.format.schema import SampleSchema

    good = [jpeg_sample(photo_like(120, 160, s), class_mask(120, 160)) for s in (1, 2)]
    bad = {**good[0], "__key__": "a" * 32, "mask.png": encode_png(np.zeros((100, 160), np.uint8))}
    sizes: list[int] = []

    def allocate(nbytes: int) -> torch.Tensor:
        sizes.append(nbytes)
        return torch.zeros(nbytes, dtype=torch.uint8)

    kind = BytesAssembler if device else BatchAssembler
    assembler = kind(schema=SampleSchema("jpg", 3, None, ("a", "b")), size=(64, 64), with_meta=False,
                     allocate=allocate)  # fmt: skip
    errors: list[ShardFormatError] = []
    batch = unpack(assembler([bad, *good], errors.append))
    assert len(sizes) == 1, sizes
    assert [str(e).split(": ", 1)[1] for e in errors] == ["mask is 160x100, its image 160x120"]
    assert batch["key"] == [g["__key__"] for g in good] and batch["mask"].shape == (2, 64, 64)
    np.testing.assert_array_equal(batch["mask"][0].numpy(), through_photo_path(good[0], (64, 64))[1])


@pytest.mark.parametrize("device", [False, True])
def test_a_batch_whose_every_photo_fails_carries_no_arrays(device: bool) -> None:
    """Nothing for the main process to unpack or decode (nvjpeg refuses an empty list), and no buffer
    kept by the worker until its next batch."""
    from segshards.loaders.decode import BatchAssembler
    from segshards.loaders.device_decode import BatchDecoder, BytesAssembler
    from segshards.loaders.stages import Stats
    from segshards.writer.format.schema import SampleSchema

    good = jpeg_sample(photo_like(120, 160, 1), class_mask(120, 160))
    bad = [
        {**good, "__key__": f"{k:032x}", "mask.png": encode_png(np.zeros((100, 160), np.uint8))}
        for k in (1, 2)
    ]
    kind = BytesAssembler if device else BatchAssembler
    assembler = kind(schema=SampleSchema("jpg", 3, None, ("a", "b")), size=(64, 64), with_meta=False,
                     allocate=lambda n: torch.zeros(n, dtype=torch.uint8))  # fmt: skip
    errors: list[ShardFormatError] = []
    batch = assembler(bad, errors.append)
    assert len(errors) == 2 and batch["key"] == [] and "_buffer" not in batch and assembler.slots is None
    if device:  # and the main process never hands nvjpeg an empty list, which it refuses
        decoder = BatchDecoder(torch.device("cpu"), "skip")
        decoder.io = NoEmptyLists()
        empty = {"key": [], "image": torch.zeros((0, 0, 64, 64), dtype=torch.uint8), "_jpegs": []}
        assert decoder(empty, Stats())["key"] == []


class NoEmptyLists:
    """torchvision.io as nvjpeg's binding behaves on an empty list."""

    class ImageReadMode:
        RGB = 0

    def decode_jpeg(self, data: list[Any], **_: Any) -> list[Any]:
        if not data:
            raise ValueError("Input list must contain at least one element")
        raise AssertionError("only empty lists here")


def cut_halfway(payload: bytes) -> bytes:
    """A JPEG whose scan ends halfway, at an end marker, zeros after it: the same length, and OpenCV
    decodes it with a warning, its lower half grey."""
    half = len(payload) // 2
    return payload[:half] + b"\xff\xd9" + bytes(len(payload) - half - 2)


@pytest.mark.parametrize("augmented", [False, True])
def test_a_cut_jpeg_is_refused_at_a_reduced_scale_too(augmented: bool) -> None:
    from segshards.loaders.augment import Augment, Augmenting

    good = jpeg_sample(photo_like(480, 640, 5), class_mask(480, 640))
    cut = {**good, "jpg": cut_halfway(good["jpg"])}
    out_image, out_mask = np.empty((3, 320, 320), np.uint8), np.empty((320, 320), np.uint8)
    augmenting = Augmenting(Augment(scale=(0.5, 0.5)), seed=0, epoch=0) if augmented else None  # 1/2 decode
    with pytest.raises(
        ShardFormatError, match=r"s.tar:\w+: damaged JPEG \(libjpeg-turbo: .*\); its pixels do not"
    ):
        read_photo(
            cut, LAYOUT, "s.tar", out_image, out_mask, limits=None, check_key=True, augmenting=augmenting
        )
    read_photo(good, LAYOUT, "s.tar", out_image, out_mask, limits=None, check_key=True, augmenting=augmenting)


def test_a_jpeg_with_a_stray_byte_keeps_its_key_and_passes() -> None:
    """libjpeg-turbo warns of extraneous bytes before a marker (TurboJPEG refuses the file), as of some
    COCO originals; OpenCV decodes them as the writer did, so the key matches and the sample is taken, with
    the same pixels."""
    good = jpeg_sample(photo_like(480, 640, 5), class_mask(480, 640))
    stray = dict(good)
    scan = good["jpg"].index(b"\xff\xda")
    stray["jpg"] = good["jpg"][:scan] + b"\x00\x00" + good["jpg"][scan:]
    stray["__key__"] = pixel_key(cv2.imdecode(np.frombuffer(stray["jpg"], np.uint8), cv2.IMREAD_COLOR))
    assert stray["__key__"] == good["__key__"]
    ours, theirs = through_photo_path(good, (320, 320)), through_photo_path(stray, (320, 320))
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def exif_turned(image: np.ndarray, orientation: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    out = BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def cmyk(image: np.ndarray) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.fromarray(image[:, :, ::-1]).convert("CMYK").save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize(
    ("kind", "refusal"),
    [
        ("exif-turned", r"damaged JPEG \(libjpeg-turbo: .*\); its pixels do not match its key"),
        ("grey", r"damaged JPEG \(libjpeg-turbo: .*\); its pixels do not match its key"),
        ("cmyk", r"key does not match the hash of its image pixels"),  # OpenCV's, which warns of nothing
    ],
)
def test_a_jpeg_cut_short_is_refused_at_a_reduced_scale_whatever_its_kind(kind: str, refusal: str) -> None:
    """Turned, grey or CMYK: cut short, refused at a reduced scale as verify refuses it; sound, it passes
    with OpenCV's pixels."""
    picture = photo_like(480, 640, 6)
    payloads = {
        "exif-turned": lambda: exif_turned(picture, 6),
        "grey": lambda: cv2.imencode(".jpg", picture[:, :, 0])[1].tobytes(),
        "cmyk": lambda: cmyk(picture),
    }
    payload = payloads[kind]()
    decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    mask = class_mask(*decoded.shape[:2])
    good = {**jpeg_sample(picture, mask), "jpg": payload, "__key__": pixel_key(decoded)}
    image, _ = through_photo_path(good, (320, 320))
    top, left, nh, nw = fit(*mask.shape, 320, 320)
    assert decode_scale(*mask.shape, nh, nw) == 2  # a reduced scale, where a sound JPEG's key is not checked
    truth = cv2.resize(decoded, (nw, nh), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1)
    assert_close(image[:, top : top + nh, left : left + nw], truth)
    through_photo_path(good, (704, 704))  # at full size, where the key is checked: it matches
    with pytest.raises(ShardFormatError, match=rf"^s.tar:\w+: {refusal}$"):
        through_photo_path({**good, "jpg": cut_halfway(payload)}, (320, 320))
