"""Advisory data model shared by every feed parser, the index and matching."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from vmscan.errors import VmscanError

#: Longest summary kept per advisory (feeds carry whole descriptions).
SUMMARY_LIMIT = 300
#: References kept per advisory.
REFERENCES_LIMIT = 8


class AdvisoryError(VmscanError):
    """An advisory feed cannot be imported or the index cannot be built or opened."""


class FeedKind(enum.StrEnum):
    """The formats ``vmscan signatures import`` understands."""

    OSV = "osv"
    DEBIAN_TRACKER = "debian-tracker"
    ALPINE_SECDB = "alpine-secdb"
    WINDOWS_BUILDS = "windows-builds"
    WINDOWS_CVES = "windows-cves"
    WESNG = "wesng"
    CSAF = "csaf"


class AffectedStatus(enum.StrEnum):
    """What a feed says of one package in one release."""

    AFFECTED = "affected"  # ranges/versions say which installed versions are vulnerable
    UNDETERMINED = "undetermined"  # Debian: not yet triaged for this release


@dataclass(frozen=True)
class Rating:
    """A severity and where it came from (``CVSS_V3 9.8``, ``debian urgency high``)."""

    severity: str = "unknown"
    score: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Affected:
    """One package of one release that an advisory covers, reduced to what matching needs.

    ``ranges`` are OSV ``ECOSYSTEM`` event lists (``(("introduced", "0"), ("fixed", "1.2-3"))``);
    ``name_kind`` says whether the feed names source packages (Debian, Alpine) or binary
    ones (rpm-based feeds), ``any`` when it may be either.
    """

    ecosystem: str
    name: str
    ranges: tuple[tuple[tuple[str, str], ...], ...] = ()
    versions: tuple[str, ...] = ()
    name_kind: str = "any"
    status: str = AffectedStatus.AFFECTED
    rating: Rating = Rating()
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Advisory:
    """One advisory record (an OSV record, one CVE of a Debian source package, ...)."""

    id: str
    feed: str
    kind: str
    summary: str = ""
    aliases: tuple[str, ...] = ()
    published: str = ""
    modified: str = ""
    withdrawn: str = ""
    references: tuple[str, ...] = ()
    rating: Rating = Rating()
    affected: tuple[Affected, ...] = ()

    @property
    def cves(self) -> tuple[str, ...]:
        """The CVE ids this advisory is about (its own id when it is one)."""
        ids = [self.id] if self.id.startswith("CVE-") else []
        ids += [a for a in self.aliases if a.startswith("CVE-") and a not in ids]
        return tuple(ids)


@dataclass
class ParseResult:
    """What a feed parser produced: advisories, rejected items with reasons, the data date."""

    advisories: list[Advisory] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    date: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)  # Windows tables
    data: dict[str, Any] = field(default_factory=dict)  # WES-NG: the stored payload


def bounded(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """*text* cut to *limit* characters (feeds are data from outside: never unbounded)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
