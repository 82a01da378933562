"""Decoding samples into batch arrays: a fast path for plain 8-bit grey PNGs, cv2 for the rest, and the
targets the set's schema declares (no recipe code: any set with a schema loads).

Images come out as uint8 (N, C, H, W): C=1 for grey PNGs, C=3 RGB for JPEGs and colour PNGs; masks as uint8
(N, H, W). Float conversion and normalisation are left to the device (see `segshards.loaders.device`).

Variable-size images (COCO) need `size=(H, W)`. The policy is letterbox: the image is scaled to fit inside
(H, W) keeping its aspect ratio (cv2 INTER_AREA when shrinking, INTER_LINEAR when enlarging), the mask with
INTER_NEAREST, both centred; the border is 0 in the image and 255 (ignore) in the mask, so every labelled
pixel is kept and the padding is excluded from losses and metrics that honour `ignore_index=255`.
"""

import importlib
import json
import struct
import types
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import torch

from segshards.writer.errors import ShardFormatError
from segshards.writer.format.images import decode_image as cv2_decode
from segshards.writer.format.limits import DecodeLimits, check_batch, default_limits
from segshards.writer.format.schema import SampleSchema, Target
from segshards.writer.format.tar_writer import Sample


def _inflater() -> types.ModuleType:
    """zlib-ng when installed (it inflates these small PNGs about twice as fast, same output), else zlib."""
    try:
        return importlib.import_module("zlib_ng.zlib_ng")
    except ImportError:  # pragma: no cover - depends on the environment
        return zlib


inflater = _inflater()
FAST_PATH_ERRORS: tuple[type[Exception], ...] = (struct.error, ValueError, zlib.error, inflater.error)
IGNORE = 255
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR = struct.Struct(">IIBBBBB")
CHUNK_HEAD = struct.Struct(">I4s")
U32 = struct.Struct(">I")
META_EXTS = ("json", "mask.png")


def fast_png(payload: bytes, limits: DecodeLimits | None = None) -> np.ndarray | None:
    """(H, W) pixels of an 8-bit grey, non-interlaced PNG whose rows are all unfiltered; None otherwise.

    The writer stores PNGs with no row filter: decoding is then one inflate call, two to three times as
    fast as cv2.imdecode on 56x56 images (zlib-ng when installed, else zlib). Any other PNG returns None
    and goes through cv2, as does one over `limits` (where `decode_member` reports it). Inflation stops
    at the size the header declares, so a small PNG cannot inflate to gigabytes here. Corrupt data fails
    the zlib stream's own Adler-32 check (then cv2 reports it); chunk CRCs are not checked.
    """
    if payload[:8] != PNG_SIGNATURE or payload[12:16] != b"IHDR" or len(payload) < 33:
        return None
    width, height, depth, colour, _, _, interlace = IHDR.unpack_from(payload, 16)
    if depth != 8 or colour != 0 or interlace != 0 or not width or not height:
        return None
    if width * height > (limits or default_limits()).max_pixels:
        return None
    try:
        if payload[37:41] == b"IDAT":  # the writer's layout: IHDR, one IDAT, IEND
            (length,) = U32.unpack_from(payload, 33)
            if payload[length + 49 : length + 53] == b"IEND":
                return _unfiltered(_inflate(payload[41 : 41 + length], height * (width + 1)), width, height)
        return _unfiltered(_inflate(_idat(payload), height * (width + 1)), width, height)
    except FAST_PATH_ERRORS:
        return None


def _inflate(data: bytes, expected: int) -> bytes:
    """The inflated `data` if it is a complete zlib stream of exactly `expected` bytes; b"" otherwise."""
    inflate = inflater.decompressobj()
    raw = inflate.decompress(data, expected + 1)
    return raw if inflate.eof and len(raw) == expected else b""


