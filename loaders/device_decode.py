"""Photographs decoded on the device (`make_loader(..., decode_device="cuda")`): the workers check each JPEG
from its headers and hand its bytes on, the main process decodes the whole batch on the device and
letterboxes it there with torch ops.

Workers keep every rule of the photo path (`segshards.loaders.photo`): the key's form, the limits from the
JPEG's header before any pixel is decoded, an 8-bit JPEG, a one-channel mask of the image's size (EXIF
orientation included), a JSON object. Masks are decoded and letterboxed in the workers exactly as on the
CPU path (nearest neighbour, padding 255), so they are equal byte for byte. As with a scaled decode, the
key is not checked against the pixels' hash (they never exist on the CPU); the shard's sha256 covers the
bytes (`verify=`).

In the main process the batch's JPEGs are decoded at full size (nvjpeg through torchvision's `decode_jpeg`
on CUDA, one call for the batch; OpenCV with `decode_device="cpu"`), turned as their EXIF orientation says,
then letterboxed as the CPU path does: scaled to fit keeping the aspect ratio (area averaging when
shrinking, bilinear when enlarging: `torch.nn.functional.interpolate`), centred, padded 0. With `augment=`,
the workers make each sample's draw and apply it to the mask as the CPU path does, and the main process
applies it to the image (`augment_into`). The CPU path
decodes at a reduced libjpeg-turbo scale instead, so pixels differ by interpolation error only (the
tolerance is tests/test_decode_device.py's). A JPEG nvjpeg refuses is decoded by OpenCV and copied over;
one OpenCV refuses too is corrupt: one ShardFormatError, or with `on_error="skip"` counted in the loader's
stats and left out of its batch, as on the CPU path.
"""

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segshards.loaders.augment import Augmenting, Draw, decode_denominator, draw
from segshards.loaders.decode import BatchAssembler, target_value, where
from segshards.loaders.jpeg import TURNS, exif_orientation
from segshards.loaders.photo import JPEG_MEMBERS, check_photo, fit, is_photo, paste_augmented_mask, windows
from segshards.loaders.stages import Stats
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.images import cv2_decode
from segshards.writer.format.limits import DecodeLimits, check_batch
from segshards.writer.format.sample import Layout
from segshards.writer.format.schema import IGNORE
from segshards.writer.format.tar_writer import Sample

JPEGS = "_jpegs"  # the batch's key for its photographs still to decode (a list of `Pending`)
CV2_STORED = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # BGR as stored; the turn is applied after


@dataclass(frozen=True)
class Pending:
    """One photograph handed on undecoded: its JPEG bytes, `url:key` for errors, its EXIF orientation and,
    when augmented, its draw (the same one the CPU path makes: `segshards.loaders.augment.draw`)."""

    payload: bytes
    where: str
    orientation: int
    draw: Draw | None = None


