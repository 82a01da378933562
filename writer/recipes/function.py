"""The recipe behind `segshards.build(fn, inputs, out)`: a caller's function over a caller's inputs.

The spec holds the function and its inputs, so the one recipe class serves every call (workers import it
by reference, `registry.load_ref`). Before anything is planned, a walk calls `fn` once per input, in
split order then input order, on the build's worker processes (`map_in_order`: the order of the outcomes
never depends on who computed what): every error shows up here, before any shard is published. Each
sample's pixels, mask and meta go to a scratch file as they are made; rendering a shard reads them back
instead of calling `fn` again (the walk's share of the work is then `fn` and the key, the shards' the PNG
encoding). Without a scratch folder (dask workers, which may run elsewhere) rendering calls `fn` again,
and the writer's key check proves it made the same pixels.
"""

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segshards.writer.errors import ConfigError
from segshards.writer.format.images import canonical_json
from segshards.writer.format.keys import pixel_digest
from segshards.writer.format.schema import IGNORE, SampleSchema, Target
from segshards.writer.process_pool import map_in_order
from segshards.writer.recipes.contract import SPLITS, Candidates, RecipeBase, Rendered, SourceInfo
from segshards.writer.recipes.function_sample import Input, Made, make
from segshards.writer.recipes.walk import tally
from segshards.writer.sources.photos import BadRecord

RUN = 8  # inputs per task of the walk
AHEAD = 4  # runs waiting on each worker process
EXTS = ("raw", "png", "jpg")  # how a scratch row's image is held: pixels as they are, or bytes to store
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)  # an image stored as given is hashed by the writer from its bytes


@dataclass(frozen=True)
class FunctionSpec:
    """A call's function, inputs (split -> sequence) and rules; `scratch` None: rendering calls fn again."""

    fn: Callable[[Any], Any] | None
    inputs: Mapping[str, Sequence[Any]] | None
    classes: tuple[str, ...]
    targets: tuple[str | Target, ...] = ()
    on_error: str = "raise"
    jobs: int = 1
    scratch: str | None = None
    token: str = ""  # names this call's walk in the building process
    config: dict[str, Any] = field(default_factory=dict)  # what the manifest records of the call


class Offered(NamedTuple):
    """A sample the walk made: its pixel digest, scratch row (see `row_of`), and facts the schema needs."""

    key: bytes
    row: tuple[int, ...]
    ext: str
    channels: int
    size: tuple[int, int]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """A few consecutive inputs of one split, for one worker task."""

    fn: Callable[[Any], Any]
    split: str
    start: int
    values: list[Any]
    classes: int
    scratch: str | None
    number: int


def walk_run(run: Run) -> list[Offered | BadRecord | None]:
    """Each input of `run` through fn: a sample (written to the run's scratch file), a problem, or None."""
    out: list[Offered | BadRecord | None] = []
    path = None if run.scratch is None else Path(run.scratch) / f"{run.number:08d}.bin"
    with open(path, "wb") if path is not None else open(os.devnull, "wb") as f:
        for i, value in enumerate(run.values):
            index = run.start + i
            try:
                made = make(run.fn, value, run.classes, Input(run.split, index, value))
            except BadRecord as problem:
                out.append(problem)
                continue
            if made is None:
                out.append(None)
                continue
            row = row_of(made, SPLITS.index(run.split), index, run.number if path else -1, f.tell())
            if path is not None:
                f.write(made.image_bytes if made.image_bytes is not None else made.pixels.data)
                f.write(made.mask.data)
                f.write(canonical_json(made.meta))
            channels = 1 if made.pixels.ndim == 2 else made.pixels.shape[2]
            size = (made.mask.shape[0], made.mask.shape[1])
            out.append(Offered(pixel_digest(made.pixels), row, made.ext, channels, size, made.meta))
    return out


def row_of(made: Made, split: int, index: int, number: int, offset: int) -> tuple[int, ...]:
    """(split, input index, scratch file, offset, image bytes, meta bytes, H, W, channels, image kind)."""
    h, w = made.mask.shape
    image = len(made.image_bytes) if made.image_bytes is not None else made.pixels.nbytes
    meta = len(canonical_json(made.meta))
    channels = 1 if made.pixels.ndim == 2 else made.pixels.shape[2]
    kind = EXTS.index("raw" if made.image_bytes is None else made.ext)
    return (split, index, number, offset, image, meta, h, w, channels, kind)


