"""Command line: ``vmscan scan``, ``vmscan signatures``, and the nightly/report commands.

Exit codes (one definition, :func:`vmscan.completeness.exit_code`): 0 nothing at or above
``--fail-on``; 1 findings at or above it; 2 at least one image could not be scanned, or a
selected check did not complete on one (the others still are); 3 usage error; 128 + the
signal number (130 SIGINT, 143 SIGTERM) when the run was interrupted (the report is
still written, marked ``interrupted``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NoReturn

from vmscan import SCHEMA_VERSION, __version__, runctl, sigdir
from vmscan.completeness import EXIT_IMAGE_ERROR, EXIT_USAGE, exit_code, incomplete_plugins
from vmscan.document import ReportDoc
from vmscan.errors import UsageError, VmscanError
from vmscan.filecache import open_default_cache_db
from vmscan.model import SEVERITY_ORDER, ImageResult, ImageStatus, ScanResult, to_jsonable
from vmscan.report.formats import ReportFormat, choose_format
from vmscan.report.table import write_table
from vmscan.scanner import ALL_CHECK_NAMES, ScanOptions, default_jobs, now_iso, scan_sources
from vmscan.services import managed_services
from vmscan.split import Policy
from vmscan.walk import WalkLimits

log = logging.getLogger("vmscan")

# Subcommands implemented in their own modules: (module, required?)
_COMMAND_MODULES = (
    "vmscan.commands.nightly",
    "vmscan.commands.report",
    "vmscan.commands.diff",
    "vmscan.fleet.command",  # vmscan worker (issue 13)
)


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage; vmscan's contract says 3."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def _severity(value: str) -> str:
    v = value.lower()
    if v not in SEVERITY_ORDER or v == "unknown":
        raise argparse.ArgumentTypeError(
            f"unknown severity {value!r} (info, low, medium, high, critical)"
        )
    return v


def _checks(value: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    if items == ("all",):
        return ALL_CHECK_NAMES
    if items == ("none",):
        return ()
    bad = [x for x in items if x not in ALL_CHECK_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown check(s) {', '.join(bad)} (choose from {', '.join(ALL_CHECK_NAMES)})"
        )
    return items


def _add_scan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="disk image (qcow2, vmdk, vhd, vhdx, raw) or libvirt domain XML; "
        "IMAGE@SNAPSHOT (name, id or id:N) or IMAGE@layer:N (0 = base) for a point in time",
    )
    p.add_argument(
        "--connect",
        default="qemu:///system",
        metavar="URI",
        help="libvirt connection for libvirt:NAME sources (default qemu:///system)",
    )
    p.add_argument(
        "--snapshots",
        choices=("current", "all"),
        default="current",
        help="all: also scan every internal qcow2 snapshot of each image, one result each",
    )
    p.add_argument(
        "--format",
        default=None,
        help="json, html, sarif, junit, cyclonedx, spdx, csv (-o names a folder) or table; "
        "default: from -o's extension, else a table on a terminal and json otherwise",
    )
    p.add_argument("-o", "--output", help="write the report here (default: stdout)")
    p.add_argument("--manifest", action="store_true", help="include every file in the report")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help=f"images scanned at once (default here: {default_jobs()})",
    )
    p.add_argument(
        "--stream-appliances",
        default="auto",
        metavar="auto|N",
        help="appliances sharing one image's content stream: auto (a second one when the "
        "pool has a free slot, a core is idle and the image has much to stream), 1 (never), "
        "or N (up to N whatever the size, slots permitting)",
    )
    p.add_argument("--memsize", type=int, default=None, help="appliance memory in MiB")
    p.add_argument("--timeout", type=float, default=3600.0, help="per-image time limit, seconds")
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="appliance acceleration (auto honours LIBGUESTFS_BACKEND_SETTINGS)",
    )
    p.add_argument(
        "--allow-backing",
        action="append",
        default=[],
        metavar="DIR",
        help="folder where backing files may lie (besides the image's own)",
    )
    p.add_argument("--disk-format", default=None, help="override format detection")
    p.add_argument(
        "--fail-on",
        type=_severity,
        default=None,
        metavar="SEVERITY",
        help="exit 1 when a finding is at or above this severity (findings of unknown "
        "severity never trip it: they are counted apart in the patch summary)",
    )
    p.add_argument(
        "--checks",
        type=_checks,
        default=ALL_CHECK_NAMES,
        help="comma list of checks: antivirus,patch,license,migration (or all/none)",
    )
    p.add_argument(
        "--clamd",
        default=None,
        metavar="unix:PATH|tcp:HOST:PORT",
        help="use this running clamd instead of starting one",
    )
    p.add_argument("--av-scope", default="all", help="all, or executables,documents,archives")
    p.add_argument("--state-db", default=None, help="SQLite state database (caches, history)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="no file-hash cache (by default: the --state-db, else a per-user cache database)",
    )
    p.add_argument(
        "--rehash", action="store_true", help="re-read every file, even with a valid cached hash"
    )
    p.add_argument(
        "--max-depth",
        type=int,
        default=WalkLimits.max_depth,
        help="folder levels walked below a root; deeper folders are reported not walked",
    )
    p.add_argument(
        "--max-folder-entries",
        type=int,
        default=WalkLimits.max_folder_entries,
        help="entries walked per folder; the rest are reported not walked",
    )
    p.add_argument("--policy", default=None, help="licence policy file (TOML)")
    p.add_argument(
        "--advisory-max-age",
        type=int,
        default=7,
        metavar="DAYS",
        help="patch data older than this is reported as a stale-data finding (default 7)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(prog="vmscan", description="Agentless scanner of VM disk images.")
    parser.add_argument("--version", action="version", version=f"vmscan {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_scan_options(sub.add_parser("scan", help="scan disk images and write a report"))
    sig = sub.add_parser("signatures", help="verify or import signature and advisory data")
    sigsub = sig.add_subparsers(dest="sig_command", required=True, parser_class=_Parser)
    v = sigsub.add_parser("verify", help="check signatures/ against its manifests")
    v.add_argument("--dir", default=None, help="signatures folder (default: the bundled one)")
    imp = sigsub.add_parser(
        "import",
        help="import advisory feeds and Windows tables (format detected), compile the index",
    )
    imp.add_argument(
        "src",
        nargs="+",
        help="OSV all.zip or folder, Debian tracker JSON, Alpine secdb JSON, Windows build "
        "table, MSRC CVRF XML or CVE/KB/FixedBuild CSV (.xz/.gz accepted)",
    )
    imp.add_argument("--dest", default=None, help="advisories folder (default: bundled)")
    imp.add_argument("--name", default=None, help="feed name (default: from the file name)")
    imp.add_argument("--date", default=None, help="date of the data (YYYY-MM-DD) if not in it")
    st = sigsub.add_parser("status", help="each feed: kind, date, record count, staleness")
    st.add_argument("--dir", default=None, help="advisories folder (default: bundled)")
    st.add_argument(
        "--max-age",
        type=int,
        default=7,
        metavar="DAYS",
        help="warn about feeds older than this (default 7)",
    )
    st.add_argument("--json", action="store_true", help="print JSON")
    # vmscan's own modules: an ImportError is a bug to see, never a missing subcommand.
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def signatures_dir() -> Path:
    """The signatures folder (see :func:`vmscan.sigdir.signatures_dir`)."""
    return sigdir.signatures_dir()


def summarize_incomplete(data: ReportDoc | Mapping[str, Any], out: IO[str]) -> None:
    """One line per image that is not fully scanned, on stderr, whatever the log level."""
    for img in ReportDoc.of(data).images:
        incomplete = incomplete_plugins(img)
        if not incomplete:
            continue
        names: dict[str, str] = {}
        for inc in incomplete:
            # "failed" wins over "partial" when a plugin did not complete on several roots.
            if names.get(inc.plugin) != "failed":
                names[inc.plugin] = inc.status
        what = ", ".join(f"{n} ({st})" for n, st in names.items())
        print(
            f"vmscan: {img.source}: {img.status.value}: checks that did not complete: "
            f"{what}; not scanned is not clean (errors[] says why)",
            file=out,
        )


def _progress_bar(total: int, quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="image", desc="vmscan", file=sys.stderr)


def last_report_path() -> Path:
    """Where the full JSON report of a scan shown as a table is kept (overwritten)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmscan" / "last-scan.json"


