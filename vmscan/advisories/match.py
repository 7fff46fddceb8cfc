"""Matching installed packages against the index: release, package names, version ranges.

The rules that make a match agree with the distribution's own tools:

- **release**: an entry applies only to the guest's release (``Debian:12`` = bookworm,
  ``Alpine:v3.18``, ``Red Hat:rhel_eus:9.2::appstream`` only on 9.2...);
- **names**: Debian, Ubuntu and Alpine feeds name source packages, compared with the
  installed package's source version; rpm-based feeds name binary packages;
- **order**: the distribution's version order (:mod:`vmscan.versions`: dpkg, rpm, apk),
  epochs included;
- **module streams** (RHEL-like): a fix built for a module (``.module_el8…`` or
  ``.module+el8…`` in the release) applies only to a package installed from a module, and
  a non-module fix only to a non-module package. When the advisory names its streams
  (``perl:5.32`` in its summary) and the installed package's rpm header names its own
  (``MODULARITYLABEL`` ``perl:5.26:…``), they must be the same module and stream: a
  perl:5.32 fix does not apply to a perl:5.26 build. A module package whose header has no
  label is matched on the module build alone, and the finding says the stream was unknown.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vmscan.advisories.debian_tracker import CODENAMES
from vmscan.advisories.index import Index
from vmscan.advisories.model import Advisory, Affected, AffectedStatus
from vmscan.model import OSInfo, Package
from vmscan.versions import COMPARATORS, scheme_for_ecosystem

_MODULE_RE = re.compile(r"\.module[_+]el\d")


@dataclass(frozen=True)
class Ecosystem:
    """A distro release as feeds name it: base (``Debian``), release (``12``), codename."""

    base: str
    release: str
    codename: str = ""

    def __str__(self) -> str:
        return f"{self.base}:{self.release}" if self.release else self.base

    def matches(self, feed_ecosystem: str) -> bool:
        """True when an entry's ecosystem string covers this release."""
        base, _, rest = feed_ecosystem.partition(":")
        if base.strip().lower() != self.base.lower() or not self.release:
            return False
        rest = rest.strip()
        if self.base == "Debian":
            return rest in (self.release, self.codename) if self.codename else rest == self.release
        if self.base in ("Mariner", "Azure Linux"):
            return rest == self.release
        if self.base == "Alpine":
            return rest.lstrip("v") == self.release
        if self.base == "Ubuntu":
            # Ubuntu:22.04:LTS, Ubuntu:Pro:18.04:LTS, Ubuntu:Pro:FIPS:20.04:LTS
            return self.release in rest.split(":")
        if self.base in ("AlmaLinux", "Rocky Linux"):
            return rest.split(".")[0] == self.release.split(".")[0]
        if self.base == "Red Hat":
            # Red Hat:enterprise_linux:9::appstream, Red Hat:rhel_eus:9.2::baseos
            fields = rest.split(":")
            rel = fields[1] if len(fields) > 1 else ""
            # Layered products name the RHEL release last: rhel_satellite_client:6::el8.
            el = re.fullmatch(r"el(\d+)", fields[-1]) if len(fields) > 2 else None
            if el:
                return el.group(1) == self.release.split(".")[0]
            if "." in rel:
                return rel == self.release
            return rel == self.release.split(".")[0]
        if self.base in ("SUSE", "openSUSE"):
            m = re.search(r"(\d+)(?:\s*SP(\d+)|\.(\d+))?", rest)
            if not m:
                return False
            major, minor = m.group(1), m.group(2) or m.group(3)
            g_major, _, g_minor = self.release.partition(".")
            return major == g_major and (minor is None or minor == (g_minor or "0"))
        return rest == self.release


_BASES = {
    "debian": "Debian",
    "ubuntu": "Ubuntu",
    "alpine": "Alpine",
    "alpinelinux": "Alpine",  # libguestfs' distro name
    "rhel": "Red Hat",
    "redhat-based": "Red Hat",
    "almalinux": "AlmaLinux",
    "rocky": "Rocky Linux",
    "mariner": "Mariner",
    "azurelinux": "Azure Linux",
    "sles": "SUSE",
    "sled": "SUSE",
    "sles_sap": "SUSE",
    "opensuse-leap": "openSUSE",
    "opensuse": "openSUSE",
}
_RELEASE_OF_CODENAME = dict(CODENAMES)
_CODENAME_OF_RELEASE = {v: k for k, v in CODENAMES.items()}


def guest_ecosystem(os_info: OSInfo) -> Ecosystem | None:
    """The feed ecosystem of a Linux guest, None when no feed covers its distro."""
    ident = (os_info.os_release_id or os_info.distro or "").lower()
    base = _BASES.get(ident)
    if base is None:
        return None
    ver = os_info.version_id or (
        f"{os_info.major_version}.{os_info.minor_version}" if os_info.major_version else ""
    )
    codename = (os_info.version_codename or "").lower()
    if base == "Debian":
        ver = ver.split(".")[0]
        if not ver and codename in _RELEASE_OF_CODENAME:
            ver = _RELEASE_OF_CODENAME[codename]
        if not ver and codename:
            ver = codename  # testing/unstable: only the codename names it
        codename = codename or _CODENAME_OF_RELEASE.get(ver, "")
    elif base == "Alpine":
        ver = ".".join(ver.split(".")[:2])
    elif base == "Mariner" and ver and "." not in ver:
        ver = f"{ver}.0"
    return Ecosystem(base, ver, codename if base == "Debian" else "")


