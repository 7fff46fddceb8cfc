"""The antivirus check: every regular file of a root, hash-first, then clamd (see vmscan.av)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmscan.av.cache import VerdictCache
from vmscan.av.clamd_client import ClamdClient, ClamdConnectionError, ClamdUnavailable
from vmscan.av.clamd_manager import ClamdDescriptor, ClamdLimits
from vmscan.av.engine import ClamdLink, Outcome, RootAvResult, RootScanner, severity_of
from vmscan.av.magic import parse_scope
from vmscan.av.signatures import database_digest, load_sha256_signatures
from vmscan.completeness import bound
from vmscan.errors import UsageError
from vmscan.guestfs_view import GuestFS
from vmscan.model import Finding, Severity
from vmscan.plugins import Check, ScanContext
from vmscan.sigdir import signatures_dir

log = logging.getLogger(__name__)

#: How many not-scanned paths the report lists (the rest are only counted).
NOT_SCANNED_CAP = 100
_MAX_NOTES = 50
#: ``not_scanned`` reason of every file when clamd cannot be reached at all.
ENGINE_UNAVAILABLE = "engine_unavailable"
#: ``not_scanned`` reason of every file when the check itself broke down.
CHECK_FAILED = "check_failed"


def fingerprint(rule_id: str, path: str, sha256: str) -> str:
    """Stable across runs: same signature, same path, same content."""
    return hashlib.sha256(f"antivirus\0{rule_id}\0{path}\0{sha256}".encode()).hexdigest()[:32]


def _wait_back(client: ClamdClient, seconds: float) -> bool:
    """Wait (bounded) for the owner of a managed clamd to restart it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.ping():
            return True
        time.sleep(0.25)
    return False


def _engine_facts(
    address: str, sig_dir: Path, desc: ClamdDescriptor | None
) -> tuple[str, str, str, bool, ClamdLimits | None, Path]:
    """(version, engine, database digest, managed, clamd limits, hash-list folder).

    A clamd is vmscan's own only when the descriptor handed over in memory names this very
    address; a file found beside a socket is never consulted.
    """
    managed = desc is not None and desc.address == address
    client = ClamdClient(address, timeout=60)
    try:
        version = client.version()
    except ClamdConnectionError as e:
        if not managed or desc is None or not _wait_back(client, desc.restart_wait):
            raise ClamdUnavailable(f"clamd at {address} does not answer: {e}") from e
        try:
            version = client.version()
        except ClamdConnectionError as e2:
            raise ClamdUnavailable(f"clamd at {address} does not answer: {e2}") from e2
    engine = version.split("/", 1)[0].strip()
    if managed and desc is not None:
        db_dir = Path(desc.runtime_dir) / "db"
        return version, engine, desc.database_digest, True, desc.limits, db_dir
    # An external clamd: its databases are known only by the version string (which carries
    # the daily database's number); our own hash lists are matched locally as well.
    own = database_digest(sig_dir) if sig_dir.is_dir() else ""
    digest = hashlib.sha256(f"external\0{version}\0{own}".encode()).hexdigest()
    return version, engine, digest, False, None, sig_dir


def external_limits(opts: dict[str, Any]) -> ClamdLimits:
    """Limits assumed for an external clamd (``av_max_file_size`` etc. override them)."""
    d = ClamdLimits()
    size = int(opts.get("av_max_file_size") or d.max_file_size)
    return ClamdLimits(
        stream_max_length=size,
        max_file_size=size,
        max_scan_size=int(opts.get("av_max_scan_size") or d.max_scan_size),
        max_files=int(opts.get("av_max_files") or d.max_files),
        max_recursion=d.max_recursion,
    )


def av_finding(
    path: str, sha256: str, size: int, mtime: int, signature: str, source: str
) -> Finding:
    """The finding for *signature* in the file *path* (a scan, or a re-match offline)."""
    sha = sha256.lower()
    return Finding(
        check="antivirus",
        rule_id=signature,
        severity=Severity(severity_of(signature)),
        title=f"{signature} found in {path}",
        target=path,
        details={
            "path": path,
            "sha256": sha,
            "size": size,
            "mtime": mtime,
            "detected_by": source,
        },
        fingerprint=fingerprint(signature, path, sha),
    )


@dataclass(frozen=True)
class _Failed:
    """The check could not be prepared: *error* is raised when it runs."""

    error: Exception


@dataclass(frozen=True)
class _Prepared:
    """The root's scan, planned before the stream and finished when the check runs."""

    scanner: RootScanner
    cache: VerdictCache | None
    version: str
    digest: str
    address: str
    managed: bool
    scope: frozenset[str] | None
    #: Notes made while preparing (before the plugin's own note list exists).
    notes: list[str]