def finalize_report(result: ScanResult) -> dict[str, Any]:
    """Canonical JSON dict of a run, with fleet-level sections."""
    data: dict[str, Any] = to_jsonable(result)
    from vmscan.license.fleet import fleet_summary

    try:
        data["sections"]["license_fleet"] = fleet_summary(data)
    except Exception as e:  # a summary never loses the report
        log.warning("licence fleet summary failed: %s", e)
    return data


def cmd_scan(args: argparse.Namespace) -> int:
    """``vmscan scan``."""
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    from vmscan.av.magic import parse_scope

    try:
        parse_scope(args.av_scope)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.output == "-":
        args.output = None
    try:
        fmt = choose_format(args.format, args.output, sys.stdout.isatty())
    except ValueError as e:
        raise UsageError(str(e)) from e
    if fmt.writes_folder and not args.output:
        raise UsageError(f"--format {fmt.value} writes several files: give a folder with -o")
    plugin_options: dict[str, Any] = {
        "av_scope": args.av_scope,
        "signatures_dir": str(signatures_dir()),
    }
    if args.clamd:
        plugin_options["clamd"] = args.clamd
    if args.policy:
        plugin_options["license_policy"] = args.policy
    plugin_options["advisory_max_age_days"] = args.advisory_max_age
    if "patch" in args.checks:
        _prepare_advisories(plugin_options)
    try:
        appliances = Policy.parse(args.stream_appliances)
    except ValueError as e:
        raise UsageError(str(e)) from None
    opts = ScanOptions(
        jobs=args.jobs or default_jobs(),
        stream_appliances=appliances,
        memsize=args.memsize,
        timeout=args.timeout,
        accel=args.accel,
        manifest=args.manifest,
        checks=args.checks,
        fail_on=args.fail_on,
        allow_backing=tuple(args.allow_backing),
        disk_format=args.disk_format,
        state_db=args.state_db,
        cache_db=None if args.no_cache or args.state_db else open_default_cache_db(),
        no_cache=args.no_cache,
        rehash=args.rehash,
        walk_limits=WalkLimits(
            max_depth=max(1, args.max_depth), max_folder_entries=max(1, args.max_folder_entries)
        ),
        quiet=args.quiet,
        plugin_options=plugin_options,
        libvirt_uri=args.connect,
    )
    from vmscan.source.points import cache_order, expand_snapshots

    if args.snapshots == "all":
        args.sources = expand_snapshots(list(args.sources))
    opts.after = cache_order(list(args.sources))
    bar = _progress_bar(len(args.sources), args.quiet)

    def progress(img: ImageResult) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{Path(img.source).name}: {img.status.value}")
            bar.update(1)
        for err in img.errors[:3]:
            log.info("%s: %s", img.source, err)

    file_bars: dict[str, Any] = {}

    def file_progress(label: str, done: int) -> None:
        if bar is None:
            return
        from tqdm import tqdm

        fb = file_bars.get(label)
        if fb is None:
            fb = file_bars[label] = tqdm(
                desc=Path(label).name[:30], unit="file", file=sys.stderr, leave=False
            )
        fb.update(done - fb.n)

    interrupted: runctl.Interrupted | None = None
    try:
        with runctl.interruptible(), runctl.run_scope(), managed_services(opts):
            result = scan_sources(
                list(args.sources), opts, progress=progress, file_progress=file_progress
            )
    except runctl.Interrupted as exc:
        # Workers, appliances and clamd are stopped and the temp folders removed by now.
        interrupted = exc
        result = (
            exc.partial
            if isinstance(exc.partial, ScanResult)
            else _nothing_scanned(list(args.sources), exc.signal_name)
        )
        log.error("interrupted by %s: writing the report of what finished", exc.signal_name)
    for fb in file_bars.values():
        fb.close()
    if bar is not None:
        bar.close()
    # The run is over: a signal now must not cut the report in half.
    with _signals_ignored():
        data = finalize_report(result)
        report = ReportDoc.from_json(data)  # what every reader but the JSON writer reads
        output = args.output
        if fmt is ReportFormat.TABLE and args.format is None:
            # The default on a terminal: the table for the person, the whole report
            # (every file, package and finding) kept for later in one known place.
            output = str(last_report_path())
            ReportFormat.JSON.write(data, output, sys.stdout)
            write_table(report, sys.stdout, full_report=output)
        else:
            for path in fmt.write(data if fmt is ReportFormat.JSON else report, output, sys.stdout):
                log.info("wrote %s", path)
            if output and sys.stdout.isatty() and fmt is not ReportFormat.TABLE:
                # On a terminal the summary comes too, and says where the full report went.
                write_table(report, sys.stdout, full_report=output)
    for img in result.images:
        if img.status == ImageStatus.ERROR:
            log.error("%s: %s", img.source, "; ".join(img.errors) or "error")
    summarize_incomplete(report, sys.stderr)
    if interrupted is not None:
        return interrupted.exit_code
    return exit_code(report, args.fail_on)


