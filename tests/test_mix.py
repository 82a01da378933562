"""make_loader over a mix of sets: exact per-stream counts, seeded order, resume, ranks x workers, schemas."""

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segshards.loaders import SkippedDataWarning, Stream, make_loader
from segshards.loaders.mix import interleave
from segshards.writer.cli.main import main as writer_main
from segshards.writer.errors import ConfigError, ShardFormatError
from tests.test_loaders import interrupted
from tests.test_mask_folder import COCO_TINY, voc_tree

MASK_FOLDER_CLASSES = ("0", "1", "2")  # voc_tree's classes


def keys_of(loader: Any) -> list[list[str]]:
    return [list(b["key"]) for b in loader]


def flat(batches: list[list[str]]) -> list[str]:
    return [k for b in batches for k in b]


def test_choose_repeat_and_proportion_counts_are_exact(grid_set: Path) -> None:
    chosen = flat(keys_of(make_loader([Stream(grid_set, choose=100)], "train", 16, seed=1)))
    assert len(chosen) == len(set(chosen)) == 100  # without replacement: each chosen sample once
    counts = Counter(flat(keys_of(make_loader([Stream(grid_set, repeat=1.5)], "train", 16, seed=1))))
    assert len(counts) == 250 and Counter(counts.values()) == {1: 125, 2: 125}
    counts = Counter(flat(keys_of(make_loader([Stream(grid_set, choose=300)], "train", 16, seed=1))))
    assert len(counts) == 250 and Counter(counts.values()) == {1: 200, 2: 50}
    loader = make_loader(
        [Stream(grid_set, proportion=0.4), Stream(grid_set, choose=30), Stream(grid_set)],
        "train",
        16,
        num_workers=2,
        epoch_size=200,
    )
    expected = len(loader)  # of this epoch (iterating moves the loader to the next one)
    batches = keys_of(loader)
    assert len(flat(batches)) == 80 + 30 + 250 and len(batches) == expected
    assert [s["samples"] for s in loader.stats.streams] == [80, 30, 250]  # type: ignore[attr-defined]


def test_order_is_fixed_by_seed_and_epoch(grid_set: Path) -> None:
    def epoch(e: int, seed: int = 3) -> list[str]:
        loader = make_loader(
            [Stream(grid_set, choose=60), Stream(grid_set, repeat=0.5)], "train", 8, seed=seed
        )
        loader.set_epoch(e)
        return flat(keys_of(loader))

    first = epoch(0)
    assert first == epoch(0) and len(first) == 60 + 125
    assert first != epoch(1) and Counter(first) != Counter(epoch(1))  # another choice, not only another order
    assert first != epoch(0, seed=4)


def test_streams_interleave_evenly_unshuffled_and_by_a_seeded_permutation() -> None:
    assert interleave([4, 2], None).tolist() == [0, 1, 0, 0, 1, 0]
    assert interleave([0, 3], None).tolist() == [1, 1, 1]
    shuffled = interleave([5, 3, 2], np.random.default_rng(0))
    assert sorted(shuffled.tolist()) == [0] * 5 + [1] * 3 + [2] * 2
    assert shuffled.tolist() == interleave([5, 3, 2], np.random.default_rng(0)).tolist()


