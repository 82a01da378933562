"""Exceptions of segshards; `cli.main` turns each into one line on stderr and a non-zero exit."""


class SegshardsError(Exception):
    """Base class: the message is a complete, one-line explanation for the user."""


class SourceError(SegshardsError):
    """A source file is missing, truncated, corrupt or inconsistent."""


class ConfigError(SegshardsError):
    """An option or configuration value breaks a rule."""


class SupplyError(SegshardsError):
    """The source cannot supply the requested number of unique samples."""


class PlanError(SegshardsError):
    """A rendered sample is not the planned one: the recipe is not deterministic, or its source changed."""


class OutputError(SegshardsError):
    """The output location cannot be used or written."""


class ShardFormatError(SegshardsError):
    """A shard or manifest does not follow the segshards format, or is unsafe to read."""


class StorageError(SourceError):
    """A storage location (local folder, http(s), s3) cannot be reached, refuses a request, or lacks an
    object (`missing`)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing

    def __reduce__(self) -> tuple[object, ...]:  # keeps `missing` across processes (DataLoader workers)
        return (_storage_error, (str(self), self.missing))


def _storage_error(message: str, missing: bool) -> StorageError:
    return StorageError(message, missing=missing)


class ClusterError(SegshardsError):
    """The dask cluster cannot be reached or could not finish the shard tasks."""
