"""The photo path's JPEG decoder (`segshards.loaders.jpeg`): simplejpeg's pixels are OpenCV's at every
libjpeg-turbo scale, and what simplejpeg would decode otherwise (EXIF turns, grey, damage) goes through
OpenCV."""

import io
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from segshards.loaders import jpeg
from segshards.loaders.jpeg import FLAGS, decode_bgr, exif_orientation, has_exif
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.limits import check_image
from tests.test_photo import COCO_TINY, photo_like


def opencv(payload: bytes, denominator: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(payload, np.uint8), FLAGS[denominator])


def ours(payload: bytes, denominator: int) -> np.ndarray:
    return decode_bgr(payload, check_image(payload, "t"), denominator, "s.tar:k")


def encoded(image: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def with_exif(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of `image` whose EXIF says `orientation`, written by Pillow."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("denominator", [1, 2, 4, 8])
def test_simplejpeg_gives_opencvs_pixels_at_every_scale(denominator: int) -> None:
    photos = sorted(COCO_TINY.glob("images/*.jpg"))
    payloads = [p.read_bytes() for p in photos] or [encoded(photo_like(427, 640, s)) for s in range(4)]
    for payload in payloads:
        assert np.array_equal(ours(payload, denominator), opencv(payload, denominator))


def test_real_photographs_turned_or_grey_are_opencvs_pixels_at_every_scale() -> None:
    """The coco-tiny photographs given each EXIF turn, and as grey JPEGs: what OpenCV gives at every scale."""
    photos = sorted(COCO_TINY.glob("images/*.jpg"))[:8]
    pictures = [cv2.imread(str(p)) for p in photos] or [photo_like(427, 640, s) for s in range(2)]
    for picture in pictures:
        payloads = [with_exif(picture, o) for o in range(2, 9)] + [encoded(picture[:, :, 1])]
        for payload in payloads:
            for denominator in FLAGS:
                assert np.array_equal(ours(payload, denominator), opencv(payload, denominator)), denominator


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 4), (17, 3), (16, 16), (19, 41), (37, 22), (64, 61)])
def test_tiny_images_decode_at_exactly_opencvs_scale(shape: tuple[int, int]) -> None:
    payload = encoded(np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8))
    for denominator in FLAGS:
        assert np.array_equal(ours(payload, denominator), opencv(payload, denominator)), denominator


def test_the_fast_decoder_is_the_one_used_for_a_plain_photograph(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(jpeg, "cv2_decode", lambda *args: calls.append(1))
    ours(encoded(photo_like(120, 160, 1)), 2)
    assert calls == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_turn_is_applied_as_opencv_applies_it(
    orientation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = with_exif(photo_like(96, 160, 2), orientation)
    assert has_exif(payload) and exif_orientation(payload) == orientation
    expected = {k: opencv(payload, k) for k in FLAGS}
    monkeypatch.setattr(jpeg, "cv2_decode", no_opencv)  # simplejpeg's strict decode, turned afterwards
    for denominator in FLAGS:
        assert np.array_equal(ours(payload, denominator), expected[denominator]), denominator


def test_a_grey_jpeg_decodes_to_opencvs_three_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = cv2.imencode(".jpg", photo_like(64, 80, 3)[:, :, 0])[1].tobytes()
    assert not has_exif(payload)
    expected = {k: opencv(payload, k) for k in FLAGS}
    monkeypatch.setattr(jpeg, "cv2_decode", no_opencv)
    for denominator in FLAGS:
        assert np.array_equal(ours(payload, denominator), expected[denominator]), denominator


def no_opencv(*args: Any) -> None:
    raise AssertionError("decoded by OpenCV")


@pytest.mark.parametrize("keep", [20, 2000])  # OpenCV refuses the first and decodes the second
def test_a_truncated_scan_is_what_opencv_makes_of_it(keep: int) -> None:
    payload = encoded(photo_like(128, 160, 4), quality=75)
    cut = payload[: payload.index(b"\xff\xda") + keep]
    expected = opencv(cut, 1)
    if expected is None:
        with pytest.raises(ShardFormatError, match="undecodable jpg image"):
            ours(cut, 1)
    else:
        assert np.array_equal(ours(cut, 1), expected)


def test_a_jpeg_without_a_scan_is_one_error_naming_the_sample() -> None:
    payload = encoded(photo_like(64, 64, 5))
    cut = payload[: payload.index(b"\xff\xda") + 4]
    with pytest.raises(ShardFormatError, match=r"^s\.tar:k: undecodable jpg image"):
        ours(cut, 1)
