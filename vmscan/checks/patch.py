"""Patch-level check: advisories vs installed packages, OS end of life, Windows updates.

Per root it writes ``sections.patch``: ``status`` (``complete`` | ``incomplete`` with
``reasons``), the feeds that cover the guest (name, date, age, stale), the summary
(counts by severity and by fixable/unfixed) and, for Windows, the build/UBR facts.
Findings are one per (installed package, vulnerability): the CVE when the records name
one, else the record's own id; the advisory ids, aliases, feeds, installed and fixed
versions are in ``details``, with whether the fix is in the guest's configured
repositories (:mod:`vmscan.checks.patch_repos`). A root whose package database failed,
was only partly read, or is empty where the OS needs one is ``incomplete``, never
"0 vulnerable".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from vmscan import eol, sigdir
from vmscan.advisories import default_advisories_dir
from vmscan.advisories.index import Index, ensure_index, open_index
from vmscan.advisories.match import Ecosystem, Match, guest_ecosystem, match_packages
from vmscan.advisories.model import AdvisoryError, Rating
from vmscan.advisories.severity import worst
from vmscan.advisories.windows import parse_builds
from vmscan.checks.patch_repos import (
    AVAILABLE,
    NOT_CONFIGURED,
    UNKNOWN,
    RepoConfig,
    fix_availability,
    read_repositories,
)
from vmscan.guestfs_view import GuestFS
from vmscan.model import Finding, Severity
from vmscan.plugins import Check, ScanContext
from vmscan.versions import COMPARATORS, scheme_for_ecosystem

log = logging.getLogger(__name__)

NAME = "patch"
#: Catalogers whose status decides whether the inventory can be trusted.
PACKAGE_CATALOGERS = ("os/dpkg", "os/rpm", "os/apk", "os/windows")
#: libguestfs package formats that mean "this OS keeps a package database".
_FORMAT_CATALOGER = {"deb": "os/dpkg", "rpm": "os/rpm", "apk": "os/apk"}
#: Default age (days) past which feed data is reported as stale.
DEFAULT_MAX_AGE_DAYS = 7
#: Undetermined entries and unmatched CVE rows listed in the section at most.
LIST_LIMIT = 100


def signatures_dir(options: dict[str, Any]) -> Path:
    """The signatures folder (see :func:`vmscan.sigdir.signatures_dir`)."""
    return sigdir.signatures_dir(options)


def fingerprint(check: str, rule_id: str, target: str, root: str) -> str:
    """Stable identity of a finding across scans (same rule, same target, same root)."""
    return hashlib.sha256("\0".join((check, rule_id, target, root)).encode()).hexdigest()


def load_builds_table(path: Path) -> dict[str, Any]:
    """signatures/windows-builds.json, or an empty table when absent/broken."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.debug("windows builds table %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _today(options: dict[str, Any]) -> dt.date:
    raw = options.get("today")
    if isinstance(raw, dt.date):
        return raw
    if isinstance(raw, str):
        try:
            return dt.date.fromisoformat(raw)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC).date()


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _age(date: str, today: dt.date) -> int | None:
    try:
        return (today - dt.date.fromisoformat(date[:10])).days
    except ValueError:
        return None


