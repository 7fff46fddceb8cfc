"""Fleet coordinator: one Dask task per planned image, placed where its storage is read.

The nightly plans as on one host and hands the images to :func:`run_fleet`, which learns
from the connected workers which storage folders each one reads, restricts every task to
the workers holding the Dask resources of its disks' storages (a resource's quantity on a
worker is that worker's limit for the storage), and gives each result back to the
nightly as soon as it finishes (the nightly alone writes the state database and the
reports). Images whose storage no worker reads are reported as such at once; images
whose last capable worker went away are reported after ``wait_workers`` seconds instead
of waiting for ever. A worker that dies mid-image is the scheduler's to handle: the task
is rescheduled on another worker with the same resources, and after
``distributed.scheduler.allowed-failures`` deaths (1 for ``local:N``: retried once) it
fails with ``KilledWorker``, which becomes the image's reason.

Interrupted (SIGTERM/SIGINT raise :class:`vmscan.runctl.Interrupted` in the nightly), the
results already back are still stored, every other task is cancelled (a worker scanning
one kills its appliance), and a ``local:N`` cluster is closed with its scratch folder; the
nightly marks the run interrupted and exits 128 + the signal, as on one host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask
from distributed import Client, Future, KilledWorker, LocalCluster, wait

from vmscan import runctl
from vmscan.fleet import FleetError, FleetJob, resource_name
from vmscan.fleet.worker import advertised, preload_argv, scan_task
from vmscan.model import ImageResult, ImageStatus

log = logging.getLogger(__name__)

OnDone = Callable[[ImageResult, dict[str, Any]], None]
_REASON_MAX = 600


#: Which data digest each check depends on (as the nightly's state database records them).
def _digest_checks() -> dict[str, str]:
    """The nightly's digest components and the check each belongs to."""
    from vmscan.nightly.digests import COMPONENT_CHECK

    return COMPONENT_CHECK


@dataclass
class FleetSummary:
    """What the fleet did with the images it was given."""

    submitted: int = 0
    finished: int = 0
    failed: int = 0
    unreachable: int = 0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _error(source: str, why: str) -> ImageResult:
    return ImageResult(source=source, status=ImageStatus.ERROR, errors=[why[:_REASON_MAX]])


def _local_storages(jobs: list[FleetJob]) -> dict[str, str]:
    """``local:N``: one storage per folder holding a disk (like ``storage_group = "folder"``)."""
    folders = sorted({os.path.dirname(os.path.realpath(d)) for j in jobs for d in j.disks})
    return {f"local-{i}": f for i, f in enumerate(folders, 1)}


@contextlib.contextmanager
def connect(
    scheduler: str, jobs: list[FleetJob], *, per_storage: int = 1, timeout: float = 60.0
) -> Iterator[Client]:
    """A client of ``tcp://``/``tls://`` scheduler, or of a ``local:N`` cluster made here.

    ``local:N`` is one worker process with N threads (N appliances at once) reading every
    folder that holds a disk, each folder a storage limited to *per_storage*: the same
    placement and limits as a fleet, on one machine.
    """
    with contextlib.ExitStack() as stack:
        if scheduler.startswith("local:"):
            try:
                threads = int(scheduler.partition(":")[2])
            except ValueError:
                threads = 0
            if threads < 1:
                raise FleetError(f"--scheduler local:N wants N >= 1, got {scheduler[:100]!r}")
            storages = _local_storages(jobs)
            # The scratch space of the scheduler and workers (Dask makes and leaves
            # $TMPDIR/dask-scratch-space): a folder of this run, removed after the cluster.
            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="vmscan-fleet-", ignore_cleanup_errors=True)
            )
            stack.enter_context(
                dask.config.set(
                    {
                        # Tasks fork the scan worker: a daemonic process may not have children.
                        "distributed.worker.daemon": False,
                        "distributed.scheduler.allowed-failures": 1,
                        "temporary-directory": scratch,
                    }
                )
            )
            # A SIGTERM in the middle of the start would leave a half-made cluster that
            # nothing closes (its worker process reaped, if at all, at exit): it waits
            # until the cluster is on the stack, which then closes it.
            with runctl.deferred_interrupts():
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=1,
                        threads_per_worker=threads,
                        processes=True,
                        dashboard_address=None,
                        host="127.0.0.1",
                        local_directory=scratch,
                        preload=["vmscan.fleet.worker"],
                        preload_argv=preload_argv(
                            storages,
                            dict.fromkeys(storages, per_storage),
                            # No clamd for a night without the antivirus check.
                            clamd=any("antivirus" in j.checks for j in jobs),
                        ),
                    )
                )
                client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(scheduler, timeout=timeout))
        yield client


