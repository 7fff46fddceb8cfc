"""SQLite state database: runs, per-image results, check caches (WAL, versioned schema).

Past 600 lines on purpose: the schema, its migrations and every query on it live together
so that a change of a table and of the code that reads it are one change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmscan.errors import VmscanError
from vmscan.faults import stop_point

log = logging.getLogger(__name__)

RUN_RUNNING = "running"
RUN_COMPLETE = "complete"
RUN_INTERRUPTED = "interrupted"
RUN_FAILED = "failed"
RUN_STATUSES = (RUN_RUNNING, RUN_COMPLETE, RUN_INTERRUPTED, RUN_FAILED)

# Numbered migrations, applied in order inside one transaction each. Never edit a
# released step: add a new one. Table names are prefixed-free but distinct from the
# antivirus cache (``av_verdicts``) that shares this file.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            status TEXT NOT NULL CHECK (status IN
                ('running', 'complete', 'interrupted', 'failed')),
            config_digest TEXT NOT NULL DEFAULT '',
            vmscan_version TEXT NOT NULL DEFAULT '',
            checks TEXT NOT NULL DEFAULT '[]',
            digests TEXT NOT NULL DEFAULT '{}',
            host TEXT NOT NULL DEFAULT '',
            pid INTEGER NOT NULL DEFAULT 0,
            pid_start TEXT NOT NULL DEFAULT '',
            summary TEXT NOT NULL DEFAULT '{}',
            error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX runs_status ON runs(status, id);
        -- Result documents are stored once per distinct content (zlib JSON) so a
        -- result carried forward night after night costs one row, not one copy.
        CREATE TABLE result_blobs (
            digest TEXT PRIMARY KEY,
            data BLOB NOT NULL
        );
        CREATE TABLE image_results (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            identity TEXT,
            scan_key TEXT NOT NULL DEFAULT '',
            result_digest TEXT NOT NULL REFERENCES result_blobs(digest),
            status TEXT NOT NULL,
            carried_forward INTEGER NOT NULL DEFAULT 0,
            origin_run_id INTEGER,
            finished_at TEXT NOT NULL,
            PRIMARY KEY (run_id, source)
        );
        CREATE INDEX image_results_source ON image_results(source, run_id);
        CREATE TABLE check_cache (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (namespace, key)
        );
        """,
    ),
    # check_cache was never read by any check: dropped with its accessors.
    (2, "DROP TABLE IF EXISTS check_cache;"),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


class StateError(VmscanError):
    """The state database cannot be opened or written (message meant for a person)."""


@dataclass(frozen=True)
class RunInfo:
    """One row of ``runs``."""

    id: int
    started_at: str
    finished_at: str | None
    status: str
    config_digest: str
    vmscan_version: str
    checks: tuple[str, ...]
    digests: dict[str, str]
    host: str
    pid: int
    summary: dict[str, Any]
    error: str


@dataclass(frozen=True)
class ImageRow:
    """One row of ``image_results`` (the result document is loaded on demand)."""

    run_id: int
    source: str
    identity: dict[str, Any] | None
    scan_key: str
    result_digest: str
    status: str
    carried_forward: bool
    origin_run_id: int | None
    finished_at: str


