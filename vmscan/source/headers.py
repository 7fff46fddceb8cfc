"""Image headers read in Python with bounded reads: the format and every file a layer names.

This follows the approach of OpenStack's ``oslo.utils`` ``format_inspector`` (written
after CVE-2024-32498): recognise the format from its own bytes and read only fixed,
bounded regions. Unlike it, vmscan must follow backing chains, so each parser also
returns the names qemu would open (backing file and its recorded format, qcow2 external
data file, VMDK extents and parent) exactly as qemu reads them (``block/qcow2.c``,
``block/vmdk.c``, ``block/vpc.c``, ``block/vhdx.c`` in qemu 7.2); :mod:`vmscan.source.chain`
decides whether they are safe. A header vmscan cannot parse is an error, never a guess.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass, field

from vmscan.errors import ImageError, UnsafeImageError

#: Formats vmscan opens (qemu names).
SUPPORTED = ("qcow2", "vmdk", "vpc", "vhdx", "raw")
#: Formats recognised so that they are refused by name instead of being opened as raw.
UNSUPPORTED = {
    "qcow": "QCOW version 1",
    "qed": "QED",
    "vdi": "VirtualBox VDI",
    "cloop": "cloop",
    "dmg": "Apple DMG",
    "parallels": "Parallels",
    "luks": "LUKS-encrypted",
    "bochs": "Bochs",
}
#: What is read to recognise a format: the start and the last 512 bytes.
HEAD = 64 * 1024
#: qemu reads at most this much of a VMDK descriptor (vmdk_read_desc: 1 MiB - 1).
VMDK_DESC_MAX = (1 << 20) - 1
#: vmdk_parent_open reads DESC_SIZE (20 sectors) for the parent hint.
_VMDK_PARENT_WINDOW = 20 * 512
#: qemu's limit on a qcow2 backing file name (qcow2_do_open).
QCOW2_NAME_MAX = 1023
_QCOW2_MAX_CLUSTER_BITS = 21
_QCOW2_KNOWN_INCOMPAT = 0x1F  # dirty, corrupt, external data file, compression, extended L2
_QCOW2_INCOMPAT_DATA_FILE = 0x4
_EXT_END, _EXT_BACKING_FORMAT, _EXT_DATA_FILE = 0, 0xE2792ACA, 0x44415441
_VMDK_EXTENT_ACCESS = (b"RW", b"RDONLY", b"NOACCESS")
_VMDK_FILE_EXTENTS = ("FLAT", "VMFS", "SPARSE", "VMFSSPARSE", "SESPARSE")
SPARSE_EXTENTS = ("SPARSE", "VMFSSPARSE", "SESPARSE")
# qemu parses an extent line with
#   sscanf(p, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64, ...)
_VMDK_EXTENT = re.compile(
    rb'^[ \t]*(\S{1,10})[ \t]+([+-]?\d+)[ \t]+(\S{1,10})[ \t]+"([^\n\r"]{1,511})"'
)
_VHD_DIFFERENCING = 4
_VHDX_METADATA_REGION = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
_VHDX_FILE_PARAMETERS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
_VHDX_PARENT_LOCATOR = "A8D35F2B-B30B-454D-ABF7-D3D84834AB0C"
_VHDX_HAS_PARENT = 0x2


@dataclass(frozen=True)
class Ref:
    """One host file a layer names: its role, the name as stored, and details qemu uses."""

    kind: str  # "backing file" | "external data file" | "VMDK extent" | "VMDK parent" | ...
    name: str
    #: Backing format recorded in the layer (None: qemu would probe it).
    recorded_format: str | None = None
    #: VMDK extent type (FLAT, SPARSE, ...); "" for other references.
    extent_type: str = ""


@dataclass(frozen=True)
class Layer:
    """What the header of one file says."""

    format: str
    virtual_size: int | None
    backing: Ref | None = None
    #: Files opened as part of this layer itself (extents, data file).
    parts: tuple[Ref, ...] = ()
    #: Why qemu cannot be trusted with this layer, when it cannot (refused by the caller).
    refusal: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def open_no_block(path: str) -> int:
    """Open read-only without ever blocking (a FIFO opened O_NONBLOCK returns at once).

    Raises ImageError unless the opened object is a regular file or a block device: the
    check is made on the descriptor, so a file swapped after a ``stat`` is still caught.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError as e:
        raise ImageError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not a disk image") from e
    except OSError as e:
        raise ImageError(f"{path}: cannot open: {e.strerror}") from e
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise ImageError(f"{path}: {describe_mode(mode)}, not a disk image: refused")
    return fd


