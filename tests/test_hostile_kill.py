"""``vmscan scan`` stopped mid-scan (SIGTERM, SIGKILL, --timeout) leaves nothing behind.

Real runs in a subprocess with their own ``TMPDIR``, so that every process of the run (the
workers, qemu, clamd, the janitor) can be found by its environment and every temp folder
lies in that ``TMPDIR`` (plus the libguestfs socket folders, read from qemu's command line).
Three appliance launches in all, shared by several assertions each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from procwatch import leftovers, processes_with, sockdirs_of, wait_until

import fixtures
from vmscan.manifest import sha256_file

pytestmark = pytest.mark.guest
REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "vmscan" / "schema" / "report.schema.json"


def start(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    # The appliance cache stays shared: with TMPDIR set, libguestfs would otherwise build
    # it in TMPDIR (its default cachedir), minutes under TCG.
    cache = os.environ.get("LIBGUESTFS_CACHEDIR") or os.environ.get("TMPDIR") or "/var/tmp"
    env = {**os.environ, "TMPDIR": str(tmp), "LIBGUESTFS_CACHEDIR": cache}
    return subprocess.Popen(
        [sys.executable, "-m", "vmscan", "scan", "-q", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


class Watch:
    """What the run has started so far: qemu pids (in order), clamd pids, socket folders."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.qemus: list[int] = []
        self.first_seen: dict[int, float] = {}
        self.clamds: set[int] = set()
        self.sockdirs: set[str] = set()

    def poll(self) -> dict[int, str]:
        procs = processes_with(str(self.tmp))
        for pid, cmd in procs.items():
            if "qemu-system" in cmd and "guestfsd.sock" in cmd:  # the appliance, not a probe
                if pid not in self.qemus:
                    self.qemus.append(pid)
                    self.first_seen[pid] = time.monotonic()
                self.sockdirs |= sockdirs_of(cmd)
            elif "clamd" in cmd.split(" ", 1)[0]:
                self.clamds.add(pid)
        return procs

    def qemu_running(self, n: int, for_s: float = 0.0) -> bool:
        """The n-th appliance (1-based) is up; when asked, for at least *for_s* seconds."""
        procs = self.poll()
        if len(self.qemus) < n or self.qemus[n - 1] not in procs:
            return False
        return time.monotonic() - self.first_seen[self.qemus[n - 1]] >= for_s


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """-j 1 over [refused, symlink to data-disk, debian-lvm]; SIGTERM while the 2nd appliance
    runs, with the managed clamd up."""
    data = fixtures.build("data-disk")
    deb = fixtures.build("debian-lvm")
    root = tmp_path_factory.mktemp("sigterm")
    imgs = root / "imgs"
    imgs.mkdir()
    link = imgs / "linked-data.qcow2"
    os.symlink(data, link)
    refused = imgs / "proto.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            f"file:{deb}",
            "-F",
            "qcow2",
            str(refused),
            "64M",
        ],
        check=True,
        capture_output=True,
    )
    tmp = root / "tmp"
    tmp.mkdir()
    out = root / "report.json"
    before = {p: sha256_file(p) for p in (data, deb)}
    proc = start(
        tmp, "-j", "1", "--checks", "antivirus", "-o", str(out), str(refused), str(link), str(deb)
    )
    watch = Watch(tmp)
    try:
        up = wait_until(lambda: watch.qemu_running(2, for_s=3.0) and bool(watch.clamds), 400)
        watch.poll()
        assert up, f"the second appliance never ran: {proc.stderr.read() if proc.stderr else ''}"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    finally:
        _stop(proc)
    return {
        "rc": rc,
        "stderr": proc.stderr.read().decode("utf-8", "replace") if proc.stderr else "",
        "report": json.loads(out.read_text()),
        "link": link,
        "data": data,
        "watch": watch,
        "tmp": tmp,
        "before": before,
        "after": {p: sha256_file(p) for p in (data, deb)},
        "left": leftovers(tmp, watch.sockdirs)
        if not wait_until(lambda: not leftovers(tmp, watch.sockdirs), 30)
        else [],
    }


