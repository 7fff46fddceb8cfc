"""The fleet coordinator stopped by SIGTERM/SIGINT: finished images kept, nothing left behind.

``vmscan nightly`` runs as a subprocess with a ``TMPDIR`` of its own (every process it
starts, the ``LocalCluster``'s worker processes and their qemu included, inherits it, so
``tests/procwatch.py`` finds them). It scans three small fixture images one at a time; the
signal comes once the first image is stored and the second one's appliance is up, to the
nightly alone or to its whole process group (as systemd and a terminal send it). As on
one host: exit 128 + signal, the run marked interrupted, the finished image stored, the
others not stored (the next night scans them); then no process, no file, no socket folder
of the run. With a ``tcp://`` scheduler the fleet's worker outlives the nightly: its
appliance for the cancelled image must be gone all the same.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason="needs the fleet extra (vmscan[fleet])")
dask = pytest.importorskip("dask")

from procwatch import leftovers, processes_with, sockdirs_of, wait_until  # noqa: E402

from vmscan.state import RUN_INTERRUPTED, StateDB  # noqa: E402

pytestmark = pytest.mark.guest
REPO = Path(__file__).resolve().parent.parent
NAMES = ("i1.qcow2", "i2.qcow2", "i3.qcow2")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three copies of the smallest fixture image (from the shared fixtures cache)."""
    fixtures = pytest.importorskip("fixtures")
    data_disk = fixtures.build("data-disk")
    folder = tmp_path_factory.mktemp("interrupt-images")
    for n in NAMES:
        shutil.copyfile(data_disk, folder / n)
    return folder


def _config(tmp: Path, images: Path, scheduler: str) -> Path:
    cfg = tmp / "vmscan.toml"
    paths = ", ".join(json.dumps(str(images / n)) for n in NAMES)
    cfg.write_text(
        f"""fail_on = "none"
[images]
paths = [{paths}]
[scan]
checks = ["migration"]
manifest = false
[limits]
timeout = 900
max_per_storage = 1
[state]
database = "{tmp}/state.db"
[reports]
dir = "{tmp}/reports"
formats = ["json"]
[fleet]
scheduler = "{scheduler}"
wait_workers = 60
"""
    )
    return cfg


