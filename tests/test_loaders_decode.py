"""Decoding: the fast PNG path against cv2, colour order, letterbox resizing, batch assembly and targets."""

import json

import cv2
import numpy as np
import pytest
import torch

from segshards.loaders.decode import BatchAssembler, decode_member, letterbox, unpack
from segshards.loaders.errors import ShardFormatError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import pixel_key
from segshards.writer.recipes.circle import circle_schema
from segshards.writer.recipes.grid import grid_schema


def plain(nbytes: int) -> torch.Tensor:
    return torch.full((nbytes,), 7, dtype=torch.uint8)  # not zeros: every byte used must be written


@pytest.mark.parametrize("shape", [(56, 56), (1, 1), (3, 200), (31, 7)])
def test_the_writer_pngs_take_the_fast_path_and_match_cv2(shape: tuple[int, int]) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    payload = encode_png(array)
    fast = decode_member(payload, "png", "w")
    assert not fast.flags.writeable  # a view of the inflated rows: cv2 was not called
    np.testing.assert_array_equal(fast, array)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED), array)


def test_other_pngs_go_through_cv2() -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    filtered = cv2.imencode(".png", grey)[1].tobytes()  # cv2's default row filters
    decoded = decode_member(filtered, "png", "w")
    assert decoded.flags.writeable  # cv2's own array
    np.testing.assert_array_equal(decoded, grey)
    with pytest.raises(ShardFormatError, match="^where: corrupt PNG"):
        decode_member(encode_png(grey)[:60], "png", "where")
    with pytest.raises(ShardFormatError, match="^where: neither a PNG nor a JPEG image"):
        decode_member(b"not a png" * 10, "png", "where")


def test_jpeg_and_colour_png_come_out_rgb() -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 200  # red in cv2's BGR order
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    rgb = decode_member(jpeg, "jpg", "w")
    assert rgb.shape == (8, 8, 3) and rgb[..., 0].min() > 190 and rgb[..., 2].max() < 10
    png = cv2.imencode(".png", bgr)[1].tobytes()
    np.testing.assert_array_equal(decode_member(png, "png", "w"), bgr[..., ::-1])


def test_letterbox_scales_centres_and_pads_mask_with_ignore() -> None:
    image = np.full((20, 40, 3), 100, np.uint8)
    mask = np.zeros((20, 40), np.uint8)
    mask[:, 20:] = 3
    out_image, out_mask = np.empty((3, 32, 32), np.uint8), np.empty((32, 32), np.uint8)
    letterbox(image, mask, out_image, out_mask)
    # scale 32/40 = 0.8: content 16 rows x 32 columns, rows 8..23
    assert (out_mask[:8] == 255).all() and (out_mask[24:] == 255).all()
    assert (out_image[:, :8] == 0).all() and (out_image[:, 8:24] == 100).all()
    assert (out_mask[8:24, :16] == 0).all() and (out_mask[8:24, 16:] == 3).all()


def sample(image: np.ndarray, mask: np.ndarray, meta: dict) -> dict:
    return {
        "__key__": pixel_key(image),
        "__url__": "s.tar",
        "png": encode_png(image),
        "mask.png": encode_png(mask),
        "json": json.dumps(meta).encode(),
    }


def test_batch_assembly_with_circle_targets() -> None:
    image, mask = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28), np.eye(28, dtype=np.uint8)
    meta = {"label": 7, "circle": {"cx": 1.5, "cy": 2.5, "r": 3.0}, "source": {}}
    assemble = BatchAssembler(schema=circle_schema((28, 28)), size=None, with_meta=True, allocate=plain)
    packed = assemble([sample(image, mask, meta), sample(image.T, mask, {**meta, "label": 2})], _raise)
    assert packed["_buffer"].numel() == 2 * 8 + 2 * 12 + 2 * 784 * 2  # label, circle, image, mask: one buffer
    batch = unpack(packed)
    assert batch["key"] == [pixel_key(image), pixel_key(image.T)]
    assert batch["image"].shape == (2, 1, 28, 28) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (2, 28, 28) and batch["mask"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["image"][1, 0].numpy(), image.T)
    assert batch["label"].tolist() == [7, 2] and batch["label"].dtype == torch.int64
    assert batch["circle"].tolist() == [[1.5, 2.5, 3.0]] * 2 and batch["circle"].dtype == torch.float32
    assert batch["meta"][0]["label"] == 7


def _raise(exc: ShardFormatError) -> None:
    raise exc


def test_bad_samples_raise_or_are_skipped() -> None:
    image = np.zeros((56, 56), np.uint8)
    good = sample(image, image, {"digits": [1, 2, 3, 4]})
    no_digits = sample(image + 1, image, {"digit": 1})
    other_size = sample(image[:28], image[:28], {"digits": [1, 2, 3, 4]})
    assemble = BatchAssembler(schema=grid_schema((56, 56)), size=None, with_meta=False, allocate=plain)
    with pytest.raises(
        ShardFormatError, match=f"s.tar:{no_digits['__key__']}: metadata lacks a valid 'digits'"
    ):
        assemble([good, no_digits], _raise)
    with pytest.raises(ShardFormatError, match="pass size="):
        assemble([good, other_size], _raise)
    skipped: list[str] = []
    batch = unpack(assemble([no_digits, good, other_size, good], lambda exc: skipped.append(str(exc))))
    assert batch["key"] == [good["__key__"]] * 2 and batch["digits"].tolist() == [[1, 2, 3, 4]] * 2
    assert len(skipped) == 2
