"""Stream segshards shard sets (local, http(s), s3) into PyTorch training: `make_loader`, `DevicePrefetcher`.

Importing this package registers an s3:// handler in `webdataset.gopen_schemes` (see `segshards.loaders.storage`).
"""

from segshards.loaders.augment import Augment
from segshards.loaders.device import CudaPrefetcher, DevicePrefetcher, to_device, to_float
from segshards.loaders.errors import ResumeError, SkippedDataWarning, StorageError
from segshards.loaders.loader import LoaderConfig, ShardLoader, make_loader
from segshards.loaders.storage import RetryPolicy, register_gopen
from segshards.loaders.streams import Stream
from segshards.loaders.transform import Albumentations, sample_seed

register_gopen()

__all__ = [
    "Albumentations",
    "Augment",
    "CudaPrefetcher",
    "DevicePrefetcher",
    "LoaderConfig",
    "ResumeError",
    "RetryPolicy",
    "ShardLoader",
    "SkippedDataWarning",
    "StorageError",
    "Stream",
    "make_loader",
    "sample_seed",
    "to_device",
    "to_float",
]
