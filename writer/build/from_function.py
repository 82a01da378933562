"""`segshards.build(fn, inputs, out)`: a set built from a function of your own, by the CLI's machinery.

One call gives what a CLI build gives: the planner's global dedup, shards byte-identical for any `jobs`,
the manifest with schema and checksums, resume after a crash, the card; `verify`, the loaders and `train`
read the result as any set. The recipe is `segshards.writer.recipes.function`; this module checks the
arguments, resolves them into a `BuildConfig` and reports the outcome.
"""

import hashlib
import inspect
import marshal
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
from joblib.externals.loky.backend.reduction import dumps as worker_dumps

from segshards.writer.build.job import BuildConfig, refuse_other_settings
from segshards.writer.build.job import build as build_set
from segshards.writer.build.near_dup_codes import check_mode
from segshards.writer.errors import ConfigError
from segshards.writer.format.manifest import MANIFEST, MARKER, SPLITS
from segshards.writer.format.schema import IGNORE, Target
from segshards.writer.recipes.contract import ON_ERROR
from segshards.writer.recipes.function import FunctionRecipe, FunctionSpec, forget, select
from segshards.writer.recipes.walk import tally
from segshards.writer.storage.store import is_remote, open_store

SHARDS_OF_A_SMALL_SET, MIN_SHARD = 16, 16
SCRATCH_PREFIX = "segshards-fn-"
Inputs = Mapping[str, Sequence[Any]] | Sequence[Any]


