"""``vmscan diff A B``: what changed between two stored runs, JSON reports, or points in time.

Two points in time of one VM (``IMAGE@SNAPSHOT``, ``IMAGE@layer:N``, an image file) are
scanned first, each with a file manifest, through the same path as ``vmscan scan``; the
diff then also names every file added, removed or changed (by SHA-256).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from vmscan.errors import UsageError

#: Exit code when a point in time could not be scanned (the same as ``vmscan scan``).
_EXIT_IMAGE_ERROR = 2


def add_parser(subparsers: Any) -> None:
    """Register ``diff``."""
    p = subparsers.add_parser(
        "diff",
        help="changes between two runs or two points in time of a VM: findings, packages, "
        "executables, files",
    )
    p.add_argument(
        "run_a",
        metavar="A",
        help="older run (id, latest, previous), JSON report, or point in time (IMAGE@SNAPSHOT, "
        "IMAGE@layer:N, IMAGE)",
    )
    p.add_argument("run_b", metavar="B", help="newer run, JSON report, or point in time")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", "-c", metavar="FILE", help="nightly config naming the database")
    g.add_argument("--state-db", metavar="FILE", help="the SQLite state database")
    p.add_argument("--format", "-f", choices=("text", "json", "html"), default="text")
    p.add_argument("-o", "--output", default=None, help="write here (default: stdout)")
    points = p.add_argument_group("points in time (both A and B are scanned)")
    points.add_argument("--checks", default="all", help="checks run on each point (default all)")
    points.add_argument("--clamd", default=None, metavar="unix:PATH|tcp:HOST:PORT")
    points.add_argument("--timeout", default="3600", help="per-point time limit, seconds")
    points.add_argument("--allow-backing", action="append", default=[], metavar="DIR")
    points.add_argument("-j", "--jobs", default=None, help="points scanned at once")
    p.set_defaults(run=run)


def is_point(ref: str) -> bool:
    """True when *ref* names an image (or a point in time of one), not a report or run id."""
    from vmscan.source.points import split_point

    path, selector = split_point(ref)
    if selector is not None:
        return True
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        return False
    return not head.startswith(b"{")


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


def _scan_points(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """One ``vmscan scan --manifest`` over both points; (its report, its exit code)."""
    from vmscan.cli import build_parser, cmd_scan

    with tempfile.TemporaryDirectory(prefix="vmscan-diff-") as tmp:
        out = os.path.join(tmp, "points.json")
        argv = ["scan", "-q", "--manifest", "--checks", args.checks, "--timeout", args.timeout]
        argv += ["-o", out]
        for d in args.allow_backing:
            argv += ["--allow-backing", d]
        if args.clamd:
            argv += ["--clamd", args.clamd]
        if args.jobs:
            argv += ["--jobs", args.jobs]
        if args.state_db:
            argv += ["--state-db", args.state_db]
        # "--" keeps a point whose name starts with "-" a source.
        scan_args = build_parser().parse_args([*argv, "--", args.run_a, args.run_b])
        rc = cmd_scan(scan_args)
        with open(out, encoding="utf-8") as fh:
            doc: dict[str, Any] = json.load(fh)
    return doc, rc


def _write(text: str, path: str | None) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def run(args: argparse.Namespace) -> int:
    """Print the diff; exit 0 (2 when a point in time could not be scanned)."""
    from vmscan.commands.report import state_path
    from vmscan.diff import diff_points, diff_runs, format_text

    points = [is_point(args.run_a), is_point(args.run_b)]
    doc: dict[str, Any] | None = None
    rc = 0
    if any(points):
        if not all(points):
            raise UsageError("diff compares two runs/reports or two points in time, not a mix")
        doc, _ = _scan_points(args)
        a, b = doc["images"]
        bad = [i for i in (a, b) if i.get("status") == "error"]
        for img in bad:
            sys.stderr.write(f"{img.get('source')}: not scanned: {'; '.join(img['errors'])}\n")
        if bad:
            return _EXIT_IMAGE_ERROR
        result = diff_points(a, b)
    else:
        if args.format == "html":
            raise UsageError("--format html is for two points in time (vmscan report for runs)")
        use_db = args.config or args.state_db
        db = None
        if use_db:
            from vmscan.state import StateDB

            db = StateDB(state_path(args), readonly=True)
        try:
            ra = _load(args.run_a, args, db)
            rb = _load(args.run_b, args, db)
        finally:
            if db is not None:
                db.close()
        result = diff_runs(ra, rb)
    if args.format == "json":
        _write(json.dumps(result, indent=2, ensure_ascii=False) + "\n", args.output)
    elif args.format == "html":
        from vmscan.report.html import render_html

        assert doc is not None
        doc.setdefault("sections", {})["changes"] = result
        _write(render_html(doc), args.output)
    else:
        _write(format_text(result), args.output)
    return rc
