"""The build job: validate, plan centrally, render shards in parallel workers, write the manifest last."""

import contextlib
import functools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import joblib
from tqdm import tqdm

from segshards.writer import __version__
from segshards.writer.build.checks import check_supply, settings_diff
from segshards.writer.build.dask_backend import check_scheduler, run_on_dask
from segshards.writer.build.near_dup_codes import check_mode, resolved_mode, with_walk_check
from segshards.writer.build.near_dup_plan import NearFilter, add_walk_codes, codes_asked
from segshards.writer.build.near_dup_plan import record as record_near_duplicates
from segshards.writer.build.partition_plan import plan_tasks_partitioned
from segshards.writer.build.plan import SplitPlan, plan_tasks, split_rng
from segshards.writer.build.pool import run_with_parent, start_build_workers
from segshards.writer.build.remote import run_remote_task
from segshards.writer.build.shards import ShardResult, ShardTask, run_shard_task
from segshards.writer.errors import ConfigError, OutputError, SegshardsError, SupplyError
from segshards.writer.format.keys import HASH_ALGORITHM, PIXEL_HASH_OF
from segshards.writer.format.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MARKER,
    RUN_LOG,
    SAMPLE_LAYOUT,
    SPLITS,
    WORK_DIR,
    dumps,
)
from segshards.writer.format.schema import SampleSchema
from segshards.writer.format.wids_index import write_indexes
from segshards.writer.recipes.contract import Recipe, SourceInfo
from segshards.writer.recipes.registry import recipe_ref
from segshards.writer.share.card import CARD, render_card
from segshards.writer.storage.lock import LOCK
from segshards.writer.storage.store import Store, is_remote, open_store

BACKENDS = ("loky", "threading", "dask")


@dataclass(frozen=True)
class BuildConfig:
    """A resolved build: what goes into the manifest (`public`) plus how to run it."""

    recipe: str
    out: Path | str  # a local folder, or an s3://bucket/prefix URL (a str)
    counts: dict[str, int | None]
    seed: int
    shard_size: int
    jobs: int
    backend: str
    options: dict[str, Any]  # recipe options as recorded in the manifest
    scheduler: str | None = None  # dask scheduler address, for backend "dask"
    progress: bool | None = None  # progress bar on stderr; None: only when stderr is a terminal
    near_duplicates: str | None = None  # off, report, reject; None: the schema's default (`resolved_mode`)

    def public(self) -> dict[str, Any]:
        counts = {s: ("all" if n is None else n) for s, n in self.counts.items()}
        # `reject` changes which samples are chosen, so it is a setting of the set; the other modes only
        # add counts to the manifest (and leave the recorded settings of earlier sets as they were).
        rejecting = {"near_duplicates": "reject"} if self.near_duplicates == "reject" else {}
        return {
            "recipe": self.recipe,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "counts": counts,
            **self.options,
            **rejecting,
        }


def validate(config: BuildConfig) -> None:
    """Refuse impossible options with a message naming the option."""
    for option, value in (
        ("--shard-size", config.shard_size),
        ("--jobs", config.jobs),
        ("--seed", config.seed),
    ):
        if isinstance(value, bool) or not isinstance(value, int):  # from Python (segshards.build), any type
            raise ConfigError(f"{option} {value!r}: must be an integer")
    for split, n in config.counts.items():
        if n is not None and n < 0:
            raise ConfigError(f"--{split} {n}: a sample count must be >= 0")
    if config.shard_size < 1:
        raise ConfigError(f"--shard-size {config.shard_size}: must be >= 1")
    if config.jobs < 0:
        raise ConfigError(f"--jobs {config.jobs}: must be >= 0 (0 = all cores)")
    if not 0 <= config.seed < 2**63:
        raise ConfigError(f"--seed {config.seed}: must be in 0..2**63-1")
    if config.backend not in BACKENDS:
        raise ConfigError(f"--backend {config.backend}: must be one of {', '.join(BACKENDS)}")
    if config.backend == "dask":
        check_scheduler(config.scheduler)
    elif config.scheduler is not None:
        raise ConfigError(f"--scheduler {config.scheduler}: only used with --backend dask")
    check_mode(config.near_duplicates)
    open_store(config.out)  # refuses unsupported URL schemes and malformed bucket names


