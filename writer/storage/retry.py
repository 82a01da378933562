"""Remote storage for the writer and the loaders alike: the one S3 client factory and the one retry policy.

A failing storage call is retried only when the failure is transient (connection refused or reset,
timeout, HTTP 408/425/429/5xx, a truncated body): delays 0.5, 1, 2, 4, 8 s (+-25% jitter) between at most
6 attempts, and no new attempt once 60 s have passed since the first, so a dead endpoint fails within
about 60 s (plus the attempt then running). Each retry logs one WARNING line on `segshards.storage`.
`SEGSHARDS_STORAGE_ATTEMPTS` changes the default number of attempts (1: no retries).

s3fs's own retry loop is switched off (`retries=1`) so that this policy is the only one above botocore,
whose per-request retries follow the user's AWS settings (`AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE`).
Endpoint, region and credentials come from the standard AWS sources (`AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID` ...,
`~/.aws/config`), read by botocore itself: nothing here stores, prints or records a credential.
"""

import errno
import http.client
import logging
import os
import random
import re
import socket
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Failure = Literal["missing", "denied", "transient", "other"]

ATTEMPTS_VARIABLE = "SEGSHARDS_STORAGE_ATTEMPTS"
LOG = logging.getLogger("segshards.storage")
USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_ERRNO = {
    errno.EIO,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EREMOTEIO,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
}
TRANSIENT_BOTO = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "HTTPClientError",
    "ProxyConnectionError",
    "ResponseStreamingError",
    "IncompleteReadError",
}
DENIED_BOTO = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}


def default_attempts() -> int:
    """6, or `SEGSHARDS_STORAGE_ATTEMPTS` when set (a positive integer)."""
    text = os.environ.get(ATTEMPTS_VARIABLE, "6")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ATTEMPTS_VARIABLE}={text!r}: must be a positive integer")
    return int(text)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried: delays base, 2*base ... up to max_delay,
    and no new attempt after `total_s` seconds."""

    attempts: int = field(default_factory=default_attempts)
    base_delay: float = 0.5
    max_delay: float = 10.0
    total_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based), with +-25% jitter."""
        return min(self.max_delay, self.base_delay * 2**attempt) * random.uniform(0.75, 1.25)


def safe_reason(exc: BaseException) -> str:
    """A one-line reason for `exc` with any `user:password@` removed from URLs in it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return USERINFO.sub("", text)


def classify(exc: BaseException) -> Failure | None:
    """What kind of failure `exc` is for a storage call; None for exceptions that are not about storage."""
    name = type(exc).__name__
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in (404, 410):
            return "missing"
        if exc.code in (401, 403):
            return "denied"
        return "transient" if exc.code in TRANSIENT_HTTP else "other"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return "missing"
    if isinstance(exc, PermissionError) or name in DENIED_BOTO:
        return "denied"
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)):
        return "transient"  # HTTPException covers IncompleteRead and RemoteDisconnected
    if isinstance(exc, urllib.error.URLError):
        return "transient" if isinstance(exc.reason, (OSError, TimeoutError)) else "other"
    if name in TRANSIENT_BOTO or type(exc).__module__.startswith("aiohttp"):
        return "transient"
    if isinstance(exc, OSError):
        return "transient" if exc.errno in TRANSIENT_ERRNO or exc.errno is None else "other"
    if type(exc).__module__.startswith(("botocore", "aiobotocore", "s3fs")):
        return "other"
    return None


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run `action`, retrying transient failures under `policy` (one log line per retry, naming `what`).

    Any other failure, or the last transient one, propagates unchanged: callers turn it into their own
    one-line error (`classify` tells a transient failure that outlived its retries from the rest).
    """
    started = time.monotonic()
    for attempt in range(policy.attempts):
        try:
            return action()
        except Exception as exc:
            wait = policy.delay(attempt)
            last = attempt + 1 == policy.attempts or time.monotonic() + wait - started > policy.total_s
            if classify(exc) != "transient" or last:
                raise
            LOG.warning(
                "%s: %s; retry %d of %d in %.1f s",
                what,
                safe_reason(exc),
                attempt + 1,
                policy.attempts - 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
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
