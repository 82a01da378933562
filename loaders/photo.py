"""Photographs straight into a letterboxed batch slot: a JPEG decoded at the smallest libjpeg-turbo scale
that still covers the slot, resized once, its mask decoded once and resized nearest-neighbour only.

Profiled on 640x480-class COCO photographs letterboxed to 320x320, the generic path (full decode, the
format's sample check, then `letterbox`) spent more time making the RGB view contiguous for cv2 (a copy
with a negative stride, ~1 ms) than decoding, then resized all of it. Here libjpeg-turbo's DCT scaling
(1/2, 1/4, 1/8, through simplejpeg: `segshards.loaders.jpeg`) does most of the shrinking inside the
decoder, the channel order is reversed on the small result, and every array is written once, into the
batch buffer. libjpeg-turbo's other scales (3/8, 5/8, 6/8, 7/8) were measured and left out: they have no
SIMD inverse DCT, so a 6/8 decode of a 500x336 photograph took longer (1.96 ms) than a full one (1.52 ms).

The rules are `read_sample`'s (key, members, limits from the headers before any pixel is decoded, an 8-bit
JPEG, a one-channel mask of the image's size, a JSON object), with one exception: a scaled decode does
not see the full-size pixels, so the key is checked against their hash only when the JPEG is decoded at
full size, or when OpenCV decodes it (`segshards.loaders.jpeg.decode_checked`: the few JPEGs simplejpeg
leaves to it, CMYK or Adobe RGB, and any libjpeg-turbo warns of damage, so a cut file is refused at
any scale). The shard's bytes stay covered by its sha256 (`verify=`), which the writer
computed after hashing every image.

The pixels of a scaled decode are not those of decode-then-resize: libjpeg-turbo averages whole 2x2 (4x4,
8x8) blocks in the DCT domain where cv2 INTER_AREA averages decoded pixels over the exact scale. On the 16
coco-tiny photographs letterboxed to 320x320 the two differ by 0.5 levels (of 255) on average, at most 2.7
for one photograph; where a side is odd at the decode scale (427 rows -> 214) INTER_AREA's grid drifts by
up to half an output pixel, so single edge pixels differ by up to ~100 (`tests/test_photo.py` holds
every photograph under 3 on average and the median one's 99th percentile at 2 or less).
Masks are exact: nearest neighbour never makes a class id that was not in the source mask.

Augmented, a sample keeps a window of its resized image (about half of it on COCO-like photographs), and
only that window is decoded (`decode_window`: libjpeg-turbo's crop and skip, bit for bit the pixels of a
whole decode, ~15% fewer instructions on 150 coco-tiny-derived draws); where that binding is not built, or a
JPEG is one it leaves to the whole decode, the whole JPEG is decoded and the window cut from it. As with a
scaled decode, a window does not see the full-size pixels, so the key is not checked against their hash.

Where a photograph's time goes (timed per step, 2,000 coco-tiny-derived photographs letterboxed to
320x320, one process, 2.18 ms each): 67% in libjpeg-turbo (a quality-95 JPEG's entropy decoding does not
shrink with the scale: the half-size decode costs ~75% of the full one), 9% checking the members and
inflating the mask, 9% reading and hashing the shard and packing the batch, and 14% in the writes below,
each made once: RGB planes split straight into the batch, a mask reduced
by a whole factor as a strided slice, only the padding filled, and the fractional shrinks that a scaled
decode cannot cover made in two cheap steps (see `resize`).
"""

from typing import Any, NamedTuple

import cv2
import numpy as np

from segshards.loaders.augment import (
    Augment,
    Augmenting,
    Draw,
    Window,
    decode_denominator,
    draw,
    kept,
    window,
)
from segshards.loaders.jpeg import decode_bgr, decode_window, scaled_size
from segshards.writer.errors import ShardFormatError
from segshards.writer.format.images import decode_image
from segshards.writer.format.keys import is_key
from segshards.writer.format.limits import DecodeLimits, ImageHeader, check_image
from segshards.writer.format.sample import Layout, image_member, parse_meta
from segshards.writer.format.schema import IGNORE

JPEG_MEMBERS = ("jpg", "jpeg")
Box = tuple[int, int, int, int]  # top, left, height, width of the picture inside its slot


