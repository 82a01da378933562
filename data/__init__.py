"""Data shipped with segshards as package data: the MNIST IDX files under `mnist/` (see `MD5SUMS`)."""

from pathlib import Path

MNIST = Path(__file__).resolve().parent / "mnist"