def read_config(store: Store, name: str) -> Any:
    """The `config` recorded in a manifest or build marker; OutputError when the object is not one."""
    try:
        document = json.loads(store.read(name))
    except (SegshardsError, ValueError) as exc:
        raise OutputError(
            f"{store.url}/{name}: unreadable, not a segshards manifest or build marker ({exc})"
        ) from exc
    if not isinstance(document, dict):
        raise OutputError(f"{store.url}/{name}: not a segshards manifest or build marker (not a JSON object)")
    return document.get("config")


def refuse_other_settings(store: Store, public: dict[str, Any], names: Collection[str]) -> None:
    """Refuse a location whose manifest or build marker (among `names`) records other settings."""
    for name in (MANIFEST, MARKER):
        if name in names:
            found = read_config(store, name)
            if found != public:
                what = found.get("recipe", "?") if isinstance(found, dict) else "?"
                raise OutputError(
                    f"--out {store.url}: holds a {what} set built with other settings ({name}: "
                    f"{settings_diff(found, public)}); choose another {store.noun} or delete it"
                )


def claim_output(store: Store, public: dict[str, Any]) -> frozenset[str]:
    """Make the folder or prefix ours for this config: refuse another set or foreign content, mark the build
    in progress; returns the names of the objects already there."""
    store.prepare(label="--out ")
    store.lock()  # one build per folder from here on (`build` releases it)
    names = frozenset(store.names()) - {LOCK}  # our own lock is not content
    visible = store.entries()
    if MARKER in names and MANIFEST not in names and not visible and read_config(store, MARKER) != public:
        # A build stopped before its first shard (Ctrl-C on seeing a wrong count): nothing of it to resume,
        # so a build with other settings takes the location over.
        names -= {MARKER}
    refuse_other_settings(store, public, names)
    if visible and MANIFEST not in names and MARKER not in names:
        raise OutputError(f"--out {store.url}: not empty and holds no segshards set ({visible[0]} ...)")
    store.write(MARKER, json.dumps({"config": public}, sort_keys=True).encode())
    store.tidy(scratch=WORK_DIR)  # what a killed build left: temps, and a local output's work folder
    return names


Runner = Callable[[ShardTask], ShardResult]


def run_tasks(
    tasks: Iterable[ShardTask],
    *,
    jobs: int,
    backend: str,
    scheduler: str | None = None,
    runner: Runner = run_shard_task,
) -> Generator[ShardResult, None, None]:
    """Run shard tasks on joblib workers (or a dask cluster), yielding results as they complete.

    With loky this process is one of the `jobs` renderers, beside `jobs - 1` workers (`segshards.writer.build.pool`).
    """
    if backend == "dask":
        yield from run_on_dask(runner, tasks, check_scheduler(scheduler))
        return
    n_jobs = jobs or joblib.cpu_count()
    if n_jobs == 1:
        yield from map(runner, tasks)
        return
    if backend == "loky":
        yield from run_with_parent(tasks, runner, workers=n_jobs - 1)
        return
    parallel = joblib.Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")
    yield from parallel(joblib.delayed(runner)(t) for t in tasks)


def split_summary(plan: SplitPlan, results: list[ShardResult]) -> dict[str, Any]:
    """The manifest entry of one split."""
    pixels: dict[str, int] = {}
    labels: dict[str, int] = {}
    images: dict[str, int] = {}
    for r in results:
        for part, counts in ((pixels, r.pixels), (labels, r.labels), (images, r.images)):
            for cls, n in counts.items():
                part[str(cls)] = part.get(str(cls), 0) + n
    return {
        "count": sum(r.count for r in results),
        "shards": [r.entry() for r in results],
        "duplicates_rejected": plan.rejected,
        "class_histogram": {"pixels": pixels, "labels": labels, "images": images},
    }


def make_manifest(
    recipe: Recipe,
    info: SourceInfo,
    schema: SampleSchema,
    config: BuildConfig,
    plans: list[SplitPlan],
    results: list[ShardResult],
) -> dict[str, Any]:
    """The complete, deterministic manifest of a build."""
    splits = {p.split: split_summary(p, [r for r in results if r.split == p.split]) for p in plans}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "segshards_version": __version__,
        "recipe": recipe.name,
        "seed": config.seed,
        "config": config.public(),
        "source": {
            "kind": info.kind,
            "files": info.files,
            "licence": {"id": info.licence.id, "text": info.licence.text},
            **info.extra,
        },
        "hash": {"algorithm": HASH_ALGORITHM, "of": PIXEL_HASH_OF},
        "sample": {**SAMPLE_LAYOUT, "image": schema.image},
        "mask": {
            "dtype": "uint8",
            "num_classes": schema.num_classes,
            "background": schema.background,
            **info.mask,
        },
        "schema": schema.to_json(),
        "splits": splits,
        "duplicates_rejected": sum(p.rejected for p in plans),
    }


