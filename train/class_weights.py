"""Per-class loss weights (`--class-weights auto`): median-frequency balancing of the train split's pixels.

The manifest records, per split, how many pixels of each mask value the writer stored
(`splits.<split>.class_histogram.pixels`, class index -> count). Median-frequency balancing (Eigen & Fergus,
2015) weights class c by median(f) / f(c), with f(c) the share of c among the labelled pixels: the median
class weighs 1, rarer classes more, commoner ones less. Eigen & Fergus divide by the pixels of the images
that hold c; the manifest does not record per-class image pixels, so f(c) is c's share of all labelled
pixels of the split (the common simplification). Pixels at the ignore id (255) are left out. A class with
no pixels gets weight 0: no target pixel is of that class, so its weight never enters the loss, and the
median is taken over the classes that have pixels.

For a mix, each stream's counts are mapped into the mix's classes (its `class_map`; a class mapped to
ignore drops out) and scaled by the stream's contribution to an epoch (samples taken / samples in its
split: 0.3 for `--data B:0.3`), then summed, so the weights follow what an epoch actually trains on.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from segshards.loaders import RetryPolicy, Stream
from segshards.loaders.mix_schema import class_lut
from segshards.loaders.source import read_set_manifest
from segshards.train.config import TrainConfig
from segshards.train.dataset import mix_streams
from segshards.train.errors import CheckpointError, ConfigError
from segshards.train.tasks import Task
from segshards.writer.format.schema import IGNORE, SampleSchema, schema_of

MODES = ("none", "auto")


def split_pixels(manifest: dict, where: str, split: str, schema: SampleSchema) -> np.ndarray:
    """Pixels per class index (int64, one per schema class) of `split`, the ignore id left out."""
    field = f"{where}: splits.{split}.class_histogram.pixels"
    pixels = manifest.get("splits", {}).get(split, {}).get("class_histogram", {}).get("pixels")
    if not isinstance(pixels, dict) or not pixels:
        raise ConfigError(f"--class-weights auto: {field} is missing or empty (rebuild the set)")
    counts = np.zeros(len(schema.classes), dtype=np.int64)
    ignore = IGNORE if schema.ignore is None else schema.ignore
    for key, n in pixels.items():
        if not (isinstance(key, str) and key.isdigit()) or type(n) is not int or n < 0:
            raise ConfigError(f"--class-weights auto: {field} has {key!r}: {n!r}, not class index: count")
        index = int(key)
        if index == ignore:
            continue
        if index >= len(counts):
            raise ConfigError(
                f"--class-weights auto: {field} counts class {index}, the schema names {len(counts)} classes"
            )
        counts[index] = n
    return counts


def median_frequency(counts: np.ndarray) -> np.ndarray:
    """median(f) / f(c) with f the share of each class among `counts`; 0 for classes with no pixels."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ConfigError("--class-weights auto: the train split has no labelled pixels")
    freq = counts / counts.sum()
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def stream_pixels(stream: Stream, classes: Sequence[str], first: str) -> np.ndarray:
    """A stream's train pixels in the mix's classes (float64), scaled by its share of an epoch."""
    _, where, manifest = read_set_manifest(str(stream.source), RetryPolicy())
    schema = schema_of(manifest, where)
    counts = split_pixels(manifest, where, "train", schema)
    size = int(manifest["splits"]["train"]["count"])
    lut = class_lut(stream, schema, classes, first)
    out = np.zeros(len(classes), dtype=np.float64)
    for index, n in enumerate(counts.tolist()):
        target = index if lut is None else int(lut[index])
        if target != IGNORE:
            out[target] += n
    return out * (stream.wanted(size, None) / size if size else 0.0)


def auto_weights(data: str, streams: Sequence[Stream] | None) -> np.ndarray:
    """Median-frequency weights of the train split of `data`, or of the mix of `streams` (classes: data's)."""
    _, where, manifest = read_set_manifest(data, RetryPolicy())
    schema = schema_of(manifest, where)
    if not streams:
        return median_frequency(split_pixels(manifest, where, "train", schema))
    classes = tuple(schema.classes)
    return median_frequency(np.sum([stream_pixels(s, classes, data) for s in streams], axis=0))


def run_weights(config: TrainConfig) -> np.ndarray | None:
    """The loss weights a new run trains with: None for `none`, median-frequency weights for `auto`."""
    if config.class_weights == "none":
        return None
    return auto_weights(config.data, mix_streams(config.mix) if config.mix else None)


def saved_weights(saved: dict[str, Any], task: Task) -> list[float] | None:
    """The weights a checkpoint's run trained with (so a resumed run or `eval` keeps them), in class order."""
    record = saved.get("class_weights")
    if not record:
        return None
    weights = record.get("weights", {})
    missing = [name for name in task.class_names if name not in weights]
    if missing:
        raise CheckpointError(f"checkpoint: class_weights has no weight for class {missing[0]!r}")
    return [float(weights[name]) for name in task.class_names]


def weights_record(mode: str, task: Task) -> dict[str, Any] | None:
    """What metrics.json and the checkpoint record: the mode and each class's weight, keyed by class name."""
    weights = getattr(task, "class_weights", None)
    if weights is None:
        return None
    names = task.class_names
    return {"mode": mode, "weights": {n: float(w) for n, w in zip(names, weights.tolist(), strict=True)}}


__all__ = [
    "MODES",
    "auto_weights",
    "median_frequency",
    "run_weights",
    "saved_weights",
    "split_pixels",
    "weights_record",
]
