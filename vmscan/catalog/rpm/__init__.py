"""rpm cataloger: SQLite, BerkeleyDB hash and NDB databases, parsed on the host."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmscan.catalog.common import (
    RPMDB_LIMIT,
    DbDamage,
    distro_id,
    distro_qualifier,
    make_purl,
    record_broken_db,
)
from vmscan.catalog.rpm import bdb, ndb, sqlite
from vmscan.catalog.rpm.errors import RpmDbError
from vmscan.catalog.rpm.header import HeaderError, RpmHeader, read_header, source_name_version
from vmscan.completeness import bound, info
from vmscan.errors import GuestReadError, TooLargeError
from vmscan.guestfs_view import GuestFS
from vmscan.model import OSInfo, Package
from vmscan.plugins import Cataloger, Requirements, ScanContext

log = logging.getLogger(__name__)

NAME = "os/rpm"
#: Where rpm keeps its database, newest layout first (found by presence, not distro).
RPM_DIRS = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
#: Database file names by backend, in rpm's order of preference.
DB_FILES = (("sqlite", "rpmdb.sqlite"), ("ndb", "Packages.db"), ("bdb", "Packages"))

READERS: dict[str, Callable[[Path], tuple[list[bytes], list[str]]]] = {
    "sqlite": sqlite.read_blobs,
    "ndb": ndb.read_blobs,
    "bdb": bdb.read_blobs,
}

_NAMESPACES = {
    "rhel": "redhat",
    "sles": "suse",
    "sled": "suse",
    "opensuse-leap": "opensuse",
    "opensuse-tumbleweed": "opensuse",
    "amzn": "amazon",
    "ol": "oracle",
}


def sniff(head: bytes) -> str | None:
    """Backend of a database file from its first bytes, or None."""
    if head.startswith(sqlite.SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(ndb.HEADER_MAGIC):
        return "ndb"
    if len(head) >= 16 and (
        int.from_bytes(head[12:16], "little") == bdb.HASH_MAGIC
        or int.from_bytes(head[12:16], "big") == bdb.HASH_MAGIC
    ):
        return "bdb"
    return None


@dataclass
class RpmParse:
    """Headers of one database file plus what was wrong in it (counted by kind)."""

    headers: list[RpmHeader] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damage: DbDamage = field(default_factory=lambda: DbDamage("rpm database"))


def parse_db_file(path: Path, backend: str | None = None, wal: Path | None = None) -> RpmParse:
    """Read all package headers of a host copy of an rpm database; RpmDbError if unusable.

    *wal*: host copy of the SQLite write-ahead log beside an rpmdb.sqlite, if any.
    """
    if backend is None:
        with open(path, "rb") as fh:
            backend = sniff(fh.read(16))
        if backend is None:
            raise RpmDbError("unknown rpm database format")
    if backend == "sqlite":
        blobs, notes = sqlite.read_blobs(path, wal)
    else:
        blobs, notes = READERS[backend](path)
    res = RpmParse(damage=DbDamage(path.name))
    # A damaged file can yield a note per page or slot: they are counted, not listed.
    for note in notes:
        res.damage.add_note(note)
    for blob in blobs:
        try:
            res.headers.append(read_header(blob))
        except HeaderError as e:
            res.damage.add("corrupt package header(s) skipped", str(e))
    if res.damage:
        res.notes.append(res.damage.summary(len(res.headers)))
    return res


def header_to_package(h: RpmHeader, os_info: OSInfo | None = None) -> Package:
    """A :class:`Package` from one header; version is ``[epoch:]version-release``."""
    os_info = os_info or OSInfo()
    ident = distro_id(os_info)
    namespace = _NAMESPACES.get(ident, ident)
    src_name, src_vr = source_name_version(h.sourcerpm)
    if not src_name:
        src_name, src_vr = h.name, f"{h.version}-{h.release}" if h.release else h.version
    if h.epoch is not None:
        src_vr = f"{h.epoch}:{src_vr}"
    quals = {
        "arch": h.arch,
        "epoch": str(h.epoch) if h.epoch is not None else "",
        "distro": distro_qualifier(os_info),
        "upstream": h.sourcerpm if h.sourcerpm.endswith(".rpm") else "",
    }
    purl_version = f"{h.version}-{h.release}" if h.release else h.version
    extra: dict[str, object] = {
        "epoch": h.epoch,
        "version": h.version,
        "release": h.release,
        "sourcerpm": h.sourcerpm,
        "vendor": h.vendor,
        "license_declared": h.license,
        "summary": h.summary,
    }
    if h.url:
        extra["url"] = h.url
    if h.size is not None:
        extra["size"] = h.size
    if h.modularitylabel:
        extra["modularitylabel"] = h.modularitylabel
    return Package(
        name=h.name,
        version=h.evr,
        arch=h.arch,
        source_name=src_name,
        source_version=src_vr,
        licenses=[],
        found_by=NAME,
        purl=make_purl("rpm", namespace, h.name, purl_version, quals),
        extra=extra,
    )


def find_databases(fs: GuestFS) -> list[tuple[str, str]]:
    """(guest path, backend) of rpm databases present, best first, one per real file."""
    found: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    for d in RPM_DIRS:
        for _backend, fname in DB_FILES:
            path = f"{d}/{fname}"
            if not fs.is_file(path):
                continue
            try:
                kind = sniff(fs.read_head(path, 16))
            except GuestReadError:
                continue
            if kind is None:
                continue
            # /var/lib/rpm is often a symlink to /usr/lib/sysimage/rpm: same file twice.
            st = fs.lstat(path)
            real = fs.readlink(d)
            key = (st.ino, st.size) if st and st.ino else (hash(path), 0)
            if key in seen or (real and real.rstrip("/").endswith("sysimage/rpm")):
                continue
            seen.add(key)
            found.append((path, kind))
    order = {b: n for n, (b, _f) in enumerate(DB_FILES)}
    found.sort(key=lambda pk: order[pk[1]])
    return found


class RpmCataloger(Cataloger):
    """RPM-based distributions (Fedora, RHEL and rebuilds, SUSE, Mariner, Amazon)."""

    NAME = NAME

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """Every database file rpm may use (and sqlite's WAL), whole up to the limit."""
        limit = int(ctx.options.get("rpmdb_limit", RPMDB_LIMIT))
        paths = {f"{d}/{f}{wal}" for d in RPM_DIRS for _b, f in DB_FILES for wal in ("", "-wal")}
        return (Requirements(paths=frozenset(paths), max_bytes=limit, whole=True),)

    VERSION = "1"

    def applies(self, fs: GuestFS, os_info: OSInfo) -> bool:
        return bool(find_databases(fs))

    def catalog(self, fs: GuestFS, ctx: ScanContext) -> list[Package]:
        dbs = find_databases(fs)
        if not dbs:
            return []
        if len(dbs) > 1:
            others = ", ".join(p for p, _k in dbs[1:])
            ctx.notes.append(info(f"several rpm databases; read {dbs[0][0]}, ignored {others}"))
        path, kind = dbs[0]
        limit = int(ctx.options.get("rpmdb_limit", RPMDB_LIMIT))
        wal = f"{path}-wal"
        try:
            with contextlib.ExitStack() as stack:
                host = stack.enter_context(fs.materialize(path, limit))
                host_wal = None
                st = fs.lstat(wal) if kind == "sqlite" else None
                if st is not None and st.is_file and st.size > 0:
                    host_wal = stack.enter_context(fs.materialize(wal, limit))
                res = parse_db_file(host, kind, host_wal)
        except RpmDbError as e:
            why = bound(f"{path}: {e}")
            record_broken_db(ctx.root, NAME, path, why, usable=False)
            raise RpmDbError(f"rpm database unusable: {why}") from e
        except TooLargeError as e:
            record_broken_db(ctx.root, NAME, path, str(e), usable=False)
            raise RpmDbError(f"{path}: not copied: {e}") from e
        except GuestReadError as e:
            raise RpmDbError(f"{path}: not copied: {e}") from e
        summary = f"{path}: {res.damage.summary(len(res.headers))}" if res.damage else ""
        if res.damage:
            record_broken_db(
                ctx.root,
                NAME,
                path,
                summary,
                usable=bool(res.headers),
                details={"packages_read": len(res.headers), "problems": dict(res.damage.counts)},
            )
        if not res.headers:
            if summary:
                raise RpmDbError(f"rpm database unusable: {summary}")
            if _rpm_like(ctx.root.os):
                why = f"{path} holds no package, yet this is an rpm-managed system"
                record_broken_db(ctx.root, NAME, path, why, usable=False)
                raise RpmDbError(why)
            return []
        if summary:
            ctx.notes.append(summary)
        return [header_to_package(h, ctx.root.os) for h in res.headers]


def _rpm_like(os_info: OSInfo) -> bool:
    """The OS says rpm manages it (then an empty database cannot be right)."""
    words = {os_info.package_format, os_info.package_management}
    return bool(words & {"rpm", "dnf", "yum", "zypper", "tdnf"})
