"""`segshards.build(fn, inputs, out)` (issue 24): a set from a function gives what a CLI build gives, the
same bytes for any `jobs`, global dedup, skips and one-line errors before any shard, resume after a kill."""

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import segshards
from segshards.loaders import make_loader
from segshards.writer.build import from_function
from segshards.writer.cli.main import main
from segshards.writer.errors import ConfigError, OutputError, SourceError
from segshards.writer.format.keys import pixel_key

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = next(
    (p for p in (ROOT.parent / "shared" / "data" / "coco-tiny", ROOT.parents[1] / "shared" / "data" / "coco-tiny")
     if (p / "instances.json").is_file()),
    None,
)  # fmt: skip
CLASSES = ["background", "blob"]
SIDE = 24


def blob(i: int) -> dict[str, Any]:
    """A seeded RGB noise image with a bright square: (H, W, 3) RGB, its mask, and its id in `meta`."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 100, size=(SIDE, SIDE, 3), dtype=np.uint8)
    top, left = (int(v) for v in rng.integers(0, SIDE - 8, size=2))
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[top : top + 8, left : left + 8] = 1
    image[mask == 1] = (250, 120, 10)  # R, G, B: the order is checked on the way back
    return {"image": image, "mask": mask, "meta": {"id": i, "area": 64.0}}


def flaky(i: int) -> dict[str, Any] | None:
    """`blob`, but None for multiples of 7 and an error for multiples of 5."""
    if i % 7 == 0:
        return None
    if i % 5 == 0:
        raise FileNotFoundError(f"no record {i}")
    return blob(i)


def set_files(out: Path) -> dict[str, bytes]:
    """The set's files that do not depend on where it is (the card and the run log name the place/time)."""
    return {
        p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name not in ("README.md", "build-log.json")
    }


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, segshards.BuildResult]:
    out = tmp_path_factory.mktemp("fn") / "blobs"
    inputs = {"train": list(range(40)), "val": list(range(40, 52))}
    result = segshards.build(blob, inputs, out, classes=CLASSES, targets=["id", "area"], jobs=2, shard_size=8)
    return out, result


def test_jobs_one_and_two_give_the_same_bytes(blobs: tuple[Path, Any], tmp_path: Path) -> None:
    out, result = blobs
    inputs = {"train": list(range(40)), "val": list(range(40, 52))}
    one = segshards.build(
        blob, inputs, tmp_path / "one", classes=CLASSES, targets=["id", "area"], jobs=1, shard_size=8
    )
    assert set_files(tmp_path / "one") == set_files(out)
    assert one.counts == result.counts == {"train": 40, "val": 12, "test": 0}
    assert len(list(out.glob("train-*.tar"))) == 5 and result.location == str(out)


