"""Training-specific exceptions, subclassing the project's errors in `segshards.writer.errors`."""

from segshards.writer.errors import ConfigError, OutputError, SegshardsError


class CheckpointError(SegshardsError):
    """A checkpoint is missing, unreadable, or does not fit the run it is resumed into."""


__all__ = ["CheckpointError", "ConfigError", "OutputError", "SegshardsError"]
