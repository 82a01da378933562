"""A real S3 API on loopback for the store tests: the session's moto server, reached through a relay.

moto keeps its objects in memory, so killing its process would lose the bucket, which a real store
never does. To take "the server" down in the middle of a publish and bring it back with its data, the
tests point the client at a small TCP relay in front of moto: `Relay.stop()` closes the listening port
and resets every open connection (a request in flight is cut mid-body), `Relay.start()` listens on the
same port again. From the client's side that is an endpoint that goes away and comes back with durable
storage, like a MinIO or Ceph gateway restart.
"""

import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

SECRET = "sentinel-Secret-Key-9f2c"  # must never appear in any output, log, card or manifest
ACCESS_KEY = "AKIDSENTINEL0000TEST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


class Relay:
    """A loopback TCP relay to `target_port` that can be cut and restarted on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._budget: int | None = None  # client->server bytes still allowed before an automatic cut
        self.cuts = 0

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
            self._budget = None
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut_after(self, nbytes: int) -> None:
        """Stop the relay once `nbytes` more client->server bytes have been forwarded (mid-request)."""
        with self._lock:
            self._budget = nbytes

    def stop(self) -> None:
        """Close the port and reset every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
            self._budget = None
            self.cuts += 1
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()  # linger 0: the peer gets a reset, not an orderly end
            except OSError:
                pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if to_server:
                    with self._lock:
                        budget = self._budget
                        if budget is not None:
                            self._budget = budget - len(data)
                    if budget is not None and budget <= len(data):
                        dst.sendall(data[: max(budget, 0)])
                        self.stop()
                        return
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@dataclass
class S3:
    """One test's bucket on the loopback S3 server; `client` talks to moto directly, past the relay."""

    bucket: str
    endpoint: str
    client: Any
    relay: Relay

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix/`, by name, read past the relay."""
        out: dict[str, bytes] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{prefix}/")
        for page in pages:
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                out[item["Key"].removeprefix(f"{prefix}/")] = body
        return out

    def metadata(self, prefix: str, name: str) -> dict[str, str]:
        return dict(self.client.head_object(Bucket=self.bucket, Key=f"{prefix}/{name}")["Metadata"])


def aws_environment(endpoint: str) -> dict[str, str]:
    """The AWS settings a user would export, isolated from any real config on this machine."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "2",  # fail fast on loopback; the default retries take seconds
        "SEGSHARDS_STORAGE_ATTEMPTS": "1",  # likewise segshards' own retries (tests of them set a policy)
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@pytest.fixture(name="s3")
def s3_fixture(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A fresh bucket on the session's moto server (conftest's `s3_server`), and the AWS environment
    variables pointing at it through a new relay."""
    relay = Relay(int(s3_server.rsplit(":", 1)[1]))
    relay.start()
    endpoint = f"http://127.0.0.1:{relay.port}"
    for key in [k for k in os.environ if k.startswith(("AWS_", "SEGSHARDS_STORAGE_"))]:
        monkeypatch.delenv(key)
    for key, value in aws_environment(endpoint).items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    bucket = f"segshards-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3(bucket=bucket, endpoint=endpoint, client=client, relay=relay)
    relay.stop()


def no_secret_in(*texts: str | bytes, paths: tuple[Path, ...] = ()) -> bool:
    """True when the secret key appears in none of `texts` nor the files under `paths`."""
    blobs = [t.encode() if isinstance(t, str) else t for t in texts]
    for root in paths:
        blobs += [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    return not any(SECRET.encode() in b for b in blobs)
