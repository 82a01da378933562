"""Feeding a device: batches copied ahead on a side CUDA stream while the current one trains.

On CUDA, batch k+1 is copied (non-blocking, from pinned memory when the loader pins) on a side stream
while the training step on batch k runs; the compute stream waits for that copy only when it takes the
batch. `transform` (e.g. `to_float`) runs on the device right after the copy, on the same side stream:
float conversion and normalisation happen there, never in the workers. The loader itself is advanced on
that side stream too, so a loader that decodes on the GPU (`make_loader(..., decode_device="cuda")`) decodes
batch k+1 there while batch k trains. Without CUDA the same code runs on the CPU with no stream.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

Batch = dict[str, Any]


def to_device(batch: Batch, device: torch.device, *, non_blocking: bool = True) -> Batch:
    """The batch with its tensors on `device` (other values, such as keys, as they are)."""
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def to_float(batch: Batch, mean: float = 0.0, std: float = 1.0) -> Batch:
    """Images as float32 in [0, 1], then (x - mean) / std; masks as int64 class indices (for the loss)."""
    out = dict(batch)
    image = batch["image"].float().div_(255.0)
    out["image"] = image.sub_(mean).div_(std) if (mean, std) != (0.0, 1.0) else image
    out["mask"] = batch["mask"].long()
    return out


class DevicePrefetcher:
    """Iterate `loader` with every batch already on `device`, the next one copied while this one is used.

    It holds one batch ahead of the one it hands out. A loader that can be told so (`hold_last`, as
    `make_loader`'s can) is: its own `state_dict()`, saved inside the training loop, is then the position
    after the batches handed out, and a loop left early gives the held batch back to the loader. For other
    loaders `state_dict()` of this prefetcher reports that position.
    `data_wait_s` accumulates the time spent waiting for the loader (host side), `iterating_s` the wall
    time spent inside iterations (waiting plus the consumer's work), so `wait_fraction` is the share of
    the training loop lost to data.
    """

    def __init__(
        self, loader: Any, device: torch.device | str, transform: Callable[[Batch], Batch] | None = None
    ) -> None:
        self.loader, self.device, self.transform = loader, torch.device(device), transform
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self.data_wait_s = 0.0
        self._iterated_s = 0.0
        self._iter_started: float | None = None
        self._state: dict[str, Any] | None = None

    def _fetch(self, iterator: Iterator[Batch]) -> Batch | None:
        started = time.perf_counter()
        try:
            if self.stream is None:
                batch = next(iterator)
            else:
                with torch.cuda.stream(self.stream):  # a loader's device decode runs beside the step
                    batch = next(iterator)
        except StopIteration:
            return None
        finally:
            self.data_wait_s += time.perf_counter() - started
        if self.stream is None:
            batch = to_device(batch, self.device, non_blocking=False)
            return self.transform(batch) if self.transform else batch
        with torch.cuda.stream(self.stream):
            batch = to_device(batch, self.device)
            return self.transform(batch) if self.transform else batch

    @property
    def iterating_s(self) -> float:
        """Wall seconds spent inside iterations so far, the one in progress included."""
        running = time.perf_counter() - self._iter_started if self._iter_started is not None else 0.0
        return self._iterated_s + running

    @iterating_s.setter
    def iterating_s(self, value: float) -> None:
        self._iterated_s = value

    @property
    def wait_fraction(self) -> float | None:
        """Share of the iteration time spent waiting for the loader (None before any iteration)."""
        total = self.iterating_s
        return self.data_wait_s / total if total > 0 else None

    def __iter__(self) -> Iterator[Batch]:
        self._iter_started = time.perf_counter()
        self._state = None
        iterator = iter(self.loader)
        try:
            upcoming = self._fetch(iterator)
            upcoming_state = self._hold(upcoming is not None)
            while upcoming is not None:
                batch, state = upcoming, upcoming_state
                if self.stream is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_stream(self.stream)
                    for value in batch.values():
                        if isinstance(value, torch.Tensor):
                            value.record_stream(current)  # memory reused only after the step's kernels ran
                upcoming = self._fetch(iterator)
                upcoming_state = self._hold(upcoming is not None)
                self._state = state
                yield batch
            self._state = upcoming_state
        finally:
            self._iterated_s, self._iter_started = self.iterating_s, None
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a loop left early stops the loader's workers now (and gives back the held batch)

    def _hold(self, holding: bool) -> dict[str, Any] | None:
        """Tell the loader whether its last batch is held here; for a loader that cannot be told, its
        position now (after the batch just fetched), to report once that batch is handed out."""
        hold = getattr(self.loader, "hold_last", None)
        if hold is not None:
            hold(holding)
            return None
        return self.loader.state_dict() if hasattr(self.loader, "state_dict") else None

    def state_dict(self) -> dict[str, Any]:
        """The loader's position after the batches this prefetcher has handed out."""
        return self._state if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._state = None

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
        self._state = None

    def __len__(self) -> int:
        return len(self.loader)


CudaPrefetcher = DevicePrefetcher
