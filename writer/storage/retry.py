"""The one retry policy of remote storage, for the writer and the loaders alike, and the one way its
failures become a `StorageError`.

A failing storage call is retried only when the failure is transient (connection refused or reset,
timeout, HTTP 408/425/429/5xx, a truncated body): delays 0.5, 1, 2, 4, 8 s (+-25% jitter) between at most
6 attempts, and no new attempt once 60 s have passed since the first, so a dead endpoint fails within
about 60 s (plus the attempt then running). Each retry logs one WARNING line on `segshards.storage`.
`SEGSHARDS_STORAGE_ATTEMPTS` changes the default number of attempts (1: no retries).

s3fs's own retry loop is switched off (`segshards.writer.storage.s3`) so that this policy is the only one
above botocore's per-request retries.
"""

import errno
import http.client
import logging
import os
import random
import re
import socket
import ssl
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from segshards.writer.errors import StorageError

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
    return redacted(text)


def redacted(text: str) -> str:
    """`text` with any `user:password@` removed from the URLs in it."""
    return USERINFO.sub("", text)


def classify(exc: BaseException) -> Failure | None:
    """What kind of failure `exc` is for a storage call; None for exceptions that are not about storage."""
    name = type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError) or name == "ClientConnectorCertificateError":
        return "other"  # a certificate that does not verify will not verify on a retry either
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, ssl.SSLCertVerificationError):
        return "other"
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
                redacted(what),
                safe_reason(exc),
                attempt + 1,
                policy.attempts - 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def retried(action: Callable[[], T], url: str, policy: RetryPolicy) -> T:
    """`with_retries`, with a storage failure turned into one StorageError naming `url` and what went wrong
    (missing, access denied, unreadable, or still failing after the policy's attempts)."""
    try:
        return with_retries(action, url, policy)
    except Exception as exc:
        kind = classify(exc)
        if kind is None:
            raise
        detail = f"{type(exc).__name__}: {safe_reason(exc)}"
        url = redacted(url)
        if kind == "missing":
            raise StorageError(f"{url}: not found ({detail})", missing=True) from exc
        if kind == "denied":
            raise StorageError(
                f"{url}: access denied; check the credentials and permissions ({detail})"
            ) from exc
        if kind == "other":
            raise StorageError(f"{url}: cannot read ({detail})") from exc
        attempts = f"{policy.attempts} attempt" + ("s" if policy.attempts != 1 else "")
        raise StorageError(f"{url}: still failing after {attempts} ({detail})") from exc
