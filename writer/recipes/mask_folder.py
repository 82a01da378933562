"""mask-folder: your own images beside masks of the same stems (PASCAL VOC, CVAT "Segmentation mask 1.1",
index masks), each image stored byte for byte with its mask as class indices."""

import argparse
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from joblib import cpu_count

from segshards.writer.errors import ConfigError, SourceError
from segshards.writer.format.palette import voc_palette
from segshards.writer.format.schema import IGNORE, PHOTOGRAPH_TRAINING, SampleSchema
from segshards.writer.recipes.contract import (
    SPLITS,
    UNKNOWN_LICENCE,
    Candidates,
    RecipeBase,
    Rendered,
    SourceInfo,
    add_on_error,
)
from segshards.writer.recipes.mask_folder_walk import (
    FolderSelection,
    MaskFolderSpec,
    PairFacts,
    fingerprint,
    index_mask,
    prepared,
    present,
    read_bytes,
    select,
    source_of,
)
from segshards.writer.recipes.walk import (
    Checked,
    share_prepared,
    tally,
)
from segshards.writer.sources import locations
from segshards.writer.sources.class_map import UNMATCHED, ClassMap, read_classes

PREPARED = "mask-folder"  # the name of the file `share` writes for worker processes
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)  # render() leaves the image undecoded: its key is the planned one


