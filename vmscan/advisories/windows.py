"""Windows patch data: cumulative-update build tables and CVRF-derived per-CVE fixed builds.

Two kinds of table, both importable with ``vmscan signatures import``:

- a **build table** (build -> cumulative updates: UBR, KB, date), vmscan's own
  ``vmscan-windows-builds/1`` JSON (``signatures/windows-builds.json``) or a snapshot of a
  ``windows-versions.json`` feed (one latest build, KB and date per product);
- a **per-CVE table**, one row per (CVE, KB, MSRC product, fixed build): from MSRC CVRF
  1.1 XML (``api.msrc.microsoft.com/cvrf/v3.0/cvrf/YYYY-Mon``) or a flattened CSV with the
  columns ``CVE, KB, ProductID, ProductName, FixedBuild, Severity``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from defusedxml import ElementTree

from vmscan.advisories.model import ParseResult, bounded
from vmscan.advisories.severity import score_vector, word_rating

BUILDS_SCHEMA = "vmscan-windows-builds/1"
MAX_ROWS = 2_000_000
_BUILD_RE = re.compile(r"^(?:10\.0\.)?(\d{4,6})\.(\d{1,6})$")
_KB_RE = re.compile(r"^(?:KB)?(\d{6,8})$", re.IGNORECASE)
_CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")
_NS = {
    "cvrf": "http://www.icasi.org/CVRF/schema/cvrf/1.1",
    "vuln": "http://www.icasi.org/CVRF/schema/vuln/1.1",
    "prod": "http://www.icasi.org/CVRF/schema/prod/1.1",
}


def _date(v: Any) -> str:
    s = str(v or "")[:10]
    try:
        dt.date.fromisoformat(s)
    except ValueError:
        return ""
    return s


def _kb(v: Any) -> str:
    m = _KB_RE.match(str(v or "").strip())
    return f"KB{m.group(1)}" if m else ""


# ---------------------------------------------------------------------------
# Build tables


def looks_like_builds(data: Any) -> bool:
    """vmscan's build table, or a list of ``{os, build, latestKB, releaseDate}`` entries."""
    if isinstance(data, dict):
        return data.get("schema") == BUILDS_SCHEMA
    return (
        isinstance(data, list)
        and bool(data)
        and all(isinstance(e, dict) and "latestKB" in e and "build" in e for e in data[:5])
    )


def edition_of(name: str) -> str:
    """``server`` or ``client`` for a product name, ``""`` when it names both or neither.

    Build 26100 is both Windows 11 24H2 and Windows Server 2025; their update series may
    part, so rows named for one are not used for the other.
    """
    low = name.lower()
    server, client = "server" in low, ("windows 10" in low or "windows 11" in low)
    if server and not client:
        return "server"
    if client and not server:
        return "client"
    return ""


def parse_builds(data: Any, source: str = "") -> ParseResult:
    """Rows ``{build, name, also, ubr, kb, date, source, edition}`` of a build table."""
    res = ParseResult()
    if isinstance(data, dict) and data.get("schema") == BUILDS_SCHEMA:
        res.date = _date(data.get("as_of"))
        builds = data.get("builds")
        if not isinstance(builds, dict):
            res.rejected.append("builds: not an object")
            return res
        for key, entry in builds.items():
            if not str(key).isdigit() or not isinstance(entry, dict):
                res.rejected.append(bounded(f"builds/{key}: not a build number with an object"))
                continue
            also = [int(a) for a in entry.get("also") or [] if isinstance(a, int)]
            edition = str(entry.get("edition", ""))
            for u in entry.get("updates") or []:
                ubr = u.get("ubr") if isinstance(u, dict) else None
                if not isinstance(ubr, int) or ubr < 0 or not _date(u.get("date")):
                    res.rejected.append(bounded(f"builds/{key}: bad update {str(u)[:80]}"))
                    continue
                res.rows.append(
                    {
                        "build": int(key),
                        "name": bounded(str(entry.get("name", "")), 100),
                        "also": also,
                        "ubr": ubr,
                        "kb": _kb(u.get("kb")),
                        "date": _date(u.get("date")),
                        "source": bounded(str(u.get("source") or source), 60),
                        "edition": edition if edition in ("server", "client") else "",
                    }
                )
        return res
    if not isinstance(data, list):
        res.rejected.append("document: not a build table")
        return res
    for e in data[:10_000]:
        if not isinstance(e, dict) or ".NET" in str(e.get("os", "")):
            continue
        m = _BUILD_RE.match(str(e.get("build", "")).strip())
        date = _date(e.get("releaseDate"))
        if not m or not date:
            res.rejected.append(bounded(f"{str(e.get('os'))[:60]}: no build.UBR or date"))
            continue
        name = bounded(str(e.get("os", "")), 100)
        res.rows.append(
            {
                "build": int(m.group(1)),
                "name": name,
                "also": [],
                "ubr": int(m.group(2)),
                "kb": _kb(e.get("latestKB")),
                "date": date,
                "source": bounded(source, 60),
                "edition": edition_of(name),
            }
        )
        res.date = max(res.date, date)
    return res


