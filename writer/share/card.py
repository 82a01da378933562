"""The dataset card: a README.md beside each set's manifest, a Hugging Face dataset card rendered from the
manifest and the set's location (its folder, or the s3:// URL it was built or published to)."""

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from segshards.writer.errors import ConfigError
from segshards.writer.format.manifest import MANIFEST, split_names
from segshards.writer.format.schema import SampleSchema, schema_of
from segshards.writer.recipes.contract import UNKNOWN_LICENCE
from segshards.writer.recipes.registry import get_recipe
from segshards.writer.share.snippets import MASK_NOTE, content_key, front_matter, location_of, snippets

CARD = "README.md"
FUNCTION_RECIPE = "function"  # sets made by segshards.build(fn, inputs, out)


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


def count_table(manifest: dict[str, Any], part: str, title: str, names: dict[int, str]) -> list[str]:
    """One row per value of the split histograms' `part` ('pixels' or 'labels'), one column per split."""
    splits = split_names(manifest)
    hist = {s: manifest["splits"][s].get("class_histogram", {}).get(part, {}) for s in splits}
    values = sorted({int(v) for h in hist.values() for v in h})
    if not values:
        return []
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


def mask_names(schema: SampleSchema) -> dict[int, str]:
    """Mask value -> name: the schema's classes, and the ignore value."""
    names = dict(enumerate(schema.classes))
    if schema.ignore is not None:
        names[schema.ignore] = "ignore"
    return names


def class_table(schema: SampleSchema) -> list[str]:
    """Every value a mask pixel may hold, with its name and what it means for training."""
    lines = ["| mask value | name | meaning |", "|---:|---|---|"]
    for value, name in enumerate(schema.classes):
        meaning = "background" if value == schema.background else "class"
        lines.append(f"| {value} | {name} | {meaning} |")
    if schema.ignore is not None:
        lines.append(f"| {schema.ignore} | ignore | not scored: leave out of the loss and the metrics |")
    return lines


def share(part: int, whole: int) -> str:
    """`part` as a percentage of `whole`, never shown as 0% when it is not 0."""
    if not whole:
        return "-"
    if part and part * 10_000 < whole:
        return "<0.01%"
    return f"{100 * part / whole:.2f}%"


def class_statistics(manifest: dict[str, Any], schema: SampleSchema) -> list[str]:
    """Per class and split: its share of the mask pixels, and the images whose mask holds it (with their
    share of the split), from the manifest's `class_histogram` (`images`: sets of earlier versions have
    none, shown as -)."""
    splits = split_names(manifest)
    hist = {s: manifest["splits"][s].get("class_histogram", {}) for s in splits}
    pixels = {s: hist[s].get("pixels", {}) for s in splits}
    holding = {s: hist[s].get("images") for s in splits}
    totals = {s: sum(pixels[s].values()) for s in splits}
    values = sorted({int(v) for p in pixels.values() for v in p})
    if not values:
        return []
    names = mask_names(schema)
    head = ["mask value", "name", *(f"{s}: {what}" for s in splits for what in ("pixels", "images"))]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (2 * len(splits))]
    for v in values:
        row = [str(v), names.get(v, "")]
        for s in splits:
            count = manifest["splits"][s].get("count", 0)
            found = holding[s]
            images = (
                "-" if found is None else f"{found.get(str(v), 0):,} ({share(found.get(str(v), 0), count)})"
            )
            row += [share(pixels[s].get(str(v), 0), totals[s]), images]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def histogram(manifest: dict[str, Any], schema: SampleSchema) -> list[str]:
    """Each class's share of the mask pixels and the images holding it, and samples per label where the
    recipe labels samples."""
    lines = [
        "Share of the mask pixels of each split that each class covers, and the images whose mask holds it "
        "(the manifest's `class_histogram` has the counts):",
        "",
        *class_statistics(manifest, schema),
    ]
    label_names = {
        int(c["class"]): str(c.get("name", "")) for c in manifest.get("source", {}).get("classes", [])
    }
    labels = count_table(manifest, "labels", "label", label_names)
    if labels:
        lines += [
            "",
            "Occurrences of each label in the samples' metadata (the recipe's per-sample classes; a sample may "
            "carry several):",
            "",
            *labels,
        ]
    return lines


