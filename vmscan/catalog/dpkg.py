"""dpkg cataloger: /var/lib/dpkg/status and status.d/* (distroless), parsed with python-debian."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from debian import deb822
from debian.debian_support import Version

from vmscan.catalog.common import (
    TEXT_DB_LIMIT,
    DbDamage,
    PackageDbBroken,
    distro_id,
    distro_qualifier,
    make_purl,
    record_broken_db,
)
from vmscan.completeness import info, join_notes
from vmscan.errors import GuestReadError, TooLargeError
from vmscan.guestfs_view import GuestFS
from vmscan.model import FileEntry, OSInfo, Package
from vmscan.plugins import Cataloger, Requirements, ScanContext

log = logging.getLogger(__name__)

STATUS = "/var/lib/dpkg/status"
STATUS_D = "/var/lib/dpkg/status.d"
NAME = "os/dpkg"

_FIELD_RE = re.compile(r"^[!-9;-~][!-9;-~]*:")
_SOURCE_RE = re.compile(r"^\s*(\S+)(?:\s*\(\s*([^)\s]+)\s*\))?\s*$")


@dataclass
class DpkgParse:
    """Packages of one status file plus what was wrong in it (counted, not listed)."""

    packages: list[Package] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_not_installed: int = 0
    #: Records lost (no Package, bad Status, no Version), malformed lines, a cut-off end.
    damage: DbDamage = field(default_factory=lambda: DbDamage(""))
    paragraphs: int = 0
    lines: int = 0


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Paragraphs as (first line number, lines); blank lines separate them."""
    out: list[tuple[int, list[str]]] = []
    cur: list[str] = []
    start = 1
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() == "":
            if cur:
                out.append((start, cur))
                cur = []
            continue
        if not cur:
            start = n
        cur.append(line)
    if cur:
        out.append((start, cur))
    return out


_WANT = {"unknown", "install", "hold", "deinstall", "purge"}
_EFLAG = {"ok", "reinstreq", "hold", "hold-reinstreq"}
_STATE = {
    "not-installed",
    "config-files",
    "half-installed",
    "unpacked",
    "half-configured",
    "triggers-awaited",
    "triggers-pending",
    "installed",
}


#: Unpacked and configured; trigger processing pending does not change the files.
_INSTALLED_STATES = {"installed", "triggers-pending", "triggers-awaited"}


def valid_status(status: str) -> bool:
    """True for a ``want eflag state`` triple dpkg itself would accept."""
    words = status.split()
    return len(words) == 3 and words[0] in _WANT and words[1] in _EFLAG and words[2] in _STATE


def is_installed(status: str) -> bool:
    """dpkg's own view: the third word of ``Status`` (want flag state) is ``installed``
    (or a triggers-* state, which dpkg reaches only from an installed package).

    ``deinstall``/``purge`` wants still count while the files are there; ``half-installed``,
    ``unpacked``, ``half-configured`` and ``config-files`` are not installed packages.
    """
    words = status.split()
    return len(words) == 3 and words[2] in _INSTALLED_STATES


def parse_status(text: str, label: str, os_info: OSInfo | None = None) -> DpkgParse:
    """Parse dpkg status text; bad paragraphs are counted and skipped, never fatal.

    ``notes`` holds at most two bounded lines: the damage (records lost, malformed
    lines, a file cut in the middle of a line) as a gap, and odd but usable values
    (invalid version strings, malformed ``Source``) as :class:`Info`.
    """
    res = DpkgParse(damage=DbDamage(label))
    odd = DbDamage(label)
    damage = res.damage
    os_info = os_info or OSInfo()
    namespace = distro_id(os_info) or "debian"
    distro = distro_qualifier(os_info)
    bad_lines = 0
    first_bad = 0
    for lineno, lines in _blocks(text):
        res.paragraphs += 1
        res.lines += len(lines)
        good: list[str] = []
        for n, line in enumerate(lines):
            if (line[:1] in (" ", "\t") and good) or _FIELD_RE.match(line):
                good.append(line)
            else:
                bad_lines += 1
                first_bad = first_bad or lineno + n
        if not good:
            continue
        para = deb822.Deb822(good)
        name = (para.get("Package") or "").strip()
        version = (para.get("Version") or "").strip()
        if not name:
            damage.add("paragraph(s) with no Package field", f"line {lineno}")
            continue
        status = para.get("Status")
        if status is None:
            # status.d/ files of distroless images carry no Status: they are installed.
            status = "install ok installed" if label.startswith(STATUS_D) else ""
        if status and not valid_status(status):
            damage.add("package(s) with an invalid Status", f"{name} {status[:40]!r}")
            continue
        if not is_installed(status):
            res.skipped_not_installed += 1
            continue
        if not version:
            damage.add("package(s) with no Version field", f"{name} (line {lineno})")
            continue
        try:
            Version(version)
        except ValueError:
            odd.add("package(s) with an invalid version", f"{name} {version[:40]!r}")
        arch = (para.get("Architecture") or "").strip()
        src_name, src_version = name, version
        source = para.get("Source")
        if source:
            m = _SOURCE_RE.match(source)
            if m:
                src_name = m.group(1)
                src_version = m.group(2) or version
            else:
                odd.add("package(s) with a malformed Source", f"{name} {source[:40]!r}")
        quals = {"arch": arch, "distro": distro}
        if src_name != name or src_version != version:
            quals["upstream"] = src_name if src_version == version else f"{src_name}@{src_version}"
        extra: dict[str, str] = {"status": status}
        for key in ("Section", "Maintainer", "Installed-Size", "Multi-Arch", "Homepage"):
            if para.get(key):
                extra[key.lower()] = para[key].strip()
        desc = para.get("Description", "")
        if desc:
            extra["summary"] = desc.split("\n", 1)[0].strip()
        res.packages.append(
            Package(
                name=name,
                version=version,
                arch=arch,
                source_name=src_name,
                source_version=src_version,
                licenses=[],
                found_by=NAME,
                purl=make_purl("deb", namespace, name, version, quals),
                extra=extra,
            )
        )
    if bad_lines:
        # A garbled "Status:" line reads as "not installed": malformed lines are a gap too.
        damage.add("malformed line(s) ignored", f"first at line {first_bad}", n=bad_lines)
    if text and not text.endswith("\n"):
        # dpkg always ends the file with a newline: this one was cut off.
        damage.add("cut-off last line (file truncated?)")
    if damage:
        res.notes.append(damage.summary(len(res.packages), "installed package(s)"))
    if odd:
        res.notes.append(info(odd.summary()))
    return res


