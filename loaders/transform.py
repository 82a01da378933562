"""A user's own transform on each decoded (image, mask) pair, run inside the workers and seeded per sample.

`make_loader(..., transform=fn)` calls `fn(image, mask)` on every sample once it is in its batch row
(letterboxed to `size`, or augmented by `Augment`): `image` a uint8 (C, H, W) tensor (RGB), `mask` a uint8
(H, W) tensor. It returns the pair (tensors or arrays) of the same shapes, written back into the row.

Seeding. Each call runs with torch's, Python's and numpy's global generators seeded by (seed, epoch, sample
key) and restored afterwards, so torchvision `transforms.v2` (which draws from torch's generator) gives
the same pixels for one seed whatever `num_workers`, and after a mid-epoch resume. Libraries with their
own generators read the seed from `sample_seed()`: `Albumentations(compose)` passes it to
`compose.set_random_seed` before each call.
"""

import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segshards.writer.errors import ConfigError

Transform = Callable[[torch.Tensor, torch.Tensor], Any]
_current: list[int] = []  # the seed of the sample being transformed (a stack: empty outside a call)


@dataclass(frozen=True)
class Transforming:
    """A transform as one epoch of one loader applies it."""

    transform: Transform
    seed: int
    epoch: int


def seed_of(seed: int, epoch: int, key: str) -> int:
    """A 32-bit seed from (seed, epoch, sample key): the same in every process, unlike hash()."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def sample_seed() -> int:
    """The seed of the sample being transformed (for a transform with its own generator)."""
    if not _current:
        raise RuntimeError("sample_seed() is only set while a loader's transform runs")
    return _current[-1]


@contextmanager
def seeded(value: int) -> Iterator[None]:
    """torch's, Python's and numpy's global generators seeded with `value`, restored on exit (the caller's
    streams, in the main process with num_workers=0, are left as they were)."""
    saved = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)
    _current.append(value)
    try:
        yield
    finally:
        _current.pop()
        torch.random.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


def apply_transform(t: Transforming, key: str, image: np.ndarray, mask: np.ndarray, where: str) -> None:
    """Run `t` on one batch row (`image` (C, H, W), `mask` (H, W), uint8 views) and write its result back.
    A result of another shape, or of values a uint8 row cannot hold, is one ConfigError naming the sample;
    an exception of the transform's own is raised with a note naming it."""
    with seeded(seed_of(t.seed, t.epoch, key)):
        try:
            result = t.transform(torch.from_numpy(image.copy()), torch.from_numpy(mask.copy()))
        except Exception as exc:
            note = getattr(exc, "add_note", None)  # Python 3.11 and later
            if note is not None:
                note(f"raised by the loader's transform on {where}")
            raise
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise ConfigError(f"{where}: transform returned {type(result).__name__}, expected (image, mask)")
    for name, value, out in (("an image", result[0], image), ("a mask", result[1], mask)):
        out[...] = as_row(value, out.shape, f"{where}: transform returned {name}")


def as_row(value: Any, shape: tuple[int, ...], returned: str) -> np.ndarray:
    """A transform's image or mask as a batch row takes it: of the row's shape, and uint8 or an integer
    dtype with values in 0-255 (a mask of int64 class ids), never cast: a float image (normalised, 0-1) or
    ids past 255 would wrap or truncate into other pixels and classes without a word."""
    if isinstance(value, torch.Tensor) and (value.dtype.is_floating_point or value.dtype.is_complex):
        # named here: numpy has no bfloat16 to take such a tensor as
        raise ConfigError(f"{returned} of dtype {str(value.dtype).removeprefix('torch.')}; {UINT8_ROWS}")
    array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    if array.shape != shape:
        raise ConfigError(f"{returned} of shape {array.shape}, the batch's is {shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "biu":
        raise ConfigError(f"{returned} of dtype {array.dtype}; {UINT8_ROWS}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ConfigError(f"{returned} with values {array.min()}..{array.max()}, outside uint8's 0-255")
    return array


UINT8_ROWS = (
    "the batch holds uint8 (0-255): convert or normalise after the loader, on the device "
    "(DevicePrefetcher(..., transform=to_float))"
)
NAMED_ARRAYS = "albumentations takes named arrays; pass Albumentations(compose) (segshards.loaders)"


def takes_named_arrays(transform: Any) -> bool:
    """Whether `transform` is an albumentations pipeline, called as compose(image=..., mask=...): given
    as it is, its first call would fail on the pair with albumentations' own KeyError."""
    return transform is not None and type(transform).__module__.split(".")[0] == "albumentations"


class Albumentations:
    """An albumentations `Compose` as a loader transform: CHW tensors to HWC arrays and back, seeded by
    `sample_seed()` (albumentations 2 draws from its own generator, `set_random_seed`)."""

    def __init__(self, compose: Any) -> None:
        self.compose = compose

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(self.compose, "set_random_seed"):
            self.compose.set_random_seed(sample_seed())
        out = self.compose(image=image.numpy().transpose(1, 2, 0), mask=mask.numpy())
        result = np.asarray(out["image"])
        result = result[:, :, None] if result.ndim == 2 else result
        return result.transpose(2, 0, 1), np.asarray(out["mask"])