@dataclass
class Selection:
    """What the walk found: per split the samples offered to the planner, in order, and the skips."""

    offered: dict[str, list[Offered]] = field(default_factory=dict)
    skipped: list[tuple[str, BadRecord]] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    schema: SampleSchema | None = None


_WALKS: dict[str, Selection] = {}  # this process's walk of the current call, by spec token


def select(spec: FunctionSpec) -> Selection:
    """The walk of `spec`'s inputs (made once per call, then reused by describe, schema and candidates)."""
    if spec.token in _WALKS:
        return _WALKS[spec.token]
    assert spec.fn is not None and spec.inputs is not None, "the walk runs where the inputs are"
    fn, inputs = spec.fn, spec.inputs
    runs = [
        Run(fn, s, start, list(inputs[s][start : start + RUN]), len(spec.classes), spec.scratch, 0)
        for s in SPLITS
        if s in inputs
        for start in range(0, len(inputs[s]), RUN)
    ]
    runs = [replace(r, number=n) for n, r in enumerate(runs)]
    sel = Selection(offered={s: [] for s in SPLITS})
    seen: set[bytes] = set()
    workers = max(spec.jobs - 1, 0)
    found = map_in_order(walk_run, runs, workers=workers, ahead=AHEAD * workers)
    with contextlib.closing(found):  # an error stops the walk: the runs still queued are cancelled
        for run, outcomes in zip(runs, found, strict=True):
            take(spec, sel, seen, run, outcomes)
    sel.schema = schema_of(spec, sel)
    _WALKS.clear()
    _WALKS[spec.token] = sel
    return sel


def take(
    spec: FunctionSpec, sel: Selection, seen: set[bytes], run: Run, outcomes: list[Offered | BadRecord | None]
) -> None:
    """One run's outcomes into the selection: samples offered (duplicates counted by the planner's rule,
    first in split order then input order wins), skips counted, or the first problem raised."""
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, Offered):
            sel.offered[run.split].append(outcome)
            sel.duplicates[run.split] = sel.duplicates.get(run.split, 0) + (outcome.key in seen)
            seen.add(outcome.key)
            continue
        problem = outcome or BadRecord(
            "returned-none", f"{Input(run.split, run.start + i, run.values[i])}: fn returned None"
        )
        if outcome is not None and spec.on_error == "raise":
            raise problem
        sel.skipped.append((f"{run.split}[{run.start + i}]", problem))


def forget(spec: FunctionSpec) -> None:
    """Drop the walk of `spec` (its call is over)."""
    _WALKS.pop(spec.token, None)


def first_other(sel: Selection, attr: str) -> tuple[Offered | None, Offered | None]:
    """The first offered sample, and the first whose `attr` differs from it (None: all agree)."""
    every = [o for s in SPLITS for o in sel.offered[s]]
    if not every:
        return None, None
    return every[0], next((o for o in every if getattr(o, attr) != getattr(every[0], attr)), None)


def named(o: Offered) -> str:
    return f"{SPLITS[o.row[0]]} input {o.row[1]}"


def schema_of(spec: FunctionSpec, sel: Selection) -> SampleSchema:
    """The set's schema, once every sample agrees on channels and image member and fits the targets."""
    for attr, what in (("channels", "image channels"), ("ext", "image member")):
        first, other = first_other(sel, attr)
        if first is not None and other is not None:
            raise ConfigError(
                f"{named(other)}: {what} {getattr(other, attr)}, but {named(first)} has {getattr(first, attr)}: "
                "every sample of a set must agree"
            )
    first, other = first_other(sel, "size")
    size = None if first is None or other is not None else first.size
    offered = [o for s in SPLITS for o in sel.offered[s]]
    targets = tuple(resolve_target(t, first, offered) for t in spec.targets)
    for o in offered:
        for target in targets:
            try:
                target.value(o.meta)
            except ValueError as exc:
                raise ConfigError(f"{named(o)}: meta does not give target {target.name!r} ({exc})") from None
    channels = 3 if first is None else first.channels
    ext = "png" if first is None else first.ext
    return SampleSchema(ext, channels, size, spec.classes, ignore=IGNORE, targets=targets)


def resolve_target(target: str | Target, first: Offered | None, offered: list[Offered]) -> Target:
    """A target named by its meta path, of the first sample's value's shape: int64 when every sample's
    values are integers, else float32 (the first one's type alone refused a later 2.5 after a 2)."""
    if isinstance(target, Target):
        return target
    value = meta_value(first.meta if first is not None else {}, target)
    shape: list[int] = []
    while isinstance(value, list) and value:
        shape.append(len(value))
        value = value[0]
    whole = all(is_integer(v) for o in offered for v in leaves(meta_value(o.meta, target)))
    dtype = "int64" if is_integer(value) and whole else "float32"
    return Target(target.rsplit(".", 1)[-1], dtype, tuple(shape), (target,))


