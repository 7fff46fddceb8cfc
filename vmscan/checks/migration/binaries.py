"""Pure parsers of guest binaries for the migration check: executable headers (ELF, PE,
MZ), the NTFS volume flags, hiberfil.sys, and the modules inside an initramfs (cpio,
gzip/xz/lzma/zstd, bounded in output size).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# Executable headers


@dataclass(frozen=True)
class ExeKind:
    """What the first bytes of a file say it is."""

    kind: str  # elf | pe | ne | le | dos | com | other
    bits: int  # 16, 32, 64, or 0 when not known/meaningful
    machine: str = ""
    note: str = ""


_ELF_MACHINES = {
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390",
    40: "arm",
    43: "sparcv9",
    50: "ia64",
    62: "x86_64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}

_PE_MACHINES = {
    0x014C: ("i386", 32),
    0x0200: ("ia64", 64),
    0x8664: ("x86_64", 64),
    0x01C0: ("arm", 32),
    0x01C4: ("arm", 32),
    0xAA64: ("aarch64", 64),
    0xA641: ("arm64ec", 64),
}

#: Bytes to read from a candidate so that most PE headers (e_lfanew < 0x200) fit.
HEAD_SIZE = 1024


def pe_header_offset(head: bytes) -> int | None:
    """``e_lfanew`` of an MZ file, or None when *head* is not MZ."""
    if len(head) < 0x40 or head[:2] not in (b"MZ", b"ZM"):
        return None
    return int(struct.unpack_from("<I", head, 0x3C)[0])


def classify_executable(head: bytes, name: str = "") -> ExeKind:
    """ELF class/machine, PE machine (32/64, .NET), NE/LE (16-bit), plain DOS MZ, COM."""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        ei_class, ei_data = head[4], head[5]
        fmt = "<H" if ei_data != 2 else ">H"
        machine = _ELF_MACHINES.get(struct.unpack_from(fmt, head, 18)[0], "other")
        bits = {1: 32, 2: 64}.get(ei_class, 0)
        # x32 ABI (ELF32 + x86_64) is 32-bit pointers on a 64-bit ISA: still ELF32.
        return ExeKind("elf", bits, machine)
    off = pe_header_offset(head)
    if off is not None:
        # A DOS stub with relocations table before 0x40 is a plain DOS program; the
        # e_lfanew field is only meaningful for "new executable" formats.
        if off == 0 or off + 6 > len(head):
            reloc = struct.unpack_from("<H", head, 0x18)[0]
            if off == 0 or reloc < 0x40 or off >= 0x10000000:
                return ExeKind("dos", 16, "i8086")
            return ExeKind("other", 0, note=f"PE header at {off} beyond the bytes read")
        sig = head[off : off + 4]
        if sig == b"PE\x00\x00":
            if off + 26 > len(head):
                return ExeKind("other", 0, note="truncated PE header")
            mach = struct.unpack_from("<H", head, off + 4)[0]
            mname, bits = _PE_MACHINES.get(mach, (f"0x{mach:04x}", 0))
            opt = off + 24
            magic = struct.unpack_from("<H", head, opt)[0] if opt + 2 <= len(head) else 0
            if magic == 0x20B:
                bits = 64
            elif magic == 0x10B and bits == 32:
                # .NET assemblies built AnyCPU are PE32/i386 but run as 64-bit: the COM
                # descriptor directory (index 14) is set. Count them apart.
                dd = opt + 96 + 14 * 8
                if dd + 8 <= len(head) and struct.unpack_from("<II", head, dd)[0]:
                    return ExeKind("pe", 0, mname, note="dotnet")
            return ExeKind("pe", bits, mname)
        if sig[:2] == b"NE":
            return ExeKind("ne", 16, "i286")
        if sig[:2] in (b"LE", b"LX"):
            return ExeKind("le", 32, "i386")
        return ExeKind("dos", 16, "i8086")
    if name.lower().endswith(".com") and head:
        # A .com without an MZ header is a raw DOS COM image (16-bit real mode).
        return ExeKind("com", 16, "i8086")
    return ExeKind("other", 0)


# ---------------------------------------------------------------------------
# NTFS volume flags

NTFS_VOLUME_DIRTY = 0x0001


def _apply_fixups(rec: bytearray, sector: int) -> bool:
    usa_off, usa_count = struct.unpack_from("<HH", rec, 4)
    if usa_off + 2 * usa_count > len(rec) or usa_count < 1:
        return False
    usn = rec[usa_off : usa_off + 2]
    for i in range(1, usa_count):
        end = i * sector
        if end > len(rec):
            break
        if rec[end - 2 : end] != usn:
            return False
        rec[end - 2 : end] = rec[usa_off + 2 * i : usa_off + 2 * i + 2]
    return True


def ntfs_volume_flags(read: Callable[[int, int], bytes]) -> int | None:
    """Flags of $VOLUME_INFORMATION in MFT record 3 ($Volume); None when not parsable.

    *read(offset, size)* reads the raw volume. Bit 0x0001 is "dirty": Windows did not
    unmount the volume cleanly (crash, or still running when the disk was copied).
    """
    boot = read(0, 512)
    if len(boot) < 512 or boot[3:11] != b"NTFS    ":
        return None
    bps = struct.unpack_from("<H", boot, 0x0B)[0]
    spc_raw = boot[0x0D]
    spc = spc_raw if spc_raw <= 0x80 else 1 << (256 - spc_raw)
    if bps not in (256, 512, 1024, 2048, 4096) or spc == 0:
        return None
    cluster = bps * spc
    mft_lcn = struct.unpack_from("<Q", boot, 0x30)[0]
    cpr = struct.unpack_from("<b", boot, 0x40)[0]
    rec_size = cpr * cluster if cpr > 0 else 1 << (-cpr)
    if not 256 <= rec_size <= 65536:
        return None
    rec = bytearray(read(mft_lcn * cluster + 3 * rec_size, rec_size))
    if len(rec) < rec_size or rec[:4] != b"FILE" or not _apply_fixups(rec, bps):
        return None
    pos = struct.unpack_from("<H", rec, 0x14)[0]
    while pos + 16 <= len(rec):
        atype, alen = struct.unpack_from("<II", rec, pos)
        if atype == 0xFFFFFFFF or alen < 16 or pos + alen > len(rec):
            break
        if atype == 0x70 and rec[pos + 8] == 0:  # resident $VOLUME_INFORMATION
            clen, coff = struct.unpack_from("<IH", rec, pos + 16)
            start = pos + coff
            if clen >= 12 and start + 12 <= len(rec):
                return int(struct.unpack_from("<H", rec, start + 10)[0])
            return None
        pos += alen
    return None


def hiberfil_state(head: bytes) -> str:
    """``hibernated`` when hiberfil.sys holds an image (``hibr``/``HIBR``), else ``clean``.

    Windows zeroes the signature (or writes ``wake``) after a resume; fast startup also
    writes ``HIBR``, which locks the volume just like a full hibernation.
    """
    sig = head[:4].lower()
    if sig == b"hibr":
        return "hibernated"
    if sig in (b"wake", b"\x00\x00\x00\x00", b""):
        return "clean"
    return "unknown"


# ---------------------------------------------------------------------------
# initramfs (concatenated cpio archives, the last one usually compressed)

#: Stop decompressing past this many bytes (guards against decompression bombs).
INITRAMFS_MAX_OUT = 1024 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass
class InitramfsScan:
    """Kernel modules (base names) found inside an initramfs, and how it was read."""

    modules: set[str] = field(default_factory=set)
    compressions: list[str] = field(default_factory=list)
    complete: bool = True
    note: str = ""


def _zlib_chunks(data: memoryview) -> Iterator[bytes]:
    import zlib

    d = zlib.decompressobj(31)
    buf: bytes | memoryview = data
    while not d.eof:
        out = d.decompress(buf, _CHUNK)
        buf = d.unconsumed_tail
        if out:
            yield out
        elif not buf:
            break
    rest = d.flush()
    if rest:
        yield rest


def _lzma_like_chunks(data: memoryview, kind: str) -> Iterator[bytes]:
    import bz2
    import lzma

    d: lzma.LZMADecompressor | bz2.BZ2Decompressor = (
        bz2.BZ2Decompressor() if kind == "bzip2" else lzma.LZMADecompressor()
    )
    first = True
    while not d.eof:
        out = d.decompress(bytes(data) if first else b"", max_length=_CHUNK)
        first = False
        if out:
            yield out
        if d.needs_input:
            break


def _zstd_chunks(data: memoryview) -> Iterator[bytes]:
    import io

    import zstandard  # optional: not a dependency; absent -> initramfs not verified

    yield from zstandard.ZstdDecompressor().read_to_iter(io.BytesIO(bytes(data)))


_COMPRESSORS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
)


class _ByteStream:
    """Reads from an iterator of chunks, with cheap skipping of file contents."""

    def __init__(self, chunks: Iterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self.total = 0
        self._limit = limit

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return False
            self.total += len(chunk)
            if self.total > self._limit:
                raise OverflowError("decompressed size over the limit")
            self._buf += chunk
        return True

    def read(self, n: int) -> bytes | None:
        if not self._fill(n):
            return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def skip(self, n: int) -> bool:
        while n > 0:
            if not self._buf and not self._fill(1):
                return False
            k = min(n, len(self._buf))
            del self._buf[:k]
            n -= k
        return True

    def skip_zeros(self) -> bool:
        """Skip NUL padding between archives; False at the end of the stream."""
        while True:
            if not self._buf and not self._fill(1):
                return False
            i = 0
            while i < len(self._buf) and self._buf[i] == 0:
                i += 1
            del self._buf[:i]
            if self._buf:
                return True

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buf[:n])

    def rest(self) -> Iterator[bytes]:
        """The unread bytes as chunks (for a compressed archive after a plain one)."""
        if self._buf:
            yield bytes(self._buf)
            self._buf.clear()
        yield from self._chunks


def _module_name(path: str) -> str | None:
    base = path.rsplit("/", 1)[-1]
    m = re.match(r"^(.+)\.ko(?:\.(?:xz|gz|zst|bz2))?$", base)
    return m.group(1).replace("-", "_") if m else None


def _scan_cpio(stream: _ByteStream, scan: InitramfsScan, depth: int) -> None:
    while stream.skip_zeros():
        magic = stream.peek(6)
        if magic in (b"070701", b"070702"):
            hdr = stream.read(110)
            if hdr is None:
                scan.complete = False
                return
            try:
                fsize = int(hdr[54:62], 16)
                nsize = int(hdr[94:102], 16)
            except ValueError:
                scan.complete, scan.note = False, "bad cpio header"
                return
            name_b = stream.read(nsize)
            if name_b is None or not stream.skip((-(110 + nsize)) % 4):
                scan.complete = False
                return
            name = name_b.rstrip(b"\x00").decode("utf-8", errors="replace")
            if name == "TRAILER!!!":
                continue
            mod = _module_name(name)
            if mod:
                scan.modules.add(mod)
            if not stream.skip(fsize + (-fsize) % 4):
                scan.complete = False
                return
            continue
        kind = next((k for sig, k in _COMPRESSORS if magic.startswith(sig)), None)
        if kind is None or depth > 2:
            scan.complete = False
            scan.note = scan.note or "unknown data after the cpio archives"
            return
        scan.compressions.append(kind)
        data = memoryview(b"".join(stream.rest()))
        chunks: Iterator[bytes]
        if kind == "gzip":
            chunks = _zlib_chunks(data)
        elif kind in ("xz", "lzma", "bzip2"):
            chunks = _lzma_like_chunks(data, kind)
        elif kind == "zstd":
            try:
                import zstandard  # noqa: F401
            except ImportError:
                scan.complete = False
                scan.note = "zstd-compressed part not read (python zstandard not installed)"
                return
            chunks = _zstd_chunks(data)
        else:
            scan.complete = False
            scan.note = f"{kind}-compressed part not read (no decompressor)"
            return
        _scan_cpio(_ByteStream(chunks, INITRAMFS_MAX_OUT), scan, depth + 1)
        return


def scan_initramfs(data: bytes) -> InitramfsScan:
    """Module names in an initramfs: early (plain) cpio parts, then a compressed one."""
    scan = InitramfsScan()
    try:
        _scan_cpio(_ByteStream(iter([data]), INITRAMFS_MAX_OUT), scan, 0)
    except (OverflowError, EOFError, OSError, ValueError) as e:
        # zlib.error is an Exception subclass too; caught below.
        scan.complete, scan.note = False, f"initramfs not fully read: {e}"
    except Exception as e:  # zlib.error, lzma.LZMAError, zstd errors: hostile data
        scan.complete, scan.note = False, f"initramfs not fully read: {type(e).__name__}: {e}"
    return scan