def _stored(db: Path) -> list[tuple[str, str]]:
    """(source, status) of the stored image results, read without writing anything."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute("SELECT source, status FROM image_results").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    return [(str(s), str(st)) for s, st in rows]


def _env(tmp: Path) -> dict[str, str]:
    # The appliance cache stays shared: with TMPDIR set, libguestfs would otherwise build
    # it in TMPDIR (its default cachedir), minutes under TCG.
    cache = os.environ.get("LIBGUESTFS_CACHEDIR") or os.environ.get("TMPDIR") or "/var/tmp"
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(tmp),
        "LIBGUESTFS_CACHEDIR": cache,
    }


def _qemus(needle: str) -> dict[int, str]:
    return {p: c for p, c in processes_with(needle).items() if "qemu" in c.split(" ", 1)[0]}


@pytest.fixture
def tcp_worker(images: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A scheduler (here) and one ``vmscan worker`` process with a TMPDIR of its own."""
    wtmp = tmp_path / "worker-tmp"
    wtmp.mkdir()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1"
        )
    client = distributed.Client(cluster)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmscan",
            "worker",
            cluster.scheduler_address,
            "--name",
            "wi",
            "--storage",
            f"store={images}",
            "--nthreads",
            "1",
            "--no-clamd",
        ],
        env=_env(wtmp),
        stderr=(tmp_path / "worker.log").open("wb"),
        start_new_session=True,
    )
    try:
        assert wait_until(
            lambda: any(
                w.get("resources") for w in client.scheduler_info(n_workers=-1)["workers"].values()
            ),
            300,
            0.5,
        ), "the vmscan worker did not register"
        yield {
            "address": cluster.scheduler_address,
            "tmp": wtmp,
            "proc": proc,
            "log": tmp_path / "worker.log",
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        client.close()
        cluster.close()


@pytest.mark.parametrize(
    ("mode", "sig", "group"),
    [
        # systemd stops the unit: SIGTERM to every process of it, Dask's workers included.
        ("local", signal.SIGTERM, True),
        # The nightly alone: it cancels the tasks and closes its cluster itself.
        ("local", signal.SIGINT, False),
        ("tcp", signal.SIGTERM, False),
    ],
    ids=["local-sigterm-group", "local-sigint", "tcp-sigterm"],
)
def test_coordinator_interrupted(
    mode: str,
    sig: signal.Signals,
    group: bool,
    images: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    before = {n: (images / n).read_bytes() for n in NAMES}
    run_tmp = tmp_path / "run-tmp"
    run_tmp.mkdir()
    worker: dict[str, Any] | None = None
    if mode == "tcp":
        worker = request.getfixturevalue("tcp_worker")
        scheduler = str(worker["address"])
    else:
        scheduler = "local:1"
    cfg = _config(tmp_path, images, scheduler)
    metrics = tmp_path / "vmscan.prom"
    # Where the appliances run: under the nightly (local:N) or under the fleet's worker.
    appliances = str(worker["tmp"]) if worker else str(run_tmp)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmscan",
            "nightly",
            "--config",
            str(cfg),
            "--metrics",
            str(metrics),
        ],
        env=_env(run_tmp),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sockdirs: set[str] = set()
    try:

        def one_done_next_up() -> bool:
            if proc.poll() is not None:
                return True
            qemus = _qemus(appliances)
            for cmd in qemus.values():
                sockdirs.update(sockdirs_of(cmd))
            return len(_stored(tmp_path / "state.db")) >= 1 and bool(qemus)

        assert wait_until(one_done_next_up, 900, 0.3), "no image finished with another running"
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "interrupted" in err, err[-3000:]
    with StateDB(tmp_path / "state.db") as db:
        assert db.recovered == []  # the nightly marked it itself
        (run,) = db.list_runs()
        assert run.status == RUN_INTERRUPTED, run
        rows = db.image_rows(run.id)
    # The image that had finished is stored as scanned; the one cancelled mid-scan and the
    # one not started are not stored at all (never as clean, nor as an error that would
    # cost the next night its base): the run says interrupted, the next night scans them.
    assert 1 <= len(rows) < len(NAMES), rows
    assert all(r.status != "error" for r in rows), rows
    assert f"vmscan_nightly_images_scanned {len(rows)}" in metrics.read_text()
    # Nothing of the run is left: LocalCluster workers, scan workers, qemu, janitors,
    # temp files, socket folders.
    assert wait_until(lambda: not leftovers(run_tmp, sockdirs), 60, 0.5), leftovers(
        run_tmp, sockdirs
    )
    if worker is not None:
        # The fleet's worker lives on; it stopped the cancelled image's scan (it says so:
        # the appliance did not just finish the image for nobody) and its appliance.
        log = worker["log"]
        assert wait_until(lambda: b"scan cancelled by the coordinator" in log.read_bytes(), 120)
        done = {Path(src).name for src, _ in _stored(tmp_path / "state.db")}
        text = log.read_bytes()
        assert any(f"{n}: scan cancelled".encode() in text for n in set(NAMES) - done), text
        assert worker["proc"].poll() is None
        assert wait_until(lambda: not _qemus(appliances), 60, 0.5), _qemus(appliances)
        assert not [d for d in sockdirs if os.path.exists(d)], sockdirs
    assert {n: (images / n).read_bytes() for n in NAMES} == before


def test_interrupted_while_the_local_cluster_starts(images: Path, tmp_path: Path) -> None:
    # SIGTERM while `local:1` is still starting its worker process: no appliance yet, but
    # the cluster must not outlive the nightly (nor its scratch folder).
    run_tmp = tmp_path / "run-tmp"
    run_tmp.mkdir()
    cfg = _config(tmp_path, images, "local:1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmscan", "nightly", "--config", str(cfg)],
        env=_env(run_tmp),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:

        def worker_starting() -> bool:
            return proc.poll() is not None or any(
                "spawn_main" in c for c in processes_with(str(run_tmp)).values()
            )

        assert wait_until(worker_starting, 300, 0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 143, err[-3000:]
    # The nightly closed the cluster it started (not Dask's exit hooks, reaping strays).
    assert "stray process" not in err and "close_clusters" not in err, err[-3000:]
    with StateDB(tmp_path / "state.db") as db:
        (run,) = db.list_runs()
        assert run.status == RUN_INTERRUPTED and db.image_rows(run.id) == []
    assert wait_until(lambda: not leftovers(run_tmp, set()), 60, 0.5), leftovers(run_tmp, set())
