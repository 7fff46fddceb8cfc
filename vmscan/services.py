"""Services a run starts once for all its workers (vmscan's own clamd), for scan and nightly."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from vmscan import runctl
from vmscan.av.clamd_manager import ManagedClamd, clamd_threads
from vmscan.errors import VmscanError
from vmscan.scanner import ScanOptions
from vmscan.sigdir import signatures_dir

log = logging.getLogger(__name__)


@contextlib.contextmanager
def managed_services(opts: ScanOptions) -> Iterator[None]:
    """Start vmscan's own clamd once per run when the antivirus check needs one.

    Its descriptor goes to the workers in memory (``plugin_options["clamd_descriptor"]``);
    it lives in the run's folder and the run's janitor kills it if vmscan is killed.
    """
    if "antivirus" not in opts.checks or opts.plugin_options.get("clamd"):
        yield
        return
    with runctl.run_scope() as run:
        streams = int(opts.plugin_options.get("av_streams") or 4)
        clamd = ManagedClamd(
            signatures_dir(opts.plugin_options) / "clamav",
            threads=clamd_threads(opts.jobs, streams),
            runtime_parent=run.path,
        )
        clamd.on_spawn.append(run.track_process)
        try:
            clamd.start()
        except VmscanError as e:
            # The antivirus check reports it; the other checks still run.
            opts.plugin_options["clamd_error"] = str(e)
            log.error("antivirus: %s", e)
            yield
            return
        try:
            if clamd.runtime_dir is not None and run.path not in clamd.runtime_dir.parents:
                run.track_dir(str(clamd.runtime_dir))
            opts.plugin_options["clamd"] = clamd.address
            opts.plugin_options["clamd_descriptor"] = clamd.descriptor
            yield
        finally:
            clamd.stop()
            opts.plugin_options.pop("clamd", None)
            opts.plugin_options.pop("clamd_descriptor", None)