def device_of(decode_device: str | None) -> torch.device | None:
    """The device `decode_device` names (None: decode in the workers), or a one-line ConfigError."""
    if decode_device is None:
        return None
    try:
        device = torch.device(decode_device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"decode_device {decode_device!r}: must be 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"decode_device {decode_device!r}: no CUDA device here; use 'cpu' or leave it out")
    if device.type == "cuda" and importlib.util.find_spec("torchvision") is None:
        raise ConfigError(
            f"decode_device {decode_device!r}: needs torchvision (pip install 'segshards[gpu]'), not installed"
        )
    return device


def check_decode_options(
    decode_device: str | None, *, size: Any, transform: Any, image_member: str | None
) -> None:
    """Refuse what the device path does not do, naming the option."""
    if decode_device is None:
        return
    device_of(decode_device)
    checks = [
        (size is not None, "decode_device: needs size=(H, W), the letterbox it applies on the device"),
        (transform is None, "decode_device: transform runs on decoded pixels in the workers; leave one out"),
        (
            image_member in (None, *JPEG_MEMBERS),
            f"decode_device: the set stores {image_member} images; only JPEG photographs decode on the device",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def hand_on(
    sample: Sample,
    layout: Layout,
    url: str,
    out_mask: np.ndarray,
    limits: DecodeLimits | None,
    augmenting: Augmenting | None = None,
) -> tuple[Pending, dict[str, Any]]:
    """Check a JPEG sample as the photo path does (no image pixel decoded), letterbox its mask into
    `out_mask` (H, W), or with `augmenting` draw its resize, flip and crop and apply them to the mask as
    the CPU path does; its JPEG to decode later and its metadata."""
    key, at, payload, header, mask, meta = check_photo(sample, layout, url, limits)
    orientation = exif_orientation(payload)
    h, w = mask.shape
    if (h, w) != ((header.width, header.height) if orientation >= 5 else (header.height, header.width)):
        turned = " once rotated" if orientation >= 5 else ""
        raise ShardFormatError(f"{at}: mask is {w}x{h}, its image {header.width}x{header.height}{turned}")
    if augmenting is not None:
        d = draw(augmenting.augment, augmenting.seed, augmenting.epoch, key, (h, w), out_mask.shape)
        cut = windows(d, (h, w), out_mask.shape, 1)
        paste_augmented_mask(mask, out_mask, d=d, at=cut, denominator=1, fill=augmenting.augment.mask_fill)
        return Pending(bytes(payload), at, orientation, d), meta
    top, left, nh, nw = fit(h, w, *out_mask.shape)
    out_mask.fill(IGNORE)
    target = out_mask[top : top + nh, left : left + nw]
    if (h, w) == (nh, nw):
        target[:] = mask
    else:
        cv2.resize(mask, (nw, nh), dst=target, interpolation=cv2.INTER_NEAREST)
    return Pending(bytes(payload), at, orientation), meta


class BytesAssembler(BatchAssembler):
    """The workers' batch for the device path: masks and targets packed as usual, an image field of no
    channels, and the photographs' JPEG bytes under `JPEGS` (the main process decodes them: `BatchDecoder`)."""

    def __call__(self, samples: list[Sample], on_error: Callable[[ShardFormatError], None]) -> dict[str, Any]:
        self.pending: list[Pending] = []
        batch = super().__call__(samples, on_error)
        batch[JPEGS] = self.pending
        return batch

    def _fill(self, sample: Sample, i: int, n: int) -> dict[str, Any]:
        if self.size is None or not is_photo(sample, self.layout):
            raise ShardFormatError(f"{where(sample)}: only JPEG photographs are decoded on the device")
        if self.slots is None:
            check_batch(n, 4 * self.size[0] * self.size[1], where(sample), self.limits)  # RGB on the device
        slots = self.batch_slots(n, 0, sample)
        url = str(sample.get("__url__", "?"))
        pending, meta = hand_on(sample, self.layout, url, slots.masks[i], self.limits, self.augmenting)
        for array, target in slots.targets:
            array[i] = target_value(target, meta, sample)
        self.pending.append(pending)
        return meta


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) pixels as stored, turned as EXIF `orientation` says: `segshards.loaders.jpeg.TURNS`
    (OpenCV's ExifTransform), in torch's dimensions."""
    if orientation not in TURNS:
        return image
    transpose, flip = TURNS[orientation]
    image = image.transpose(-1, -2) if transpose else image
    return image if flip is None else image.flip(FLIP_DIMS[flip])


FLIP_DIMS = {1: (-1,), 0: (-2,), -1: (-1, -2)}  # OpenCV's flip codes as (C, H, W) dimensions


def area_axis(pixels: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    """OpenCV's INTER_AREA shrinking axis `dim` of float `pixels` to `out`: output i is the mean over the
    exact span [i s, (i + 1) s) of the input, s = size / out, edge pixels in part. Computed from the running
    sum (exact in float32 for 8-bit rows up to 65,000 pixels), read at fractional edges: O(pixels) on a CPU,
    where the equivalent (out, size) weight matrix costs two dense matrix products."""
    size = pixels.shape[dim]
    edges = torch.arange(out + 1, device=pixels.device, dtype=torch.float64) * (size / out)
    index = edges.floor().long().clamp_(max=size - 1)
    shape = [1] * pixels.dim()
    shape[dim] = out + 1
    fraction = (edges - index).float().view(shape)
    zero = torch.zeros_like(pixels.narrow(dim, 0, 1))
    running = torch.cat([zero, pixels.cumsum(dim)], dim)  # running[k]: the sum of the first k pixels
    at_edges = running.index_select(dim, index) + fraction * pixels.index_select(dim, index)
    return (at_edges.narrow(dim, 1, out) - at_edges.narrow(dim, 0, out)) * (out / size)


def resize(image: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """(3, h, w) uint8 resized to (3, nh, nw) as the CPU path resizes: INTER_AREA's exact box averages when
    shrinking (`interpolate(mode="area")` rounds its boxes to whole pixels and differs by several levels at
    non-integer scales), bilinear on pixel centres otherwise."""
    h, w = image.shape[-2:]
    pixels = image.float()
    if nh <= h and nw <= w:
        resized = area_axis(area_axis(pixels, nw, 2), nh, 1)
    else:
        resized = F.interpolate(pixels[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def letterbox_into(image: torch.Tensor, out: torch.Tensor) -> None:
    """Fit (3, h, w) uint8 `image` into `out` (3, H, W) uint8 as `segshards.loaders.photo.paste` does:
    scaled to fit keeping its aspect ratio, centred, padded 0."""
    h, w = image.shape[-2:]
    top, left, nh, nw = fit(h, w, *out.shape[-2:])
    out.zero_()
    out[:, top : top + nh, left : left + nw] = image if (nh, nw) == (h, w) else resize(image, nh, nw)


def augment_into(image: torch.Tensor, d: Draw, out: torch.Tensor, fill: int) -> None:
    """Apply draw `d` to (3, h, w) uint8 `image` into `out` (3, H, W) as `segshards.loaders.photo.
    paste_augmented` does: where the CPU path decodes at 1/k (a draw that shrinks by k or more), the image
    is first averaged over k x k blocks, as libjpeg-turbo's scaled decode does; then only the kept window
    is resized bilinearly at the reference's exact scale (pixel centres, as OpenCV's INTER_LINEAR),
    flipped, and the rest of `out` filled with `fill`."""
    shape, size = (image.shape[-2], image.shape[-1]), (out.shape[-2], out.shape[-1])
    k = decode_denominator(d, shape)
    pixels = image.float()[None]
    if k > 1:
        pixels = F.avg_pool2d(pixels, k, ceil_mode=True)
    rows, cols, keep, (kh, kw) = windows(d, shape, size, k)
    # One more edge pixel repeated, as OpenCV's border: torch sizes the output floor(n * scale), OpenCV
    # round(n * scale), and the kept slice may reach that last pixel.
    part = F.pad(pixels[..., rows.start : rows.stop, cols.start : cols.stop], (0, 1, 0, 1), mode="replicate")
    resized = F.interpolate(
        part, scale_factor=(rows.scale, cols.scale), mode="bilinear", align_corners=False,
        recompute_scale_factor=False,
    )[0][(slice(None), *keep)]  # fmt: skip
    assert resized.shape[-2:] == (kh, kw), (resized.shape, (kh, kw))
    out.fill_(fill)
    kept_pixels = resized.round_().clamp_(0, 255).to(torch.uint8)
    out[:, :kh, :kw] = kept_pixels.flip(-1) if d.flip else kept_pixels


def cv2_rgb(pending: Pending) -> torch.Tensor:
    """(3, H, W) uint8 RGB as stored (no EXIF turn) by OpenCV, or the CPU path's one-line error."""
    bgr = cv2_decode(pending.payload, CV2_STORED, "jpg", pending.where)
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))


