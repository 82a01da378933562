"""make_loader on local shard sets: batch format, epochs over workers and ranks, resume, errors, prefetching."""

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from segshards.loaders import DevicePrefetcher, ResumeError, SkippedDataWarning, make_loader, to_float
from segshards.writer.errors import ConfigError, ShardFormatError
from segshards.writer.format.images import encode_png
from segshards.writer.format.keys import pixel_key
from segshards.writer.format.manifest import read_manifest, shard_entries
from segshards.writer.format.tar_reader import iter_samples
from segshards.writer.format.tar_writer import tar_bytes


def manifest_keys(folder: Path, split: str = "train") -> list[str]:
    """Every key of a split, read with the writer's own (independent) tar reader."""
    keys = []
    for entry in shard_entries(read_manifest(folder), split):
        with open(folder / entry["name"], "rb") as f:
            keys.extend(str(s["__key__"]) for s in iter_samples(f, entry["name"]))
    return keys


def batch_keys(batches: Any) -> list[list[str]]:
    return [list(b["key"]) for b in batches]


def flat(batches: list[list[str]]) -> list[str]:
    return [k for b in batches for k in b]


def test_grid_batches(grid_set: Path) -> None:
    loader = make_loader(grid_set, "val", 8)
    batches = list(loader)
    assert [len(b["key"]) for b in batches] == [8, 8, 8, 6] and len(loader) == 4
    first = batches[0]
    assert set(first) == {"image", "mask", "key", "digits"}
    assert first["image"].shape == (8, 1, 56, 56) and first["image"].dtype == torch.uint8
    assert first["mask"].shape == (8, 56, 56) and first["mask"].dtype == torch.uint8
    assert first["digits"].shape == (8, 4) and first["digits"].dtype == torch.int64
    # the mask holds digit d as d + 1 in the quadrant of digit d
    digits, mask = first["digits"][0].tolist(), first["mask"][0]
    for quadrant, (r, c) in enumerate([(0, 0), (0, 28), (28, 0), (28, 28)]):
        assert set(mask[r : r + 28, c : c + 28].unique().tolist()) <= {0, digits[quadrant] + 1}
    assert sorted(flat(batch_keys(batches))) == sorted(manifest_keys(grid_set, "val"))


def test_circle_targets(circle_set: Path) -> None:
    batch = next(iter(make_loader(circle_set, "test", 10, shuffle=False)))
    assert set(batch) == {"image", "mask", "key", "label", "circle"}
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (10,)
    assert batch["circle"].dtype == torch.float32 and batch["circle"].shape == (10, 3)
    assert batch["mask"].max() == 1 and batch["circle"][:, 2].min() > 0


def test_epoch_order_is_deterministic_and_changes_with_epoch_and_seed(grid_set: Path) -> None:
    def epoch(seed: int, e: int, **kw: Any) -> list[str]:
        loader = make_loader(grid_set, "train", 16, seed=seed, **kw)
        loader.set_epoch(e)
        return flat(batch_keys(loader))

    reference = epoch(0, 0)
    assert sorted(reference) == sorted(manifest_keys(grid_set))
    assert epoch(0, 0) == reference
    assert epoch(0, 1) != reference and epoch(1, 0) != reference
    assert epoch(5, 3, shuffle=False) == manifest_keys(grid_set)


@pytest.mark.parametrize("shard_size", [60, 125])
def test_two_ranks_of_two_workers_see_every_sample_once(
    tmp_path: Path, grid_set: Path, shard_size: int
) -> None:
    folder = grid_set
    if shard_size != 60:  # 2 shards of 125 for 4 workers: two workers get nothing
        folder = tmp_path / "grid"
        from segshards.writer.cli.main import main

        assert (
            main(
                [
                    "build",
                    "mnist-grid",
                    "--out",
                    str(folder),
                    "--train",
                    "250",
                    "--val",
                    "0",
                    "--test",
                    "0",
                    "--shard-size",
                    str(shard_size),
                    "--jobs",
                    "1",
                ]
            )
            == 0
        )
    seen: list[str] = []
    for rank in range(2):
        loader = make_loader(folder, "train", 16, num_workers=2, seed=3, rank=rank, world_size=2)
        expected = len(loader)  # of this epoch: shard counts differ, so it varies with the shard order
        batches = batch_keys(loader)
        assert len(batches) == expected
        seen.extend(flat(batches))
    assert len(seen) == len(set(seen)) == 250
    assert set(seen) == set(manifest_keys(folder))


