"""What other tools read from a card: the Hugging Face front matter, and a loading snippet per client
(segshards, stock webdataset, Hugging Face `datasets`, Ray Data, wids) for the set's real location."""

import json
from pathlib import Path
from typing import Any

from segshards.writer.format.manifest import split_names
from segshards.writer.format.schema import SampleSchema, schema_of
from segshards.writer.format.wids_index import index_name
from segshards.writer.recipes.contract import UNKNOWN_LICENCE
from segshards.writer.storage.store import is_remote

HF_SPLITS = {"val": "validation"}  # Hugging Face's name for a split, where it differs from ours
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]  # fmt: skip
MASK_NOTE = (
    "**Masks are class indices, not pictures.** Decode `mask.png` as one 8-bit channel: OpenCV "
    "`cv2.imread(path, cv2.IMREAD_UNCHANGED)`, PIL `Image.open` (mode `L`), webdataset "
    '`wds.imagehandler("l8")`, Hugging Face `datasets` and Ray Data as they come, wids with its `numpy` decoder. '
    'webdataset\'s `.decode("pil")`, `.decode("rgb8")`, `.decode("torchrgb")` (and every other rgb or float '
    "spec) turn a mask into three channels or into floats divided by 255: the class ids are silently lost."
)


def location_of(where: str | Path) -> str:
    """The set's location as its snippets name it: an s3:// URL as it is, a local folder made absolute."""
    return str(where) if is_remote(where) else str(Path(where).resolve())


def licence_id(manifest: dict[str, Any]) -> str:
    """The source's licence id (`cc-by-sa-3.0`, `cc-by-4.0`, or `other` when not known)."""
    return str(manifest.get("source", {}).get("licence", {}).get("id") or UNKNOWN_LICENCE.id)


def shard_pattern(names: list[str]) -> str:
    """Brace pattern webdataset expands to `names` (consecutive `SPLIT-NNNNNN.tar`)."""
    if len(names) == 1:
        return names[0]
    first, last = names[0], names[-1]
    stem, _, start = first.removesuffix(".tar").rpartition("-")
    stop = last.removesuffix(".tar").rpartition("-")[2]
    return f"{stem}-{{{start}..{stop}}}.tar"


def size_category(samples: int) -> str:
    """Hugging Face's size category of a set of `samples`."""
    return next((name for limit, name in SIZE_CATEGORIES if samples < limit), "n>100M")


def front_matter(manifest: dict[str, Any]) -> list[str]:
    """The YAML block Hugging Face reads (`DatasetCard.load`, the hub, `load_dataset(folder)`): licence, task,
    size, name, and one `data_files` glob per split with shards (JSON strings are YAML scalars)."""
    total = sum(info["count"] for info in manifest["splits"].values())
    lines = [
        "---",
        f"license: {json.dumps(licence_id(manifest))}",
        *(['license_name: "unknown"'] if licence_id(manifest) == "other" else []),
        f"pretty_name: {json.dumps(manifest['recipe'] + ' segmentation shards')}",
        "task_categories:",
        "- image-segmentation",
        "size_categories:",
        f"- {json.dumps(size_category(total))}",
        "tags:",
        "- webdataset",
        "- segshards",
    ]
    splits = [s for s in split_names(manifest) if manifest["splits"][s]["shards"]]
    if splits:
        lines += ["configs:", "- config_name: default", "  data_files:"]
        for s in splits:
            lines += [
                f"  - split: {json.dumps(HF_SPLITS.get(s, s))}",
                f"    path: {json.dumps(s + '-*.tar')}",
            ]
    return [*lines, "---", ""]


def webdataset_decode(schema: SampleSchema) -> str:
    """A webdataset `.decode(...)` that keeps the mask one uint8 channel and the image grey or RGB uint8."""
    if schema.channels == 1:
        return '.decode(wds.imagehandler("l8"))'
    if schema.image != "png":  # masks are the only PNGs: decode PNG as l8, the rest as rgb8
        return '.decode(wds.imagehandler("l8", ["png"]), wds.imagehandler("rgb8"))'
    return (  # colour PNG images: tell the mask apart by its full extension
        '.decode(wds.handle_extension("mask.png", lambda data: wds.imagehandler("l8")("x.png", data)), '
        'wds.imagehandler("rgb8"))'
    )