class BatchDecoder:
    """The main process's side: a batch's JPEGs decoded on `device` and letterboxed into its `image`
    (N, 3, H, W) uint8; a corrupt one raised (`on_error="raise"`) or counted in `stats` and its row left out.
    The batch's other tensors stay where they are (pinned CPU memory; `DevicePrefetcher` moves them)."""

    def __init__(self, device: torch.device, on_error: str, image_fill: int = 0) -> None:
        self.device, self.on_error, self.image_fill = device, on_error, image_fill
        self.io = importlib.import_module("torchvision.io") if device.type == "cuda" else None

    def __call__(self, batch: dict[str, Any], stats: Stats) -> dict[str, Any]:
        pending: list[Pending] | None = batch.pop(JPEGS, None)
        if not pending or "image" not in batch:  # nvjpeg refuses an empty list
            return batch
        decoded = self.decode(pending)
        keep = [i for i, image in enumerate(decoded) if not isinstance(image, ShardFormatError)]
        for error in (e for e in decoded if isinstance(e, ShardFormatError)):
            if self.on_error == "raise":
                raise error
            stats.add(str(error), shard=False)
        if len(keep) < len(decoded):
            batch = select_rows(batch, keep, len(decoded))
        n, _, h, w = batch["image"].shape
        images = torch.empty((n, 3, h, w), dtype=torch.uint8, device=self.device)
        for row, i in enumerate(keep):
            image = orient(decoded[i], pending[i].orientation)  # type: ignore[arg-type]
            d = pending[i].draw
            if d is None:
                letterbox_into(image, images[row])
            else:
                augment_into(image, d, images[row], self.image_fill)
        batch["image"] = images
        return batch

    def decode(self, pending: list[Pending]) -> list[torch.Tensor | ShardFormatError]:
        """Each JPEG as (3, H, W) uint8 RGB as stored, on the device; the error for one that is corrupt."""
        if self.io is not None:
            data = [torch.frombuffer(bytearray(p.payload), dtype=torch.uint8) for p in pending]
            try:
                return list(self.io.decode_jpeg(data, mode=self.io.ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one of them refused: find which, one by one
                return [self.decode_one(p, d) for p, d in zip(pending, data, strict=True)]
        return [self.decode_one(p, None) for p in pending]

    def decode_one(self, pending: Pending, data: torch.Tensor | None) -> torch.Tensor | ShardFormatError:
        """One JPEG by nvjpeg (when `data` is given), else by OpenCV (copied to the device)."""
        if self.io is not None and data is not None:
            try:
                return self.io.decode_jpeg(data, mode=self.io.ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                pass  # nvjpeg refuses some JPEGs OpenCV reads (CMYK, some progressive files)
        try:
            return cv2_rgb(pending).to(self.device)
        except ShardFormatError as exc:
            return exc


def select_rows(batch: dict[str, Any], keep: list[int], n: int) -> dict[str, Any]:
    """The batch less the rows not in `keep`: tensors of `n` rows and the per-sample lists (key, meta)."""
    index = torch.tensor(keep, dtype=torch.long)
    out: dict[str, Any] = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
            out[name] = value.index_select(0, index)
        elif isinstance(value, list) and len(value) == n:
            out[name] = [value[i] for i in keep]
        else:
            out[name] = value
    return out