def describe_mode(mode: int) -> str:
    """'is a FIFO (named pipe)' and so on, for messages."""
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    if stat.S_ISCHR(mode):
        return "is a character device"
    if stat.S_ISBLK(mode):
        return "is a block device"
    if stat.S_ISREG(mode):
        return "is a regular file"
    return "is not a regular file"


class _Reader:
    """Bounded positional reads of one open file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_no_block(path)
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(self.fd)
            raise ImageError(f"{path}: cannot read: {e.strerror}") from e

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.size or length <= 0:
            return b""
        try:
            return os.pread(self.fd, min(length, self.size - offset), offset)
        except OSError as e:
            raise ImageError(f"{self.path}: cannot read: {e.strerror}") from e

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect(head: bytes, tail: bytes) -> str:
    """The format named by the bytes (qemu's name); "raw" when no known header matches."""
    if head.startswith(b"QFI\xfb") and len(head) >= 8:
        return "qcow" if struct.unpack(">I", head[4:8])[0] == 1 else "qcow2"
    if head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith((b"KDMV", b"COWD")):
        return "vmdk"
    if head.startswith(b"# Disk DescriptorFile") or b"createType=" in head[:1024]:
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix") or tail.startswith(b"conectix"):
        return "vpc"
    if head.startswith(b"LUKS\xba\xbe"):
        return "luks"
    if len(head) >= 0x44 and struct.unpack("<I", head[0x40:0x44])[0] == 0xBEDA107F:
        return "vdi"
    if head.startswith(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop"):
        return "cloop"
    if head.startswith((b"WithoutFreeSpace", b"WithouFreSpacExt")):
        return "parallels"
    if head.startswith(b"Bochs Virtual HD Image"):
        return "bochs"
    if tail.startswith(b"koly"):
        return "dmg"
    return "raw"


def sniff(path: str) -> str:
    """The format of the file at *path* from its magic bytes (never blocks on a FIFO)."""
    with _Reader(path) as r:
        head = r.read(0, 1024)
        tail = r.read(r.size - 512, 512) if r.size >= 512 else b""
    return detect(head, tail)


def _cstring(raw: bytes, what: str, path: str) -> str:
    """A name stored in a header: qemu stops at NUL; vmscan refuses NUL and control bytes."""
    if b"\0" in raw:
        raise UnsafeImageError(f"{path}: refused: its {what} name contains a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnsafeImageError(f"{path}: refused: its {what} name is not valid UTF-8") from e
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UnsafeImageError(f"{path}: refused: its {what} name {text!r} holds control bytes")
    return text


def parse_layer(path: str, fmt: str) -> Layer:
    """Read the header of *path* as *fmt* (what qemu will be told) and list what it names."""
    with _Reader(path) as r:
        if fmt == "qcow2":
            return _qcow2(r)
        if fmt == "vmdk":
            return _vmdk(r)
        if fmt == "vpc":
            return _vhd(r)
        if fmt == "vhdx":
            return _vhdx(r)
        if fmt == "raw":
            # qemu rounds a raw file's size up to whole sectors: its own figure is used.
            return Layer("raw", None)
    raise ImageError(f"{path}: format {fmt!r} is not one vmscan opens")


# ---- qcow2 ---------------------------------------------------------------------------------


def _qcow2(r: _Reader) -> Layer:
    h = r.read(0, 112)
    if len(h) < 72 or not h.startswith(b"QFI\xfb"):
        raise ImageError(f"{r.path}: not a valid qcow2 image: header missing or cut short")
    version, boff, blen, cbits, size, crypt = struct.unpack(">IQIIQI", h[4:36])
    if version not in (2, 3):
        raise ImageError(f"{r.path}: qcow2 version {version} is not supported")
    if not 9 <= cbits <= _QCOW2_MAX_CLUSTER_BITS:
        raise ImageError(f"{r.path}: not a valid qcow2 image: cluster bits {cbits}")
    cluster = 1 << cbits
    incompat, hlen = 0, 72
    if version == 3:
        if len(h) < 104:
            raise ImageError(f"{r.path}: not a valid qcow2 image: v3 header cut short")
        incompat = struct.unpack(">Q", h[72:80])[0]
        hlen = struct.unpack(">I", h[100:104])[0]
        if hlen < 104 or hlen > cluster:
            raise ImageError(f"{r.path}: not a valid qcow2 image: header length {hlen}")
    if crypt:
        return Layer("qcow2", size, refusal="it is an encrypted qcow2 image (no key is given)")
    unknown = incompat & ~_QCOW2_KNOWN_INCOMPAT
    if unknown:
        return Layer(
            "qcow2", size, refusal=f"it sets unknown incompatible qcow2 features ({unknown:#x})"
        )
    if boff and (boff > cluster or blen > QCOW2_NAME_MAX or boff + blen > cluster):
        raise ImageError(f"{r.path}: not a valid qcow2 image: bad backing file name location")
    # Header extensions lie between the header and the backing name (or the cluster end).
    ext_end = boff if boff else cluster
    region = r.read(0, ext_end)
    backing_fmt: str | None = None
    data_file: str | None = None
    off = hlen
    while off + 8 <= ext_end:
        etype, elen = struct.unpack(">II", region[off : off + 8])
        off += 8
        if etype == _EXT_END:
            break
        if elen > ext_end - off:
            raise ImageError(f"{r.path}: not a valid qcow2 image: header extension too long")
        data = region[off : off + elen]
        if etype == _EXT_BACKING_FORMAT:
            # qemu keeps what precedes a NUL; so does vmscan, then checks it is a known name.
            backing_fmt = _cstring(data.split(b"\0", 1)[0], "backing format", r.path)
        elif etype == _EXT_DATA_FILE:
            data_file = _cstring(data.split(b"\0", 1)[0], "external data file", r.path)
        off += (elen + 7) & ~7
    parts: list[Ref] = []
    if incompat & _QCOW2_INCOMPAT_DATA_FILE and not data_file:
        return Layer("qcow2", size, refusal="it needs an external data file but does not name one")
    if data_file:
        parts.append(Ref("external data file", data_file))
    backing = None
    if boff and blen:
        name = _cstring(r.read(boff, blen), "backing file", r.path)
        backing = Ref("backing file", name, recorded_format=backing_fmt)
    return Layer("qcow2", size, backing=backing, parts=tuple(parts))


# ---- VMDK ----------------------------------------------------------------------------------


def _vmdk(r: _Reader) -> Layer:
    head = r.read(0, VMDK_DESC_MAX)
    if len(head) < 4:
        raise ImageError(f"{r.path}: not a valid vmdk image: file too small")
    parent_region = b""
    parts: list[Ref] = []
    size: int | None = None
    if head.startswith(b"KDMV"):
        if len(head) < 44:
            raise ImageError(f"{r.path}: not a valid vmdk image: sparse header cut short")
        capacity, _grain, desc_sec = struct.unpack("<QQQ", head[12:36])
        size = capacity * 512
        # vmdk_parent_open reads the descriptor from offset 0x200 of a sparse file.
        parent_region = r.read(0x200, _VMDK_PARENT_WINDOW)
        if capacity == 0 and desc_sec:
            # A sparse header with no capacity hands over to an embedded descriptor file
            # (vmdk_open_vmdk4), which may list extents like a text descriptor.
            desc = r.read(desc_sec * 512, VMDK_DESC_MAX)
            parts.extend(_vmdk_extents(desc, r.path))
            size = None
    elif head.startswith(b"COWD"):
        parent_region = r.read(0x200, _VMDK_PARENT_WINDOW)
    else:
        parent_region = head
        parts.extend(_vmdk_extents(head, r.path))
        if not parts:
            raise ImageError(f"{r.path}: not a valid vmdk image: its descriptor lists no extent")
    backing = None
    parent = _vmdk_parent(parent_region, r.path)
    if parent:
        # qemu records "vmdk" as the parent's format (vmdk_parent_open).
        backing = Ref("VMDK parent", parent, recorded_format="vmdk")
    return Layer("vmdk", size, backing=backing, parts=tuple(parts))


def _vmdk_extents(desc: bytes, path: str) -> list[Ref]:
    """Extent lines as qemu's vmdk_parse_extents reads them; any doubtful one is refused."""
    refs: list[Ref] = []
    for raw in desc.split(b"\0", 1)[0].split(b"\n"):
        first = raw.split(None, 1)[0] if raw.strip() else b""
        if first not in _VMDK_EXTENT_ACCESS:
            continue
        m = _VMDK_EXTENT.match(raw)
        if m is None:
            # qemu treats some such lines as errors and skips others; both are refused here.
            if b'"' in raw or len(raw.split()) > 3:
                shown = raw[:120].decode("utf-8", "replace")
                raise UnsafeImageError(f"{path}: refused: unreadable VMDK extent line {shown!r}")
            continue
        etype = m.group(3).decode("ascii", "replace")
        name = _cstring(m.group(4), "VMDK extent", path)
        if etype == "ZERO":
            continue
        if etype not in _VMDK_FILE_EXTENTS:
            raise UnsafeImageError(f"{path}: refused: VMDK extent type {etype!r} is not supported")
        refs.append(Ref("VMDK extent", name, extent_type=etype))
    return refs


def _vmdk_parent(region: bytes, path: str) -> str | None:
    """The parentFileNameHint exactly as qemu's vmdk_parent_open reads it.

    qemu looks for the first occurrence in the first 10 KiB of the descriptor (a C string:
    up to the first NUL), skips 20 bytes (``parentFileNameHint="``) and reads to the next
    quote. Reading more than qemu would refuse images for bytes qemu never looks at.
    """
    text = region[:_VMDK_PARENT_WINDOW].split(b"\0", 1)[0]
    pos = text.find(b"parentFileNameHint")
    if pos < 0:
        return None
    start = pos + len(b"parentFileNameHint") + 2
    end = text.find(b'"', start)
    if end < 0:
        raise UnsafeImageError(f"{path}: refused: unterminated VMDK parentFileNameHint")
    return _cstring(text[start:end], "VMDK parent", path) or None


def read_sparse_extent(path: str) -> list[Ref]:
    """Files a SPARSE/VMFSSPARSE extent itself names (a sparse header with no capacity)."""
    with _Reader(path) as r:
        head = r.read(0, 512)
        if head.startswith(b"KDMV") and len(head) >= 44:
            capacity, _grain, desc_sec = struct.unpack("<QQQ", head[12:36])
            if capacity == 0 and desc_sec:
                return _vmdk_extents(r.read(desc_sec * 512, VMDK_DESC_MAX), path)
            return []
        if head.startswith(b"COWD") or head[:8] == struct.pack("<Q", 0xCAFEBABE):
            return []
    raise ImageError(f"{path}: not a VMDK sparse extent (no KDMV, COWD or seSparse header)")


# ---- VHD and VHDX --------------------------------------------------------------------------


def _vhd(r: _Reader) -> Layer:
    footer = r.read(0, 512)
    if not footer.startswith(b"conectix"):
        footer = r.read(r.size - 512, 512) if r.size >= 512 else b""
    if not footer.startswith(b"conectix") or len(footer) < 64:
        raise ImageError(f"{r.path}: not a valid vpc image: no VHD footer")
    (data_offset,) = struct.unpack(">Q", footer[16:24])
    (size,) = struct.unpack(">Q", footer[48:56])
    (disk_type,) = struct.unpack(">I", footer[60:64])
    # qemu sizes VHDs made by other tools from their CHS geometry: leave the size to it.
    del size
    if disk_type != _VHD_DIFFERENCING:
        return Layer("vpc", None)
    dyn = r.read(data_offset, 1024)
    names: list[str] = []
    if dyn.startswith(b"cxsparse") and len(dyn) == 1024:
        unicode_name = dyn[64:576].decode("utf-16-be", "replace").split("\0", 1)[0]
        if unicode_name:
            names.append(unicode_name)
        for i in range(8):
            code, _space, length, _res, off = struct.unpack(
                ">4sIIIQ", dyn[576 + 24 * i : 600 + 24 * i]
            )
            if code == b"\0\0\0\0" or not length:
                continue
            data = r.read(off, min(length, 4096))
            enc = "utf-16-le" if code in (b"W2ku", b"W2ru") else "utf-8"
            text = data.decode(enc, "replace").split("\0", 1)[0]
            if text and text not in names:
                names.append(text)
    return Layer(
        "vpc",
        None,
        parts=tuple(Ref("VHD parent", n) for n in names[:8]),
        refusal="it is a VHD differencing disk (vmscan does not open VHD parents)",
    )


def _guid(raw: bytes) -> str:
    a, b, c = struct.unpack("<IHH", raw[:8])
    rest = raw[8:16].hex().upper()
    return f"{a:08X}-{b:04X}-{c:04X}-{rest[:4]}-{rest[4:]}"


def _vhdx(r: _Reader) -> Layer:
    if not r.read(0, 8).startswith(b"vhdxfile"):
        raise ImageError(f"{r.path}: not a valid vhdx image: no file identifier")
    table = r.read(192 * 1024, 64 * 1024)
    if len(table) < 16 or table[:4] != b"regi":
        raise ImageError(f"{r.path}: not a valid vhdx image: no region table")
    count = min(struct.unpack("<I", table[8:12])[0], 2047)
    meta_off = 0
    for i in range(count):
        entry = table[16 + 32 * i : 48 + 32 * i]
        if len(entry) == 32 and _guid(entry[:16]) == _VHDX_METADATA_REGION:
            meta_off = struct.unpack("<Q", entry[16:24])[0]
            break
    meta = r.read(meta_off, 32 * 2048) if meta_off else b""
    if not meta.startswith(b"metadata"):
        raise ImageError(f"{r.path}: not a valid vhdx image: no metadata region")
    items: dict[str, tuple[int, int]] = {}
    for i in range(min(struct.unpack("<H", meta[10:12])[0], 2047)):
        entry = meta[32 + 32 * i : 64 + 32 * i]
        if len(entry) == 32:
            off, length = struct.unpack("<II", entry[16:24])
            items[_guid(entry[:16])] = (off, length)
    params = items.get(_VHDX_FILE_PARAMETERS)
    flags = 0
    if params:
        raw = r.read(meta_off + params[0], 8)
        if len(raw) == 8:
            flags = struct.unpack("<I", raw[4:8])[0]
    if not flags & _VHDX_HAS_PARENT:
        return Layer("vhdx", None)
    names: list[str] = []
    loc = items.get(_VHDX_PARENT_LOCATOR)
    if loc:
        base = meta_off + loc[0]
        data = r.read(base, min(loc[1], 64 * 1024))
        if len(data) >= 20:
            n = struct.unpack("<H", data[18:20])[0]
            for i in range(min(n, 64)):
                e = data[20 + 12 * i : 32 + 12 * i]
                if len(e) < 12:
                    break
                koff, voff, klen, vlen = struct.unpack("<IIHH", e)
                key = data[koff : koff + klen].decode("utf-16-le", "replace")
                if key.endswith("path"):
                    names.append(data[voff : voff + vlen].decode("utf-16-le", "replace"))
    return Layer(
        "vhdx",
        None,
        parts=tuple(Ref("VHDX parent", n) for n in names[:8]),
        refusal=(
            "it is a VHDX differencing disk (a Hyper-V checkpoint, .avhdx), which qemu cannot "
            "read together with its parent: merge it into its parent (Hyper-V Manager: Edit "
            "Disk > Merge; PowerShell: Merge-VHD) or export the VM (Export-VM), then scan "
            "the merged .vhdx"
        ),
    )
