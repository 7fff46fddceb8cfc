"""apk cataloger: Alpine's /lib/apk/db/installed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vmscan.catalog.common import (
    TEXT_DB_LIMIT,
    DbDamage,
    PackageDbBroken,
    distro_id,
    distro_qualifier,
    make_purl,
    record_broken_db,
)
from vmscan.errors import GuestReadError, TooLargeError
from vmscan.guestfs_view import GuestFS
from vmscan.model import OSInfo, Package
from vmscan.plugins import Cataloger, Requirements, ScanContext

log = logging.getLogger(__name__)

INSTALLED = "/lib/apk/db/installed"
NAME = "os/apk"


@dataclass
class ApkParse:
    """Packages of one installed file plus what was wrong in it (counted, not listed)."""

    packages: list[Package] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damage: DbDamage = field(default_factory=lambda: DbDamage(INSTALLED))


def _records(text: str) -> tuple[list[tuple[int, dict[str, str]]], int]:
    """Records (first line, single-letter fields) separated by blank lines.

    Only the first occurrence of a key is kept: repeated keys (F:, R:, Z:...) describe
    files, which this cataloger does not need.
    """
    out: list[tuple[int, dict[str, str]]] = []
    cur: dict[str, str] = {}
    start = 1
    bad = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if cur:
                out.append((start, cur))
                cur = {}
            continue
        if not cur:
            start = n
        if len(line) < 2 or line[1] != ":":
            bad += 1
            continue
        cur.setdefault(line[0], line[2:])
    if cur:
        out.append((start, cur))
    return out, bad


def parse_installed(text: str, label: str, os_info: OSInfo | None = None) -> ApkParse:
    """Parse an apk ``installed`` database; bad records are noted and skipped."""
    res = ApkParse(damage=DbDamage(label))
    os_info = os_info or OSInfo()
    namespace = distro_id(os_info) or "alpine"
    distro = distro_qualifier(os_info)
    records, bad = _records(text)
    for lineno, rec in records:
        name, version = rec.get("P", "").strip(), rec.get("V", "").strip()
        if not name or not version:
            res.damage.add("record(s) with no P: or V: field", f"line {lineno}")
            continue
        arch = rec.get("A", "").strip()
        origin = rec.get("o", "").strip() or name
        extra: dict[str, str] = {}
        if rec.get("L"):
            # The declared licence: the licence check decides what goes into ``licenses``.
            extra["license_declared"] = rec["L"].strip()
        for key, out_key in (("T", "summary"), ("U", "url"), ("m", "maintainer"), ("c", "commit")):
            if rec.get(key):
                extra[out_key] = rec[key].strip()
        quals = {"arch": arch, "distro": distro}
        if origin != name:
            quals["upstream"] = origin
        res.packages.append(
            Package(
                name=name,
                version=version,
                arch=arch,
                source_name=origin,
                source_version=version,
                licenses=[],
                found_by=NAME,
                purl=make_purl("apk", namespace, name, version, quals),
                extra=extra,
            )
        )
    if bad:
        res.damage.add("malformed line(s) ignored", n=bad)
    if text and not text.endswith("\n"):
        res.damage.add("cut-off last line (file truncated?)")
    if res.damage:
        res.notes.append(res.damage.summary(len(res.packages)))
    return res


class ApkCataloger(Cataloger):
    """Alpine packages."""

    NAME = NAME

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """The installed database, whole."""
        return (
            Requirements(
                paths=frozenset({INSTALLED}), max_bytes=TEXT_DB_LIMIT, whole=True, persist=True
            ),
        )

    VERSION = "1"

    def applies(self, fs: GuestFS, os_info: OSInfo) -> bool:
        return fs.is_file(INSTALLED)

    def catalog(self, fs: GuestFS, ctx: ScanContext) -> list[Package]:
        try:
            data = fs.read_bytes(INSTALLED, TEXT_DB_LIMIT)
        except TooLargeError as e:
            record_broken_db(ctx.root, NAME, INSTALLED, str(e), usable=False)
            raise PackageDbBroken(f"{INSTALLED}: not read: {e}") from e
        except GuestReadError as e:
            # A failure to look is never "no packages".
            raise PackageDbBroken(f"{INSTALLED}: not read: {e}") from e
        res = parse_installed(data.decode("utf-8", errors="replace"), INSTALLED, ctx.root.os)
        ctx.notes.extend(res.notes)
        summary = res.damage.summary(len(res.packages)) if res.damage else ""
        if res.damage:
            record_broken_db(
                ctx.root,
                NAME,
                INSTALLED,
                summary,
                usable=bool(res.packages),
                details={"packages_read": len(res.packages), "problems": dict(res.damage.counts)},
            )
        if res.packages:
            return res.packages
        if summary:
            raise PackageDbBroken(f"apk database unusable: {summary}")
        if _alpine_like(ctx.root.os):
            why = f"{INSTALLED} lists no package, yet this is an apk-managed system"
            record_broken_db(ctx.root, NAME, INSTALLED, why, usable=False)
            raise PackageDbBroken(why)
        return []


def _alpine_like(os_info: OSInfo) -> bool:
    """The OS says it is managed by apk (then an empty database cannot be right)."""
    words = {os_info.package_format, os_info.package_management, os_info.distro}
    return bool(words & {"apk", "alpine"}) or os_info.os_release_id == "alpine"