def index_of(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    """The split's wids index entry ({} when it has none, as sets of earlier versions)."""
    entry = manifest["splits"][split].get("index")
    return entry if isinstance(entry, dict) else {}


def render_card(manifest: dict[str, Any], manifest_bytes: bytes, *, location: str | Path) -> str:
    """The README.md of a set at `location`: deterministic, from the manifest, its exact bytes and the
    location its snippets read from (`segshards publish` renders it again for the destination)."""
    schema = schema_of(manifest)
    key = content_key(manifest_bytes)
    lines = [
        *front_matter(manifest, key),
        *overview(manifest, schema),
        *how_built(manifest),
        *splits_and_classes(manifest, schema),
        *source_section(manifest),
        "## Loading",
        "",
        f"This set is at `{location_of(location)}`; if you moved it, change that location in the snippets.",
        "",
        *snippets(manifest, location_of(location), key),
        "",
        *checksums(manifest, manifest_bytes),
    ]
    return "\n".join(lines)


def overview(manifest: dict[str, Any], schema: SampleSchema) -> list[str]:
    """Title, what the set is, its sample layout and its class table."""
    recipe = manifest["recipe"]
    hash_info = manifest.get("hash", {})
    ignore = f", {schema.ignore} = ignore" if schema.ignore is not None else ""
    return [
        f"# {recipe}: image segmentation shards",
        "",
        description(recipe),
        "",
        f"Written by segshards {manifest.get('segshards_version', '?')} (format {manifest['format']} "
        f"v{manifest['format_version']}) as WebDataset tar shards. Each sample is three members: "
        f"`KEY.{schema.image}` (the image), `KEY.{schema.mask}` (uint8 class index per pixel: "
        f"{schema.background} = background{ignore}, {schema.num_classes} classes) and `KEY.{schema.meta}` "
        f"(metadata). KEY is the {hash_info.get('algorithm', '?')} of the "
        f"{hash_info.get('of', 'image pixels')}; no two samples share one.",
        "",
        "## Classes",
        "",
        *class_table(schema),
        "",
        MASK_NOTE,
        "",
    ]


def how_built(manifest: dict[str, Any]) -> list[str]:
    """Recipe, seed, dedup count, the recipe's notes and the recorded configuration."""
    return [
        "## How it was built",
        "",
        f"- recipe: `{manifest['recipe']}`",
        f"- seed: {manifest.get('seed')}",
        f"- duplicates rejected while planning: {manifest.get('duplicates_rejected', 0):,}",
        *near_line(manifest),
        *(f"- {note}" for note in manifest.get("source", {}).get("notes", [])),  # the recipe's own facts
        "- configuration (as recorded in the manifest):",
        "",
        "```json",
        json.dumps(manifest.get("config", {}), sort_keys=True, indent=2),
        "```",
        "",
        rebuild_line(manifest),
        "",
    ]


def near_line(manifest: dict[str, Any]) -> list[str]:
    found = manifest.get("near_duplicates")
    if not isinstance(found, dict) or "mode" not in found:
        return []
    rejected = f", {found.get('rejected', 0):,} rejected" if found["mode"] == "reject" else ""
    return [f"- near-duplicates: `{found['mode']}`{rejected} (see Near-duplicates)"]


def rebuild_line(manifest: dict[str, Any]) -> str:
    """How the set is made again byte for byte: the CLI for a recipe, the same call for `segshards.build`."""
    if manifest["recipe"] == FUNCTION_RECIPE:
        function = str(manifest.get("config", {}).get("function", "fn")).replace(":", ".")  # module:qualname
        return (
            f"Rebuild it byte for byte with `segshards.build({function}, inputs, out, ...)` called again with the "
            "same inputs (their digest is `inputs_sha256` above), classes, targets and seed."
        )
    return "Rebuild it byte for byte with `segshards build` and the same recipe, options, seed and source."


def splits_and_classes(manifest: dict[str, Any], schema: SampleSchema) -> list[str]:
    """The split table and the class histogram."""
    return [
        "## Splits",
        "",
        "| split | samples | shards | wids index |",
        "|---|---:|---:|---|",
        *(
            f"| {s} | {manifest['splits'][s]['count']:,} | {len(manifest['splits'][s]['shards'])} | "
            f"{index_of(manifest, s).get('name', '-')} |"
            for s in split_names(manifest)
        ),
        "",
        "## Class statistics",
        "",
        *histogram(manifest, schema),
        "",
        *near_duplicates(manifest),
    ]


def near_duplicates(manifest: dict[str, Any]) -> list[str]:
    """What `--near-duplicates` found or left out, per split (nothing for sets built before it)."""
    found = manifest.get("near_duplicates")
    if not isinstance(found, dict) or "mode" not in found:
        return []
    mode = found["mode"]
    if mode == "off":
        return ["## Near-duplicates", "", "Not checked (`--near-duplicates off`).", ""]
    what = {
        "report": "counted, none removed",
        "reject": "each image near one chosen before it (in any split) was left out and replaced",
    }.get(mode, mode)
    lines = [
        "## Near-duplicates",
        "",
        f"Perceptual near-duplicates (re-encoded, resized, slightly cropped or labelled copies: pHash and dHash "
        f"within {found.get('threshold', '?')} bits), `--near-duplicates {mode}`: {what}. A group is a set of "
        "images linked by near-duplicate pairs; `segshards audit` lists them.",
        "",
        "| split | groups in the split | their images | images with a near-duplicate in another split "
        "| rejected |",
        "|---|---:|---:|---|---:|",
    ]
    for s in split_names(manifest):
        entry = manifest["splits"][s].get("near_duplicates", {})
        leaks = ", ".join(f"{n:,} ({other})" for other, n in sorted(entry.get("leaks", {}).items())) or "0"
        lines.append(
            f"| {s} | {entry.get('groups', 0):,} | {entry.get('images', 0):,} | {leaks} | "
            f"{entry.get('rejected', 0):,} |"
        )
    return [*lines, ""]


def source_section(manifest: dict[str, Any]) -> list[str]:
    """The licence and the source files with their checksums."""
    return [
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
    ]


def checksums(manifest: dict[str, Any], manifest_bytes: bytes) -> list[str]:
    """The manifest's digest, and every shard and index with its size and sha256."""
    splits = split_names(manifest)
    return [
        "## Checksums",
        "",
        f"`{MANIFEST}` sha256: `{hashlib.sha256(manifest_bytes).hexdigest()}`. `segshards verify` checks every "
        "shard and index below against it, and every key against its image's pixels.",
        "",
        "| file | samples | bytes | sha256 |",
        "|---|---:|---:|---|",
        *(
            f"| {e['name']} | {e['count']:,} | {e['bytes']:,} | `{e['sha256']}` |"
            for s in splits
            for e in manifest["splits"][s]["shards"]
        ),
        *(
            f"| {e['name']} | | {e['bytes']:,} | `{e['sha256']}` |"
            for s in splits
            if (e := index_of(manifest, s))
        ),
        "",
    ]
