"""Loader-specific exceptions and warnings, subclassing the project's errors in `segshards.writer.errors`."""

from segshards.writer.errors import ConfigError, SegshardsError, ShardFormatError, StorageError


class ResumeError(ConfigError):
    """A saved loader state does not fit this loader (other workers, ranks, batch size, seed or shards)."""


class SkippedDataWarning(UserWarning):
    """With `on_error="skip"`: shards or samples were skipped this epoch (see `loader.stats`)."""


__all__ = [
    "ConfigError",
    "ResumeError",
    "SegshardsError",
    "ShardFormatError",
    "SkippedDataWarning",
    "StorageError",
]
