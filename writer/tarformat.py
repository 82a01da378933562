"""The tar layer of the shard format: fixed USTAR headers to write, and a safe member reader."""

import posixpath
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

from writer.errors import ShardFormatError

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar and Python's tarfile pad archives to this size
MTIME = 0  # fixed, integer: no PAX headers, identical bytes on every build
MODE = 0o644
REFUSED_SUFFIXES = (".pkl", ".pickle", ".pyd", ".pth", ".pt", ".npy", ".npz")
MAX_MEMBER_BYTES = 256 << 20
ZERO_BLOCK = bytes(BLOCK)

Sample = dict[str, bytes | str]


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _template() -> bytearray:
    """A USTAR header with every fixed field filled in and name, size and checksum blank."""
    header = bytearray(BLOCK)
    header[100:108] = _octal(MODE, 8)
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[136:148] = _octal(MTIME, 12)
    header[148:156] = b" " * 8  # the checksum is computed with this field as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[329:337] = _octal(0, 8)  # devmajor
    header[337:345] = _octal(0, 8)  # devminor
    return header


_TEMPLATE = bytes(_template())
_TEMPLATE_SUM = sum(_TEMPLATE)


def ustar_header(name: str, size: int) -> bytes:
    """A 512-byte USTAR header for a regular file, with every field fixed but name and size."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ShardFormatError(f"tar member name longer than 100 bytes: {name!r}")
    size_field = _octal(size, 12)
    header = bytearray(_TEMPLATE)
    header[0 : len(raw)] = raw
    header[124:136] = size_field
    # Only name and size differ from the template; both fields were zero bytes there.
    header[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(header)


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A complete tar archive holding `members` (name, payload) in the given order."""
    parts: list[bytes] = []
    total = 0
    for name, payload in members:
        parts.append(ustar_header(name, len(payload)))
        parts.append(payload)
        pad = -len(payload) % BLOCK
        if pad:
            parts.append(b"\0" * pad)
        total += BLOCK + len(payload) + pad
    total += 2 * BLOCK
    parts.append(b"\0" * (2 * BLOCK + (-total % RECORD)))
    return b"".join(parts)


def split_member_name(name: str, where: str) -> tuple[str, str]:
    """Split `dir/KEY.ext.ext` into (`dir/KEY`, `ext.ext`) the way webdataset does, refusing unsafe names."""
    if not name or name.startswith("/") or "\\" in name:
        raise ShardFormatError(f"{where}: unsafe tar member name {name!r}")
    if ".." in name.split("/"):
        raise ShardFormatError(f"{where}: tar member name {name!r} contains '..'")
    if name.lower().endswith(REFUSED_SUFFIXES):
        raise ShardFormatError(f"{where}: refusing pickled/serialised member {name!r}")
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    if not stem or not dot or not ext:
        raise ShardFormatError(f"{where}: tar member {name!r} is not KEY.EXTENSION")
    return posixpath.join(directory, stem), ext


class _Reader:
    """Exact-size reads from a byte stream, transparently gunzipping a stream that starts with gzip's magic."""

    def __init__(self, stream: IO[bytes], where: str) -> None:
        self.stream, self.where, self.buffer = stream, where, b""
        self.inflate: Any = None
        head = self._raw(2)
        if head == b"\x1f\x8b":
            self.inflate = zlib.decompressobj(wbits=31)
            self.buffer = self.inflate.decompress(head)
        else:
            self.buffer = head

    def _raw(self, n: int) -> bytes:
        try:
            return self.stream.read(n) or b""
        except OSError as exc:
            raise ShardFormatError(f"{self.where}: read failed ({exc})") from exc

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the stream."""
        while len(self.buffer) < n:
            chunk = self._raw(max(n - len(self.buffer), 1 << 16))
            if not chunk:
                break
            try:
                self.buffer += self.inflate.decompress(chunk) if self.inflate else chunk
            except zlib.error as exc:
                raise ShardFormatError(f"{self.where}: corrupt gzip stream ({exc})") from exc
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise ShardFormatError(f"{self.where}: truncated tar ({what})")
        return data


def _number(field: bytes, where: str) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 when the top bit is set."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardFormatError(f"{where}: corrupt tar header (bad number {field!r})") from None


def _header(block: bytes, where: str) -> tuple[str, int, bytes]:
    """(name, size, typeflag) of a header block whose checksum is verified."""
    stored = _number(block[148:156], where)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b >= 128)
    if stored not in (unsigned, signed):
        raise ShardFormatError(f"{where}: corrupt tar header (checksum mismatch)")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "replace"), _number(block[124:136], where), block[156:157]


def _pax_records(payload: bytes, where: str) -> dict[str, str]:
    """Key/value records of a PAX extended header ("LEN key=value\n" each)."""
    records, pos = {}, 0
    while pos < len(payload):
        length_text, _, _ = payload[pos : pos + 20].partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            raise ShardFormatError(f"{where}: corrupt PAX header") from None
        key, _, value = payload[pos + len(length_text) + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


def iter_members(stream: IO[bytes], where: str) -> Iterator[tuple[str, bytes]]:
    """Yield (name, payload) of each regular member of a tar stream (plain or gzipped).

    Every header's checksum is verified and the archive must end with its two zero blocks, so damage
    anywhere raises ShardFormatError naming `where` instead of ending the stream early. Links, devices,
    directories, unsafe names and pickles are refused. PAX and GNU long names are understood.
    """
    reader = _Reader(stream, where)
    override: dict[str, str] = {}
    while True:
        block = reader.exact(BLOCK, "header")
        if block == ZERO_BLOCK:
            if reader.exact(BLOCK, "end-of-archive marker") != ZERO_BLOCK:
                raise ShardFormatError(f"{where}: corrupt tar (data after an end-of-archive block)")
            return
        name, size, kind = _header(block, where)
        name, size = override.pop("path", name), int(override.pop("size", size))
        override.clear()
        if size > MAX_MEMBER_BYTES:
            raise ShardFormatError(f"{where}: tar member {name!r} is {size} bytes")
        payload = reader.exact(size, f"member {name!r}")
        reader.exact(-size % BLOCK, f"padding of {name!r}")
        if kind in (b"x", b"g", b"L"):
            if kind == b"x":
                override = _pax_records(payload, where)
            elif kind == b"L":
                override = {"path": payload.split(b"\0", 1)[0].decode("utf-8", "replace")}
            continue
        if kind not in (b"0", b"\0", b"7"):
            raise ShardFormatError(f"{where}: tar member {name!r} is not a regular file (type {kind!r})")
        split_member_name(name, where)
        yield name, payload


def iter_samples(stream: IO[bytes], where: str) -> Iterator[Sample]:
    """Group consecutive members sharing a key into sample dicts {'__key__', ext: payload}."""
    current: Sample = {}
    for name, payload in iter_members(stream, where):
        key, ext = split_member_name(name, where)
        if current and current["__key__"] != key:
            yield current
            current = {}
        if ext in current:
            raise ShardFormatError(f"{where}: duplicate member {name!r}")
        current.setdefault("__key__", key)
        current[ext] = payload
    if current:
        yield current
