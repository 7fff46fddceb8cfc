"""Fleet worker: what a Dask worker reads (storages), its one clamd and advisory index, the task.

Loaded with ``vmscan worker SCHEDULER --storage NAME=PATH`` or ``dask worker SCHEDULER
--preload vmscan.fleet.worker --vmscan-storage NAME=PATH``: :func:`dask_setup` runs before
the worker registers, so the scheduler learns its storages (as Dask resources
``vmscan-storage-NAME``, quantity = how many images of that storage it scans at once)
together with the worker itself. The plugin starts one clamd and compiles the advisory
index once per worker (one worker per host), and stops clamd when the worker stops.

The task scans one image in a forked child exactly as ``vmscan scan`` does (its own
process group, per-image timeout, folders removed), with a run folder of its own so that
tasks running side by side in the worker's threads do not share one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from distributed import Worker, WorkerPlugin, get_worker

from vmscan.errors import VmscanError
from vmscan.fleet import (
    PLUGIN_NAME,
    FleetError,
    FleetJob,
    parse_limit,
    parse_storage,
    resource_name,
    under,
)
from vmscan.model import ImageResult, ImageStatus, ScanResult

log = logging.getLogger(__name__)

#: Options that name things on one host: the coordinator's are replaced by the worker's.
HOST_OPTIONS = (
    "clamd",
    "clamd_descriptor",
    "clamd_error",
    "advisory_index",
    "signatures_dir",
    "advisories_dir",
)


class VmscanWorker(WorkerPlugin):
    """Storages this worker reads; one clamd and one advisory index for all its tasks."""

    name = PLUGIN_NAME

    def __init__(
        self,
        storages: dict[str, str],
        limits: dict[str, int],
        *,
        clamd: bool = True,
        clamd_address: str | None = None,
        signatures_dir: str | None = None,
    ) -> None:
        self.storages = dict(storages)
        self.limits = dict(limits)
        self.want_clamd = clamd
        self.clamd_address = clamd_address
        self.signatures_dir = signatures_dir
        self.options: dict[str, Any] = {}
        self.host = socket.gethostname()
        self.clamd: Any = None
        self._tmp: str | None = None
        self.digests: dict[str, str] = {}

    def setup(self, worker: Worker) -> None:
        """Compile the advisory index and start clamd (once, for every task of this worker)."""
        from vmscan.sigdir import signatures_dir

        sig = Path(self.signatures_dir) if self.signatures_dir else signatures_dir()
        self.options = {"signatures_dir": str(sig)}
        with contextlib.suppress(ImportError, OSError, ValueError, VmscanError):
            from vmscan.advisories import prepare

            prepare(self.options)
        self.digests = _data_digests(sig)
        if self.clamd_address:
            self.options["clamd"] = self.clamd_address
        elif not self.want_clamd:
            self.options["clamd_error"] = (
                f"worker {self.host} runs no clamd (started with --no-clamd)"
            )
        else:
            self._start_clamd(sig, worker)

    def _start_clamd(self, sig: Path, worker: Worker) -> None:
        from vmscan.av.clamd_manager import ManagedClamd, clamd_threads

        self._tmp = tempfile.mkdtemp(prefix="vmscan-worker-")
        # Started by the worker's main thread (the event loop's), which lives as long as
        # the worker: PR_SET_PDEATHSIG fires when the starting thread ends.
        clamd = ManagedClamd(
            sig / "clamav",
            threads=clamd_threads(max(1, int(worker.state.nthreads)), 4),
            runtime_parent=self._tmp,
        )
        try:
            clamd.start()
        except VmscanError as exc:
            # The antivirus check reports it on each image; the other checks still run.
            self.options["clamd_error"] = f"worker {self.host}: {exc}"
            log.error("antivirus: %s", exc)
            return
        self.clamd = clamd
        self.options["clamd"] = clamd.address
        self.options["clamd_descriptor"] = clamd.descriptor

    def teardown(self, worker: Worker) -> None:
        """Stop clamd and remove its folder."""
        if self.clamd is not None:
            with contextlib.suppress(Exception):
                self.clamd.stop()
            self.clamd = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


#: What a differing digest component means, in the message of a refused task.
_WHAT = {
    "antivirus": "antivirus signatures",
    "patch": "advisories",
    "patch:windows": "Windows update tables",
    "license": "licence tables",
    "migration": "migration tables",
}


def _data_digests(sig: Path) -> dict[str, str]:
    """This host's signature and advisory digests, computed as the nightly computes its own."""
    try:
        from vmscan.nightly import NightlyConfig, data_digests

        return data_digests(NightlyConfig(path=sig, signatures_dir=str(sig)))
    except Exception as exc:  # a digest that cannot be made: compared as unknown
        log.warning("cannot compute the data digests of %s: %s", sig, exc)
        return {}


