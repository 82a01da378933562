"""The one photo walk of the recipes that read others' photographs (coco-semantic, mask-folder).

A walk checks source items along a seeded order, in worker processes and in this one (`map_in_order`:
outcomes come back in order, so the walk is deterministic whoever checked what), and fills the splits in
order as the planner will: a problem raises or is skipped and counted, a sound item is offered to the
planner with its key, and duplicates are found by the planner's own rule (`keys.accept`) on the same keys
in the same order, so the planner rejects exactly those. What rendering needs of the chosen items is
written once (`share_prepared`) for worker processes, which map large byte strings instead of loading them.
"""

import contextlib
import functools
import itertools
import mmap
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias, TypeVar

from segshards.writer.errors import SupplyError
from segshards.writer.format.keys import accept
from segshards.writer.process_pool import map_in_order
from segshards.writer.sources.photos import BadRecord, keep_large_frees

W = TypeVar("W")
WALK_AHEAD = 4  # runs waiting on each worker process


class Checked(NamedTuple):
    """A sound item: its key (the pixel digest), its image file's digest (rendering proves it meets the
    same bytes without decoding them again), the recipe's facts (plain data) and, optionally, a large
    byte string rendering reuses (a class-index PNG), dropped when the walk holds too many."""

    key: bytes
    file: bytes
    facts: Any
    blob: bytes | None = None
    codes: Any = None  # the image's near-duplicate codes, when the spec asks (`--near-duplicates reject`)


Outcome: TypeAlias = Checked | BadRecord


@dataclass
class Selection:
    """The outcome of a walk: per split, the items offered to the planner (duplicates included, which the
    planner rejects in the same order), those it will accept, the duplicates with the earlier item of the
    same pixels, what was learnt of each offered item, and the problems skipped (by name)."""

    offered: dict[str, list[int]] = field(default_factory=dict)
    chosen: dict[str, list[int]] = field(default_factory=dict)
    duplicates: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (item, earlier twin)
    checked: dict[int, Checked] = field(default_factory=dict)
    near: dict[str, int] = field(
        default_factory=dict
    )  # near-duplicates left out (`--near-duplicates reject`)
    skipped: dict[Hashable, BadRecord] = field(default_factory=dict)

    def problem(self, name: Hashable, problem: BadRecord, on_error: str) -> None:
        """Raise `problem` (--on-error raise), or leave `name` out and count it (skip)."""
        if on_error == "raise":
            raise problem
        self.skipped[name] = problem


def checked_runs(check: Callable[[W], list[Outcome]], work: W) -> list[Outcome]:
    """`check` of one run, where glibc keeps photo-sized arrays for the next photo (see keep_large_frees)."""
    keep_large_frees()
    return check(work)


def outcomes(
    order: list[int],
    work_of: Callable[[list[int]], W],
    check: Callable[[W], list[Outcome]],
    *,
    jobs: int,
    run: int,
) -> Generator[tuple[int, Outcome]]:
    """(item, outcome) along `order`: runs of `run` items (`work_of` packs one for `check`, both picklable)
    checked on `jobs - 1` worker processes and in this one, a few runs ahead of the consumer."""
    runs = [order[i : i + run] for i in range(0, len(order), run)]
    work = (work_of(r) for r in runs)
    # A daemonic process (a dask worker walking the source again for itself) may not start children:
    # it walks alone, to the same outcomes in the same order.
    workers = 0 if multiprocessing.current_process().daemon else jobs - 1
    task = functools.partial(checked_runs, check)
    with contextlib.closing(map_in_order(task, work, workers=workers, ahead=WALK_AHEAD * workers)) as found:
        for items, results in zip(runs, found, strict=True):
            yield from zip(items, results, strict=True)


class Walk:
    """Fills the splits in order from a stream of outcomes, as the planner will."""

    def __init__(
        self,
        sel: Selection,
        *,
        on_error: str,
        name: Callable[[int], Hashable],
        budget: int = 0,
        near: Callable[[Any], bool] | None = None,
    ):
        self.sel, self.on_error, self.name = sel, on_error, name
        self.near = near  # False for the codes of a near-duplicate of an item chosen before (then indexed)
        self.seen: set[bytes] = set()  # the planner's dedup index, rebuilt by its own rule
        self.first: dict[bytes, int] = {}  # key -> first item of those pixels, for the duplicates report
        self.budget, self.held = budget, 0  # bytes of blobs the selection may hold, and held

    def fill(
        self, split: str, count: int | None, stream: Iterator[tuple[int, Outcome]], *, drain: bool = False
    ) -> bool:
        """Take outcomes until `count` unique items (None: all); True when the count is met. `drain`: then
        the rest too, counting its problems and offering its duplicates (to be rejected), no unique item."""
        sel = self.sel
        offered, chosen = sel.offered.setdefault(split, []), sel.chosen.setdefault(split, [])
        dups = sel.duplicates.setdefault(split, [])
        while drain or count is None or len(chosen) < count:
            step = next(stream, None)
            if step is None:
                break
            item, outcome = step
            if isinstance(outcome, BadRecord):
                sel.problem(self.name(item), outcome, self.on_error)
                continue
            if count is not None and len(chosen) >= count and outcome.key not in self.seen:
                continue  # usable, but the count is met
            offered.append(item)
            sel.checked[item] = outcome
            if accept([outcome.key], self.seen, None)[0]:
                self.first[outcome.key] = item
                if self.near is None or self.near(outcome.codes):  # else offered, for the planner to reject
                    chosen.append(item)
                else:
                    sel.near[split] = sel.near.get(split, 0) + 1
            else:
                dups.append((item, self.first[outcome.key]))
        return count is None or len(chosen) >= count

    def budgeted(self, stream: Iterable[tuple[int, Outcome]]) -> Generator[tuple[int, Outcome]]:
        """`stream`, each blob dropped once the budget is spent (rendering then makes it again)."""
        for item, outcome in stream:
            yield item, self.kept(outcome) if isinstance(outcome, Checked) else outcome

    def kept(self, checked: Checked) -> Checked:
        """`checked`, its blob held if the budget allows, else dropped."""
        if checked.blob is None:
            return checked
        if self.held + len(checked.blob) > self.budget:
            return checked._replace(blob=None)
        self.held += len(checked.blob)
        return checked