@dataclass(frozen=True)
class WindowsPatchLevel:
    """How far a Windows build.UBR is behind the latest cumulative update in the table.

    ``updates_behind`` counts the table's updates above the UBR; ``months_behind`` counts
    the monthly (second-Tuesday) releases from the installed update's month to the latest
    one, which is the better number when the table has gaps (``gaps``: months with no row,
    e.g. a hand-compiled table refreshed by one imported "latest" entry).
    """

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
    months_behind: int | None = None
    gaps: bool = False
    table_as_of: str = ""
    sources: tuple[str, ...] = ()


def _month_index(date: str) -> int:
    d = dt.date.fromisoformat(date)
    return d.year * 12 + d.month


def patch_level(
    build: int, ubr: int, rows: list[dict[str, Any]], edition: str = ""
) -> WindowsPatchLevel | None:
    """Compare ``build.ubr`` with the build-table rows; None when the build is not in them.

    Rows of the build itself and of builds that list it under ``also`` (one servicing
    branch) are used; with *edition* (``server``/``client``) rows named for the other
    edition are left out.
    """
    mine = [
        r
        for r in rows
        if (r["build"] == build or build in (r.get("also") or []))
        and (not edition or r.get("edition", "") in ("", edition))
    ]
    if not mine:
        return None
    by_ubr: dict[int, dict[str, Any]] = {}
    for r in sorted(mine, key=lambda r: (r["build"] != build, r["date"])):
        by_ubr.setdefault(r["ubr"], r)
    updates = [by_ubr[k] for k in sorted(by_ubr)]
    latest = updates[-1]
    missing = tuple(u for u in updates if u["ubr"] > ubr)
    installed = None
    for u in updates:
        if u["ubr"] <= ubr:
            installed = u
    months = sorted({_month_index(u["date"]) for u in updates})
    gaps = any(b - a > 1 for a, b in itertools.pairwise(months))
    days, months_behind = 0, None
    if missing:
        ref = installed["date"] if installed else missing[0]["date"]
        days = (dt.date.fromisoformat(latest["date"]) - dt.date.fromisoformat(ref)).days
        if installed:
            months_behind = _month_index(latest["date"]) - _month_index(installed["date"])
    else:
        months_behind = 0
    return WindowsPatchLevel(
        build=build,
        ubr=ubr,
        name=str(next((r["name"] for r in mine if r["build"] == build), mine[0]["name"])),
        latest_ubr=latest["ubr"],
        latest_kb=latest["kb"],
        latest_date=latest["date"],
        installed_kb=installed["kb"] if installed else None,
        installed_date=installed["date"] if installed else None,
        updates_behind=len(missing),
        days_behind=max(days, 0),
        missing=missing,
        months_behind=months_behind,
        gaps=gaps,
        table_as_of=latest["date"],
        sources=tuple(sorted({str(r.get("source", "")) for r in mine if r.get("source")})),
    )


# ---------------------------------------------------------------------------
# Per-CVE tables


def _cve_row(
    cve: str, kb: str, pid: str, product: str, fixed: str, rating: tuple[str, float | None, str]
) -> dict[str, Any]:
    m = _BUILD_RE.match(fixed.strip())
    return {
        "cve": cve,
        "kb": kb,
        "product_id": bounded(pid, 20),
        "product": bounded(product, 160),
        "fixed_build": bounded(fixed.strip(), 40),
        "build": int(m.group(1)) if m else None,
        "fixed_ubr": int(m.group(2)) if m else None,
        "severity": rating[0],
        "score": rating[1],
        "rating_source": rating[2],
    }


def looks_like_cve_csv(head: bytes) -> bool:
    """A CSV whose header names CVE, KB and FixedBuild columns."""
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").lower()
    return "cve" in first and "kb" in first and "fixedbuild" in first


