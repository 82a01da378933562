"""Mid-epoch resume as the README's loop does it: iterate `DevicePrefetcher(loader, ...)`, save
`loader.state_dict()` inside the loop, resume in a new process's loader; every key as in the uninterrupted run."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from segshards.loaders import DevicePrefetcher, make_loader, to_float

BATCH_8_BYTES = 8 * (4 * 8 + 2 * 56 * 56)  # a batch of 8 grid samples: digits, image, mask


def readme_loader(folder: Path, workers: int, per_item: int = 1) -> Any:
    """The README's loader; `per_item` batches travel together from a worker (resumed mid-item too)."""
    return make_loader(
        folder, "train", batch_size=8, num_workers=workers, seed=0, transfer_bytes=per_item * BATCH_8_BYTES
    )


def readme_epochs(loader: Any, epochs: range, *, save_after: int | None = None) -> tuple[list, dict | None]:
    """The README's loop over `epochs`: (keys and first-pixel sums of each batch trained on, the
    `loader.state_dict()` saved after `save_after` batches, where the run then stops)."""
    seen: list[tuple[list[str], int]] = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in DevicePrefetcher(loader, "cpu"):
            batch = to_float(batch)
            seen.append((list(batch["key"]), int((batch["image"] * 255).round().sum())))
            if save_after is not None and len(seen) == save_after:
                return seen, json.loads(json.dumps(loader.state_dict()))  # as a checkpoint stores it
    return seen, None


@pytest.mark.parametrize(("workers", "per_item"), [(0, 1), (2, 1), (2, 3)])
def test_state_saved_inside_the_readme_loop_resumes_every_batch(
    grid_set: Path, workers: int, per_item: int
) -> None:
    whole, _ = readme_epochs(readme_loader(grid_set, workers, per_item), range(2))
    per_epoch = len(readme_loader(grid_set, workers))
    assert len(whole) == 2 * per_epoch
    for cut in (1, 7, per_epoch - 1, per_epoch + 3):
        first, state = readme_epochs(readme_loader(grid_set, workers, per_item), range(2), save_after=cut)
        assert state is not None
        resumed = readme_loader(grid_set, workers, per_item)  # a new process: fresh loader, saved state
        resumed.load_state_dict(state)
        rest, _ = readme_epochs(resumed, range(state["epoch"], 2))
        assert len(first) + len(rest) == len(whole), f"cut after {cut}: {len(first)} + {len(rest)} batches"
        assert first + rest == whole, f"cut after {cut}"


@pytest.mark.parametrize("workers", [0, 2])
def test_state_saved_after_batches_of_the_plain_loader_resumes_every_batch(
    grid_set: Path, workers: int
) -> None:
    whole = [list(b["key"]) for b in readme_loader(grid_set, workers)]
    loader = readme_loader(grid_set, workers)
    first = []
    for batch in loader:
        first.append(list(batch["key"]))
        if len(first) == 7:
            state = json.loads(json.dumps(loader.state_dict()))
            break
    resumed = readme_loader(grid_set, workers)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)
    assert first + [list(b["key"]) for b in resumed] == whole


def test_a_prefetcher_loop_left_early_leaves_the_held_batch_to_the_next_iteration(grid_set: Path) -> None:
    whole = [list(b["key"]) for b in readme_loader(grid_set, 2)]
    loader = readme_loader(grid_set, 2)
    taken = []
    for batch in DevicePrefetcher(loader, "cpu"):
        taken.append(list(batch["key"]))
        if len(taken) == 3:
            break
    assert loader.state_dict()["batches"] == 3
    rest = [list(b["key"]) for b in DevicePrefetcher(loader, "cpu")]
    assert taken + rest == whole


def test_the_prefetcher_reports_the_same_position_as_the_loader(grid_set: Path) -> None:
    loader = readme_loader(grid_set, 0)
    prefetcher = DevicePrefetcher(loader, "cpu")
    for i, _ in enumerate(prefetcher, start=1):
        assert loader.state_dict()["batches"] == i % len(loader)
        assert prefetcher.state_dict() == loader.state_dict()
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batches"] == 0


class Plain:
    """A loader that cannot be told what the prefetcher holds: the prefetcher's own state covers it."""

    def __init__(self) -> None:
        self.given = 0

    def __iter__(self) -> Any:
        for i in range(4):
            self.given = i + 1
            yield {"image": torch.full((1, 1, 2, 2), i, dtype=torch.uint8), "key": [str(i)]}

    def state_dict(self) -> dict[str, Any]:
        return {"given": self.given}


def test_a_loader_without_hold_last_is_covered_by_the_prefetcher_state() -> None:
    prefetcher = DevicePrefetcher(Plain(), "cpu")
    for i, batch in enumerate(prefetcher, start=1):
        assert batch["key"] == [str(i - 1)] and prefetcher.state_dict() == {"given": i}