@dataclass(frozen=True)
class BuildResult:
    """What a call built: samples and duplicates rejected per split, inputs skipped per reason, where."""

    location: str
    counts: dict[str, int]
    duplicates: dict[str, int]
    skipped: dict[str, int]
    manifest: dict[str, Any]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def split_inputs(inputs: Inputs) -> dict[str, Sequence[Any]]:
    """`inputs` as split -> sequence: a dict of splits, or one sequence taken as `train`."""
    if isinstance(inputs, Mapping):
        unknown = sorted(str(s) for s in inputs if s not in SPLITS)
        if unknown:
            raise ConfigError(f"inputs: unknown split {unknown[0]!r} (splits: {', '.join(SPLITS)})")
        found = dict(inputs)
    else:
        found = {"train": inputs}
    for split, values in found.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ConfigError(
                f"inputs[{split!r}]: a {type(values).__name__}, expected a sequence (list, tuple)"
            )
    return found


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Class names, background first: 1..255 of them (255 is the ignore id)."""
    names = tuple(classes) if not isinstance(classes, str) else ()
    if not names or len(names) >= IGNORE or not all(isinstance(c, str) and c for c in names):
        raise ConfigError(
            f"classes: {classes!r}: expected 1 to {IGNORE - 1} non-empty names, background first"
        )
    return names


def check_picklable(fn: Callable[[Any], Any], inputs: Mapping[str, Sequence[Any]]) -> None:
    """Refuse, in one line, a function or inputs that cannot travel to worker processes (pickled as loky
    pickles them: with cloudpickle where it is installed, so lambdas and a notebook's functions travel)."""
    for what, value in (("fn", fn), ("inputs", inputs)):
        try:
            worker_dumps(value)
        except Exception as exc:
            raise ConfigError(
                f"{what}: cannot be pickled for worker processes ({type(exc).__name__}: {str(exc)[:120]}); "
                "use a module-level function and plain data, or jobs=1"
            ) from None


def inputs_digest(inputs: Mapping[str, Sequence[Any]]) -> str:
    """sha256 of the pickled inputs (as workers pickle them where plain pickle cannot): how the manifest
    names them."""
    try:
        data = pickle.dumps({s: list(v) for s, v in inputs.items()}, protocol=4)
    except Exception:
        data = bytes(worker_dumps(inputs, protocol=4))
    return hashlib.sha256(data).hexdigest()


def qualified_name(fn: Callable[[Any], Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def function_digest(fn: Callable[[Any], Any]) -> str | None:
    """sha256 of `fn`'s source text (of its bytecode where there is no source: `python -c`, exec), so that a
    second call after `fn` was edited is refused as another set instead of reusing the shards the old code
    made. Code `fn` calls is not covered. None for a callable with neither (a C function)."""
    target = getattr(fn, "func", fn)  # functools.partial
    target = getattr(target, "__func__", target)  # a bound method
    if not hasattr(target, "__code__") and not inspect.isclass(target):
        target = type(target)  # an instance with __call__: its class
    try:
        text = inspect.getsource(target).encode()
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is None:
            return None
        text = marshal.dumps(code)
    return hashlib.sha256(text).hexdigest()


def default_shard_size(inputs: Mapping[str, Sequence[Any]], most: int) -> int:
    """Samples per shard when the call names none: a small set is cut into about 16 shards (at least 16
    samples each) so that rendering keeps the cores busy; a large one into shards of `most`. It depends
    on the inputs only, never on `jobs`: the bytes stay the same for any number of processes."""
    total = sum(len(v) for v in inputs.values())
    return min(max(-(-total // SHARDS_OF_A_SMALL_SET), MIN_SHARD), most)


def scratch_folder(backend: str) -> str | None:
    """Where the walk keeps made samples for rendering (in the system's temp folder, named for this
    process); None with dask, whose workers may be elsewhere."""
    if backend == "dask":
        return None
    clear_orphans(Path(tempfile.gettempdir()))
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def clear_orphans(temp: Path) -> None:
    """Remove the scratch folders of builds whose process is gone: killed, it could not remove its own."""
    for folder in temp.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def build(
    fn: Callable[[Any], Any],
    inputs: Inputs,
    out: Path | str,
    *,
    classes: Sequence[str],
    targets: Sequence[str | Target] = (),
    jobs: int = 0,
    seed: int = 0,
    shard_size: int | None = None,
    on_error: str = "raise",
    backend: str = "loky",
    scheduler: str | None = None,
    progress: bool | None = False,
    near_duplicates: str | None = None,
) -> BuildResult:
    """Build a segshards set at `out` (a folder or s3:// URL) with one sample per input: `fn(input)`.

    `fn` returns {"image": uint8 (H, W) or (H, W, 3) RGB, "mask": uint8 (H, W) class ids (255 ignore),
    "meta": JSON dict (optional), "image_bytes": a JPEG/PNG stored as it is (optional)}, or None to skip
    the input. `inputs`: split -> sequence, or one sequence (train). `targets` names meta fields the
    loaders turn into batch tensors. `on_error="skip"` leaves out inputs whose fn raises, counted per
    exception type; `near_duplicates`: "off", "report" (colour's default), "reject". A second call with
    the same arguments reuses the complete shards of a crashed one.
    """
    split = split_inputs(inputs)
    names = check_classes(classes)
    check_call(fn, split, on_error=on_error, jobs=jobs, backend=backend, near_duplicates=near_duplicates)
    recipe = FunctionRecipe()
    options = call_options(fn, split, names, targets, on_error)
    config = BuildConfig(
        recipe=recipe.name,
        out=out if is_remote(out) else Path(out),
        counts={s: (None if s in split else 0) for s in SPLITS},
        seed=seed,
        shard_size=default_shard_size(split, recipe.shard_size) if shard_size is None else shard_size,
        jobs=jobs,
        backend=backend,
        options=options,
        scheduler=scheduler,
        progress=progress,
        near_duplicates=near_duplicates,
    )
    refuse_another_set(config)
    scratch = scratch_folder(backend)
    walkers = max(jobs or joblib.cpu_count(), 1)
    spec = FunctionSpec(
        fn, split, names, tuple(targets), on_error, walkers, scratch, uuid.uuid4().hex, options
    )
    try:
        manifest = build_set(recipe, spec, config)
        return result_of(manifest, spec, config)
    finally:
        forget(spec)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def call_options(
    fn: Callable[[Any], Any],
    split: dict[str, Sequence[Any]],
    names: Sequence[str],
    targets: Sequence[str | Target],
    on_error: str,
) -> dict[str, Any]:
    """What the manifest records of the call: the function's name and code digest, the inputs' counts and
    digest, the rules."""
    return {
        "function": qualified_name(fn),
        "function_sha256": function_digest(fn),
        "inputs": {s: len(v) for s, v in split.items()},
        "inputs_sha256": inputs_digest(split),
        "classes": list(names),
        "targets": [t if isinstance(t, str) else t.to_json() for t in targets],
        "on_error": on_error,
    }


def refuse_another_set(config: BuildConfig) -> None:
    """Another set at the output is refused before the walk runs fn over every input (the build's claim
    refuses it again); an unsupported location fails here too, before any work."""
    store = open_store(config.out)
    refuse_other_settings(
        store, config.public(), [n for n in (MANIFEST, MARKER) if store.head(n) is not None]
    )


def check_call(
    fn: Callable[[Any], Any],
    split: dict[str, Sequence[Any]],
    *,
    on_error: str,
    jobs: int,
    backend: str,
    near_duplicates: str | None = None,
) -> None:
    """The call's own arguments, checked before anything is read or written."""
    check_mode(near_duplicates, "near_duplicates")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error {on_error!r}: must be one of {', '.join(ON_ERROR)}")
    if not callable(fn):
        raise ConfigError(f"fn: a {type(fn).__name__}, expected a callable")
    if max(jobs or joblib.cpu_count(), 1) > 1 or backend == "dask":
        check_picklable(fn, split)


def result_of(manifest: dict[str, Any], spec: FunctionSpec, config: BuildConfig) -> BuildResult:
    splits = manifest["splits"]
    return BuildResult(
        location=open_store(config.out).url,
        counts={s: splits[s]["count"] for s in splits},
        duplicates={s: splits[s]["duplicates_rejected"] for s in splits},
        skipped=tally(select(spec).skipped).counts,
        manifest=manifest,
    )