def test_without_scratch_fn_runs_again_in_rendering_and_makes_the_same_bytes(
    blobs: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(from_function, "scratch_folder", lambda backend: None)  # as for dask workers
    inputs = {"train": list(range(40)), "val": list(range(40, 52))}
    segshards.build(
        blob, inputs, tmp_path / "again", classes=CLASSES, targets=["id", "area"], jobs=2, shard_size=8
    )
    assert set_files(tmp_path / "again") == set_files(blobs[0])


def test_verify_preview_and_the_loader_read_the_set_with_its_targets(
    blobs: tuple[Path, Any], tmp_path: Path
) -> None:
    out, _ = blobs
    assert main(["verify", str(out)]) == 0
    assert main(["preview", str(out), "-o", str(tmp_path / "p.png"), "--count", "4"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["function"] == f"{__name__}:blob"
    assert manifest["schema"]["targets"] == [
        {"name": "id", "dtype": "int64", "shape": [], "from": ["id"], "role": "value"},
        {"name": "area", "dtype": "float32", "shape": [], "from": ["area"], "role": "value"},
    ]
    assert manifest["schema"]["image"] == {"member": "png", "channels": 3, "size": [SIDE, SIDE]}
    batch = next(iter(make_loader(out, "val", 12, shuffle=False, with_meta=True)))
    assert batch["id"].tolist() == list(range(40, 52)) and batch["area"].dtype == torch.float32
    for k, i in enumerate(batch["id"].tolist()):  # RGB in, RGB out: stored BGR, keyed as verify keys it
        made = blob(i)
        assert torch.equal(batch["image"][k], torch.from_numpy(made["image"]).permute(2, 0, 1))
        assert torch.equal(batch["mask"][k], torch.from_numpy(made["mask"]))
        assert batch["key"][k] == pixel_key(cv2.cvtColor(made["image"], cv2.COLOR_RGB2BGR))


def test_duplicates_are_rejected_globally_first_in_split_then_input_order(tmp_path: Path) -> None:
    inputs = {"train": [1, 2, 1, 3], "val": [2, 4, 4], "test": [3, 5]}
    result = segshards.build(blob, inputs, tmp_path / "d", classes=CLASSES, jobs=2)
    assert result.counts == {"train": 3, "val": 1, "test": 1}
    assert result.duplicates == {"train": 1, "val": 2, "test": 1}
    val = next(iter(make_loader(tmp_path / "d", "val", 1, shuffle=False, with_meta=True)))
    assert val["meta"][0]["id"] == 4
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["duplicates_rejected"] == 4


def test_skips_are_counted_per_reason(tmp_path: Path) -> None:
    result = segshards.build(
        flaky, list(range(1, 36)), tmp_path / "s", classes=CLASSES, on_error="skip", jobs=2
    )
    # 7 14 21 28 35 return None; 5 10 15 20 25 30 raise (35 returns None first)
    assert result.skipped == {"FileNotFoundError": 6, "returned-none": 5}
    assert result.counts["train"] == 35 - 11 == result.total
    source = json.loads((tmp_path / "s" / "manifest.json").read_text())["source"]
    assert source["skipped"]["inputs"]["FileNotFoundError"][0] == "train[4]"


def test_an_fn_that_raises_names_the_input_and_the_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        segshards.build(flaky, {"val": [1, 2, 3, 4, 5, 6]}, tmp_path / "r", classes=CLASSES, jobs=2)
    assert str(caught.value) == "val input 4 (5): fn raised FileNotFoundError: no record 5"
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    with pytest.raises(SourceError) as caught:
        segshards.build(flaky, {"val": [1, 2, 3, 4, 5, 6]}, tmp_path / "r1", classes=CLASSES, jobs=1)
    assert isinstance(caught.value.__cause__, FileNotFoundError)  # in one process: fn's own traceback too


def bad(kind: str) -> Any:
    """A function whose output breaks one rule at input 3."""

    def fn(i: int) -> Any:
        out = blob(i)
        if i != 3:
            return out
        broken = {
            "dtype": {**out, "image": out["image"].astype(np.float32)},
            "rank": {**out, "mask": out["mask"][:, :, None]},
            "shape": {**out, "mask": out["mask"][:-1]},
            "class": {**out, "mask": out["mask"] * 9},
            "channels": {**out, "image": out["image"][:, :, 0]},
            "meta": {**out, "meta": {"id": {1, 2}}},
            "type": ("image", "mask"),
            "both": {**out, "image_bytes": cv2.imencode(".png", out["image"])[1].tobytes()},
            "alpha": {
                "image_bytes": cv2.imencode(".png", np.dstack([out["image"], out["mask"]]))[1].tobytes(),
                "mask": out["mask"],
            },
        }
        return broken[kind]

    return fn


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dtype", "train input 3 (3): image has dtype float32, expected uint8"),
        ("rank", "train input 3 (3): mask has shape (24, 24, 1), expected (H, W) class ids"),
        ("shape", "train input 3 (3): mask is 24x23, its image 24x24"),
        ("class", "train input 3 (3): mask holds value 9, not a class id (0..1) nor 255 (ignore)"),
        (
            "channels",
            "train input 3: image channels 1, but train input 0 has 3: every sample of a set must agree",
        ),
        (
            "meta",
            "train input 3 (3): meta is not JSON-serialisable (Object of type set is not JSON serializable)",
        ),
        ("type", "train input 3 (3): fn returned a tuple, expected a dict or None"),
        # the image was dropped for the bytes without a word
        ("both", "train input 3 (3): fn returned both 'image' and 'image_bytes'; give one of them"),
        # built, verified, then `segshards train` failed on a 4-channel model fed 3 channels
        ("alpha", "train input 3 (3): image_bytes is a PNG of 4 channels, expected grey or RGB"),
    ],
)
def test_bad_output_is_one_line_naming_the_input_before_any_shard(
    kind: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        segshards.build(bad(kind), list(range(12)), tmp_path / "b", classes=CLASSES, jobs=2, shard_size=2)
    assert str(caught.value) == message
    assert not list(tmp_path.glob("b/*.tar")) and not (tmp_path / "b" / "manifest.json").exists()


def test_what_cannot_reach_workers_is_refused_and_lambdas_travel(tmp_path: Path) -> None:
    lock = threading.Lock()
    with pytest.raises(ConfigError, match=r"^fn: cannot be pickled for worker processes \(TypeError"):
        segshards.build(lambda i: blob(i) if lock else None, [1], tmp_path / "p", classes=CLASSES, jobs=2)
    result = segshards.build(lambda i: blob(i + 100), [1, 2], tmp_path / "l", classes=CLASSES, jobs=2)
    assert result.counts["train"] == 2


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        segshards.build(blob, {"dev": [1]}, tmp_path / "a", classes=CLASSES)
    with pytest.raises(ConfigError, match="^classes: "):
        segshards.build(blob, [1], tmp_path / "a", classes=[])
    with pytest.raises(ConfigError, match="^on_error 'ignore'"):
        segshards.build(blob, [1], tmp_path / "a", classes=CLASSES, on_error="ignore")
    with pytest.raises(ConfigError, match=r"^--seed 'x': must be an integer$"):  # was a raw TypeError
        segshards.build(blob, [1], tmp_path / "a", classes=CLASSES, seed="x")  # type: ignore[arg-type]


def jpeg_of(i: int) -> dict[str, Any]:
    """The encoded JPEG is stored as it is; the key is of the pixels OpenCV decodes from it."""
    made = blob(i)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(made["image"], cv2.COLOR_RGB2BGR))
    assert ok
    return {"image_bytes": data.tobytes(), "mask": made["mask"]}


def test_encoded_images_are_stored_as_they_are(tmp_path: Path) -> None:
    segshards.build(jpeg_of, [1, 2, 3], tmp_path / "j", classes=CLASSES, jobs=2)
    assert main(["verify", str(tmp_path / "j")]) == 0
    manifest = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert manifest["schema"]["image"]["member"] == "jpg"


def test_a_second_call_after_a_kill_reuses_the_shards_written(tmp_path: Path) -> None:
    out = tmp_path / "k"
    code = (
        "import sys, segshards; from tests.test_build_from_python import slow_build; slow_build(sys.argv[-1])"
    )
    left, pid = kill_after_first_shard_of(code, out)
    assert left and "manifest.json" not in left
    scratch = Path(tempfile.gettempdir()).glob(f"segshards-fn-{pid}-*")
    assert list(scratch), "the killed build left its scratch folder"
    slow_build(str(out))
    assert not list(Path(tempfile.gettempdir()).glob(f"segshards-fn-{pid}-*")), "the next build removes it"
    log = json.loads((out / "build-log.json").read_text())
    assert log["shards_reused"] >= 1 and log["shards_reused"] + log["shards_written"] == 60
    slow_build(str(tmp_path / "clean"))
    assert set_files(out) == set_files(tmp_path / "clean")


def big_blob(i: int) -> dict[str, Any]:
    made = blob(i)
    return {
        **made,
        "image": cv2.resize(made["image"], (192, 192)),
        "mask": cv2.resize(made["mask"], (192, 192)),
    }


def slow_build(out: str) -> None:
    """240 inputs in 60 shards, enough rendering to be killed in the middle of."""
    segshards.build(big_blob, list(range(240)), out, classes=CLASSES, jobs=2, shard_size=4)


def kill_after_first_shard_of(code: str, out: Path) -> tuple[list[str], int]:
    """`kill_after_first_shard` (tests/mnist_fixtures.py) for a Python program instead of a command line:
    the visible files left, and the pid of the killed process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env)
    try:
        return watch_and_kill(proc, out), proc.pid
    finally:
        proc.kill()
        proc.wait()


def watch_and_kill(proc: subprocess.Popen[bytes], out: Path) -> list[str]:
    deadline = time.monotonic() + 60
    while proc.poll() is None and not list(out.glob("*.tar")) and time.monotonic() < deadline:
        time.sleep(0.002)
    if proc.poll() is not None:
        pytest.fail(f"the build ended (rc {proc.returncode}) before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def test_importing_segshards_does_not_import_opencv() -> None:
    code = "import sys, segshards; assert 'cv2' not in sys.modules; assert callable(segshards.build)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        segshards.nothing  # noqa: B018


@pytest.mark.skipif(COCO_TINY is None, reason="coco-tiny not found beside the repository")
def test_tiles_cut_from_coco_tiny_photos(tmp_path: Path) -> None:
    assert COCO_TINY is not None
    from bench.python_build_bench import coco_tiles, tile_inputs

    inputs = tile_inputs(COCO_TINY, per_photo=4)
    result = segshards.build(coco_tiles(COCO_TINY), {"train": inputs[8:], "val": inputs[:8]}, tmp_path / "c",
                             classes=["background", "person", "other"], jobs=2, shard_size=16)  # fmt: skip
    assert (
        result.counts["val"] == 8 and result.counts["train"] + result.duplicates["train"] == len(inputs) - 8
    )
    assert main(["verify", str(tmp_path / "c")]) == 0


def test_dask_workers_call_fn_again_and_write_the_same_bytes(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from tests.test_dask_backend import Cluster

    def stripes(i: int) -> dict[str, Any]:  # nested: travels by value to workers that cannot import tests
        image = np.zeros((16, 16, 3), np.uint8)
        image[:, : i % 16] = (i * 7 % 256, 40, 90)
        return {"image": image, "mask": (image[:, :, 0] > 0).astype(np.uint8), "meta": {"i": i}}

    inputs = {"train": list(range(30)), "val": list(range(30, 40))}
    cluster = Cluster(1, tmp_path)
    try:
        segshards.build(
            stripes, inputs, tmp_path / "dask", classes=CLASSES, backend="dask", scheduler=cluster.address
        )
    finally:
        cluster.close()
    result = segshards.build(stripes, inputs, tmp_path / "local", classes=CLASSES, jobs=1)
    assert set_files(tmp_path / "dask") == set_files(tmp_path / "local")
    # i = 0, 16 and 32 draw no stripe: the same pixels, the first (train 0) kept
    assert result.duplicates == {"train": 1, "val": 1, "test": 0} and result.counts == {
        "train": 29,
        "val": 9,
        "test": 0,
    }


def test_a_folder_holding_another_set_is_refused_before_fn_runs(tmp_path: Path) -> None:
    out = tmp_path / "o"
    segshards.build(blob, [1, 2], out, classes=CLASSES, jobs=1)
    with pytest.raises(
        OutputError, match=r"holds a function set built with other settings \(manifest.json: function "
    ):
        segshards.build(flaky, [5], out, classes=CLASSES, jobs=1)  # flaky(5) raises: fn never ran
    assert (
        segshards.build(blob, [1, 2], out, classes=CLASSES, jobs=2).counts["train"] == 2
    )  # the same: reused


def test_the_card_says_to_call_build_again_not_the_cli(blobs: tuple[Path, Any]) -> None:
    card = (blobs[0] / "README.md").read_text()
    assert "segshards.build(tests.test_build_from_python.blob, inputs, out, ...)" in card
    assert "with `segshards build` and the same recipe" not in card


def test_a_second_call_after_fn_was_edited_is_refused_not_reused(tmp_path: Path) -> None:
    """The same name over the same inputs, with another body: its shards were reused without a word, so
    the set in `out` held what the old code made."""
    out = tmp_path / "o"

    def run(fill: int) -> subprocess.CompletedProcess[str]:
        script = (
            "import numpy as np, segshards\n"
            "def make(i):\n"
            f"    mask = np.full((8, 8), {fill}, np.uint8)\n"
            "    return {'image': np.full((8, 8), i, np.uint8), 'mask': mask}\n"
            f"segshards.build(make, [1, 2, 3], {str(out)!r}, classes=['background', 'thing'], jobs=1)\n"
        )
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert run(0).returncode == 0
    assert run(0).returncode == 0  # the same code again: reused
    edited = run(1)
    assert edited.returncode != 0 and "OutputError" in edited.stderr
    assert "holds a function set built with other settings (manifest.json: function_sha256" in edited.stderr
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["function"] == "__main__:make" and len(config["function_sha256"]) == 64


def test_the_function_digest_follows_the_code_wherever_it_is() -> None:
    assert from_function.function_digest(blob) == from_function.function_digest(functools.partial(blob))
    assert from_function.function_digest(blob) != from_function.function_digest(flaky)
    assert from_function.function_digest(len) is None  # a C function: no source, no bytecode


def scored(i: int) -> dict[str, Any]:
    """A target whose first values are whole and a later one is not: 0, 1, 2, 3.5."""
    return {**blob(i), "meta": {"score": i if i < 3 else i + 0.5, "box": [i, i + 1]}}


def test_a_target_is_float32_when_any_value_is_not_an_integer(tmp_path: Path) -> None:
    """The first value's type alone made it int64, and a later 3.5 was refused as "meta does not give
    target"; RECIPES.md says int64 only when the values are integers."""
    segshards.build(scored, [0, 1, 2, 3], tmp_path / "s", classes=CLASSES, targets=["score", "box"], jobs=1)
    targets = json.loads((tmp_path / "s" / "manifest.json").read_text())["schema"]["targets"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in targets] == [
        ("score", "float32", []),
        ("box", "int64", [2]),
    ]
    batch = next(iter(make_loader(tmp_path / "s", "train", 4, shuffle=False)))
    assert sorted(batch["score"].tolist()) == [0.0, 1.0, 2.0, 3.5]