def _debian_like(os_info: OSInfo) -> bool:
    """The OS says it is managed by dpkg (then an empty database cannot be right)."""
    words = {
        os_info.package_format,
        os_info.package_management,
        os_info.distro,
        os_info.os_release_id,
    }
    return bool(words & {"deb", "dpkg", "apt", "debian", "ubuntu"})


def _status_file(e: FileEntry) -> bool:
    if e.path == STATUS:
        return True
    parent, _, name = e.path.rpartition("/")
    return parent == STATUS_D and not name.endswith(".md5sums")


class DpkgCataloger(Cataloger):
    """Debian/Ubuntu packages from the dpkg database."""

    NAME = NAME
    VERSION = "1"

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """The status file and status.d paragraphs (not their md5sums), whole; kept by
        content (up to the blob cache's size limit) for the next scan."""
        return (
            Requirements(predicate=_status_file, max_bytes=TEXT_DB_LIMIT, whole=True, persist=True),
        )

    def applies(self, fs: GuestFS, os_info: OSInfo) -> bool:
        return fs.is_file(STATUS) or fs.is_dir(STATUS_D)

    def catalog(self, fs: GuestFS, ctx: ScanContext) -> list[Package]:
        files: list[str] = []
        if fs.is_file(STATUS):
            files.append(STATUS)
        for name in fs.listdir(STATUS_D):
            # status.d also holds <pkg>.md5sums files next to the paragraphs.
            if name.endswith(".md5sums"):
                continue
            path = f"{STATUS_D}/{name}"
            if fs.is_file(path):
                files.append(path)
        seen: set[tuple[str, str]] = set()
        out: list[Package] = []
        damaged: list[tuple[str, DpkgParse]] = []
        unread: list[str] = []
        for path in files:
            try:
                data = fs.read_bytes(path, TEXT_DB_LIMIT)
            except TooLargeError as e:
                # Never parsed: a status file this large is itself a sign of damage.
                unread.append(f"{path}: not read: {e}")
                record_broken_db(ctx.root, NAME, path, str(e), usable=False)
                continue
            except GuestReadError as e:
                unread.append(f"{path}: not read: {e}")
                continue
            res = parse_status(data.decode("utf-8", errors="replace"), path, ctx.root.os)
            ctx.notes.extend(res.notes)
            if res.damage:
                damaged.append((path, res))
            for pkg in res.packages:
                key = (pkg.name, pkg.arch)
                if key in seen:
                    continue
                seen.add(key)
                out.append(pkg)
        for path, res in damaged:
            record_broken_db(
                ctx.root,
                NAME,
                path,
                res.damage.summary(len(res.packages), "installed package(s)"),
                usable=bool(res.packages),
                details={
                    "packages_read": len(res.packages),
                    "paragraphs": res.paragraphs,
                    "problems": dict(res.damage.counts),
                },
            )
        if out:
            ctx.notes.extend(unread)
            return out
        # Nothing usable: a failure, never an empty inventory (the reason says why).
        reasons = unread + [r.damage.summary(0, "installed package(s)") for _p, r in damaged]
        if reasons:
            raise PackageDbBroken("dpkg database unusable: " + join_notes(reasons))
        if STATUS in files and _debian_like(ctx.root.os):
            why = f"{STATUS} lists no installed package, yet this is a dpkg-managed system"
            record_broken_db(ctx.root, NAME, STATUS, why, usable=False)
            raise PackageDbBroken(why)
        log.debug("dpkg database present but no installed package")
        return out
