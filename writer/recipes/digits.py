"""MNIST-format digits prepared once per process: images, Otsu masks, labels and split pools."""

import argparse
import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segshards.data import MNIST
from segshards.writer.errors import ConfigError
from segshards.writer.format.keys import pixel_digest
from segshards.writer.recipes.contract import UNKNOWN_LICENCE, Licence, RecipeBase, SourceInfo
from segshards.writer.sources.cache import entry_path, store_entry
from segshards.writer.sources.mnist_idx import describe_files, load_mnist, source_files

BUNDLED_MNIST = MNIST
CACHE_KIND = "mnist-idx"
BUNDLED_CONFIG = "bundled:data/mnist"
# md5 of the four gzipped IDX files, in the reader's order, of the MNIST copies we can name for sure:
# the files from Yann LeCun's site and the copies bundled under data/mnist.
KNOWN_MNIST = (
    (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
    (
        "c7dfcf1bfd3481a40f7b3aedbdbd083c",
        "d289298a347a2cc65765a3c81043ba88",
        "ecff87aa27c74fbc2c1f97e89c19221d",
        "a38049bc042dc6e683842a84160daae1",
    ),
)
MNIST_LICENCE = Licence(
    "cc-by-sa-3.0",
    "Source: MNIST, by Yann LeCun and Corinna Cortes (with Christopher J.C. Burges), "
    "http://yann.lecun.com/exdb/mnist/, licensed under Creative Commons Attribution-ShareAlike 3.0 "
    "(CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/). This set is derived from it "
    "(composited images, masks) and is shared under the same licence.",
)

PREPARED_IMAGES, PREPARED_ARRAYS = "images.npy", "digits.npz"


@dataclass(frozen=True)
class DigitsSpec:
    """Where the digits come from: an MNIST IDX folder, and optionally a prepared `.npz` to memory-map."""

    folder: str
    prepared: str | None = None


@dataclass(frozen=True)
class Digits:
    """All digits of a folder, train then test: images (N, 28, 28), Otsu masks (N, 28, 28) 0/1, labels."""

    images: np.ndarray
    labels: np.ndarray
    n_train: int
    thresholds: np.ndarray

    def masks_of(self, index: int | np.ndarray) -> np.ndarray:
        """Otsu masks (0/1 uint8) of the digits at `index`, an int or an index array of any shape."""
        threshold = np.asarray(self.thresholds[index])
        return (self.images[index] > threshold[..., None, None]).view(np.uint8)


def otsu_threshold(image: np.ndarray) -> int:
    """Otsu's threshold of a grayscale uint8 image, as cv2 computes it."""
    threshold, _ = cv2.threshold(image, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return int(threshold)


def otsu_thresholds(images: np.ndarray) -> np.ndarray:
    """(N,) uint8 Otsu thresholds; the mask of image i is `images[i] > thresholds[i]` (cv2's THRESH_BINARY)."""
    return np.array([otsu_threshold(image) for image in images], dtype=np.uint8)


def decode_digits(folder: Path) -> Digits:
    """Read, validate and Otsu-threshold every digit of an MNIST-format folder (no caching)."""
    source = load_mnist(folder)
    images = np.concatenate([source.train.images, source.test.images])
    labels = np.concatenate([source.train.labels, source.test.labels])
    return Digits(images, labels, len(source.train.images), otsu_thresholds(images))


def save_prepared(digits: Digits, folder: Path) -> None:
    """The decoded digits as files to memory-map: images.npy, and digits.npz with a checksum of the images."""
    images = np.ascontiguousarray(digits.images)
    np.save(folder / PREPARED_IMAGES, images)
    np.savez(
        folder / PREPARED_ARRAYS,
        thresholds=digits.thresholds,
        labels=digits.labels,
        n_train=digits.n_train,
        images_xxh3=np.frombuffer(pixel_digest(images), dtype=np.uint8),
    )


def load_prepared(folder: Path, *, verify: bool) -> Digits:
    """Digits saved by `save_prepared`, images memory-mapped (pages shared between processes).

    With `verify`, shapes and the images' checksum are checked: ValueError (or OSError) if they do not hold.
    """
    images = np.load(folder / PREPARED_IMAGES, mmap_mode="r")
    with np.load(folder / PREPARED_ARRAYS) as arrays:
        thresholds, labels, n_train = arrays["thresholds"], arrays["labels"], int(arrays["n_train"])
        checksum = arrays["images_xxh3"].tobytes()
    if verify:
        n = len(images)
        shapes_ok = images.dtype == np.uint8 and images.ndim == 3 and len(thresholds) == n == len(labels)
        if not (shapes_ok and 0 < n_train <= n and pixel_digest(images) == checksum):
            raise ValueError(f"{folder}: prepared digits do not match their checksum")
    return Digits(images, labels, n_train, thresholds)


@functools.lru_cache(maxsize=2)
def cached_digits(folder: Path) -> tuple[Digits, Path | None]:
    """The folder's digits from the source cache, prepared there first on a miss (cached per process).

    Returns the digits and their cache entry (None when the cache is off or could not be written).
    """
    entry = entry_path(CACHE_KIND, source_files(folder))
    if entry is not None and entry.is_dir():
        with contextlib.suppress(OSError, ValueError, KeyError):
            return load_prepared(entry, verify=True), entry
    digits = decode_digits(folder)
    if entry is not None and store_entry(entry, functools.partial(save_prepared, digits)):
        return digits, entry
    return digits, None


@functools.lru_cache(maxsize=2)
def load_digits(spec: DigitsSpec) -> Digits:
    """Every digit of `spec.folder`, validated and Otsu-thresholded (via the source cache; cached per process)."""
    if spec.prepared is not None:
        return load_prepared(Path(spec.prepared), verify=False)  # checked by the parent that named it
    return cached_digits(Path(spec.folder))[0]


def split_pool(digits: Digits, split: str) -> np.ndarray:
    """Global digit indices a split may use: train 0..n-n//12-1, val the last twelfth of train, test all test.

    For MNIST (60,000 train digits) that is train 0..54999, val 55000..59999, test the 10,000 test digits.
    """
    val_start = digits.n_train - digits.n_train // 12
    bounds = {
        "train": (0, val_start),
        "val": (val_start, digits.n_train),
        "test": (digits.n_train, len(digits.images)),
    }
    if split not in bounds:
        raise ConfigError(f"unknown split {split!r}")
    lo, hi = bounds[split]
    return np.arange(lo, hi, dtype=np.int64)


def source_ref(digits: Digits, index: int) -> dict[str, int | str]:
    """The metadata naming a digit: which IDX set it came from and its index there."""
    if index < digits.n_train:
        return {"set": "train", "index": int(index)}
    return {"set": "test", "index": int(index - digits.n_train)}


def row_digests(images: np.ndarray) -> list[bytes]:
    """xxh3-128 digest of each image in a (B, H, W) uint8 batch."""
    return [pixel_digest(image) for image in images]


class DigitsSourceMixin(RecipeBase):
    """Options and source description shared by the recipes that read an MNIST-format folder."""

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--source",
            default=None,
            metavar="DIR",
            help="folder of MNIST-format IDX files, gzipped or raw (default: the bundled MNIST)",
        )

    def make_spec(self, options: argparse.Namespace) -> DigitsSpec:
        folder = Path(options.source) if options.source else BUNDLED_MNIST
        return DigitsSpec(folder=str(folder.resolve()))

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        return {"source": options.source or BUNDLED_CONFIG}

    def describe(self, spec: DigitsSpec) -> SourceInfo:
        files = describe_files(Path(spec.folder))
        load_digits(spec)  # every structural check of the source, before the build touches its output
        known = Path(spec.folder) == BUNDLED_MNIST.resolve() or tuple(f["md5"] for f in files) in KNOWN_MNIST
        return SourceInfo(kind="mnist-idx", files=files, licence=MNIST_LICENCE if known else UNKNOWN_LICENCE)

    def image_size(self, spec: DigitsSpec) -> tuple[int, int]:
        """(H, W) of one source digit."""
        h, w = load_digits(spec).images.shape[1:3]
        return int(h), int(w)

    def share(self, spec: DigitsSpec, folder: Path, *, local: bool) -> DigitsSpec:
        """The digits as files workers memory-map: the source cache's entry when the workers are local,
        else saved once into `folder`."""
        digits, entry = cached_digits(Path(spec.folder))
        if local and entry is not None:
            return DigitsSpec(folder=spec.folder, prepared=str(entry))
        save_prepared(digits, folder)
        return DigitsSpec(folder=spec.folder, prepared=str(folder))
