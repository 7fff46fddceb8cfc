"""State database: schema migrations, WAL, transactions, stale runs, retention, caches."""

from __future__ import annotations

import calendar
import sqlite3
import time
from pathlib import Path

import pytest
from nightly_samples import env_pid_dead, sample_image

from vmscan import state as state_mod
from vmscan.state import (
    RUN_COMPLETE,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    SCHEMA_VERSION,
    StateDB,
    StateError,
)


def _begin(db: StateDB, started_at: str | None = None) -> int:
    return db.begin_run(
        config_digest="c",
        vmscan_version="0.1.0",
        checks=("patch",),
        digests={"advisories": "a"},
        started_at=started_at,
    )


def test_new_database_is_wal_and_versioned(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        assert db.schema_version() == SCHEMA_VERSION
        mode = db.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        tables = {r[0] for r in db.conn.execute("SELECT name FROM sqlite_master")}
        assert {"runs", "image_results", "result_blobs", "schema_version"} <= tables
        assert "check_cache" not in tables  # dropped by migration 2: nothing read it
        assert "av_verdicts" not in tables  # the antivirus module owns that one
    # Reopening applies nothing twice.
    with StateDB(tmp_path / "s.db") as db:
        rows = db.conn.execute("SELECT version FROM schema_version").fetchall()
        assert [r[0] for r in rows] == [m[0] for m in state_mod.MIGRATIONS]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        db.conn.execute("INSERT INTO schema_version VALUES (999, 'x')")
    with pytest.raises(StateError, match="newer than this vmscan"):
        StateDB(tmp_path / "s.db")


def test_not_a_database_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "s.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"unusable|cannot open"):
        StateDB(bad)


def test_image_results_roundtrip_and_blob_dedup(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        r1 = _begin(db)
        img = sample_image("/img/a.qcow2", hostname="a", packages=[["bash", "5.2"]])
        db.add_image_result(r1, "/img/a.qcow2", img, identity={"size": 1}, scan_key="k1")
        db.finish_run(r1, RUN_COMPLETE, summary={"images": 1})
        r2 = _begin(db)
        db.add_image_result(
            r2,
            "/img/a.qcow2",
            img,
            identity={"size": 1},
            scan_key="k1",
            carried_forward=True,
            origin_run_id=r1,
        )
        assert db.conn.execute("SELECT COUNT(*) FROM result_blobs").fetchone()[0] == 1
        rows = db.image_rows(r2)
        assert rows[0].carried_forward and rows[0].origin_run_id == r1
        assert db.load_result(rows[0].result_digest)["roots"][0]["packages"][0]["name"] == "bash"
        latest = db.latest_image_row("/img/a.qcow2")
        assert latest is not None and latest.run_id == r2
        doc = db.run_document(r2)
        assert doc["images"][0]["sections"]["state"]["carried_forward"] is True
        assert doc["sections"]["run"]["id"] == r2
        assert db.resolve_run("latest").id == r1  # r2 is still running
        with pytest.raises(StateError):
            db.resolve_run("nope")


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        r1 = _begin(db)
        with pytest.raises(RuntimeError), db.transaction() as conn:
            conn.execute("UPDATE runs SET status = 'complete' WHERE id = ?", (r1,))
            raise RuntimeError("boom")
        run = db.get_run(r1)
        assert run is not None and run.status == RUN_RUNNING


def test_stale_running_run_is_marked_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateDB(path) as db:
        dead = _begin(db)
        alive = _begin(db)
        other = _begin(db)
        db.conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (env_pid_dead(), dead))
        db.conn.execute("UPDATE runs SET host = 'elsewhere', pid = 1 WHERE id = ?", (other,))
    with StateDB(path) as db:
        assert db.recovered == [dead]
        assert db.get_run(dead).status == RUN_INTERRUPTED  # type: ignore[union-attr]
        assert db.get_run(alive).status == RUN_RUNNING  # type: ignore[union-attr]
        assert db.get_run(other).status == RUN_RUNNING  # type: ignore[union-attr]
        assert db.integrity_ok()


def test_concurrent_reader_sees_committed_rows_only(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateDB(path) as db:
        run = _begin(db)
        reader = sqlite3.connect(str(path))
        with db.transaction() as conn:
            conn.execute("UPDATE runs SET error = 'half' WHERE id = ?", (run,))
            # WAL: the reader is not blocked and does not see the uncommitted write.
            assert reader.execute("SELECT error FROM runs").fetchone()[0] == ""
        assert reader.execute("SELECT error FROM runs").fetchone()[0] == "half"
        reader.close()


def test_retention_keeps_newest_complete_and_running(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        ids = []
        for day in range(1, 6):
            rid = _begin(db, started_at=f"2026-01-0{day}T00:00:00Z")
            db.add_image_result(rid, "/a", sample_image("/a"), identity=None)
            db.finish_run(rid, RUN_COMPLETE)
            ids.append(rid)
        running = _begin(db)
        expired = db.runs_to_expire(keep_runs=2, keep_days=None)
        assert sorted(expired) == ids[:3]
        now = calendar.timegm(time.strptime("2026-01-10", "%Y-%m-%d"))
        by_age = db.runs_to_expire(keep_runs=None, keep_days=6.5, now=now)
        assert ids[4] not in by_age and running not in by_age
        db.delete_runs(expired)
        assert [r.id for r in db.list_runs()] == [running, *reversed(ids[3:])]
        # The shared result document survives: later runs still reference it.
        assert db.image_rows(ids[3])
        db.delete_runs([ids[3], ids[4]])
        assert db.conn.execute("SELECT COUNT(*) FROM result_blobs").fetchone()[0] == 0


def test_full_disk_write_is_rolled_back_with_clear_message(tmp_path: Path) -> None:
    with StateDB(tmp_path / "s.db") as db:
        run = _begin(db)
        # SQLite's own limit stands in for a full disk: the write fails as SQLITE_FULL.
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = sample_image("/a", packages=[[f"p{i}", "1" * 50] for i in range(20000)])
        with pytest.raises(StateError, match="disk is full"):
            db.add_image_result(run, "/a", big, identity=None)
        assert db.image_rows(run) == []
        assert db.integrity_ok()


def test_readonly_open_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with pytest.raises(StateError, match="does not exist"):
        StateDB(path, readonly=True)
    with StateDB(path) as db:
        dead = _begin(db)
        db.conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (env_pid_dead(), dead))
    with StateDB(path, readonly=True) as db:
        assert db.recovered == []
        assert db.get_run(dead).status == RUN_RUNNING  # type: ignore[union-attr]
        with pytest.raises(StateError):
            _begin(db)  # a write
