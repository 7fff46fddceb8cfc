"""One night: lock, plan, scan what changed, store per image, reports, retention."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmscan import __version__
from vmscan.completeness import (
    EXIT_IMAGE_ERROR,
    EXIT_OK,
    exit_code,
    incomplete_plugins,
)
from vmscan.document import ImageDoc
from vmscan.errors import VmscanError
from vmscan.faults import stop_point
from vmscan.model import ImageResult, ScanResult
from vmscan.nightly.av_recheck import _av_engine, _av_full_scan, hash_recheck, prune_verdicts
from vmscan.nightly.config import NightlyConfig
from vmscan.nightly.digests import data_digests, default_signatures_dir, scan_key_for
from vmscan.nightly.discovery import discover
from vmscan.nightly.merge import (
    OFFLINE_CHECKS,
    _error_result,
    build_report_document,
    offline_recheck,
    summarize,
)
from vmscan.nightly.metrics import write_metrics
from vmscan.nightly.plan import PlanItem, plan
from vmscan.nightly.unit import (
    ScanFn,
    image_result,
    make_scan_options,
    plugin_options,
)
from vmscan.report.layout import remove_run_dir
from vmscan.state import RUN_COMPLETE, RUN_FAILED, RUN_INTERRUPTED, StateDB, utcnow

log = logging.getLogger(__name__)


class BusyError(VmscanError):
    """Another nightly job holds the state database's lock."""


# --------------------------------------------------------------------------------------
# The night


@dataclass
class NightlyOutcome:
    """What a nightly run did."""

    run_id: int | None
    exit_code: int
    plan: list[PlanItem]
    scanned: int = 0
    failed: int = 0
    skipped: int = 0
    partial_rescans: int = 0
    duration_s: float = 0.0
    reports: list[Path] = field(default_factory=list)
    findings_by_severity: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    expired_runs: list[int] = field(default_factory=list)
    error: str = ""
    # Plugins that did not complete in this run's results, by name; images concerned.
    checks_incomplete: dict[str, int] = field(default_factory=dict)
    images_incomplete: int = 0
    metrics_written: bool = False


@contextlib.contextmanager
def run_lock(db_path: Path) -> Iterator[None]:
    """One nightly per state database at a time (flock on ``<db>.lock``)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db_path.with_name(db_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BusyError(
                f"another vmscan nightly is running with {db_path} (lock {lock_path})"
            ) from exc
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _services(opts: Any) -> Iterator[None]:
    """vmscan's own clamd for the run, as ``vmscan scan`` does."""
    from vmscan.services import managed_services

    with managed_services(opts):
        yield


def run_nightly(
    cfg: NightlyConfig,
    *,
    scan_fn: ScanFn | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    manage_services: bool | None = None,
) -> NightlyOutcome:
    """One night: plan, scan what changed, store per image, report, expire, metrics."""
    t0 = time.monotonic()
    real_scanner = scan_fn is None
    # Looked up on the package: the seam a test replaces in a child process
    # (``vmscan.nightly._default_scan_fn = ...``) before calling the CLI.
    import vmscan.nightly as package

    scan = scan_fn or package._default_scan_fn()
    if manage_services is None:
        manage_services = real_scanner
    discovery = discover(cfg)
    for w in discovery.warnings:
        log.warning("%s", w)
    outcome = NightlyOutcome(
        run_id=None, exit_code=EXIT_OK, plan=[], warnings=list(discovery.warnings)
    )
    digests = data_digests(cfg)
    try:
        with run_lock(cfg.state_db), StateDB(cfg.state_db) as db:
            for rid in db.recovered:
                outcome.warnings.append(
                    f"run {rid} had been interrupted; its finished images are reused"
                )
            for run in db.list_runs(status=RUN_INTERRUPTED):
                # Whatever reports an interrupted run had begun are incomplete (``latest``
                # never pointed there); `vmscan report --run N` rebuilds them from the DB.
                remove_run_dir(cfg.reports_dir, run.id)
            items = plan(cfg, discovery.sources, db, digests)
            outcome.plan = items
            run_id = db.begin_run(
                config_digest=cfg.digest(),
                vmscan_version=__version__,
                checks=cfg.checks,
                digests=digests,
            )
            outcome.run_id = run_id
            log.info(
                "run %d: %d source(s): %s",
                run_id,
                len(items),
                dict(Counter(i.action for i in items)),
            )
            try:
                _execute(cfg, db, run_id, items, digests, scan, outcome, manage_services)
                _finish(cfg, db, run_id, outcome, discovery.warnings, metrics_path, t0)
            except BaseException as exc:
                interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
                status = RUN_INTERRUPTED if interrupted else RUN_FAILED
                with contextlib.suppress(VmscanError):
                    db.finish_run(run_id, status, error=f"{type(exc).__name__}: {exc}")
                log.error("run %d %s: %s", run_id, status, exc)
                raise
    except BaseException as exc:
        if isinstance(exc, BusyError):
            # The run that holds the lock owns the metrics file: left alone.
            outcome.metrics_written = True
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        code = int(getattr(exc, "exit_code", 130))  # 128 + signal (runctl.Interrupted)
        outcome.exit_code = code if interrupted else EXIT_IMAGE_ERROR
        outcome.error = outcome.error or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        outcome.duration_s = round(time.monotonic() - t0, 3)
        if metrics_path is not None and not outcome.metrics_written:
            write_metrics(metrics_path, outcome)
    return outcome


