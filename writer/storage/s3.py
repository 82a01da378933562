"""The one S3 client of a process (s3fs over aiobotocore), for the writer's `S3Store` and the loaders alike.

Endpoint, region and credentials come from the standard AWS sources (`AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` for MinIO, Ceph, moto ..., `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_PROFILE`,
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `~/.aws/config`), read by botocore itself:
nothing here stores, prints or records a credential. botocore's own per-request retries follow the user's
AWS settings (`AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE`); s3fs's retry loop is switched off so that
`segshards.writer.storage.retry` is the only one above them.
"""

import os
from typing import Any
from urllib.parse import urlparse

from segshards.writer.errors import StorageError

_S3: dict[tuple[Any, ...], Any] = {}
_SESSIONS: dict[tuple[Any, ...], Any] = {}


def s3_filesystem() -> Any:
    """The s3fs filesystem of this process for the current AWS environment (a changed AWS_* variable gets a
    new client). Forked DataLoader workers make their own filesystem, but from the botocore session they
    inherit, whose service models are already loaded (~0.3 CPU-s saved per worker)."""
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    fs = _S3.get((os.getpid(), settings))
    if fs is None:
        import s3fs  # imported here: local and http users never pay for botocore
        from aiobotocore.session import AioSession

        client: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client["endpoint_url"] = endpoint
        region = os.environ.get("AWS_REGION")
        if region and not os.environ.get("AWS_DEFAULT_REGION"):
            client["region_name"] = region
        session = _SESSIONS.setdefault(settings, AioSession())
        fs = s3fs.S3FileSystem(
            skip_instance_cache=True, use_listings_cache=False, client_kwargs=client, session=session
        )
        fs.retries = 1  # `with_retries` is the one retry loop above botocore's
        _S3.clear()
        _S3[(os.getpid(), settings)] = fs
    return fs


def s3_path(url: str) -> str:
    """`bucket/key` of an `s3://bucket/key` URL, as s3fs names objects."""
    parsed = urlparse(url)
    if not parsed.netloc:
        raise StorageError(f"{url}: an s3 URL needs a bucket (s3://bucket/key)")
    return parsed.netloc + parsed.path