def short_supply(sel: Selection, split: str, count: int, source: str) -> SupplyError:
    """The error for a split the source cannot fill: the option, the source and where its items went."""
    earlier = sum(len(v) for s, v in sel.chosen.items() if s != split)
    duplicates = sum(len(v) for v in sel.duplicates.values())
    near = sum(sel.near.values())
    left = f"{len(sel.skipped)} skipped and {duplicates} duplicates"
    if near:
        left = f"{len(sel.skipped)} skipped, {duplicates} duplicates and {near} near-duplicates (--near-duplicates reject)"
    return SupplyError(
        f"--{split} {count}: {source}; after {earlier} for earlier splits, {left}, "
        f"only {len(sel.chosen[split])} remain for {split}"
    )


@dataclass(frozen=True)
class Tally:
    """Problems left out under --on-error skip: per reason (sorted), the count, the names (in the order
    given) and the first message."""

    counts: dict[str, int]
    names: dict[str, list[Any]]
    first: dict[str, str]


def tally(*groups: Iterable[tuple[Any, BadRecord]]) -> Tally:
    """The one skip accounting: every (name, problem) of every group, counted by reason."""
    names: dict[str, list[Any]] = {}
    first: dict[str, str] = {}
    for name, problem in itertools.chain(*groups):
        names.setdefault(problem.reason, []).append(name)
        first.setdefault(problem.reason, str(problem))
    reasons = sorted(names)
    return Tally(
        {r: len(names[r]) for r in reasons}, {r: names[r] for r in reasons}, {r: first[r] for r in reasons}
    )


# ---- what worker processes render from ------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """What rendering needs of the offered items: the recipe's `head` (facts of the whole source), a row
    per item, and the items' blobs: in the process that walked, the bytes themselves; in a worker, spans
    of the blob file, mapped rather than loaded (up to a GiB of masks)."""

    head: Any
    rows: dict[int, Any]
    blobs: Mapping[int, bytes] = field(default_factory=dict)
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)
    mapped: mmap.mmap | None = None

    def blob(self, item: int) -> bytes | None:
        if item in self.blobs:
            return self.blobs[item]
        if self.mapped is None or item not in self.spans:
            return None
        start, length = self.spans[item]
        return self.mapped[start : start + length]


# What `share_prepared` wrote in this process, by path: the walking process renders shards too and keeps
# its own copy instead of reading the file back. Replaced at each build.
WRITTEN: dict[str, Prepared] = {}


def share_prepared(folder: Path, kind: str, prep: Prepared) -> str:
    """Write `prep` for worker processes: the rows as a pickle, the blobs in a file beside it. The names
    are unique to this build, so a worker kept from an earlier build never reads an earlier build's."""
    tag = folder / f"{kind}-{os.getpid()}-{time.time_ns()}"
    spans: dict[int, tuple[int, int]] = {}
    with open(tag.with_suffix(".bin"), "wb") as blob:
        for item in sorted(prep.blobs):
            spans[item] = (blob.tell(), len(prep.blobs[item]))
            blob.write(prep.blobs[item])
    with open(tag.with_suffix(".pickle"), "wb") as f:
        pickle.dump((prep.head, prep.rows, spans), f, protocol=pickle.HIGHEST_PROTOCOL)
    WRITTEN.clear()  # only this build's: a long-lived process keeps no earlier build's items
    WRITTEN[str(tag)] = prep
    return str(tag)


def load_prepared(tag: str) -> Prepared:
    """What `share_prepared` wrote at `tag`: a pickle read only from this build's own work folder."""
    if tag in WRITTEN:
        return WRITTEN[tag]
    with open(Path(tag).with_suffix(".pickle"), "rb") as f:
        head, rows, spans = pickle.load(f)
    mapped = None
    with open(Path(tag).with_suffix(".bin"), "rb") as f:
        if os.fstat(f.fileno()).st_size:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return Prepared(head, rows, spans=spans, mapped=mapped)


def blobs_of(sel: Selection, items: Iterable[int]) -> dict[int, bytes]:
    """The blobs the walk kept of `items`."""
    return {i: b for i in items if (b := sel.checked[i].blob) is not None}