def utcnow() -> str:
    """ISO 8601 UTC timestamp with seconds precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _proc_start(pid: int) -> str:
    """Start time of a process in clock ticks since boot ('' where unknown): tells pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int, start: str) -> bool:
    """True when process ``pid`` runs and is the same process (same start time)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to someone else
    return not (start and _proc_start(pid) and _proc_start(pid) != start)


def _disk_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "disk is full" in text or "disk i/o error" in text or "no space" in text


class StateDB:
    """The state database. One connection per process; writes are single transactions."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 30_000,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.recovered: list[int] = []
        try:
            if readonly:
                if not self.path.exists():
                    raise StateError(f"state database {self.path} does not exist")
                self.conn = sqlite3.connect(
                    f"{self.path.absolute().as_uri()}?mode=ro",
                    uri=True,
                    timeout=busy_timeout_ms / 1000,
                    isolation_level=None,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a writer
                # takes the lock up front instead of failing half-way on an upgrade.
                self.conn = sqlite3.connect(
                    str(self.path), timeout=busy_timeout_ms / 1000, isolation_level=None
                )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if readonly:
                # Readers (report, diff, dry-run) change nothing: no migration, no recovery.
                if self.schema_version() > SCHEMA_VERSION:
                    raise StateError(
                        f"state database {self.path} has a newer schema than this vmscan"
                    )
                return
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("state database %s: journal mode is %s, not WAL", self.path, mode)
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StateError(f"state database {self.path} is unusable: {exc}") from exc
        self.recovered = self.mark_stale_runs()

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (checkpoints the WAL when we are the last user)."""
        self.conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (disk full made clear)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"state database {self.path}: cannot start a write: {exc}") from exc
        try:
            yield self.conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                if _disk_full(exc):
                    raise StateError(
                        f"state database {self.path}: the disk is full ({exc}); "
                        "nothing of this write was kept"
                    ) from exc
                raise StateError(f"state database {self.path}: write failed: {exc}") from exc
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            why = "the disk is full" if _disk_full(exc) else "commit failed"
            raise StateError(
                f"state database {self.path}: {why} ({exc}); nothing of this write was kept"
            ) from exc

    def schema_version(self) -> int:
        """Highest migration applied."""
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema {current}, newer than this vmscan "
                f"({SCHEMA_VERSION}); upgrade vmscan"
            )
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            with self.transaction() as conn:
                # Re-check under the write lock: another process may have migrated.
                if self.schema_version() >= version:
                    continue
                for stmt in sql.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)",
                    (version, utcnow()),
                )
            log.info("state database %s: migrated to schema %d", self.path, version)

    # -- runs -------------------------------------------------------------------------

    def mark_stale_runs(self) -> list[int]:
        """Mark as interrupted the 'running' runs of this host whose process is gone."""
        host = socket.gethostname()
        stale: list[int] = []
        for row in self.conn.execute(
            "SELECT id, host, pid, pid_start FROM runs WHERE status = ?", (RUN_RUNNING,)
        ).fetchall():
            if row["host"] == host and not pid_alive(int(row["pid"]), str(row["pid_start"])):
                stale.append(int(row["id"]))
            elif row["host"] != host:
                log.warning(
                    "run %d is marked running by host %s; leaving it alone", row["id"], row["host"]
                )
        if stale:
            with self.transaction() as conn:
                for run_id in stale:
                    conn.execute(
                        "UPDATE runs SET status = ?, finished_at = COALESCE(finished_at, ?),"
                        " error = ? WHERE id = ? AND status = ?",
                        (
                            RUN_INTERRUPTED,
                            utcnow(),
                            "the process running it ended before the run finished",
                            run_id,
                            RUN_RUNNING,
                        ),
                    )
            for run_id in stale:
                log.warning("run %d was interrupted (its process is gone): marked so", run_id)
        return stale

    def begin_run(
        self,
        *,
        config_digest: str,
        vmscan_version: str,
        checks: tuple[str, ...] | list[str],
        digests: dict[str, str],
        started_at: str | None = None,
    ) -> int:
        """Insert a 'running' run owned by this process; returns its id."""
        pid = os.getpid()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs(started_at, status, config_digest, vmscan_version, checks,"
                " digests, host, pid, pid_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    started_at or utcnow(),
                    RUN_RUNNING,
                    config_digest,
                    vmscan_version,
                    json.dumps(list(checks)),
                    json.dumps(digests, sort_keys=True),
                    socket.gethostname(),
                    pid,
                    _proc_start(pid),
                ),
            )
            run_id = cur.lastrowid
        assert run_id is not None
        return int(run_id)

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        summary: dict[str, Any] | None = None,
        error: str = "",
        finished_at: str | None = None,
    ) -> None:
        """Set the final status (complete / interrupted / failed) and the summary."""
        if status not in RUN_STATUSES or status == RUN_RUNNING:
            raise ValueError(f"bad final run status {status!r}")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, summary = ?, error = ? WHERE id = ?",
                (
                    status,
                    finished_at or utcnow(),
                    json.dumps(summary or {}, sort_keys=True),
                    error,
                    run_id,
                ),
            )

    def set_summary(self, run_id: int, summary: dict[str, Any]) -> None:
        """Store the run's summary (counts used for trends) without changing its status."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET summary = ? WHERE id = ?",
                (json.dumps(summary, sort_keys=True), run_id),
            )

    @staticmethod
    def _run(row: sqlite3.Row) -> RunInfo:
        return RunInfo(
            id=int(row["id"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            status=row["status"],
            config_digest=row["config_digest"],
            vmscan_version=row["vmscan_version"],
            checks=tuple(json.loads(row["checks"] or "[]")),
            digests=json.loads(row["digests"] or "{}"),
            host=row["host"],
            pid=int(row["pid"]),
            summary=json.loads(row["summary"] or "{}"),
            error=row["error"],
        )

    def get_run(self, run_id: int) -> RunInfo | None:
        """One run by id."""
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def list_runs(self, *, status: str | None = None, limit: int | None = None) -> list[RunInfo]:
        """Runs, newest first."""
        sql = "SELECT * FROM runs"
        args: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._run(r) for r in self.conn.execute(sql, args).fetchall()]

    def latest_run(
        self, *, status: str | None = RUN_COMPLETE, before: int | None = None
    ) -> RunInfo | None:
        """Newest run (with that status; older than ``before`` when given)."""
        sql = "SELECT * FROM runs WHERE 1=1"
        args: list[Any] = []
        if status:
            sql += " AND status = ?"
            args.append(status)
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        row = self.conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return self._run(row) if row else None

    def resolve_run(self, ref: str) -> RunInfo:
        """A run from a reference: an id, ``latest`` (newest complete) or ``previous``."""
        ref = ref.strip()
        if ref in ("latest", "last"):
            run = self.latest_run()
        elif ref == "previous":
            last = self.latest_run()
            run = self.latest_run(before=last.id) if last else None
        elif ref.isdigit():
            run = self.get_run(int(ref))
        else:
            raise StateError(f"bad run reference {ref!r}: give a run id, 'latest' or 'previous'")
        if run is None:
            raise StateError(f"no run {ref!r} in state database {self.path}")
        return run

    # -- image results ----------------------------------------------------------------

    def _put_blob(self, conn: sqlite3.Connection, result: dict[str, Any]) -> str:
        raw = json.dumps(result, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(raw).hexdigest()
        conn.execute(
            "INSERT OR IGNORE INTO result_blobs(digest, data) VALUES (?, ?)",
            (digest, zlib.compress(raw, 6)),
        )
        return digest

    def add_image_result(
        self,
        run_id: int,
        source: str,
        result: dict[str, Any],
        *,
        identity: dict[str, Any] | None,
        scan_key: str = "",
        carried_forward: bool = False,
        origin_run_id: int | None = None,
    ) -> None:
        """Store one image's result in one transaction (replaces a row of the same run)."""
        with self.transaction() as conn:
            digest = self._put_blob(conn, result)
            conn.execute(
                "INSERT OR REPLACE INTO image_results(run_id, source, identity, scan_key,"
                " result_digest, status, carried_forward, origin_run_id, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    source,
                    json.dumps(identity, sort_keys=True) if identity is not None else None,
                    scan_key,
                    digest,
                    str(result.get("status", "error")),
                    int(carried_forward),
                    origin_run_id if origin_run_id is not None else run_id,
                    utcnow(),
                ),
            )
            stop_point("storing")  # tests: SIGKILL in the middle of this transaction

    @staticmethod
    def _image_row(row: sqlite3.Row) -> ImageRow:
        return ImageRow(
            run_id=int(row["run_id"]),
            source=row["source"],
            identity=json.loads(row["identity"]) if row["identity"] else None,
            scan_key=row["scan_key"],
            result_digest=row["result_digest"],
            status=row["status"],
            carried_forward=bool(row["carried_forward"]),
            origin_run_id=row["origin_run_id"],
            finished_at=row["finished_at"],
        )

    def load_result(self, digest: str) -> dict[str, Any]:
        """The result document stored under ``digest``."""
        row = self.conn.execute(
            "SELECT data FROM result_blobs WHERE digest = ?", (digest,)
        ).fetchone()
        if row is None:
            raise StateError(f"state database {self.path}: result {digest} is missing")
        data: dict[str, Any] = json.loads(zlib.decompress(row["data"]))
        return data

    def image_rows(self, run_id: int) -> list[ImageRow]:
        """All image rows of one run, by source."""
        return [
            self._image_row(r)
            for r in self.conn.execute(
                "SELECT * FROM image_results WHERE run_id = ? ORDER BY source", (run_id,)
            ).fetchall()
        ]

    def image_results(self, run_id: int) -> list[tuple[ImageRow, dict[str, Any]]]:
        """Rows of one run with their result documents."""
        return [(r, self.load_result(r.result_digest)) for r in self.image_rows(run_id)]

    def latest_image_row(
        self,
        source: str,
        *,
        exclude_status: tuple[str, ...] = ("error",),
        before: int | None = None,
    ) -> ImageRow | None:
        """Newest stored row of ``source`` from any run (complete, interrupted or failed)."""
        sql = "SELECT * FROM image_results WHERE source = ?"
        args: list[Any] = [source]
        if exclude_status:
            sql += f" AND status NOT IN ({','.join('?' * len(exclude_status))})"
            args.extend(exclude_status)
        if before is not None:
            sql += " AND run_id < ?"
            args.append(before)
        row = self.conn.execute(sql + " ORDER BY run_id DESC LIMIT 1", args).fetchone()
        return self._image_row(row) if row else None

    def run_document(self, run_id: int) -> dict[str, Any]:
        """The canonical result of a stored run, rebuilt from its rows."""
        run = self.get_run(run_id)
        if run is None:
            raise StateError(f"no run {run_id} in state database {self.path}")
        from vmscan import SCHEMA_VERSION as DOC_SCHEMA

        images = []
        for row, result in self.image_results(run_id):
            result = dict(result)
            sections = dict(result.get("sections") or {})
            state = dict(sections.get("state") or {})
            state.update(
                carried_forward=row.carried_forward,
                origin_run=row.origin_run_id,
                scanned_at=state.get("scanned_at") or row.finished_at,
            )
            sections["state"] = state
            result["sections"] = sections
            images.append(result)
        return {
            "schema_version": DOC_SCHEMA,
            "vmscan_version": run.vmscan_version,
            "started_at": run.started_at,
            "finished_at": run.finished_at or "",
            "images": images,
            "sections": {
                "run": {
                    "id": run.id,
                    "status": run.status,
                    "checks": list(run.checks),
                    "config_digest": run.config_digest,
                    "digests": run.digests,
                    "error": run.error,
                }
            },
        }

    # -- retention --------------------------------------------------------------------

    def delete_runs(self, run_ids: list[int]) -> None:
        """Delete runs, their rows, and result documents no longer referenced."""
        if not run_ids:
            return
        with self.transaction() as conn:
            conn.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in run_ids])
            conn.execute(
                "DELETE FROM result_blobs WHERE digest NOT IN"
                " (SELECT DISTINCT result_digest FROM image_results)"
            )

    def runs_to_expire(
        self, *, keep_runs: int | None, keep_days: float | None, now: float | None = None
    ) -> list[int]:
        """Runs past retention. Never the running ones nor the newest complete run."""
        runs = self.list_runs()
        newest_complete = next((r.id for r in runs if r.status == RUN_COMPLETE), None)
        now = time.time() if now is None else now
        expired: list[int] = []
        finished = [r for r in runs if r.status != RUN_RUNNING]
        for index, run in enumerate(finished):
            if run.id == newest_complete:
                continue
            too_many = keep_runs is not None and index >= keep_runs
            too_old = False
            if keep_days is not None:
                try:
                    started = datetime.fromisoformat(run.started_at.replace("Z", "+00:00"))
                    too_old = (now - started.timestamp()) > keep_days * 86400
                except ValueError:
                    too_old = False
            if too_many or too_old:
                expired.append(run.id)
        return expired

    def integrity_ok(self) -> bool:
        """PRAGMA integrity_check says ok."""
        row = self.conn.execute("PRAGMA integrity_check").fetchone()
        return bool(row and row[0] == "ok")
