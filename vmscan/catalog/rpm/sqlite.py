"""Reader of rpm's SQLite database (rpmdb.sqlite: Fedora 33+, RHEL 9, Mariner)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path

from vmscan.catalog.rpm.errors import RpmDbError

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\0"


def read_blobs(path: Path, wal: Path | None = None) -> tuple[list[bytes], list[str]]:
    """Header blobs of the ``Packages`` table of a host copy of rpmdb.sqlite.

    *wal* is a copy of the guest's ``rpmdb.sqlite-wal``: an image taken while rpm had
    not checkpointed holds the newest transactions only there.
    """
    with open(path, "rb") as fh:
        head = fh.read(100)
    if head[:16] != SQLITE_MAGIC:
        raise RpmDbError("not an SQLite 3 database")
    cut = _truncation(head, path.stat().st_size)
    try:
        return _open(path, wal)
    except RpmDbError as e:
        # SQLite refuses a cut file as "malformed": say what happened to it.
        raise RpmDbError(f"{cut}: {e}" if cut else str(e)) from e


def _truncation(head: bytes, size: int) -> str:
    """ "database truncated: N of M pages present" when the header promises more pages."""
    if len(head) < 32:
        return "database truncated: no complete header"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    if page < 512 or not pages or pages * page <= size:
        return ""
    return f"database truncated: {size // page} of {pages} pages present"


def _open(path: Path, wal: Path | None) -> tuple[list[bytes], list[str]]:
    if wal is not None and wal.stat().st_size > 0:
        # SQLite finds the WAL by name beside the database: put both in a private folder.
        with tempfile.TemporaryDirectory(prefix="vmscan-rpmdb-") as tmp:
            db = Path(tmp) / "rpmdb.sqlite"
            shutil.copyfile(path, db)
            shutil.copyfile(wal, Path(tmp) / "rpmdb.sqlite-wal")
            return _read(f"{db.as_uri()}?mode=ro")
    # immutable=1: never create journals or take locks next to the copy.
    return _read(f"{path.resolve().as_uri()}?mode=ro&immutable=1")


def _read(uri: str) -> tuple[list[bytes], list[str]]:
    notes: list[str] = []
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise RpmDbError(f"cannot open: {e}") from e
    try:
        # The file is guest data: schema-defined code (triggers, views) must not run.
        con.execute("PRAGMA trusted_schema=OFF")
        con.execute("PRAGMA cell_size_check=ON")
        con.execute("PRAGMA query_only=ON")
        blobs: list[bytes] = []
        try:
            cur = con.execute("SELECT hnum, blob FROM Packages ORDER BY hnum")
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.DatabaseError as e:
                    notes.append(f"database damaged after {len(blobs)} package(s): {e}")
                    break
                if row is None:
                    break
                hnum, blob = row
                if not isinstance(blob, bytes):
                    notes.append(f"package record {hnum} holds no header blob")
                    continue
                blobs.append(blob)
        except sqlite3.DatabaseError as e:
            raise RpmDbError(f"no readable Packages table: {e}") from e
        return blobs, notes
    finally:
        con.close()
