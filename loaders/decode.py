"""Decoding samples into batch arrays: each sample checked and decoded by the format's `read_sample` (the
rules `segshards verify` applies), then packed with the targets the set's schema declares (no recipe code:
any set with a schema loads).

Images come out as uint8 (N, C, H, W): C=1 for grey PNGs, C=3 RGB for JPEGs and colour PNGs; masks as uint8
(N, H, W). Float conversion and normalisation are left to the device (see `segshards.loaders.device`).

Variable-size images (COCO) need `size=(H, W)`. The policy is letterbox: the image is scaled to fit inside
(H, W) keeping its aspect ratio (cv2 INTER_AREA when shrinking, INTER_LINEAR when enlarging), the mask with
INTER_NEAREST, both centred; the border is 0 in the image and 255 (ignore) in the mask, so every labelled
pixel is kept and the padding is excluded from losses and metrics that honour `ignore_index=255`. JPEGs
take the photo path (`segshards.loaders.photo`): decoded at the smallest libjpeg-turbo scale that covers
their box, straight into the batch; the same box, the same rules, pixels within interpolation error.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from segshards.loaders.augment import Augmenting
from segshards.loaders.photo import is_photo, read_photo
from segshards.loaders.transform import Transforming, apply_transform
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.images import decode_image
from segshards.writer.format.limits import DecodeLimits, check_batch, default_limits
from segshards.writer.format.sample import Layout, read_sample
from segshards.writer.format.schema import IGNORE, SampleSchema, Target
from segshards.writer.format.tar_writer import Sample

# Whether each sample's key is checked against the hash of its decoded pixels, as `verify` does: xxh3 over
# the pixels costs ~1-3 us a 56x56 sample (a few % of its decode) and ~60 us a 640x480 photograph (under
# 1% of its JPEG decode), so the loader refuses exactly what `verify` refuses.
CHECK_KEYS = True


def decode_member(payload: bytes, ext: str, where: str, limits: DecodeLimits | None = None) -> np.ndarray:
    """An image member as (H, W) grey or (H, W, 3) RGB uint8; a mask member as (H, W). Decoded by the
    format's one decoder (`segshards.writer.format.images.decode_image`), under `limits`."""
    return as_rgb(decode_image(payload, ext, where, limits))


def as_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) pixels as RGB (a view); grey pixels as they are."""
    if image.ndim == 3:
        return image[:, :, 2::-1]  # drops alpha, reverses B, G, R
    return image


BUFFER, FIELDS, COUNT = "_buffer", "_fields", "_count"
TORCH_DTYPES = {"uint8": torch.uint8, "int64": torch.int64, "float32": torch.float32}
Field = tuple[str, int, str, tuple[int, ...]]  # name, byte offset in the batch buffer, dtype name, row shape


def letterbox(image: np.ndarray, mask: np.ndarray, out_image: np.ndarray, out_mask: np.ndarray) -> None:
    """Fit `image` (H, W) grey or (H, W, 3|4) BGR(A) and `mask` (H, W) into `out_image` (C, h, w) RGB and
    `out_mask` (h, w), centred. The image is resized as decoded and its channels reversed once small:
    making a full-size reversed view contiguous for cv2 cost more than the JPEG decode."""
    h, w = mask.shape
    oh, ow = out_mask.shape
    scale = min(oh / h, ow / w)
    nh, nw = max(1, min(oh, round(h * scale))), max(1, min(ow, round(w * scale)))
    top, left = (oh - nh) // 2, (ow - nw) // 2
    if (nh, nw) != (h, w):
        image = cv2.resize(
            image,
            (nw, nh),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        mask = cv2.resize(np.ascontiguousarray(mask), (nw, nh), interpolation=cv2.INTER_NEAREST)
    out_image.fill(0)
    out_mask.fill(IGNORE)
    place(image, out_image[:, top : top + nh, left : left + nw])
    out_mask[top : top + nh, left : left + nw] = mask


def place(image: np.ndarray, out: np.ndarray) -> None:
    """Copy (H, W) grey or (H, W, 3|4) BGR(A) pixels into a (C, H, W) RGB slot."""
    if image.ndim == 2:
        if out.shape[0] == 1:
            out[0] = image
        else:
            out[:] = image  # a grey image in a colour batch
    else:
        out[:] = as_rgb(image).transpose(2, 0, 1)


@dataclass
class Slots:
    """A batch's buffer, its layout, and numpy views of its arrays (filled in place)."""

    buffer: torch.Tensor
    fields: list[Field]
    images: np.ndarray  # (N, C, H, W)
    masks: np.ndarray  # (N, H, W)
    targets: list[tuple[np.ndarray, Target]]


