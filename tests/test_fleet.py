"""The nightly on a real Dask cluster: placement by storage, per-storage limits, a worker killed.

One scheduler (a ``LocalCluster`` with no workers of its own) and two ``vmscan worker``
processes (each a nanny and its worker process, as on a hypervisor), each reading its own
folder of small fixture images that only it may read. Scans run the migration check only
(the cheapest appliance work); the workers run no clamd (the clamd-per-worker test starts
one itself, without an appliance).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason="needs the fleet extra (vmscan[fleet])")
dask = pytest.importorskip("dask")

from vmscan.nightly import load_config, run_nightly  # noqa: E402
from vmscan.state import RUN_COMPLETE, StateDB  # noqa: E402

pytestmark = pytest.mark.guest
REPO = Path(__file__).resolve().parent.parent


def _start_worker(address: str, name: str, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "vmscan", "worker", address, "--name", name, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_workers(client: Any, names: set[str], timeout: float = 300) -> dict[str, str]:
    """name -> address once every named worker has registered with its storages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws = client.scheduler_info(n_workers=-1)["workers"]
        got = {w["name"]: a for a, w in ws.items() if w.get("resources")}
        if names <= set(got):
            return got
        time.sleep(0.5)
    raise AssertionError(f"workers {names} did not register in {timeout} s")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    fixtures = pytest.importorskip("fixtures")
    data_disk = fixtures.build("data-disk")
    tmp = tmp_path_factory.mktemp("fleet")
    folders = {n: tmp / n for n in ("nas-a", "nas-b", "nas-c")}
    for f in folders.values():
        f.mkdir()
    for n, count in (("nas-a", 2), ("nas-b", 2), ("nas-c", 1)):
        for i in range(1, count + 1):
            shutil.copyfile(data_disk, folders[n] / f"{n[-1]}{i}.qcow2")
    before = {p: p.read_bytes() for f in folders.values() for p in f.iterdir()}
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1"
        )
    client = distributed.Client(cluster)
    address = cluster.scheduler_address
    workers = {
        "wa": _start_worker(
            address,
            "wa",
            "--storage",
            f"nas-a={folders['nas-a']}",
            "--storage-limit",
            "nas-a=1",
            "--nthreads",
            "2",
            "--no-clamd",
        ),
        "wb": _start_worker(
            address,
            "wb",
            "--storage",
            f"nas-b={folders['nas-b']}",
            "--storage-limit",
            "nas-b=2",
            "--nthreads",
            "2",
            "--no-clamd",
        ),
    }
    try:
        _wait_workers(client, {"wa", "wb"})
        yield {
            "tmp": tmp,
            "address": address,
            "client": client,
            "folders": folders,
            "procs": workers,
            "before": before,
        }
    finally:
        for p in workers.values():
            _stop(p)
        client.close()
        cluster.close()
    # The images are byte for byte what they were.
    assert {p: p.read_bytes() for p in before} == before


def _config(fx: dict[str, Any], name: str, paths: list[str]) -> Path:
    cfg = fx["tmp"] / f"{name}.toml"
    quoted = ", ".join(json.dumps(p) for p in paths)
    cfg.write_text(
        f"""fail_on = "none"
[images]
paths = [{quoted}]
[scan]
checks = ["migration"]
manifest = false
[limits]
timeout = 900
[state]
database = "{fx["tmp"]}/{name}.db"
[reports]
dir = "{fx["tmp"]}/{name}-reports"
formats = ["json"]
[fleet]
scheduler = "{fx["address"]}"
wait_workers = 30
"""
    )
    return cfg


def _images(cfg_path: Path) -> dict[str, dict[str, Any]]:
    cfg = load_config(cfg_path)
    report = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    return {Path(i["source"]).name: i for i in report["images"]}


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_placement_limits_and_unreachable(fleet: dict[str, Any]) -> None:
    folders = fleet["folders"]
    cfg_path = _config(fleet, "place", [str(f) for f in folders.values()])
    out = run_nightly(load_config(cfg_path))
    images = _images(cfg_path)
    assert sorted(images) == ["a1.qcow2", "a2.qcow2", "b1.qcow2", "b2.qcow2", "c1.qcow2"]
    for name in ("a1", "a2", "b1", "b2"):
        img = images[f"{name}.qcow2"]
        where = img["sections"]["fleet"]
        storage = f"nas-{name[0]}"
        # Scanned by the one worker that reads its folder, and it says so in the result.
        assert where["worker_name"] == f"w{name[0]}", where
        assert where["storages"] == {storage: str(folders[storage])}
        assert img["status"] != "error", img["errors"]
    # Nobody reads nas-c: reported at once as such, never queued.
    c1 = images["c1.qcow2"]
    assert c1["status"] == "error"
    assert "no connected worker reads" in c1["errors"][0]
    assert c1["sections"]["fleet"] == {"unreachable": True}
    # nas-a allows one image at a time on wa, though wa has two threads.
    spans_a = [
        (
            images[n]["sections"]["fleet"]["started_ts"],
            images[n]["sections"]["fleet"]["finished_ts"],
        )
        for n in ("a1.qcow2", "a2.qcow2")
    ]
    assert _max_overlap(spans_a) == 1, spans_a
    assert out.failed == 1 and out.scanned == 4
    with StateDB(load_config(cfg_path).state_db) as db:
        assert [r.status for r in db.list_runs()] == [RUN_COMPLETE]


