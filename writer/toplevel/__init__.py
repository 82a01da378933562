"""segshards: deterministic WebDataset shards for image segmentation, streamed into PyTorch training.

Installed, the repository's top-level folders are this package's parts: `writer/` is `segshards.writer`
(recipes, shard format, builds, the CLI), `loaders/` is `segshards.loaders`, `train/` is `segshards.train`,
`data/` is `segshards.data` (the bundled MNIST). This file lives in `writer/toplevel/` (see pyproject.toml's
`package-dir`), so no generic top-level name is installed.

`segshards.build(fn, inputs, out, classes=...)` builds a set from a function of your own
(`segshards.writer.build.from_function`).
"""

from typing import TYPE_CHECKING, Any

from segshards.writer import __version__

if TYPE_CHECKING:
    from segshards.writer.build.from_function import BuildResult, build

__all__ = ["BuildResult", "__version__", "build"]


def __getattr__(name: str) -> Any:
    """`build` and `BuildResult`, imported on first use (PEP 562): the `segshards` command imports this
    package before it starts its worker processes, and `segshards --help` should not pay for OpenCV,
    NumPy and the build machinery that `segshards.build` needs."""
    if name in ("build", "BuildResult"):
        from segshards.writer.build import from_function

        return getattr(from_function, name)
    raise AttributeError(f"module 'segshards' has no attribute {name!r}")
