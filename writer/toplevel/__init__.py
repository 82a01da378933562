"""segshards: deterministic WebDataset shards for image segmentation, streamed into PyTorch training.

Installed, the repository's top-level folders are this package's parts: `writer/` is `segshards.writer`
(recipes, shard format, builds, the CLI), `loaders/` is `segshards.loaders`, `train/` is `segshards.train`,
`data/` is `segshards.data` (the bundled MNIST). This file lives in `writer/toplevel/` (see pyproject.toml's
`package-dir`), so no generic top-level name is installed.
"""

from segshards.writer import __version__

__all__ = ["__version__"]
