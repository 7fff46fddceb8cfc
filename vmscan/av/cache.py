"""Verdict cache in vmscan's state database: content already scanned is not streamed again.

Key: (SHA-256 of the content, digest of the loaded databases, clamd engine version plus
its scan limits). Several worker processes share the SQLite file: WAL mode, a busy timeout
and short transactions. Only definite verdicts are stored: "clean", "found" with the
signature, and "too_large" when clamd (or the archive check) said the content exceeds the
limits, which the key includes; unreadable files and errors are never cached.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS av_verdicts (
        sha256 TEXT NOT NULL,
        db_digest TEXT NOT NULL,
        engine TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('clean', 'found', 'too_large')),
        signature TEXT NOT NULL DEFAULT '',
        scanned_at INTEGER NOT NULL,
        PRIMARY KEY (sha256, db_digest, engine)
    ) WITHOUT ROWID""",
    # File kinds (from magic bytes) do not depend on the databases: kept apart so that a
    # narrowed --av-scope need not read the heads of unchanged files again.
    """CREATE TABLE IF NOT EXISTS av_filekinds (
        sha256 TEXT PRIMARY KEY,
        kinds TEXT NOT NULL
    ) WITHOUT ROWID""",
    # PE facts (vmscan.pe) of contents seen before, so unchanged executables that are not
    # streamed again still appear in the "pe" section.
    """CREATE TABLE IF NOT EXISTS av_pe_info (
        sha256 TEXT PRIMARY KEY,
        info TEXT NOT NULL
    ) WITHOUT ROWID""",
)
_BATCH = 500
CACHEABLE = ("clean", "found", "too_large")


@dataclass(frozen=True)
class CachedVerdict:
    """A verdict read back from the cache."""

    verdict: str
    signature: str


class VerdictCache:
    """The ``av_verdicts`` table of the state database (one connection per process)."""

    def __init__(self, path: str, db_digest: str, engine: str, busy_timeout_s: float = 60.0):
        self.db_digest = db_digest
        self.engine = engine
        self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        for stmt in _SCHEMA:
            self.conn.execute(stmt)

    def close(self) -> None:
        self.conn.close()

    def lookup(self, digests: Iterable[str]) -> dict[str, CachedVerdict]:
        """Cached verdicts for the given SHA-256 values under the current databases."""
        wanted = sorted(set(digests))
        out: dict[str, CachedVerdict] = {}
        for i in range(0, len(wanted), _BATCH):
            part = wanted[i : i + _BATCH]
            qs = ",".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT sha256, verdict, signature FROM av_verdicts "
                f"WHERE db_digest = ? AND engine = ? AND sha256 IN ({qs})",
                (self.db_digest, self.engine, *part),
            )
            for sha, verdict, sig in rows:
                out[sha] = CachedVerdict(verdict, sig)
        return out

    def store(self, verdicts: Iterable[tuple[str, str, str]]) -> None:
        """Record (sha256, verdict, signature) rows, in short transactions."""
        rows = [
            (s, self.db_digest, self.engine, v, sig, int(time.time()))
            for s, v, sig in verdicts
            if v in CACHEABLE
        ]
        for i in range(0, len(rows), _BATCH):
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(
                    "INSERT OR REPLACE INTO av_verdicts "
                    "(sha256, db_digest, engine, verdict, signature, scanned_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows[i : i + _BATCH],
                )

    def kinds(self, digests: Iterable[str]) -> dict[str, frozenset[str]]:
        wanted = sorted(set(digests))
        out: dict[str, frozenset[str]] = {}
        for i in range(0, len(wanted), _BATCH):
            part = wanted[i : i + _BATCH]
            qs = ",".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT sha256, kinds FROM av_filekinds WHERE sha256 IN ({qs})",
                part,
            )
            for sha, kinds in rows:
                out[sha] = frozenset(k for k in kinds.split(",") if k)
        return out

    def store_kinds(self, items: Iterable[tuple[str, frozenset[str]]]) -> None:
        rows = [(s, ",".join(sorted(k))) for s, k in items]
        for i in range(0, len(rows), _BATCH):
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(
                    "INSERT OR REPLACE INTO av_filekinds (sha256, kinds) VALUES (?, ?)",
                    rows[i : i + _BATCH],
                )

    def pe_infos(self, digests: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = sorted(set(digests))
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(wanted), _BATCH):
            part = wanted[i : i + _BATCH]
            qs = ",".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT sha256, info FROM av_pe_info WHERE sha256 IN ({qs})",
                part,
            )
            for sha, info in rows:
                try:
                    out[sha] = json.loads(info)
                except ValueError:
                    continue
        return out

    def store_pe_infos(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        rows = [(s, json.dumps(d, sort_keys=True)) for s, d in items]
        for i in range(0, len(rows), _BATCH):
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(
                    "INSERT OR REPLACE INTO av_pe_info (sha256, info) VALUES (?, ?)",
                    rows[i : i + _BATCH],
                )
