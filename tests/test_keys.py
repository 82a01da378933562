"""Known-answer tests of the sample key and file digests (writer/keys.py)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import xxhash

from segshards.writer.format.keys import HASH_ALGORITHM, file_digest, is_key, pixel_digest, pixel_key


def test_xxh3_known_answers() -> None:
    # Published reference values (also used by mosaicml/streaming's and PHP's hash tests).
    assert xxhash.xxh3_64_hexdigest(b"hello") == "9555e8555c62dcfd"
    assert xxhash.xxh3_128_hexdigest(b"hello") == "b5e9c1ad071b3e7fc779cfaa5e523818"
    assert HASH_ALGORITHM == "xxh3_128"


def test_pixel_key_is_xxh3_128_of_the_c_ordered_pixels() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert pixel_key(image) == xxhash.xxh3_128_hexdigest(image.tobytes())
    # Pinned: changing it would change every key of every set already built.
    assert pixel_key(image) == "38f92247a7f73cc57780eb31198f13ca"
    assert pixel_digest(image).hex() == pixel_key(image)


def test_pixel_key_of_a_strided_view_equals_its_contiguous_copy() -> None:
    big = np.arange(64, dtype=np.uint8).reshape(8, 8)
    view = big[::2, 1::2]
    assert not view.flags.c_contiguous
    assert pixel_key(view) == pixel_key(view.copy()) == xxhash.xxh3_128_hexdigest(view.tobytes())
    assert pixel_key(big.T) == xxhash.xxh3_128_hexdigest(big.T.tobytes())


def test_pixel_key_refuses_non_uint8() -> None:
    with pytest.raises(TypeError, match="uint8"):
        pixel_key(np.zeros((2, 2), np.float32))


def test_is_key() -> None:
    assert is_key("38f92247a7f73cc57780eb31198f13ca")
    assert not is_key("38F92247A7F73CC57780EB31198F13CA")
    assert not is_key("38f92247a7f73cc57780eb31198f13c")
    assert not is_key("38f92247a7f73cc57780eb31198f13cg")


def test_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "md5", chunk=1000) == hashlib.md5(data).hexdigest()
    path.write_bytes(b"hello")
    assert file_digest(path) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