def parse_cve_csv(text: str | Iterable[str]) -> ParseResult:
    """Rows of a flattened CVE -> KB -> product -> FixedBuild CSV (text or its lines)."""
    res = ParseResult()
    reader = csv.DictReader(io.StringIO(text) if isinstance(text, str) else text)
    for n, row in enumerate(reader):
        if n >= MAX_ROWS:
            res.rejected.append(f"more than {MAX_ROWS} rows: rest ignored")
            break
        cve, kb = str(row.get("CVE", "")).strip(), _kb(row.get("KB"))
        if not _CVE_RE.match(cve) or not kb:
            res.rejected.append(bounded(f"row {n + 2}: no CVE/KB ({str(row)[:80]})", 200))
            continue
        sev = str(row.get("Severity", "")).strip()
        rating: tuple[str, float | None, str] = ("unknown", None, "")
        try:
            score = float(sev)
            rating = (_score_rating(score), score, f"CVSS {score}")
        except ValueError:
            w = word_rating(sev)
            if w:
                rating = (w, None, f"MSRC {sev[:20]}")
        res.rows.append(
            _cve_row(
                cve,
                kb,
                str(row.get("ProductID", "")),
                str(row.get("ProductName", "")),
                str(row.get("FixedBuild", "")),
                rating,
            )
        )
        date = _date(row.get("PublishedDate"))
        res.date = max(res.date, date)
    return res


def _score_rating(score: float) -> str:
    if score == 0:
        return "info"
    if score < 4:
        return "low"
    if score < 7:
        return "medium"
    if score < 9:
        return "high"
    return "critical"


def looks_like_cvrf(head: bytes) -> bool:
    """An MSRC CVRF 1.1 XML document."""
    return b"cvrfdoc" in head[:4096] and b"icasi.org/CVRF" in head[:4096]


def parse_cvrf(xml: bytes) -> ParseResult:
    """Rows ``(CVE, KB, product, fixed build, rating)`` of an MSRC CVRF document.

    One row per vendor-fix remediation and product. A remediation with no FixedBuild
    (older bulletins) keeps its KB and an empty ``fixed_build``: it cannot be compared
    with a guest's build.UBR and is counted as such.
    """
    res = ParseResult()
    try:
        root = ElementTree.fromstring(xml)
    except Exception as e:  # defusedxml raises its own errors for entity tricks
        res.rejected.append(bounded(f"not a readable CVRF document: {e}", 200))
        return res
    res.date = _date(root.findtext("cvrf:DocumentTracking/cvrf:CurrentReleaseDate", "", _NS))
    products = {
        p.get("ProductID", ""): (p.text or "").strip()
        for p in root.iter(f"{{{_NS['prod']}}}FullProductName")
    }
    for vuln in root.iter(f"{{{_NS['vuln']}}}Vulnerability"):
        cve = (vuln.findtext("vuln:CVE", "", _NS) or "").strip()
        if not _CVE_RE.match(cve):
            res.rejected.append(bounded(f"vulnerability without a CVE id ({cve[:40]!r})", 200))
            continue
        ratings: dict[str, tuple[str, float | None, str]] = {}
        for ss in vuln.iterfind("vuln:CVSSScoreSets/vuln:ScoreSet", _NS):
            vector = (ss.findtext("vuln:Vector", "", _NS) or "").strip()
            scored = score_vector("CVSS_V3", vector) if vector else None
            for pid in ss.iterfind("vuln:ProductID", _NS):
                if scored:
                    ratings[(pid.text or "").strip()] = (scored[1], scored[0], f"CVSS {scored[0]}")
        for th in vuln.iterfind("vuln:Threats/vuln:Threat", _NS):
            if th.get("Type") != "Severity":
                continue
            w = word_rating(th.findtext("vuln:Description", "", _NS))
            for pid in th.iterfind("vuln:ProductID", _NS):
                key = (pid.text or "").strip()
                if w and key not in ratings:
                    ratings[key] = (w, None, "MSRC severity")
        for rem in vuln.iterfind("vuln:Remediations/vuln:Remediation", _NS):
            if rem.get("Type") != "Vendor Fix":
                continue
            kb = _kb(rem.findtext("vuln:Description", "", _NS))
            fixed = (rem.findtext("vuln:FixedBuild", "", _NS) or "").strip()
            if not kb and not fixed:
                continue
            for pid_el in rem.iterfind("vuln:ProductID", _NS):
                pid_text = (pid_el.text or "").strip()
                res.rows.append(
                    _cve_row(
                        cve,
                        kb,
                        pid_text,
                        products.get(pid_text, ""),
                        fixed,
                        ratings.get(pid_text, ("unknown", None, "")),
                    )
                )
        if len(res.rows) > MAX_ROWS:
            res.rejected.append(f"more than {MAX_ROWS} rows: rest ignored")
            break
    return res
