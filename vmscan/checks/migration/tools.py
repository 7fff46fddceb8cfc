"""Hypervisor tools and agents: which are installed (packages, files) and which must go or
be added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmscan.checks.migration.common import SAMPLE, Run, ci_path
from vmscan.checks.migration.rules import (
    TOOLS_CLOUD_INIT,
    TOOLS_HYPERV,
    TOOLS_QEMU_GA_MISSING,
    TOOLS_VIRTUALBOX,
    TOOLS_VMWARE,
    TOOLS_XEN,
    Rule,
)

# ---------------------------------------------------------------------------
# Hypervisor tools


@dataclass(frozen=True)
class _Tool:
    rule: Rule
    name: str
    packages: tuple[str, ...]  # regexes, full match on the lower-case package name
    linux_files: tuple[str, ...]
    windows_files: tuple[str, ...]


_TOOLS: tuple[_Tool, ...] = (
    _Tool(
        TOOLS_VMWARE,
        "vmware-tools",
        (r"open-vm-tools.*", r"vmware-tools.*", r"vmware tools", r"vmware-guestd"),
        ("/usr/bin/vmtoolsd", "/usr/sbin/vmtoolsd", "/etc/vmware-tools"),
        ("/Program Files/VMware/VMware Tools", "/Windows/System32/drivers/vmmouse.sys"),
    ),
    _Tool(
        TOOLS_HYPERV,
        "hyperv-integration",
        (
            r"hyperv-daemons.*",
            r"hyperv-tools",
            r"hyperv(kvp|vss|fcopy)d",
            r"hv-kvp-daemon-init",
            r"linux-cloud-tools-.*",
            r"hyper-v integration services.*",
        ),
        ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hv_vss_daemon", "/usr/sbin/hypervkvpd"),
        (),  # inbox on Windows Server 2012+ / 8+: nothing to remove
    ),
    _Tool(
        TOOLS_VIRTUALBOX,
        "virtualbox-guest-additions",
        (r"virtualbox-guest-.*", r"virtualbox-ose-guest-.*", r".*virtualbox guest additions.*"),
        ("/usr/sbin/VBoxService", "/opt/VBoxGuestAdditions-*", "/etc/init.d/vboxadd"),
        (
            "/Program Files/Oracle/VirtualBox Guest Additions",
            "/Windows/System32/drivers/VBoxGuest.sys",
        ),
    ),
    _Tool(
        TOOLS_XEN,
        "xen-tools",
        (
            r"xe-guest-utilities",
            r"xenstore-utils",
            r"xen-guest-agent",
            r".*xenserver.*(tools|agent|pv drivers).*",
            r"citrix (vm|xen).*(tools|drivers).*",
            r"xcp-ng .*tools.*",
            r"xen pv drivers.*",
        ),
        ("/usr/sbin/xe-daemon", "/usr/sbin/xe-linux-distribution"),
        (
            "/Windows/System32/drivers/xenvbd.sys",
            "/Windows/System32/drivers/xenbus.sys",
            "/Program Files/Citrix/XenTools",
        ),
    ),
    _Tool(
        TOOLS_CLOUD_INIT,
        "cloud-init",
        (r"cloud-init", r"cloudbase-init.*"),
        ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg"),
        ("/Program Files/Cloudbase Solutions/Cloudbase-Init",),
    ),
)
_QEMU_GA = _Tool(
    TOOLS_QEMU_GA_MISSING,
    "qemu-guest-agent",
    (r"qemu-guest-agent", r"qemu-ga", r"qemu guest agent.*"),
    ("/usr/bin/qemu-ga", "/usr/sbin/qemu-ga"),
    ("/Program Files/Qemu-ga/qemu-ga.exe",),
)


# ---------------------------------------------------------------------------
# 4. Hypervisor tools


def _tool_evidence(r: Run, tool: _Tool, windows: bool) -> list[str]:
    ev: list[str] = []
    pkgs = r.packages
    for rx in tool.packages:
        ev += [f"package {p}" for p in sorted(pkgs) if re.fullmatch(rx, p)]
    for path in tool.windows_files if windows else tool.linux_files:
        if "*" in path:
            ev += [f"file {p}" for p in r.fs.glob(path)]
            continue
        hit = ci_path(r.fs, path) if windows else (path if r.fs.exists(path) else None)
        if hit:
            ev.append(f"file {hit}")
    return ev


def tools(r: Run) -> None:
    windows = r.facts["os_kind"] == "windows"
    found: dict[str, list[str]] = {}
    for tool in _TOOLS:
        ev = _tool_evidence(r, tool, windows)
        if ev:
            found[tool.name] = ev
            r.add(
                tool.rule,
                tool.name,
                "present",
                file=ev[0].split(" ", 1)[1],
                evidence=ev[:SAMPLE],
                text="; ".join(ev[:5]),
            )
    qga = _tool_evidence(r, _QEMU_GA, windows)
    if qga:
        found[_QEMU_GA.name] = qga
    else:
        r.add(
            TOOLS_QEMU_GA_MISSING,
            _QEMU_GA.name,
            "missing",
            text="no qemu-guest-agent package or qemu-ga binary",
        )
    r.facts["hypervisor_tools"] = found
    r.facts["packages_seen"] = len(r.ctx.root.packages)