class BatchAssembler:
    """Turns a list of raw samples into one packed batch: all arrays in one preallocated uint8 buffer.

    `allocate(nbytes)` makes the buffer; in DataLoader workers it hands out shared memory, so the batch
    crosses to the main process without another copy. `unpack` gives the user's dict of tensors.
    `limits` (default: `default_limits()`) bound each image and the batch (`segshards.writer.format.limits`).
    """

    def __init__(
        self,
        *,
        schema: SampleSchema | None,
        size: tuple[int, int] | None,
        with_meta: bool,
        allocate: Callable[[int], torch.Tensor],
        limits: DecodeLimits | None = None,
        augmenting: Augmenting | None = None,
        transforming: Transforming | None = None,
    ) -> None:
        self.limits = limits or default_limits()
        self.targets: tuple[Target, ...] = schema.targets if schema else ()
        self.layout = Layout(schema.image, schema.mask, schema.meta) if schema else Layout(None)
        self.size, self.with_meta, self.allocate = size, with_meta, allocate
        if augmenting is not None and size is None:
            raise ConfigError("augment needs size=(H, W): the crop's size")
        self.augmenting, self.transforming = augmenting, transforming
        self.slots: Slots | None = None  # the current batch's (`batch_slots`)

    def decode(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(image as decoded: grey, BGR or BGRA; mask; parsed metadata) of one sample, once it passes the
        format's `read_sample`: the rules `segshards verify` applies, so what verify refuses, the loader
        refuses."""
        url = str(sample.get("__url__", "?"))
        stored = read_sample(sample, self.layout, url, limits=self.limits, check_key=CHECK_KEYS)
        return stored.image, stored.mask, stored.meta

    def __call__(self, samples: list[Sample], on_error: Callable[[ShardFormatError], None]) -> dict[str, Any]:
        """The packed batch of `samples` (see `unpack`); a sample that fails to decode goes to `on_error`
        (which may raise)."""
        n, i = len(samples), 0
        self.slots = None
        keys: list[str] = []
        metas: list[dict[str, Any]] = []
        for sample in samples:
            try:
                meta = self._fill(sample, i, n)
            except ShardFormatError as exc:
                on_error(exc)
                continue
            keys.append(str(sample["__key__"]))
            if self.with_meta:
                metas.append(meta or {})
            i += 1
        batch: dict[str, Any] = {"key": keys}
        slots, self.slots = self.slots, None  # the worker holds no buffer between batches
        if slots is not None and i > 0:  # a batch whose every sample failed carries no arrays
            batch.update({BUFFER: slots.buffer, FIELDS: (n, slots.fields), COUNT: i})
        if self.with_meta:
            batch["meta"] = metas
        return batch

    def _fill(self, sample: Sample, i: int, n: int) -> dict[str, Any]:
        """Decode one sample into row `i` of the batch (`batch_slots`); its metadata. JPEGs to be
        letterboxed take the photo path (`segshards.loaders.photo`): a scaled decode written straight into
        the row."""
        if self.size is not None and is_photo(sample, self.layout):
            slots = self.batch_slots(n, 3, sample)
            url = str(sample.get("__url__", "?"))
            meta = read_photo(
                sample,
                self.layout,
                url,
                slots.images[i],
                slots.masks[i],
                limits=self.limits,
                check_key=CHECK_KEYS,
                augmenting=self.augmenting,
            )
        elif self.augmenting is not None:
            raise ShardFormatError(f"{where(sample)}: only JPEG photographs are augmented (Augment)")
        else:
            image, mask, meta = self.decode(sample)
            channels = 1 if image.ndim == 2 else min(3, image.shape[2])
            if i == 0:
                self.slots = None  # shaped by the batch's first good sample, not by one that failed
            slots = self.batch_slots(n, channels, sample, mask.shape)
            images, masks = slots.images, slots.masks
            if (
                self.size is None
                and image.ndim == 2
                and mask.shape == masks.shape[1:]
                and images.shape[1] == 1
            ):
                images[i, 0] = image  # the common case: grey images of the batch's size
                masks[i] = mask
            else:
                self._fill_other(images[i], masks[i], image, mask, sample)
        if self.transforming is not None:
            key = str(sample["__key__"])
            apply_transform(self.transforming, key, slots.images[i], slots.masks[i], where(sample))
        for array, target in slots.targets:
            array[i] = target_value(target, meta, sample)
        return meta

    def batch_slots(self, n: int, channels: int, sample: Sample, shape: tuple[int, ...] = ()) -> "Slots":
        """The batch's slots, made by the first sample that needs them. A photo batch's are the same
        whatever its samples and are made before the photo is decoded, so they are kept when it fails: made
        again, they would take a second share of a worker's ring slot (the rest of its chunk then going to
        fresh shared memory)."""
        if self.slots is None:
            self.slots = self._slots(n, channels, sample, shape)
        return self.slots

    def _slots(self, n: int, channels: int, sample: Sample, shape: tuple[int, ...] = ()) -> "Slots":
        """One uint8 buffer for the whole batch and the layout of its arrays (8-byte aligned, targets first),
        within the batch limit."""
        h, w = self.size or shape
        check_batch(n, (channels + 1) * h * w, where(sample), self.limits)  # image + mask
        shapes = [(t.name, t.dtype, t.shape) for t in self.targets]
        shapes += [("image", "uint8", (channels, h, w)), ("mask", "uint8", (h, w))]
        fields, offset = [], 0
        for name, dtype, row in shapes:
            fields.append((name, offset, dtype, row))
            offset += -(-n * int(np.prod(row)) * np.dtype(dtype).itemsize // 8) * 8
        buffer = self.allocate(offset)
        views = dict(unpack_arrays(buffer.numpy(), fields, n))
        targets = [(views[t.name], t) for t in self.targets]
        return Slots(buffer, fields, views["image"], views["mask"], targets)

    def _fill_other(
        self, out_image: np.ndarray, out_mask: np.ndarray, image: np.ndarray, mask: np.ndarray, sample: Sample
    ) -> None:
        """Colour images, grey ones in a colour batch, and resizing."""
        channels = 1 if image.ndim == 2 else min(3, image.shape[2])
        if channels != out_image.shape[0] and channels != 1:
            raise ShardFormatError(
                f"{where(sample)}: {channels}-channel image in a batch of {out_image.shape[0]}-channel"
            )
        if self.size is not None:
            letterbox(image, mask, out_image, out_mask)
        elif mask.shape != out_mask.shape:
            raise ShardFormatError(
                f"{where(sample)}: image is {mask.shape[1]}x{mask.shape[0]}, the batch's "
                f"{out_mask.shape[1]}x{out_mask.shape[0]}; pass size=(H, W) to resize"
            )
        else:
            place(image, out_image)
            out_mask[:] = mask


def target_value(target: Target, meta: Any, sample: Sample) -> Any:
    """A target's value from the sample's metadata, checked against the schema's dtype and shape."""
    try:
        flat = target.value(meta)
    except ValueError as exc:
        raise ShardFormatError(f"{where(sample)}: metadata lacks a valid {target.name!r} ({exc})") from None
    return flat[0] if not target.shape else np.asarray(flat, target.dtype).reshape(target.shape)


def unpack_arrays(buffer: np.ndarray, fields: list[Field], n: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (n, *shape) view) of each field of a packed batch buffer."""
    for name, offset, dtype, shape in fields:
        size = n * int(np.prod(shape)) * np.dtype(dtype).itemsize
        yield name, buffer[offset : offset + size].view(dtype).reshape(n, *shape)


def unpack(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch dict a user sees: the packed buffer's fields as tensors of `count` rows (views, no copy).

    A batch crosses from a worker as one shared-memory buffer (one file descriptor to pass, one mapping)
    rather than one per array; the views are made in the receiving process.
    """
    buffer = batch.pop(BUFFER, None)
    if buffer is None:
        return batch
    (rows, fields), count = batch.pop(FIELDS), batch.pop(COUNT)
    out: dict[str, Any] = {}
    for name, offset, dtype, shape in fields:
        size = rows * int(np.prod(shape)) * np.dtype(dtype).itemsize
        out[name] = buffer[offset : offset + size].view(TORCH_DTYPES[dtype]).view(rows, *shape)[:count]
    out.update(batch)
    return out


def where(sample: Sample) -> str:
    """`shard URL:key`, for error messages."""
    return f"{str(sample.get('__url__', '?'))}:{str(sample['__key__'])}"
