"""Helpers shared by the catalogers: purls, distro qualifiers, size limits."""

from __future__ import annotations

import logging

from packageurl import PackageURL

from vmscan.model import OSInfo

log = logging.getLogger(__name__)

#: Limit for text package databases (dpkg status, apk installed).
TEXT_DB_LIMIT = 64 * 1024 * 1024
#: Limit for a binary rpm database copied out of the guest.
RPMDB_LIMIT = 512 * 1024 * 1024
#: Limit for one registry hive copied out of the guest.
HIVE_LIMIT = 512 * 1024 * 1024


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
