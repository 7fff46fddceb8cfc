"""``vmscan report --run ID|latest``: re-export a stored run without scanning."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vmscan.errors import UsageError


def add_state_arguments(p: argparse.ArgumentParser) -> None:
    """--config or --state-db: where the state database is."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", "-c", metavar="FILE", help="nightly config naming the database")
    g.add_argument("--state-db", metavar="FILE", help="the SQLite state database")


def state_path(args: argparse.Namespace) -> Path:
    """The database path from --state-db or the config."""
    if args.state_db:
        path = Path(args.state_db)
    else:
        from vmscan.nightly import load_config

        path = load_config(args.config).state_db
    if not path.exists():
        raise UsageError(f"state database {path} does not exist (no nightly run yet?)")
    return path


def add_parser(subparsers: Any) -> None:
    """Register ``report``."""
    p = subparsers.add_parser("report", help="export a stored nightly run (no scanning)")
    add_state_arguments(p)
    p.add_argument(
        "--run",
        dest="run_ref",
        default="latest",
        metavar="ID|latest|previous",
        help="which run (default: latest complete run)",
    )
    p.add_argument("--format", "-f", default="json", help="json, html, sarif, ... (default json)")
    p.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    p.add_argument("--trend-runs", type=int, default=14, help="runs shown in the trend chart")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the stored run in the chosen format."""
    from vmscan.nightly import build_report_document
    from vmscan.report import WRITERS
    from vmscan.report.json_out import atomic_writer
    from vmscan.state import StateDB, StateError

    writer = WRITERS.get(args.format)
    if writer is None:
        raise UsageError(f"unknown format {args.format!r} (known: {', '.join(sorted(WRITERS))})")
    with StateDB(state_path(args), readonly=True) as db:
        try:
            run_info = db.resolve_run(args.run_ref)
        except StateError as exc:
            raise UsageError(str(exc)) from exc
        doc = build_report_document(db, run_info.id, trend_runs=args.trend_runs)
    if args.output == "-":
        writer(doc, sys.stdout)
    else:
        with atomic_writer(args.output) as fp:
            writer(doc, fp)
    return 0
