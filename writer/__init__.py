"""segshards writer: render recipes into deterministic, deduplicated WebDataset tar shards."""

__version__ = "0.1.0"