def _plugin(worker: Worker | None = None) -> VmscanWorker:
    plugin = (worker or get_worker()).plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, VmscanWorker):
        raise RuntimeError(
            "this Dask worker has no vmscan plugin: start it with `vmscan worker` or "
            "`dask worker --preload vmscan.fleet.worker`"
        )
    return plugin


def advertised(dask_worker: Worker) -> dict[str, Any]:
    """What this worker reads (``client.run`` on every worker by the coordinator)."""
    plugin = _plugin(dask_worker)
    return {
        "host": plugin.host,
        "storages": plugin.storages,
        "limits": plugin.limits,
        "digests": plugin.digests,
    }


def clamd_pid(dask_worker: Worker) -> int | None:
    """The pid of this worker's clamd (``client.run``; tests, operators)."""
    clamd = _plugin(dask_worker).clamd
    return None if clamd is None else int(clamd.pid)


def noop(i: int) -> int:
    """A task that does nothing (the benchmark of the engine's own cost per task)."""
    return i


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _cancelled_check(worker: Worker) -> Callable[[], bool] | None:
    """A callable telling whether this task was cancelled (None outside a Dask task).

    A client that cancels a future, or goes away, makes the scheduler release the key; a
    worker still executing it marks it ``cancelled`` and lets the thread run on. The scan
    polls this to kill its appliance instead of finishing an image nobody will read.
    """
    try:
        key = worker.get_current_task()
    except KeyError:  # not called from a task's thread
        return None

    def cancelled() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state == "cancelled"

    return cancelled


def scan_task(
    job: FleetJob,
    storages: tuple[str, ...],
    opts: Any,
    digests: dict[str, str] | None = None,
) -> tuple[ImageResult, dict[str, Any]]:
    """Scan one image on this worker; the result and where/when it was scanned.

    *digests* are the coordinator's signature/advisory digests for the checks of this
    job: the state database records them with the result, so a worker whose data differ
    does not scan (its result would be stored as made with data it was not made with).
    """
    from vmscan import SCHEMA_VERSION, __version__, pool, runctl, scanner

    worker = get_worker()
    plugin = _plugin()
    started = time.time()
    where: dict[str, Any] = {
        "worker": str(worker.address),
        "worker_name": str(worker.name),
        "host": plugin.host,
        "pid": os.getpid(),
        "storages": {n: plugin.storages.get(n, "") for n in storages},
    }
    # The scheduler placed the task by resources; the paths are checked here as well,
    # since a worker must never open an image outside the folders it was given.
    outside = [
        d for d in job.disks if not any(under(d, plugin.storages.get(n, "\0")) for n in storages)
    ]
    differ = sorted(
        _WHAT.get(k, k) for k, v in (digests or {}).items() if plugin.digests.get(k) != v
    )
    if differ:
        res = ImageResult(
            source=job.source,
            status=ImageStatus.ERROR,
            errors=[
                f"not scanned: worker {plugin.host} ({worker.address}) has other "
                f"{' and '.join(differ)} than the coordinator; update its signatures folder"
            ],
        )
    elif outside:
        res = ImageResult(
            source=job.source,
            status=ImageStatus.ERROR,
            errors=[
                f"worker {plugin.host} ({worker.address}) does not read {outside[0][:300]}: "
                "not inside its storage folders; not scanned"
            ],
        )
    else:
        host_opts = {k: v for k, v in opts.plugin_options.items() if k not in HOST_OPTIONS}
        wopts = dataclasses.replace(
            opts,
            jobs=1,
            state_db=None,  # the coordinator alone writes the state database
            quiet=True,
            plugin_options={**host_opts, **plugin.options},
        )
        result = ScanResult(
            schema_version=SCHEMA_VERSION,
            vmscan_version=__version__,
            started_at=scanner.now_iso(),
        )
        # A run folder per task: the worker's threads run tasks side by side.
        run = runctl.RunDir()
        try:
            pool.run_images(
                run,
                result,
                [job.source],
                worker=scanner._worker,
                worker_args=(wopts,),
                jobs=1,
                timeout=wopts.timeout,
                clock=scanner.now_iso,
                cancelled=_cancelled_check(worker),
            )
        finally:
            run.close()
        res = result.images[0]
        if pool.CANCELLED in res.errors:
            # Nobody reads this result; the operator reads the worker's log.
            log.warning(
                "%s: scan cancelled by the coordinator; its appliance was stopped", job.source
            )
    finished = time.time()
    where.update(
        started_at=_iso(started),
        finished_at=_iso(finished),
        started_ts=round(started, 3),
        finished_ts=round(finished, 3),
    )
    return res, where


