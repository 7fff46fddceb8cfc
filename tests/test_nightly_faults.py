"""``kill -9`` of ``vmscan nightly`` at five points: nothing stored is lost, the next run finishes.

The child is the real CLI (``vmscan nightly --config ... --metrics ...``) with the stand-in
scanner of nightly_samples; it is parked at the point by the test-only hook of
:mod:`vmscan.faults` (``VMSCAN_TEST_STOP_AT``) and SIGKILLed there. The database, report
folder, metrics file and the next run are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nightly_samples import FakeScanner, finding, write_config, write_guest
from procwatch import processes_with, wait_until

from vmscan.faults import POINTS
from vmscan.nightly import load_config, run_nightly
from vmscan.state import RUN_COMPLETE, RUN_INTERRUPTED, StateDB

TESTS = Path(__file__).resolve().parent

_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from nightly_samples import FakeScanner
import vmscan.nightly
from vmscan.cli import main
vmscan.nightly._default_scan_fn = lambda: FakeScanner()
sys.exit(main(["nightly", "--config", {cfg!r}, "--metrics", {metrics!r}]))
"""

#: What the run after the kill must open again (what the killed run had not stored).
REOPENED = {
    "discovery": ["vm1", "vm2"],
    "scanning": ["vm2"],
    "storing": ["vm1", "vm2"],  # killed inside the first store (vm0 carried): none kept
    "reports": [],
    "metrics": [],
}


def _guest(tmp: Path, n: int, version: str) -> None:
    write_guest(
        tmp / "imgs" / f"vm{n}.img",
        hostname=f"vm{n}",
        packages=[["openssl", version]],
        findings=[finding("patch", "CVE-1", "medium", "openssl")],
        migration="ready",
    )


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_each_point(tmp_path: Path, point: str) -> None:
    for n in range(3):
        _guest(tmp_path, n, "3.0.9-1")
    cfg = load_config(write_config(tmp_path, str(tmp_path / "imgs" / "*.img")))
    metrics = tmp_path / "metrics" / "vmscan.prom"
    metrics.parent.mkdir()
    first = run_nightly(cfg, scan_fn=FakeScanner(), metrics_path=metrics)
    assert first.exit_code == 0
    report1 = (cfg.reports_dir / str(first.run_id) / "report.json").read_bytes()
    metrics1 = metrics.read_bytes()
    for n in (1, 2):  # two images change: the next night scans them, carries vm0
        _guest(tmp_path, n, "3.0.11-1")

    tmpdir = tmp_path / "child-tmp"
    tmpdir.mkdir()
    ready = tmp_path / "stopped"
    env = {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "VMSCAN_TEST_STOP_AT": point,
        "VMSCAN_TEST_STOP_FILE": str(ready),
    }
    script = _CHILD.format(tests=str(TESTS), cfg=str(cfg.path), metrics=str(metrics))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        assert ready.read_text().split()[0] == point
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The run's janitor may take a moment to clean up after its parent's death.
    assert wait_until(lambda: processes_with(str(tmpdir)) == {}, 30), processes_with(str(tmpdir))

    # The database opens cleanly; the killed run (if it had begun) is marked interrupted.
    with StateDB(cfg.state_db) as db:
        assert db.integrity_ok()
        runs = {r.id: r for r in db.list_runs()}
        assert runs[first.run_id].status == RUN_COMPLETE
        assert len(db.image_rows(first.run_id)) == 3  # nothing stored before is lost
        killed = [r for r in runs.values() if r.id != first.run_id]
        if point == "discovery":
            assert killed == [] and db.recovered == []
        else:
            (run,) = killed
            assert run.status == RUN_INTERRUPTED and db.recovered == [run.id]
    # The last good reports and metrics are whole and still current.
    assert os.readlink(cfg.reports_dir / "latest") == str(first.run_id)
    assert (cfg.reports_dir / str(first.run_id) / "report.json").read_bytes() == report1
    assert metrics.read_bytes() == metrics1

    # The next night finishes the rest, with what the killed run stored reused.
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner, metrics_path=metrics)
    assert sorted(Path(p).stem for p in scanner.opened) == REOPENED[point]
    assert out.exit_code == 0 and out.error == ""
    rep = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    assert rep["sections"]["run"]["id"] == out.run_id
    versions = {
        Path(i["source"]).stem: i["roots"][0]["packages"][0]["version"] for i in rep["images"]
    }
    assert versions == {"vm0": "3.0.9-1", "vm1": "3.0.11-1", "vm2": "3.0.11-1"}
    with StateDB(cfg.state_db) as db:
        assert db.get_run(out.run_id).status == RUN_COMPLETE  # type: ignore[union-attr]
    # No half-written report or metrics file anywhere; the killed run's partial reports gone.
    assert [p for p in tmp_path.rglob("*.tmp")] == []
    assert sorted(p.name for p in cfg.reports_dir.iterdir()) == sorted(
        [str(first.run_id), str(out.run_id), "latest"]
    )
    assert f"vmscan_nightly_last_run_id {out.run_id}\n" in metrics.read_text()


def test_second_nightly_at_once_stops_with_a_clear_message(tmp_path: Path) -> None:
    for n in range(3):
        _guest(tmp_path, n, "3.0.9-1")
    cfg = load_config(write_config(tmp_path, str(tmp_path / "imgs" / "*.img")))
    metrics = tmp_path / "vmscan.prom"
    ready = tmp_path / "stopped"
    env = {**os.environ, "VMSCAN_TEST_STOP_AT": "scanning", "VMSCAN_TEST_STOP_FILE": str(ready)}
    script = _CHILD.format(tests=str(TESTS), cfg=str(cfg.path), metrics=str(metrics))
    first = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: ready.exists() or first.poll() is not None, 120)
        assert ready.exists()
        with StateDB(cfg.state_db, readonly=True) as db:
            stored_before = len(db.image_rows(db.list_runs()[0].id))
        second = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ},
            capture_output=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        err = second.stderr.decode()
        assert "another vmscan nightly is running" in err and str(cfg.state_db) in err
        assert not metrics.exists()  # the running night owns the metrics file
        with StateDB(cfg.state_db, readonly=True) as db:
            (run,) = db.list_runs()  # the second began no run and stored nothing
            assert run.status == "running" and len(db.image_rows(run.id)) == stored_before
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
