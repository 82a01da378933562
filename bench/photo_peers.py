"""The photo bench's peers: LitData's and MosaicML's `StreamingDataset`, each over its own format written
from the same JPEG and PNG bytes, with the same decode, letterbox and batching as the other contenders.

Neither is in the dev extras: mosaicml-streaming 0.13 requires numpy<2.2 (the project pins 2.4) and both
pull torchvision. Installed by hand (`pip install --no-deps litdata mosaicml-streaming` plus their small
readers' dependencies) they run here; a peer that does not import is reported and left out.
"""

import gc
import shutil
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Pair = tuple[bytes, bytes]
Work = Callable[[Iterable[Pair]], int]  # decode, letterbox and batch the pairs; returns photos done


def as_item(pair: Pair) -> dict[str, bytes]:
    """One LitData item: the raw bytes, serialised as they are."""
    return {"jpg": pair[0], "mask": pair[1]}


def litdata_run(pairs: list[Pair], folder: Path, work: Work) -> Callable[[], int] | None:
    """LitData: `optimize` the pairs once, then a run reads them through `StreamingDataset`."""
    try:
        import litdata
    except ImportError as exc:
        print(f"[photo] litdata: not installed ({exc}), left out")
        return None
    out = folder / "litdata"
    if not (out / "index.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        litdata.optimize(fn=as_item, inputs=pairs, output_dir=str(out), chunk_bytes="64MB", num_workers=1)

    def run() -> int:
        dataset = litdata.StreamingDataset(input_dir=str(out), shuffle=False)
        total = work((d["jpg"], d["mask"]) for d in dataset)
        del dataset
        gc.collect()
        return total

    return run


def import_streaming() -> Any:
    """MosaicML's `streaming` package; its `streaming.vision` (torchvision datasets, unused here) is
    stubbed out when torchvision is absent."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    import streaming

    return streaming


def mosaic_run(pairs: list[Pair], folder: Path, work: Work) -> Callable[[], int] | None:
    """MosaicML: `MDSWriter` bytes columns once, then a run reads them through `StreamingDataset`."""
    try:
        streaming = import_streaming()
    except ImportError as exc:
        print(f"[photo] mosaicml-streaming: does not import ({exc}), left out")
        return None
    out = folder / "mds"
    if not (out / "index.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        with streaming.MDSWriter(
            out=str(out), columns={"jpg": "bytes", "mask": "bytes"}, size_limit=1 << 26
        ) as w:
            for jpeg, png in pairs:
                w.write({"jpg": jpeg, "mask": png})

    def run() -> int:
        streaming.base.util.clean_stale_shared_memory()
        dataset = streaming.StreamingDataset(local=str(out), shuffle=False, batch_size=32)
        total = work((d["jpg"], d["mask"]) for d in dataset)
        del dataset
        gc.collect()
        return total

    return run


def peer_runs(pairs: list[Pair], folder: Path, work: Work) -> dict[str, Callable[[], int]]:
    """The peers that import, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = {"litdata": litdata_run(pairs, folder, work), "mosaicml": mosaic_run(pairs, folder, work)}
    return {name: run for name, run in runs.items() if run is not None}