def _workers(client: Client) -> dict[str, dict[str, Any]]:
    """Connected workers with the vmscan plugin: address -> host, storages, limits."""
    got = client.run(advertised, on_error="return")
    return {a: v for a, v in got.items() if isinstance(v, dict)}


def _live_resources(client: Client) -> list[set[str]]:
    info = client.scheduler_info(n_workers=-1)
    return [set((w.get("resources") or {}).keys()) for w in info.get("workers", {}).values()]


def _storages_of(job: FleetJob, roots: dict[str, set[str]]) -> tuple[tuple[str, ...], str]:
    """The storage names holding each disk (longest folder wins), or why there is none."""
    names: list[str] = []
    for disk in job.disks:
        real = os.path.realpath(disk)
        best: tuple[int, str] | None = None
        for name, paths in roots.items():
            for p in paths:
                if real == p or real.startswith(p.rstrip("/") + "/"):
                    cand = (len(p), name)
                    best = cand if best is None or cand > best else best
        if best is None:
            return (), disk
        if best[1] not in names:
            names.append(best[1])
    return tuple(names), ""


def _retries(client: Client, key: str) -> int:
    def suspicious(dask_scheduler: Any, key: str) -> int:
        ts = dask_scheduler.tasks.get(key)
        return int(ts.suspicious) if ts is not None else 0

    with contextlib.suppress(Exception):
        return int(client.run_on_scheduler(suspicious, key=key))
    return 0


