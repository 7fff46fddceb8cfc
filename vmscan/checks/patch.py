"""Patch-level check: OSV advisories vs installed packages, OS end of life, Windows UBR."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmscan import eol
from vmscan.advisories import cached_db, default_advisories_dir, guest_ecosystem
from vmscan.guestfs_view import GuestFS
from vmscan.model import SEVERITY_ORDER, Finding
from vmscan.plugins import Check, ScanContext

log = logging.getLogger(__name__)

NAME = "patch"


def signatures_dir(options: dict[str, Any]) -> Path:
    """``$VMSCAN_SIGNATURES``, the ``signatures_dir`` option, or the repository's folder."""
    env = os.environ.get("VMSCAN_SIGNATURES")
    if env:
        return Path(env)
    if options.get("signatures_dir"):
        return Path(options["signatures_dir"])
    return Path(__file__).resolve().parent.parent.parent / "signatures"


def fingerprint(check: str, rule_id: str, target: str, root: str) -> str:
    """Stable identity of a finding across scans (same rule, same target, same root)."""
    return hashlib.sha256("\0".join((check, rule_id, target, root)).encode()).hexdigest()


# ---------------------------------------------------------------------------
# Windows build / UBR table


@dataclass(frozen=True)
class WindowsPatchLevel:
    """How far a Windows build.UBR is behind the latest cumulative update in the table."""

    build: int
    ubr: int
    name: str
    latest_ubr: int
    latest_kb: str
    latest_date: str
    installed_kb: str | None
    installed_date: str | None
    updates_behind: int
    days_behind: int
    missing: tuple[dict[str, Any], ...]
    table_as_of: str


