"""What other tools read from a card: the Hugging Face front matter, and a loading snippet per client
(segshards, stock webdataset, Hugging Face `datasets`, Ray Data, wids) for the set's real location.

Two clients keep copies between runs: Hugging Face `datasets` (Arrow files under a folder named for the
dataset's folder name and config name, and downloads named for their URL) and wids (shard copies named for
their URL). A set rebuilt or republished in place keeps its location, so every copy the snippets make is
keyed to the set's content instead: the config name and wids' cache folder carry `content_key` (from the
manifest's sha256, which covers every shard's), and remote downloads are checked against their ETags.
"""

import hashlib
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


def content_key(manifest_bytes: bytes) -> str:
    """A short name for the set's content: another build (other seed, counts, source) has another manifest."""
    return f"manifest-{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"


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


def front_matter(manifest: dict[str, Any], key: str) -> list[str]:
    """The YAML block Hugging Face reads (`DatasetCard.load`, the hub, `load_dataset(folder)`): licence, task,
    size, name, and one config named `key` with a `data_files` glob per split with shards (JSON strings are
    YAML scalars). `datasets` names its cache folder for the config, so a rebuilt set is read anew."""
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
        lines += [
            "configs:",
            f"- config_name: {json.dumps(key)}  # the content's name: datasets caches each set apart",
            "  default: true",
            "  data_files:",
        ]
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


def hf_block(loc: str, splits: list[str], split: str, schema: SampleSchema) -> list[str]:
    """Hugging Face `datasets`: the folder with this card's config (named for the content), or for a remote
    set the shards by URL, downloaded again when their ETag changed (by default it reuses a download by URL)."""
    if is_remote(loc):
        files = ", ".join(f'"{HF_SPLITS.get(s, s)}": "{loc}/{s}-*.tar"' for s in splits)
        load = [
            "from datasets import DownloadConfig, load_dataset",
            "# needs s3fs; use_etag: a set replaced at this URL is downloaded again, not read from the cache",
            f'ds = load_dataset("webdataset", data_files={{{files}}}, download_config=DownloadConfig(use_etag=True))',
        ]
    else:
        load = [
            "from datasets import load_dataset",
            f"ds = load_dataset(\"{loc}\")  # this card's config, named for the set's content: a rebuild is read anew",
        ]
    return [
        "import numpy as np",
        *load,
        f'row = ds["{HF_SPLITS.get(split, split)}"][0]',
        f'image, mask = np.asarray(row["{schema.image}"]), np.asarray(row["{schema.mask}"])  # mask (H, W) uint8',
    ]


def hf_note(loc: str, key: str) -> str:
    """What `datasets` keeps between runs, and why the snippet reads the set there now."""
    if is_remote(loc):
        return (
            "It keeps the shards it downloads and an Arrow copy; with `use_etag=True` it checks each shard's ETag, "
            "so a set replaced at this URL is read anew:"
        )
    return (
        f"It keeps an Arrow copy of the set under the config's name, `{key}` (from the manifest), so a set "
        "rebuilt at the same place gets a copy of its own:"
    )


def wids_block(loc: str, split: str, schema: SampleSchema, key: str) -> list[str]:
    """wids: its copies of the shards go to a cache folder named for the set's content (by default it names
    them for their URL, and reads the old copy of a set rebuilt in place); quiet AWS CLI downloads."""
    quiet = (
        [
            "# wids downloads with the AWS CLI, which prints its progress on stdout unless told otherwise",
            "wids.wids_dl.default_cmds[\"s3\"] = \"aws s3 cp --only-show-errors '{url}' '{local}'\"",
        ]
        if is_remote(loc)
        else []
    )
    return [
        "import os",
        "import tempfile",
        "from functools import partial",
        "import wids",
        "from wids.wids_decode import default_decoder",
        *quiet,
        f'cache = os.path.join(os.environ.get("WIDS_CACHE", tempfile.gettempdir()), "segshards-{key}")',
        f'dataset = wids.ShardListDataset("{loc}/{index_name(split)}", cache_dir=cache, '
        'transformations=partial(default_decoder, format="numpy"))',
        "sample = dataset[len(dataset) - 1]  # any index in range(len(dataset))",
        f'image, mask = sample[".{schema.image}"], sample[".{schema.mask}"]  # numpy uint8; mask (H, W)',
    ]


def snippets(manifest: dict[str, Any], loc: str, key: str) -> list[str]:
    """How to read the set at `loc` with each client; every block runs as written (tests execute them) and
    reads the set there now: what a client keeps between runs is keyed to `key` (see `content_key`)."""
    splits = [s for s in split_names(manifest) if manifest["splits"][s]["shards"]] or ["train"]
    split = splits[0]
    names = [e["name"] for e in manifest["splits"].get(split, {}).get("shards", [])] or [
        f"{split}-000000.tar"
    ]
    schema = schema_of(manifest)
    image, mask = schema.image, schema.mask
    wds_url = f"{loc}/{shard_pattern(names)}"
    if is_remote(loc):
        wds_url = f"pipe:aws s3 cp {wds_url} -"
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
        f"`L`; `json` as a struct). {hf_note(loc, key)}",
        "",
        *code(*hf_block(loc, splits, split, schema)),
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
        f"(shard URLs relative to it). wids reads copies of the shards, local ones too; the cache folder "
        f"`segshards-{key}` holds this content's only, so a set rebuilt at the same place is copied anew (delete "
        "old folders when done). "
        "It writes one line about the index to stderr, which no option turns off:",
        "",
        *code(*wids_block(loc, split, schema, key)),
        "Stock webdataset's `decode()` unpickles `.pkl`/`.pickle`/`.pyd` members unless `WDS_SECURE=1` is in "
        "the environment when it is imported. Before reading a copy of this set that you did not build, run "
        "`segshards verify` on it: it checks every shard and index against the manifest and refuses pickles, "
        "links and unsafe member names (our loader refuses them too).",
    ]
