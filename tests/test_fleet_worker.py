"""Fleet workers without an appliance: storages as resources, one clamd per worker, arguments."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vmscan.fleet import FleetError, FleetJob, parse_limit, parse_storage

REPO = Path(__file__).resolve().parent.parent


def test_storage_arguments() -> None:
    assert parse_storage("nas1=/srv/../srv/nas1") == ("nas1", os.path.realpath("/srv/nas1"))
    assert parse_limit("nas1=2") == ("nas1", 2)
    for bad in ("nas1", "nas1=", "nas1=relative/path", "bad name=/x", "=/x"):
        with pytest.raises(FleetError):
            parse_storage(bad)
    for bad in ("nas1=0", "nas1=x", "nas1"):
        with pytest.raises(FleetError):
            parse_limit(bad)


def test_longest_storage_folder_wins_and_every_disk_counts(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="needs the fleet extra (vmscan[fleet])")
    from vmscan.fleet.coordinator import _storages_of

    roots = {"big": {"/srv"}, "fast": {"/srv/fast"}, "other": {"/data"}}
    assert _storages_of(FleetJob("vm", ("/srv/fast/a.qcow2",), ()), roots) == (("fast",), "")
    assert _storages_of(FleetJob("vm", ("/srv/slow/a.qcow2",), ()), roots) == (("big",), "")
    # A VM with disks on two storages needs a worker that reads both.
    two = FleetJob("vm", ("/srv/fast/a.qcow2", "/data/b.qcow2"), ())
    assert _storages_of(two, roots) == (("fast", "other"), "")
    # /srvx is not inside /srv.
    assert _storages_of(FleetJob("vm", ("/srvx/a.qcow2",), ()), roots) == ((), "/srvx/a.qcow2")


def _task_clamd_pid(i: int) -> int | None:
    from distributed import get_worker

    plugin = get_worker().plugins["vmscan"]
    return None if plugin.clamd is None else int(plugin.clamd.pid)


def test_one_clamd_per_worker_stopped_with_it(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="needs the fleet extra")
    from vmscan.av.clamd_manager import find_clamd
    from vmscan.fleet.worker import advertised, clamd_pid

    if find_clamd() is None:
        pytest.skip("clamd is not installed (apt-get install clamav-daemon)")
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
            "w1",
            "--storage",
            f"s1={tmp_path}",
            "--storage-limit",
            "s1=3",
            "--nthreads",
            "2",
        ],
        # The worker unpickles this module's task function by name.
        env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
        start_new_session=True,
    )
    try:
        client.wait_for_workers(1, timeout=300)
        (addr,) = client.scheduler_info(n_workers=-1)["workers"]
        info: Any = client.scheduler_info(n_workers=-1)["workers"][addr]
        assert info["resources"] == {"vmscan-storage-s1": 3.0}
        assert client.run(advertised)[addr]["storages"] == {"s1": str(tmp_path)}
        pid = client.run(clamd_pid)[addr]
        assert pid is not None and Path(f"/proc/{pid}/exe").resolve().name == "clamd"
        # Every task sees the same clamd: started once by the plugin, not per task.
        futs = [client.submit(_task_clamd_pid, i, pure=False) for i in range(6)]
        distributed.wait(futs, timeout=120)
        pids = client.gather(futs)
        assert set(pids) == {pid}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        client.close()
        cluster.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "clamd outlived its worker"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """One self-signed certificate for 127.0.0.1, used as CA and by every party."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_between_scheduler_worker_and_nightly(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="needs the fleet extra")
    import dask
    from distributed.security import Security

    from vmscan.fleet.coordinator import _workers, connect

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = _self_signed(tmp_path)
    sec = Security(
        tls_ca_file=str(cert),
        tls_scheduler_cert=str(cert),
        tls_scheduler_key=str(key),
        tls_client_cert=str(cert),
        tls_client_key=str(key),
        require_encryption=True,
    )
    cluster = distributed.LocalCluster(
        n_workers=0,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        protocol="tls",
        security=sec,
    )
    address = cluster.scheduler_address
    assert address.startswith("tls://")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmscan",
            "worker",
            address,
            "--name",
            "w1",
            "--no-clamd",
            "--storage",
            f"s1={tmp_path}",
            "--tls-ca-file",
            str(cert),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        # The nightly's client: TLS from Dask's configuration (the systemd drop-in's
        # DASK_DISTRIBUTED__COMM__TLS__* variables), nothing in vmscan's own config.
        tls = {
            "distributed.comm.tls.ca-file": str(cert),
            "distributed.comm.tls.client.cert": str(cert),
            "distributed.comm.tls.client.key": str(key),
            "distributed.comm.require-encryption": True,
        }
        with dask.config.set(tls), connect(address, []) as client:
            client.wait_for_workers(1, timeout=120)
            (info,) = _workers(client).values()
            assert info["storages"] == {"s1": str(tmp_path)}
        # A plain (unencrypted) client gets no connection.
        with pytest.raises((OSError, TimeoutError)):
            distributed.Client(address.replace("tls://", "tcp://"), timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        cluster.close()


def test_plain_dask_worker_with_the_preload(tmp_path: Path) -> None:
    # `dask worker --preload vmscan.fleet.worker --vmscan-storage NAME=PATH` is the same
    # worker as `vmscan worker` (for sites that already run Dask workers their own way).
    distributed = pytest.importorskip("distributed", reason="needs the fleet extra")
    from vmscan.fleet.worker import advertised

    dask_cli = Path(sys.executable).with_name("dask")
    if not dask_cli.exists():
        pytest.skip(f"{dask_cli} not installed")
    cluster = distributed.LocalCluster(
        n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    client = distributed.Client(cluster)
    proc = subprocess.Popen(
        [
            str(dask_cli),
            "worker",
            cluster.scheduler_address,
            "--nthreads",
            "2",
            "--no-dashboard",
            "--preload",
            "vmscan.fleet.worker",
            "--vmscan-storage",
            f"s1={tmp_path}",
            "--vmscan-storage-limit",
            "s1=2",
            "--vmscan-no-clamd",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"},
        start_new_session=True,
    )
    try:
        client.wait_for_workers(1, timeout=120)
        ((addr, info),) = client.scheduler_info(n_workers=-1)["workers"].items()
        assert info["resources"] == {"vmscan-storage-s1": 2.0}
        assert client.run(advertised)[addr]["storages"] == {"s1": str(tmp_path)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        client.close()
        cluster.close()


def test_bad_scheduler_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="needs the fleet extra")
    from vmscan.cli import main

    cfg = tmp_path / "vmscan.toml"
    cfg.write_text(f'[images]\npaths = ["{tmp_path}"]\n[state]\ndatabase = "{tmp_path}/s.db"\n')
    for bad in ("local:0", "local:x", "8786", "http://host:8786"):
        assert main(["nightly", "--config", str(cfg), "--scheduler", bad]) == 3
    assert not (tmp_path / "s.db").exists()  # refused before anything ran


def test_scheduler_down_every_image_not_scanned(tmp_path: Path) -> None:
    # Nobody listens: each image is stored as not scanned, with the reason; the run
    # completes with exit code 2 (no appliance is started).
    pytest.importorskip("distributed", reason="needs the fleet extra")
    import json
    import socket

    from vmscan.cli import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(imgs / "a.qcow2"), "1M"],
        check=True,
        timeout=60,
    )
    with socket.socket() as s:  # a free port, closed again: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "vmscan.toml"
    cfg.write_text(
        f"""[images]
paths = ["{imgs}"]
[scan]
checks = ["migration"]
[state]
database = "{tmp_path}/s.db"
[reports]
dir = "{tmp_path}/reports"
formats = ["json"]
[fleet]
scheduler = "tcp://127.0.0.1:{port}"
wait_workers = 3
"""
    )
    assert main(["nightly", "--config", str(cfg)]) == 2
    report = json.loads((tmp_path / "reports" / "latest" / "report.json").read_text())
    (img,) = report["images"]
    assert img["status"] == "error"
    assert "cannot reach the scheduler" in img["errors"][0], img["errors"]


def test_worker_with_other_advisories_does_not_scan(tmp_path: Path) -> None:
    # The state database records the coordinator's advisory digest with each result: a
    # worker whose advisories differ must not scan (no appliance is started).
    distributed = pytest.importorskip("distributed", reason="needs the fleet extra")
    import json

    from vmscan.nightly import load_config, run_nightly

    sig = tmp_path / "sig"
    shutil.copytree(REPO / "signatures", sig, ignore=shutil.ignore_patterns("index.sqlite*"))
    (sig / "eol.json").write_text((sig / "eol.json").read_text() + "\n")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(imgs / "a.qcow2"), "1M"],
        check=True,
        timeout=60,
    )
    cluster = distributed.LocalCluster(
        n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmscan",
            "worker",
            cluster.scheduler_address,
            "--name",
            "old",
            "--no-clamd",
            "--storage",
            f"s1={imgs}",
            "--signatures-dir",
            str(sig),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    cfg = tmp_path / "vmscan.toml"
    cfg.write_text(
        f"""[images]
paths = ["{imgs}"]
[scan]
checks = ["patch"]
[state]
database = "{tmp_path}/s.db"
[reports]
dir = "{tmp_path}/reports"
formats = ["json"]
[fleet]
scheduler = "{cluster.scheduler_address}"
wait_workers = 120
"""
    )
    try:
        out = run_nightly(load_config(cfg))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        cluster.close()
    report = json.loads((tmp_path / "reports" / "latest" / "report.json").read_text())
    (img,) = report["images"]
    assert img["status"] == "error" and out.failed == 1
    assert "has other advisories than the coordinator" in img["errors"][0], img["errors"]
    assert img["sections"]["fleet"]["worker_name"] == "old"