def _nothing_scanned(sources: list[str], signal_name: str) -> ScanResult:
    """The report of a run interrupted before any image was scanned."""
    why = f"not scanned: vmscan was interrupted by {signal_name} before it finished"
    images = [ImageResult(source=s, status=ImageStatus.ERROR, errors=[why]) for s in sources]
    return ScanResult(
        schema_version=SCHEMA_VERSION,
        vmscan_version=__version__,
        started_at=now_iso(),
        finished_at=now_iso(),
        images=images,
        interrupted=True,
        interrupted_by=signal_name,
    )


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    import signal

    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _prepare_advisories(options: dict[str, Any]) -> None:
    """Compile the advisory index once here, so that workers only open it read-only."""
    from vmscan.advisories import AdvisoryError, prepare

    try:
        prepare(options)
    except (AdvisoryError, OSError) as e:
        # The patch check reports the index as not usable for every root.
        log.error("advisory index: %s", e)


def cmd_signatures(args: argparse.Namespace) -> int:
    """``vmscan signatures verify|import|status``."""
    if args.sig_command == "verify":
        from vmscan.av.signatures import verify

        base = Path(args.dir) if args.dir else signatures_dir()
        problems = verify(base / "clamav")
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print("signatures: OK" if not problems else f"signatures: {len(problems)} problem(s)")
        return 0 if not problems else 2
    from vmscan.advisories import AdvisoryError, import_feed

    if args.sig_command == "status":
        return _signatures_status(args)
    dest = Path(args.dest) if args.dest else signatures_dir() / "advisories"
    if args.name and len(args.src) > 1:
        raise UsageError("--name names one feed: give one source with it")
    rc = 0
    for src in args.src:
        try:
            report = import_feed(Path(src), dest, name=args.name, date=args.date)
        except AdvisoryError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = EXIT_IMAGE_ERROR
            continue
        print(json.dumps(to_jsonable(report), indent=2))
        if report.skipped:
            print(f"{src}: skipped, {report.reason}", file=sys.stderr)
        else:
            print(
                f"{src}: {report.kind} feed {report.feed!r}: {report.imported} imported, "
                f"{report.rejected_count} rejected, data dated {report.date}",
                file=sys.stderr,
            )
    return rc


