"""Host-side guard for archives clamd scanned only in part while still answering "OK".

ClamAV's unzip trims a member larger than MaxFileSize to that size and scans the rest
silently: AlertExceedsMax does not fire (measured with ClamAV 1.4.6: an 8 MiB member under
MaxFileSize 2M gives "stream: OK"). vmscan must never call such a file clean, so when clamd
says OK for a zip or gzip, its directory is read here and a member over the limits turns
the verdict into ``not_scanned: too_large``. Nested zips are opened within the same
decompression budget (MaxScanSize) and MaxRecursion.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
import zlib
from typing import IO

from vmscan.av.clamd_manager import ClamdLimits

log = logging.getLogger(__name__)


def _gzip_isize(fh: IO[bytes]) -> int | None:
    """Uncompressed size from a gzip trailer (modulo 2**32, as the format stores it)."""
    try:
        fh.seek(-4, 2)
        tail = fh.read(4)
    except OSError:
        return None
    return struct.unpack("<I", tail)[0] if len(tail) == 4 else None


class _Budget:
    def __init__(self, limits: ClamdLimits) -> None:
        self.limits = limits
        self.scanned = 0
        self.files = 0


def _zip_exceeds(fh: IO[bytes], b: _Budget, depth: int) -> str | None:
    lim = b.limits
    if depth > lim.max_recursion:
        return "MaxRecursion"
    try:
        with zipfile.ZipFile(fh) as z:
            infos = z.infolist()
            for info in infos:
                if info.is_dir():
                    continue
                b.files += 1
                if b.files > lim.max_files:
                    return "MaxFiles"
                if info.file_size > lim.max_file_size:
                    return "MaxFileSize"
                b.scanned += info.file_size
                if b.scanned > lim.max_scan_size:
                    return "MaxScanSize"
            for info in infos:
                if info.is_dir() or info.file_size < 4:
                    continue
                try:
                    with z.open(info) as member:
                        head = member.read(4)
                        if head != b"PK\x03\x04":
                            continue
                        # Bounded by MaxFileSize (checked above) and the total budget.
                        inner = head + member.read(lim.max_file_size)
                except (
                    zipfile.BadZipFile,
                    NotImplementedError,
                    RuntimeError,  # not-libguestfs: zipfile, for an encrypted member
                    OSError,
                    zlib.error,
                    EOFError,
                ):
                    continue  # encrypted or broken member: clamd's verdict stands
                why = _zip_exceeds(io.BytesIO(inner), b, depth + 1)
                if why:
                    return why
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return None
    return None


def exceeds_limits(fh: IO[bytes], limits: ClamdLimits) -> str | None:
    """Which clamd limit an archive's content exceeds (``MaxFileSize``...), or None."""
    try:
        fh.seek(0)
        head = fh.read(4)
    except OSError:
        return None
    if head.startswith(b"PK"):
        fh.seek(0)
        return _zip_exceeds(fh, _Budget(limits), 1)
    if head.startswith(b"\x1f\x8b"):
        size = _gzip_isize(fh)
        if size is not None and size > limits.max_file_size:
            return "MaxFileSize"
    return None
