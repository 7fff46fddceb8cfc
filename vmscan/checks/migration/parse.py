"""Pure parsers of guest configuration for the migration check: fstab, crypttab and
network configs (udev, ifcfg, netplan, NetworkManager, systemd-networkd, ifupdown).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Longest config line considered; longer ones are garbage (or hostile) and skipped.
MAX_LINE = 4096
#: Most lines read from one config file.
MAX_LINES = 100_000

_MAC_RE = re.compile(r"(?<![0-9A-Fa-f:])((?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2})(?![0-9A-Fa-f:])")


@dataclass
class ParseNotes:
    """What a parser skipped and why (goes to the report as notes)."""

    items: list[str] = field(default_factory=list)

    def add(self, msg: str) -> None:
        # Cap the notes too: a garbage file must not flood the report.
        if len(self.items) < 50:
            self.items.append(msg)
        elif len(self.items) == 50:
            self.items.append("more lines skipped (notes capped at 50)")


def config_lines(text: str, path: str, notes: ParseNotes) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a config text, skipping garbage with a note."""
    for n, line in enumerate(text.splitlines(), start=1):
        if n > MAX_LINES:
            notes.add(f"{path}: stopped after {MAX_LINES} lines")
            return
        if len(line) > MAX_LINE:
            notes.add(f"{path}:{n}: line of {len(line)} characters skipped")
            continue
        if "\x00" in line:
            notes.add(f"{path}:{n}: binary line skipped")
            continue
        yield n, line


def normalize_mac(mac: str) -> str:
    """Lower-case, colon-separated MAC."""
    return mac.replace("-", ":").lower()


# ---------------------------------------------------------------------------
# fstab / crypttab


@dataclass(frozen=True)
class FstabEntry:
    """One mount line of /etc/fstab."""

    line: int
    text: str
    spec: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]

    @property
    def optional(self) -> bool:
        """True when boot does not wait for it (nofail / noauto)."""
        return "nofail" in self.options or "noauto" in self.options


@dataclass(frozen=True)
class CrypttabEntry:
    """One line of /etc/crypttab."""

    line: int
    text: str
    name: str
    device: str
    options: tuple[str, ...]


def _unescape_fstab(field_: str) -> str:
    # fstab(5): spaces and tabs are written as octal escapes (\040, \011).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_fstab(text: str, path: str, notes: ParseNotes) -> list[FstabEntry]:
    """Entries of an fstab; malformed lines are skipped with a note."""
    out: list[FstabEntry] = []
    for n, raw in config_lines(text, path, notes):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[1].startswith(("/", "none", "swap")):
            notes.add(f"{path}:{n}: not an fstab entry, skipped")
            continue
        opts = tuple(fields[3].split(",")) if len(fields) > 3 else ()
        out.append(
            FstabEntry(
                line=n,
                text=line,
                spec=_unescape_fstab(fields[0]),
                mountpoint=_unescape_fstab(fields[1]),
                fstype=fields[2] if len(fields) > 2 else "",
                options=opts,
            )
        )
    return out


def parse_crypttab(text: str, path: str, notes: ParseNotes) -> list[CrypttabEntry]:
    """Entries of a crypttab; malformed lines are skipped with a note."""
    out: list[CrypttabEntry] = []
    for n, raw in config_lines(text, path, notes):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            notes.add(f"{path}:{n}: not a crypttab entry, skipped")
            continue
        opts = tuple(fields[3].split(",")) if len(fields) > 3 else ()
        out.append(CrypttabEntry(n, line, fields[0], fields[1], opts))
    return out


#: Kernel device names that depend on the bus/controller the hypervisor presents.
_KERNEL_NAME_RE = re.compile(
    r"^/dev/(?:(?:sd|hd|vd|xvd)[a-z]+\d*|nvme\d+n\d+(?:p\d+)?|mmcblk\d+(?:p\d+)?|"
    r"cciss/c\d+d\d+(?:p\d+)?)$"
)