def test_sigterm_exits_143_with_a_report_marked_interrupted(sigterm_run: dict[str, Any]) -> None:
    r = sigterm_run["report"]
    assert sigterm_run["rc"] == 143, sigterm_run["stderr"]
    jsonschema.validate(r, json.loads(SCHEMA.read_text()))
    assert r["interrupted"] is True and r["interrupted_by"] == "SIGTERM"
    refused, linked, unfinished = r["images"]
    assert refused["status"] == "error" and "protocol prefix 'file:'" in refused["errors"][0]
    assert unfinished["status"] == "error"
    assert unfinished["errors"] == [
        "not scanned: vmscan was interrupted by SIGTERM before it finished"
    ]
    # The image finished before the signal is reported in full.
    assert linked["status"] == "no_os" and linked["sections"]["data_volumes"]
    assert linked["sections"]["antivirus"]["files_total"] > 0


def test_symlinked_source_shows_given_and_real_path(sigterm_run: dict[str, Any]) -> None:
    linked = sigterm_run["report"]["images"][1]
    assert linked["source"] == str(sigterm_run["link"])
    (disk,) = linked["disks"]
    assert disk["path"] == os.path.realpath(sigterm_run["data"])
    assert disk["given"] == str(sigterm_run["link"])


def test_sigterm_leaves_no_qemu_clamd_or_folder(sigterm_run: dict[str, Any]) -> None:
    watch: Watch = sigterm_run["watch"]
    assert len(watch.qemus) >= 2 and watch.clamds and watch.sockdirs
    assert sigterm_run["left"] == []
    for pid in [*watch.qemus, *watch.clamds]:
        assert not Path(f"/proc/{pid}").exists() or pid not in processes_with(
            str(sigterm_run["tmp"])
        )


def test_images_unchanged_after_sigterm(sigterm_run: dict[str, Any]) -> None:
    assert sigterm_run["before"] == sigterm_run["after"]


def test_sigkill_mid_scan_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL of vmscan while an appliance runs and clamd is up: the workers die with it
    (PDEATHSIG), clamd too, and the janitor kills qemu and removes every folder."""
    deb = fixtures.build("debian-lvm")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = start(tmp, "--checks", "antivirus", "-o", str(tmp_path / "r.json"), str(deb))
    watch = Watch(tmp)
    try:
        up = wait_until(lambda: watch.qemu_running(1, for_s=2.0) and bool(watch.clamds), 300)
        watch.poll()
        assert up, proc.stderr.read() if proc.stderr else ""
        proc.kill()
        proc.wait(30)
    finally:
        _stop(proc)
    assert watch.sockdirs
    wait_until(lambda: not leftovers(tmp, watch.sockdirs), 60)
    assert leftovers(tmp, watch.sockdirs) == []
    assert not (tmp_path / "r.json").exists()


def test_timeout_leaves_nothing(tmp_path: Path) -> None:
    """A worker killed on --timeout (mid-launch here) leaves no process and no folder."""
    deb = fixtures.build("debian-lvm")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "r.json"
    proc = start(tmp, "--checks", "none", "--timeout", "6", "-o", str(out), str(deb))
    watch = Watch(tmp)
    try:
        while proc.poll() is None:
            watch.poll()
            time.sleep(0.2)
    finally:
        _stop(proc)
    assert proc.returncode == 2
    (img,) = json.loads(out.read_text())["images"]
    assert img["status"] == "error" and "timed out after 6 s" in img["errors"][0]
    assert watch.qemus, "the appliance never started: the test proves nothing"
    wait_until(lambda: not leftovers(tmp, watch.sockdirs), 30)
    assert leftovers(tmp, watch.sockdirs) == []