def package_names_for(eco: Ecosystem, pkg: Package) -> list[tuple[str, str, str]]:
    """(name in the feed, version to compare, name kind) candidates for one package."""
    if eco.base in ("Debian", "Ubuntu"):
        return [(pkg.source_name or pkg.name, pkg.source_version or pkg.version, "source")]
    if eco.base == "Alpine":
        return [(pkg.source_name or pkg.name, pkg.version, "source")]
    out = [(pkg.name, pkg.version, "binary")]
    if pkg.source_name and pkg.source_name != pkg.name:
        out.append((pkg.source_name, pkg.version, "source"))
    return out


@dataclass(frozen=True)
class Match:
    """One advisory entry that applies to one installed package."""

    advisory: Advisory
    affected: Affected
    package: Package
    compared_version: str
    fixed_version: str | None
    #: RHEL-like module stream the match was made on (``perl:5.32``), ``unknown stream``
    #: when the installed header names none, ``""`` for a non-module package.
    module: str = ""

    @property
    def status(self) -> str:
        """``fixable`` (a fixed version exists) or ``unfixed`` (no fix yet)."""
        return "fixable" if self.fixed_version else "unfixed"


def affected_by_range(
    version: str, events: tuple[tuple[str, str], ...], cmp: Callable[[str, str], int]
) -> tuple[bool, str | None]:
    """(affected?, the fixed version that ends the range holding *version*), per OSV."""

    def key(ev: tuple[str, str]) -> tuple[int, str]:
        return (0, "") if ev == ("introduced", "0") else (1, ev[1])

    def cmp_ev(a: tuple[str, str], b: tuple[str, str]) -> int:
        ka, kb = key(a), key(b)
        if ka[0] != kb[0]:
            return ka[0] - kb[0]
        return cmp(ka[1], kb[1]) if ka[0] else 0

    ordered = sorted(events, key=functools.cmp_to_key(cmp_ev))
    affected = False
    for n, (kind, value) in enumerate(ordered):
        if kind == "introduced":
            if value == "0" or cmp(version, value) >= 0:
                affected = True
        elif kind == "fixed":
            if cmp(version, value) >= 0:
                affected = False
        elif kind == "last_affected":
            if cmp(version, value) > 0:
                affected = False
        elif kind == "limit" and cmp(version, value) >= 0:
            affected = False
        if affected and n + 1 < len(ordered):
            nxt_kind, nxt_value = ordered[n + 1]
            if nxt_kind == "fixed" and cmp(version, nxt_value) < 0:
                return True, nxt_value
    return (True, None) if affected else (False, None)


def installed_stream(pkg: Package) -> str:
    """``module:stream`` of an installed rpm from its MODULARITYLABEL, ``""`` when none."""
    label = str(pkg.extra.get("modularitylabel") or "")
    name, _, rest = label.partition(":")
    stream = rest.partition(":")[0]
    return f"{name}:{stream}" if name and stream else ""


def module_check(scheme: str, installed: str, pkg: Package, aff: Affected) -> str | None:
    """None when the entry is for another module stream (or module vs non-module), else
    the stream it was matched on (``perl:5.32``; ``"unknown stream"``; ``""``: no module)."""
    if scheme != "rpm":
        return ""
    fixes = [v for events in aff.ranges for k, v in events if k == "fixed"] + list(aff.versions)
    if not fixes:
        return ""
    mine = bool(_MODULE_RE.search(installed))
    if all(bool(_MODULE_RE.search(f)) != mine for f in fixes):
        return None
    if not mine:
        return ""
    streams = [str(s) for s in aff.extra.get("module_streams") or []]
    have = installed_stream(pkg)
    if not streams:
        return have or "unknown stream"
    if not have:
        return "unknown stream"
    return have if have in streams else None


@dataclass
class MatchResult:
    """Matches, entries not yet triaged (Debian ``undetermined``), and notes."""

    matches: list[Match]
    undetermined: list[tuple[Advisory, Package]]
    notes: list[str]


def match_packages(index: Index, eco: Ecosystem, packages: Iterable[Package]) -> MatchResult:
    """Every index entry that applies to one of *packages* in the guest's release."""
    res = MatchResult([], [], [])
    for pkg in packages:
        seen: set[tuple[str, str]] = set()
        for name, version, _kind in package_names_for(eco, pkg):
            for adv, aff in index.affected(eco.base, name):
                key = (adv.feed, adv.id)
                if key in seen or adv.withdrawn or not eco.matches(aff.ecosystem):
                    continue
                scheme = scheme_for_ecosystem(aff.ecosystem)
                module = module_check(scheme, version, pkg, aff) if scheme else None
                if scheme is None or module is None:
                    continue
                cmp = COMPARATORS[scheme]
                hit, fixed = False, None
                try:
                    if version in aff.versions:
                        hit = True
                    for events in aff.ranges:
                        r_hit, r_fixed = affected_by_range(version, events, cmp)
                        if r_hit:
                            hit = True
                            fixed = r_fixed or fixed
                except (ValueError, TypeError) as e:
                    if len(res.notes) < 20:
                        res.notes.append(f"{adv.id}: cannot compare {version!r}: {e}"[:300])
                    continue
                if not hit:
                    continue
                seen.add(key)
                if aff.status == AffectedStatus.UNDETERMINED:
                    res.undetermined.append((adv, pkg))
                else:
                    res.matches.append(Match(adv, aff, pkg, version, fixed, module))
    return res