def worker_spec(recipe: Recipe, spec: Any, config: BuildConfig, work: Path | None) -> Any:
    """The spec workers receive: the recipe's shared form when it has one and workers are separate processes.

    `work` is where the shared form goes (None: nowhere every worker is sure to reach, so workers load
    the source themselves). Dask workers always run in other processes, whatever --jobs says.
    """
    if work is None or config.backend == "threading":
        return spec
    if config.jobs == 1 and config.backend != "dask":
        return spec
    work.mkdir(exist_ok=True)
    return recipe.share(spec, work, local=config.backend != "dask")


def work_folder(config: BuildConfig) -> Path | None:
    """Scratch space for the shared source: inside a local output (workers reach it since they write there);
    for an object-store output a local temp folder, or none with dask, whose workers may be elsewhere."""
    if not is_remote(config.out):
        out = Path(config.out)
        return (out.resolve() if config.backend == "dask" else out) / WORK_DIR
    if config.backend == "dask":
        return None
    return Path(tempfile.mkdtemp(prefix="segshards-work-"))


def task_runner(config: BuildConfig, present: frozenset[str]) -> tuple[str, Runner]:
    """Where workers write (the `out_dir` of each task) and the function that runs a task."""
    if is_remote(config.out):
        return str(config.out), functools.partial(run_remote_task, present=present)
    out = Path(config.out)
    # Dask workers have their own working folders: give them an absolute path.
    return str(out.resolve() if config.backend == "dask" else out), run_shard_task


def render_all(
    recipe: Recipe,
    spec: Any,
    config: BuildConfig,
    plans: list[SplitPlan],
    handed_out: list[str],
    *,
    task_spec: Any,
    present: frozenset[str] = frozenset(),
    near: NearFilter | None = None,
) -> list[ShardResult]:
    """Plan and render every shard with a progress bar; results in completion order.

    Planning runs lazily in this process while workers render the shards already planned; `plans`
    receives each split's account and `handed_out` the name of every shard task given to a worker;
    `near` is the planner's near-duplicate check (`--near-duplicates reject`).
    """
    out_dir, runner = task_runner(config, present)
    partitioned = config.backend == "dask" and near is None  # the dedup index spread over the workers
    planner = (
        functools.partial(plan_tasks_partitioned, scheduler=config.scheduler) if partitioned else plan_tasks
    )
    planned = planner(
        recipe,
        spec,
        config.counts,
        seed=config.seed,
        shard_size=config.shard_size,
        task_spec=task_spec,
        out_dir=out_dir,
        plans=plans,
        near=near,
    )
    walked: dict[str, ShardTask] = {}  # report: the tasks whose codes the photo walk computed

    def tracked() -> Iterator[ShardTask]:
        for task in codes_asked(planned, config.near_duplicates, spec, walked):
            handed_out.append(task.name)
            yield task

    counts = list(config.counts.values())
    total = None if None in counts else sum(n for n in counts if n is not None)
    results: list[ShardResult] = []
    bar_off = None if config.progress is None else not config.progress  # tqdm: None = off unless a terminal
    with tqdm(
        total=total, unit="sample", unit_scale=True, desc=recipe.name, smoothing=0.1, disable=bar_off
    ) as bar:
        run = run_tasks(
            tracked(), jobs=config.jobs, backend=config.backend, scheduler=config.scheduler, runner=runner
        )
        with contextlib.closing(run):  # an interrupted loop still stops the feed and joins its threads now
            for result in run:
                results.append(result)
                bar.update(result.count)
    if walked:
        add_walk_codes(recipe, spec, walked, results, functools.partial(split_rng, config.seed))
    return results


def discard(store: Store, names: list[str]) -> None:
    """Remove what a failed build wrote (its shards and its in-progress marker)."""
    for name in [*names, MARKER]:
        with contextlib.suppress(OSError, SegshardsError):
            store.delete(name)
    store.tidy()


