"""Windows cataloger: installed programs, OS facts and installed KBs from the registry hives."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from vmscan.catalog.common import record_broken_db
from vmscan.completeness import bound, join_notes
from vmscan.eol import windows_product
from vmscan.errors import GuestReadError, VmscanError
from vmscan.guestfs_view import GuestFS, Hive
from vmscan.hive import HiveError, lookup, reg_int, reg_str
from vmscan.model import OSInfo, Package
from vmscan.plugins import Cataloger, Requirements, ScanContext

log = logging.getLogger(__name__)

NAME = "os/windows"

UNINSTALL_VIEWS = (
    ("Microsoft\\Windows\\CurrentVersion\\Uninstall", "native"),
    ("WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall", "x86"),
)
CURRENT_VERSION = "Microsoft\\Windows NT\\CurrentVersion"
CBS_PACKAGES = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\Packages"
#: Uninstall entries read per view at most (a hostile hive may hold millions).
MAX_PROGRAMS = 20_000
MAX_CBS = 100_000
_KB_RE = re.compile(r"KB(\d{6,8})", re.IGNORECASE)
#: ``Package_for_RollupFix~31bf3856ad364e35~amd64~~20348.3692.1.5``: the LCU and its UBR.
_ROLLUP_RE = re.compile(r"^Package_for_RollupFix~[^~]*~[^~]*~[^~]*~\d+\.(\d+)\.", re.IGNORECASE)
_FACTS = (
    ("ProductName", "product_name"),
    ("EditionID", "edition_id"),
    ("DisplayVersion", "display_version"),
    ("ReleaseId", "release_id"),
    ("CurrentBuildNumber", "current_build"),
    ("CurrentBuild", "current_build"),
    ("UBR", "ubr"),
    ("InstallationType", "installation_type"),
    ("CurrentVersion", "current_version"),
    ("CurrentMajorVersionNumber", "major_version"),
    ("CurrentMinorVersionNumber", "minor_version"),
    ("CompositionEditionID", "composition_edition_id"),
    ("InstallDate", "install_date"),
)


def _find_ci(fs: GuestFS, parts: tuple[str, ...]) -> str | None:
    """Guest path whose components match *parts* case-insensitively (NTFS semantics)."""
    path = ""
    for part in parts:
        names = fs.listdir(path or "/")
        match = next((n for n in names if n.lower() == part.lower()), None)
        if match is None:
            return None
        path = f"{path}/{match}"
    return path


def find_hive(fs: GuestFS, name: str) -> str | None:
    """``/Windows/System32/config/<name>`` found case-insensitively (also WINNT)."""
    for sysroot in ("Windows", "WINNT"):
        found = _find_ci(fs, (sysroot, "System32", "config", name))
        if found and fs.is_file(found):
            return found
    return None


@dataclass
class WindowsFacts:
    """What the SOFTWARE and SYSTEM hives say about the OS."""

    facts: dict[str, Any] = field(default_factory=dict)
    programs: list[Package] = field(default_factory=list)
    kbs: list[str] = field(default_factory=list)
    # Cumulative updates (Package_for_RollupFix) in CBS: name, UBR, CurrentState.
    rollups: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Keys that could not be read or that every Windows has and this hive lacks.
    damage: list[str] = field(default_factory=list)


def read_software(hive: Hive, os_arch: str = "") -> WindowsFacts:
    """OS facts, programs and installed KBs from an open SOFTWARE hive."""
    res = WindowsFacts()
    try:
        cv = lookup(hive, CURRENT_VERSION)
        if cv is not None:
            vals = hive.values(cv)
            for reg_name, key in _FACTS:
                if key in res.facts or reg_name not in vals:
                    continue
                if key in ("ubr", "major_version", "minor_version", "install_date"):
                    n = reg_int(vals[reg_name])
                    if n is not None:
                        res.facts[key] = n
                else:
                    s = reg_str(vals[reg_name])
                    if s:
                        res.facts[key] = s.strip()
        else:
            res.damage.append(f"no {CURRENT_VERSION} key")
    except HiveError as e:
        res.damage.append(f"SOFTWARE\\{CURRENT_VERSION}: {e}")
    for path, view in UNINSTALL_VIEWS:
        try:
            node = lookup(hive, path)
            if node is None:
                continue
            children = hive.children(node)
        except HiveError as e:
            res.damage.append(f"SOFTWARE\\{path}: {e}")
            continue
        if len(children) > MAX_PROGRAMS:
            res.notes.append(
                f"SOFTWARE\\{path}: {len(children)} entries, first {MAX_PROGRAMS} read"
            )
            children = children[:MAX_PROGRAMS]
        bad = 0
        for key, child in children:
            try:
                vals = hive.values(child)
            except HiveError:
                bad += 1
                continue
            display = (reg_str(vals.get("DisplayName")) or "").strip()
            if not display:
                continue  # Windows itself does not list entries without a DisplayName
            version = (reg_str(vals.get("DisplayVersion")) or "").strip()
            extra: dict[str, Any] = {"registry_key": key, "registry_view": view}
            for reg_name, out in (
                ("Publisher", "publisher"),
                ("InstallDate", "install_date"),
                ("InstallLocation", "install_location"),
                ("URLInfoAbout", "url"),
                ("Comments", "comments"),
            ):
                v = reg_str(vals.get(reg_name))
                if v and v.strip():
                    extra[out] = v.strip()
            if reg_int(vals.get("SystemComponent")) == 1:
                extra["system_component"] = True
            res.programs.append(
                Package(
                    name=display,
                    version=version,
                    arch="x86" if view == "x86" else os_arch,
                    source_name="",
                    source_version="",
                    licenses=[],
                    found_by=NAME,
                    purl="",
                    extra=extra,
                )
            )
        if bad:
            res.damage.append(f"SOFTWARE\\{path}: {bad} unreadable entr(y/ies) skipped")
    try:
        node = lookup(hive, CBS_PACKAGES)
        if node is not None:
            kbs: set[str] = set()
            children = hive.children(node)
            for name, handle in children[:MAX_CBS]:
                m = _KB_RE.search(name)
                if m:
                    kbs.add(f"KB{m.group(1)}")
                r = _ROLLUP_RE.match(name)
                if r and len(res.rollups) < 64:
                    # The patch check compares the UBR of installed rollups with the registry's.
                    state = reg_int(hive.values(handle).get("CurrentState"))
                    res.rollups.append({"name": name[:200], "ubr": int(r.group(1)), "state": state})
            res.kbs = sorted(kbs, key=lambda k: int(k[2:]))
    except HiveError as e:
        res.damage.append(f"SOFTWARE\\{CBS_PACKAGES}: {e}")
    return res


def read_system(hive: Hive) -> tuple[dict[str, Any], list[str]]:
    """Hostname and product type from an open SYSTEM hive."""
    facts: dict[str, Any] = {}
    notes: list[str] = []
    try:
        select = lookup(hive, "Select")
        current = reg_int(hive.values(select).get("Current")) if select is not None else None
        cs_name = f"ControlSet{current:03d}" if current else "ControlSet001"
        cs = lookup(hive, cs_name)
        if cs is None:
            notes.append(f"SYSTEM hive has no {cs_name}")
            return facts, notes
        tcpip = lookup(hive, "Services\\Tcpip\\Parameters", cs)
        if tcpip is not None:
            vals = hive.values(tcpip)
            host = reg_str(vals.get("Hostname")) or reg_str(vals.get("NV Hostname"))
            if host:
                facts["hostname"] = host.strip()
        po = lookup(hive, "Control\\ProductOptions", cs)
        if po is not None:
            ptype = reg_str(hive.values(po).get("ProductType"))
            if ptype:
                facts["product_type"] = ptype.strip()
    except HiveError as e:
        notes.append(f"SYSTEM: {e}")
    return facts, notes


def damaged_message(path: str, detail: str) -> str:
    """What a person is told when the SOFTWARE hive cannot be read (bounded)."""
    return bound(
        f"Windows installation found, its SOFTWARE hive is damaged ({path}: {bound(detail, 400)}); "
        "inventory incomplete"
    )


#: Hives read by the Windows cataloger and checks; whole, so that they parse on the host.
HIVE_STREAM_LIMIT = 256 * 1024 * 1024
_HIVE_RE = re.compile(r"^/(windows|winnt)/system32/config/(software|system)$", re.IGNORECASE)


class WindowsCataloger(Cataloger):
    """Programs from the registry Uninstall keys; Windows facts into ``root.os.extra``."""

    NAME = NAME
    VERSION = "1"

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """The SOFTWARE and SYSTEM hives (any case), whole: parsed on the host."""
        return (
            Requirements(
                predicate=lambda e: bool(_HIVE_RE.match(e.path)),
                max_bytes=HIVE_STREAM_LIMIT,
                whole=True,
            ),
        )

    def applies(self, fs: GuestFS, os_info: OSInfo) -> bool:
        # By presence: also on a data volume ("none"), where inspection may have given up
        # on a Windows tree because of the very hive damage this cataloger reports.
        if os_info.type not in ("windows", "unknown", "", "none"):
            return False
        return find_hive(fs, "SOFTWARE") is not None

    def catalog(self, fs: GuestFS, ctx: ScanContext) -> list[Package]:
        os_info = ctx.root.os
        software = find_hive(fs, "SOFTWARE")
        if software is None:
            return []
        try:
            hive = fs.open_hive(software)
        except GuestReadError as e:
            # A dead appliance (ApplianceDiedError) is no damaged hive: it propagates.
            why = damaged_message(software, str(e))
            if isinstance(e, HiveError):  # the file is there, not a hive
                record_broken_db(ctx.root, NAME, software, why, usable=False)
            raise VmscanError(why) from e
        try:
            res = read_software(hive, os_info.arch if os_info.arch != "unknown" else "")
        finally:
            # libguestfs allows one open hive per handle: close before SYSTEM.
            hive.close()
        ctx.notes.extend(f"{software}: {n}" for n in res.notes)
        if res.damage:
            why = damaged_message(software, join_notes(res.damage, 400))
            ctx.notes.append(why)
            record_broken_db(
                ctx.root,
                NAME,
                software,
                why,
                usable=bool(res.programs or res.facts),
                details={"programs_read": len(res.programs), "problems": len(res.damage)},
            )
        extra = os_info.extra
        extra.update(res.facts)
        extra["installed_kbs"] = res.kbs
        extra["servicing_rollups"] = res.rollups
        system = find_hive(fs, "SYSTEM")
        if system is not None:
            try:
                shive = fs.open_hive(system)
            except GuestReadError as e:
                ctx.notes.append(
                    f"{system}: SYSTEM hive damaged or unreadable ({e}): hostname "
                    "and product type unknown"
                )
            else:
                try:
                    facts, notes = read_system(shive)
                finally:
                    shive.close()
                extra.update(facts)
                ctx.notes.extend(f"{system}: {n}" for n in notes)
                if facts.get("hostname") and not os_info.hostname:
                    os_info.hostname = facts["hostname"]
        if os_info.type in ("unknown", ""):
            os_info.type = "windows"  # a data volume ("none") stays one
        # Windows 11 still calls itself "Windows 10" in ProductName.
        registry_name = str(extra.get("product_name") or "")
        product = windows_product(os_info)
        if not os_info.product_name:
            os_info.product_name = registry_name or product
        if product.startswith("Windows 11") and "Windows 11" not in os_info.product_name:
            os_info.product_name = product
        if not os_info.major_version and isinstance(extra.get("major_version"), int):
            os_info.major_version = extra["major_version"]
            os_info.minor_version = int(extra.get("minor_version") or 0)
        return res.programs
