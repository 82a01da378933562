"""Reader for digit sets in the MNIST IDX format (MNIST, Fashion-MNIST, KMNIST ...), gzipped or raw."""

import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from zlib_ng import gzip_ng, zlib_ng

from segshards.writer.errors import SourceError
from segshards.writer.format.keys import file_digests

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CHECKSUMS_FILE = "MD5SUMS"


@dataclass(frozen=True)
class DigitSet:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one IDX pair."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class MnistSource:
    """A whole IDX folder: the train and test sets."""

    train: DigitSet
    test: DigitSet


def find_file(folder: Path, stem: str) -> Path:
    """The file for `stem` in `folder`: `stem.gz`, `stem`, or the `stem` spelt with a dot before idx."""
    dotted = stem.replace("-idx", ".idx")
    for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: missing {stem}.gz (MNIST IDX format expected)")


def read_idx_bytes(path: Path) -> bytes:
    """Raw IDX bytes of `path`, gunzipped when it starts with the gzip magic."""
    try:
        data = path.read_bytes()
        return gzip_ng.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error, zlib_ng.error) as exc:  # type: ignore[misc]  # untyped stub
        raise SourceError(f"{path}: corrupt or truncated gzip ({exc})") from exc


def parse_idx(data: bytes, *, magic: int, path: Path) -> np.ndarray:
    """Parse an unsigned-byte IDX payload, checking its magic number and length."""
    if len(data) < 8:
        raise SourceError(f"{path}: too short for an IDX header")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise SourceError(f"{path}: wrong magic number {found}, expected {magic}")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise SourceError(f"{path}: too short for an IDX header of {ndim} dimensions")
    dims = struct.unpack(f">{ndim}i", data[4:offset])
    if min(dims, default=0) < 0:
        raise SourceError(f"{path}: negative dimension in IDX header {dims}")
    expected = math.prod(dims)
    if len(data) - offset != expected:
        raise SourceError(f"{path}: holds {len(data) - offset} data bytes, header {dims} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def read_checksums(folder: Path) -> dict[str, str]:
    """Expected md5 per file name from `folder/MD5SUMS`, or {} when the folder has none."""
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]):
            raise SourceError(f"{path}: line {number} is not 'MD5  FILENAME'")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def describe_file(path: Path, expected_md5: dict[str, str]) -> dict[str, str | int]:
    """Name, size and checksums of a source file; md5 checked when the folder lists one."""
    md5, sha256 = file_digests(path, ("md5", "sha256"))
    want = expected_md5.get(path.name)
    if want is not None and want != md5:
        raise SourceError(f"{path}: md5 {md5} does not match {want} in {CHECKSUMS_FILE}")
    return {"name": path.name, "bytes": path.stat().st_size, "md5": md5, "sha256": sha256}


def source_files(folder: Path) -> list[Path]:
    """The four IDX files of `folder`, in a fixed order."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: source folder does not exist")
    return [find_file(folder, stem) for stem in STEMS.values()]


def describe_files(folder: Path) -> list[dict[str, str | int]]:
    """Name, size, md5 and sha256 of each source file, checking md5 against MD5SUMS when present."""
    sums = read_checksums(folder)
    return [describe_file(path, sums) for path in source_files(folder)]


def load_pair(folder: Path, split: str) -> DigitSet:
    """Read and cross-check one images/labels pair (`split` is 'train' or 'test')."""
    image_path = find_file(folder, STEMS[f"{split}_images"])
    label_path = find_file(folder, STEMS[f"{split}_labels"])
    images = parse_idx(read_idx_bytes(image_path), magic=IMAGES_MAGIC, path=image_path)
    labels = parse_idx(read_idx_bytes(label_path), magic=LABELS_MAGIC, path=label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise SourceError(f"{image_path}: images are {images.shape[1:]}, expected 28x28")
    if labels.ndim != 1 or len(labels) != len(images):
        raise SourceError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path.name}")
    if len(labels) and labels.max() > 9:
        raise SourceError(f"{label_path}: label {labels.max()} outside 0..9")
    return DigitSet(images=images, labels=labels)


def load_mnist(folder: Path) -> MnistSource:
    """Load and structurally validate an MNIST-format folder (checksums: `describe_files`)."""
    source_files(folder)
    return MnistSource(train=load_pair(folder, "train"), test=load_pair(folder, "test"))
