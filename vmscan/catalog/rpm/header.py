"""Parser of rpm header blobs (index entries + data store), bounds-checked for hostile bytes.

Layout (all integers big-endian), as rpm's ``headerImport`` reads it::

    int32 il; int32 dl;                  # index entry count, data store length
    il x {int32 tag; uint32 type; int32 offset; uint32 count}
    dl bytes of data store
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Tags (rpmtag.h).
TAG_NAME = 1000
TAG_VERSION = 1001
TAG_RELEASE = 1002
TAG_EPOCH = 1003
TAG_SUMMARY = 1004
TAG_SIZE = 1009
TAG_VENDOR = 1011
TAG_LICENSE = 1014
TAG_URL = 1020
TAG_ARCH = 1022
TAG_SOURCERPM = 1044
TAG_INSTALLTIME = 1008
TAG_MODULARITYLABEL = 5096

# Types.
T_NULL, T_CHAR, T_INT8, T_INT16, T_INT32, T_INT64 = 0, 1, 2, 3, 4, 5
T_STRING, T_BIN, T_STRING_ARRAY, T_I18NSTRING = 6, 7, 8, 9

#: rpm's own limits (header_internal.h): more than this is a corrupt header.
HEADER_TAGS_MAX = 0xFFFF
HEADER_DATA_MAX = 0x0FFFFFFF

_WANTED = {
    TAG_NAME,
    TAG_VERSION,
    TAG_RELEASE,
    TAG_EPOCH,
    TAG_SUMMARY,
    TAG_SIZE,
    TAG_VENDOR,
    TAG_LICENSE,
    TAG_URL,
    TAG_ARCH,
    TAG_SOURCERPM,
    TAG_INSTALLTIME,
    TAG_MODULARITYLABEL,
}
_INT_SIZES = {T_CHAR: 1, T_INT8: 1, T_INT16: 2, T_INT32: 4, T_INT64: 8}


class HeaderError(ValueError):
    """A header blob is truncated or inconsistent."""


@dataclass(frozen=True)
class RpmHeader:
    """The tags vmscan needs from one installed package header."""

    name: str
    version: str
    release: str
    epoch: int | None
    arch: str
    sourcerpm: str = ""
    license: str = ""
    vendor: str = ""
    summary: str = ""
    url: str = ""
    size: int | None = None
    installtime: int | None = None
    modularitylabel: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def evr(self) -> str:
        """``[epoch:]version-release`` as rpm compares it."""
        vr = f"{self.version}-{self.release}" if self.release else self.version
        return f"{self.epoch}:{vr}" if self.epoch is not None else vr


def _cstr(store: bytes, off: int) -> tuple[str, int]:
    end = store.find(b"\0", off)
    if end < 0:
        raise HeaderError(f"unterminated string at data offset {off}")
    return store[off:end].decode("utf-8", errors="replace"), end + 1


def parse_header(blob: bytes) -> dict[int, str | int | list[str] | list[int] | bytes]:
    """Decode the wanted tags of one header blob; raise HeaderError when it is corrupt."""
    if len(blob) < 8:
        raise HeaderError(f"header blob of {len(blob)} bytes is too short")
    il, dl = struct.unpack_from(">ii", blob, 0)
    if il < 1 or il > HEADER_TAGS_MAX:
        raise HeaderError(f"bad index entry count {il}")
    if dl < 0 or dl > HEADER_DATA_MAX:
        raise HeaderError(f"bad data length {dl}")
    index_end = 8 + il * 16
    if index_end + dl > len(blob):
        raise HeaderError(
            f"header needs {index_end + dl} bytes but the blob has {len(blob)} (truncated)"
        )
    store = blob[index_end : index_end + dl]
    out: dict[int, str | int | list[str] | list[int] | bytes] = {}
    for k in range(il):
        tag, typ, off, count = struct.unpack_from(">iIiI", blob, 8 + k * 16)
        if tag not in _WANTED:
            continue
        if off < 0 or off >= dl:
            raise HeaderError(f"tag {tag}: offset {off} outside the data store ({dl})")
        if count == 0 or count > dl:
            raise HeaderError(f"tag {tag}: bad count {count}")
        if typ in (T_STRING, T_I18NSTRING, T_STRING_ARRAY):
            strings: list[str] = []
            pos = off
            n = 1 if typ == T_STRING else count
            for _ in range(n):
                s, pos = _cstr(store, pos)
                strings.append(s)
            # I18N tables hold the C locale first, which is what rpm -q shows.
            out[tag] = strings if typ == T_STRING_ARRAY else strings[0]
        elif typ in _INT_SIZES:
            size = _INT_SIZES[typ]
            if off + size * count > dl:
                raise HeaderError(f"tag {tag}: integer array runs past the data store")
            fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
            vals = list(struct.unpack_from(f">{count}{fmt}", store, off))
            out[tag] = vals[0] if count == 1 else vals
        elif typ == T_BIN:
            if off + count > dl:
                raise HeaderError(f"tag {tag}: binary runs past the data store")
            out[tag] = store[off : off + count]
        else:
            raise HeaderError(f"tag {tag}: unknown type {typ}")
    return out


def _s(tags: dict[int, str | int | list[str] | list[int] | bytes], tag: int) -> str:
    v = tags.get(tag)
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and isinstance(v[0], str):
        return v[0]
    return ""


def _i(tags: dict[int, str | int | list[str] | list[int] | bytes], tag: int) -> int | None:
    v = tags.get(tag)
    if isinstance(v, int):
        return v
    if isinstance(v, list) and v and isinstance(v[0], int):
        return v[0]
    return None


def read_header(blob: bytes) -> RpmHeader:
    """An :class:`RpmHeader` from one blob; HeaderError if corrupt or nameless."""
    tags = parse_header(blob)
    name = _s(tags, TAG_NAME)
    version = _s(tags, TAG_VERSION)
    if not name or not version:
        raise HeaderError("header has no NAME or VERSION")
    return RpmHeader(
        name=name,
        version=version,
        release=_s(tags, TAG_RELEASE),
        epoch=_i(tags, TAG_EPOCH),
        arch=_s(tags, TAG_ARCH),
        sourcerpm=_s(tags, TAG_SOURCERPM),
        license=_s(tags, TAG_LICENSE),
        vendor=_s(tags, TAG_VENDOR),
        summary=_s(tags, TAG_SUMMARY),
        url=_s(tags, TAG_URL),
        size=_i(tags, TAG_SIZE),
        installtime=_i(tags, TAG_INSTALLTIME),
        modularitylabel=_s(tags, TAG_MODULARITYLABEL),
    )


def source_name_version(sourcerpm: str) -> tuple[str, str]:
    """``bash-5.1.16-2.fc36.src.rpm`` -> (``bash``, ``5.1.16-2.fc36``); empty if unparsable."""
    s = sourcerpm
    for suffix in (".src.rpm", ".nosrc.rpm"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
            break
    else:
        return "", ""
    name_ver, _, release = s.rpartition("-")
    name, _, version = name_ver.rpartition("-")
    if not name or not version or not release:
        return "", ""
    return name, f"{version}-{release}"
