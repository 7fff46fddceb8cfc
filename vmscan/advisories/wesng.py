"""WES-NG definitions (``CVEs_YYYYMMDD.csv`` of bitsadmin/wesng): CVE -> KB per Windows product.

WES-NG flattens MSRC data into rows ``DatePosted, CVE, BulletinKB, Title, AffectedProduct,
AffectedComponent, Severity, Impact, Supersedes, Exploits``. It has no fixed build, but for
the operating system itself a BulletinKB is a monthly cumulative update, and the build
table (:mod:`vmscan.advisories.windows`) maps that KB to the UBR it brings on the
product's build: that UBR is the fixed build. Only rows whose AffectedProduct is a Windows
10/11 or Server 2016+ operating system (by the names below, written by the vmscan authors)
are kept; rows for components shipped apart (.NET, Office, Edge, SQL Server...) are
counted and left out, since their KBs are not cumulative updates of the OS.

``Supersedes`` (``;``-separated KBs) is kept per product: when a KB is missing from the
build table, a KB it supersedes that is in the table bounds it from below (a guest at or
below that UBR lacks the fix) and a table KB that supersedes it bounds it from above (a
guest at or above that UBR has it).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vmscan.advisories.model import ParseResult, bounded

HEADER = ("DatePosted", "CVE", "BulletinKB", "AffectedProduct", "Supersedes")
MAX_ROWS = 2_000_000
_CVE_RE = re.compile(r"^(CVE-\d{4}-\d{4,}|ADV\d{6})$")
_KB_RE = re.compile(r"^\d{6,8}$")

#: Windows 10/11 feature versions and their builds (vmscan's own list).
CLIENT_BUILDS = {
    ("10", ""): 10240,
    ("10", "1511"): 10586,
    ("10", "1607"): 14393,
    ("10", "1703"): 15063,
    ("10", "1709"): 16299,
    ("10", "1803"): 17134,
    ("10", "1809"): 17763,
    ("10", "1903"): 18362,
    ("10", "1909"): 18363,
    ("10", "2004"): 19041,
    ("10", "20H2"): 19042,
    ("10", "21H1"): 19043,
    ("10", "21H2"): 19044,
    ("10", "22H2"): 19045,
    ("11", "21H2"): 22000,
    ("11", "22H2"): 22621,
    ("11", "23H2"): 22631,
    ("11", "24H2"): 26100,
    ("11", "25H2"): 26200,
}
SERVER_BUILDS = {"2016": 14393, "2019": 17763, "2022": 20348, "2025": 26100}
_CLIENT_RE = re.compile(
    r"^Windows (10|11)(?: [Vv]ersion (\w+))? for (x64|ARM64|32-bit)(?:-based)? [Ss]ystems$"
)
_SERVER_RE = re.compile(r"^Windows Server (2016|2019|2022|2025)(?: \(Server Core installation\))?$")
_ARCH = {"x64": "x64", "ARM64": "arm64", "32-bit": "x86"}


@dataclass(frozen=True)
class Product:
    """An operating-system product of WES-NG rows: its build, edition and architecture."""

    build: int
    edition: str  # server | client
    arch: str  # x64 | arm64 | x86 | "" (servers: every architecture)


def product_of(name: str) -> Product | None:
    """The OS product a WES-NG ``AffectedProduct`` names, None for anything else."""
    name = name.strip()
    m = _SERVER_RE.match(name)
    if m:
        return Product(SERVER_BUILDS[m.group(1)], "server", "")
    m = _CLIENT_RE.match(name)
    if m:
        build = CLIENT_BUILDS.get((m.group(1), (m.group(2) or "").upper()))
        if build is not None:
            return Product(build, "client", _ARCH[m.group(3)])
    return None


def looks_like_wesng(head: bytes) -> bool:
    """A CSV whose header has WES-NG's columns."""
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    return all(f'"{h}"' in first or f"{h}," in first for h in HEADER)


@dataclass
class WesngData:
    """Parsed definitions: kept rows, supersedence, and what was left out."""

    products: dict[str, Product] = field(default_factory=dict)
    rows: list[list[str]] = field(default_factory=list)  # cve, kb, product, date, sev, impact
    supersedes: set[tuple[str, str, str]] = field(default_factory=set)  # product, kb, older


def _date(v: str) -> str:
    v = v.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if re.match(r"^\d{8}$", v) else ""


def parse(lines: Iterable[str]) -> tuple[ParseResult, WesngData]:
    """Stream a WES-NG CSV: OS rows with a CVE, and every OS row's supersedence."""
    res, data = ParseResult(), WesngData()
    others: dict[str, int] = {}
    skipped_products = no_kb = 0
    for n, row in enumerate(csv.DictReader(lines)):
        if n >= MAX_ROWS:
            res.rejected.append(f"more than {MAX_ROWS} rows: rest ignored")
            break
        name = str(row.get("AffectedProduct") or "")[:200]
        prod = data.products.get(name)
        if prod is None:
            if name in others:
                others[name] += 1
                skipped_products += 1
                continue
            found = product_of(name)
            if found is None:
                others[name] = 1
                skipped_products += 1
                continue
            prod = data.products[name] = found
        kb = str(row.get("BulletinKB") or "").strip()
        date = _date(str(row.get("DatePosted") or ""))
        if not kb:
            no_kb += 1  # fixed outside a KB (or not at all): nothing to compare a UBR with
            continue
        if not _KB_RE.match(kb) or not date:
            res.rejected.append(bounded(f"row {n + 2}: no KB or date ({str(row)[:80]})", 200))
            continue
        for old in str(row.get("Supersedes") or "").split(";"):
            old = old.strip()
            if _KB_RE.match(old):
                data.supersedes.add((name, kb, old))
        cve = str(row.get("CVE") or "").strip()
        if not cve:
            continue  # a KB-only row (no CVE): its supersedence is all that is used
        if not _CVE_RE.match(cve):
            res.rejected.append(bounded(f"row {n + 2}: bad CVE id {cve[:40]!r}", 200))
            continue
        data.rows.append(
            [
                cve,
                kb,
                name,
                date,
                str(row.get("Severity") or "")[:20],
                str(row.get("Impact") or "")[:60],
            ]
        )
        res.date = max(res.date, date)
    res.rows = [{"cve": r[0]} for r in data.rows]  # counted as the feed's records
    # Summaries first: an import report keeps only the first rejected items.
    summary = []
    if no_kb:
        summary.append(f"{no_kb} operating-system rows name no KB: counted, not matched")
    if skipped_products:
        summary.append(
            f"{skipped_products} rows for {len(others)} products that are not a Windows "
            "10/11 or Server 2016+ operating system (e.g. .NET, Office) left out"
        )
    res.rejected[:0] = summary
    return res, data


def payload(res: ParseResult, data: WesngData) -> dict[str, Any]:
    """The stored form of a WES-NG feed (``wesng.json``)."""
    return {
        "date": res.date,
        "products": {
            k: {"build": p.build, "edition": p.edition, "arch": p.arch}
            for k, p in sorted(data.products.items())
        },
        "rows": data.rows,
        "supersedes": sorted(data.supersedes),
    }


def closure(start: str, edges: dict[str, set[str]], limit: int = 200) -> set[str]:
    """Every KB reachable from *start* along *edges* (bounded: feeds are outside data)."""
    seen: set[str] = set()
    todo = [start]
    while todo and len(seen) < limit:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
