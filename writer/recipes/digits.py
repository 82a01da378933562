"""MNIST-format digits prepared once per process: images, Otsu masks, labels and split pools."""

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from writer.errors import ConfigError
from writer.keys import pixel_digest
from writer.mnist import describe_files, load_mnist
from writer.recipe import SourceInfo

BUNDLED_MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


@dataclass(frozen=True)
class DigitsSpec:
    """Where the digits come from: an MNIST IDX folder, and optionally a prepared `.npz` to memory-map."""

    folder: str
    prepared: str | None = None


@dataclass(frozen=True)
class Digits:
    """All digits of a folder, train then test: images (N, 28, 28), Otsu masks (N, 28, 28) 0/1, labels."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    n_train: int
    thresholds: np.ndarray


def otsu_threshold(image: np.ndarray) -> int:
    """Otsu's threshold of a grayscale uint8 image, as cv2 computes it."""
    threshold, _ = cv2.threshold(image, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return int(threshold)


def otsu_thresholds(images: np.ndarray) -> np.ndarray:
    """(N,) uint8 Otsu thresholds; the mask of image i is `images[i] > thresholds[i]` (cv2's THRESH_BINARY)."""
    return np.array([otsu_threshold(image) for image in images], dtype=np.uint8)


@functools.lru_cache(maxsize=2)
def load_digits(spec: DigitsSpec) -> Digits:
    """Read, validate and Otsu-threshold every digit of `spec.folder` (cached per process)."""
    if spec.prepared is not None:
        images = np.load(Path(spec.prepared) / "images.npy", mmap_mode="r")  # pages shared between workers
        with np.load(Path(spec.prepared) / "digits.npz") as arrays:
            thresholds, labels, n_train = arrays["thresholds"], arrays["labels"], int(arrays["n_train"])
    else:
        source = load_mnist(Path(spec.folder))
        images = np.concatenate([source.train.images, source.test.images])
        labels = np.concatenate([source.train.labels, source.test.labels])
        thresholds, n_train = otsu_thresholds(images), len(source.train.images)
    masks = (images > thresholds[:, None, None]).view(np.uint8)
    return Digits(images=images, masks=masks, labels=labels, n_train=n_train, thresholds=thresholds)


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


class DigitsSourceMixin:
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
        return {"source": options.source or "bundled:data/mnist"}

    def describe(self, spec: DigitsSpec) -> SourceInfo:
        info = SourceInfo(kind="mnist-idx", files=describe_files(Path(spec.folder)))
        load_digits(spec)  # every structural check of the source, before the build touches its output
        return info

    def share(self, spec: DigitsSpec, folder: Path) -> DigitsSpec:
        """Save the decoded digits and their Otsu thresholds once; workers memory-map them."""
        digits = load_digits(spec)
        np.save(folder / "images.npy", digits.images)
        np.savez(
            folder / "digits.npz", thresholds=digits.thresholds, labels=digits.labels, n_train=digits.n_train
        )
        return DigitsSpec(folder=spec.folder, prepared=str(folder))
