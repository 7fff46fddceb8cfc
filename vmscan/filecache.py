"""Incremental hashing: each file's SHA-256 kept by filesystem identity and path.

A row is valid while the file's size, mtime, ctime and inode number are unchanged (the
same test as rsync's quick check, with ctime and inode added: ``touch -d`` can forge an
mtime but not a ctime, and a file replaced by another has a new inode). The filesystem
identity is its UUID, else the device name. A rescan of a changed image, of an overlay
or clone of a scanned disk, or of a snapshot, then streams only the files whose
metadata changed; their antivirus verdicts come from the verdict cache by hash
(``av_verdicts``, keyed by the signature databases' digest).

The table lives in the state database given with ``--state-db`` or, for ``vmscan
scan`` without one, in a per-user cache database (:func:`default_cache_db`). It is
created here (``CREATE TABLE IF NOT EXISTS``), not by a state migration: it is a cache
that can be dropped at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from vmscan.model import FileEntry

log = logging.getLogger(__name__)

# Several versions per path (PRIMARY KEY with the stat identity): a template and its
# clones, or a VM and its snapshots, share the filesystem UUID and differ in a few files;
# with one row per path, scanning them in turn would evict each other's rows. The first
# table (one row per path) is dropped: it is a cache.
_SCHEMA = """CREATE TABLE IF NOT EXISTS file_hash_versions (
    fs_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (fs_id, path, size, mtime_ns, ctime_ns, ino)
) WITHOUT ROWID"""
_BATCH = 500
#: Versions of one path kept (the most recently seen): the base, its clones' changes,
#: snapshots. More are dropped when a scan stores its rows.
MAX_VERSIONS = 4


def default_cache_db() -> Path:
    """``$XDG_CACHE_HOME/vmscan/cache.sqlite`` (or ``~/.cache/vmscan/cache.sqlite``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmscan" / "cache.sqlite"


def open_default_cache_db() -> str | None:
    """The per-user cache database's path, its folder made private; None when unusable."""
    path = default_cache_db()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        log.warning("no per-user cache (%s): %s", path.parent, e)
        return None
    return str(path)


class FileHashCache:
    """The ``file_hash_versions`` table: (fs identity, path, stat identity) -> hash."""

    def __init__(self, path: str, busy_timeout_s: float = 60.0) -> None:
        self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("DROP TABLE IF EXISTS file_hashes")
        self.conn.execute(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def knows(self, fs_ids: Iterable[str]) -> bool:
        """True when any row is kept for one of these filesystems (a scan saw them)."""
        ids = sorted(set(fs_ids))
        if not ids:
            return False
        qs = ",".join("?" * len(ids))
        row = self.conn.execute(
            f"SELECT 1 FROM file_hash_versions WHERE fs_id IN ({qs}) LIMIT 1", ids
        ).fetchone()
        return row is not None

    def fill(self, fs_id: str, entries: Iterable[FileEntry]) -> int:
        """Give every unhashed entry of filesystem *fs_id* whose row still holds its hash.

        Returns how many were filled. Entries without stat identity are left alone.
        """
        todo = {e.path: e for e in entries if e.sha256 is None and e.error is None and e.ident}
        paths = sorted(todo)
        filled = 0
        for i in range(0, len(paths), _BATCH):
            part = paths[i : i + _BATCH]
            qs = ",".join("?" * len(part))
            rows = self.conn.execute(
                "SELECT path, size, mtime_ns, ctime_ns, ino, sha256 FROM file_hash_versions "
                f"WHERE fs_id = ? AND path IN ({qs})",
                (fs_id, *part),
            )
            for path, size, mtime_ns, ctime_ns, ino, sha in rows:
                e = todo[path]
                if e.sha256 is None and e.ident == (size, mtime_ns, ctime_ns, ino):
                    e.sha256 = sha
                    filled += 1
        return filled

    def store(self, fs_id: str, entries: Iterable[FileEntry]) -> None:
        """Remember the hash of every hashed entry of *fs_id* with its stat identity."""
        now = int(time.time())
        rows = [
            (fs_id, e.path, *e.ident, e.sha256, now)
            for e in entries
            if e.sha256 is not None and e.error is None and e.ident is not None
        ]
        for i in range(0, len(rows), _BATCH):
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(
                    "INSERT OR REPLACE INTO file_hash_versions "
                    "(fs_id, path, size, mtime_ns, ctime_ns, ino, sha256, seen_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows[i : i + _BATCH],
                )
        if rows:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(
                    "DELETE FROM file_hash_versions WHERE (fs_id, path, size, mtime_ns, "
                    "ctime_ns, ino) IN (SELECT fs_id, path, size, mtime_ns, ctime_ns, ino FROM "
                    "(SELECT *, row_number() OVER (PARTITION BY path ORDER BY seen_at DESC, "
                    "mtime_ns DESC) AS n FROM file_hash_versions WHERE fs_id = ?) WHERE n > ?)",
                    (fs_id, MAX_VERSIONS),
                )


_BLOB_SCHEMA = """CREATE TABLE IF NOT EXISTS doc_blobs (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID"""
#: Largest file kept by content (copyright files are a few KiB; the big ones are rare).
MAX_BLOB_BYTES = 256 * 1024


class BlobCache:
    """Small guest files kept by their SHA-256 (``doc_blobs``, beside ``file_hashes``).

    Content-addressed, so a row is right for any guest whose file has that hash: the
    licence check's copyright files of a rescanned, cloned or sibling image are served
    from here once the hash cache has given their hashes, instead of being streamed.
    """

    def __init__(self, path: str, busy_timeout_s: float = 60.0) -> None:
        self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(_BLOB_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def get(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The blobs held for *hashes* (lower-case hex)."""
        wanted = sorted({h.lower() for h in hashes if h})
        out: dict[str, bytes] = {}
        for i in range(0, len(wanted), _BATCH):
            part = wanted[i : i + _BATCH]
            qs = ",".join("?" * len(part))
            for sha, data in self.conn.execute(
                f"SELECT sha256, data FROM doc_blobs WHERE sha256 IN ({qs})", part
            ):
                out[str(sha)] = bytes(data)
        return out

    def put(self, blobs: Iterable[bytes]) -> int:
        """Store each blob under its own SHA-256 (computed here); how many were stored."""
        now = int(time.time())
        rows = [(hashlib.sha256(b).hexdigest(), b, now) for b in blobs if len(b) <= MAX_BLOB_BYTES]
        for i in range(0, len(rows), _BATCH):
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(
                    "INSERT OR REPLACE INTO doc_blobs (sha256, data, seen_at) VALUES (?, ?, ?)",
                    rows[i : i + _BATCH],
                )
        return len(rows)
