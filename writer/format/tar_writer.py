"""The tar layer of the shard format: fixed USTAR headers to write, and the member-name rules that the
reader (`segshards.writer.format.tar_reader`) applies too."""

import io
import posixpath
from collections.abc import Iterable
from typing import BinaryIO

from segshards.writer.errors import ShardFormatError

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar and Python's tarfile pad archives to this size
MTIME = 0  # fixed, integer: no PAX headers, identical bytes on every build
MODE = 0o644
REFUSED_SUFFIXES = (".pkl", ".pickle", ".pyd", ".pth", ".pt", ".npy", ".npz")
ZEROS = bytes(BLOCK)

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


class TarWriter:
    """Writes a tar archive member by member to a binary file: fixed headers, padding, then `close()`."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.total = out, 0

    def add(self, name: str, payload: bytes) -> None:
        pad = -len(payload) % BLOCK
        self.out.write(ustar_header(name, len(payload)))
        self.out.write(payload)
        if pad:
            self.out.write(ZEROS[:pad])
        self.total += BLOCK + len(payload) + pad

    def close(self) -> None:
        """The two end blocks, then zeros up to a whole record (as GNU tar and Python's tarfile write)."""
        end = 2 * BLOCK + (-(self.total + 2 * BLOCK) % RECORD)
        self.out.write(bytes(end))
        self.total += end


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A complete tar archive holding `members` (name, payload) in the given order."""
    buffer = io.BytesIO()
    tar = TarWriter(buffer)
    for name, payload in members:
        tar.add(name, payload)
    tar.close()
    return buffer.getvalue()


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
