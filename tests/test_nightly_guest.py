"""Nightly runs with the real scanner over fixture guests (appliances under TCG)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from vmscan.nightly import NightlyConfig, load_config, run_nightly
from vmscan.state import RUN_COMPLETE, StateDB

pytestmark = pytest.mark.guest


class CountingScanner:
    """The real scan_sources, counting the images it opens."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, sources: list[str], opts: Any, on_image_done: Any = None) -> Any:
        from vmscan.scanner import scan_sources

        self.opened.extend(sources)
        return scan_sources(sources, opts, on_image_done=on_image_done)


def _add_executable(image: Path, path: str, content: bytes) -> None:
    """Test set-up only: write one executable file into a (copied) data-disk image."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), format="qcow2", readonly=0)
    g.launch()
    try:
        dev = sorted(g.list_filesystems())[0]
        g.mount(dev, "/")
        g.write(path, content)
        g.chmod(0o755, path)
        g.umount_all()
    finally:
        g.shutdown()
        g.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixtures = pytest.importorskip("fixtures")
    tmp = tmp_path_factory.mktemp("nightly-guest")
    imgs = tmp / "imgs"
    imgs.mkdir()
    # The Debian guest is shared read-only from the fixture cache; the data disk is a
    # copy because the test changes it.
    debian = fixtures.build("debian-lvm")
    os.symlink(debian, imgs / "debian-lvm.qcow2")
    shutil.copyfile(fixtures.build("data-disk"), imgs / "data-disk.qcow2")
    # Discovery follows a symlink only into the configured paths or symlink_targets.
    (tmp / "vmscan.toml").write_text(
        f"""fail_on = "critical"
[images]
paths = ["{imgs}/*.qcow2"]
symlink_targets = ["{debian.parent}"]
[scan]
checks = ["patch", "license", "migration"]
manifest = true
[limits]
jobs = 2
max_per_storage = 2
timeout = 900
[state]
database = "{tmp}/state.db"
[reports]
dir = "{tmp}/reports"
"""
    )
    return tmp


def test_unchanged_then_changed_fleet(fleet: Path) -> None:
    cfg: NightlyConfig = load_config(fleet / "vmscan.toml")
    timings = {}
    first = CountingScanner()
    t0 = time.monotonic()
    out1 = run_nightly(cfg, scan_fn=first)
    timings["first"] = time.monotonic() - t0
    assert len(first.opened) == 2
    assert out1.failed == 0, out1
    second = CountingScanner()
    t0 = time.monotonic()
    out2 = run_nightly(cfg, scan_fn=second)
    timings["second"] = time.monotonic() - t0
    assert second.opened == [] and out2.skipped == 2  # no appliance at all
    data = fleet / "imgs" / "data-disk.qcow2"
    _add_executable(data, "/dropper.sh", b"#!/bin/sh\necho hi\n")
    third = CountingScanner()
    t0 = time.monotonic()
    out3 = run_nightly(cfg, scan_fn=third)
    timings["third"] = time.monotonic() - t0
    assert third.opened == [str(data)] and out3.skipped == 1
    report = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    changes = report["sections"]["changes"]
    (changed,) = [i for i in changes["images"] if i["changed"]]
    assert changed["source"] == str(data)
    assert [e["path"] for e in changed["new_executables"]] == ["/dropper.sh"]
    with StateDB(cfg.state_db) as db:
        assert [r.status for r in db.list_runs()] == [RUN_COMPLETE] * 3
    (fleet / "timings.json").write_text(json.dumps(timings))
    print(f"nightly timings (s): {timings}")
