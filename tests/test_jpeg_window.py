"""The window decode of augmented photographs (`segshards.loaders.jpeg.decode_window`, the C binding in
`loaders/jpeg_window.c`): bit for bit the pixels of a whole decode at every scale, chroma subsampling,
progressive and restart-marked JPEGs, and on the real coco-tiny photographs; damage and bad arguments are
refusals, never a crash; the loader gives the same augmented batches with it and without it."""

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segshards.loaders import Augment, jpeg, make_loader
from segshards.loaders.jpeg import decode_bgr, decode_window, window_decoder_built
from segshards.writer.cli.main import main
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.limits import check_image
from tests.test_loader_augment import assert_same, rows
from tests.test_photo import COCO_TINY, photo_like

needs_binding = pytest.mark.skipif(not window_decoder_built(), reason="the window decoder was not built")
SAMPLING = {
    "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
}


def encode(image: np.ndarray, sampling: str = "420", *params: int) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SAMPLING[sampling], *params]
    return cv2.imencode(".jpg", image, flags)[1].tobytes()


def windows_of(h: int, w: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The whole image, its edges, windows starting and ending on 16-pixel (iMCU) boundaries, random ones."""
    rng = np.random.default_rng(seed)
    picks = [((0, h), (0, w)), ((0, 1), (w - 1, w)), ((h - 1, h), (0, 1))]
    if h > 33 and w > 33:
        picks += [((16, 32), (16, 32)), ((15, 33), (17, 31)), ((0, 16), (w - 16, w))]
    picks += [((h // 2, h // 2 + 1), (c, c + 1)) for c in (0, 1, 15, 16, 17, 31, 32) if c < w]  # narrow
    for _ in range(6):
        r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        picks.append(((r0, int(rng.integers(r0 + 1, h + 1))), (c0, int(rng.integers(c0 + 1, w + 1)))))
    return picks


def assert_windows_exact(payload: bytes, seed: int = 0) -> int:
    """Every window of `payload` at every scale against the whole decode; returns how many were checked."""
    header = check_image(payload, "t")
    checked = 0
    for k in (1, 2, 4, 8):
        whole = decode_bgr(payload, header, k, "t")
        h, w = whole.shape[:2]
        for rows_, cols in windows_of(h, w, seed + k):
            got = decode_window(payload, header, k, rows_, cols)
            assert got is not None, (k, rows_, cols)
            np.testing.assert_array_equal(
                got, whole[slice(*rows_), slice(*cols)], err_msg=f"1/{k} {rows_} {cols}"
            )
            checked += 1
    return checked


@needs_binding
@pytest.mark.parametrize("sampling", sorted(SAMPLING))
@pytest.mark.parametrize("shape", [(480, 640), (427, 640), (333, 500), (17, 23), (240, 321)])
def test_a_window_is_the_whole_decode_cut_bit_for_bit(shape: tuple[int, int], sampling: str) -> None:
    assert assert_windows_exact(encode(photo_like(*shape, seed=shape[0]), sampling)) > 0


@needs_binding
@pytest.mark.parametrize(
    "params",
    [[cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 3]],
    ids=["progressive", "restarts"],
)
def test_progressive_and_restart_marked_jpegs_too(params: list[int]) -> None:
    assert_windows_exact(encode(photo_like(300, 410, seed=5), "420", *params))


@needs_binding
@pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")
def test_the_real_photographs_bit_for_bit() -> None:
    paths = sorted((COCO_TINY / "images").glob("*.jpg"))
    assert len(paths) == 16
    assert sum(assert_windows_exact(p.read_bytes(), seed=i) for i, p in enumerate(paths)) >= 16 * 4 * 9


def test_what_it_does_not_decode_is_left_to_the_whole_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    grey = cv2.imencode(".jpg", photo_like(64, 64, 1)[:, :, 0])[1].tobytes()
    tiny = encode(photo_like(12, 40, 1))
    for payload in (grey, tiny):  # not YCbCr; under one MCU
        assert decode_window(payload, check_image(payload, "t"), 1, (0, 4), (0, 4)) is None
    payload = encode(photo_like(64, 64, 1))
    monkeypatch.setattr(jpeg, "_jpeg_window", None)  # not built
    assert not window_decoder_built()
    assert decode_window(payload, check_image(payload, "t"), 1, (0, 4), (0, 4)) is None


@needs_binding
def test_damage_in_the_window_is_a_refusal_never_a_crash() -> None:
    payload = encode(photo_like(256, 256, 2))
    header = check_image(payload, "t")
    cut = payload[: len(payload) // 2]  # the scan ends half-way: the rows below it are gone
    assert decode_window(cut, header, 1, (200, 256), (0, 256)) is None
    rng = np.random.default_rng(0)
    for _ in range(300):  # flipped bytes anywhere: pixels or None, and the process lives on
        damaged = bytearray(payload)
        for at in rng.integers(2, len(payload), 4):
            damaged[at] = int(rng.integers(0, 256))
        got = decode_window(bytes(damaged), header, 2, (10, 100), (5, 120))
        assert got is None or got.shape == (90, 115, 3)


@needs_binding
@pytest.mark.parametrize(
    "damage",
    [lambda p: p[: len(p) * 6 // 10], lambda p: p[:-2], lambda p: p[: len(p) * 6 // 10] + b"\xff\xd9"],
    ids=["cut", "no-end-marker", "cut-then-end-marker"],
)
def test_damage_below_the_window_is_left_to_the_whole_decode(damage: Any) -> None:
    """The window is the top rows, the damage well below them: the whole decode decides (it refuses a cut
    scan, OpenCV takes one ended by a marker), whatever the window; else a sample would be refused in the
    epochs whose crop reaches the damage and accepted in the others."""
    payload = damage(encode(photo_like(480, 640, 4)))
    header = check_image(payload, "t")
    assert decode_window(payload, header, 1, (0, 32), (0, 64)) is None
    assert decode_window(payload, header, 2, (0, 16), (0, 32)) is None


def test_a_cut_scan_is_refused_by_the_whole_decode() -> None:
    payload = encode(photo_like(480, 640, 4))
    with pytest.raises(ShardFormatError):
        decode_bgr(payload[:-2], check_image(payload, "t"), 1, "t")


def scans_cut(payload: bytes, keep: int) -> bytes:
    """A progressive JPEG with only its first `keep` scans, then its end marker: valid, and short of full
    precision (libjpeg-turbo then smooths blocks, reading their neighbours)."""
    starts = [i for i in range(len(payload) - 1) if payload[i : i + 2] == b"\xff\xda"]
    return payload[: starts[keep]] + b"\xff\xd9"


@needs_binding
def test_a_progressive_jpeg_short_of_its_scans_goes_to_the_whole_decode(tmp_path: Path) -> None:
    payload = scans_cut(encode(photo_like(240, 320, 6), "420", cv2.IMWRITE_JPEG_PROGRESSIVE, 1), keep=3)
    header = check_image(payload, "t")
    assert decode_bgr(payload, header, 1, "t").shape == (240, 320, 3)  # a whole decode takes it
    assert decode_window(payload, header, 1, (0, 16), (100, 200)) is None


@needs_binding
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((3, 0, 4, 0, 4, np.empty((4, 4, 3), np.uint8)), "denominator"),
        ((1, 4, 4, 0, 4, np.empty((0, 4, 3), np.uint8)), "empty"),
        ((1, 0, 4, 0, 4, np.empty((4, 5, 3), np.uint8)), "rows x columns"),
        ((1, 0, 4, 0, 4, np.empty((4, 8, 3), np.uint8)[:, ::2]), "read-write bytes-like"),  # not contiguous
        ((1, 60, 70, 0, 4, np.empty((10, 4, 3), np.uint8)), "outside"),
    ],
)
def test_bad_arguments_are_an_error(args: tuple, reason: str) -> None:
    payload = encode(photo_like(64, 64, 3))
    with pytest.raises((ValueError, TypeError), match=reason):
        jpeg._jpeg_window.decode_window(payload, *args)


def test_it_is_built_where_libjpeg_turbos_headers_are() -> None:
    """`pip install` builds it optionally: where the headers are, a failed build would leave the loader on
    the whole decode without a word, so this says so."""
    if not (Path("/usr/include/jpeglib.h").is_file() and shutil.which("cc")):
        pytest.skip("no libjpeg headers or C compiler here")
    assert window_decoder_built()


@needs_binding
@pytest.mark.skipif(not COCO_TINY.is_dir(), reason=f"coco-tiny not found ({COCO_TINY})")
def test_the_loader_gives_the_same_augmented_batches_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["build", "coco-semantic", "--annotations", str(COCO_TINY / "instances.json"), "--images"]
    argv += [str(COCO_TINY / "images"), "--train", "16", "--val", "0", "--test", "0", "--out", str(tmp_path)]
    assert main([*argv, "--jobs", "1"]) == 0
    loader = make_loader(tmp_path, "train", 4, seed=7, size=(320, 320), augment=Augment())
    windowed = rows(loader)
    monkeypatch.setattr(jpeg, "_jpeg_window", None)
    assert_same(windowed, rows(make_loader(tmp_path, "train", 4, seed=7, size=(320, 320), augment=Augment())))
    assert len(windowed) == 16
