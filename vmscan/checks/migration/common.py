"""What every migration step shares: the per-root run (findings, facts, notes), limits,
guest-view and hive helpers.
"""

from __future__ import annotations

import hashlib
import re
import stat as statmod
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vmscan.checks.migration.parse import (
    ParseNotes,
)
from vmscan.checks.migration.rules import Rule
from vmscan.errors import VmscanError
from vmscan.guestfs_view import GuestFS
from vmscan.model import Finding, Severity
from vmscan.plugins import ScanContext

CONFIG_LIMIT = 1024 * 1024
#: Largest initramfs read to look for virtio modules.
INITRAMFS_LIMIT = 256 * 1024 * 1024
#: Default cap on executables whose header is read (one guest round trip each).
DEFAULT_MAX_HEADS = 2000
#: Paths listed per finding / fact sample.
SAMPLE = 20

# ---------------------------------------------------------------------------
# Helpers over the guest view


def ci_path(fs: GuestFS, path: str) -> str | None:
    """Resolve *path* case-insensitively (NTFS through ntfs-3g is case-sensitive)."""
    if fs.exists(path):
        return path
    cur = "/"
    for part in [p for p in path.split("/") if p]:
        names = fs.listdir(cur)
        hit = next((n for n in names if n == part), None) or next(
            (n for n in names if n.lower() == part.lower()), None
        )
        if hit is None:
            return None
        cur = cur.rstrip("/") + "/" + hit
    return cur


def hive_values(hive: Any, node: int) -> dict[str, tuple[int, bytes]]:
    return {k.lower(): v for k, v in hive.values(node).items()}


def hive_path(hive: Any, names: Iterable[str]) -> int | None:
    node: int | None = hive.root()
    for name in names:
        if node is None:
            return None
        node = hive.child(node, name)
    return node


def reg_dword(val: tuple[int, bytes] | None) -> int | None:
    if val is None or len(val[1]) < 4:
        return None
    return int(struct.unpack_from("<I", val[1])[0])


def reg_multi_sz(val: tuple[int, bytes] | None) -> list[str]:
    if val is None:
        return []
    text = val[1].decode("utf-16-le", errors="replace")
    return [s for s in text.split("\x00") if s.strip()]


# ---------------------------------------------------------------------------
# The check


VIRTIO_LINUX = ("virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci")
KCONFIG = {
    "virtio_blk": "CONFIG_VIRTIO_BLK",
    "virtio_scsi": "CONFIG_SCSI_VIRTIO",
    "virtio_net": "CONFIG_VIRTIO_NET",
    "virtio_pci": "CONFIG_VIRTIO_PCI",
}
MODULE_PATHS = {
    "virtio_blk": "kernel/drivers/block/virtio_blk.ko*",
    "virtio_scsi": "kernel/drivers/scsi/virtio_scsi.ko*",
    "virtio_net": "kernel/drivers/net/virtio_net.ko*",
    "virtio_pci": "kernel/drivers/virtio/virtio_pci.ko*",
}
VIRTIO_WINDOWS = (
    "viostor",
    "vioscsi",
    "netkvm",
    "vioser",
    "balloon",
    "viorng",
    "pvpanic",
    "fwcfg",
    "vioinput",
    "viofs",
)
EXEC_DIRS = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec"}
PE_EXTS = (".exe", ".dll", ".com")
SO_RE = re.compile(r"\.so(\.[\d.]+)?$")
# Paths where 32-bit code usually lives: examined first so the cap does not hide them.
PRIORITY_RE = re.compile(
    r"(/lib32/|/libx32/|i[3-6]86|/opt/|/usr/local/|/home/|/srv/|"
    # RPM distributions keep 32-bit libraries straight in /usr/lib (64-bit in /usr/lib64).
    r"^/(?:usr/)?lib/[^/]+\.so|"
    r"/program files|/users/|/programdata/)",
    re.IGNORECASE,
)


@dataclass
class Run:
    fs: GuestFS
    ctx: ScanContext
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: ParseNotes = field(default_factory=ParseNotes)

    def add(
        self,
        rule: Rule,
        target: str,
        key: str,
        *,
        title: str = "",
        severity: str = "",
        **details: Any,
    ) -> None:
        """One finding; *key* makes the fingerprint stable across scans."""
        raw = "\0".join(("migration", rule.id, self.ctx.root.device, target, key))
        details.setdefault("remediation", rule.remediation)
        self.findings.append(
            Finding(
                check="migration",
                rule_id=rule.id,
                severity=Severity(severity or rule.severity),
                title=title or rule.title,
                target=target,
                details=details,
                fingerprint=hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32],
            )
        )

    def text(self, path: str, limit: int = CONFIG_LIMIT) -> str | None:
        """A guest text file, or None (absent, too large, unreadable: noted)."""
        st = self.fs.lstat(path)
        if st is None:
            return None
        if statmod.S_ISLNK(st.mode):
            if not self.fs.is_file(path):
                return None
        elif not st.is_file:
            return None
        try:
            return self.fs.read_bytes(path, limit).decode("utf-8", errors="replace")
        except VmscanError as e:
            self.notes.add(f"{path}: not read ({e})")
            return None

    @property
    def packages(self) -> set[str]:
        return {p.name.lower() for p in self.ctx.root.packages}