class PatchCheck(Check):
    """Known advisories for installed packages, end-of-life OS, Windows update level."""

    NAME = NAME
    VERSION = "2"

    def run(self, fs: GuestFS | None, ctx: ScanContext) -> list[Finding]:
        root = ctx.root
        findings: list[Finding] = []
        section: dict[str, Any] = {"status": "complete", "reasons": []}
        sigdir = signatures_dir(ctx.options)
        self._inventory_health(ctx, section)
        index = self._open_index(ctx, section)
        try:
            if root.os.type != "windows":
                findings += self._advisories(fs, ctx, section, index)
            findings += self._eol(ctx, section, sigdir)
            if root.os.type == "windows":
                findings += self._windows(ctx, section, sigdir, index)
        finally:
            if index is not None:
                index.close()
        findings += self._stale(ctx, section)
        vuln = [f for f in findings if f.details.get("kind") in ("advisory", "windows_cve")]
        by_sev = Counter(f.severity for f in vuln)
        if section["reasons"]:
            section["status"] = "incomplete"
            ctx.notes.extend(f"patch: {r}" for r in section["reasons"][:5])
        section["summary"] = {
            "packages": len(root.packages),
            "vulnerable_packages": len({f.target for f in vuln if f.details["kind"] == "advisory"}),
            "vulnerabilities": len({f.rule_id for f in vuln}),
            "findings": len(findings),
            "fixable": sum(1 for f in vuln if f.details.get("status") == "fixable"),
            # Of the fixable ones: is the fix in the guest's configured repositories?
            "fix_available": dict(
                Counter(
                    str(f.details["fix_available"])
                    for f in vuln
                    if f.details.get("status") == "fixable" and "fix_available" in f.details
                )
            ),
            "unfixed": sum(1 for f in vuln if f.details.get("status") == "unfixed"),
            "by_severity": {s.value: by_sev.get(s, 0) for s in Severity},
        }
        # Kept for readers of schema 1.x reports.
        section["summary"]["advisories_by_severity"] = section["summary"]["by_severity"]
        root.sections[NAME] = section
        findings.sort(key=lambda f: (-f.severity.rank, f.rule_id, f.target))
        return findings

    # ------------------------------------------------------------------ inventory

    def _inventory_health(self, ctx: ScanContext, section: dict[str, Any]) -> None:
        """Reasons why the package inventory cannot be trusted (issue: garbage read as 0)."""
        root = ctx.root
        reasons: list[str] = section["reasons"]
        for p in root.plugins:
            if p.name in PACKAGE_CATALOGERS and p.status in ("failed", "partial"):
                reasons.append(f"{p.name} {p.status}: {(p.reason or 'no reason given')[:300]}")
        wanted = _FORMAT_CATALOGER.get(root.os.package_format)
        if wanted and root.os.type == "linux":
            mine = [p for p in root.packages if p.found_by == wanted]
            if not mine and not any(p.name == wanted for p in root.plugins if p.status == "failed"):
                reasons.append(
                    f"the OS keeps {root.os.package_format} packages but {wanted} found none"
                )

    def _open_index(self, ctx: ScanContext, section: dict[str, Any]) -> Index | None:
        path = ctx.options.get("advisory_index")
        try:
            if not path:
                path = str(ensure_index(default_advisories_dir(ctx.options)))
            index = open_index(Path(path))
        except (AdvisoryError, OSError) as e:
            section["reasons"].append(f"advisory index not usable: {str(e)[:300]}")
            return None
        section["advisories_digest"] = index.digest
        return index

    # ------------------------------------------------------------------ packages

    def _feeds_for(
        self, index: Index, eco: Ecosystem, today: dt.date, max_age: int
    ) -> list[dict[str, Any]]:
        out = []
        for feed in index.feeds():
            if not any(eco.matches(e) for e in feed.ecosystems):
                continue
            age = _age(feed.date, today)
            out.append(
                {
                    "name": feed.name,
                    "kind": feed.kind,
                    "date": feed.date,
                    "records": feed.records,
                    "age_days": age,
                    "stale": age is None or age > max_age,
                }
            )
        return out

    def _advisories(
        self, fs: GuestFS | None, ctx: ScanContext, section: dict[str, Any], index: Index | None
    ) -> list[Finding]:
        root = ctx.root
        packages = [p for p in root.packages if p.found_by.startswith("os/")]
        eco = guest_ecosystem(root.os)
        if eco is None:
            if root.os.type == "linux":
                section["reasons"].append(
                    f"no advisory feed format known for "
                    f"{(root.os.os_release_id or root.os.distro)[:60]}: packages not matched"
                )
            return []
        section["ecosystem"] = str(eco)
        if index is None:
            return []
        today = _today(ctx.options)
        max_age = int(ctx.options.get("advisory_max_age_days") or DEFAULT_MAX_AGE_DAYS)
        feeds = self._feeds_for(index, eco, today, max_age)
        section["feeds"] = feeds
        if not feeds:
            section["reasons"].append(f"no advisory data covers {eco}: packages not matched")
            return [
                Finding(
                    check=NAME,
                    rule_id="patch/no-advisory-data",
                    severity=Severity.INFO,
                    title=f"No advisory data for {eco}: installed packages were not matched",
                    target=str(eco),
                    details={"kind": "coverage", "ecosystem": str(eco)},
                    fingerprint=fingerprint(NAME, "patch/no-advisory-data", str(eco), root.device),
                )
            ]
        res = match_packages(index, eco, packages)
        ctx.notes.extend(res.notes[:20])
        if res.undetermined:
            section["undetermined"] = sorted(
                {f"{pkg.name} {adv.id}" for adv, pkg in res.undetermined}
            )[:LIST_LIMIT]
        repos = self._repositories(fs, ctx, section)
        codename = eco.codename or (root.os.version_codename or "").lower()
        return self._findings(res.matches, root.device, repos, codename)

    @staticmethod
    def _repositories(fs: GuestFS | None, ctx: ScanContext, section: dict[str, Any]) -> RepoConfig:
        """The guest's repository configuration, or the one an earlier scan stored."""
        cfg = read_repositories(fs, ctx.root.os.package_format)
        out = cfg.to_section()
        if fs is None:
            # An offline re-check (nightly) has no guest: reuse the last scan's reading.
            previous = (ctx.root.sections.get(NAME) or {}).get("repositories")
            stored = RepoConfig.from_section(previous)
            if stored is not None:
                cfg, out = stored, {**stored.to_section(), "from_previous_scan": True}
        section["repositories"] = out
        return cfg

    def _findings(
        self, matches: list[Match], device: str, repos: RepoConfig | None = None, codename: str = ""
    ) -> list[Finding]:
        """One finding per (package, vulnerability), merging every record that names it."""
        groups: dict[tuple[str, str, str], list[Match]] = {}
        for m in matches:
            for vid in m.advisory.cves or (m.advisory.id,):
                groups.setdefault((m.package.name, m.package.arch, vid), []).append(m)
        out = []
        for (name, arch, vid), ms in sorted(groups.items()):
            pkg = ms[0].package
            scheme = scheme_for_ecosystem(ms[0].affected.ecosystem) or "deb"
            cmp = COMPARATORS[scheme]
            fixed: str | None = None
            for m in ms:
                if m.fixed_version and (fixed is None or cmp(m.fixed_version, fixed) > 0):
                    fixed = m.fixed_version
            rating = worst([m.affected.rating for m in ms] + [m.advisory.rating for m in ms])
            ids = sorted({m.advisory.id for m in ms})
            aliases = sorted({a for m in ms for a in (m.advisory.id, *m.advisory.aliases)} - {vid})
            fix_in = sorted(
                {
                    suite
                    for m in ms
                    for suite, v in (m.affected.extra.get("repositories") or {}).items()
                    if fixed and isinstance(v, str) and cmp(v, fixed) >= 0
                }
            )
            urgency = sorted(
                {str(m.affected.extra["urgency"]) for m in ms if m.affected.extra.get("urgency")}
            )
            title = (
                f"{name} {pkg.version} is affected by {vid}; fixed in {fixed}"
                if fixed
                else f"{name} {pkg.version} is affected by {vid}; no fix yet"
            )
            target_key = f"{name}:{arch}" if arch else name
            details: dict[str, Any] = {
                "kind": "advisory",
                "package": name,
                "arch": arch,
                "source_name": pkg.source_name,
                "installed_version": pkg.version,
                "compared_version": ms[0].compared_version,
                "fixed_version": fixed,
                "status": "fixable" if fixed else "unfixed",
                "advisory_ids": ids,
                "aliases": aliases,
                "sources": sorted({f"{m.advisory.kind}:{m.advisory.feed}" for m in ms}),
                "ecosystem": ms[0].affected.ecosystem,
                "advisory_package": ms[0].affected.name,
                "severity_source": rating.source,
                "cvss_score": rating.score,
                "summary": next((m.advisory.summary for m in ms if m.advisory.summary), ""),
                "references": sorted({r for m in ms for r in m.advisory.references})[:5],
                "published": min(
                    (m.advisory.published for m in ms if m.advisory.published), default=""
                ),
            }
            if urgency:
                details["urgency"] = urgency
            modules = sorted({m.module for m in ms if m.module})
            if modules:
                details["module_stream"] = modules[0] if len(modules) == 1 else modules
            if fix_in:
                details["fix_in_repositories"] = fix_in
            if fixed:
                details["fix_available"], details["fix_available_reason"] = self._available(
                    ms, repos, codename, fix_in
                )
            else:
                details["fix_available"] = "no fix yet"
            out.append(
                Finding(
                    check=NAME,
                    rule_id=vid,
                    severity=Severity(rating.severity),
                    title=title,
                    target=name,
                    details=details,
                    fingerprint=fingerprint(NAME, vid, target_key, device),
                )
            )
        return out

    @staticmethod
    def _available(
        ms: list[Match], repos: RepoConfig | None, codename: str, fix_in: list[str]
    ) -> tuple[str, str]:
        """Whether the guest's configured repositories carry the fix (best answer wins)."""
        rank = {AVAILABLE: 0, NOT_CONFIGURED: 1, UNKNOWN: 2}
        answers = []
        for m in ms:
            known = [str(k) for k in (m.affected.extra.get("repositories") or {})]
            answers.append(
                fix_availability(
                    repos,
                    feed_kind=str(m.advisory.kind),
                    codename=codename,
                    carriers=fix_in,
                    known_suites=known,
                    alpine_repo=str(m.affected.extra.get("repository") or ""),
                )
            )
        return min(answers, key=lambda a: rank.get(a[0], 3))

    # ------------------------------------------------------------------ staleness

    def _stale(self, ctx: ScanContext, section: dict[str, Any]) -> list[Finding]:
        feeds = list(section.get("feeds") or []) + list(
            (section.get("windows") or {}).get("feeds") or []
        )
        stale = [f for f in feeds if f.get("stale")]
        if not stale:
            return []
        max_age = int(ctx.options.get("advisory_max_age_days") or DEFAULT_MAX_AGE_DAYS)
        names = ", ".join(
            f"{f['name']} ({f.get('date') or 'no date'}"
            + (f", {f['age_days']} days" if f.get("age_days") is not None else "")
            + ")"
            for f in stale[:5]
        )
        return [
            Finding(
                check=NAME,
                rule_id="patch/stale-data",
                severity=Severity.INFO,
                title=f"Patch data older than {max_age} days: {names}; import current feeds",
                target="advisory data",
                details={"kind": "stale_data", "max_age_days": max_age, "feeds": stale[:20]},
                fingerprint=fingerprint(NAME, "patch/stale-data", "feeds", ctx.root.device),
            )
        ]

    # ------------------------------------------------------------------ end of life

    def _eol(self, ctx: ScanContext, section: dict[str, Any], sigdir: Path) -> list[Finding]:
        root = ctx.root
        try:
            table = eol.load_table(sigdir / "eol.json")
        except eol.EolTableError as exc:
            ctx.notes.append(f"end-of-life table not usable: {exc}")
            return []
        st = eol.status(root.os, table, _today(ctx.options))
        if st is None:
            section["eol"] = {"known": False}
            return []
        e = st.entry
        section["eol"] = {
            "known": True,
            "name": e.name,
            "state": st.state,
            "eol": e.eol.isoformat(),
            "extended": e.extended.isoformat() if e.extended else None,
            "as_of": st.today.isoformat(),
        }
        if st.state == "supported":
            return []
        if st.state == "extended":
            sev = "medium"
            title = (
                f"{e.name} is past the end of standard security support ({e.eol}); "
                f"only extended support remains until {e.extended}"
            )
        else:
            sev = "high"
            title = f"{e.name} is past its end of life ({e.extended or e.eol})"
        rule = f"eol/{e.os}-{e.version or e.product.replace(' ', '-')}"
        if e.build:
            rule += f"-{e.build}"
        return [
            Finding(
                check=NAME,
                rule_id=rule,
                severity=Severity(sev),
                title=title,
                target=e.name,
                details={
                    "kind": "eol",
                    "state": st.state,
                    "eol": e.eol.isoformat(),
                    "extended": e.extended.isoformat() if e.extended else None,
                    "days_past_eol": st.days_past_eol,
                },
                fingerprint=fingerprint(NAME, rule, e.name, root.device),
            )
        ]

    # ------------------------------------------------------------------ Windows

    def _windows(
        self, ctx: ScanContext, section: dict[str, Any], sigdir: Path, index: Index | None
    ) -> list[Finding]:
        from vmscan.checks.patch_windows import windows_findings

        return windows_findings(ctx, section, sigdir, index, self._builds_rows(sigdir, index))

    @staticmethod
    def _builds_rows(sigdir: Path, index: Index | None) -> list[dict[str, Any]]:
        table = load_builds_table(sigdir / "windows-builds.json")
        rows = parse_builds(table, source="bundled").rows if table else []
        if index is not None:
            rows += index.windows_builds()
        return rows


__all__ = ["PatchCheck", "Rating", "fingerprint", "load_builds_table", "signatures_dir"]