def storages_from_args(
    storage: tuple[str, ...], limit: tuple[str, ...], per_storage: int
) -> tuple[dict[str, str], dict[str, int]]:
    """``NAME=PATH`` and ``NAME=N`` options -> storages and per-storage limits."""
    if per_storage < 1:
        raise FleetError("--max-per-storage must be at least 1")
    storages: dict[str, str] = {}
    for s in storage:
        name, path = parse_storage(s)
        if name in storages and storages[name] != path:
            raise FleetError(f"storage {name} given twice with different paths")
        storages[name] = path
    if not storages:
        raise FleetError("a vmscan worker needs at least one --storage NAME=PATH")
    limits = {n: per_storage for n in storages}
    for s in limit:
        name, n = parse_limit(s)
        if name not in storages:
            raise FleetError(f"--storage-limit {name}: no --storage {name}=PATH")
        limits[name] = n
    return storages, limits


@click.command()
@click.option("--vmscan-storage", "storage", multiple=True, help="NAME=PATH this worker reads")
@click.option("--vmscan-storage-limit", "limit", multiple=True, help="NAME=N images at once")
@click.option("--vmscan-max-per-storage", "per_storage", type=int, default=1)
@click.option("--vmscan-no-clamd", "no_clamd", is_flag=True, default=False)
@click.option("--vmscan-clamd", "clamd_address", default=None, help="use a running clamd")
@click.option("--vmscan-signatures-dir", "signatures_dir", default=None)
async def dask_setup(
    worker: Any,
    storage: tuple[str, ...],
    limit: tuple[str, ...],
    per_storage: int,
    no_clamd: bool,
    clamd_address: str | None,
    signatures_dir: str | None,
) -> None:
    """Dask preload: advertise the storages as resources and add the plugin (before registering)."""
    if not isinstance(worker, Worker):
        raise RuntimeError("vmscan.fleet.worker is a worker preload (dask worker --preload)")
    storages, limits = storages_from_args(storage, limit, per_storage)
    for name, n in limits.items():
        res = resource_name(name)
        # Registration sends total_resources: set before it, the scheduler never sees this
        # worker without its storages.
        worker.state.total_resources[res] = float(n)
        worker.state.available_resources[res] = float(n)
    plugin = VmscanWorker(
        storages,
        limits,
        clamd=not no_clamd,
        clamd_address=clamd_address,
        signatures_dir=signatures_dir,
    )
    await worker.plugin_add(plugin, name=PLUGIN_NAME, catch_errors=False)
    log.info("vmscan worker %s reads %s", worker.address, storages)


def preload_argv(
    storages: dict[str, str],
    limits: dict[str, int],
    *,
    clamd: bool = True,
    clamd_address: str | None = None,
    signatures_dir: str | None = None,
) -> list[str]:
    """The preload's arguments for these settings (``vmscan worker``, ``local:N``)."""
    argv: list[str] = []
    for name, path in storages.items():
        argv += ["--vmscan-storage", f"{name}={path}"]
    for name, n in limits.items():
        argv += ["--vmscan-storage-limit", f"{name}={n}"]
    if not clamd:
        argv.append("--vmscan-no-clamd")
    if clamd_address:
        argv += ["--vmscan-clamd", clamd_address]
    if signatures_dir:
        argv += ["--vmscan-signatures-dir", signatures_dir]
    return argv