def claim(config: BuildConfig) -> tuple[Store, frozenset[str]]:
    """Claim the output (folder or prefix); returns its store and the names already there."""
    store = open_store(config.out)
    return store, claim_output(store, config.public())


def warm_workers(config: BuildConfig) -> None:
    """Start the local worker processes now, so they spawn and import while this process prepares."""
    if config.backend == "loky":
        start_build_workers(config.jobs)


@contextlib.contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV's own thread pool off in this process for the block (its setting given back after).

    `--jobs` counts processes, each one thread: on a photograph, OpenCV splitting a transpose or a
    histogram over a second thread bought no time here, only page faults on that thread (4 s of system
    time in a 40 s COCO build), and it competed with the other renderers for the cores. The worker
    processes get the same through OPENCV_FOR_THREADS_NUM (`segshards.writer.process_pool.worker_env`).
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def build(recipe: Recipe, spec: Any, config: BuildConfig) -> dict[str, Any]:
    """Build the shard set described by `config`; returns the manifest. Resumes an interrupted build."""
    try:
        with opencv_single_threaded():
            return build_claimed(recipe, spec, config)
    finally:  # the folder's lock (taken in claim_output), whether the build ended or failed
        open_store(config.out).release()


def build_claimed(recipe: Recipe, spec: Any, config: BuildConfig) -> dict[str, Any]:
    """`build`, which holds the output folder's lock from the claim on."""
    validate(config)
    started = time.perf_counter()
    warm_workers(config)
    work = None
    try:
        spec = with_walk_check(spec, config.near_duplicates)  # a photo walk leaves near-duplicates out
        info = recipe.describe(spec)  # validates source checksums before any work
        schema = recipe.schema(spec)
        config = replace(config, near_duplicates=resolved_mode(config.near_duplicates, schema))
        check_supply(recipe, spec, config.counts)
        store, present = claim(config)
        work = work_folder(config)
        task_spec = worker_spec(recipe, spec, config, work)
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    plans: list[SplitPlan] = []
    handed_out: list[str] = []
    near = near_filter(recipe, task_spec, config)
    try:
        results = render_all(
            recipe, spec, config, plans, handed_out, task_spec=task_spec, present=present, near=near
        )
    except SupplyError:
        discard(store, handed_out)  # the request cannot be met: leave nothing of this build visible
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    store.tidy()  # temps left by a worker that died mid-write (its task ran again)
    order = {s: i for i, s in enumerate(SPLITS)}
    results.sort(key=lambda r: (order.get(r.split, len(order)), r.split, r.index))
    manifest = make_manifest(recipe, info, schema, config, plans, results)
    record_near_duplicates(manifest, config.near_duplicates or "off", results, near)
    write_indexes(store.write, manifest)  # one wids index per split, listed in the manifest
    data = dumps(manifest)
    card = render_card(manifest, data, location=store.url)
    store.write(CARD, card.encode("utf-8"))  # the card first, the manifest last
    store.write(MANIFEST, data)
    store.delete(MARKER)
    write_run_log(config, store, results, time.perf_counter() - started)
    return manifest


def near_filter(recipe: Recipe, task_spec: Any, config: BuildConfig) -> NearFilter | None:
    """The planner's check under `--near-duplicates reject`, rendering candidates on the build's own
    worker processes (none with threads, whose spec need not pickle)."""
    if config.near_duplicates != "reject":
        return None
    workers = 0 if config.backend == "threading" else (config.jobs or joblib.cpu_count()) - 1
    return NearFilter(recipe_ref(recipe), task_spec, workers=workers)


def write_run_log(config: BuildConfig, store: Store, results: list[ShardResult], elapsed: float) -> None:
    """Run-specific facts (time, workers, rate) go beside the manifest, never into it."""
    total = sum(r.count for r in results)
    log = {
        "elapsed_s": round(elapsed, 3),
        "jobs": config.jobs or joblib.cpu_count(),
        "backend": config.backend,
        **({"scheduler": config.scheduler} if config.scheduler else {}),
        "samples": total,
        "samples_per_s": round(total / elapsed, 1) if elapsed else None,
        "shards_written": sum(not r.reused for r in results),
        "shards_reused": sum(r.reused for r in results),
    }
    store.write(RUN_LOG, json.dumps(log, indent=2, sort_keys=True).encode())
