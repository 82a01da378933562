"""Image + mask folders: files paired by stem, and split lists; a pair's problem is a `BadPair`."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segshards.writer.errors import ConfigError
from segshards.writer.format.manifest import SPLITS
from segshards.writer.sources import locations
from segshards.writer.sources.photos import BadRecord

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class BadPair(BadRecord):
    """One image + mask pair breaks a rule; `reason` is the slug counted under `--on-error skip`. It
    pickles as a BadPair (`BadRecord.__reduce__`): walk workers send it back."""


@dataclass(frozen=True)
class Pair:
    """An image and its mask, as paths relative to --images and --masks."""

    stem: str
    image: str
    mask: str


# ---- files paired by stem -----------------------------------------------------------------------


def list_files(folder: str, keep: Any) -> dict[str, list[str]]:
    """Stem -> relative paths (POSIX) of the files under `folder` (a local folder or an s3:// prefix) that
    `keep(name)` gives a stem for; hidden files and folders are passed over."""
    found: dict[str, list[str]] = {}
    if locations.is_remote(folder):
        for rel in locations.listing(folder):  # sorted by path, as the walk below
            parent, _, name = rel.rpartition("/")
            stem = keep(name)
            if stem is not None:
                found.setdefault(f"{parent}/{stem}" if parent else stem, []).append(rel)
        return found
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(folder)
        for name in sorted(files):
            stem = None if name.startswith(".") else keep(name)
            if stem is not None:
                found.setdefault((rel / stem).as_posix(), []).append((rel / name).as_posix())
    return found


def image_stem(name: str) -> str | None:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else None


def mask_stem(suffix: str) -> Any:
    def stem(name: str) -> str | None:
        return (
            name[: -len(suffix)]
            if name.lower().endswith(suffix.lower()) and len(name) > len(suffix)
            else None
        )

    return stem


def pair_files(images: str, masks: str, suffix: str) -> tuple[dict[str, Pair], dict[str, BadPair]]:
    """Every stem with exactly one image and one mask, and the problem of every other stem."""
    if not locations.is_folder(images, "--images"):
        raise ConfigError(f"--images {images}: not a folder")
    if not locations.is_folder(masks, "--masks"):
        raise ConfigError(f"--masks {masks}: not a folder")
    in_masks = mask_stem(suffix)
    same = locations.resolved(images) == locations.resolved(masks)
    found = list_files(images, lambda n: None if same and in_masks(n) else image_stem(n))
    mask_files = list_files(masks, in_masks)
    if not found:
        raise ConfigError(f"--images {images}: no .jpg, .jpeg or .png images")
    if not mask_files:
        raise ConfigError(f"--masks {masks}: no masks named STEM{suffix}")
    pairs, problems = {}, {}
    for stem in sorted(found.keys() | mask_files.keys()):
        image, mask = found.get(stem, []), mask_files.get(stem, [])
        if len(image) > 1:
            problems[stem] = BadPair(
                "ambiguous-image", f"{images}: {' and '.join(image)} share the stem {stem}"
            )
        elif not mask:
            problems[stem] = BadPair(
                "missing-mask",
                f"{locations.join(images, image[0])}: no mask {locations.join(masks, stem + suffix)}",
            )
        elif not image:
            problems[stem] = BadPair(
                "missing-image", f"{locations.join(masks, mask[0])}: no image {stem}.jpg/.png in {images}"
            )
        else:
            pairs[stem] = Pair(stem, image[0], mask[0])
    return pairs, problems


# ---- split lists ------------------------------------------------------------------------------------


def read_split_lists(
    folder: str,
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, BadPair], list[str]]:
    """The (stem, file:line) of `folder`/{train,val,test}.txt (a missing file: an empty split), the
    problem of every stem listed twice, and the files read. An https:// folder is not listed: its three
    files are asked for by name."""
    if not locations.is_http(folder) and not locations.is_folder(folder, "--split-lists"):
        raise ConfigError(f"--split-lists {folder}: not a folder")
    named = {s: locations.join(folder, f"{s}.txt") for s in SPLITS}
    found = {s: path for s, path in named.items() if locations.is_file(path)}
    files = list(found.values())
    if not files:
        raise ConfigError(f"--split-lists {folder}: holds none of train.txt, val.txt, test.txt")
    where: dict[str, str] = {}
    lists: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    problems: dict[str, BadPair] = {}
    for split, path in found.items():
        for number, line in enumerate(read_text(path, "--split-lists").splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            stem, here = words[0], f"{path}:{number}"
            if stem in where:
                reason = "repeated-stem" if where[stem].rpartition(":")[0] == path else "stem-in-two-splits"
                problems[stem] = BadPair(reason, f"{here}: {stem} is already listed at {where[stem]}")
                continue
            where[stem] = here
            lists[split].append((stem, here))
    return {s: [t for t in v if t[0] not in problems] for s, v in lists.items()}, problems, files


def read_text(path: str | Path, option: str) -> str:
    """A text file's content (a remote one's failure: its StorageError, naming the URL)."""
    try:
        return locations.read(str(path)).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{option} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read ({exc.strerror or exc})") from None