def test_worker_killed_mid_image(fleet: dict[str, Any]) -> None:
    folders, client = fleet["folders"], fleet["client"]
    paths = [
        str(folders["nas-a"] / "a1.qcow2"),
        str(folders["nas-a"] / "a2.qcow2"),
        str(folders["nas-b"] / "b1.qcow2"),
    ]
    cfg_path = _config(fleet, "kill", paths)
    killed: dict[str, Any] = {}

    def killer() -> None:
        # Wait until wa is scanning an image, let the appliance get going, then SIGKILL
        # the worker process (its nanny survives and starts a new worker process).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            addr = _wait_workers(client, {"wa"}, 60)["wa"]
            busy = client.processing(workers=[addr]).get(addr) or []
            if busy:
                time.sleep(4)
                pid = client.run(os.getpid, workers=[addr])[addr]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, keys=list(busy), addr=addr)
                return
            time.sleep(0.3)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = run_nightly(load_config(cfg_path))
    t.join(5)
    assert killed, "the worker was never seen busy"
    images = _images(cfg_path)
    # A complete run: every image has a result, stored and in the report.
    assert sorted(images) == ["a1.qcow2", "a2.qcow2", "b1.qcow2"]
    with StateDB(load_config(cfg_path).state_db) as db:
        assert [r.status for r in db.list_runs()] == [RUN_COMPLETE]
    retried = [n for n, i in images.items() if (i["sections"].get("fleet") or {}).get("retries")]
    failed = [n for n, i in images.items() if i["status"] == "error"]
    assert retried or failed, images
    print(f"killed worker {killed}: retried {retried}, failed {failed}")
    for n in failed:  # failed only with a reason that says the worker died
        assert "died" in images[n]["errors"][0], images[n]["errors"]
    for n in retried:
        where = images[n]["sections"]["fleet"]
        assert n.startswith("a") and where["worker_name"] == "wa"
        assert where["worker"] != killed["addr"]  # the new worker process, not the dead one
        assert images[n]["status"] != "error", images[n]["errors"]
    assert images["b1.qcow2"]["sections"]["fleet"]["worker_name"] == "wb"
    assert images["b1.qcow2"]["status"] != "error"
    assert out.scanned + out.failed == 3


def test_worker_refuses_a_path_outside_its_storage(fleet: dict[str, Any]) -> None:
    # Even when a task reaches it (here forced with the resource), a worker opens nothing
    # outside its folders: no appliance is started for this.
    from vmscan.fleet import FleetJob
    from vmscan.fleet.worker import scan_task
    from vmscan.scanner import ScanOptions

    outside = str(fleet["folders"]["nas-b"] / "b1.qcow2")
    fut = fleet["client"].submit(
        scan_task,
        FleetJob(outside, (outside,), ("migration",)),
        ("nas-a",),
        ScanOptions(checks=("migration",)),
        resources={"vmscan-storage-nas-a": 1},
        pure=False,
    )
    img, where = fut.result(timeout=120)
    assert where["worker_name"] == "wa"
    assert img.status == "error" and "does not read" in img.errors[0], img.errors


def test_storage_whose_only_worker_died_is_reported(fleet: dict[str, Any]) -> None:
    # wc alone reads nas-c and has no nanny: SIGKILLed mid-image, nobody can take the
    # image again, and the run reports it after wait_workers instead of waiting for ever.
    client = fleet["client"]
    wc = _start_worker(
        fleet["address"],
        "wc",
        "--storage",
        f"nas-c={fleet['folders']['nas-c']}",
        "--no-clamd",
        "--no-nanny",
    )
    try:
        _wait_workers(client, {"wc"})
        cfg_path = _config(fleet, "orphan", [str(fleet["folders"]["nas-c"] / "c1.qcow2")])
        cfg_path.write_text(cfg_path.read_text().replace("wait_workers = 30", "wait_workers = 5"))

        def killer() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                addr = _wait_workers(client, {"wc"}, 60)["wc"]
                if client.processing(workers=[addr]).get(addr):
                    time.sleep(2)
                    os.killpg(wc.pid, signal.SIGKILL)
                    return
                time.sleep(0.3)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        out = run_nightly(load_config(cfg_path))
        t.join(5)
    finally:
        _stop(wc)
    (img,) = _images(cfg_path).values()
    assert img["status"] == "error"
    assert "no worker that reads storage nas-c" in img["errors"][0], img["errors"]
    assert out.failed == 1


def test_cli_scheduler_local(fleet: dict[str, Any], tmp_path: Path) -> None:
    # `--scheduler local:1` on the command line: a LocalCluster of one worker process.
    cfg_path = _config(fleet, "local", [str(fleet["folders"]["nas-a"] / "a1.qcow2")])
    cfg_path.write_text(cfg_path.read_text().split("[fleet]")[0])  # no scheduler in the file
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmscan",
            "nightly",
            "--config",
            str(cfg_path),
            "--scheduler",
            "local:1",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (img,) = _images(cfg_path).values()
    where = img["sections"]["fleet"]
    assert img["status"] != "error", img["errors"]
    assert where["storages"] == {"local-1": str(fleet["folders"]["nas-a"])}