class AntivirusCheck(Check):
    """ClamAV over every regular file of the root, with vmscan's own signatures."""

    NAME = "antivirus"
    VERSION = "1"

    def consumer(self, fs: GuestFS, ctx: ScanContext) -> RootScanner | None:
        """Plan the root's scan before its one stream; the scanner takes the members.

        A failure here (no clamd) is kept and raised by :meth:`run`, which then writes
        the section that says nothing was scanned.
        """
        try:
            prep = self._prepare(fs, ctx)
        except Exception as e:
            ctx.prepared[self.NAME] = _Failed(e)
            return None
        ctx.prepared[self.NAME] = prep
        return prep.scanner

    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        """Scan the root; when that cannot happen, every file is counted as not scanned.

        The section is always written (root and image level) before an error goes up: an
        unreachable clamd makes the plugin ``failed`` and the section ``incomplete`` with
        each file under ``not_scanned`` (reason ``engine_unavailable``), never a missing
        section that a reader could take for "nothing to report".
        """
        try:
            return self._run(fs, ctx)
        except ClamdUnavailable as e:
            self._nothing_scanned(ctx, ENGINE_UNAVAILABLE, f"engine unavailable: {e}")
            raise
        except Exception as e:
            why = f"antivirus check failed: {type(e).__name__}: {e}"
            self._nothing_scanned(ctx, CHECK_FAILED, why)
            raise

    def _nothing_scanned(self, ctx: ScanContext, reason: str, detail: str) -> None:
        """The section of a root whose files never reached the engine (every file listed)."""
        if "antivirus" in ctx.root.sections:  # already accounted for: never count twice
            return
        detail = bound(detail, 300)
        res = RootAvResult(files_total=len(ctx.manifest))
        for e in ctx.manifest:
            res.outcomes[e.path] = (e, Outcome("not_scanned", reason=reason, detail=detail))
        address = str(ctx.options.get("clamd") or "")
        # Managed when this run started it: its descriptor reached the worker in memory.
        managed = isinstance(ctx.options.get("clamd_descriptor"), ClamdDescriptor)
        try:
            scope = parse_scope(ctx.options.get("av_scope"))
        except ValueError:
            scope = None
        section = self._section(res, "", "", address, managed, scope)
        section["detail"] = detail
        ctx.root.sections["antivirus"] = section
        if ctx.image is not None:
            ctx.image.sections["antivirus"] = merge_sections(
                ctx.image.sections.get("antivirus"), section, ctx.root.device
            )

    def _run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        prep = ctx.prepared.pop(self.NAME, None)
        if isinstance(prep, _Failed):
            raise prep.error
        if not isinstance(prep, _Prepared):
            # Run on its own (no stream before it): one read per file through the view.
            prep = self._prepare(fs, ctx)
        ctx.notes.extend(prep.notes)
        try:
            res = prep.scanner.finish(fs)
        finally:
            if prep.cache is not None:
                prep.cache.close()
        return self._report(res, prep, ctx)

    def _prepare(self, fs: GuestFS, ctx: ScanContext) -> _Prepared:
        opts = ctx.options
        notes: list[str] = []
        address = opts.get("clamd")
        if not address:
            raise ClamdUnavailable(
                str(
                    opts.get("clamd_error")
                    or "no clamd to talk to: clamd did not start and no --clamd was given"
                )
            )
        try:
            scope = parse_scope(opts.get("av_scope"))
        except ValueError as e:
            raise UsageError(str(e)) from e
        sig_dir = signatures_dir(opts)
        if sig_dir.name != "clamav" and (sig_dir / "clamav").is_dir():
            sig_dir = sig_dir / "clamav"
        desc = opts.get("clamd_descriptor")
        if not isinstance(desc, ClamdDescriptor):
            desc = None
        version, engine, digest, managed, limits, hash_dir = _engine_facts(address, sig_dir, desc)
        if limits is None:
            # An external clamd's limits are unknown: assume vmscan's defaults unless told.
            limits = external_limits(opts)
        table = load_sha256_signatures(hash_dir)
        cache = None
        if opts.get("state_db"):
            try:
                # Verdicts (too_large above all) depend on the limits too.
                key = f"{engine}|{limits.stream_max_length}|{limits.max_file_size}|" + (
                    f"{limits.max_scan_size}|{limits.max_files}|{limits.max_recursion}"
                )
                cache = VerdictCache(str(opts["state_db"]), digest, key)
            except Exception as e:
                notes.append(f"antivirus: verdict cache unavailable: {e}")
        link = ClamdLink(
            ClamdClient(address, timeout=float(opts.get("clamd_timeout") or 300)),
            managed=managed,
            restart_wait=desc.restart_wait if managed and desc is not None else 0.0,
        )
        scanner = RootScanner(
            link,
            engine=engine,
            hash_table=table,
            limits=limits,
            scope=scope,
            cache=cache,
            streams=int(opts.get("av_streams") or 4),
        )
        try:
            scanner.plan(fs, ctx.manifest)
        except BaseException:
            if cache is not None:
                cache.close()
            raise
        return _Prepared(scanner, cache, version, digest, str(address), managed, scope, notes)

    def _report(self, res: RootAvResult, prep: _Prepared, ctx: ScanContext) -> list[Finding]:
        findings = self._findings(res)
        section = self._section(
            res, prep.version, prep.digest, prep.address, prep.managed, prep.scope
        )
        ctx.root.sections["antivirus"] = section
        if res.pe:
            ctx.root.sections["pe"] = sorted(res.pe, key=lambda r: str(r["path"]))
        if section["status"] != "complete":
            # Makes the plugin status "partial": not scanned is never clean.
            counts = ", ".join(
                f"{k}: {v}" for k, v in sorted(section["not_scanned"]["counts"].items())
            )
            ctx.notes.append(
                f"antivirus incomplete ({', '.join(section['incomplete_reasons'])})"
                + (f"; not scanned: {counts}" if counts else "")
            )
        for note in res.notes[:_MAX_NOTES]:
            ctx.notes.append(f"antivirus: {note}")
        if len(res.notes) > _MAX_NOTES:
            ctx.notes.append(f"antivirus: {len(res.notes) - _MAX_NOTES} more notes")
        if ctx.image is not None:
            ctx.image.sections["antivirus"] = merge_sections(
                ctx.image.sections.get("antivirus"), section, ctx.root.device
            )
        return findings

    @staticmethod
    def _findings(res: RootAvResult) -> list[Finding]:
        out = []
        for path, (e, o) in res.outcomes.items():
            if o.verdict != "found":
                continue
            out.append(av_finding(path, e.sha256 or "", e.size, e.mtime, o.signature, o.source))
        return sorted(out, key=lambda f: (f.target, f.rule_id))

    @staticmethod
    def _section(
        res: RootAvResult,
        version: str,
        digest: str,
        address: str,
        managed: bool,
        scope: frozenset[str] | None,
    ) -> dict[str, Any]:
        counts: dict[str, int] = {}
        paths: list[dict[str, str]] = []
        for path, (_e, o) in sorted(res.outcomes.items()):
            if o.verdict != "not_scanned":
                continue
            counts[o.reason] = counts.get(o.reason, 0) + 1
            paths.append({"path": path, "reason": o.reason, "detail": o.detail})
        reasons = sorted(counts)
        if res.clamd_died:
            reasons.append("clamd_died")
        secs = res.stream_seconds
        return {
            "engine": version,
            "database_digest": digest,
            "clamd": {
                "mode": "managed" if managed else "external",
                "address": address,
                "restarts": res.clamd_restarts,
            },
            "scope": "all" if scope is None else ",".join(sorted(scope)),
            "files_total": res.files_total,
            "files_scanned": res.files_scanned,
            "files_from_cache": res.files_from_cache,
            "files_hash_matched": res.files_hash_matched,
            "files_out_of_scope": res.files_out_of_scope,
            "files_streamed": res.files_streamed,
            "bytes_streamed": res.bytes_streamed,
            "bytes_read": res.bytes_read,
            "transfer": {
                "method": res.method or "none",
                "seconds": round(secs, 3),
                "mb_per_s": round(res.bytes_read / secs / 1e6, 2) if secs > 0 else None,
            },
            "detections": sum(1 for _e, o in res.outcomes.values() if o.verdict == "found"),
            "not_scanned": {
                "counts": counts,
                "paths": paths[:NOT_SCANNED_CAP],
                "more": max(0, len(paths) - NOT_SCANNED_CAP),
            },
            "status": "incomplete" if reasons else "complete",
            "incomplete_reasons": reasons,
        }