class MaskFolderRecipe(RecipeBase):
    """Image: the original JPEG or PNG, byte for byte. Mask: class indices (0 background, 255 ignore),
    from index, palette (VOC) or RGB (CVAT) mask files."""

    name = "mask-folder"
    summary = "your images with masks of the same stems (PASCAL VOC, CVAT segmentation masks, index masks)"
    shard_size = 1_000  # photographs: shards of ~100-300 MB, and enough of them to keep every core busy
    planned_keys = True  # render() vouches for the planned key (see render): the writer need not hash pixels
    walked_in_build = True  # candidates come from the walk `describe` ran in the build's process
    # Photographs of any size train letterboxed to `size`, as coco-semantic's do.
    training = {**PHOTOGRAPH_TRAINING, "metrics": ["miou"]}

    def default_counts(self) -> dict[str, int | None]:
        # Resolved from the data (see `default_counts` above); the manifest records them under source.counts.
        return {"train": None, "val": None, "test": None}

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--images", required=True, metavar="DIR", help="folder of .jpg/.jpeg/.png images")
        parser.add_argument(
            "--masks", required=True, metavar="DIR", help="folder of masks named STEM + suffix"
        )
        parser.add_argument(
            "--mask-suffix", default=".png", metavar="SUFFIX", help="mask name after the stem"
        )
        parser.add_argument(
            "--classes",
            default=None,
            metavar="FILE",
            help="CVAT labelmap.txt or a JSON list of {name, color | index}; the first is background (0). "
            "Default: index masks taken as they are",
        )
        parser.add_argument(
            "--split-lists",
            default=None,
            metavar="DIR",
            help="folder of train.txt, val.txt, test.txt stem lists (VOC's ImageSets/Segmentation); "
            "default: one seeded permutation cut by --train/--val/--test (val, test 10%% each)",
        )
        parser.add_argument(
            "--unmatched",
            choices=UNMATCHED,
            default="error",
            help="an RGB mask colour not in --classes: stop (error), 255 (ignore), nearest class colour",
        )
        add_on_error(parser, "pair")

    def make_spec(self, options: argparse.Namespace) -> MaskFolderSpec:
        images = locations.listable(locations.resolved(options.images), "--images")
        masks = locations.listable(locations.resolved(options.masks), "--masks")
        if not options.mask_suffix:
            raise ConfigError("--mask-suffix: must not be empty")
        classes_file = locations.resolved(options.classes) if options.classes else None
        if classes_file is not None and not locations.is_file(classes_file):
            raise ConfigError(f"--classes {options.classes}: no such file")
        lists = locations.resolved(options.split_lists) if options.split_lists else None
        cmap = ClassMap(read_classes(classes_file) if classes_file else None, options.unmatched)
        return MaskFolderSpec(
            images=images,
            masks=masks,
            mask_suffix=options.mask_suffix,
            cmap=cmap,
            classes_file=classes_file,
            split_lists=lists,
            counts=tuple(getattr(options, s, None) for s in SPLITS),
            seed=options.seed,
            on_error=options.on_error,
            jobs=max(getattr(options, "jobs", 0) or cpu_count(), 1),
            fingerprint=fingerprint(p for p in (images, masks, classes_file, lists) if p is not None),
        )

    def spec_config(self, options: argparse.Namespace) -> dict[str, Any]:
        spec = self.make_spec(options)
        return {
            "images": locations.base_name(spec.images),
            "masks": locations.base_name(spec.masks),
            "mask_suffix": spec.mask_suffix,
            "classes": locations.base_name(spec.classes_file) if spec.classes_file else None,
            "classes_sha256": locations.sha256(spec.classes_file) if spec.classes_file else None,
            "split_lists": locations.base_name(spec.split_lists) if spec.split_lists else None,
            "unmatched": spec.cmap.unmatched,
            "on_error": spec.on_error,
        }

    def describe(self, spec: MaskFolderSpec) -> SourceInfo:
        sel = select(spec)
        names = self.class_names(spec)
        colours = dict((i, c) for c, i in spec.cmap.targets("color"))
        classes = [
            {"class": k, "name": n, **({"color": list(colours[k])} if k in colours else {})}
            for k, n in enumerate(names)
        ]
        extra = {
            "classes": classes,
            "palette": [list(colours.get(k, c)) for k, c in enumerate(voc_palette(len(names)))],
            "pairs": {"found": len(sel.pairs), "unlisted": sel.unlisted},
            "counts": sel.counts,
            "stems": {s: [sel.pairs[i].stem for i in sel.chosen[s]] for s in SPLITS},
            "duplicates": {
                s: [
                    {"stem": sel.pairs[i].stem, "same_pixels_as": sel.pairs[j].stem}
                    for i, j in sel.duplicates[s]
                ]
                for s in SPLITS
            },
            "unmatched": unmatched_report(spec, sel),
            "skipped": skip_report(sel),
        }
        extra["notes"] = notes(spec, extra)
        mask = {"num_classes": len(names), "ignore_index": IGNORE}
        return SourceInfo("image-mask-folders", source_files(spec, sel), extra, mask, UNKNOWN_LICENCE)

    def class_names(self, spec: MaskFolderSpec) -> tuple[str, ...]:
        """--classes' names; without it, index masks name their classes by index, up to the largest seen."""
        if spec.cmap.classes is not None:
            return spec.cmap.names
        sel = select(spec)
        top = max(
            (max(sel.checked[i].facts.classes, default=0) for s in SPLITS for i in sel.chosen[s]), default=0
        )
        return tuple(str(k) for k in range(max(top + 1, 2)))

    def schema(self, spec: MaskFolderSpec) -> SampleSchema:
        """Colour images (JPEG, or PNG if none is a JPEG) of any size; mask 0 background, 255 ignore."""
        sel = select(spec)
        chosen = [sel.checked[i].facts for s in SPLITS for i in sel.chosen[s]]
        ext = "jpg" if any(c.ext == "jpg" for c in chosen) or not chosen else "png"
        sizes = {c.size for c in chosen}
        size = sizes.pop() if len(sizes) == 1 else None
        return SampleSchema(ext, 3, size, self.class_names(spec), ignore=IGNORE, training=self.training)

    def candidates(self, spec: MaskFolderSpec, split: str, rng: np.random.Generator) -> Iterator[Candidates]:
        # The walk fixed each split's order (seeded by --seed), so the planner's `rng` is not used.
        sel = select(spec)
        ids = sel.offered[split]
        codes = np.array([sel.checked[i].codes for i in ids]) if spec.near is not None else None
        yield Candidates(np.array(ids, np.int64).reshape(-1, 1), [sel.checked[i].key for i in ids], codes)

    def share(self, spec: MaskFolderSpec, folder: Path, *, local: bool) -> MaskFolderSpec:
        return replace(spec, prepared=share_prepared(folder, PREPARED, prepared(spec)))

    def render(self, spec: MaskFolderSpec, item: np.ndarray) -> Rendered:
        """The sample of one planned pair. The image file is read again but not decoded: the walk decoded
        it and planned its key, and the file's sha256 proves these are the same bytes."""
        pair, checked = source_of(spec, int(item[0]))
        facts: PairFacts = checked.facts
        unmatched = facts.unmatched
        path = locations.join(spec.images, pair.image)
        data = read_bytes(path, "unreadable-image")
        if hashlib.sha256(data).digest() != checked.file:
            raise SourceError(f"{path}: changed while the set was being built")
        if checked.blob is not None:
            mask = cv2.imdecode(np.frombuffer(checked.blob, np.uint8), cv2.IMREAD_UNCHANGED)
        else:
            mask, unmatched, _ = index_mask(spec, pair, facts.size)
        if mask is None or mask.shape != facts.size:
            raise SourceError(
                f"{locations.join(spec.masks, pair.mask)}: changed while the set was being built"
            )
        meta = {
            "stem": pair.stem,
            "image": pair.image,
            "mask": pair.mask,
            "width": facts.size[1],
            "height": facts.size[0],
            "classes": list(present(mask)),
            "unmatched_pixels": unmatched,
        }
        return Rendered(NO_PIXELS, mask, meta, facts.ext, data, bytes_key=checked.key.hex())

    def labels(self, meta: dict[str, Any]) -> list[int]:
        return [int(c) for c in meta["classes"]]


