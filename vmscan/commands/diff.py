"""``vmscan diff RUN_A RUN_B``: what changed between two stored runs (or JSON reports)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vmscan.errors import UsageError


def add_parser(subparsers: Any) -> None:
    """Register ``diff``."""
    p = subparsers.add_parser(
        "diff", help="changes between two runs: findings, packages, executables, images"
    )
    p.add_argument(
        "run_a", metavar="RUN_A", help="older run: id, latest, previous, or a JSON report"
    )
    p.add_argument("run_b", metavar="RUN_B", help="newer run: id, latest, or a JSON report")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", "-c", metavar="FILE", help="nightly config naming the database")
    g.add_argument("--state-db", metavar="FILE", help="the SQLite state database")
    p.add_argument("--format", "-f", choices=("text", "json"), default="text")
    p.set_defaults(run=run)


def _load(ref: str, args: argparse.Namespace, db: Any) -> dict[str, Any]:
    if os.path.isfile(ref) and not ref.isdigit():
        try:
            with open(ref, encoding="utf-8") as fh:
                doc: dict[str, Any] = json.load(fh)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read report {ref}: {exc}") from exc
        return doc
    if db is None:
        raise UsageError(f"{ref!r} is not a report file; give --config or --state-db for run ids")
    from vmscan.state import StateError

    try:
        run = db.resolve_run(ref)
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    result: dict[str, Any] = db.run_document(run.id)
    return result


def run(args: argparse.Namespace) -> int:
    """Print the diff; exit 0."""
    from vmscan.commands.report import state_path
    from vmscan.diff import diff_runs, format_text
    from vmscan.state import StateDB

    db = StateDB(state_path(args), readonly=True) if (args.config or args.state_db) else None
    try:
        a = _load(args.run_a, args, db)
        b = _load(args.run_b, args, db)
    finally:
        if db is not None:
            db.close()
    result = diff_runs(a, b)
    if args.format == "json":
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_text(result))
    return 0
