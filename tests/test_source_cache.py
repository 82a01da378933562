"""The prepared-source cache: decoded once, reused by later builds, never trusted when damaged or stale."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import segshards.writer.recipes.digits as digits_module
from segshards.writer.cli.main import main
from segshards.writer.recipes.digits import CACHE_KIND, DigitsSpec, load_digits
from segshards.writer.sources.cache import ENV, cache_root
from tests.mnist_fixtures import folder_bytes, tiny_source

ARGS = ["--train", "40", "--val", "8", "--test", "8", "--shard-size", "16"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cache folder for one test, with the per-process memo cleared around it."""
    root = tmp_path / "cache"
    monkeypatch.setenv(ENV, str(root))
    clear()
    yield root
    clear()


def clear() -> None:
    digits_module.cached_digits.cache_clear()
    load_digits.cache_clear()


def build(out: Path, source: Path, *extra: str) -> dict[str, bytes]:
    assert main(["build", "mnist-grid", "--out", str(out), "--source", str(source), *ARGS, *extra]) == 0
    return folder_bytes(out)


def entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / CACHE_KIND).iterdir() if not p.name.startswith("."))


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(folder: Path) -> None:
        raise AssertionError(f"{folder} decoded again despite a cache entry")

    monkeypatch.setattr(digits_module, "decode_digits", refuse)


def test_second_build_reads_the_cache_and_gives_the_same_bytes(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_source(tmp_path / "src")
    first = build(tmp_path / "a", source)
    assert len(entries(cache)) == 1
    clear()
    forbid_decoding(monkeypatch)
    for jobs in ("1", "2"):
        assert build(tmp_path / f"b{jobs}", source, "--jobs", jobs) == first
    assert not (tmp_path / "b2" / ".segshards-work").exists()


def test_a_damaged_entry_is_prepared_again(cache: Path, tmp_path: Path) -> None:
    source = tiny_source(tmp_path / "src")
    first = build(tmp_path / "a", source)
    (entry,) = entries(cache)
    images = np.load(entry / "images.npy")
    images[3, 10, 10] ^= 0xFF  # one flipped pixel, shapes intact
    np.save(entry / "images.npy", images)
    clear()
    assert build(tmp_path / "b", source) == first
    clear()
    spec = DigitsSpec(str(source.resolve()))
    assert np.array_equal(load_digits(spec).images, np.load(entries(cache)[0] / "images.npy"))
    assert load_digits(spec).images[3, 10, 10] != images[3, 10, 10]


def test_another_source_gets_its_own_entry(cache: Path, tmp_path: Path) -> None:
    build(tmp_path / "a", tiny_source(tmp_path / "src1", seed=1))
    clear()
    build(tmp_path / "b", tiny_source(tmp_path / "src2", seed=2))
    assert len(entries(cache)) == 2


def test_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "off")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    clear()
    assert cache_root() is None
    build(tmp_path / "a", tiny_source(tmp_path / "src"), "--jobs", "2")
    assert not (tmp_path / "home").exists()
    clear()


def test_unwritable_cache_costs_a_note_not_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(ENV, str(blocker))
    clear()
    source = tiny_source(tmp_path / "src")
    out = tmp_path / "a"
    build(out, source, "--jobs", "2")
    clear()
    err = capsys.readouterr().err
    assert "source cache" in err and "not written" in err
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["count"] == 40