def fit(h: int, w: int, oh: int, ow: int) -> Box:
    """Where an (h, w) picture goes in an (oh, ow) slot: scaled to fit keeping its aspect ratio, centred."""
    scale = min(oh / h, ow / w)
    nh, nw = max(1, min(oh, round(h * scale))), max(1, min(ow, round(w * scale)))
    return (oh - nh) // 2, (ow - nw) // 2, nh, nw


def decode_scale(h: int, w: int, nh: int, nw: int) -> int:
    """The largest reduction (8, 4, 2, else 1) at which an (h, w) JPEG still covers (nh, nw)."""
    for denominator in (8, 4, 2):
        if scaled_size(h, denominator) >= nh and scaled_size(w, denominator) >= nw:
            return denominator
    return 1


def is_photo(sample: dict[str, Any], layout: Layout) -> bool:
    """Whether a sample takes the photo path: its image member is a JPEG."""
    return layout.image in JPEG_MEMBERS or (layout.image is None and any(k in sample for k in JPEG_MEMBERS))


def read_photo(
    sample: dict[str, Any],
    layout: Layout,
    where: str,
    out_image: np.ndarray,
    out_mask: np.ndarray,
    *,
    limits: DecodeLimits | None,
    check_key: bool,
    augmenting: Augmenting | None = None,
) -> dict[str, Any]:
    """Check one JPEG sample and letterbox it into `out_image` (3, H, W) RGB and `out_mask` (H, W), image
    padded 0 and mask IGNORE (with `augmenting`: its seeded resize, flip and crop instead); returns its
    metadata. Bad input is one ShardFormatError naming `where:key`."""
    key, at, payload, header, mask, meta = check_photo(sample, layout, where, limits)
    h, w = mask.shape
    if (h, w) not in ((header.height, header.width), (header.width, header.height)):  # EXIF may rotate
        raise ShardFormatError(f"{at}: mask is {w}x{h}, its image {header.width}x{header.height}")
    if augmenting is None:
        box = fit(h, w, *out_mask.shape)
        denominator = decode_scale(h, w, *box[2:])
        image = decode_whole(payload, header, denominator, (h, w), key, at, check_key=check_key)
        paste(image, mask, out_image, out_mask, box)
        return meta
    d = draw(augmenting.augment, augmenting.seed, augmenting.epoch, key, (h, w), out_mask.shape)
    denominator = decode_denominator(d, (h, w))
    cut = windows(d, (h, w), out_mask.shape, denominator)
    rows, cols = (cut.rows.start, cut.rows.stop), (cut.cols.start, cut.cols.stop)
    upright = (h, w) == (header.height, header.width)  # else the mask fits only once EXIF turns the image
    pixels = decode_window(payload, header, denominator, rows, cols) if upright else None
    if pixels is None:  # not built, left to the whole decode, or a mask the image's EXIF must turn to fit
        pixels = decode_whole(payload, header, denominator, (h, w), key, at, check_key=check_key)
        pixels = pixels[slice(*rows), slice(*cols)]
    paste_augmented(
        pixels, mask, out_image, out_mask, d=d, at=cut, denominator=denominator, augment=augmenting.augment
    )
    return meta


def decode_whole(
    payload: bytes,
    header: ImageHeader,
    denominator: int,
    shape: tuple[int, int],
    key: str,
    at: str,
    *,
    check_key: bool,
) -> np.ndarray:
    """The whole JPEG decoded at 1/denominator, turned as its EXIF says, checked against its (h, w) mask
    and, with `check_key`, its key against the hash of its pixels where `decode_bgr` sees them (full size,
    or through OpenCV; simplejpeg's strict scaled decode does not see them, and the shard's sha256 covers
    its bytes)."""
    h, w = shape
    image = decode_bgr(payload, header, denominator, at, key if check_key else None)
    if image.shape[:2] != (scaled_size(h, denominator), scaled_size(w, denominator)):
        raise ShardFormatError(
            f"{at}: mask is {w}x{h}, its image {header.height}x{header.width} once rotated"
        )
    return image


class CheckedPhoto(NamedTuple):
    """A photo sample's members once checked, its image not decoded: key, `where:key`, the JPEG, its
    header, the decoded mask and the metadata."""

    key: str
    at: str
    payload: bytes
    header: ImageHeader
    mask: np.ndarray
    meta: dict[str, Any]