def load_builds_table(path: Path) -> dict[str, Any]:
    """signatures/windows-builds.json, or an empty table when absent/broken."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.debug("windows builds table %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def windows_patch_level(build: int, ubr: int, table: dict[str, Any]) -> WindowsPatchLevel | None:
    """Compare ``build.ubr`` with the table; None when the build is not in it."""
    builds = table.get("builds") or {}
    entry = builds.get(str(build))
    if entry is None:
        for row in builds.values():
            if isinstance(row, dict) and build in (row.get("also") or []):
                entry = row
                break
    if not isinstance(entry, dict) or not entry.get("updates"):
        return None
    updates = sorted(
        (u for u in entry["updates"] if isinstance(u, dict) and isinstance(u.get("ubr"), int)),
        key=lambda u: u["ubr"],
    )
    if not updates:
        return None
    latest = updates[-1]
    missing = tuple(u for u in updates if u["ubr"] > ubr)
    installed = None
    for u in updates:
        if u["ubr"] <= ubr:
            installed = u
    days = 0
    if missing:
        ref = installed["date"] if installed else missing[0]["date"]
        try:
            days = (dt.date.fromisoformat(latest["date"]) - dt.date.fromisoformat(ref)).days
        except (ValueError, TypeError):
            days = 0
    return WindowsPatchLevel(
        build=build,
        ubr=ubr,
        name=str(entry.get("name", "")),
        latest_ubr=latest["ubr"],
        latest_kb=str(latest.get("kb", "")),
        latest_date=str(latest.get("date", "")),
        installed_kb=installed.get("kb") if installed else None,
        installed_date=installed.get("date") if installed else None,
        updates_behind=len(missing),
        days_behind=max(days, 0),
        missing=missing,
        table_as_of=str(table.get("as_of", "")),
    )


# ---------------------------------------------------------------------------


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


class PatchCheck(Check):
    """Known advisories for installed packages, end-of-life OS, Windows update level."""

    NAME = NAME
    VERSION = "1"

    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        root = ctx.root
        findings: list[Finding] = []
        section: dict[str, Any] = {}
        sigdir = signatures_dir(ctx.options)
        findings += self._advisories(ctx, section)
        findings += self._eol(ctx, section, sigdir)
        if root.os.type == "windows":
            findings += self._windows(ctx, section, sigdir)
        by_sev = Counter(f.severity for f in findings if f.details.get("kind") == "advisory")
        vulnerable = {f.target for f in findings if f.details.get("kind") == "advisory"}
        section["summary"] = {
            "packages": len(root.packages),
            "vulnerable_packages": len(vulnerable),
            "advisories": len({f.rule_id for f in findings if f.details.get("kind") == "advisory"}),
            "findings": len(findings),
            "fixable": sum(1 for f in findings if f.details.get("status") == "fixable"),
            "unfixed": sum(1 for f in findings if f.details.get("status") == "unfixed"),
            "advisories_by_severity": {
                s: by_sev.get(s, 0) for s in sorted(SEVERITY_ORDER, key=SEVERITY_ORDER.__getitem__)
            },
        }
        root.sections[NAME] = section
        findings.sort(key=lambda f: (-SEVERITY_ORDER.get(f.severity, 0), f.rule_id, f.target))
        return findings

    def _advisories(self, ctx: ScanContext, section: dict[str, Any]) -> list[Finding]:
        root = ctx.root
        if not root.packages:
            return []
        eco = guest_ecosystem(root.os)
        if eco is None:
            if root.os.type == "linux":
                ctx.notes.append(
                    f"no OSV ecosystem known for {root.os.os_release_id or root.os.distro}; "
                    "packages were not matched against advisories"
                )
            return []
        adv_dir = default_advisories_dir(ctx.options)
        db = cached_db(adv_dir)
        if db.notes:
            ctx.notes.append(
                f"{len(db.notes)} advisory file(s) skipped in {adv_dir} (first: {db.notes[0]})"
            )
        section.update(
            {
                "ecosystem": f"{eco.base}:{eco.release}",
                "advisories_dir": str(adv_dir),
                "advisories_digest": db.digest,
                "advisories_loaded": len(db.advisories),
            }
        )
        matches, notes = db.match(eco, [p for p in root.packages if p.found_by.startswith("os/")])
        ctx.notes.extend(notes[:20])
        out: list[Finding] = []
        for m in matches:
            pkg = m.package
            title = (
                f"{pkg.name} {pkg.version} is affected by {m.advisory.id}; fixed in "
                f"{m.fixed_version}"
                if m.fixed_version
                else f"{pkg.name} {pkg.version} is affected by {m.advisory.id}; no fix yet"
            )
            target_key = f"{pkg.name}:{pkg.arch}" if pkg.arch else pkg.name
            out.append(
                Finding(
                    check=NAME,
                    rule_id=m.advisory.id,
                    severity=m.affected.severity,
                    title=title,
                    target=pkg.name,
                    details={
                        "kind": "advisory",
                        "aliases": list(m.advisory.aliases),
                        "summary": m.advisory.summary,
                        "package": pkg.name,
                        "arch": pkg.arch,
                        "source_name": pkg.source_name,
                        "installed_version": pkg.version,
                        "compared_version": m.compared_version,
                        "advisory_package": m.affected.name,
                        "fixed_version": m.fixed_version,
                        "status": m.status,
                        "ecosystem": m.affected.ecosystem,
                        "cvss_score": m.affected.score,
                        "references": list(m.advisory.references[:5]),
                        "published": m.advisory.published,
                    },
                    fingerprint=fingerprint(NAME, m.advisory.id, target_key, root.device),
                )
            )
        return out

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
                severity=sev,
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

    def _windows(self, ctx: ScanContext, section: dict[str, Any], sigdir: Path) -> list[Finding]:
        root = ctx.root
        extra = root.os.extra
        kbs = list(extra.get("installed_kbs") or [])
        build, ubr = _int(extra.get("current_build")), _int(extra.get("ubr"))
        win: dict[str, Any] = {"build": build, "ubr": ubr, "installed_kbs": kbs}
        section["windows"] = win
        if build is None or ubr is None:
            if build is not None:
                ctx.notes.append(f"Windows build {build} has no UBR: update level not computed")
            return []
        table = load_builds_table(sigdir / "windows-builds.json")
        lvl = windows_patch_level(build, ubr, table)
        if lvl is None:
            win["known"] = False
            return []
        win.update(
            {
                "known": True,
                "name": lvl.name,
                "latest": f"{lvl.build}.{lvl.latest_ubr}",
                "latest_kb": lvl.latest_kb,
                "latest_date": lvl.latest_date,
                "installed_update_kb": lvl.installed_kb,
                "updates_behind": lvl.updates_behind,
                "days_behind": lvl.days_behind,
                "table_as_of": lvl.table_as_of,
            }
        )
        if lvl.updates_behind == 0:
            return []
        sev = "medium" if lvl.updates_behind <= 2 else "high"
        rule = f"windows-cu/{lvl.build}"
        return [
            Finding(
                check=NAME,
                rule_id=rule,
                severity=sev,
                title=(
                    f"{lvl.name} {build}.{ubr} is {lvl.updates_behind} cumulative update(s) "
                    f"/ {lvl.days_behind} days behind {lvl.latest_kb} "
                    f"({build}.{lvl.latest_ubr}, {lvl.latest_date})"
                ),
                target=f"{build}.{ubr}",
                details={
                    "kind": "windows_update",
                    "build": build,
                    "ubr": ubr,
                    "latest_ubr": lvl.latest_ubr,
                    "latest_kb": lvl.latest_kb,
                    "updates_behind": lvl.updates_behind,
                    "days_behind": lvl.days_behind,
                    "missing_kbs": [u.get("kb") for u in lvl.missing],
                    "installed_kbs": kbs,
                    "table_as_of": lvl.table_as_of,
                },
                fingerprint=fingerprint(NAME, rule, str(build), root.device),
            )
        ]
