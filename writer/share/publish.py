"""`segshards publish DIR s3://bucket/prefix`: upload a finished set, manifest last, resumable at any point.

The card is rendered again for the destination, so that its snippets read from there. Each object is
sent in one request that the store makes visible only when complete (see `segshards.writer.storage.store`),
so nothing appears under its final name half-written; the manifest goes last, so a set with a manifest is
a complete set. Objects already there with the right size and recorded sha256 are skipped: running the
same command again after any interruption uploads only what is missing.
"""

import hashlib
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segshards.writer.errors import ConfigError, OutputError, ShardFormatError, StorageError
from segshards.writer.format.keys import file_digest
from segshards.writer.format.manifest import MANIFEST, MARKER, RUN_LOG, parse_manifest, split_names
from segshards.writer.format.wids_index import entry_problem, index_entries
from segshards.writer.share.card import CARD, render_card
from segshards.writer.storage.retry import classify, safe_reason
from segshards.writer.storage.store import Store, open_store

MISSING_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError"}
CREDENTIAL_SOURCES = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"


@dataclass(frozen=True)
class PublishConfig:
    """What to publish where, with how many concurrent uploads."""

    folder: Path
    dest: str
    jobs: int = 8


@dataclass
class PublishReport:
    """What a publish did: objects uploaded (with their bytes) and objects already in place."""

    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class SetFile:
    """One file of the set: its name, size and expected sha256; `data` when it is sent from memory."""

    name: str
    size: int
    sha256: str
    data: bytes | None = None


def listed_file(folder: Path, entry: dict[str, Any]) -> SetFile:
    """A file the manifest lists (shard or index), refused when missing, a link, or of the wrong size."""
    path = folder / entry["name"]
    if path.is_symlink() or not path.is_file():
        raise ShardFormatError(f"{path}: listed in the manifest but not a regular file")
    if path.stat().st_size != entry["bytes"]:
        raise ShardFormatError(
            f"{path}: {path.stat().st_size} bytes, manifest says {entry['bytes']}; run segshards verify"
        )
    return SetFile(entry["name"], entry["bytes"], entry["sha256"])


def set_files(folder: Path, manifest: dict[str, Any], manifest_bytes: bytes, dest: str) -> list[SetFile]:
    """The files to upload before the manifest: every shard and wids index the manifest lists, then the card
    rendered for `dest` (its snippets read from there).

    Refuses a set whose files are missing, of the wrong size, or symbolic links (which could point
    anywhere); contents are checked against the manifest's sha256 as they are uploaded.
    """
    files = [listed_file(folder, e) for s in split_names(manifest) for e in manifest["splits"][s]["shards"]]
    for split, entry in index_entries(manifest):
        problem = entry_problem(entry, split, str(folder / MANIFEST))
        if problem:
            raise ShardFormatError(problem)
        files.append(listed_file(folder, entry))
    card = render_card(manifest, manifest_bytes, location=dest).encode("utf-8")
    files.append(SetFile(CARD, len(card), hashlib.sha256(card).hexdigest(), card))
    return files


def claim_destination(store: Store, manifest_bytes: bytes, files: list[SetFile]) -> set[str]:
    """Refuse a destination holding another set, a build in progress or foreign objects; returns its names."""
    store.prepare()
    names = set(store.names())
    if MARKER in names:
        raise OutputError(
            f"{store.url}: a segshards build is writing there; publish elsewhere or let it finish"
        )
    if MANIFEST in names and store.read(MANIFEST) != manifest_bytes:
        raise OutputError(
            f"{store.url}: already holds a different set ({MANIFEST} differs); publish to another prefix or delete it"
        )
    ours = {f.name for f in files} | {MANIFEST, RUN_LOG}  # a build's run log is not foreign
    foreign = sorted(n for n in names - ours if not n.startswith("."))
    if foreign:
        raise OutputError(
            f"{store.url}: holds objects that are not part of this set ({foreign[0]} ...); publish to an empty prefix"
        )
    return names


def in_place(store: Store, file: SetFile) -> bool:
    """True when the store already holds `file` complete: right size, and the right recorded sha256
    (or, for an object written without one, the right bytes)."""
    info = store.head(file.name)
    if info is None or info.size != file.size:
        return False
    if info.sha256 is not None:
        return info.sha256 == file.sha256
    return hashlib.sha256(store.read(file.name)).hexdigest() == file.sha256


def publish_file(store: Store, folder: Path, file: SetFile, present: bool) -> bool:
    """Upload one file unless it is already in place; returns True when it was uploaded."""
    if present and in_place(store, file):
        return False
    if file.data is not None:
        store.write(file.name, file.data)
        return True
    path = folder / file.name
    actual = file_digest(path)
    if actual != file.sha256:
        raise ShardFormatError(f"{path}: sha256 differs from the manifest; run segshards verify {folder}")
    store.upload(file.name, path, actual)
    return True


def publish(config: PublishConfig) -> PublishReport:
    """Upload the set in `config.folder` to `config.dest`; the manifest last."""
    if config.jobs < 1:
        raise ConfigError(f"--jobs {config.jobs}: must be >= 1")
    started = time.perf_counter()
    folder = config.folder
    if (folder / MARKER).is_file():
        raise OutputError(f"{folder}: a build is in progress there; run it to the end before publishing")
    try:
        manifest_bytes = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise ShardFormatError(f"{folder / MANIFEST}: no manifest (not a finished segshards set)") from None
    manifest = parse_manifest(manifest_bytes, str(folder / MANIFEST))
    store = open_store(config.dest)
    if store.is_folder(folder):
        raise ConfigError(f"{config.dest}: is the set's own folder")
    files = set_files(folder, manifest, manifest_bytes, store.url)
    names = claim_destination(store, manifest_bytes, files)
    report = PublishReport()
    with ThreadPoolExecutor(max_workers=config.jobs, thread_name_prefix="publish") as pool:
        futures = {pool.submit(publish_file, store, folder, f, f.name in names): f for f in files}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            pool.shutdown(cancel_futures=True)
            raise failed.exception()  # type: ignore[misc]
    for future, file in futures.items():
        if future.result():
            report.uploaded.append(file.name)
            report.bytes_uploaded += file.size
        else:
            report.skipped.append(file.name)
    if MANIFEST in names and store.read(MANIFEST) == manifest_bytes:
        report.skipped.append(MANIFEST)
    else:
        store.write(MANIFEST, manifest_bytes)  # last: its presence means every object above is complete
        report.uploaded.append(MANIFEST)
        report.bytes_uploaded += len(manifest_bytes)
    report.elapsed_s = time.perf_counter() - started
    return report


def credentials_problem(exc: StorageError, dest: str) -> str | None:
    """The message for a publish that failed on its credentials (missing, or refused by the endpoint),
    naming the destination and the endpoint; None for any other failure (which a rerun resumes)."""
    cause = exc.__cause__
    while cause is not None and classify(cause) != "denied":
        cause = cause.__cause__
    if cause is None:
        return None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's own"
    if type(cause).__name__ in MISSING_CREDENTIALS:
        return (
            f"{dest}: the S3 credentials were missing (none found for endpoint {endpoint}); "
            f"set {CREDENTIAL_SOURCES}, then run the command again"
        )
    return (
        f"{dest}: the S3 credentials were refused by endpoint {endpoint} ({safe_reason(cause)}); "
        f"check {CREDENTIAL_SOURCES} and the bucket's permissions"
    )