def check_photo(
    sample: dict[str, Any], layout: Layout, where: str, limits: DecodeLimits | None
) -> CheckedPhoto:
    """`read_sample`'s rules for a JPEG sample, up to decoding its image: the key, the members, the limits
    from the headers, an 8-bit JPEG, a one-channel mask, a JSON object (the mask's size is the caller's
    to check, against the image's size as it will be decoded)."""
    key = str(sample["__key__"])
    at = f"{where}:{key}"
    if not is_key(key):
        raise ShardFormatError(f"{where}: member key {key!r} is not a 32-digit hex hash")
    ext = image_member(sample, layout, at)
    payload = sample[ext]
    header = check_image(payload, at, limits)  # the limits, before any pixel is decoded
    if header.kind != "jpeg" or ext not in JPEG_MEMBERS:
        raise ShardFormatError(f"{at}: {ext} member holds a {header.kind} image")
    if header.sample_bytes != 1:
        raise ShardFormatError(f"{at}: {ext} image has 16-bit samples; only 8-bit images are stored")
    mask = decode_image(sample[layout.mask], "png", at, limits)
    if mask.ndim != 2:
        raise ShardFormatError(f"{at}: mask has {mask.shape[2]} channels, expected one (class indices)")
    return CheckedPhoto(key, at, payload, header, mask, parse_meta(sample[layout.meta], at))


def paste(image: np.ndarray, mask: np.ndarray, out_image: np.ndarray, out_mask: np.ndarray, box: Box) -> None:
    """Resize BGR `image` once (INTER_AREA shrinking, INTER_LINEAR enlarging) and `mask` nearest-neighbour
    into their boxes; RGB planes out; only the rest of each slot is written with padding."""
    top, left, nh, nw = box
    if image.shape[:2] != (nh, nw):
        image = resize(image, nh, nw)
    pad_around(out_image, out_mask, box, (0, IGNORE))
    put_planes(image, out_image[:, top : top + nh, left : left + nw])
    put_mask(mask, out_mask[top : top + nh, left : left + nw])