def _execute(
    cfg: NightlyConfig,
    db: StateDB,
    run_id: int,
    items: list[PlanItem],
    digests: dict[str, str],
    scan: ScanFn,
    outcome: NightlyOutcome,
    manage_services: bool,
) -> None:
    by_source: dict[str, PlanItem] = {}
    for it in items:
        by_source[it.source.path] = it
        by_source.setdefault(os.path.realpath(it.source.path), it)
    done: set[str] = set()
    # Partial items whose offline checks already ran: the merge base of their scan.
    bases: dict[str, dict[str, Any]] = {}
    offline_done: dict[str, tuple[str, ...]] = {}

    def store(
        item: PlanItem,
        result: dict[str, Any],
        *,
        carried: bool = False,
        origin: int | None = None,
        ident: dict[str, Any] | None = None,
        offline: bool = False,
    ) -> None:
        store_image_result(
            db,
            run_id,
            item,
            result,
            digests,
            carried=carried,
            origin=origin,
            ident=ident,
            offline=offline,
            offline_checks=offline_done.get(item.source.path, ()),
        )
        done.add(item.source.path)

    for it in items:
        if it.action == "error":
            store(it, _error_result(it.source.path, it.reason))
            outcome.failed += 1
        elif it.action == "carry":
            prev = db.latest_image_row(it.source.path)
            assert prev is not None
            result = db.load_result(prev.result_digest)
            store(it, result, carried=True, origin=prev.origin_run_id, ident=it.identity)
            outcome.skipped += 1

    errors_before = outcome.failed  # sources that were errors before any scan

    def on_image_done(img: ImageResult, placement: dict[str, Any] | None = None) -> None:
        item = by_source.get(img.source) or by_source.get(os.path.realpath(img.source))
        if item is None or item.source.path in done:
            log.warning("scanner returned an unexpected source %r", img.source)
            return
        if outcome.scanned + outcome.failed - errors_before >= 1:
            stop_point("scanning")  # tests: SIGKILL with one scanned result stored, more running
        base = bases.get(item.source.path)
        if base is None and item.action == "partial" and item.previous_digest:
            base = db.load_result(item.previous_digest)
        result, ident = image_result(cfg, item, img, base)
        if placement is not None:  # fleet: which worker and host scanned it, when, retries
            result.setdefault("sections", {})["fleet"] = placement
        if result.get("status") == "error":
            outcome.failed += 1
            log.error("%s: %s", item.source.path, "; ".join(result.get("errors") or []) or "error")
        else:
            outcome.scanned += 1
            if item.action == "partial":
                outcome.partial_rescans += 1
        store(item, result, ident=ident)
        log.info("%s: %s", item.source.path, result.get("status"))

    offline_options: dict[str, Any] | None = None
    sig_dir = Path(cfg.signatures_dir) if cfg.signatures_dir else default_signatures_dir()
    for it in items:
        if it.action != "partial" or not it.previous_digest:
            continue
        inventory = tuple(c for c in it.checks if c in OFFLINE_CHECKS)
        if not inventory and not (it.av_hashes_only and "antivirus" in it.checks):
            continue
        rechecked = db.load_result(it.previous_digest)
        done_here: list[str] = []
        if it.av_hashes_only and "antivirus" in it.checks:
            hashed = hash_recheck(rechecked, sig_dir)
            if hashed is not None:
                rechecked = hashed
                done_here.append("antivirus")
        if inventory:
            if offline_options is None:
                offline_options = {**plugin_options(cfg), "state_db": str(cfg.state_db)}
            again = offline_recheck(rechecked, inventory, offline_options)
            if again is not None:
                rechecked = again
                done_here.extend(inventory)
        if not done_here:
            continue
        offline = tuple(c for c in it.checks if c in done_here)
        online = tuple(c for c in it.checks if c not in done_here)
        rechecked.setdefault("errors", [])
        if online:
            # The rest needs the appliance: scanned for those checks only, merged into this.
            bases[it.source.path], offline_done[it.source.path] = rechecked, offline
            it.checks = online
            log.info("%s: re-checked %s offline", it.source.path, ", ".join(offline))
            continue
        ident = None if incomplete_plugins(rechecked) else it.identity
        store(it, rechecked, ident=ident, offline=True)
        outcome.partial_rescans += 1
        log.info("%s: re-checked %s without opening it", it.source.path, ", ".join(it.checks))

    to_scan = [
        it for it in items if it.action in ("scan", "partial") and it.source.path not in done
    ]
    if cfg.scheduler:
        # --- fleet hook (issue 13): one Dask task per image; everything else in vmscan.fleet.
        from vmscan.fleet import FleetJob
        from vmscan.fleet.coordinator import run_fleet

        run_fleet(
            cfg.scheduler,
            [
                FleetJob(w.source.path, tuple(w.source.disks) or (w.source.path,), w.checks)
                for w in to_scan
            ],
            lambda checks: make_scan_options(cfg, checks, 1),
            on_image_done,
            per_storage=cfg.max_per_storage,
            wait_workers=cfg.fleet_wait_workers,
            digests=digests,
        )
        for w in to_scan:
            if w.source.path not in done:
                store(w, _error_result(w.source.path, "the fleet returned no result"))
                outcome.failed += 1
        return
        # --- end of the fleet hook
    by_checks: dict[tuple[tuple[str, ...], str], list[PlanItem]] = {}
    for it in to_scan:
        by_checks.setdefault((it.checks, it.av_scope), []).append(it)

    def _collect(group: list[PlanItem], scanned: ScanResult) -> None:
        # A scan function that returns results without calling back is fine too.
        for img in scanned.images:
            item = by_source.get(img.source)
            if item is not None and item.source.path not in done:
                on_image_done(img)
        for w in group:
            if w.source.path not in done:
                store(w, _error_result(w.source.path, "the scanner returned no result"))
                outcome.failed += 1

    with contextlib.ExitStack() as night:
        # One managed clamd for the whole night (started when the first scan needs it),
        # sized for cfg.jobs; each scan's options get its descriptor in memory.
        shared: dict[str, Any] | None = None
        for (checks, av_scope), group in by_checks.items():
            # One pool for the group, a semaphore per storage inside it (vmscan.pool).
            jobs = min(cfg.jobs, len(group))
            opts = make_scan_options(cfg, checks, jobs)
            opts.storage = {w.source.path: w.storage for w in group}
            opts.max_per_storage = cfg.max_per_storage
            if av_scope:
                opts.plugin_options["av_scope"] = av_scope  # a bounded re-check
            if manage_services and shared is None and "antivirus" in checks:
                night_opts = make_scan_options(cfg, tuple(cfg.checks), cfg.jobs)
                night.enter_context(_services(night_opts))
                shared = night_opts.plugin_options
            for key in _SHARED_SERVICE_KEYS:
                if shared is not None and key in shared:
                    opts.plugin_options[key] = shared[key]
            scanned = scan([w.source.path for w in group], opts, on_image_done=on_image_done)
            _collect(group, scanned)