def _idat(payload: bytes) -> bytes:
    """The concatenated IDAT data of a PNG; ValueError when a critical chunk other than IDAT shows up."""
    pos, parts = 33, []
    while True:
        length, kind = CHUNK_HEAD.unpack_from(payload, pos)
        if kind == b"IDAT":
            parts.append(payload[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            return parts[0] if len(parts) == 1 else b"".join(parts)
        elif not kind[0] & 0x20:  # another critical chunk (a palette ...): leave it to cv2
            raise ValueError(kind)
        pos += 12 + length


def _unfiltered(raw: bytes, width: int, height: int) -> np.ndarray | None:
    """The (H, W) pixels of inflated PNG rows when every row's filter byte is 0 (None)."""
    stride = width + 1
    if len(raw) != height * stride or raw[::stride].count(0) != height:
        return None
    return np.frombuffer(raw, np.uint8).reshape(height, stride)[:, 1:]


def decode_member(payload: bytes, ext: str, where: str, limits: DecodeLimits | None = None) -> np.ndarray:
    """An image member as (H, W) grey or (H, W, 3) RGB uint8; a mask member as (H, W). Over `limits`
    (default: `default_limits()`, see `segshards.writer.format.limits`) it is a ShardFormatError naming them."""
    if ext.endswith("png"):
        array = fast_png(payload, limits)
        if array is not None:
            return array
    array = cv2_decode(payload, ext, where, limits)  # checks the header against the limits first
    if array.dtype != np.uint8:
        raise ShardFormatError(f"{where}: {ext} is {array.dtype}, expected 8-bit")
    if array.ndim == 3:
        if array.shape[2] == 4:
            array = array[:, :, :3]
        array = array[:, :, ::-1]  # cv2 gives BGR
    return array


BUFFER, FIELDS, COUNT = "_buffer", "_fields", "_count"
TORCH_DTYPES = {"uint8": torch.uint8, "int64": torch.int64, "float32": torch.float32}
Field = tuple[str, int, str, tuple[int, ...]]  # name, byte offset in the batch buffer, dtype name, row shape


def letterbox(image: np.ndarray, mask: np.ndarray, out_image: np.ndarray, out_mask: np.ndarray) -> None:
    """Fit `image` (H, W[, 3]) and `mask` (H, W) into `out_image` (C, h, w) and `out_mask` (h, w), centred."""
    h, w = mask.shape
    oh, ow = out_mask.shape
    scale = min(oh / h, ow / w)
    nh, nw = max(1, min(oh, round(h * scale))), max(1, min(ow, round(w * scale)))
    top, left = (oh - nh) // 2, (ow - nw) // 2
    if (nh, nw) != (h, w):
        image = cv2.resize(
            np.ascontiguousarray(image),
            (nw, nh),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        mask = cv2.resize(np.ascontiguousarray(mask), (nw, nh), interpolation=cv2.INTER_NEAREST)
    out_image.fill(0)
    out_mask.fill(IGNORE)
    place(image, out_image[:, top : top + nh, left : left + nw])
    out_mask[top : top + nh, left : left + nw] = mask


def place(image: np.ndarray, out: np.ndarray) -> None:
    """Copy (H, W) or (H, W, C) pixels into a (C, H, W) slot."""
    if image.ndim == 2:
        if out.shape[0] == 1:
            out[0] = image
        else:
            out[:] = image  # a grey image in a colour batch
    else:
        out[:] = image.transpose(2, 0, 1)


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
    ) -> None:
        self.limits = limits or default_limits()
        self.targets: tuple[Target, ...] = schema.targets if schema else ()
        self.image_ext = schema.image if schema else None
        self.size, self.with_meta, self.allocate = size, with_meta, allocate

    def image_member(self, sample: Sample) -> str:
        if self.image_ext and self.image_ext in sample:
            return self.image_ext
        others = [e for e in sample if e not in META_EXTS and not e.startswith("__")]
        if len(others) != 1:
            raise ShardFormatError(
                f"{where(sample)}: sample has members {sorted(others)}, expected one image"
            )
        return others[0]

    def decode(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """(image, mask, parsed metadata or None) of one sample; the PNG fast path first, then cv2."""
        ext = self.image_member(sample)
        payload, mask_payload = sample[ext], sample.get("mask.png")
        if not isinstance(mask_payload, bytes):
            raise ShardFormatError(f"{where(sample)}: sample has no mask.png member")
        image = fast_png(payload, self.limits) if ext == "png" else None  # type: ignore[arg-type]
        if image is None:
            image = decode_member(payload, ext, where(sample), self.limits)  # type: ignore[arg-type]
        mask = fast_png(mask_payload, self.limits)
        if mask is None:
            mask = decode_member(mask_payload, "mask.png", where(sample), self.limits)
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise ShardFormatError(f"{where(sample)}: mask {mask.shape} does not match image {image.shape}")
        meta = None
        if self.targets or self.with_meta:
            try:
                meta = json.loads(sample["json"])
            except (KeyError, ValueError, RecursionError) as exc:
                raise ShardFormatError(f"{where(sample)}: missing or invalid json metadata ({exc})") from None
        return image, mask, meta

    def __call__(self, samples: list[Sample], on_error: Callable[[ShardFormatError], None]) -> dict[str, Any]:
        """The packed batch of `samples` (see `unpack`); a sample that fails to decode goes to `on_error`
        (which may raise)."""
        n, i = len(samples), 0
        buffer: torch.Tensor | None = None
        fields: list[Field] = []
        images: np.ndarray = np.empty((0, 0, 0, 0), np.uint8)  # numpy views of `buffer`, filled in place
        masks: np.ndarray = np.empty((0, 0, 0), np.uint8)
        targets: list[tuple[np.ndarray, Target]] = []
        keys: list[str] = []
        metas: list[dict[str, Any]] = []
        for sample in samples:
            try:
                image, mask, meta = self.decode(sample)
                if buffer is None:
                    row = (image.size // mask.size + 1) * int(
                        np.prod(self.size or mask.shape)
                    )  # image + mask
                    check_batch(n, row, where(sample), self.limits)
                    buffer, fields = self._allocate(n, image)
                    views = {name: array for name, array in unpack_arrays(buffer.numpy(), fields, n)}
                    images, masks = views["image"], views["mask"]
                    targets = [(views[t.name], t) for t in self.targets]
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
                for array, target in targets:
                    array[i] = target_value(target, meta, sample)
            except ShardFormatError as exc:
                on_error(exc)
                continue
            keys.append(str(sample["__key__"]))
            if self.with_meta:
                metas.append(meta or {})
            i += 1
        batch: dict[str, Any] = {"key": keys}
        if buffer is not None:
            batch.update({BUFFER: buffer, FIELDS: (n, fields), COUNT: i})
        if self.with_meta:
            batch["meta"] = metas
        return batch

    def _allocate(self, n: int, image: np.ndarray) -> tuple[torch.Tensor, list[Field]]:
        """One uint8 buffer for the whole batch and the layout of its arrays (8-byte aligned, targets first)."""
        channels = 1 if image.ndim == 2 else image.shape[2]
        h, w = self.size or image.shape[:2]
        shapes = [(t.name, t.dtype, t.shape) for t in self.targets]
        shapes += [("image", "uint8", (channels, h, w)), ("mask", "uint8", (h, w))]
        fields, offset = [], 0
        for name, dtype, shape in shapes:
            fields.append((name, offset, dtype, shape))
            offset += -(-n * int(np.prod(shape)) * np.dtype(dtype).itemsize // 8) * 8
        return self.allocate(offset), fields

    def _fill_other(
        self, out_image: np.ndarray, out_mask: np.ndarray, image: np.ndarray, mask: np.ndarray, sample: Sample
    ) -> None:
        """Colour images, grey ones in a colour batch, and resizing."""
        channels = 1 if image.ndim == 2 else image.shape[2]
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
