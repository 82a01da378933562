"""What augmentation `segshards train` applies: photo sets (JPEG images letterboxed to a training size) get
torchvision's segmentation train transform (`segshards.loaders.Augment`) unless `--no-augment`; sets of
fixed-size images (MNIST recipes) train as before. A set's schema may say otherwise in
`schema.training.augment`: false, or an object of `Augment` options ({"scale": [0.5, 2.0], "flip": 0.5}).

The run records the options used (`augment` in the config of the checkpoint and metrics.json; null: none),
and a resumed run keeps them, so its remaining batches are the ones the uninterrupted run would see. A run
says which at its start, in one line (`augment_line`).
"""

from dataclasses import asdict
from typing import Any

from segshards.loaders import Augment
from segshards.train.dataset import SetInfo
from segshards.writer.errors import ConfigError

JPEG_MEMBERS = ("jpg", "jpeg")


def default_augment(info: SetInfo) -> dict[str, Any] | None:
    """The augmentation options a run on `info` uses by default (JSON types), or None."""
    hint = info.schema.training.get("augment")
    if hint is False or (hint is None and (info.schema.image not in JPEG_MEMBERS or info.schema.size)):
        return None
    if hint is not None and hint is not True and not isinstance(hint, dict):
        raise ConfigError(f"--data {info.data}: manifest schema.training.augment is {str(hint)[:40]!r}")
    return recorded(to_augment(hint if isinstance(hint, dict) else {}, info.data))


def to_augment(options: dict[str, Any] | None, where: str = "augment") -> Augment | None:
    """The `Augment` recorded options describe (None: none)."""
    if options is None:
        return None
    values = dict(options)
    if "scale" in values:
        values["scale"] = tuple(values["scale"])
    try:
        return Augment(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: augment options {options}: {exc}") from None


def recorded(augment: Augment | None) -> dict[str, Any] | None:
    """An `Augment` as the run records it: plain JSON types."""
    if augment is None:
        return None
    out = asdict(augment)
    out["scale"] = list(augment.scale)
    return out


def described(augment: Augment | None) -> str:
    """An `Augment` in words, for console lines: the transform and the options a user would change."""
    if augment is None:
        return "none"
    low, high = (float(x) for x in augment.scale)
    return f"torchvision reference train transform (scale {low}-{high}, flip {float(augment.flip)})"


def augment_line(options: dict[str, Any] | None, info: SetInfo) -> str:
    """The line a run starts with: the augmentation it applies, or why none (as `config.augment` records)."""
    if options is not None:
        return f"augment: {described(to_augment(options))}"
    if default_augment(info) is not None:
        return "augment: off (--no-augment)"
    if info.schema.training.get("augment") is False:
        return "augment: none (the set's manifest says schema.training.augment: false)"
    if info.schema.size:
        return "augment: none (sets of fixed-size images, such as the MNIST sets, are not augmented)"
    return "augment: none (only sets of JPEG photographs are augmented by default)"