def test_a_shard_with_more_samples_than_its_manifest_says_is_refused(grid_set: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(grid_set, tmp_path / "grid"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["count"] -= 1  # the shard holds one more than this says
    manifest["splits"]["train"]["count"] -= 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardFormatError, match="60 samples, the manifest says 59"):
        list(make_loader([Stream(folder, repeat=1.0)], "train", 8))


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_each_streams_last_shard_is_checked_to_its_end(grid_set: Path, tmp_path: Path, on_error: str) -> None:
    folder = Path(shutil.copytree(grid_set, tmp_path / "grid"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][-1]["sha256"] = "0" * 64  # the last shard read of each stream
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loader = make_loader([Stream(folder), Stream(folder)], "train", 8, shuffle=False, on_error=on_error)  # type: ignore[arg-type]
    if on_error == "raise":
        with pytest.raises(ShardFormatError, match="sha256"):
            list(loader)
        return
    with pytest.warns(SkippedDataWarning):
        assert sum(len(b["key"]) for b in loader) == 2 * 250  # its samples were read before the check
    assert [s["shards_failed"] for s in loader.stats.streams] == [1, 1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_several_points_equals_the_uninterrupted_epoch(grid_set: Path, workers: int) -> None:
    def make() -> Any:
        streams = [Stream(grid_set, choose=120), Stream(grid_set, repeat=1.5)]
        return make_loader(streams, "train", 16, num_workers=workers, seed=5, shuffle_buffer=40)

    full = keys_of(make())
    for k in sorted({1, 3, len(full) // 2, len(full) - 1}):
        first, state = interrupted(make, k, through_prefetcher=k % 2 == 1)
        assert first == full[:k]
        resumed = make()
        resumed.load_state_dict(state)
        resumed.set_epoch(0)
        assert first + keys_of(resumed) == full, f"cut after {k} batches"


def test_a_position_of_another_mix_is_refused(grid_set: Path) -> None:
    loader = make_loader([Stream(grid_set, choose=50)], "train", 8)
    state = loader.state_dict()
    other = make_loader([Stream(grid_set, choose=60)], "train", 8)
    with pytest.raises(Exception, match="shards"):
        other.load_state_dict(state)


def test_two_ranks_of_two_workers_deliver_the_epochs_multiset(grid_set: Path) -> None:
    streams = [Stream(grid_set, choose=90), Stream(grid_set, repeat=1.2)]
    whole = Counter(flat(keys_of(make_loader(streams, "train", 16, seed=2))))
    seen: Counter[str] = Counter()
    for rank in range(2):
        loader = make_loader(streams, "train", 16, num_workers=2, seed=2, rank=rank, world_size=2)
        expected = len(loader)
        batches = keys_of(loader)
        assert len(batches) == expected
        seen.update(flat(batches))
    assert seen == whole and sum(whole.values()) == 90 + 300


@pytest.fixture(scope="module")
def voc_and_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A mask-folder set (classes 0, 1, 2; 8 train samples) and a coco-semantic set (coco-tiny, 8 train)."""
    root = tmp_path_factory.mktemp("mix")
    tree = voc_tree(root / "voc")
    lists = str(tree.root / "ImageSets" / "Segmentation")
    argv = ["build", "mask-folder", "--out", str(root / "voc-set"), *tree.args("--split-lists", lists)]
    assert writer_main([*argv, "--jobs", "1"]) == 0
    if COCO_TINY is None:
        pytest.skip("coco-tiny photographs not found")
    source = COCO_TINY.parent
    argv = ["build", "coco-semantic", "--annotations", str(source / "instances.json"), "--jobs", "1"]
    argv += ["--images", str(source / "images"), "--out", str(root / "coco"), "--shard-size", "4"]
    assert writer_main([*argv, "--train", "8", "--val", "3", "--test", "3"]) == 0
    return root / "voc-set", root / "coco"


def test_class_mapped_mix_of_a_mask_folder_set_and_coco(voc_and_coco: tuple[Path, Path]) -> None:
    voc, coco = voc_and_coco
    size = (48, 64)  # the mask-folder images' own size: their masks come through unresized
    alone = {
        k: m.numpy().copy()
        for b in make_loader(voc, "train", 8, shuffle=False, size=size)
        for k, m in zip(b["key"], b["mask"], strict=True)
    }
    class_map = {"0": "background", "1": "car", "2": None}
    loader = make_loader([Stream(coco), Stream(voc, class_map=class_map)], "train", 4, size=size, seed=1)
    lut = np.arange(256, dtype=np.uint8)
    lut[[0, 1, 2]] = [0, 3, 255]  # coco-semantic: 0 background, 3 car
    found = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 48, 64)
        for key, mask in zip(batch["key"], batch["mask"], strict=True):
            if key in alone:
                found += 1
                assert np.array_equal(mask.numpy(), lut[alone[key]])
    assert found == 8 and [s["samples"] for s in loader.stats.streams] == [8, 8]  # type: ignore[attr-defined]


def test_schema_mismatches_are_refused_in_one_line(
    voc_and_coco: tuple[Path, Path], grid_set: Path, circle_set: Path
) -> None:
    voc, coco = voc_and_coco
    with pytest.raises(ConfigError, match=r"class 0 is '0', .*coco has 'background'") as err:
        make_loader([Stream(coco), Stream(voc)], "train", 4, size=(48, 64))
    assert "\n" not in str(err.value) and str(voc) in str(err.value)
    with pytest.raises(ConfigError, match="targets"):
        make_loader([Stream(grid_set), Stream(circle_set)], "train", 4)
    with pytest.raises(ConfigError, match="must agree on images"):
        make_loader([Stream(grid_set), Stream(voc)], "train", 4)
    with pytest.raises(ConfigError, match="'cat', not a class of the mix"):
        make_loader([Stream(voc), Stream(voc, class_map={"1": "cat"})], "train", 4)
    with pytest.raises(ConfigError, match=r"class 2 is '2', the mix has '\(none\)'"):
        make_loader([Stream(voc)], "train", 4, classes=["0", "1"])
    to_fg = Stream(voc, class_map={"0": "bg", "1": "fg", "2": "fg"})
    mix = make_loader([to_fg, to_fg], "train", 4, classes=["bg", "fg"])
    assert mix.shards.schema is not None and mix.shards.schema.classes == ("bg", "fg")
    assert {int(v) for b in mix for v in b["mask"].unique()} <= {0, 1, 255}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda g: Stream(g, choose=5, repeat=2), "at most one of"),
        (lambda g: Stream(g, choose=-1), "choose=-1"),
        (lambda g: make_loader([Stream(g, proportion=0.5)], "train", 4), "needs epoch_size"),
        (lambda g: make_loader([Stream(g, repeat=2)], "train", 4, resampled=True), "resampled"),
        (lambda g: make_loader(g, "train", 4, epoch_size=10), "epoch_size 10"),
        (lambda g: make_loader([], "train", 4), "non-empty list of Stream"),
    ],
)
def test_bad_mix_options_are_refused(grid_set: Path, make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(grid_set)


def test_a_stream_may_be_remote(grid_set: Path, s3_upload: Any) -> None:
    url = s3_upload(grid_set, "mix/grid")
    loader = make_loader([Stream(url, choose=20), Stream(grid_set, choose=10)], "train", 8)
    assert len(flat(keys_of(loader))) == 30