def unmatched_report(spec: MaskFolderSpec, sel: FolderSelection) -> dict[str, Any]:
    """Pixels and masks whose colours were in no class, per split of the set, and what became of them."""
    pixels = {s: sum(sel.checked[i].facts.unmatched for i in sel.chosen[s]) for s in SPLITS}
    masks = {s: sum(sel.checked[i].facts.unmatched > 0 for i in sel.chosen[s]) for s in SPLITS}
    became = {
        "error": "none (the build stops)",
        "ignore": "255 (ignore)",
        "nearest": "the nearest class colour",
    }
    return {
        "policy": spec.cmap.unmatched,
        "became": became[spec.cmap.unmatched],
        "pixels": pixels,
        "masks": masks,
    }


def skip_report(sel: FolderSelection) -> dict[str, Any]:
    """Pairs left out under --on-error skip: counts and stems per reason, and the first message of each."""
    found = tally(sorted(sel.skipped.items(), key=lambda p: str(p[0])))
    return {"counts": found.counts, "stems": found.names, "first": found.first}


def notes(spec: MaskFolderSpec, extra: dict[str, Any]) -> list[str]:
    """Lines for the card: what was altered, rejected or left out on the way from the folders to the set."""
    u = extra["unmatched"]
    out = [
        f"mask pixels with a colour in no class (--unmatched {u['policy']}): "
        f"{sum(u['pixels'].values()):,} pixels in {sum(u['masks'].values()):,} masks, made {u['became']}; "
        + ", ".join(f"{s} {u['pixels'][s]:,} px / {u['masks'][s]:,} masks" for s in SPLITS)
    ]
    dups = extra["duplicates"]
    out.append(
        "images rejected as pixel-identical to an earlier image (split order train, val, test): "
        + ", ".join(f"{s} {len(dups[s])}" for s in SPLITS)
        + "".join(f"; {d['stem']} ({s}) = {d['same_pixels_as']}" for s in SPLITS for d in dups[s][:5])
    )
    skipped = extra["skipped"]["counts"]
    if skipped:
        out.append("pairs left out (--on-error skip): " + ", ".join(f"{r} {n}" for r, n in skipped.items()))
    if spec.split_lists:
        out.append(f"files of stems in no split list (not used): {extra['pairs']['unlisted']:,}")
    return out


def source_files(spec: MaskFolderSpec, sel: FolderSelection) -> list[dict[str, Any]]:
    """The classes file and split lists with their checksums, and per folder the files read: their count,
    bytes and the sha256 of the sorted `path sha256` lines."""
    files = [
        {"name": locations.base_name(p), "bytes": locations.stat(p)[0], "sha256": locations.sha256(p)}
        for p in [*([spec.classes_file] if spec.classes_file else []), *sel.list_files]
    ]
    used = sorted(i for s in SPLITS for i in sel.offered[s])
    for k, (folder, attr) in enumerate(((spec.images, "image"), (spec.masks, "mask"))):
        lines = "".join(f"{getattr(sel.pairs[i], attr)} {file_sha256(sel.checked[i], k)}\n" for i in used)
        total = locations.total_size(folder, [getattr(sel.pairs[i], attr) for i in used])
        files.append({
            "name": f"{locations.base_name(folder)}/ ({len(used):,} files)",
            "bytes": total,
            "sha256": hashlib.sha256(lines.encode()).hexdigest(),
        })  # fmt: skip
    return files


def file_sha256(checked: Checked, k: int) -> str:
    """The hex sha256 of the pair's image (k = 0) or mask (1) file."""
    return checked.file.hex() if k == 0 else checked.facts.mask_sha256
