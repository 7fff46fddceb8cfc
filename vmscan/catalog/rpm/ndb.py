"""Reader of rpm's NDB database (Packages.db, SUSE 15): slot pages + blob blocks.

Layout (rpm lib/backend/ndb/rpmpkg.c; little-endian): a 32-byte header
``RpmP`` magic, version, generation, slot page count; then slot pages of 16-byte
slots ``Slot`` magic, package index, block offset, block count; each block starts
with a 16-byte blob header ``BlbS`` magic, package index, checksum, length, then
the header blob. Blocks are 16 bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

from vmscan.catalog.rpm.errors import RpmDbError

HEADER_MAGIC = b"RpmP"
SLOT_MAGIC = b"Slot"
BLOB_MAGIC = b"BlbS"
BLOCK_SIZE = 16
SLOT_PAGE_SIZE = 4096
SLOTS_PER_PAGE = SLOT_PAGE_SIZE // 16
#: go-rpmdb's sanity cap (2048 pages = half a million packages).
MAX_SLOT_PAGES = 2048


def read_blobs(path: Path) -> tuple[list[bytes], list[str]]:
    """Header blobs of every used slot; a bad slot or blob is a note, not an abort."""
    data = path.read_bytes()
    if len(data) < 32 or data[:4] != HEADER_MAGIC:
        raise RpmDbError("not an NDB rpm database (no RpmP magic)")
    version, _generation, npages = struct.unpack_from("<III", data, 4)
    if version != 0:
        raise RpmDbError(f"unsupported NDB version {version}")
    if npages == 0 or npages > MAX_SLOT_PAGES:
        raise RpmDbError(f"implausible slot page count {npages}")
    notes: list[str] = []
    blobs: list[bytes] = []
    nslots = npages * SLOTS_PER_PAGE - 2  # the first two slots are the file header
    seen: set[int] = set()
    for k in range(nslots):
        off = 32 + k * 16
        if off + 16 > len(data):
            notes.append(f"slot table truncated at slot {k}")
            break
        magic = data[off : off + 4]
        pkgidx, blkoff, blkcnt = struct.unpack_from("<III", data, off + 4)
        if magic != SLOT_MAGIC:
            notes.append(f"slot {k} has a bad magic; slot table ends there")
            break
        if pkgidx == 0:
            continue
        if pkgidx in seen:
            notes.append(f"package index {pkgidx} appears in two slots; second ignored")
            continue
        seen.add(pkgidx)
        start = blkoff * BLOCK_SIZE
        if blkcnt == 0 or start + 16 > len(data):
            notes.append(f"package {pkgidx}: block offset {blkoff} outside the file")
            continue
        bmagic = data[start : start + 4]
        bidx, _cksum, blen = struct.unpack_from("<III", data, start + 4)
        if bmagic != BLOB_MAGIC or bidx != pkgidx:
            notes.append(f"package {pkgidx}: bad blob header at block {blkoff}")
            continue
        end = start + 16 + blen
        if end > len(data) or 16 + blen > blkcnt * BLOCK_SIZE:
            notes.append(f"package {pkgidx}: blob of {blen} bytes runs past its blocks")
            continue
        blobs.append(data[start + 16 : end])
    return blobs, notes
