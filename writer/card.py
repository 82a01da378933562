"""The dataset card: a README.md beside each set's manifest, rendered from the manifest alone."""

import hashlib
import inspect
import json
from typing import Any

from segshards.writer.errors import ConfigError
from segshards.writer.manifest import MANIFEST, split_names
from segshards.writer.recipe import UNKNOWN_LICENCE
from segshards.writer.recipes import get_recipe

CARD = "README.md"
PLACEHOLDER = "path/to/set"  # where the snippets expect the set; replace with its folder or s3:// URL


def licence(manifest: dict[str, Any]) -> str:
    """The source's licence and attribution, as the recipe recorded it in the manifest."""
    recorded = manifest.get("source", {}).get("licence", {})
    return str(recorded.get("text") or UNKNOWN_LICENCE.text)


def description(recipe_name: str) -> str:
    """What the recipe makes: its module's and class's docstrings."""
    try:
        recipe = get_recipe(recipe_name)
    except ConfigError:
        return f"Built by the `{recipe_name}` recipe."
    module = inspect.getmodule(type(recipe))
    parts = [inspect.cleandoc(module.__doc__) if module and module.__doc__ else ""]
    parts.append(inspect.getdoc(type(recipe)) or "")
    return "\n\n".join(p for p in parts if p)


def shard_pattern(names: list[str]) -> str:
    """Brace pattern webdataset expands to `names` (consecutive `SPLIT-NNNNNN.tar`)."""
    if len(names) == 1:
        return names[0]
    first, last = names[0], names[-1]
    stem, _, start = first.removesuffix(".tar").rpartition("-")
    stop = last.removesuffix(".tar").rpartition("-")[2]
    return f"{stem}-{{{start}..{stop}}}.tar"


def snippets(manifest: dict[str, Any]) -> str:
    """Three lines with our loader, three with stock webdataset."""
    splits = [s for s in split_names(manifest) if manifest["splits"][s]["shards"]] or ["train"]
    split = splits[0]
    names = [e["name"] for e in manifest["splits"].get(split, {}).get("shards", [])] or [
        f"{split}-000000.tar"
    ]
    image = manifest.get("sample", {}).get("image", "png")
    if image == "png":
        decode = '.decode("l8")'
    else:  # colour images: masks stay single-channel
        decode = '.decode(wds.handle_extension("mask.png", wds.imagehandler("l8")), "rgb8")'
    return "\n".join(
        [
            "With segshards' loader (batches of uint8 tensors, decoded with cv2):",
            "",
            "```python",
            "from segshards.loaders import make_loader",
            f'loader = make_loader("{PLACEHOLDER}", split="{split}", batch_size=64)',
            'batch = next(iter(loader))  # batch["image"] (N, C, H, W) uint8, batch["mask"] (N, H, W)',
            "```",
            "",
            "With stock webdataset (numpy arrays):",
            "",
            "```python",
            "import webdataset as wds",
            f'dataset = wds.WebDataset("{PLACEHOLDER}/{shard_pattern(names)}", shardshuffle=False){decode}',
            f'image, mask, meta = next(iter(dataset.to_tuple("{image}", "mask.png", "json")))',
            "```",
            "",
            "Stock webdataset's `decode()` unpickles `.pkl`/`.pickle`/`.pyd` members unless `WDS_SECURE=1` is in "
            "the environment when it is imported. Before reading a copy of this set that you did not build, run "
            "`segshards verify` on it: it checks every shard against the manifest and refuses pickles, links and "
            "unsafe member names (our loader refuses them too).",
        ]
    )


