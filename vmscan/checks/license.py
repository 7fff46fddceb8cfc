"""Licence check: fills ``packages[].licenses`` (SPDX), inventories Windows, applies the policy.

For each package the licence is read where its format states it: dpkg's copyright file,
rpm's LICENSE tag, apk's license field (the catalogers keep the last two in
``extra["license_declared"]``). ``license_source`` says where it was read, or
"unknown". On Windows, executables under the program folders are cross-checked with the
Uninstall entries. Findings (check "license") report packages whose category the policy
asks to report, watched commercial products, and stale Uninstall entries.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

from vmscan.completeness import Info, info, relabel
from vmscan.guestfs_view import GuestFS, Stat
from vmscan.license.copyright import COPYRIGHT_LIMIT, is_copyright_file, read_package_copyright
from vmscan.license.policy import (
    Decision,
    Policy,
    WatchRule,
    edition_of,
    load_policy,
    watch_matches_os,
    watch_matches_package,
    watch_matches_path,
)
from vmscan.license.spdx_map import LicenseMap, default_map
from vmscan.license.windows_inventory import (
    MAX_EXES,
    WindowsInventory,
    cross_check,
    os_edition,
)
from vmscan.model import Finding, Package, Severity
from vmscan.plugins import Check, Requirements, ScanContext

log = logging.getLogger(__name__)

CHECK = "license"
_MAX_NOTES = 50
_MAX_DECLARED = 300


def fingerprint(rule_id: str, target: str, licence: str) -> str:
    """Stable across runs: same rule, same package, same licence."""
    return hashlib.sha256(f"license\0{rule_id}\0{target}\0{licence}".encode()).hexdigest()[:32]


def package_kind(pkg: Package) -> str:
    """ "dpkg", "rpm", "apk", "windows" or "" from the cataloger name or the purl."""
    fb, purl = pkg.found_by.lower(), pkg.purl.lower()
    if "dpkg" in fb or purl.startswith("pkg:deb/"):
        return "dpkg"
    if "rpm" in fb or purl.startswith("pkg:rpm/"):
        return "rpm"
    if "apk" in fb or purl.startswith("pkg:apk/"):
        return "apk"
    if "windows" in fb:
        return "windows"
    return ""


def target_of(pkg: Package) -> str:
    """How a finding names a package."""
    return f"{pkg.name}@{pkg.version}" if pkg.version else pkg.name


def fill_licences(fs: GuestFS, packages: list[Package], lmap: LicenseMap, notes: list[str]) -> None:
    """Set ``licenses`` and ``license_source`` of every package (in place)."""
    cache: dict[str, tuple[list[str], str, str, tuple[str, ...]]] = {}
    memo: dict[str, Stat | None] = {}
    for pkg in packages:
        try:
            _fill_one(fs, pkg, lmap, notes, cache, memo)
        except Exception as e:  # one bad package never aborts the others
            log.debug("licence of %s failed", pkg.name, exc_info=True)
            notes.append(f"{pkg.name}: licence not read ({type(e).__name__}: {e})")
            pkg.license_source = pkg.license_source or "unknown"


def _fill_one(
    fs: GuestFS,
    pkg: Package,
    lmap: LicenseMap,
    notes: list[str],
    cache: dict[str, tuple[list[str], str, str, tuple[str, ...]]],
    memo: dict[str, Stat | None],
) -> None:
    if pkg.licenses:
        pkg.license_source = pkg.license_source or "cataloger"
        return
    kind = package_kind(pkg)
    if kind == "dpkg":
        key = pkg.name
        if key not in cache:
            res, path = read_package_copyright(fs, pkg.name, lmap, memo=memo)
            source = f"{path}#{res.method}" if res.licenses else "unknown"
            cache[key] = (list(res.licenses), source, res.method, res.notes)
        lics, source, _method, pnotes = cache[key]
        pkg.licenses = list(lics)
        pkg.license_source = source
        if pnotes:
            pkg.extra["license_notes"] = list(pnotes[:3])
        for n in pnotes[:3]:
            notes.append(relabel(n, f"{pkg.name}: {n}"))
        return
    if kind in ("rpm", "apk"):
        declared = str(pkg.extra.get("license_declared") or "").strip()
        field = "rpm:LICENSE" if kind == "rpm" else "apk:license"
        if not declared:
            pkg.license_source = "unknown"
            return
        norm = lmap.normalize(declared)
        if norm is None:
            pkg.license_source = "unknown"
            pkg.extra["license_notes"] = [f"licence {declared[:80]!r} not understood"]
            # Reported as unknown, which is the truth: a reading, not a gap.
            notes.append(info(f"{pkg.name}: licence {declared[:80]!r} not understood"))
            return
        pkg.licenses = [norm.expression]
        pkg.license_source = field
        if norm.notes:
            pkg.extra["license_notes"] = list(norm.notes[:3])
        for n in norm.notes[:3]:
            notes.append(info(f"{pkg.name}: {n}"))
        return
    # Windows programs and unknown formats: nothing states a licence.
    pkg.license_source = "unknown"


def _watch_hits(policy: Policy, ctx: ScanContext, edition: dict[str, Any]) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(rule: WatchRule, ed: str, evidence: str) -> None:
        if (rule.id, ed) in seen:
            return
        seen.add((rule.id, ed))
        hits.append({"id": rule.id, "product": rule.product, "edition": ed, "evidence": evidence})

    product = str(edition.get("product_name") or "")
    for rule in policy.watch:
        if rule.kind == "os":
            if product and watch_matches_os(rule, product):
                ed = str(edition.get("edition_id") or "") or edition_of(rule, product) or product
                itype = str(edition.get("installation_type") or "")
                if itype:
                    ed = f"{ed} ({itype})"
                add(rule, ed, f"os: {product}")
            continue
        for pkg in ctx.root.packages:
            if watch_matches_package(rule, pkg.name):
                ed = str(pkg.extra.get("edition") or "") or edition_of(rule, pkg.name)
                add(rule, ed, f"package: {target_of(pkg)}")
        if rule.paths:
            for fe in ctx.manifest:
                if watch_matches_path(rule, fe.path):
                    add(rule, edition_of(rule, fe.path), f"file: {fe.path}")
                    break
    return hits


class LicenseCheck(Check):
    """Licences (SPDX) of every package, the Windows inventory, and the licence policy."""

    NAME = CHECK
    VERSION = "1"

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """dpkg's copyright files, up to the parser's limit (the head of a larger one),
        kept by content so that a rescan or a clone is served from the cache database."""
        return (Requirements(predicate=is_copyright_file, max_bytes=COPYRIGHT_LIMIT, persist=True),)

    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        policy = load_policy(ctx.options)
        lmap = default_map(ctx.options.get("license_map"))
        notes: list[str] = []
        findings: list[Finding] = []
        edition = os_edition(ctx.root.os)
        section: dict[str, Any] = {"policy": policy.source, "os_edition": edition}

        if ctx.root.os.type == "windows":
            max_exes = int(ctx.options.get("license_pe_max", MAX_EXES))
            try:
                inv = cross_check(fs, ctx.root.packages, ctx.manifest, max_exes)
            except Exception as e:  # the inventory is extra: licences and policy still run
                log.warning("Windows inventory failed: %s", e, exc_info=True)
                notes.append(f"Windows inventory failed ({type(e).__name__}: {e})")
                inv = WindowsInventory()
            ctx.root.packages.extend(inv.new_packages)
            notes.extend(inv.notes)
            section["windows"] = {
                "executables_seen": inv.exes_seen,
                "executables_read": inv.exes_read,
                "executables_without_version": inv.exes_without_version,
                "products_on_disk": len(inv.products),
                "verified_by_disk": inv.verified,
                "found_on_disk_only": [target_of(p) for p in inv.new_packages],
                "stale_uninstall_entries": [target_of(p) for p in inv.stale],
            }
            for p in inv.stale:
                loc = str(p.extra.get("install_location") or p.extra.get("InstallLocation"))
                findings.append(
                    Finding(
                        check=CHECK,
                        rule_id="license.windows.stale-uninstall-entry",
                        severity=Severity.LOW,
                        title=f"Uninstall entry of {p.name} names a missing folder",
                        target=target_of(p),
                        details={
                            "package": p.name,
                            "version": p.version,
                            "install_location": loc,
                            "rule": "install location is gone",
                        },
                        fingerprint=fingerprint("stale", target_of(p), loc),
                    )
                )

        # dpkg's copyright files came in the root's one stream (requirements above).
        fill_licences(fs, ctx.root.packages, lmap, notes)

        counts: Counter[str] = Counter()
        for pkg in ctx.root.packages:
            decision: Decision = policy.classify_all(pkg.licenses)
            counts[decision.category] += 1
            pkg.extra["license_category"] = decision.category
            if decision.category not in policy.report:
                continue
            if (
                not pkg.licenses
                and package_kind(pkg) == "windows"
                and not policy.report_windows_programs
            ):
                continue
            shown = (
                " AND ".join(
                    f"({e})" if (" OR " in e or " AND " in e) and len(pkg.licenses) > 1 else e
                    for e in pkg.licenses
                )
                or "unknown"
            )
            rule_id = f"license.{decision.category}"
            findings.append(
                Finding(
                    check=CHECK,
                    rule_id=rule_id,
                    severity=policy.severity.get(decision.category, Severity.INFO),
                    title=f"{pkg.name}: licence {shown[:120]} is {decision.category}",
                    target=target_of(pkg),
                    details={
                        "package": pkg.name,
                        "version": pkg.version,
                        "license": shown,
                        "licenses": list(pkg.licenses),
                        "category": decision.category,
                        "rule": decision.rule,
                        "deciding_license": decision.licence,
                        "license_source": pkg.license_source or "unknown",
                    },
                    fingerprint=fingerprint(rule_id, target_of(pkg), shown),
                )
            )

        watched = _watch_hits(policy, ctx, edition)
        for w in watched:
            findings.append(
                Finding(
                    check=CHECK,
                    rule_id=f"license.watch.{w['id']}",
                    severity=Severity.INFO,
                    title=f"Watched product: {w['product']}"
                    + (f" {w['edition']}" if w["edition"] else ""),
                    target=str(w["evidence"]),
                    details={**w, "category": "watched", "rule": f"watch:{w['id']}"},
                    fingerprint=fingerprint(
                        f"watch.{w['id']}", str(w["evidence"]), str(w["edition"])
                    ),
                )
            )

        total = len(ctx.root.packages)
        with_licence = sum(1 for p in ctx.root.packages if p.licenses)
        section.update(
            {
                "packages": total,
                "with_license": with_licence,
                "categories": dict(sorted(counts.items())),
                "watched": watched,
            }
        )
        ctx.root.sections["license"] = section
        # Gaps first: the ones cut off by the cap must never be the only gaps.
        notes.sort(key=lambda n: isinstance(n, Info))
        for n in notes[:_MAX_NOTES]:
            ctx.notes.append(relabel(n, f"license: {n}"))
        if len(notes) > _MAX_NOTES:
            more = f"license: {len(notes) - _MAX_NOTES} more notes not shown"
            rest = notes[_MAX_NOTES:]
            ctx.notes.append(info(more) if all(isinstance(n, Info) for n in rest) else more)
        return sorted(findings, key=lambda f: (f.rule_id, f.target))


__all__ = ["LicenseCheck", "fill_licences", "package_kind"]