def interrupted(make: Any, k: int, *, through_prefetcher: bool = False) -> tuple[list[list[str]], dict]:
    """The first k batches of a fresh loader and the state saved after them (round-tripped through JSON)."""
    loader = make()
    source = DevicePrefetcher(loader, "cpu") if through_prefetcher else loader
    iterator: Iterator[dict] = iter(source)
    first = [list(next(iterator)["key"]) for _ in range(k)]
    state = source.state_dict()
    iterator.close()  # type: ignore[attr-defined]
    return first, json.loads(json.dumps(state))


BATCH_16_BYTES = 16 * (4 * 8 + 2 * 56 * 56)  # a batch of 16 grid samples: digits, image, mask


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # on a 2-core machine
@pytest.mark.parametrize(
    ("workers", "per_item", "kw"),
    [(0, 1, {}), (2, 1, {}), (2, 3, {}), (2, 3, {"rank": 1, "world_size": 2}), (3, 2, {}), (2, 64, {})],
)
def test_resume_mid_epoch_yields_exactly_the_rest_in_order(
    grid_set: Path, workers: int, per_item: int, kw: dict
) -> None:
    def make() -> Any:
        return make_loader(
            grid_set,
            "train",
            16,
            num_workers=workers,
            seed=7,
            shuffle_buffer=50,
            transfer_bytes=per_item * BATCH_16_BYTES,
            **kw,
        )

    full = batch_keys(make())
    cuts = sorted({1, 2, workers + 1, len(full) // 2, len(full) - 2, len(full) - 1})
    for k in cuts:
        first, state = interrupted(make, k, through_prefetcher=k % 2 == 1)
        assert first == full[:k]
        resumed = make()
        resumed.load_state_dict(state)
        resumed.set_epoch(0)  # a training loop sets the epoch it resumes: the position stays
        rest = batch_keys(resumed)
        assert first + rest == full, f"cut after {k} batches"
        assert resumed.epoch == 1 and resumed.state_dict()["batches"] == 0


def test_resampled_mode_gives_every_rank_the_same_number_of_batches(grid_set: Path) -> None:
    def make(rank: int) -> Any:
        return make_loader(grid_set, "train", 16, num_workers=2, resampled=True, rank=rank, world_size=2)

    runs = [batch_keys(make(rank)) for rank in (0, 1)]
    assert [len(r) for r in runs] == [8, 8] == [len(make(0))] * 2  # ceil(250 / (2 * 16))
    assert runs[0] != runs[1] and batch_keys(make(0)) == runs[0]
    endless = make(0).forever()
    assert [next(endless)["key"] for _ in range(20)][:8] == runs[0]  # 20 batches: past the nominal epoch
    endless.close()
    first, state = interrupted(lambda: make(1), 3)
    resumed = make(1)
    resumed.load_state_dict(state)
    assert first + batch_keys(resumed) == runs[1]


def test_loader_continues_across_epochs_and_set_epoch(grid_set: Path) -> None:
    loader = make_loader(grid_set, "val", 10)
    epoch0 = batch_keys(loader)
    epoch1 = batch_keys(loader)  # a full pass moves to the next epoch
    assert loader.epoch == 2 and epoch1 != epoch0 and sorted(flat(epoch1)) == sorted(flat(epoch0))
    loader.set_epoch(0)
    iterator = iter(loader)
    next(iterator)
    iterator.close()
    loader.set_epoch(0)  # the same epoch: keeps the position
    assert batch_keys(loader) == epoch0[1:]
    loader.set_epoch(0)
    loader.set_epoch(1)
    assert batch_keys(loader) == epoch1


def test_a_second_iteration_supersedes_the_first(grid_set: Path) -> None:
    loader = make_loader(grid_set, "val", 8, shuffle=False)
    first = iter(loader)
    assert next(first)["key"] == batch_keys(make_loader(grid_set, "val", 8, shuffle=False))[0]
    second = iter(loader)
    assert len(next(second)["key"]) == 8  # continues from the position: the second batch
    with pytest.raises(RuntimeError, match="iterated again"):
        next(first)
    assert loader.state_dict()["batches"] == 2


def test_state_from_other_settings_is_refused(grid_set: Path) -> None:
    state = make_loader(grid_set, "train", 16, num_workers=2).state_dict()
    with pytest.raises(ResumeError, match="num_workers=2, this loader has 1"):
        make_loader(grid_set, "train", 16).load_state_dict(state)
    with pytest.raises(ResumeError, match="batch_size"):
        make_loader(grid_set, "train", 8, num_workers=2).load_state_dict(state)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 0}, "batch_size 0"),
        ({"rank": 2, "world_size": 2}, "rank 2: must be in 0..1"),
        ({"on_error": "ignore"}, "on_error 'ignore'"),
        ({"size": (0, 5)}, "size"),
        ({"split": "test"}, "split 'test' has no shards"),
        ({"split": "holdout"}, "split 'holdout' not in manifest"),
    ],
)
def test_bad_options_are_refused(grid_set: Path, kw: dict, message: str) -> None:
    args = {"split": "train", "batch_size": 4, **kw}
    with pytest.raises((ConfigError, ShardFormatError), match=message):
        make_loader(grid_set, **args)


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupt_shard_raises_naming_it_or_is_skipped_and_reported(grid_set: Path, tmp_path: Path) -> None:
    folder = copy_set(grid_set, tmp_path / "grid")
    shard = folder / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:30_000])  # 8 samples, then a cut inside the 9th
    with pytest.raises(ShardFormatError, match=r"^\S*train-000002.tar: .*truncated") as caught:
        list(make_loader(folder, "train", 16, num_workers=2))
    assert "\n" not in str(caught.value)  # one line, not DataLoader's wrapped traceback
    loader = make_loader(folder, "train", 16, num_workers=2, on_error="skip")
    with pytest.warns(SkippedDataWarning, match="skipped 1 shard"):
        keys = flat(batch_keys(loader))
    assert loader.stats.shards_failed == 1 and "train-000002.tar" in loader.stats.errors[0]
    # the cut falls in the 9th sample's first header: the 8 samples before it come out whole
    assert len(keys) == len(set(keys)) == 250 - 60 + 8
    assert loader.stats.samples_skipped == 0


