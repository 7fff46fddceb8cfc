"""Windows side of the patch check: build.UBR vs cumulative updates, per-CVE fixed builds.

- build table (shipped ``signatures/windows-builds.json`` plus imported tables): how many
  monthly cumulative updates and days the guest's UBR is behind the latest one; a build
  the table does not know is an ``info`` finding and makes the section incomplete;
- servicing: a cumulative update (``Package_for_RollupFix``) installed in Component Based
  Servicing with a UBR above the registry's is installed but not active (reboot pending);
- per-CVE table (imported MSRC CVRF / CVE-KB-FixedBuild rows): every CVE whose fixed build
  on the guest's build is above its UBR, with the KBs that fix it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from vmscan.advisories.index import Index
from vmscan.advisories.model import Rating
from vmscan.advisories.severity import word_rating, worst
from vmscan.advisories.wesng import closure
from vmscan.advisories.windows import patch_level
from vmscan.model import Finding, Severity
from vmscan.plugins import ScanContext

NAME = "patch"
#: Said with every result that rests on vmscan's own (hand-compiled) build table.
HAND_COMPILED = (
    "the shipped build table is hand-compiled by the vmscan authors: verify against "
    "Microsoft's update history before relying on it, or import a current table"
)
#: CBS CurrentState of an installed package (0x70); staged or pending ones are lower.
CBS_INSTALLED = 0x70


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _edition(extra: dict[str, Any], product_name: str) -> str:
    """``server`` or ``client`` from InstallationType/ProductName; ``""`` when unknown."""
    kind = f"{extra.get('installation_type') or ''} {extra.get('product_name') or product_name}"
    low = kind.lower()
    if "server" in low:
        return "server"
    if "client" in low or "windows 10" in low or "windows 11" in low:
        return "client"
    return ""


def _fp(rule: str, target: str, device: str) -> str:
    from vmscan.checks.patch import fingerprint

    return fingerprint(NAME, rule, target, device)


def _feed_entries(
    rows: list[dict[str, Any]], build: int | None, index: Index | None, today: dt.date, max_age: int
) -> list[dict[str, Any]]:
    """The Windows data sets that cover *build*, with their dates and staleness."""
    out: list[dict[str, Any]] = []
    bundled = [r for r in rows if r.get("feed") is None]
    if bundled:
        date = max(r["date"] for r in bundled)
        out.append({"name": "windows-builds (bundled)", "kind": "windows-builds", "date": date})
    if index is not None:
        for feed in index.feeds():
            if feed.kind in ("windows-builds", "windows-cves", "wesng") and (
                build is None or f"Windows:{build}" in feed.ecosystems
            ):
                out.append({"name": feed.name, "kind": feed.kind, "date": feed.date})
    for f in out:
        try:
            f["age_days"] = (today - dt.date.fromisoformat(f["date"][:10])).days
        except ValueError:
            f["age_days"] = None
        f["stale"] = f["age_days"] is None or f["age_days"] > max_age
    return out


def windows_findings(
    ctx: ScanContext,
    section: dict[str, Any],
    sigdir: Path,
    index: Index | None,
    rows: list[dict[str, Any]],
) -> list[Finding]:
    """Findings and ``section["windows"]`` for one Windows root."""
    from vmscan.checks.patch import DEFAULT_MAX_AGE_DAYS, _today

    root = ctx.root
    extra = root.os.extra
    kbs = list(extra.get("installed_kbs") or [])
    build, ubr = _int(extra.get("current_build")), _int(extra.get("ubr"))
    win: dict[str, Any] = {"build": build, "ubr": ubr, "installed_kbs": kbs}
    section["windows"] = win
    today = _today(ctx.options)
    max_age = int(ctx.options.get("advisory_max_age_days") or DEFAULT_MAX_AGE_DAYS)
    win["feeds"] = _feed_entries(rows, build, index, today, max_age)
    if build is None:
        section["reasons"].append("no Windows build number in the registry: update level unknown")
        return []
    if ubr is None:
        section["reasons"].append(f"Windows build {build} has no UBR: update level unknown")
        return []
    out: list[Finding] = []
    edition = _edition(extra, root.os.product_name)
    lvl = patch_level(build, ubr, rows, edition)
    name = str(extra.get("product_name") or root.os.product_name or "Windows")
    if lvl is None:
        win["known"] = False
        reason = f"no patch data for Windows build {build} ({name[:60]}): update level unknown"
        section["reasons"].append(reason)
        out.append(
            Finding(
                check=NAME,
                rule_id="windows-cu/unknown-build",
                severity=Severity.INFO,
                title=f"No patch data for Windows build {build} ({name[:60]}): its cumulative "
                "update level is unknown",
                target=f"{build}.{ubr}",
                details={"kind": "windows_update", "build": build, "ubr": ubr, "known": False},
                fingerprint=_fp("windows-cu/unknown-build", str(build), root.device),
            )
        )
    else:
        facts = {
            "latest_ubr": lvl.latest_ubr,
            "latest_kb": lvl.latest_kb,
            "latest_date": lvl.latest_date,
            "installed_update_kb": lvl.installed_kb,
            "installed_update_date": lvl.installed_date,
            "updates_behind": lvl.updates_behind,
            "months_behind": lvl.months_behind,
            "days_behind": lvl.days_behind,
            "table_gaps": lvl.gaps,
            "table_as_of": lvl.table_as_of,
            "table_sources": list(lvl.sources),
        }
        if any(src.startswith("vmscan") for src in lvl.sources):
            facts["table_notice"] = HAND_COMPILED
        win.update({"known": True, "name": lvl.name, "latest": f"{lvl.build}.{lvl.latest_ubr}"})
        win.update(facts)
        if lvl.updates_behind:
            rule = f"windows-cu/{lvl.build}"
            behind = lvl.months_behind if lvl.months_behind is not None else lvl.updates_behind
            if lvl.months_behind is None:
                count = f"at least {lvl.updates_behind} cumulative update(s)"
            elif lvl.gaps and lvl.months_behind != lvl.updates_behind:
                count = (
                    f"{lvl.months_behind} monthly cumulative update(s) "
                    f"({lvl.updates_behind} of them in the table)"
                )
            else:
                count = f"{lvl.months_behind} cumulative update(s)"
            out.append(
                Finding(
                    check=NAME,
                    rule_id=rule,
                    severity=Severity.MEDIUM if behind <= 2 else Severity.HIGH,
                    title=(
                        f"{lvl.name} {build}.{ubr} is {count} / {lvl.days_behind} days behind "
                        f"{lvl.latest_kb} ({build}.{lvl.latest_ubr}, {lvl.latest_date})"
                    ),
                    target=f"{build}.{ubr}",
                    details={
                        "kind": "windows_update",
                        "build": build,
                        "ubr": ubr,
                        **facts,
                        "missing_kbs": [u.get("kb") for u in lvl.missing],
                        "installed_kbs": kbs,
                        "edition": edition or "unknown",
                    },
                    fingerprint=_fp(rule, str(build), root.device),
                )
            )
    out += _servicing(ctx, win, build, ubr)
    if index is not None:
        out += _cves(ctx, win, build, ubr, index, rows)
    return out


def _servicing(ctx: ScanContext, win: dict[str, Any], build: int, ubr: int) -> list[Finding]:
    """A cumulative update installed in CBS whose UBR the registry does not show yet."""
    rollups = [r for r in ctx.root.os.extra.get("servicing_rollups") or [] if isinstance(r, dict)]
    installed = [r for r in rollups if _int(r.get("state")) == CBS_INSTALLED and _int(r.get("ubr"))]
    if not installed:
        return []
    top = max(installed, key=lambda r: int(r["ubr"]))
    win["servicing_ubr"] = int(top["ubr"])
    if int(top["ubr"]) <= ubr:
        return []
    rule = "windows-cu/not-active"
    return [
        Finding(
            check=NAME,
            rule_id=rule,
            severity=Severity.MEDIUM,
            title=(
                f"A cumulative update for {build}.{top['ubr']} is installed but not active: the "
                f"registry still says {build}.{ubr} (restart pending or a failed install)"
            ),
            target=f"{build}.{ubr}",
            details={
                "kind": "windows_update",
                "registry_ubr": ubr,
                "servicing_ubr": int(top["ubr"]),
                "package": str(top.get("name", ""))[:200],
            },
            fingerprint=_fp(rule, str(build), ctx.root.device),
        )
    ]


_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64", "i386": "x86"}
_ARCH |= {"i686": "x86", "x86": "x86"}


def _kb_ubrs(rows: list[dict[str, Any]], build: int, edition: str) -> dict[str, int]:
    """KB -> UBR on *build* from the build-table rows (its servicing branch, its edition)."""
    out: dict[str, int] = {}
    for r in rows:
        branch = r["build"] == build or build in (r.get("also") or [])
        if r.get("kb") and branch and (not edition or r.get("edition", "") in ("", edition)):
            out.setdefault(str(r["kb"]), int(r["ubr"]))
    return out


def _wesng_verdicts(
    index: Index, build: int, ubr: int, edition: str, arch: str, kb_ubr: dict[str, int]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """CVE -> verdicts from WES-NG rows of the guest's product, and counts for the section.

    A verdict is ``fixed_ubr`` (the KB's UBR from the build table) or, for a KB the table
    does not know, ``after_ubr`` (a KB it supersedes is in the table and the guest is not
    past it: vulnerable, fixed somewhere after that UBR); a KB superseded by a table KB the
    guest has is fixed; anything else is undetermined and counted.
    """
    rows = [
        r
        for r in index.windows_kb_cves(build)
        if (not edition or r["edition"] == edition) and (not arch or r["arch"] in ("", arch))
    ]
    facts: dict[str, Any] = {"rows": len(rows)}
    if not rows:
        return {}, facts
    older = index.windows_supersedes(build, edition, arch)
    newer: dict[str, set[str]] = {}
    for kb, olds in older.items():
        for o in olds:
            newer.setdefault(o, set()).add(kb)
    bounds: dict[str, tuple[int | None, int | None]] = {}
    verdicts: dict[str, list[dict[str, Any]]] = {}
    undetermined: set[str] = set()
    missing_kbs: set[str] = set()
    for r in rows:
        kb, cve = r["kb"], r["cve"]
        v: dict[str, Any] = {"kb": kb, "product": r["product"], "feed": r["feed"]}
        v["rating"] = Rating(word_rating(r["severity"]) or "unknown", None, "")
        if kb in kb_ubr:
            v["fixed_ubr"] = kb_ubr[kb]
        else:
            missing_kbs.add(kb)
            if kb not in bounds:
                lo = [kb_ubr[k] for k in closure(kb, older) if k in kb_ubr]
                hi = [kb_ubr[k] for k in closure(kb, newer) if k in kb_ubr]
                bounds[kb] = (max(lo) if lo else None, min(hi) if hi else None)
            lo_ubr, hi_ubr = bounds[kb]
            if hi_ubr is not None and ubr >= hi_ubr:
                continue  # a later update that contains this one is installed
            if lo_ubr is None or ubr > lo_ubr:
                undetermined.add(cve)
                continue
            v["after_ubr"] = lo_ubr
        if r["severity"]:
            v["rating"] = Rating(v["rating"].severity, None, f"MSRC {r['severity'][:20]}")
        verdicts.setdefault(cve, []).append(v)
    facts["kbs_not_in_build_table"] = sorted(missing_kbs, key=lambda k: k[2:].zfill(8))[-20:]
    facts["undetermined_cves"] = len(undetermined - set(verdicts))
    return verdicts, facts


def _cves(
    ctx: ScanContext,
    win: dict[str, Any],
    build: int,
    ubr: int,
    index: Index,
    table_rows: list[dict[str, Any]],
) -> list[Finding]:
    """Every CVE whose fix on *build* the guest's UBR does not have.

    From the per-CVE tables with fixed builds (MSRC CVRF, CVE/KB/FixedBuild CSV) and from
    WES-NG (CVE -> KB, the KB's UBR from the build table); a CVE that several KBs fix needs
    the highest of them.
    """
    extra = ctx.root.os.extra
    edition = _edition(extra, ctx.root.os.product_name)
    arch = _ARCH.get(str(ctx.root.os.arch).lower(), "")
    rows = index.windows_cves(build)
    win["cve_rows"] = len(rows)
    unmatched = index.windows_cves_without_build()
    if unmatched:
        win["cve_rows_without_fixed_build"] = unmatched
    server = edition == "server"
    mine = [r for r in rows if ("server" in r["product"].lower()) == server] or rows
    by_cve: dict[str, list[dict[str, Any]]] = {}
    for r in mine:
        if r["fixed_ubr"] is not None:
            by_cve.setdefault(r["cve"], []).append(
                {
                    "kb": r["kb"],
                    "product": r["product"],
                    "fixed_ubr": int(r["fixed_ubr"]),
                    "rating": Rating(r["severity"], r["score"], r["rating_source"]),
                    "source": f"windows-cves:{r['feed']}",
                }
            )
    verdicts, facts = _wesng_verdicts(
        index, build, ubr, edition, arch, _kb_ubrs(table_rows, build, edition)
    )
    if facts["rows"]:
        win["wesng"] = facts
    for cve, vs in verdicts.items():
        for v in vs:
            v["source"] = f"wesng:{v.pop('feed')}"
        by_cve.setdefault(cve, []).extend(vs)
    out = []
    for cve, vs in sorted(by_cve.items()):
        exact = [int(v["fixed_ubr"]) for v in vs if "fixed_ubr" in v]
        after = [int(v["after_ubr"]) for v in vs if "after_ubr" in v]
        fixed = max(exact) if exact else None
        if not after and (fixed is None or ubr >= fixed):
            continue
        rating = worst([v["rating"] for v in vs])
        kbs = sorted({v["kb"] for v in vs if v["kb"]})
        if after and (fixed is None or max(after) >= fixed):
            where = f"after {build}.{max(after)} (in {', '.join(kbs[:3])}, not in the build table)"
            fixed_build = None
        else:
            where = f"{build}.{fixed} ({', '.join(kbs[:3]) or 'no KB named'})"
            fixed_build = f"{build}.{fixed}"
        out.append(
            Finding(
                check=NAME,
                rule_id=cve,
                severity=Severity(rating.severity),
                title=f"Windows {build}.{ubr} is affected by {cve}; fixed in {where}",
                target=f"Windows {build}",
                details={
                    "kind": "windows_cve",
                    "build": build,
                    "ubr": ubr,
                    "fixed_build": fixed_build,
                    "fixed_after": f"{build}.{max(after)}" if after else None,
                    "kbs": kbs,
                    "products": sorted({v["product"] for v in vs})[:5],
                    "status": "fixable",
                    "sources": sorted({v["source"] for v in vs}),
                    "severity_source": rating.source,
                    "cvss_score": rating.score,
                },
                fingerprint=_fp(cve, f"windows-{build}", ctx.root.device),
            )
        )
    return out