def classify_device_spec(spec: str) -> str:
    """Kind of a block-device reference in fstab/crypttab.

    ``kernel_name`` (/dev/sdb1 ...) and ``hardware_path`` (/dev/disk/by-id, by-path:
    serials and bus paths of the virtual controller) change when the VM moves;
    ``uuid``/``label``/``partuuid``/``partlabel``/``lvm``/``md`` do not. ``virtual``
    is a pseudo filesystem, ``network`` a remote share, ``other`` anything else.
    """
    s = spec.strip().strip('"')
    up = s.upper()
    for prefix, kind in (
        ("UUID=", "uuid"),
        ("LABEL=", "label"),
        ("PARTUUID=", "partuuid"),
        ("PARTLABEL=", "partlabel"),
        ("ID=", "hardware_path"),
    ):
        if up.startswith(prefix):
            return kind
    if s.startswith("/dev/disk/by-uuid/"):
        return "uuid"
    if s.startswith("/dev/disk/by-label/"):
        return "label"
    if s.startswith("/dev/disk/by-partuuid/"):
        return "partuuid"
    if s.startswith("/dev/disk/by-partlabel/"):
        return "partlabel"
    if s.startswith(("/dev/disk/by-id/", "/dev/disk/by-path/")):
        return "hardware_path"
    if _KERNEL_NAME_RE.match(s):
        return "kernel_name"
    if s.startswith("/dev/mapper/") or re.match(r"^/dev/[^/]+/[^/]+$", s):
        return "lvm"
    if re.match(r"^/dev/md(?:\d+|/.+)$", s):
        return "md"
    if s.startswith("//") or re.match(r"^[\w.-]+:/", s):
        return "network"
    if not s.startswith("/"):
        return "virtual"
    return "other"


def mapper_to_lv(name: str) -> str | None:
    """``/dev/mapper/vg--a-root`` -> ``/dev/vg-a/root`` (device-mapper doubles dashes)."""
    if not name.startswith("/dev/mapper/"):
        return None
    base = name[len("/dev/mapper/") :]
    # Split on the first single dash (not part of a doubled one).
    m = re.match(r"^((?:[^-]|--)+)-((?:[^-]|--)+)$", base)
    if not m:
        return None
    return f"/dev/{m.group(1).replace('--', '-')}/{m.group(2).replace('--', '-')}"


# ---------------------------------------------------------------------------
# Network identity


@dataclass(frozen=True)
class MacBinding:
    """A MAC address a config file ties an interface to."""

    file: str
    line: int
    text: str
    mac: str
    interface: str = ""
    kind: str = ""  # udev | ifcfg | netplan | networkmanager | systemd | interfaces


@dataclass(frozen=True)
class StaticAddress:
    """A static IP address configured in the guest (listed, not judged)."""

    file: str
    line: int
    text: str
    address: str
    interface: str = ""


@dataclass
class NetParse:
    """What the network config parsers found in one file."""

    macs: list[MacBinding] = field(default_factory=list)
    statics: list[StaticAddress] = field(default_factory=list)


def _macs_in(line: str) -> list[str]:
    return [normalize_mac(m) for m in _MAC_RE.findall(line)]


def parse_udev_rules(path: str, text: str, notes: ParseNotes) -> NetParse:
    """MAC matches (``ATTR{address}==``) in udev rules (70-persistent-net.rules...)."""
    out = NetParse()
    for n, raw in config_lines(text, path, notes):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.search(r"ATTRS?\{address\}\s*==\s*\"([^\"]*)\"", line)
        if not m:
            continue
        name = re.search(r"\bNAME\s*:?=\s*\"([^\"]*)\"", line)
        for mac in _macs_in(m.group(1)):
            out.macs.append(MacBinding(path, n, line, mac, name.group(1) if name else "", "udev"))
    return out


