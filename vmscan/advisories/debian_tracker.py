"""Debian Security Tracker JSON (``/tracker/data/json``): per source package, CVE and release.

Shape: ``{source: {CVE-or-TEMP-id: {description, releases: {codename: {status,
fixed_version, urgency, repositories}}}}}``. Matching is by **source** package and
release: ``resolved`` with a ``fixed_version`` is a fix (``"0"``: that release was never
affected, nothing is stored); ``open`` is vulnerable with no fix yet; ``undetermined`` is
kept apart (reported as not yet triaged, never as a finding). Pseudo-ids
(``TEMP-0000000-…``) are kept as they are.
"""

from __future__ import annotations

import re
from typing import Any

from vmscan.advisories.model import (
    Advisory,
    Affected,
    AffectedStatus,
    FeedKind,
    ParseResult,
    bounded,
)
from vmscan.advisories.severity import debian_urgency

#: Debian codenames and their release numbers (OSV names Debian releases by number).
CODENAMES = {
    "buzz": "1.1",
    "rex": "1.2",
    "bo": "1.3",
    "hamm": "2.0",
    "slink": "2.1",
    "potato": "2.2",
    "woody": "3.0",
    "sarge": "3.1",
    "etch": "4",
    "lenny": "5",
    "squeeze": "6",
    "wheezy": "7",
    "jessie": "8",
    "stretch": "9",
    "buster": "10",
    "bullseye": "11",
    "bookworm": "12",
    "trixie": "13",
    "forky": "14",
    "duke": "15",
}
_ID_RE = re.compile(r"^(CVE-\d{4}-\d{4,}|TEMP-\d{7}-[0-9A-F]{6})$")
#: Source packages, ids per package, releases per id read at most (the real file has
#: ~40k sources, a few hundred ids for the largest): a bound against hostile input.
MAX_SOURCES, MAX_IDS, MAX_RELEASES = 200_000, 50_000, 64


def ecosystem_of(codename: str) -> str:
    """``Debian:12`` for ``bookworm``; ``Debian:<codename>`` when the number is not known."""
    return f"Debian:{CODENAMES.get(codename, codename)}"


def looks_like_tracker(data: Any) -> bool:
    """True when *data* has the tracker's shape (a source mapping to ids with releases)."""
    if not isinstance(data, dict) or not data or "packages" in data or "id" in data:
        return False
    for _src, ids in list(data.items())[:20]:
        if not isinstance(ids, dict):
            return False
        for _cve, entry in list(ids.items())[:5]:
            if isinstance(entry, dict) and "releases" in entry:
                return True
    return False


def parse(data: Any, feed: str) -> ParseResult:
    """Advisories (one per source package and id) from a tracker JSON document."""
    res = ParseResult()
    if not isinstance(data, dict):
        res.rejected.append("document: not a JSON object")
        return res
    for n, (source, ids) in enumerate(data.items()):
        if n >= MAX_SOURCES:
            res.rejected.append(f"more than {MAX_SOURCES} source packages: rest ignored")
            break
        if not isinstance(ids, dict):
            res.rejected.append(bounded(f"{source}: not an object", 200))
            continue
        for k, (vid, entry) in enumerate(ids.items()):
            if k >= MAX_IDS:
                res.rejected.append(bounded(f"{source}: more than {MAX_IDS} ids", 200))
                break
            where = bounded(f"{source}/{vid}", 120)
            if not _ID_RE.match(str(vid)):
                res.rejected.append(f"{where}: not a CVE or TEMP id")
                continue
            if not isinstance(entry, dict):
                res.rejected.append(f"{where}: not an object")
                continue
            releases = entry.get("releases")
            if isinstance(releases, list) and not releases:
                continue  # e.g. chromium-browser: no release carries it
            if not isinstance(releases, dict):
                res.rejected.append(f"{where}: releases is not an object")
                continue
            affected: list[Affected] = []
            for codename, rel in list(releases.items())[:MAX_RELEASES]:
                a = _release(source, str(codename), rel)
                if isinstance(a, str):
                    res.rejected.append(f"{where}/{codename}: {a}")
                elif a is not None:
                    affected.append(a)
            if affected:
                res.advisories.append(
                    Advisory(
                        id=str(vid),
                        feed=feed,
                        kind=FeedKind.DEBIAN_TRACKER,
                        summary=bounded(str(entry.get("description") or "")),
                        references=(f"https://security-tracker.debian.org/tracker/{vid}",),
                        affected=tuple(affected),
                    )
                )
    return res


def _release(source: str, codename: str, rel: Any) -> Affected | str | None:
    """One release entry as an :class:`Affected`, None when not affected, str on error."""
    if not isinstance(rel, dict):
        return "not an object"
    status = rel.get("status")
    fixed = rel.get("fixed_version")
    repos = rel.get("repositories")
    extra: dict[str, Any] = {"urgency": str(rel.get("urgency", ""))[:40], "codename": codename}
    if isinstance(repos, dict):
        extra["repositories"] = {
            str(k)[:60]: str(v)[:100] for k, v in list(repos.items())[:16] if isinstance(v, str)
        }
    if rel.get("nodsa"):
        extra["nodsa"] = str(rel.get("nodsa"))[:200]
    rating = debian_urgency(rel.get("urgency"))
    eco = ecosystem_of(codename)
    if status == "resolved":
        if not isinstance(fixed, str) or not fixed:
            return "resolved without a fixed_version"
        if fixed == "0":
            return None  # never affected in this release
        return Affected(
            ecosystem=eco,
            name=source,
            name_kind="source",
            ranges=((("introduced", "0"), ("fixed", fixed)),),
            rating=rating,
            extra=extra,
        )
    if status == "open":
        return Affected(
            ecosystem=eco,
            name=source,
            name_kind="source",
            ranges=((("introduced", "0"),),),
            rating=rating,
            extra=extra,
        )
    if status == "undetermined":
        return Affected(
            ecosystem=eco,
            name=source,
            name_kind="source",
            ranges=((("introduced", "0"),),),
            status=AffectedStatus.UNDETERMINED,
            rating=rating,
            extra=extra,
        )
    return f"unknown status {str(status)[:40]!r}"