def test_count_mismatch_and_pickles_are_refused(grid_set: Path, tmp_path: Path) -> None:
    folder = copy_set(grid_set, tmp_path / "grid")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][4]["count"] = 11
    manifest["splits"]["train"]["count"] = 251
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardFormatError, match="train-000004.tar: 10 samples, the manifest says 11"):
        list(make_loader(folder, "train", 16, shuffle=False))
    (folder / "train-000000.tar").write_bytes(tar_bytes([("k.png", b"x"), ("k.pkl", b"cos\nsystem\n")]))
    with pytest.raises(ShardFormatError, match="train-000000.tar: refusing pickled"):
        list(make_loader(folder, "train", 16, shuffle=False))


def test_brace_expanded_urls_without_manifest(grid_set: Path) -> None:
    pattern = f"{grid_set}/train-{{000000..000004}}.tar"
    loader = make_loader(pattern, "train", 16, num_workers=2)
    with pytest.raises(TypeError, match="epoch length unknown"):
        len(loader)
    batches = list(loader)
    assert "digits" not in batches[0]
    assert sorted(k for b in batches for k in b["key"]) == sorted(manifest_keys(grid_set))
    assert "digits" in next(iter(make_loader(pattern, "train", 16, schema=grid_set)))


def jpeg_set(folder: Path) -> str:
    """A manifest-less shard of colour JPEGs of varying sizes with masks, as a COCO-like set stores them."""
    rng = np.random.default_rng(0)
    members = []
    for i, (h, w) in enumerate([(30, 40), (50, 20), (32, 32)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.full((h, w), i + 1, np.uint8)
        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        key = pixel_key(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        members += [(f"{key}.jpg", jpeg), (f"{key}.json", b"{}"), (f"{key}.mask.png", encode_png(mask))]
    folder.mkdir()
    (folder / "train-000000.tar").write_bytes(tar_bytes(members))  # samples in this order
    return str(folder / "train-000000.tar")


def test_variable_size_rgb_images_need_size_and_are_letterboxed(tmp_path: Path) -> None:
    url = jpeg_set(tmp_path / "jpeg")
    with pytest.raises(ShardFormatError, match="pass size="):
        list(make_loader(url, "train", 3, shuffle=False))
    batch = next(iter(make_loader(url, "train", 3, shuffle=False, size=(24, 24))))
    assert batch["image"].shape == (3, 3, 24, 24) and batch["mask"].shape == (3, 24, 24)
    mask = batch["mask"]
    assert (mask[0, :3] == 255).all() and (mask[0, 3:21] == 1).all()  # 30x40 -> 18x24, centred
    assert (mask[1][:, :7] == 255).all() and (mask[1][:, 7:17] == 2).all()  # 50x20 -> 24x10 (rounded)
    assert (mask[2] == 3).all()


def test_device_prefetcher_on_cpu(grid_set: Path) -> None:
    loader = make_loader(grid_set, "val", 8, shuffle=False)
    prefetcher = DevicePrefetcher(loader, "cpu", transform=to_float)
    batches = list(prefetcher)
    assert [b["key"] for b in batches] == batch_keys(make_loader(grid_set, "val", 8, shuffle=False))
    image = batches[0]["image"]
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert batches[0]["mask"].dtype == torch.int64
    assert len(prefetcher) == 4 and prefetcher.state_dict()["epoch"] == 1


def test_device_prefetcher_counts_the_wait_within_the_loop_time(grid_set: Path) -> None:
    prefetcher = DevicePrefetcher(make_loader(grid_set, "val", 8, shuffle=False), "cpu")
    assert prefetcher.wait_fraction is None
    for _ in prefetcher:
        time.sleep(0.02)  # the consumer's "training step"
    assert prefetcher.iterating_s >= 4 * 0.02
    assert 0 < prefetcher.data_wait_s < prefetcher.iterating_s
    fraction = prefetcher.wait_fraction
    assert fraction is not None and 0 < fraction < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_prefetcher_on_cuda(grid_set: Path) -> None:
    loader = make_loader(grid_set, "train", 16, num_workers=2)
    expected = batch_keys(make_loader(grid_set, "train", 16, num_workers=2))
    prefetcher = DevicePrefetcher(loader, "cuda", transform=to_float)
    seen = []
    for batch in prefetcher:
        assert batch["image"].is_cuda and batch["image"].dtype == torch.float32
        seen.append(batch["key"])
        assert float(batch["image"].sum()) > 0  # the copy completed before use
    assert seen == expected


def test_shards_are_never_unpickled(grid_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("something tried to unpickle")

    for module, name in ((pickle, "loads"), (pickle, "load"), (torch, "load"), (np, "load")):
        monkeypatch.setattr(module, name, forbidden)
    assert len(list(make_loader(grid_set, "val", 8, with_meta=True))) == 4


def worker_pids(loader: Any) -> list[int]:
    return loader.pool.pids()


def test_workers_persist_across_epochs_and_each_epoch_keeps_its_order(grid_set: Path) -> None:
    loader = make_loader(grid_set, "train", 16, num_workers=2, seed=5)
    first = batch_keys(loader)
    pids = worker_pids(loader)
    second = batch_keys(loader)  # epoch 1, from the same worker processes
    assert worker_pids(loader) == pids
    fresh = make_loader(grid_set, "train", 16, num_workers=2, seed=5)
    fresh.set_epoch(1)
    assert second == batch_keys(fresh) and second != first
    assert sorted(flat(second)) == sorted(flat(first))  # every sample once per epoch


def test_a_loop_left_early_gets_fresh_workers_and_the_rest_of_its_epoch(grid_set: Path) -> None:
    loader = make_loader(grid_set, "train", 16, num_workers=2, seed=5)
    whole = batch_keys(make_loader(grid_set, "train", 16, num_workers=2, seed=5))
    taken = []
    for batch in loader:
        taken.append(list(batch["key"]))
        if len(taken) == 3:
            break
    rest = batch_keys(loader)  # workers were blocked mid-item: new ones replay the position
    assert taken + rest == whole


def test_an_iteration_superseded_by_a_newer_one_stops_and_leaves_it_whole(grid_set: Path) -> None:
    settings: dict[str, Any] = {"num_workers": 2, "seed": 5, "transfer_bytes": 1}  # one batch an item
    loader = make_loader(grid_set, "train", 16, **settings)
    whole = batch_keys(make_loader(grid_set, "train", 16, **settings))
    first = iter(loader)
    taken = [list(next(first)["key"])]
    second = iter(loader)  # continues the epoch from the first one's position
    rest = [list(next(second)["key"])]
    with pytest.raises(RuntimeError, match="iterated again"):
        next(first)
    del first
    rest += batch_keys(second)
    assert taken + rest == whole
    assert loader.epoch == 1


def test_a_worker_lost_between_epochs_costs_an_iteration_then_fresh_workers_take_over(
    grid_set: Path,
) -> None:
    loader = make_loader(grid_set, "train", 16, num_workers=2, seed=5)
    batch_keys(loader)
    fresh = make_loader(grid_set, "train", 16, num_workers=2, seed=5)
    fresh.set_epoch(1)
    expected = batch_keys(fresh)
    with pytest.raises(RuntimeError, match="killed by signal"):
        os.kill(worker_pids(loader)[0], signal.SIGKILL)
        for _ in range(50):
            time.sleep(0.1)  # PyTorch's SIGCHLD handler raises here, or the next iteration does
        batch_keys(loader)
    outcomes: list[Any] = []
    for _ in range(2):  # restarting the dead worker may fail once more; then fresh workers start
        try:
            outcomes.append(batch_keys(loader))
            break
        except RuntimeError as exc:
            outcomes.append(str(exc))
    assert outcomes[-1] == expected, outcomes
