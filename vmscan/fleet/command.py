"""``vmscan worker SCHEDULER --storage NAME=PATH``: one fleet worker per hypervisor.

Imports Dask only when run, so ``vmscan --help`` works without the ``fleet`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from vmscan.errors import UsageError

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Register ``worker``."""
    p = subparsers.add_parser(
        "worker",
        help="serve a fleet scheduler: scan the images of the storages this host reads",
        description="A Dask worker for `vmscan nightly --scheduler`: it advertises the "
        "storages it reads (tasks go only to workers that read their image), scans at most "
        "N images of one storage at once, and runs one clamd and one advisory index for "
        "all its tasks. Needs the fleet extra (pip install 'vmscan[fleet]').",
    )
    p.add_argument("scheduler", help="scheduler address, e.g. tcp://10.0.0.5:8786 or tls://…")
    p.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="NAME=PATH",
        required=True,
        help="a storage this host reads: its name in the fleet and its folder (repeatable)",
    )
    p.add_argument(
        "--storage-limit",
        action="append",
        default=[],
        metavar="NAME=N",
        help="images of storage NAME scanned at once on this worker (default --max-per-storage)",
    )
    p.add_argument("--max-per-storage", type=int, default=1, metavar="N", help="default 1")
    p.add_argument(
        "--nthreads",
        type=int,
        default=0,
        metavar="N",
        help="images scanned at once (appliances this host carries; default: cores and RAM)",
    )
    p.add_argument("--name", default=None, help="worker name (default: its address)")
    p.add_argument("--host", default=None, help="address to listen on (default: Dask's)")
    p.add_argument(
        "--no-nanny",
        action="store_true",
        help="no supervising process (by default a nanny restarts a worker that dies)",
    )
    p.add_argument("--no-clamd", action="store_true", help="start no clamd (no antivirus)")
    p.add_argument("--clamd", metavar="ADDR", help="use this running clamd instead of our own")
    p.add_argument("--signatures-dir", metavar="DIR", help="signatures and advisories here")
    p.add_argument("--tls-ca-file", metavar="FILE", help="CA of the fleet (enables TLS)")
    p.add_argument("--tls-cert", metavar="FILE", help="this worker's certificate")
    p.add_argument("--tls-key", metavar="FILE", help="this worker's private key")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until the scheduler goes away or SIGTERM/SIGINT; exit 0."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "vmscan worker needs the fleet extra: pip install 'vmscan[fleet]'"
        ) from exc
    from vmscan.fleet import FleetError
    from vmscan.fleet.worker import preload_argv, storages_from_args

    try:
        storages, limits = storages_from_args(
            tuple(args.storage), tuple(args.storage_limit), args.max_per_storage
        )
    except FleetError as exc:
        raise UsageError(str(exc)) from exc
    if args.nthreads < 0:
        raise UsageError("--nthreads must be at least 1")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_cert and not args.tls_ca_file):
        raise UsageError("TLS needs --tls-ca-file, --tls-cert and --tls-key together")
    argv = preload_argv(
        storages,
        limits,
        clamd=not args.no_clamd,
        clamd_address=args.clamd,
        signatures_dir=args.signatures_dir,
    )
    return asyncio.run(_serve(args, argv))


async def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    import dask
    from distributed import Nanny, Worker
    from distributed.security import Security

    from vmscan.scanner import default_jobs

    # Each task forks the scan's own worker process: a daemonic process may not.
    dask.config.set({"distributed.worker.daemon": False})
    security = None
    if args.tls_ca_file:
        security = Security(
            tls_ca_file=args.tls_ca_file,
            tls_worker_cert=args.tls_cert,
            tls_worker_key=args.tls_key,
            require_encryption=True,
        )
    cls = Worker if args.no_nanny else Nanny
    server = cls(
        args.scheduler,
        nthreads=args.nthreads or default_jobs(),
        name=args.name,
        host=args.host,
        preload=["vmscan.fleet.worker"],
        preload_argv=argv,
        security=security,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server
    log.info("vmscan worker serving %s", args.scheduler)
    finished = asyncio.ensure_future(server.finished())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([finished, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await server.close()
    return 0