#: What the night's managed services hand to every scan (in memory, never a file).
_SHARED_SERVICE_KEYS = ("clamd", "clamd_descriptor", "clamd_error")


def store_image_result(
    db: StateDB,
    run_id: int,
    item: PlanItem,
    result: dict[str, Any],
    digests: dict[str, str],
    *,
    carried: bool = False,
    origin: int | None = None,
    ident: dict[str, Any] | None = None,
    offline: bool = False,
    offline_checks: tuple[str, ...] = (),
) -> None:
    """Store one image's result of run *run_id* (one transaction), with what the next
    night's plan reads back: identity, base key, digests, OS types, the scan key (empty
    when ``ident`` is None: never carried forward) and the antivirus "clean as of"."""
    meta = None
    scan_key = ""
    if ident is not None:
        # The digests this result depends on follow from its OS types (the plan of the
        # next night reads them back from here).
        os_types = sorted({r.os.type for r in ImageDoc.from_json(result).roots()})
        meta = {**ident, "base_key": item.base_key, "digests": digests, "os_types": os_types}
        scan_key = scan_key_for(item.base_key, digests, os_types)
    av_full = _av_full_scan(db, item, result, carried=carried, offline=offline)
    if meta is not None and av_full:
        meta["av_full_scan"] = av_full
    old_state = (result.get("sections") or {}).get("state") or {}
    scanned_at = (old_state.get("scanned_at") if carried or offline else "") or result.get(
        "finished_at", ""
    )
    state: dict[str, Any] = {"carried_forward": carried, "scanned_at": scanned_at}
    if item.action == "partial":
        state["rescanned_checks"] = sorted({*offline_checks, *item.checks})
        if offline_checks and not offline:
            state["offline_checks"] = list(offline_checks)
        state["rechecked_at"] = utcnow()
        # Offline: re-run on the stored inventory, the image was not opened.
        state["rechecked_offline"] = offline
    if av_full:
        state["antivirus_as_of"] = av_full
        if item.av_scope and not carried:
            state["antivirus_as_of"] = {
                **av_full,
                "kinds_rechecked": item.av_scope.split(","),
                "kinds_engine": _av_engine(result),
                "kinds_date": result.get("finished_at", ""),
            }
    result.setdefault("sections", {})["state"] = state
    db.add_image_result(
        run_id,
        item.source.path,
        result,
        identity=meta,
        scan_key=scan_key,
        carried_forward=carried,
        origin_run_id=origin,
    )