_SUMS = (
    "files_total",
    "files_scanned",
    "files_from_cache",
    "files_hash_matched",
    "files_out_of_scope",
    "files_streamed",
    "bytes_streamed",
    "bytes_read",
    "detections",
)


def merge_sections(old: dict[str, Any] | None, new: dict[str, Any], device: str) -> dict[str, Any]:
    """Image-level antivirus section: the sum over the image's roots."""
    new = {**new, "roots": [device]}
    if not old:
        return new
    out = dict(old)
    for k in _SUMS:
        out[k] = int(old.get(k, 0)) + int(new.get(k, 0))
    counts = dict(old["not_scanned"]["counts"])
    for reason, n in new["not_scanned"]["counts"].items():
        counts[reason] = counts.get(reason, 0) + n
    paths = old["not_scanned"]["paths"] + new["not_scanned"]["paths"]
    more = old["not_scanned"]["more"] + new["not_scanned"]["more"]
    more += max(0, len(paths) - NOT_SCANNED_CAP)
    out["not_scanned"] = {"counts": counts, "paths": paths[:NOT_SCANNED_CAP], "more": more}
    out["incomplete_reasons"] = sorted(
        set(old["incomplete_reasons"]) | set(new["incomplete_reasons"])
    )
    out["status"] = "incomplete" if out["incomplete_reasons"] else "complete"
    t_old, t_new = old["transfer"], new["transfer"]
    secs = float(t_old["seconds"]) + float(t_new["seconds"])
    out["transfer"] = {
        "method": t_new["method"] if t_new["method"] != "none" else t_old["method"],
        "seconds": round(secs, 3),
        "mb_per_s": round(out["bytes_read"] / secs / 1e6, 2) if secs > 0 else None,
    }
    out["clamd"] = {
        **old["clamd"],
        "restarts": int(old["clamd"]["restarts"]) + int(new["clamd"]["restarts"]),
    }
    out["roots"] = [*old.get("roots", []), device]
    return out