def shard_paths(names: list[str], loc: str, split: str) -> str:
    """A Python expression for the list of the split's shard paths."""
    if names == [f"{split}-{i:06d}.tar" for i in range(len(names))]:
        return f'[f"{loc}/{split}-{{i:06d}}.tar" for i in range({len(names)})]'
    return json.dumps([f"{loc}/{n}" for n in names])


def code(*lines: str) -> list[str]:
    return ["```python", *lines, "```", ""]


def snippets(manifest: dict[str, Any], loc: str) -> list[str]:
    """How to read the set at `loc` with each client; every block runs as written (tests execute them)."""
    splits = [s for s in split_names(manifest) if manifest["splits"][s]["shards"]] or ["train"]
    split = splits[0]
    names = [e["name"] for e in manifest["splits"].get(split, {}).get("shards", [])] or [
        f"{split}-000000.tar"
    ]
    schema = schema_of(manifest)
    image, mask = schema.image, schema.mask
    remote = is_remote(loc)
    wds_url = f"pipe:aws s3 cp {loc}/{shard_pattern(names)} -" if remote else f"{loc}/{shard_pattern(names)}"
    if remote:
        files = ", ".join(f'"{HF_SPLITS.get(s, s)}": "{loc}/{s}-*.tar"' for s in splits)
        hf = [f'ds = load_dataset("webdataset", data_files={{{files}}})  # needs s3fs']
    else:
        hf = [f'ds = load_dataset("{loc}")  # the splits of this card\'s `configs`']
    return [
        f"The `{split}` split is read below; every split works the same way "
        f"({', '.join(f'`{s}`' for s in splits)}). {MASK_NOTE}",
        "",
        "segshards' loader (batches of uint8 tensors, decoded with OpenCV; local folder, s3:// or http(s)://):",
        "",
        *code(
            "from segshards.loaders import make_loader",
            f'loader = make_loader("{loc}", split="{split}", batch_size=64)',
            'batch = next(iter(loader))  # batch["image"] (N, C, H, W) uint8, batch["mask"] (N, H, W) uint8',
        ),
        "Stock webdataset (numpy arrays; the mask stays one uint8 channel):",
        "",
        *code(
            "import webdataset as wds",
            f'dataset = wds.WebDataset("{wds_url}", shardshuffle=False){webdataset_decode(schema)}',
            f'image, mask, meta = next(iter(dataset.to_tuple("{image}", "{mask}", "json")))',
        ),
        f"Hugging Face `datasets` (columns named by member: `{image}`, `{mask}` as PIL images, masks in mode "
        "`L`; `json` as a struct):",
        "",
        *code(
            "import numpy as np",
            "from datasets import load_dataset",
            *hf,
            f'row = ds["{HF_SPLITS.get(split, split)}"][0]',
            f'image, mask = np.asarray(row["{image}"]), np.asarray(row["{mask}"])  # mask (H, W) uint8',
        ),
        "Ray Data (`read_webdataset` has no glob and fails on the card and JSON files of a folder: give it the "
        'shard paths, or the folder with `file_extensions=["tar"]`, which reads every split):',
        "",
        *code(
            "import ray",
            f"ds = ray.data.read_webdataset({shard_paths(names, loc, split)})",
            f'row = ds.take(1)[0]  # row["{image}"], row["{mask}"] (H, W) uint8 numpy arrays, row["json"] a dict',
            f'image, mask = row["{image}"], row["{mask}"]',
        ),
        f"wids, random access by sample number through the split's index `{index_name(split)}` "
        "(shard URLs relative to it):",
        "",
        *code(
            "from functools import partial",
            "import wids",
            "from wids.wids_decode import default_decoder",
            f'dataset = wids.ShardListDataset("{loc}/{index_name(split)}", '
            'transformations=partial(default_decoder, format="numpy"))',
            "sample = dataset[len(dataset) - 1]  # any index in range(len(dataset))",
            f'image, mask = sample[".{image}"], sample[".{mask}"]  # numpy uint8; mask (H, W)',
        ),
        "Stock webdataset's `decode()` unpickles `.pkl`/`.pickle`/`.pyd` members unless `WDS_SECURE=1` is in "
        "the environment when it is imported. Before reading a copy of this set that you did not build, run "
        "`segshards verify` on it: it checks every shard and index against the manifest and refuses pickles, "
        "links and unsafe member names (our loader refuses them too).",
    ]