def resize(image: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """`image` at (nh, nw): INTER_LINEAR enlarging; shrinking, INTER_AREA, but where the factor lies
    between 1 and 2 and is not whole (the scaled decode could not go below the box: 500x336 into 320x215)
    as INTER_LINEAR to twice the box then INTER_AREA by 2, since OpenCV's INTER_AREA at a fractional factor
    costs about as much as the decode (~1.5 ms against ~0.6 ms for the two steps, within ~1 level of it)."""
    h, w = image.shape[:2]
    if h <= nh and w <= nw:
        return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if (h % nh or w % nw) and h <= 2 * nh and w <= 2 * nw:
        image = cv2.resize(image, (2 * nw, 2 * nh), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)


class Windows(NamedTuple):
    """Where a draw's kept output comes from: the decoded rows and columns it resizes, the slice of the
    resized window that is kept, and the kept size (kh, kw)."""

    rows: Window
    cols: Window
    keep: tuple[slice, slice]
    kept: tuple[int, int]


def windows(d: Draw, shape: tuple[int, int], size: tuple[int, int], denominator: int) -> Windows:
    """The windows of draw `d` over an (h, w) image decoded at 1/denominator, for an output of `size`."""
    h, w = shape
    kh, kw = kept(d, size)
    column = d.rw - d.left - kw if d.flip else d.left  # the kept columns, before the flip
    rows, cols = window(d.top, kh, d.rh, h, denominator), window(column, kw, d.rw, w, denominator)
    keep = np.s_[rows.offset : rows.offset + kh, cols.offset : cols.offset + kw]
    return Windows(rows, cols, keep, (kh, kw))


def paste_augmented(
    image: np.ndarray,
    mask: np.ndarray,
    out_image: np.ndarray,
    out_mask: np.ndarray,
    *,
    d: Draw,
    at: Windows,
    denominator: int,
    augment: Augment,
) -> None:
    """Resize BGR `image`, the window `at` of the JPEG decoded at 1/denominator (`windows(d, ...)`), at the
    reference's scale into `out_image` (3, H, W) RGB, and the same window of the full-size `mask` into
    `out_mask` (H, W) (image bilinear, mask nearest-neighbour on pixel centres: class ids kept), flip, and
    pad where the resized image ends. Resizing a window (~0.25 ms for 320x320) rather than resampling the
    whole map with `warpAffine` (~0.8 ms) is the point; `window` keeps it on the reference's pixel grid."""
    rows, cols, keep, (kh, kw) = at
    assert image.shape[:2] == (rows.stop - rows.start, cols.stop - cols.start), (image.shape, at)
    resized = cv2.resize(image, None, fx=cols.scale, fy=rows.scale, interpolation=cv2.INTER_LINEAR)[keep]
    assert resized.shape[:2] == (kh, kw), (resized.shape, (kh, kw))
    pad_outside(out_image, (0, 0, kh, kw), augment.image_fill)
    put_planes(resized, out_image[:, :kh, :kw], flip=d.flip)
    paste_augmented_mask(mask, out_mask, d=d, at=at, denominator=denominator, fill=augment.mask_fill)


def paste_augmented_mask(
    mask: np.ndarray, out_mask: np.ndarray, *, d: Draw, at: Windows, denominator: int, fill: int
) -> None:
    """The mask's side of `paste_augmented`: the full-size `mask` cut to the windows `at` (given in pixels
    decoded at 1/denominator), resized nearest-neighbour on pixel centres, flipped, padded with `fill`."""
    rows, cols, keep, (kh, kw) = at
    k = denominator  # decoded pixel u covers source pixels [u k, u k + k)
    labels = cv2.resize(
        mask[rows.start * k : rows.stop * k, cols.start * k : cols.stop * k], None, fx=cols.scale / k,
        fy=rows.scale / k, interpolation=cv2.INTER_NEAREST_EXACT,
    )[keep]  # fmt: skip
    assert labels.shape == (kh, kw), (labels.shape, (kh, kw))
    pad_outside(out_mask, (0, 0, kh, kw), fill)
    if d.flip:
        cv2.flip(labels, 1, dst=out_mask[:kh, :kw])
    else:
        out_mask[:kh, :kw] = labels


def put_planes(image: np.ndarray, slot: np.ndarray, *, flip: bool = False) -> None:
    """BGR (h, w, 3) pixels into an RGB (3, h, w) slot, mirrored left to right if `flip`. `cv2.split`
    writes straight into the slot's planes when their rows are contiguous (the slot spans the batch's
    width); into narrower ones OpenCV's binding would go through a copy of each plane, ten times slower
    than splitting into new planes and copying those. Either way, about half of numpy's transposing copy."""
    if flip:
        image = cv2.flip(image, 1)
    elif not image.flags.c_contiguous:  # an augmented crop's strided view: split faster once copied
        image = np.ascontiguousarray(image)
    planes = [slot[2], slot[1], slot[0]]
    if planes[0].flags.c_contiguous:
        cv2.split(image, planes)
        return
    for plane, part in zip(planes, cv2.split(image), strict=True):
        plane[...] = part


def put_mask(mask: np.ndarray, target: np.ndarray, *, flip: bool = False) -> None:
    """`mask` resized nearest-neighbour into `target` (a view of the batch), mirrored if `flip`. A whole
    reduction (640x428 into 320x214) is a strided slice: the same pixels as cv2's INTER_NEAREST, half the
    time."""
    (h, w), (nh, nw) = mask.shape, target.shape
    if h % nh == 0 and w % nw == 0:
        small = mask[:: h // nh, :: w // nw]
    else:
        small = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    target[...] = small[:, ::-1] if flip else small


def pad_around(out_image: np.ndarray, out_mask: np.ndarray, box: Box, fills: tuple[int, int]) -> None:
    """Fill what lies outside `box` in the image slot (3, H, W) and the mask slot (H, W), and nothing
    else: the box is written next, so filling it too would touch every byte twice."""
    pad_outside(out_image, box, fills[0])
    pad_outside(out_mask, box, fills[1])


def pad_outside(out: np.ndarray, box: Box, value: int) -> None:
    """Fill what lies outside `box` in the last two axes of `out` with `value`."""
    top, left, nh, nw = box
    rows = out[..., top : top + nh, :]
    out[..., :top, :] = value
    out[..., top + nh :, :] = value
    rows[..., :left] = value
    rows[..., left + nw :] = value
