"""Benchmarks of the fleet (issue 13): the engine's cost per task, two workers vs one host.

Run with ``make bench`` (after bench_jobs). 200 no-op tasks through a two-worker
``LocalCluster`` (processes) give Dask's own cost per image, restricted by a storage
resource as the nightly's tasks are; then one nightly over the same 4 small fixture
images, once on this host (jobs 2) and once on two ``vmscan worker`` processes (one
thread each, one storage each): the ratio fleet / one host. On one machine the two
workers share its cores, so the ratio shows the fleet's overhead, not a speed-up.
Nothing here asserts a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import distributed

import fixtures
from vmscan.fleet.worker import noop
from vmscan.nightly import load_config, run_nightly

REPO = Path(__file__).resolve().parent.parent
N_TASKS = 200


def bench_noop() -> None:
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            resources={"vmscan-storage-x": 1},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        client.gather(client.map(noop, range(10), pure=False))  # warm-up
        results = {}
        for label, kw in (
            ("unrestricted", {}),
            ("storage resource", {"resources": {"vmscan-storage-x": 1}}),
        ):
            t0 = time.monotonic()
            futs = [client.submit(noop, i, pure=False, **kw) for i in range(N_TASKS)]
            assert client.gather(futs) == list(range(N_TASKS))
            results[label] = time.monotonic() - t0
        for label, t in results.items():
            print(
                f"{N_TASKS} no-op tasks ({label}): {t:.2f} s, {1000 * t / N_TASKS:.1f} ms per task"
            )


def _config(tmp: Path, name: str, scheduler: str | None) -> Path:
    cfg = tmp / f"{name}.toml"
    fleet = f'[fleet]\nscheduler = "{scheduler}"\n' if scheduler else ""
    cfg.write_text(
        f"""fail_on = "none"
[images]
paths = ["{tmp}/a", "{tmp}/b"]
[scan]
checks = ["migration"]
manifest = false
[limits]
jobs = 2
max_per_storage = 2
storage_group = "folder"
[state]
database = "{tmp}/{name}.db"
[reports]
dir = "{tmp}/{name}-reports"
formats = ["json"]
{fleet}"""
    )
    return cfg


def bench_two_workers() -> None:
    image = fixtures.build("data-disk")
    with tempfile.TemporaryDirectory(prefix="vmscan-bench-fleet-") as d:
        tmp = Path(d)
        for s in ("a", "b"):
            (tmp / s).mkdir()
            for i in (1, 2):
                shutil.copyfile(image, tmp / s / f"{s}{i}.qcow2")
        t0 = time.monotonic()
        one = run_nightly(load_config(_config(tmp, "one", None)))
        t_one = time.monotonic() - t0
        cluster = distributed.LocalCluster(
            n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1"
        )
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmscan",
                    "worker",
                    cluster.scheduler_address,
                    "--name",
                    f"w{s}",
                    "--storage",
                    f"{s}={tmp / s}",
                    "--nthreads",
                    "1",
                    "--no-clamd",
                ],
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            for s in ("a", "b")
        ]
        try:
            with distributed.Client(cluster) as c:
                c.wait_for_workers(2, timeout=300)
            t0 = time.monotonic()
            two = run_nightly(load_config(_config(tmp, "two", cluster.scheduler_address)))
            t_two = time.monotonic() - t0
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
            cluster.close()
    print(
        f"4 images, one host (jobs 2): {t_one:.1f} s ({one.scanned} scanned); "
        f"two vmscan workers (1 thread each): {t_two:.1f} s ({two.scanned} scanned); "
        f"ratio two-worker / one-host {t_two / t_one:.2f}"
    )


def main() -> None:
    bench_noop()
    bench_two_workers()


if __name__ == "__main__":
    main()