def _finish(
    cfg: NightlyConfig,
    db: StateDB,
    run_id: int,
    outcome: NightlyOutcome,
    warnings: list[str],
    metrics_path: str | os.PathLike[str] | None = None,
    t0: float | None = None,
) -> None:
    """Summary, reports, metrics, and only then the run marked complete; retention.

    A run killed while its reports or metrics are written stays 'running' in the database
    and is marked interrupted by the next open: never a complete run without its reports.
    """
    from vmscan.report.json_out import ReportWriteError
    from vmscan.report.layout import update_latest, write_run_reports

    doc = db.run_document(run_id)
    summary = summarize(doc)
    summary["nightly"] = {
        "scanned": outcome.scanned,
        "failed": outcome.failed,
        "skipped_unchanged": outcome.skipped,
        "partial_rescans": outcome.partial_rescans,
        "warnings": warnings,
        "plan": [
            {
                "source": p.source.path,
                "action": p.action,
                "reason": p.reason,
                "checks": list(p.checks),
            }
            for p in outcome.plan
        ],
    }
    outcome.findings_by_severity = dict(summary["findings_by_severity"])
    incomplete = [incomplete_plugins(img) for img in doc.get("images") or []]
    outcome.images_incomplete = sum(1 for i in incomplete if i)
    outcome.checks_incomplete = dict(Counter(x.plugin for i in incomplete for x in i))
    code = exit_code(doc, cfg.fail_on)
    finished_at = utcnow()
    db.set_summary(run_id, summary)
    status = RUN_COMPLETE
    try:
        report = build_report_document(db, run_id, trend_runs=cfg.trend_runs)
        # The report shows the run as it is stored once these files are written.
        report["finished_at"] = finished_at
        report["sections"]["run"]["status"] = RUN_COMPLETE
        for point in report["sections"].get("trend") or []:
            if point.get("run") == run_id:
                point["status"] = RUN_COMPLETE
        outcome.reports = write_run_reports(
            cfg.reports_dir, run_id, report, list(cfg.formats), latest=False
        )
    except ReportWriteError as exc:
        outcome.error = str(exc)
        log.error("run %d: %s", run_id, exc)
        # Results are all stored; only the reports are missing (`vmscan report` can redo
        # them once there is space). The run is marked failed so it is not the baseline.
        status = RUN_FAILED
        code = EXIT_IMAGE_ERROR
    outcome.exit_code = code
    if metrics_path is not None:
        if t0 is not None:
            outcome.duration_s = round(time.monotonic() - t0, 3)
        write_metrics(metrics_path, outcome)
        outcome.metrics_written = True
    db.finish_run(run_id, status, summary=summary, error=outcome.error, finished_at=finished_at)
    if status == RUN_COMPLETE:
        # Only a run recorded complete becomes ``latest`` (killed before this line, the
        # next run repoints it).
        try:
            update_latest(cfg.reports_dir, run_id)
        except ReportWriteError as exc:
            outcome.error = str(exc)
            outcome.exit_code = EXIT_IMAGE_ERROR
            log.error("run %d: %s", run_id, exc)
    pruned = 0
    if "antivirus" in cfg.checks:
        pruned = prune_verdicts(db, doc, keep_days=max(cfg.av_recheck_days, 1.0))
    if pruned:
        log.info("antivirus: removed %d verdict(s) of older signature databases", pruned)
    expired = db.runs_to_expire(keep_runs=cfg.keep_runs, keep_days=cfg.keep_days)
    if expired:
        db.delete_runs(expired)
        for rid in expired:
            remove_run_dir(cfg.reports_dir, rid)
        outcome.expired_runs = expired
        log.info("retention: removed runs %s", ", ".join(map(str, expired)))


# --------------------------------------------------------------------------------------
# Dry run


def dry_run(cfg: NightlyConfig) -> list[PlanItem]:
    """What a run would do, without writing anything (the database is read if present)."""
    discovery = discover(cfg)
    for w in discovery.warnings:
        log.warning("%s", w)
    digests = data_digests(cfg)
    if cfg.state_db.exists():
        with StateDB(cfg.state_db, readonly=True) as db:
            return plan(cfg, discovery.sources, db, digests)
    return plan(cfg, discovery.sources, None, digests)