def run_fleet(
    scheduler: str,
    jobs: list[FleetJob],
    make_opts: Callable[[tuple[str, ...]], Any],
    on_done: OnDone,
    *,
    per_storage: int = 1,
    wait_workers: float = 120.0,
    poll: float = 2.0,
    digests: dict[str, str] | None = None,
) -> FleetSummary:
    """Scan *jobs* on the fleet; ``on_done(result, where)`` per image as it finishes.

    *digests*: the nightly's signature/advisory digests (``signatures``, ``advisories``),
    which every worker must have too for the checks it runs.
    """
    summary = FleetSummary()
    if not jobs:
        return summary
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(
                connect(scheduler, jobs, per_storage=per_storage, timeout=max(wait_workers, 5))
            )
        except (OSError, TimeoutError) as exc:
            # Nothing could be sent: every image is "not scanned", stored as such, and the
            # run completes (exit 2) instead of dying with the scheduler.
            log.error("fleet: cannot reach the scheduler %s: %s", scheduler, exc)
            for j in jobs:
                summary.unreachable += 1
                on_done(
                    _error(
                        j.source,
                        f"not scanned: cannot reach the scheduler {scheduler}: "
                        f"{type(exc).__name__}: {exc}",
                    ),
                    {"unreachable": True},
                )
            return summary
        try:
            client.wait_for_workers(1, timeout=wait_workers)
        except (TimeoutError, OSError) as exc:
            log.error("fleet: no worker connected to %s within %g s", scheduler, wait_workers)
            for j in jobs:
                summary.unreachable += 1
                on_done(
                    _error(
                        j.source,
                        f"not scanned: no worker connected to the scheduler "
                        f"within {wait_workers:g} s ({exc})",
                    ),
                    {"unreachable": True},
                )
            return summary
        workers = _workers(client)
        summary.workers = workers
        roots: dict[str, set[str]] = {}
        for w in workers.values():
            for name, path in (w.get("storages") or {}).items():
                roots.setdefault(name, set()).add(path)
        log.info(
            "fleet: %d worker(s); storages %s",
            len(workers),
            {n: sorted(p) for n, p in roots.items()},
        )
        for addr, w in workers.items():
            differ = sorted(
                k for k, v in (digests or {}).items() if (w.get("digests") or {}).get(k) != v
            )
            if differ:
                log.warning(
                    "fleet: worker %s (%s) has other %s than this host: its images are "
                    "reported not scanned",
                    addr,
                    w.get("host"),
                    " and ".join(differ),
                )
        pending: dict[Future[Any], tuple[FleetJob, tuple[str, ...]]] = {}
        orphaned_since: dict[Future[Any], float] = {}
        try:
            _submit(client, jobs, roots, make_opts, on_done, digests, summary, pending)
            while pending:
                try:
                    done, _ = wait(list(pending), timeout=poll, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within poll: check reachability
                    done = set()
                for fut in done:
                    j, names = pending.pop(fut)
                    orphaned_since.pop(fut, None)
                    _deliver(client, fut, j, names, on_done, summary)
                # A task no live worker can take would wait for ever: give up on it after
                # wait_workers seconds (a restarting worker comes back well before).
                live = _live_resources(client)
                now = time.monotonic()
                for fut, (j, names) in list(pending.items()):
                    need = {resource_name(n) for n in names}
                    if any(need <= r for r in live):
                        orphaned_since.pop(fut, None)
                        continue
                    since = orphaned_since.setdefault(fut, now)
                    if now - since >= wait_workers:
                        pending.pop(fut)
                        orphaned_since.pop(fut)
                        fut.cancel()
                        summary.unreachable += 1
                        on_done(
                            _error(
                                j.source,
                                f"not scanned: no worker that reads storage "
                                f"{', '.join(names)} has been connected for "
                                f"{wait_workers:g} s (the workers that did went away)",
                            ),
                            {"unreachable": True, "storages": list(names)},
                        )
        except KeyboardInterrupt:  # runctl.Interrupted (SIGTERM, SIGINT) or ^C
            # Results that had already come back are stored, as the single-host pool keeps
            # those waiting in its workers' pipes; the nightly then marks the run.
            for fut, (j, names) in list(pending.items()):
                if fut.status == "finished":
                    pending.pop(fut)
                    with contextlib.suppress(Exception):
                        _deliver(client, fut, j, names, on_done, summary, timeout=30)
            raise
        finally:
            # Every task not delivered is cancelled: queued ones are dropped, and a worker
            # still scanning one stops its appliance (vmscan.fleet.worker polls for that).
            if pending:
                with contextlib.suppress(Exception):
                    client.cancel(list(pending))
    return summary


def _submit(
    client: Client,
    jobs: list[FleetJob],
    roots: dict[str, set[str]],
    make_opts: Callable[[tuple[str, ...]], Any],
    on_done: OnDone,
    digests: dict[str, str] | None,
    summary: FleetSummary,
    pending: dict[Future[Any], tuple[FleetJob, tuple[str, ...]]],
) -> None:
    """One task per job, placed by storage, into *pending* as each is sent (an interrupt
    in between leaves there exactly what must be cancelled); unreachable ones reported."""
    opts_by_checks: dict[tuple[str, ...], Any] = {}
    # Keys unique to this run: a task of an earlier, interrupted night may still be
    # executing (cancelled) on a worker, and the same key would resume it and take its
    # result for tonight's.
    token = uuid.uuid4().hex[:12]
    for j in jobs:
        names, missing = _storages_of(j, roots)
        if missing:
            summary.unreachable += 1
            known = ", ".join(f"{n}={','.join(sorted(p))}" for n, p in sorted(roots.items()))
            on_done(
                _error(
                    j.source,
                    f"not scanned: no connected worker reads {missing[:300]} "
                    f"(storages the workers read: {known or 'none'})",
                ),
                {"unreachable": True},
            )
            continue
        opts = opts_by_checks.get(j.checks)
        if opts is None:
            opts = opts_by_checks[j.checks] = make_opts(j.checks)
        wanted = {k: v for k, v in (digests or {}).items() if _digest_checks().get(k) in j.checks}
        fut = client.submit(
            scan_task,
            j,
            names,
            opts,
            wanted,
            resources={resource_name(n): 1 for n in names},
            pure=False,
            key=f"vmscan-scan-{token}-{summary.submitted}-{os.path.basename(j.source)[:80]}",
        )
        summary.submitted += 1
        pending[fut] = (j, names)


def _deliver(
    client: Client,
    fut: Future[Any],
    job: FleetJob,
    names: tuple[str, ...],
    on_done: OnDone,
    summary: FleetSummary,
    *,
    timeout: float | None = None,
) -> None:
    retries = _retries(client, str(fut.key))
    if fut.status == "finished":
        try:
            img, where = fut.result(timeout=timeout)
        except Exception as exc:  # a result that does not unpickle: that image only
            img, where = _error(job.source, f"the worker's result could not be read: {exc}"), {}
        where["retries"] = retries
        summary.finished += 1
        on_done(img, where)
        return
    err = fut.exception() if fut.status == "error" else None
    summary.failed += 1
    if isinstance(err, KilledWorker):
        why = (
            f"not scanned: every worker that took it died while scanning it (killed or "
            f"crashed; {retries} tries on workers reading {', '.join(names)}): {err}"
        )
    elif err is not None:
        why = f"the scan task failed on the worker: {type(err).__name__}: {err}"
    else:
        why = f"the scan task ended as {fut.status}"
    on_done(_error(job.source, why), {"retries": retries, "storages": list(names)})
