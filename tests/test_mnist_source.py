"""The MNIST IDX reader (writer/mnist.py): gzipped and raw folders, and every malformed file refused by name."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from segshards.writer.errors import SourceError
from segshards.writer.sources.mnist_idx import load_mnist
from tests.mnist_fixtures import (
    LABELS_MAGIC,
    STEMS,
    bundled_mnist,
    idx_bytes,
    tiny_arrays,
    write_mnist_folder,
)


def assert_same(source_arrays: dict[str, np.ndarray], folder: Path) -> None:
    source = load_mnist(folder)
    np.testing.assert_array_equal(source.train.images, source_arrays["train_images"])
    np.testing.assert_array_equal(source.train.labels, source_arrays["train_labels"])
    np.testing.assert_array_equal(source.test.images, source_arrays["test_images"])
    np.testing.assert_array_equal(source.test.labels, source_arrays["test_labels"])
    assert source.train.images.dtype == np.uint8 and source.train.images.shape == (48, 28, 28)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_raw_folders(tmp_path: Path, gz: bool) -> None:
    arrays = tiny_arrays()
    assert_same(arrays, write_mnist_folder(tmp_path / "src", arrays, gz=gz))


def test_reads_dotted_file_names(tmp_path: Path) -> None:
    # Some mirrors spell the files train-images.idx3-ubyte (e.g. extracted by other tools).
    arrays = tiny_arrays()
    folder = write_mnist_folder(tmp_path / "src", arrays, gz=False)
    for stem in STEMS.values():
        (folder / stem).rename(folder / stem.replace("-idx", ".idx"))
    assert_same(arrays, folder)


def test_reads_the_bundled_mnist() -> None:
    source = load_mnist(Path(__file__).resolve().parents[1] / "data" / "mnist")
    expected = bundled_mnist()
    assert source.train.images.shape == (60_000, 28, 28) and source.test.images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(source.train.labels, expected["train_labels"])
    np.testing.assert_array_equal(source.test.images, expected["test_images"])


def folder_with(tmp_path: Path, part: str, data: bytes, *, gz: bool = True) -> tuple[Path, Path]:
    """A tiny source folder whose file for `part` (key of STEMS) holds `data` (written as is)."""
    folder = write_mnist_folder(tmp_path / "src", tiny_arrays(), gz=gz)
    path = folder / (f"{STEMS[part]}.gz" if gz else STEMS[part])
    path.write_bytes(data)
    return folder, path


def load_error(folder: Path) -> str:
    with pytest.raises(SourceError) as caught:
        load_mnist(folder)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_truncated_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(tiny_arrays()["train_images"], 2051), mtime=0)
    folder, path = folder_with(tmp_path, "train_images", good[: len(good) // 2])
    message = load_error(folder)
    assert message.startswith(f"{path}: ") and "truncated" in message


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = bytearray(gzip.compress(idx_bytes(tiny_arrays()["test_images"], 2051), mtime=0))
    good[len(good) // 2 : len(good) // 2 + 16] = b"\xff" * 16
    folder, path = folder_with(tmp_path, "test_images", bytes(good))
    assert load_error(folder).startswith(f"{path}: corrupt")


def test_wrong_magic(tmp_path: Path) -> None:
    folder, path = folder_with(
        tmp_path, "train_images", idx_bytes(tiny_arrays()["train_images"], LABELS_MAGIC), gz=False
    )
    message = load_error(folder)
    assert message.startswith(f"{path}: wrong magic number 2049, expected 2051")


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    labels = tiny_arrays()["train_labels"][:-1]
    folder, path = folder_with(
        tmp_path, "train_labels", gzip.compress(idx_bytes(labels, LABELS_MAGIC), mtime=0)
    )
    message = load_error(folder)
    assert message.startswith(f"{path}: 47 labels for 48 images")


def test_data_shorter_than_its_header_says(tmp_path: Path) -> None:
    data = idx_bytes(tiny_arrays()["test_images"], 2051)
    folder, path = folder_with(tmp_path, "test_images", data[:-28], gz=False)
    assert load_error(folder).startswith(f"{path}: holds")


def test_header_too_short(tmp_path: Path) -> None:
    folder, path = folder_with(tmp_path, "test_labels", b"\x00\x00", gz=False)
    assert load_error(folder).startswith(f"{path}: too short")


def test_images_not_28x28(tmp_path: Path) -> None:
    folder, path = folder_with(tmp_path, "train_images", idx_bytes(np.zeros((48, 32, 32), np.uint8), 2051))
    assert load_error(folder).startswith(f"{path}: images are")


def test_label_out_of_range(tmp_path: Path) -> None:
    labels = tiny_arrays()["test_labels"].copy()
    labels[3] = 10
    folder, path = folder_with(tmp_path, "test_labels", idx_bytes(labels, LABELS_MAGIC), gz=False)
    assert load_error(folder).startswith(f"{path}: label 10 outside 0..9")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    folder = write_mnist_folder(tmp_path / "src", tiny_arrays())
    (folder / f"{STEMS['test_labels']}.gz").unlink()
    assert load_error(folder) == f"{folder}: missing {STEMS['test_labels']}.gz (MNIST IDX format expected)"
    assert load_error(tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: ")


def test_header_shorter_than_its_dimensions(tmp_path: Path) -> None:
    # A valid images magic (3 dimensions) but only one dimension present.
    folder, path = folder_with(tmp_path, "test_images", b"\x00\x00\x08\x03" + b"\x00" * 8, gz=False)
    assert load_error(folder).startswith(f"{path}: too short")


def test_negative_dimension(tmp_path: Path) -> None:
    data = b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" + b"\xff\xff\xff\xe4" + b"\x00\x00\x00\x1c" + bytes(784)
    folder, path = folder_with(tmp_path, "test_images", data, gz=False)
    assert load_error(folder).startswith(f"{path}: ")
