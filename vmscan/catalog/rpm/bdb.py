"""Reader of rpm's BerkeleyDB hash database (Packages: RHEL/CentOS 7-8, Amazon Linux 2).

Only what rpm writes is supported: a hash database whose values (header blobs) live
on overflow page chains referenced by ``H_OFFPAGE`` items of the hash pages. Layout
from libdb's db_page.h (as knqyf263/go-rpmdb reads it).
"""

from __future__ import annotations

import struct
from pathlib import Path

from vmscan.catalog.rpm.errors import RpmDbError

HASH_MAGIC = 0x061561
PAGE_HEADER_SIZE = 26
P_HASH_UNSORTED = 2
P_OVERFLOW = 7
P_HASHMETA = 8
P_HASH = 13
H_OFFPAGE = 3
VALID_PAGE_SIZES = {512, 1024, 2048, 4096, 8192, 16384, 32768, 65536}


def read_blobs(path: Path) -> tuple[list[bytes], list[str]]:
    """Header blobs of the hash database; a broken item or chain is a note."""
    data = path.read_bytes()
    if len(data) < 72:
        raise RpmDbError("file too short for a BerkeleyDB metadata page")
    if struct.unpack_from("<I", data, 12)[0] == HASH_MAGIC:
        bo = "<"
    elif struct.unpack_from(">I", data, 12)[0] == HASH_MAGIC:
        bo = ">"
    else:
        raise RpmDbError("not a BerkeleyDB hash database (bad magic)")
    pagesize = struct.unpack_from(bo + "I", data, 20)[0]
    enc, ptype = data[24], data[25]
    last_pgno = struct.unpack_from(bo + "I", data, 32)[0]
    if pagesize not in VALID_PAGE_SIZES:
        raise RpmDbError(f"unexpected page size {pagesize}")
    if enc != 0:
        raise RpmDbError("encrypted BerkeleyDB database")
    if ptype != P_HASHMETA:
        raise RpmDbError(f"first page is not a hash metadata page (type {ptype})")
    npages = len(data) // pagesize
    notes: list[str] = []
    if last_pgno + 1 > npages:
        notes.append(f"database truncated: {npages} of {last_pgno + 1} pages present")
        last_pgno = npages - 1
    blobs: list[bytes] = []

    def page(pgno: int) -> bytes:
        return data[pgno * pagesize : (pgno + 1) * pagesize]

    for pgno in range(1, last_pgno + 1):
        pg = page(pgno)
        if pg[25] not in (P_HASH, P_HASH_UNSORTED):
            continue
        nentries = struct.unpack_from(bo + "H", pg, 20)[0]
        if nentries % 2 or PAGE_HEADER_SIZE + nentries * 2 > pagesize:
            notes.append(f"hash page {pgno}: bad entry count {nentries}")
            continue
        # Entries come in key/value pairs; values are the odd ones.
        for k in range(1, nentries, 2):
            ioff = struct.unpack_from(bo + "H", pg, PAGE_HEADER_SIZE + k * 2)[0]
            if ioff >= pagesize:
                notes.append(f"hash page {pgno}: item offset {ioff} outside the page")
                continue
            if pg[ioff] != H_OFFPAGE:
                continue  # inline values are rpm's bookkeeping, not headers
            if ioff + 12 > pagesize:
                notes.append(f"hash page {pgno}: item at {ioff} runs past the page")
                continue
            first, total = struct.unpack_from(bo + "II", pg, ioff + 4)
            blob, err = _chain(data, pagesize, npages, first, total, bo)
            if err:
                notes.append(f"hash page {pgno} item {k}: {err}")
                continue
            blobs.append(blob)
    return blobs, notes


def _chain(
    data: bytes, pagesize: int, npages: int, first: int, total: int, bo: str
) -> tuple[bytes, str]:
    """Concatenate an overflow page chain of *total* bytes; ("", reason) if broken."""
    out = bytearray()
    pgno = first
    seen: set[int] = set()
    while pgno:
        if pgno in seen:
            return b"", f"overflow chain loops at page {pgno}"
        if pgno >= npages:
            return b"", f"overflow page {pgno} outside the file"
        seen.add(pgno)
        pg = data[pgno * pagesize : (pgno + 1) * pagesize]
        if pg[25] != P_OVERFLOW:
            return b"", f"page {pgno} of an overflow chain has type {pg[25]}"
        nxt = struct.unpack_from(bo + "I", pg, 16)[0]
        # On overflow pages the "high free offset" field holds the bytes used.
        used = struct.unpack_from(bo + "H", pg, 22)[0]
        if PAGE_HEADER_SIZE + used > pagesize:
            return b"", f"overflow page {pgno} claims {used} bytes"
        out += pg[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + used]
        if len(out) > total:
            return b"", "overflow chain longer than its item says"
        pgno = nxt
    if len(out) != total:
        return b"", f"overflow chain holds {len(out)} of {total} bytes"
    return bytes(out), ""
