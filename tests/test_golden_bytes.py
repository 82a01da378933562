"""Shard bytes do not drift: small sets of every built-in recipe hash to the values recorded in
`golden_bytes.json`, which were taken from the code before the writer was split into layers.

A change that alters a shard's bytes (member order, PNG settings, keys, tar headers) fails here and must
say so: sets built before it would no longer be reproducible. Regenerate deliberately with
`python -m tests.test_golden_bytes` and explain why in the commit.
"""

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from segshards.writer.cli.main import main
from tests.coco_fixtures import write_coco
from tests.test_mask_folder import COCO_TINY, voc_tree

GOLDEN = Path(__file__).with_name("golden_bytes.json")
COCO_TINY_ROOT = COCO_TINY.parent if COCO_TINY else None


def _mnist(recipe: str) -> Callable[[Path], list[str]]:
    def args(_: Path) -> list[str]:
        return [recipe, "--train", "40", "--val", "10", "--test", "10", "--seed", "3", "--shard-size", "16"]

    return args


def _coco_tiny(_: Path) -> list[str]:
    assert COCO_TINY_ROOT is not None
    root = COCO_TINY_ROOT
    return [
        "coco-semantic", "--annotations", str(root / "instances.json"), "--images", str(root / "images"),
        "--train", "8", "--val", "3", "--test", "3", "--seed", "5", "--shard-size", "4",
    ]  # fmt: skip


def _coco_synthetic(work: Path) -> list[str]:
    source = write_coco(work / "coco-src")
    return ["coco-semantic", *source.args(), "--train", "2", "--val", "1", "--test", "1", "--seed", "1"]


def _mask_folder(work: Path) -> list[str]:
    tree = voc_tree(work / "voc")
    return ["mask-folder", *tree.args("--split-lists", str(work / "voc/ImageSets/Segmentation"))]


CASES: dict[str, Callable[[Path], list[str]]] = {
    "mnist-foreground": _mnist("mnist-foreground"),
    "mnist-circle": _mnist("mnist-circle"),
    "mnist-grid": _mnist("mnist-grid"),
    "coco-synthetic": _coco_synthetic,
    "coco-tiny": _coco_tiny,
    "mask-folder-voc": _mask_folder,
}


def shard_digests(work: Path, case: str) -> dict[str, str]:
    """Build `case` into `work/out` with two workers; sha256 of every shard and wids index, by name."""
    out = work / "out"
    assert main(["build", *CASES[case](work), "--out", str(out), "--jobs", "2"]) == 0
    files = sorted([*out.glob("*.tar"), *out.glob("*.wids.json")])
    assert files, f"{case}: no shards written"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_shard_is_byte_identical_to_the_recorded_build(case: str, tmp_path: Path) -> None:
    if case in ("coco-tiny", "mask-folder-voc") and COCO_TINY_ROOT is None:
        # mask-folder's fixture crops the coco-tiny photographs (synthetic ones without them: other bytes)
        pytest.skip("shared/data/coco-tiny is not beside the checkout")
    expected = json.loads(GOLDEN.read_text())[case]
    assert shard_digests(tmp_path, case) == expected


def regenerate(work: Path) -> None:
    """Write golden_bytes.json from the current code (run by hand, never by the tests)."""
    digests = {}
    for case in sorted(CASES):
        (work / case).mkdir(parents=True)
        digests[case] = shard_digests(work / case, case)
    GOLDEN.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        regenerate(Path(tmp))
    sys.exit(0)
