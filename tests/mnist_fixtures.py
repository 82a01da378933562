"""Helpers for the writer tests: tiny MNIST-format sources, cached small builds, and independent shard reading."""

import functools
import gzip
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segshards.writer.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "mnist"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SHARD_FILE = re.compile(r"(train|val|test)-\d{6}\.tar")
# A small build: 3 + 1 + 1 shards of at most 100 samples.
SMALL = ["--train", "300", "--val", "60", "--test", "60", "--shard-size", "100"]
# tqdm progress lines on stderr are not error lines: "mnist-grid:  42%|####  | ..." when the total is
# known, "mnist-foreground: 12.0ksample [00:01, 9.7ksample/s]" when it is not (counts left to the source).
TQDM_LINE = re.compile(r"^[\w-]+:\s+(\d+%\||[\d.]+k?sample \[)")

Sample = dict[str, Any]  # {"__key__": str, ext: bytes}


# ---- tiny MNIST-format sources -------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """IDX file bytes: big-endian magic, one int32 per dimension, then the uint8 data."""
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_digits(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` distinct digit-like 28x28 uint8 images (bright strokes on black) and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
        for _ in range(3):
            (x0, y0), (x1, y1) = rng.integers(4, 24, size=(2, 2)).tolist()
            cv2.line(image, (x0, y0), (x1, y1), int(rng.integers(120, 256)), int(rng.integers(1, 4)))
        image[:] = cv2.GaussianBlur(image, (3, 3), 0)
    assert len({im.tobytes() for im in images}) == n, "synthetic digits must be distinct"
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def write_mnist_folder(
    folder: Path,
    arrays: dict[str, np.ndarray],
    *,
    gz: bool = True,
    md5sums: bool = False,
    magics: dict[str, int] | None = None,
) -> Path:
    """Write `arrays` (keys of STEMS) as an MNIST IDX folder, gzipped (mtime 0) or raw; optional MD5SUMS."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for part, stem in STEMS.items():
        magic = (magics or {}).get(part, IMAGES_MAGIC if part.endswith("images") else LABELS_MAGIC)
        data = idx_bytes(arrays[part], magic)
        name = f"{stem}.gz" if gz else stem
        (folder / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
        lines.append(f"{hashlib.md5((folder / name).read_bytes()).hexdigest()}  {name}\n")
    if md5sums:
        (folder / "MD5SUMS").write_text("".join(lines))
    return folder


def tiny_arrays(
    *,
    n_train: int = 48,
    n_test: int = 12,
    seed: int = 0,
    duplicates: Sequence[tuple[str, int, str, int]] = (),
) -> dict[str, np.ndarray]:
    """Arrays of a tiny source; each duplicate (set, i, set, j) copies digit i (image and label) onto j.

    With the default 48 train digits the writer's pools are train 0..43, val 44..47, test all 12.
    """
    images, labels = synthetic_digits(n_train + n_test, seed=seed)
    sets = {"train": (images[:n_train], labels[:n_train]), "test": (images[n_train:], labels[n_train:])}
    for src_set, i, dst_set, j in duplicates:
        sets[dst_set][0][j] = sets[src_set][0][i]
        sets[dst_set][1][j] = sets[src_set][1][i]
    return {
        "train_images": sets["train"][0],
        "train_labels": sets["train"][1],
        "test_images": sets["test"][0],
        "test_labels": sets["test"][1],
    }


def tiny_source(folder: Path, **kwargs: Any) -> Path:
    """Write a tiny source folder (see `tiny_arrays`); `gz`, `md5sums`, `magics` go to the writer."""
    writer_kwargs = {k: kwargs.pop(k) for k in ("gz", "md5sums", "magics") if k in kwargs}
    return write_mnist_folder(folder, tiny_arrays(**kwargs), **writer_kwargs)


@functools.lru_cache(maxsize=1)
def bundled_mnist() -> dict[str, np.ndarray]:
    """The bundled MNIST arrays, read here without the writer's reader (train/test images and labels)."""
    arrays = {}
    for part, stem in STEMS.items():
        data = gzip.decompress((BUNDLED / f"{stem}.gz").read_bytes())
        ndim = data[3]
        dims = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
        arrays[part] = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return arrays


# ---- building --------------------------------------------------------------------------------------

_BUILT: dict[tuple[str, ...], Path] = {}


def build_once(factory: pytest.TempPathFactory, recipe: str, *args: str) -> Path:
    """Build `recipe` with `args` (in-process, --jobs 1 unless given) once per test session; read only."""
    key = (recipe, *args)
    if key not in _BUILT:
        out = factory.mktemp(recipe) / "set"
        jobs = [] if "--jobs" in args else ["--jobs", "1"]
        assert main(["build", recipe, "--out", str(out), *args, *jobs]) == 0
        _BUILT[key] = out
    return _BUILT[key]


def error_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines that are not tqdm progress updates."""
    lines = [line for line in re.split(r"[\r\n]+", stderr) if line.strip()]
    return [line for line in lines if not TQDM_LINE.match(line)]


def visible_files(folder: Path) -> list[str]:
    """Names in `folder` not starting with a dot ([] when the folder does not exist)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def unlocated(name: str, data: bytes, location: str | Path) -> bytes:
    """A file's bytes with the set's location taken out of its card (the card names where the set is)."""
    if name != "README.md":
        return data
    where = location if str(location).startswith("s3://") else Path(location).resolve()
    return data.replace(str(where).encode(), b"<SET>")


def comparable(files: dict[str, bytes], location: str | Path) -> dict[str, bytes]:
    """A set's files, with its card checked to be the one rendered for `location` and then replaced by the
    one for a fixed place, so that sets built in different places (folders, s3://) compare byte for byte."""
    if "README.md" not in files or "manifest.json" not in files:
        return files
    from segshards.writer.share.card import render_card

    data = files["manifest.json"]
    manifest = json.loads(data)
    assert files["README.md"] == render_card(manifest, data, location=location).encode()
    return files | {"README.md": render_card(manifest, data, location="/SET").encode()}


def folder_bytes(folder: Path, *, skip: Sequence[str] = ("build-log.json",)) -> dict[str, bytes]:
    """Contents of every file in `folder` except `skip`; the card as for a fixed location (`comparable`)."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip}
    return comparable(files, folder)


# ---- reading shards without the writer's reader ------------------------------------------------------


def read_shard(path: Path) -> list[Sample]:
    """Samples of a shard via Python's tarfile, grouped by key in member order."""
    samples: list[Sample] = []
    with tarfile.open(path) as archive:
        for info in archive:
            assert info.isreg(), f"{path}: {info.name} is not a regular file"
            key, _, ext = info.name.partition(".")
            handle = archive.extractfile(info)
            assert handle is not None
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            assert ext not in samples[-1], f"{path}: duplicate member {info.name}"
            samples[-1][ext] = handle.read()
    return samples


def read_set(folder: Path) -> dict[str, list[Sample]]:
    """Every sample of a built set per split, in the manifest's shard order."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return {
        split: [s for entry in info["shards"] for s in read_shard(folder / entry["name"])]
        for split, info in manifest["splits"].items()
    }


def decode(payload: bytes) -> np.ndarray:
    """Pixels of a stored PNG, unchanged."""
    array = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    assert array is not None, "undecodable PNG"
    return array


def cv2_otsu(image: np.ndarray) -> np.ndarray:
    """0/1 Otsu mask exactly as cv2 computes it."""
    _, mask = cv2.threshold(image, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return mask


def kill_after_first_shard(build_args: list[str], out: Path, *, hint: str = "") -> list[str]:
    """Run `segshards BUILD_ARGS --out OUT` in a child process, SIGKILL it once its first shard is visible,
    and return the visible files left behind (fails the test when the build ends first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "segshards", *build_args, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and not list(out.glob("*.tar")) and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            pytest.fail(f"the build ended (rc {proc.returncode}) before it could be killed{hint}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return visible_files(out)