def meta_value(meta: Any, path: str) -> Any:
    """The value at a dotted `path` of `meta`; None where it is missing."""
    for part in path.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def leaves(value: Any) -> Iterator[Any]:
    """The scalars of a value and of its nested lists (a missing value has none: it is refused later)."""
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    elif value is not None:
        yield value


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FunctionRecipe(RecipeBase):
    """Samples made by a function of your own, one per input (`segshards.build`)."""

    name = "function"
    walked_in_build = True  # the walk over every input, run by the build before planning, gives the keys
    summary = "samples made by a Python function over its inputs (segshards.build; not a CLI recipe)"
    shard_size = 1_000

    def default_counts(self) -> dict[str, int | None]:
        return {s: None for s in SPLITS}

    def add_options(self, parser: Any) -> None:
        raise ConfigError("the function recipe is built from Python: segshards.build(fn, inputs, out)")

    def make_spec(self, options: Any) -> FunctionSpec:
        raise ConfigError("the function recipe is built from Python: segshards.build(fn, inputs, out)")

    def spec_config(self, options: Any) -> dict[str, Any]:
        return {}

    def describe(self, spec: FunctionSpec) -> SourceInfo:
        sel = select(spec)
        found = tally(sel.skipped)
        extra = {
            "function": spec.config.get("function"),
            "inputs": spec.config.get("inputs"),
            "skipped": {"counts": found.counts, "inputs": found.names, "first": found.first},
            "notes": notes(sel, found.counts),
        }
        mask = {"num_classes": len(spec.classes), "ignore_index": IGNORE}
        return SourceInfo("python-function", [], extra, mask)

    def schema(self, spec: FunctionSpec) -> SampleSchema:
        schema = select(spec).schema
        assert schema is not None
        return schema

    def candidates(self, spec: FunctionSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        # Inputs keep the caller's order: the planner's `rng` is not used.
        offered = select(spec).offered[split]
        if offered:
            yield Candidates(np.array([o.row for o in offered], np.int64), [o.key for o in offered])

    def share(self, spec: FunctionSpec, folder: Path, *, local: bool) -> FunctionSpec:
        """Workers read the scratch files: they need neither fn nor the inputs."""
        return replace(spec, fn=None, inputs=None) if spec.scratch is not None else spec

    def render(self, spec: FunctionSpec, item: np.ndarray) -> Rendered:
        split, index, number, offset, n_image, n_meta, h, w, channels, kind = (int(v) for v in item)
        if spec.scratch is None or number < 0:
            return remade(spec, SPLITS[split], index)
        with open(Path(spec.scratch) / f"{number:08d}.bin", "rb") as f:
            f.seek(offset)
            data = f.read(n_image + h * w + n_meta)
        mask = np.frombuffer(data, np.uint8, h * w, n_image).reshape(h, w)
        meta = json.loads(data[n_image + h * w :])
        if EXTS[kind] != "raw":
            return Rendered(NO_PIXELS, mask, meta, EXTS[kind], data[:n_image])
        shape = (h, w) if channels == 1 else (h, w, channels)
        return Rendered(np.frombuffer(data, np.uint8, h * w * channels).reshape(shape), mask, meta)


def remade(spec: FunctionSpec, split: str, index: int) -> Rendered:
    """The sample of one input, from fn again (no scratch where this worker runs)."""
    assert spec.fn is not None and spec.inputs is not None
    value = spec.inputs[split][index]
    made = make(spec.fn, value, len(spec.classes), Input(split, index, value))
    if made is None:
        raise ConfigError(f"{Input(split, index, value)}: fn returned None this time, a sample before")
    if made.image_bytes is not None:
        return Rendered(NO_PIXELS, made.mask, made.meta, made.ext, made.image_bytes)
    return Rendered(made.pixels, made.mask, made.meta)


def notes(sel: Selection, skipped: dict[str, int]) -> list[str]:
    """Lines for the card: duplicates rejected and inputs left out."""
    out = [
        "samples rejected as pixel-identical to an earlier one (split order train, val, test, then input "
        "order): " + ", ".join(f"{s} {sel.duplicates.get(s, 0)}" for s in SPLITS)
    ]
    if skipped:
        out.append("inputs left out: " + ", ".join(f"{r} {n}" for r, n in skipped.items()))
    return out