def count_table(manifest: dict[str, Any], part: str, title: str) -> list[str]:
    """One row per value of the split histograms' `part` ('pixels' or 'labels'), one column per split."""
    splits = split_names(manifest)
    hist = {s: manifest["splits"][s].get("class_histogram", {}).get(part, {}) for s in splits}
    values = sorted({int(v) for h in hist.values() for v in h})
    if not values:
        return []
    names = {int(c["class"]): str(c.get("name", "")) for c in manifest.get("source", {}).get("classes", [])}
    head = [title, *(["name"] if names else []), *splits]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * (len(head) - len(splits)) + ["---:"] * len(splits)) + "|",
    ]
    for v in values:
        row = [
            str(v),
            *([names.get(v, "")] if names else []),
            *(f"{hist[s].get(str(v), 0):,}" for s in splits),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def histogram(manifest: dict[str, Any]) -> list[str]:
    """Mask pixels per class, and samples per label where the recipe labels samples."""
    lines = ["Mask pixels per class and split:", "", *count_table(manifest, "pixels", "mask class")]
    labels = count_table(manifest, "labels", "label")
    if labels:
        lines += [
            "",
            "Occurrences of each label in the samples' metadata (the recipe's per-sample classes; a sample may carry several):",
            "",
            *labels,
        ]
    return lines


def render_card(manifest: dict[str, Any], manifest_bytes: bytes) -> str:
    """The README.md of a set: deterministic, from the manifest and its exact bytes."""
    recipe = manifest["recipe"]
    splits = split_names(manifest)
    sample = manifest.get("sample", {})
    mask = manifest.get("mask", {})
    ignore = f", {mask['ignore_index']} = ignore" if "ignore_index" in mask else ""
    lines = [
        f"# {recipe}: image segmentation shards",
        "",
        description(recipe),
        "",
        f"Written by segshards {manifest.get('segshards_version', '?')} (format {manifest['format']} "
        f"v{manifest['format_version']}) as WebDataset tar shards. Each sample is three members: "
        f"`KEY.{sample.get('image', 'png')}` (the image), `KEY.{sample.get('mask', 'mask.png')}` (uint8 class "
        f"index per pixel: {mask.get('background', 0)} = background{ignore}, {mask.get('num_classes', '?')} "
        f"classes) and `KEY.{sample.get('meta', 'json')}` (metadata). KEY is the "
        f"{manifest.get('hash', {}).get('algorithm', '?')} of the image pixels; no two samples share one.",
        "",
        "## How it was built",
        "",
        f"- recipe: `{recipe}`",
        f"- seed: {manifest.get('seed')}",
        f"- duplicates rejected while planning: {manifest.get('duplicates_rejected', 0):,}",
        *(f"- {note}" for note in manifest.get("source", {}).get("notes", [])),  # the recipe's own facts
        "- configuration (as recorded in the manifest):",
        "",
        "```json",
        json.dumps(manifest.get("config", {}), sort_keys=True, indent=2),
        "```",
        "",
        "Rebuild it byte for byte with `segshards build` and the same recipe, options, seed and source.",
        "",
        "## Splits",
        "",
        "| split | samples | shards |",
        "|---|---:|---:|",
        *(
            f"| {s} | {manifest['splits'][s]['count']:,} | {len(manifest['splits'][s]['shards'])} |"
            for s in splits
        ),
        "",
        "## Class histogram",
        "",
        *histogram(manifest),
        "",
        "## Source and licence",
        "",
        licence(manifest),
        "",
        "| source file | bytes | sha256 |",
        "|---|---:|---|",
        *(
            f"| {f.get('name', '?')} | {f.get('bytes', 0):,} | `{f.get('sha256', '?')}` |"
            for f in manifest.get("source", {}).get("files", [])
        ),
        "",
        "## Loading",
        "",
        snippets(manifest),
        "",
        "## Checksums",
        "",
        f"`{MANIFEST}` sha256: `{hashlib.sha256(manifest_bytes).hexdigest()}`. `segshards verify` checks every "
        "shard below against it, and every key against its image's pixels.",
        "",
        "| shard | samples | bytes | sha256 |",
        "|---|---:|---:|---|",
        *(
            f"| {e['name']} | {e['count']:,} | {e['bytes']:,} | `{e['sha256']}` |"
            for s in splits
            for e in manifest["splits"][s]["shards"]
        ),
        "",
    ]
    return "\n".join(lines)
