"""Network identity: MAC-bound interface configuration (udev, ifcfg, netplan,
NetworkManager, systemd-networkd).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmscan.checks.migration.common import Run
from vmscan.checks.migration.parse import (
    NetParse,
    ParseNotes,
    parse_debian_interfaces,
    parse_ifcfg,
    parse_netplan,
    parse_nm_keyfile,
    parse_systemd_network,
    parse_udev_rules,
)
from vmscan.checks.migration.rules import NET_MAC_BINDING


def network_linux(r: Run) -> None:
    fs = r.fs
    files: list[tuple[str, Callable[[str, str, ParseNotes], NetParse]]] = []
    files += [(p, parse_udev_rules) for p in fs.glob("/etc/udev/rules.d/*.rules")]
    files += [(p, parse_ifcfg) for p in fs.glob("/etc/sysconfig/network-scripts/ifcfg-*")]
    files += [(p, parse_ifcfg) for p in fs.glob("/etc/sysconfig/network/ifcfg-*")]
    files += [(p, parse_netplan) for p in fs.glob("/etc/netplan/*.yaml")]
    files += [(p, parse_netplan) for p in fs.glob("/etc/netplan/*.yml")]
    files += [(p, parse_nm_keyfile) for p in fs.glob("/etc/NetworkManager/system-connections/*")]
    for ext in ("link", "network", "netdev"):
        files += [(p, parse_systemd_network) for p in fs.glob(f"/etc/systemd/network/*.{ext}")]
    files += [
        (p, parse_debian_interfaces)
        for p in ["/etc/network/interfaces", *fs.glob("/etc/network/interfaces.d/*")]
    ]
    macs: list[dict[str, Any]] = []
    statics: list[dict[str, Any]] = []
    seen: list[str] = []
    for path, parser in files:
        if path.endswith("ifcfg-lo"):
            continue
        text = r.text(path)
        if text is None:
            continue
        seen.append(path)
        res = parser(path, text, r.notes)
        for m in res.macs:
            macs.append(
                {
                    "file": m.file,
                    "line": m.line,
                    "text": m.text,
                    "mac": m.mac,
                    "interface": m.interface,
                    "kind": m.kind,
                }
            )
            r.add(
                NET_MAC_BINDING,
                m.file,
                f"{m.mac}|{m.text}",
                file=m.file,
                line=m.line,
                text=m.text,
                mac=m.mac,
                interface=m.interface,
                title=f"{NET_MAC_BINDING.title}: {m.mac}"
                + (f" ({m.interface})" if m.interface else ""),
            )
        for s in res.statics:
            statics.append(
                {
                    "file": s.file,
                    "line": s.line,
                    "text": s.text,
                    "address": s.address,
                    "interface": s.interface,
                }
            )
    r.facts["network_config_files"] = seen
    if not seen:
        r.facts["network_config"] = "none found"
    r.facts["mac_bindings"] = macs
    r.facts["static_ip"] = statics


def network_windows(r: Run) -> None:
    r.facts.setdefault("mac_bindings", [])
    r.facts.setdefault("static_ip", [])
