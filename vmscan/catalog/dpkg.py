"""dpkg cataloger: /var/lib/dpkg/status and status.d/* (distroless), parsed with python-debian."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from debian import deb822
from debian.debian_support import Version

from vmscan.catalog.common import TEXT_DB_LIMIT, distro_id, distro_qualifier, make_purl
from vmscan.errors import GuestReadError
from vmscan.guestfs_view import GuestFS
from vmscan.model import OSInfo, Package
from vmscan.plugins import Cataloger, ScanContext

log = logging.getLogger(__name__)

STATUS = "/var/lib/dpkg/status"
STATUS_D = "/var/lib/dpkg/status.d"
NAME = "os/dpkg"

_FIELD_RE = re.compile(r"^[!-9;-~][!-9;-~]*:")
_SOURCE_RE = re.compile(r"^\s*(\S+)(?:\s*\(\s*([^)\s]+)\s*\))?\s*$")


@dataclass
class DpkgParse:
    """Packages of one status file plus what was wrong in it."""

    packages: list[Package] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_not_installed: int = 0


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
    """Parse dpkg status text; one bad paragraph is noted and skipped."""
    res = DpkgParse()
    os_info = os_info or OSInfo()
    namespace = distro_id(os_info) or "debian"
    distro = distro_qualifier(os_info)
    bad_lines = 0
    for lineno, lines in _blocks(text):
        good: list[str] = []
        for line in lines:
            if (line[:1] in (" ", "\t") and good) or _FIELD_RE.match(line):
                good.append(line)
            else:
                bad_lines += 1
        if not good:
            continue
        para = deb822.Deb822(good)
        name = (para.get("Package") or "").strip()
        version = (para.get("Version") or "").strip()
        if not name:
            res.notes.append(f"{label}: paragraph at line {lineno} has no Package field")
            continue
        status = para.get("Status")
        if status is None:
            # status.d/ files of distroless images carry no Status: they are installed.
            status = "install ok installed" if label.startswith(STATUS_D) else ""
        if status and not valid_status(status):
            res.notes.append(f"{label}: package {name} has an invalid Status {status[:60]!r}")
            continue
        if not is_installed(status):
            res.skipped_not_installed += 1
            continue
        if not version:
            res.notes.append(f"{label}: package {name} (line {lineno}) has no Version field")
            continue
        try:
            Version(version)
        except ValueError:
            res.notes.append(f"{label}: package {name} has an invalid version {version!r}")
        arch = (para.get("Architecture") or "").strip()
        src_name, src_version = name, version
        source = para.get("Source")
        if source:
            m = _SOURCE_RE.match(source)
            if m:
                src_name = m.group(1)
                src_version = m.group(2) or version
            else:
                res.notes.append(f"{label}: package {name} has a malformed Source {source!r}")
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
        res.notes.append(f"{label}: {bad_lines} malformed line(s) ignored")
    return res


class DpkgCataloger(Cataloger):
    """Debian/Ubuntu packages from the dpkg database."""

    NAME = NAME
    VERSION = "1"

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
        for path in files:
            try:
                data = fs.read_bytes(path, TEXT_DB_LIMIT)
            except GuestReadError as e:
                ctx.notes.append(f"{path}: not read: {e}")
                continue
            res = parse_status(data.decode("utf-8", errors="replace"), path, ctx.root.os)
            ctx.notes.extend(res.notes)
            for pkg in res.packages:
                key = (pkg.name, pkg.arch)
                if key in seen:
                    continue
                seen.add(key)
                out.append(pkg)
        if files and not out and not ctx.notes:
            log.debug("dpkg database present but no installed package")
        return out
