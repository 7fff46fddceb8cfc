"""Helpers shared by the catalogers: purls, distro qualifiers, size limits, damaged databases.

A package database that cannot be used is never an empty inventory. A cataloger counts
what was wrong (:class:`DbDamage`: a count per kind, the first examples, one bounded
line), raises :class:`PackageDbBroken` when nothing usable was read (the cataloger is
``failed``) or notes the summary when part was (``partial``), and records a finding
(:func:`record_broken_db`) so that every report lists the damaged database.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field

from packageurl import PackageURL

from vmscan.completeness import bound
from vmscan.errors import VmscanError
from vmscan.model import Finding, OSInfo, RootResult, Severity

log = logging.getLogger(__name__)

#: Limit for text package databases (dpkg status, apk installed).
TEXT_DB_LIMIT = 64 * 1024 * 1024
#: Limit for a binary rpm database copied out of the guest.
RPMDB_LIMIT = 512 * 1024 * 1024


def distro_id(os_info: OSInfo) -> str:
    """The os-release ID (``debian``), falling back to libguestfs' distro name."""
    ident = (os_info.os_release_id or "").strip().lower()
    if not ident or ident == "unknown":
        ident = (os_info.distro or "").strip().lower()
    return "" if ident == "unknown" else ident


def distro_version(os_info: OSInfo) -> str:
    """VERSION_ID, else ``major[.minor]`` from inspection, else empty."""
    if os_info.version_id:
        return os_info.version_id.strip()
    if os_info.major_version:
        if os_info.minor_version:
            return f"{os_info.major_version}.{os_info.minor_version}"
        return str(os_info.major_version)
    return ""


def distro_qualifier(os_info: OSInfo) -> str:
    """purl ``distro`` qualifier, e.g. ``debian-12``; empty when the OS is unknown."""
    ident, ver = distro_id(os_info), distro_version(os_info)
    if ident and ver:
        return f"{ident}-{ver}"
    return ident


def make_purl(
    ptype: str,
    namespace: str,
    name: str,
    version: str,
    qualifiers: dict[str, str] | None = None,
) -> str:
    """A package URL string, empty qualifiers dropped; empty string if it cannot be built."""
    quals = {k: v for k, v in (qualifiers or {}).items() if v}
    try:
        return str(
            PackageURL(
                type=ptype,
                namespace=namespace or None,
                name=name,
                version=version or None,
                qualifiers=quals or None,
            ).to_string()
        )
    except ValueError as e:  # a hostile name may be rejected by packageurl
        log.debug("cannot build purl for %r: %s", name, e)
        return ""


# ---------------------------------------------------------------------------
# Damaged package databases

#: Examples kept per kind of damage (the rest are only counted).
DAMAGE_EXAMPLES = 3
#: Longest summary of one database's damage, in characters.
DAMAGE_SUMMARY_LIMIT = 600
#: The check name of inventory findings (the catalogers', whichever checks were selected).
INVENTORY_CHECK = "inventory"
#: Rule of a package database that could not be read, or only in part.
BROKEN_DB_RULE = "INV-PKGDB-DAMAGED"


_NUMBER = re.compile(r"\d+")


class PackageDbBroken(VmscanError):
    """A package database holds nothing usable: the cataloger fails with this reason."""


@dataclass
class DbDamage:
    """What was wrong in one package database: a count per kind, the first few examples."""

    label: str
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str = "", n: int = 1) -> None:
        """Count *n* problems of *kind*; keep *example* if it is among the first few."""
        self.counts[kind] += n
        kept = self.examples.setdefault(kind, [])
        if example and len(kept) < DAMAGE_EXAMPLES:
            kept.append(bound(example, 120))

    def add_note(self, note: str) -> None:
        """Count a reader's free-text note under its shape (numbers replaced by N)."""
        self.add(_NUMBER.sub("N", note), note)

    def __bool__(self) -> bool:
        return bool(self.counts)

    @property
    def total(self) -> int:
        """Problems counted, all kinds together."""
        return sum(self.counts.values())

    def summary(self, read: int | None = None, what: str = "package(s)") -> str:
        """One bounded line: counts by kind (most frequent first), examples, what was read."""
        parts = []
        for kind, n in self.counts.most_common():
            ex = self.examples.get(kind) or []
            more = f" (e.g. {'; '.join(ex)})" if ex else ""
            parts.append(f"{n} {kind}{more}")
        text = f"{self.label}: " + "; ".join(parts)
        if read is not None:
            text += f"; {read} {what} read"
        return bound(text, DAMAGE_SUMMARY_LIMIT)


def record_broken_db(
    root: RootResult,
    cataloger: str,
    path: str,
    reason: str,
    *,
    usable: bool,
    details: dict[str, object] | None = None,
) -> None:
    """A finding for a damaged package database (high when nothing usable was read).

    Its patch level is unknown and such damage is also what tampering looks like, so it
    is reported whatever checks were selected, next to the cataloger's own status.
    """
    state = "partly readable" if usable else "unusable"
    fp = hashlib.sha256(f"{INVENTORY_CHECK}\0{BROKEN_DB_RULE}\0{path}".encode()).hexdigest()
    root.findings.append(
        Finding(
            check=INVENTORY_CHECK,
            rule_id=BROKEN_DB_RULE,
            severity=Severity.MEDIUM if usable else Severity.HIGH,
            title=bound(f"package database {path} is damaged ({state}): inventory incomplete", 300),
            target=path,
            details={
                "cataloger": cataloger,
                "path": path,
                "state": state,
                "reason": bound(reason),
                "remediation": "the installed packages of this root are not all known: its "
                "patch level cannot be trusted; restore the database from a backup or "
                "rebuild it, and find out how it was damaged",
                **(details or {}),
            },
            fingerprint=fp[:32],
        )
    )