def _signatures_status(args: argparse.Namespace) -> int:
    """Print every feed of the index with its date, count and age; 1 when one is stale."""
    import datetime as dt

    from vmscan.advisories import ensure_index, open_index

    adv_dir = Path(args.dir) if args.dir else signatures_dir() / "advisories"
    index = open_index(ensure_index(adv_dir))
    today = dt.datetime.now(dt.UTC).date()
    rows = []
    try:
        for f in index.feeds():
            try:
                age: int | None = (today - dt.date.fromisoformat(f.date[:10])).days
            except ValueError:
                age = None
            rows.append(
                {
                    "feed": f.name,
                    "kind": f.kind,
                    "date": f.date or None,
                    "age_days": age,
                    "stale": age is None or age > args.max_age,
                    "records": f.records,
                    "rejected": f.rejected,
                    "source": f.source,
                    "notes": list(f.notes),
                }
            )
        digest = index.digest
    finally:
        index.close()
    builds = signatures_dir() / "windows-builds.json"
    if builds.is_file():
        from vmscan.advisories.windows import parse_builds

        count: int | None = None
        try:
            table = json.loads(builds.read_text())
            count = len(parse_builds(table).rows)
            as_of = str(table.get("as_of", ""))
            age = (today - dt.date.fromisoformat(as_of)).days
        except (OSError, ValueError, AttributeError):
            as_of, age = "", None
        rows.append(
            {
                "feed": "windows-builds (bundled)",
                "kind": "windows-builds",
                "date": as_of or None,
                "age_days": age,
                "stale": age is None or age > args.max_age,
                "records": count,
                "rejected": 0,
                "source": str(builds),
                "notes": ["hand-compiled: verify against Microsoft's update history"],
            }
        )
    if args.json:
        print(json.dumps({"index": str(index.path), "digest": digest, "feeds": rows}, indent=2))
    else:
        print(f"index {index.path} (digest {digest[:16]})")
        for r in rows:
            warn = "  STALE" if r["stale"] else ""
            print(
                f"{r['feed']:<32} {r['kind']:<15} {r['date'] or 'no date':<10} "
                f"{'' if r['age_days'] is None else str(r['age_days']) + ' days':>10} "
                f"{'' if r['records'] is None else r['records']:>8} records{warn}"
            )
    stale = [r["feed"] for r in rows if r["stale"]]
    for name in stale:
        print(f"warning: {name} is older than {args.max_age} days or undated", file=sys.stderr)
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vmscan`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "scan":
            return cmd_scan(args)
        if args.command == "signatures":
            return cmd_signatures(args)
        rc: int = args.run(args)
        return rc
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except VmscanError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_IMAGE_ERROR
    except runctl.Interrupted as e:
        print(f"interrupted by {e.signal_name}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