def _shell_value(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
    return v


def parse_ifcfg(path: str, text: str, notes: ParseNotes) -> NetParse:
    """RHEL/SUSE ifcfg-*: HWADDR/MACADDR/LLADDR and static IPADDR*."""
    out = NetParse()
    iface = path.rsplit("/", 1)[-1].removeprefix("ifcfg-")
    for n, raw in config_lines(text, path, notes):
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().upper()
        value = _shell_value(value)
        if key in ("HWADDR", "MACADDR", "LLADDR"):
            for mac in _macs_in(value):
                out.macs.append(MacBinding(path, n, line, mac, iface, "ifcfg"))
        elif re.fullmatch(r"IPADDR\w*", key) and value:
            out.statics.append(StaticAddress(path, n, line, value, iface))
    return out


def parse_netplan(path: str, text: str, notes: ParseNotes) -> NetParse:
    """netplan YAML, read line by line (keeps line numbers, survives broken YAML)."""
    out = NetParse()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings

    def iface() -> str:
        for i, (_, key) in enumerate(stack[:-1]):
            if key in _NETPLAN_KINDS:
                return stack[i + 1][1]
        return ""

    for n, raw in config_lines(text, path, notes):
        stripped = raw.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        indent = len(stripped) - len(stripped.lstrip())
        body = stripped.strip()
        if body.startswith("-"):
            # A list item: an address when its parent key is "addresses".
            if stack and stack[-1][1] == "addresses" and indent >= stack[-1][0]:
                addr = _shell_value(body[1:].strip().rstrip(":").strip())
                if re.match(r"^[0-9a-fA-F:.]+(/\d+)?$", addr):
                    out.statics.append(StaticAddress(path, n, body, addr, iface()))
            continue
        m = re.match(r"^[\"']?([\w.@:-]+?)[\"']?\s*:(?:\s+(.*))?$", body)
        if not m:
            notes.add(f"{path}:{n}: not a YAML mapping line, skipped")
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, value = m.group(1), (m.group(2) or "").strip()
        stack.append((indent, key))
        if key == "macaddress":
            for mac in _macs_in(value):
                out.macs.append(MacBinding(path, n, body, mac, iface(), "netplan"))
        elif key == "addresses" and value.startswith("["):
            for addr in re.split(r"[,\s]+", value.strip("[]")):
                addr = _shell_value(addr)
                if addr:
                    out.statics.append(StaticAddress(path, n, body, addr, iface()))
    return out


_NETPLAN_KINDS = ("ethernets", "bonds", "bridges", "vlans", "wifis", "tunnels", "modems")


def _ini_lines(path: str, text: str, notes: ParseNotes) -> Iterator[tuple[int, str, str, str, str]]:
    """(line, text, section lower-case, key, value) of an ini-like file."""
    section = ""
    for n, raw in config_lines(text, path, notes):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        if "=" not in line:
            notes.add(f"{path}:{n}: not a key=value line, skipped")
            continue
        key, _, value = line.partition("=")
        yield n, line, section, key.strip(), value.strip()


def parse_nm_keyfile(path: str, text: str, notes: ParseNotes) -> NetParse:
    """NetworkManager keyfile: [ethernet] mac-address / cloned-mac-address, [ipv4] address*."""
    out = NetParse()
    rows = list(_ini_lines(path, text, notes))
    conn = {key: value for _, _, section, key, value in rows if section == "connection"}
    iface = conn.get("interface-name") or conn.get("id", "")
    for n, line, section, key, value in rows:
        k = key.lower()
        if k in ("mac-address", "cloned-mac-address") and section in (
            "ethernet",
            "802-3-ethernet",
            "wifi",
            "802-11-wireless",
            "infiniband",
        ):
            for mac in _macs_in(value):
                out.macs.append(MacBinding(path, n, line, mac, iface, "networkmanager"))
        elif section in ("ipv4", "ipv6") and re.fullmatch(r"address(?:es)?\d*", k) and value:
            addr = value.split(",", 1)[0].split(";", 1)[0].strip()
            out.statics.append(StaticAddress(path, n, line, addr, iface))
    return out


def parse_systemd_network(path: str, text: str, notes: ParseNotes) -> NetParse:
    """systemd-networkd .link/.network/.netdev: MACAddress= and Address=."""
    out = NetParse()
    rows = list(_ini_lines(path, text, notes))
    iface = ""
    for _, _, section, key, value in rows:
        if key == "Name" and (section == "match" or (section == "link" and not iface)):
            iface = value
    for n, line, section, key, value in rows:
        if key in ("MACAddress", "PermanentMACAddress") and section in ("match", "link", "netdev"):
            for mac in _macs_in(value):
                out.macs.append(MacBinding(path, n, line, mac, iface, "systemd"))
        elif key == "Address" and section in ("network", "address") and value:
            out.statics.append(StaticAddress(path, n, line, value, iface))
    return out


def parse_debian_interfaces(path: str, text: str, notes: ParseNotes) -> NetParse:
    """ifupdown /etc/network/interfaces: ``hwaddress`` and static ``address``."""
    out = NetParse()
    iface = ""
    for n, raw in config_lines(text, path, notes):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "iface" and len(words) > 1:
            iface = words[1]
        elif words[0] == "hwaddress":
            for mac in _macs_in(line):
                out.macs.append(MacBinding(path, n, line, mac, iface, "interfaces"))
        elif words[0] == "address" and len(words) > 1:
            out.statics.append(StaticAddress(path, n, line, words[1], iface))
    return out
