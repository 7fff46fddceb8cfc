"""``vmscan nightly --config FILE``: the scheduled scan of a fleet with history and reports."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType
from typing import Any

from vmscan.errors import UsageError

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Register ``nightly``."""
    p = subparsers.add_parser(
        "nightly",
        help="scan the images named in a config, skipping unchanged ones; write reports",
        description="Scheduled scan: discovery from a TOML config, skip-unchanged, resume "
        "after an interruption, per-run reports and history in a SQLite state database.",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="vmscan.toml")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be scanned or skipped, and why; change nothing",
    )
    p.add_argument(
        "--metrics",
        metavar="FILE",
        help="write a Prometheus textfile (node_exporter textfile collector)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="scan on a Dask fleet: tcp://HOST:8786 (vmscan worker per host) or local:N "
        "(overrides [fleet] scheduler; needs the fleet extra)",
    )
    p.set_defaults(run=run)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # systemd stops a unit with SIGTERM: unwind like ^C so the run is marked interrupted
    # (the scan loop stops its workers, appliances and clamd and removes their folders).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    from vmscan.runctl import Interrupted

    raise Interrupted(signum)


def run(args: argparse.Namespace) -> int:
    """Run the nightly job; exit code per the CLI contract (0/1/2/3)."""
    from vmscan import nightly

    cfg = nightly.load_config(args.config)  # ConfigError (usage, 3) before anything is scanned
    if getattr(args, "scheduler", None):
        import dataclasses

        cfg = dataclasses.replace(cfg, scheduler=args.scheduler)
    if cfg.scheduler:
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise UsageError(
                "a scheduler is set but the fleet extra is not installed: "
                "pip install 'vmscan[fleet]'"
            ) from exc
        from vmscan.fleet import FleetError, check_scheduler

        try:
            check_scheduler(cfg.scheduler)
        except FleetError as exc:
            raise UsageError(str(exc)) from exc
    if args.dry_run:
        items = nightly.dry_run(cfg)
        for it in items:
            checks = f" [{', '.join(it.checks)}]" if it.action == "partial" else ""
            print(f"{it.action:8} {it.source.path}{checks}  ({it.reason})")
        counts = {
            a: sum(1 for i in items if i.action == a) for a in ("scan", "partial", "carry", "error")
        }
        print(
            f"{len(items)} source(s): {counts['scan']} to scan, {counts['partial']} to "
            f"re-check, {counts['carry']} unchanged, {counts['error']} unusable"
        )
        return 0
    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        outcome = nightly.run_nightly(cfg, metrics_path=args.metrics)
    except KeyboardInterrupt as exc:
        print(
            "interrupted: the run is marked interrupted; the next run resumes it", file=sys.stderr
        )
        # 128 + the signal: 143 for SIGTERM, 130 for SIGINT.
        return int(getattr(exc, "exit_code", 130))
    except UsageError:
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for w in outcome.warnings:
        log.warning("%s", w)
    # One summary line on stderr whatever the log level (cron mails, the journal).
    print(
        f"vmscan nightly: run {outcome.run_id}: {outcome.scanned} scanned, "
        f"{outcome.skipped} unchanged, {outcome.partial_rescans} re-checked, "
        f"{outcome.failed} failed, {outcome.images_incomplete} not fully scanned in "
        f"{outcome.duration_s:.1f} s; exit {outcome.exit_code}",
        file=sys.stderr,
    )
    if outcome.checks_incomplete:
        what = ", ".join(f"{k} ({v})" for k, v in sorted(outcome.checks_incomplete.items()))
        print(
            f"vmscan nightly: checks that did not complete (rescanned next run): {what}",
            file=sys.stderr,
        )
    if outcome.error:
        print(f"error: {outcome.error}", file=sys.stderr)
    for path in outcome.reports:
        print(path)
    return outcome.exit_code
