"""Pre-migration audit: what would break when a VM moves to another hypervisor or cloud.

One :class:`Rule` per thing that can break (declared in :data:`ALL_RULES`); a
:class:`~vmscan.model.Finding` is one rule on one target. The facts gathered on the way
(architecture, firmware, kernels and drivers, tools, network and storage identity,
capacity) go into ``root.sections["migration"]`` with a verdict per root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import re
import stat as statmod
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmscan.checks.migration_parse import (
    HEAD_SIZE,
    ExeKind,
    NetParse,
    ParseNotes,
    classify_device_spec,
    classify_executable,
    hiberfil_state,
    mapper_to_lv,
    ntfs_volume_flags,
    parse_crypttab,
    parse_debian_interfaces,
    parse_fstab,
    parse_ifcfg,
    parse_netplan,
    parse_nm_keyfile,
    parse_systemd_network,
    parse_udev_rules,
    pe_header_offset,
    scan_initramfs,
)
from vmscan.errors import GuestError, VmscanError
from vmscan.guestfs_view import GuestFS
from vmscan.model import SEVERITY_ORDER, Finding, Severity
from vmscan.plugins import Check, ScanContext

log = logging.getLogger(__name__)

#: Config files larger than this are not read (they are not real configs).
CONFIG_LIMIT = 1024 * 1024
#: Largest initramfs read to look for virtio modules.
INITRAMFS_LIMIT = 256 * 1024 * 1024
#: Default cap on executables whose header is read (one guest round trip each).
DEFAULT_MAX_HEADS = 2000
#: Paths listed per finding / fact sample.
SAMPLE = 20


@dataclass(frozen=True)
class Rule:
    """One thing that can break a migration; target-independent."""

    id: str
    title: str
    severity: str
    remediation: str


ARCH_32BIT_OS = Rule(
    "MIG-ARCH-32BIT-OS",
    "32-bit operating system",
    Severity.HIGH,
    "Most clouds and current platforms only run 64-bit guests: move the workload to a "
    "64-bit release of the OS before migrating.",
)
ARCH_32BIT_EXE = Rule(
    "MIG-ARCH-32BIT-EXECUTABLES",
    "32-bit executables on a 64-bit system",
    Severity.LOW,
    "Make sure the target image keeps 32-bit support (multiarch/i386 libraries on Linux, "
    "WOW64 on Windows) or replace these programs with 64-bit builds.",
)
ARCH_16BIT_EXE = Rule(
    "MIG-ARCH-16BIT-EXECUTABLES",
    "16-bit DOS / Windows 3.x executables",
    Severity.MEDIUM,
    "16-bit programs do not run on 64-bit Windows: replace them, or run them in an "
    "emulator (DOSBox, a 32-bit VM).",
)
BOOT_UEFI = Rule(
    "MIG-BOOT-UEFI",
    "Guest boots with UEFI firmware",
    Severity.LOW,
    "Create the target VM with UEFI firmware (OVMF) and a GPT boot disk; if the guest "
    "uses shim/Secure Boot, enable Secure Boot with the Microsoft keys.",
)
BOOT_NO_BOOTLOADER = Rule(
    "MIG-BOOT-NO-BOOTLOADER",
    "No bootloader found",
    Severity.MEDIUM,
    "The root holds no bootloader (GRUB, systemd-boot, syslinux, Windows Boot Manager): "
    "install one (grub-install / bootrec) or boot the target with a direct kernel.",
)
BOOT_NO_CONFIG = Rule(
    "MIG-BOOT-NO-CONFIG",
    "Bootloader configuration missing",
    Severity.MEDIUM,
    "Regenerate the bootloader configuration (update-grub / grub2-mkconfig -o ...).",
)
DRV_NO_KERNEL = Rule(
    "MIG-DRV-LINUX-NO-KERNEL",
    "No Linux kernel installed",
    Severity.MEDIUM,
    "The guest has no kernel of its own (container image, or kernel on another disk): "
    "install a kernel package with virtio drivers before migrating.",
)
DRV_LINUX_VIRTIO_STORAGE = Rule(
    "MIG-DRV-LINUX-VIRTIO-STORAGE",
    "Kernel without virtio storage driver (virtio_blk / virtio_scsi)",
    Severity.HIGH,
    "Install a kernel that ships virtio_blk and virtio_scsi (built in or as modules), or "
    "present the disk to the target VM on an emulated IDE/SATA controller.",
)
DRV_LINUX_INITRAMFS = Rule(
    "MIG-DRV-LINUX-INITRAMFS-VIRTIO",
    "initramfs without virtio storage driver",
    Severity.MEDIUM,
    "Rebuild the initramfs with the virtio drivers (dracut --add-drivers 'virtio_blk "
    "virtio_scsi virtio_pci' -f; or add them to /etc/initramfs-tools/modules and run "
    "update-initramfs -u).",
)
DRV_LINUX_VIRTIO_NET = Rule(
    "MIG-DRV-LINUX-VIRTIO-NET",
    "Kernel without virtio network driver (virtio_net)",
    Severity.MEDIUM,
    "Install a kernel that ships virtio_net, or give the target VM an emulated NIC "
    "(e1000) until it does.",
)
DRV_WIN_VIRTIO_STORAGE = Rule(
    "MIG-DRV-WIN-VIRTIO-STORAGE",
    "Windows virtio storage driver missing (viostor / vioscsi)",
    Severity.HIGH,
    "Install the virtio-win storage drivers (viostor for virtio-blk, vioscsi for "
    "virtio-scsi) as boot-start services before moving the disk, e.g. with virt-v2v or "
    "the virtio-win guest tools installer; otherwise Windows stops with "
    "INACCESSIBLE_BOOT_DEVICE.",
)
DRV_WIN_VIRTIO_NET = Rule(
    "MIG-DRV-WIN-VIRTIO-NET",
    "Windows virtio network driver missing (netkvm)",
    Severity.MEDIUM,
    "Install the virtio-win network driver (netkvm) or give the target VM an emulated e1000 NIC.",
)
TOOLS_VMWARE = Rule(
    "MIG-TOOLS-VMWARE",
    "VMware Tools / open-vm-tools installed",
    Severity.MEDIUM,
    "Uninstall VMware Tools (or open-vm-tools) after the move; on Windows do it before, "
    "while the VMware drivers can still be removed cleanly.",
)
TOOLS_HYPERV = Rule(
    "MIG-TOOLS-HYPERV",
    "Hyper-V integration services installed",
    Severity.LOW,
    "Remove hyperv-daemons / Hyper-V integration services when leaving Hyper-V.",
)
TOOLS_VIRTUALBOX = Rule(
    "MIG-TOOLS-VIRTUALBOX",
    "VirtualBox Guest Additions installed",
    Severity.MEDIUM,
    "Uninstall the VirtualBox Guest Additions (their kernel modules and X drivers fail "
    "on other hypervisors).",
)
TOOLS_XEN = Rule(
    "MIG-TOOLS-XEN",
    "Xen guest tools / PV drivers installed",
    Severity.MEDIUM,
    "Remove the Xen tools (xe-guest-utilities, Citrix/XenServer VM Tools); on Windows "
    "the Xen PV storage drivers must be removed before the move or the guest may not boot.",
)
TOOLS_QEMU_GA_MISSING = Rule(
    "MIG-TOOLS-QEMU-GA-MISSING",
    "qemu-guest-agent not installed",
    Severity.LOW,
    "Install qemu-guest-agent (Linux package or virtio-win qemu-ga) for clean shutdown, "
    "freeze/thaw backups and IP reporting on KVM targets.",
)
TOOLS_CLOUD_INIT = Rule(
    "MIG-TOOLS-CLOUD-INIT",
    "cloud-init / cloudbase-init installed",
    Severity.INFO,
    "Check that its datasource matches the target (NoCloud, ConfigDrive, the cloud's "
    "metadata service) or it may reset the hostname, keys and network on first boot.",
)
NET_MAC_BINDING = Rule(
    "MIG-NET-MAC-BINDING",
    "Network configuration bound to a MAC address",
    Severity.MEDIUM,
    "The target VM gets a new MAC address: remove the MAC match/assignment (or delete "
    "70-persistent-net.rules) so that the interface comes up, or keep the MAC on the "
    "target VM.",
)
STOR_DEVICE_NAME = Rule(
    "MIG-STOR-DEVICE-NAME",
    "Mount by kernel device name",
    Severity.MEDIUM,
    "Device names change with the disk controller (sda on SATA/SCSI, vda on virtio-blk, "
    "xvda on Xen): use UUID=, LABEL= or LVM names in /etc/fstab and /etc/crypttab.",
)
STOR_ABSENT_DEVICE = Rule(
    "MIG-STOR-ABSENT-DEVICE",
    "Mount of a device absent from the image",
    Severity.MEDIUM,
    "The entry names a device that is not among the migrated disks: bring that disk "
    "along, or remove the entry / mark it nofail, else boot stops in emergency mode.",
)
CAP_LOW_FREE = Rule(
    "MIG-CAP-LOW-FREE",
    "Filesystem almost full",
    Severity.MEDIUM,
    "Free space before migrating (driver installation, initramfs rebuilds and agents "
    "need room) or grow the disk on the target.",
)
LIFE_EOL = Rule(
    "MIG-LIFE-EOL",
    "Operating system past end of life",
    Severity.MEDIUM,
    "The OS gets no security updates and may not be supported by the target platform: "
    "upgrade it, before or as part of the migration.",
)
WIN_HIBERNATED = Rule(
    "MIG-WIN-HIBERNATED",
    "Windows is hibernated (or was stopped with fast startup)",
    Severity.HIGH,
    "Boot the VM and shut it down fully (shutdown /s /t 0), and disable hibernation and "
    "fast startup (powercfg /h off): a hibernated volume cannot be safely converted.",
)
WIN_HIBERFIL = Rule(
    "MIG-WIN-HIBERFIL",
    "Windows hibernation file present",
    Severity.LOW,
    "Disable hibernation (powercfg /h off) to drop hiberfil.sys and fast startup.",
)
WIN_NTFS_DIRTY = Rule(
    "MIG-WIN-NTFS-DIRTY",
    "NTFS volume not cleanly shut down (dirty)",
    Severity.HIGH,
    "Boot the VM, let chkdsk run, and shut it down cleanly before copying the disk.",
)
WIN_PENDING_REBOOT = Rule(
    "MIG-WIN-PENDING-REBOOT",
    "Windows has a reboot pending",
    Severity.MEDIUM,
    "Reboot the VM to finish pending updates or file operations before migrating: they "
    "would otherwise run on the first boot on the target, with unfamiliar hardware.",
)

#: Every rule, in report order (the JUnit writer emits one test case per rule).
ALL_RULES: tuple[Rule, ...] = (
    ARCH_32BIT_OS,
    ARCH_32BIT_EXE,
    ARCH_16BIT_EXE,
    BOOT_UEFI,
    BOOT_NO_BOOTLOADER,
    BOOT_NO_CONFIG,
    DRV_NO_KERNEL,
    DRV_LINUX_VIRTIO_STORAGE,
    DRV_LINUX_INITRAMFS,
    DRV_LINUX_VIRTIO_NET,
    DRV_WIN_VIRTIO_STORAGE,
    DRV_WIN_VIRTIO_NET,
    TOOLS_VMWARE,
    TOOLS_HYPERV,
    TOOLS_VIRTUALBOX,
    TOOLS_XEN,
    TOOLS_QEMU_GA_MISSING,
    TOOLS_CLOUD_INIT,
    NET_MAC_BINDING,
    STOR_DEVICE_NAME,
    STOR_ABSENT_DEVICE,
    CAP_LOW_FREE,
    LIFE_EOL,
    WIN_HIBERNATED,
    WIN_HIBERFIL,
    WIN_NTFS_DIRTY,
    WIN_PENDING_REBOOT,
)
RULES_BY_ID: dict[str, Rule] = {r.id: r for r in ALL_RULES}

_COMMON_RULES = (
    ARCH_32BIT_OS,
    ARCH_32BIT_EXE,
    ARCH_16BIT_EXE,
    BOOT_UEFI,
    BOOT_NO_BOOTLOADER,
    TOOLS_VMWARE,
    TOOLS_HYPERV,
    TOOLS_VIRTUALBOX,
    TOOLS_XEN,
    TOOLS_QEMU_GA_MISSING,
    TOOLS_CLOUD_INIT,
    CAP_LOW_FREE,
    LIFE_EOL,
)
LINUX_RULES: tuple[Rule, ...] = (
    *_COMMON_RULES,
    BOOT_NO_CONFIG,
    DRV_NO_KERNEL,
    DRV_LINUX_VIRTIO_STORAGE,
    DRV_LINUX_INITRAMFS,
    DRV_LINUX_VIRTIO_NET,
    NET_MAC_BINDING,
    STOR_DEVICE_NAME,
    STOR_ABSENT_DEVICE,
)
WINDOWS_RULES: tuple[Rule, ...] = (
    *_COMMON_RULES,
    DRV_WIN_VIRTIO_STORAGE,
    DRV_WIN_VIRTIO_NET,
    WIN_HIBERNATED,
    WIN_HIBERFIL,
    WIN_NTFS_DIRTY,
    WIN_PENDING_REBOOT,
)
#: A root with no recognisable OS (a data volume): only what applies to any filesystem.
DATA_RULES: tuple[Rule, ...] = (CAP_LOW_FREE,)


def verdict_for(findings: Iterable[Finding]) -> str:
    """``blocked`` at high/critical, ``needs_work`` at low/medium, else ``ready``."""
    top = max((SEVERITY_ORDER.get(f.severity, 0) for f in findings), default=0)
    if top >= SEVERITY_ORDER["high"]:
        return "blocked"
    if top >= SEVERITY_ORDER["low"]:
        return "needs_work"
    return "ready"


_32BIT_ARCHES = {
    "i386",
    "i486",
    "i586",
    "i686",
    "x86",
    "arm",
    "armv7l",
    "armhf",
    "armel",
    "armv6l",
    "ppc",
    "s390",
    "mips",
    "mipsel",
}
_64BIT_ARCHES = {
    "x86_64",
    "amd64",
    "aarch64",
    "arm64",
    "ppc64",
    "ppc64le",
    "s390x",
    "riscv64",
    "ia64",
    "sparc64",
    "mips64",
    "loongarch64",
}


def arch_bits(arch: str) -> int:
    """32 or 64 for a known architecture name, 0 otherwise."""
    a = arch.lower()
    if a in _32BIT_ARCHES:
        return 32
    if a in _64BIT_ARCHES:
        return 64
    return 0


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


def _hive_values(hive: Any, node: int) -> dict[str, tuple[int, bytes]]:
    return {k.lower(): v for k, v in hive.values(node).items()}


def _hive_path(hive: Any, names: Iterable[str]) -> int | None:
    node: int | None = hive.root()
    for name in names:
        if node is None:
            return None
        node = hive.child(node, name)
    return node


def _reg_dword(val: tuple[int, bytes] | None) -> int | None:
    if val is None or len(val[1]) < 4:
        return None
    return int(struct.unpack_from("<I", val[1])[0])


def _reg_multi_sz(val: tuple[int, bytes] | None) -> list[str]:
    if val is None:
        return []
    text = val[1].decode("utf-16-le", errors="replace")
    return [s for s in text.split("\x00") if s.strip()]


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
# The check


_VIRTIO_LINUX = ("virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci")
_KCONFIG = {
    "virtio_blk": "CONFIG_VIRTIO_BLK",
    "virtio_scsi": "CONFIG_SCSI_VIRTIO",
    "virtio_net": "CONFIG_VIRTIO_NET",
    "virtio_pci": "CONFIG_VIRTIO_PCI",
}
_MODULE_PATHS = {
    "virtio_blk": "kernel/drivers/block/virtio_blk.ko*",
    "virtio_scsi": "kernel/drivers/scsi/virtio_scsi.ko*",
    "virtio_net": "kernel/drivers/net/virtio_net.ko*",
    "virtio_pci": "kernel/drivers/virtio/virtio_pci.ko*",
}
_VIRTIO_WINDOWS = (
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
_EXEC_DIRS = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec"}
_PE_EXTS = (".exe", ".dll", ".com")
_SO_RE = re.compile(r"\.so(\.[\d.]+)?$")
# Paths where 32-bit code usually lives: examined first so the cap does not hide them.
_PRIORITY_RE = re.compile(
    r"(/lib32/|/libx32/|i[3-6]86|/opt/|/usr/local/|/home/|/srv/|"
    # RPM distributions keep 32-bit libraries straight in /usr/lib (64-bit in /usr/lib64).
    r"^/(?:usr/)?lib/[^/]+\.so|"
    r"/program files|/users/|/programdata/)",
    re.IGNORECASE,
)


@dataclass
class _Run:
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
                severity=str(severity or rule.severity),
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


class MigrationCheck(Check):
    """Pre-migration audit of one root (see :data:`ALL_RULES`)."""

    NAME = "migration"
    VERSION = "1"

    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        r = _Run(fs, ctx)
        os_type = ctx.root.os.type
        if os_type == "windows":
            kind, rules = "windows", WINDOWS_RULES
        elif os_type in ("linux", "hurd") or fs.is_dir("/etc"):
            kind, rules = "linux", LINUX_RULES
        else:
            kind, rules = "data", DATA_RULES
        r.facts["os_kind"] = kind
        steps: list[Callable[[_Run], None]]
        if kind == "windows":
            steps = [
                _arch,
                _boot_windows,
                _drivers_windows,
                _tools,
                _network_windows,
                _capacity,
                _lifecycle,
                _windows_state,
            ]
        elif kind == "linux":
            steps = [
                _arch,
                _boot_linux,
                _drivers_linux,
                _tools,
                _network_linux,
                _storage,
                _capacity,
                _lifecycle,
            ]
        else:
            steps = [_capacity]
        failed: dict[str, str] = {}
        for step in steps:
            try:
                step(r)
                continue
            except VmscanError as e:  # one failed area never hides the others
                msg = f"{step.__name__.strip('_')}: {e}"
            except Exception as e:  # hostile data: parsers may hit the unexpected
                log.debug("migration step %s failed", step.__name__, exc_info=True)
                msg = f"{step.__name__.strip('_')}: {type(e).__name__}: {e}"
            r.notes.add(msg)
            # Not evaluated is not passed: the report (and JUnit) show these as errors.
            for rule in _STEP_RULES.get(step.__name__, ()):
                failed[rule.id] = msg
        evaluated = [
            rule.id
            for rule in rules
            if rule.id not in failed
            and (rule is not LIFE_EOL or r.facts.get("eol", {}).get("evaluated"))
        ]
        r.findings.sort(
            key=lambda f: (
                ALL_RULES.index(RULES_BY_ID[f.rule_id]),
                f.target,
                f.details.get("line", 0),
            )
        )
        ctx.root.sections["migration"] = {
            "verdict": verdict_for(r.findings),
            "facts": r.facts,
            "rules_evaluated": evaluated,
            "rules_failed": failed,
            "notes": list(r.notes.items),
        }
        ctx.notes.extend(r.notes.items)
        return r.findings


# ---------------------------------------------------------------------------
# 1. Architecture


def _exe_candidates(r: _Run, windows: bool) -> list[str]:
    out: list[str] = []
    for e in r.ctx.manifest:
        # Modes with file-type bits must say "regular"; bare permission bits are accepted.
        if e.size < 64 or (statmod.S_IFMT(e.mode) and not statmod.S_ISREG(e.mode)):
            continue
        p = e.path
        low = p.lower()
        if windows:
            # The OS's own files (System32, SysWOW64, WinSxS) are what WOW64 is for.
            if low.endswith(_PE_EXTS) and not low.startswith(("/windows/", "/winnt/")):
                out.append(p)
        else:
            parts = p.split("/")
            in_exec_dir = any(d in _EXEC_DIRS for d in parts[:-1]) or p.startswith("/opt/")
            if (in_exec_dir and e.mode & 0o111) or (in_exec_dir and _SO_RE.search(parts[-1])):
                out.append(p)
    out.sort(key=lambda p: (0 if _PRIORITY_RE.search(p) else 1, p))
    return out


def _exe_kind(r: _Run, path: str) -> ExeKind | None:
    try:
        head = r.fs.read_head(path, HEAD_SIZE)
    except VmscanError:
        return None
    off = pe_header_offset(head)
    if off is not None and len(head) < off + 256 <= 65536:
        with contextlib.suppress(VmscanError):
            head = r.fs.read_head(path, off + 256)
    return classify_executable(head, path)


def _arch(r: _Run) -> None:
    os_info = r.ctx.root.os
    windows = r.facts["os_kind"] == "windows"
    arch = os_info.arch or "unknown"
    bits = arch_bits(arch)
    source = "inspection"
    if bits == 0:
        probes = (
            ["/Windows/System32/kernel32.dll"]
            if windows
            else ["/usr/bin/ls", "/bin/ls", "/usr/bin/env", "/bin/busybox", "/bin/sh"]
        )
        for probe in probes:
            p = ci_path(r.fs, probe) if windows else probe
            if p and r.fs.is_file(p):
                k = _exe_kind(r, p)
                if k and k.bits in (32, 64):
                    arch, bits, source = k.machine, k.bits, f"header of {p}"
                    break
    r.facts["arch"] = arch
    r.facts["arch_bits"] = bits
    r.facts["arch_source"] = source
    if bits == 32:
        r.add(ARCH_32BIT_OS, "os", arch, title=f"32-bit operating system ({arch})", arch=arch)

    cands = _exe_candidates(r, windows)
    cap = int(r.ctx.options.get("migration_max_heads", DEFAULT_MAX_HEADS))
    examined = cands[:cap]
    counts: dict[str, int] = {}
    exe32: list[str] = []
    exe16: list[str] = []
    unreadable = 0
    for path in examined:
        k = _exe_kind(r, path)
        if k is None:
            unreadable += 1
            continue
        label = f"{k.kind}{k.bits or ''}" + (f"-{k.note}" if k.note == "dotnet" else "")
        counts[label] = counts.get(label, 0) + 1
        # Only the OS's native format counts: a PE file on Linux is data (or Wine's).
        native = "pe" if windows else "elf"
        if k.bits == 16 and windows:
            exe16.append(path)
        elif k.bits == 32 and k.kind == native and bits == 64:
            exe32.append(path)
    r.facts["executables"] = {
        "candidates": len(cands),
        "examined": len(examined),
        "capped": len(cands) > len(examined),
        "cap": cap,
        "unreadable": unreadable,
        "headers_from": "read_head",
        "kinds": dict(sorted(counts.items())),
        "count_32bit": len(exe32),
        "sample_32bit": exe32[:SAMPLE],
        "count_16bit": len(exe16),
        "sample_16bit": exe16[:SAMPLE],
        "scope": (
            "*.exe/*.dll/*.com outside the Windows folder (PE machine)"
            if windows
            else "files with exec bits and *.so in bin/sbin/lib/libexec dirs and /opt (ELF class)"
        ),
    }
    if not r.ctx.manifest:
        r.facts["executables"]["note"] = "no manifest: executables not examined"
    capped = " (sample capped)" if len(cands) > len(examined) else ""
    if exe32:
        r.add(
            ARCH_32BIT_EXE,
            "executables",
            "32bit",
            title=f"{len(exe32)} 32-bit executables on a 64-bit system{capped}",
            count=len(exe32),
            sample=exe32[:SAMPLE],
            file=exe32[0],
            text=f"{len(exe32)} of {len(examined)} examined executables are 32-bit",
        )
    if exe16:
        r.add(
            ARCH_16BIT_EXE,
            "executables",
            "16bit",
            title=f"{len(exe16)} 16-bit DOS/Windows executables{capped}",
            count=len(exe16),
            sample=exe16[:SAMPLE],
            file=exe16[0],
            text=f"{len(exe16)} of {len(examined)} examined executables are 16-bit",
        )


# ---------------------------------------------------------------------------
# 2. Boot


def _disk_of(dev: str) -> str:
    m = re.match(r"^(/dev/(?:[a-z]+d[a-z]+|nvme\d+n\d+|mmcblk\d+))(?:p?\d+)?$", dev)
    return m.group(1) if m else dev


def _partition_facts(r: _Run) -> None:
    tables: dict[str, Any] = dict(r.ctx.image_facts.get("partition_tables") or {})
    r.facts["partition_tables"] = tables
    disk = _disk_of(r.ctx.root.device)
    if disk in tables:
        pt = tables[disk]
    else:
        kinds = {v for v in tables.values() if v}
        pt = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    r.facts["partition_table"] = {"msdos": "mbr"}.get(pt or "", pt)


def _boot_linux(r: _Run) -> None:
    fs = r.fs
    _partition_facts(r)
    loaders: list[dict[str, Any]] = []
    grub_cfgs = [p for p in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg") if fs.is_file(p)]
    grub_cfgs += fs.glob("/boot/efi/EFI/*/grub.cfg")
    grub_dirs = [p for p in ("/boot/grub", "/boot/grub2") if fs.is_dir(p)]
    bios_grub = [p for p in ("/boot/grub/i386-pc", "/boot/grub2/i386-pc") if fs.is_dir(p)]
    efi_grub = [
        p
        for p in ("/boot/grub/x86_64-efi", "/boot/grub2/x86_64-efi", "/boot/grub/arm64-efi")
        if fs.is_dir(p)
    ]
    if grub_cfgs or bios_grub or efi_grub:
        loaders.append({"name": "grub2", "config": grub_cfgs})
    legacy = [p for p in ("/boot/grub/menu.lst", "/boot/grub/grub.conf") if fs.is_file(p)]
    if legacy and not grub_cfgs:
        loaders.append({"name": "grub-legacy", "config": legacy})
    sdboot = [
        p
        for p in (
            "/boot/efi/loader/loader.conf",
            "/boot/loader/loader.conf",
            "/efi/loader/loader.conf",
        )
        if fs.is_file(p)
    ]
    if sdboot:
        loaders.append({"name": "systemd-boot", "config": sdboot})
    sysl = [
        p
        for p in (
            "/boot/extlinux/extlinux.conf",
            "/boot/extlinux.conf",
            "/boot/syslinux/syslinux.cfg",
            "/extlinux.conf",
        )
        if fs.is_file(p)
    ]
    if sysl:
        loaders.append({"name": "syslinux", "config": sysl})
    if fs.is_file("/etc/lilo.conf"):
        loaders.append({"name": "lilo", "config": ["/etc/lilo.conf"]})
    efi_files = (
        fs.glob("/boot/efi/EFI/*/*.efi")
        + fs.glob("/boot/efi/EFI/*/*.EFI")
        + fs.glob("/efi/EFI/*/*.efi")
        + fs.glob("/boot/EFI/*/*.efi")
    )
    pkgs = r.packages
    fstab_text = r.text("/etc/fstab") or ""
    esp_in_fstab = bool(re.search(r"^\s*\S+\s+/(boot/)?efi\s", fstab_text, re.MULTILINE))
    uefi_ev: list[str] = []
    bios_ev: list[str] = []
    if efi_files:
        uefi_ev.append(f"EFI binaries: {', '.join(efi_files[:5])}")
    if esp_in_fstab:
        uefi_ev.append("/etc/fstab mounts an EFI system partition")
    if efi_grub:
        uefi_ev.append(f"GRUB EFI modules: {efi_grub[0]}")
    if any(p.startswith(("grub-efi", "shim", "systemd-boot")) for p in pkgs):
        uefi_ev.append("EFI bootloader package installed")
    if sdboot:
        uefi_ev.append("systemd-boot")
    if bios_grub:
        bios_ev.append(f"GRUB BIOS modules: {bios_grub[0]}")
    if "grub-pc" in pkgs or "grub" in pkgs:
        bios_ev.append("grub-pc package installed")
    if sysl or legacy or fs.is_file("/etc/lilo.conf"):
        bios_ev.append("BIOS bootloader configuration")
    if fs.is_dir("/usr/lib/grub/i386-pc") and not bios_ev:
        bios_ev.append("/usr/lib/grub/i386-pc")
    fs_types = {f.get("type") for f in r.ctx.image_facts.get("filesystems") or []}
    # UEFI firmware boots only from an EFI system partition (FAT); an MBR disk
    # without any FAT filesystem can only be started by a BIOS.
    no_esp = not fs_types & {"vfat", "msdos", "fat"}
    if not uefi_ev and not bios_ev and r.facts.get("partition_table") == "mbr" and no_esp:
        bios_ev.append("MBR partition table and no EFI system partition")
    firmware = (
        "bios+uefi"
        if uefi_ev and bios_ev
        else "uefi"
        if uefi_ev
        else "bios"
        if bios_ev
        else "unknown"
    )
    r.facts["firmware"] = firmware
    r.facts["firmware_evidence"] = {"uefi": uefi_ev, "bios": bios_ev}
    r.facts["bootloader"] = loaders
    r.facts["efi_files"] = efi_files[:SAMPLE]
    if firmware == "uefi":
        secure = any(p.startswith("shim") for p in pkgs) or any(
            "shim" in f.lower() for f in efi_files
        )
        r.add(
            BOOT_UEFI,
            "firmware",
            "uefi",
            evidence=uefi_ev,
            secure_boot_shim=secure,
            text="; ".join(uefi_ev),
        )
    if not loaders and not efi_files:
        r.add(
            BOOT_NO_BOOTLOADER,
            "bootloader",
            "none",
            text="no GRUB, systemd-boot, syslinux or LILO files under /boot, /efi or /etc",
        )
    elif grub_dirs and not grub_cfgs and not legacy and not sdboot and not sysl:
        r.add(
            BOOT_NO_CONFIG,
            grub_dirs[0],
            "grub.cfg",
            file=f"{grub_dirs[0]}/grub.cfg",
            text=f"{grub_dirs[0]} exists but has no grub.cfg",
        )


def _boot_windows(r: _Run) -> None:
    fs = r.fs
    _partition_facts(r)
    sysroot = ci_path(fs, "/Windows") or ci_path(fs, "/WINNT") or "/Windows"
    r.facts["systemroot"] = sysroot
    bootmgfw = ci_path(fs, f"{sysroot}/Boot/EFI/bootmgfw.efi")
    pcat = ci_path(fs, f"{sysroot}/Boot/PCAT/bootmgr")
    bcd = [p for p in (ci_path(fs, "/Boot/BCD"), ci_path(fs, "/EFI/Microsoft/Boot/BCD")) if p]
    loaders: list[dict[str, Any]] = []
    if bootmgfw or pcat or ci_path(fs, "/bootmgr") or bcd:
        loaders.append(
            {
                "name": "windows-bootmgr",
                "config": bcd or ["BCD on the system partition (not part of this root)"],
                "files": [p for p in (bootmgfw, pcat, ci_path(fs, "/bootmgr")) if p],
            }
        )
    pt = r.facts.get("partition_table")
    # Windows boots UEFI only from GPT and BIOS only from MBR; bootmgfw.efi is copied into
    # every installation, so it is evidence of capability, not of use.
    firmware = "uefi" if pt == "gpt" else "bios" if pt == "mbr" else "unknown"
    r.facts["firmware"] = firmware
    r.facts["firmware_evidence"] = {"partition_table": pt, "bootmgfw_efi": bootmgfw}
    r.facts["bootloader"] = loaders
    if firmware == "uefi":
        r.add(
            BOOT_UEFI,
            "firmware",
            "uefi",
            text="GPT system disk: Windows boots with UEFI",
            file=bootmgfw or "",
        )
    if not loaders:
        r.add(
            BOOT_NO_BOOTLOADER,
            "bootloader",
            "none",
            text=f"no {sysroot}/Boot, bootmgr or BCD found",
        )


# ---------------------------------------------------------------------------
# 3. Drivers


def _module_names_from_list(text: str) -> set[str]:
    out: set[str] = set()
    for line in text.splitlines():
        path = line.split(":", 1)[0].strip()
        base = path.rsplit("/", 1)[-1]
        m = re.match(r"^(.+?)\.ko(?:\.\w+)?$", base)
        if m:
            out.add(m.group(1).replace("-", "_"))
    return out


def _kernel(r: _Run, ver: str, moddir: str | None) -> dict[str, Any]:
    fs = r.fs
    how: dict[str, str] = {d: "absent" for d in _VIRTIO_LINUX}
    sources: list[str] = []
    if moddir:
        builtin_text = r.text(f"{moddir}/modules.builtin", 4 * 1024 * 1024)
        if builtin_text is not None:
            sources.append("modules.builtin")
            builtin = _module_names_from_list(builtin_text)
            for d in _VIRTIO_LINUX:
                if d in builtin:
                    how[d] = "builtin"
        dep_text = r.text(f"{moddir}/modules.dep", 16 * 1024 * 1024)
        if dep_text is not None:
            sources.append("modules.dep")
            mods = _module_names_from_list(dep_text)
            for d in _VIRTIO_LINUX:
                if how[d] == "absent" and d in mods:
                    how[d] = "module"
        else:
            sources.append("module files")
            for d in _VIRTIO_LINUX:
                if how[d] == "absent" and fs.glob(f"{moddir}/{_MODULE_PATHS[d]}"):
                    how[d] = "module"
    cfg = r.text(f"/boot/config-{ver}", 4 * 1024 * 1024)
    if cfg is not None:
        sources.append(f"/boot/config-{ver}")
        for d, opt in _KCONFIG.items():
            m = re.search(rf"^{opt}=([ym])\s*$", cfg, re.MULTILINE)
            if m and m.group(1) == "y":
                how[d] = "builtin"
    kernel: dict[str, Any] = {
        "version": ver,
        "module_tree": moddir,
        "image": next(
            (
                p
                for p in (
                    f"/boot/vmlinuz-{ver}",
                    f"/boot/vmlinux-{ver}",
                    f"/boot/Image-{ver}",
                    f"/boot/kernel-{ver}",
                )
                if fs.exists(p)
            ),
            None,
        ),
        "virtio": {d: how[d] != "absent" for d in _VIRTIO_LINUX},
        "virtio_how": how,
        "sources": sources,
    }
    kernel["initramfs"] = _initramfs(r, ver)
    return kernel


def _initramfs(r: _Run, ver: str) -> dict[str, Any]:
    fs = r.fs
    path = next(
        (
            p
            for p in (
                f"/boot/initrd.img-{ver}",
                f"/boot/initramfs-{ver}.img",
                f"/boot/initrd-{ver}",
                f"/boot/initramfs-{ver}",
            )
            if fs.is_file(p)
        ),
        None,
    )
    info: dict[str, Any] = {"path": path, "read": False, "virtio": None}
    if path is None:
        return info
    st = fs.lstat(path)
    info["size"] = st.size if st else None
    if not r.ctx.options.get("migration_read_initramfs", True):
        info["note"] = "not read (migration_read_initramfs is off)"
        return info
    try:
        data = fs.read_bytes(path, INITRAMFS_LIMIT)
    except VmscanError as e:
        info["note"] = f"not read: {e}"
        return info
    scan = scan_initramfs(data)
    if not scan.complete:
        r.notes.add(f"{path}: initramfs not fully read ({scan.note or 'truncated'})")
    info["read"] = True
    info["complete"] = scan.complete
    info["compression"] = scan.compressions
    if scan.note:
        info["note"] = scan.note
    if scan.complete or scan.modules:
        info["virtio"] = {d: d in scan.modules for d in _VIRTIO_LINUX}
    info["modules"] = len(scan.modules)
    return info


def _drivers_linux(r: _Run) -> None:
    fs = r.fs
    trees: dict[str, str] = {}
    for base in ("/lib/modules", "/usr/lib/modules"):
        for ver in fs.listdir(base):
            if ver not in trees and fs.is_dir(f"{base}/{ver}"):
                trees[ver] = f"{base}/{ver}"
    versions = set(trees)
    for pattern, prefix in (
        ("/boot/vmlinuz-*", "/boot/vmlinuz-"),
        ("/boot/vmlinux-*", "/boot/vmlinux-"),
    ):
        for p in fs.glob(pattern):
            versions.add(p[len(prefix) :])
    kernels = [_kernel(r, v, trees.get(v)) for v in sorted(versions)]
    r.facts["kernels"] = kernels
    r.facts["drivers"] = {
        "checked": list(_VIRTIO_LINUX),
        "initramfs_method": "cpio listing of the initramfs (plain, gzip, xz, "
        "lzma, bzip2; zstd when python zstandard is installed)",
    }
    dracut_hostonly = False
    for p in ["/etc/dracut.conf", *fs.glob("/etc/dracut.conf.d/*.conf")]:
        t = r.text(p)
        if t and re.search(r"^\s*hostonly\s*=\s*\"?yes", t, re.MULTILINE):
            dracut_hostonly = True
    r.facts["drivers"]["dracut_hostonly"] = dracut_hostonly
    if not kernels:
        r.facts["kernels_note"] = "no kernel installed (no /lib/modules/*, no /boot/vmlinuz-*)"
        r.add(
            DRV_NO_KERNEL,
            "kernel",
            "none",
            text="no /lib/modules/<version> and no /boot/vmlinuz-* in this root",
        )
        return

    def storage(k: dict[str, Any]) -> bool:
        return bool(k["virtio"]["virtio_blk"] or k["virtio"]["virtio_scsi"])

    any_storage = any(storage(k) for k in kernels)
    any_net = any(k["virtio"]["virtio_net"] for k in kernels)
    for k in kernels:
        ver = k["version"]
        target = f"kernel {ver}"
        file = k["module_tree"] or k["image"] or ""
        if not storage(k):
            missing = "virtio_blk and virtio_scsi"
            why = "no module tree" if not k["module_tree"] else "not built in, no module"
            r.add(
                DRV_LINUX_VIRTIO_STORAGE,
                target,
                "storage",
                title=f"Kernel {ver} has no virtio storage driver ({missing})",
                severity="" if not any_storage else Severity.LOW,
                file=file,
                kernel=ver,
                missing=["virtio_blk", "virtio_scsi"],
                text=f"{missing}: {why}",
            )
        if not k["virtio"]["virtio_net"]:
            r.add(
                DRV_LINUX_VIRTIO_NET,
                target,
                "net",
                title=f"Kernel {ver} has no virtio network driver (virtio_net)",
                severity="" if not any_net else Severity.LOW,
                file=file,
                kernel=ver,
                missing=["virtio_net"],
                text="virtio_net absent",
            )
        how = k["virtio_how"]
        needs_initramfs = storage(k) and "builtin" not in (how["virtio_blk"], how["virtio_scsi"])
        ird = k["initramfs"]
        if not needs_initramfs:
            continue
        if ird["path"] is None and k["image"]:
            r.add(
                DRV_LINUX_INITRAMFS,
                target,
                "no-initramfs",
                title=f"Kernel {ver} has no initramfs to load its virtio storage modules",
                file=k["image"],
                kernel=ver,
                text="virtio_blk/virtio_scsi are modules and there is no initramfs",
            )
        elif (
            ird.get("virtio") is not None
            and ird.get("complete")
            and not (ird["virtio"]["virtio_blk"] or ird["virtio"]["virtio_scsi"])
        ):
            r.add(
                DRV_LINUX_INITRAMFS,
                target,
                "initramfs",
                title=f"initramfs of kernel {ver} lacks virtio_blk and virtio_scsi",
                file=ird["path"],
                kernel=ver,
                text=f"{ird['modules']} modules in the initramfs, no virtio storage"
                + (" (dracut hostonly=yes)" if dracut_hostonly else ""),
            )


def _drivers_windows(r: _Run) -> None:
    fs = r.fs
    sysroot = r.facts.get("systemroot") or ci_path(fs, "/Windows") or "/Windows"
    ddir = ci_path(fs, f"{sysroot}/System32/drivers")
    names = {n.lower(): n for n in fs.listdir(ddir)} if ddir else {}
    repo = ci_path(fs, f"{sysroot}/System32/DriverStore/FileRepository")
    staged_names = [n.lower() for n in fs.listdir(repo)] if repo else []
    services = _windows_services(r, sysroot)
    drivers: dict[str, Any] = {}
    for d in _VIRTIO_WINDOWS:
        fname = names.get(f"{d}.sys")
        svc = services.get(d) if services is not None else None
        drivers[d] = {
            "file": f"{ddir}/{fname}" if fname else None,
            "service": svc is not None if services is not None else None,
            "start": svc,
            "staged": any(n.startswith(f"{d}.inf_") for n in staged_names),
        }
    r.facts["drivers"] = drivers
    r.facts["drivers_source"] = {
        "files": ddir or "System32/drivers not found",
        "registry": "SYSTEM hive Services keys" if services is not None else "not read",
    }

    def present(d: str) -> bool:
        return bool(drivers[d]["file"] or drivers[d]["service"])

    def describe(d: str) -> str:
        st = drivers[d]
        if st["staged"]:
            return f"{d}: not installed (only staged in the DriverStore)"
        return f"{d}: no {d}.sys" + (", no service key" if st["service"] is False else "")

    file = f"{ddir or sysroot + '/System32/drivers'}"
    if not present("viostor") and not present("vioscsi"):
        r.add(
            DRV_WIN_VIRTIO_STORAGE,
            "viostor",
            "storage",
            title="Windows virtio storage driver missing: viostor (virtio-blk) and "
            "vioscsi (virtio-scsi)",
            file=file,
            missing=["viostor", "vioscsi"],
            text="; ".join(describe(d) for d in ("viostor", "vioscsi")),
        )
    else:
        # Installed but not loaded at boot: the disk would still be unreachable.
        boot = [
            d for d in ("viostor", "vioscsi") if present(d) and drivers[d]["start"] in (0, None)
        ]
        if services is not None and not boot:
            r.add(
                DRV_WIN_VIRTIO_STORAGE,
                "viostor",
                "not-boot-start",
                severity=Severity.MEDIUM,
                title="Windows virtio storage driver present but not a boot-start service",
                file=file,
                missing=[],
                text="; ".join(
                    f"{d}: Start={drivers[d]['start']}"
                    for d in ("viostor", "vioscsi")
                    if present(d)
                ),
            )
    if not present("netkvm"):
        r.add(
            DRV_WIN_VIRTIO_NET,
            "netkvm",
            "net",
            title="Windows virtio network driver missing: netkvm",
            file=file,
            missing=["netkvm"],
            text=describe("netkvm"),
        )


def _open_hive(r: _Run, sysroot: str, name: str) -> Any | None:
    path = ci_path(r.fs, f"{sysroot}/System32/config/{name}")
    if path is None:
        r.facts.setdefault("registry", {})[name] = "absent"
        return None
    try:
        hive = r.fs.open_hive(path)
    except ImportError:
        r.notes.add(f"{name} hive not read: no hive reader in this build")
        return None
    except Exception as e:  # hostile or damaged hive
        r.notes.add(f"{name} hive not read: {e}")
        return None
    r.facts.setdefault("registry", {})[name] = path
    return hive


def _control_set(hive: Any) -> str:
    sel = _hive_path(hive, ["Select"])
    cur = _reg_dword(_hive_values(hive, sel).get("current")) if sel is not None else None
    return f"ControlSet{cur or 1:03d}"


def _windows_services(r: _Run, sysroot: str) -> dict[str, int | None] | None:
    """Start value of each virtio service key in the SYSTEM hive; None when unreadable."""
    hive = _open_hive(r, sysroot, "SYSTEM")
    if hive is None:
        return None
    try:
        try:
            cs = _control_set(hive)
            svcs = _hive_path(hive, [cs, "Services"])
            if svcs is None:
                r.notes.add(f"SYSTEM hive has no {cs}\\Services")
                return None
            out: dict[str, int | None] = {}
            for d in _VIRTIO_WINDOWS:
                node = hive.child(svcs, d)
                if node is not None:
                    out[d] = _reg_dword(_hive_values(hive, node).get("start"))
        except VmscanError as e:
            r.notes.add(f"SYSTEM hive: services not read: {e}")
            return None
        try:
            _system_side_facts(r, hive, cs)
        except VmscanError as e:
            r.notes.add(f"SYSTEM hive: {e}")
        return out
    finally:
        # Closing a broken hive must not hide what was read.
        with contextlib.suppress(Exception):
            hive.close()


def _system_side_facts(r: _Run, hive: Any, cs: str) -> None:
    """Pending file renames and static IPv4 addresses, from the same SYSTEM hive."""
    sm = _hive_path(hive, [cs, "Control", "Session Manager"])
    if sm is not None:
        pfro = _reg_multi_sz(_hive_values(hive, sm).get("pendingfilerenameoperations"))
        r.facts["pending_file_renames"] = len(pfro)
    ifs = _hive_path(hive, [cs, "Services", "Tcpip", "Parameters", "Interfaces"])
    statics: list[dict[str, Any]] = []
    if ifs is not None:
        for name, node in hive.children(ifs)[:256]:
            vals = _hive_values(hive, node)
            if _reg_dword(vals.get("enabledhcp")) != 0:
                continue
            for addr in _reg_multi_sz(vals.get("ipaddress")):
                if addr != "0.0.0.0":
                    where = f"SYSTEM\\{cs}\\Services\\Tcpip\\Parameters\\Interfaces\\{name}"
                    statics.append({"file": where, "interface": name, "address": addr})
    r.facts["static_ip"] = statics


# ---------------------------------------------------------------------------
# 4. Hypervisor tools


def _tool_evidence(r: _Run, tool: _Tool, windows: bool) -> list[str]:
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


def _tools(r: _Run) -> None:
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


# ---------------------------------------------------------------------------
# 5. Network identity


def _network_linux(r: _Run) -> None:
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


def _network_windows(r: _Run) -> None:
    r.facts.setdefault("mac_bindings", [])
    r.facts.setdefault("static_ip", [])


# ---------------------------------------------------------------------------
# 6. Storage identity


def _known_devices(r: _Run) -> tuple[set[str], set[str], set[str], bool]:
    """(device names, UUIDs, labels, facts available) of the image set."""
    facts = r.ctx.image_facts
    devs: set[str] = set(facts.get("disks") or [])
    uuids: set[str] = set()
    labels: set[str] = set()
    fss = list(facts.get("filesystems") or [])
    if not fss and r.ctx.image is not None:
        fss = [
            {"device": f.device, "uuid": f.uuid, "label": f.label} for f in r.ctx.image.filesystems
        ]
    for f in fss:
        if f.get("device"):
            devs.add(str(f["device"]))
        if f.get("uuid"):
            uuids.add(str(f["uuid"]).lower())
        if f.get("label"):
            labels.add(str(f["label"]))
    for lv in facts.get("lvs") or []:
        devs.add(str(lv))
    available = bool(devs or uuids)
    return devs, uuids, labels, available


def _present(spec: str, kind: str, devs: set[str], uuids: set[str], labels: set[str]) -> bool:
    s = spec.strip('"')
    val = s.split("=", 1)[1].strip('"') if "=" in s else s.rsplit("/", 1)[-1]
    if kind == "uuid":
        return val.lower() in uuids
    if kind == "label":
        return val in labels
    if kind == "kernel_name":
        # The appliance names every disk /dev/sdX whatever the guest called it.
        m = re.match(r"^/dev/(?:sd|hd|vd|xvd)([a-z]+)(\d*)$", s)
        if m:
            return f"/dev/sd{m.group(1)}{m.group(2)}" in devs
        return True  # nvme/mmcblk/cciss: no reliable mapping to the appliance's names
    if kind == "lvm":
        lv = mapper_to_lv(s) or s
        return lv in devs or s in devs
    return True  # partuuid, hardware paths, md...: not judged


_KIND_WORDS = {"kernel_name": "kernel device name", "hardware_path": "hardware path"}


def _storage(r: _Run) -> None:
    devs, uuids, labels, available = _known_devices(r)
    r.facts["image_devices_known"] = available
    mounts: list[dict[str, Any]] = []
    fstab_text = r.text("/etc/fstab")
    entries: list[tuple[str, int, str, str, str, bool, str]] = []
    if fstab_text is None:
        r.facts["fstab"] = "absent"
    else:
        r.facts["fstab"] = "/etc/fstab"
        for e in parse_fstab(fstab_text, "/etc/fstab", r.notes):
            if "bind" in e.options or e.fstype in ("proc", "sysfs", "tmpfs", "devpts", "none"):
                continue
            entries.append(
                ("/etc/fstab", e.line, e.text, e.spec, e.mountpoint, e.optional, e.fstype)
            )
    crypttab_text = r.text("/etc/crypttab")
    if crypttab_text is not None:
        for c in parse_crypttab(crypttab_text, "/etc/crypttab", r.notes):
            optional = "nofail" in c.options or "noauto" in c.options
            entries.append(
                (
                    "/etc/crypttab",
                    c.line,
                    c.text,
                    c.device,
                    f"/dev/mapper/{c.name}",
                    optional,
                    "crypt",
                )
            )
    for file, line, text, spec, mp, optional, fstype in entries:
        kind = classify_device_spec(spec)
        what = mp if mp.startswith("/") else (fstype or mp)
        common: dict[str, Any] = {
            "file": file,
            "line": line,
            "text": text,
            "device": spec,
            "mountpoint": mp,
        }
        if kind in ("kernel_name", "hardware_path"):
            mounts.append({**common, "kind": kind})
            r.add(
                STOR_DEVICE_NAME,
                f"{file}:{mp}",
                f"{spec}|{mp}",
                title=f"{what} is mounted by {_KIND_WORDS[kind]} {spec}",
                kind=kind,
                **common,
            )
        if (
            available
            and kind in ("kernel_name", "uuid", "label", "lvm")
            and not _present(spec, kind, devs, uuids, labels)
        ):
            r.add(
                STOR_ABSENT_DEVICE,
                f"{file}:{mp}",
                f"absent|{spec}|{mp}",
                title=f"{what}: {spec} is not in the image",
                severity=Severity.LOW if optional else "",
                optional=optional,
                **common,
            )
    r.facts["device_name_mounts"] = mounts
    if not available:
        r.facts["absent_devices_note"] = "image devices unknown: absent entries not judged"


# ---------------------------------------------------------------------------
# 7. Capacity


def _capacity(r: _Run) -> None:
    mps = r.ctx.root.mountpoints or {"/": r.ctx.root.device}
    threshold = float(r.ctx.options.get("min_free_percent", 10))
    # What the scanner could not mount must not be measured: statvfs of the empty
    # directory would report the parent filesystem.
    unmounted: set[str] = set()
    if r.ctx.image is not None:
        mounted = {(f.mountpoint, f.device) for f in r.ctx.image.filesystems if f.mounted}
        unmounted = {mp for mp, dev in mps.items() if (mp, dev) not in mounted}
    out: list[dict[str, Any]] = []
    for mp in sorted(mps):
        st = None if mp in unmounted else r.fs.statvfs(mp)
        if not st or not st.get("blocks"):
            out.append(
                {
                    "mountpoint": mp,
                    "device": mps[mp],
                    "size": None,
                    "used": None,
                    "free": None,
                    "note": "not mounted" if mp in unmounted else "statvfs failed",
                }
            )
            continue
        bs = st["bsize"]
        size = st["blocks"] * bs
        used = (st["blocks"] - st["bfree"]) * bs
        free = st["bavail"] * bs
        pct = round(100.0 * st["bavail"] / st["blocks"], 1)
        out.append(
            {
                "mountpoint": mp,
                "device": mps[mp],
                "size": size,
                "used": used,
                "free": free,
                "free_percent": pct,
            }
        )
        if pct < threshold:
            r.add(
                CAP_LOW_FREE,
                mp,
                "low-free",
                title=f"{mp} has {pct}% free (threshold {threshold:g}%)",
                file=mp,
                mountpoint=mp,
                device=mps[mp],
                size=size,
                used=used,
                free=free,
                free_percent=pct,
                threshold_percent=threshold,
                text=f"{free} of {size} bytes free",
            )
    r.facts["filesystems"] = out
    r.facts["min_free_percent"] = threshold


# ---------------------------------------------------------------------------
# 8. Lifecycle


@functools.lru_cache(maxsize=4)
def _eol_table(path: str | None) -> list[Any]:
    from vmscan import eol

    return eol.load_table(Path(path) if path else None)


def _lifecycle(r: _Run) -> None:
    from vmscan import eol

    try:
        table = _eol_table(r.ctx.options.get("eol_table"))
    except VmscanError as err:
        r.facts["eol"] = {"evaluated": False, "reason": str(err)}
        r.notes.add(f"end-of-life table not used: {err}")
        return
    today = r.ctx.options.get("today")
    st = eol.status(r.ctx.root.os, table, today if isinstance(today, dt.date) else None)
    if st is None:
        r.facts["eol"] = {"evaluated": True, "known": False}
        return
    e = st.entry
    r.facts["eol"] = {
        "evaluated": True,
        "known": True,
        "name": e.name,
        "state": st.state,
        "eol": e.eol.isoformat(),
        "extended": e.extended.isoformat() if e.extended else None,
    }
    if st.state == "eol":
        r.add(
            LIFE_EOL,
            "os",
            f"eol|{e.name}",
            title=f"{e.name} is past end of life",
            text=f"end of life {e.eol.isoformat()}"
            + (f", extended support ended {e.extended.isoformat()}" if e.extended else ""),
            eol=e.eol.isoformat(),
            days_past_eol=st.days_past_eol,
        )
    elif st.state == "extended":
        r.add(
            LIFE_EOL,
            "os",
            f"extended|{e.name}",
            severity=Severity.LOW,
            title=f"{e.name} is past standard support (extended support only)",
            text=f"standard support ended {e.eol.isoformat()}; extended support until "
            f"{e.extended.isoformat() if e.extended else '?'}",
            eol=e.eol.isoformat(),
            days_past_eol=st.days_past_eol,
        )


def _windows_state(r: _Run) -> None:
    fs = r.fs
    sysroot = r.facts.get("systemroot") or "/Windows"
    hib = ci_path(fs, "/hiberfil.sys")
    state: dict[str, Any] = {"hiberfil": hib}
    if hib:
        try:
            head = fs.read_head(hib, 8)
            state["hibernation"] = hiberfil_state(head)
        except VmscanError as e:
            state["hibernation"] = f"unreadable: {e}"
        if state["hibernation"] == "hibernated":
            r.add(
                WIN_HIBERNATED,
                hib,
                "hibernated",
                file=hib,
                text="hiberfil.sys starts with a hibernation signature (hibr)",
            )
        else:
            r.add(
                WIN_HIBERFIL,
                hib,
                "hiberfil",
                file=hib,
                text=f"hiberfil.sys present ({state['hibernation']})",
            )
    # NTFS dirty flag: raw volume reads, only possible with the appliance handle.
    dirty: dict[str, Any] = {}
    g = r.ctx.handle
    ntfs = [
        f["device"] for f in r.ctx.image_facts.get("filesystems") or [] if f.get("type") == "ntfs"
    ] or [r.ctx.root.device]
    if g is None:
        state["ntfs_dirty"] = "not checked (no appliance handle)"
    else:
        for dev in ntfs:

            def read(off: int, n: int, dev: str = dev) -> bytes:
                data: bytes = g.pread_device(dev, n, off)
                return data

            try:
                flags = ntfs_volume_flags(read)
            except GuestError as e:
                dirty[dev] = f"unreadable: {e}"
                continue
            dirty[dev] = None if flags is None else bool(flags & 0x0001)
            if flags is not None and flags & 0x0001:
                r.add(
                    WIN_NTFS_DIRTY,
                    dev,
                    "dirty",
                    file=dev,
                    device=dev,
                    text=f"$Volume flags 0x{flags:04x} (dirty bit set)",
                )
        state["ntfs_dirty"] = dirty
    # Pending reboot markers: files, then registry.
    markers: list[str] = []
    pending_xml = ci_path(fs, f"{sysroot}/WinSxS/pending.xml")
    if pending_xml:
        markers.append(pending_xml)
    if r.facts.get("pending_file_renames"):
        markers.append(
            "SYSTEM: Session Manager\\PendingFileRenameOperations "
            f"({r.facts['pending_file_renames']} entries)"
        )
    sw = _open_hive(r, sysroot, "SOFTWARE")
    if sw is not None:
        try:
            cv = ["Microsoft", "Windows", "CurrentVersion"]
            for keys in (
                [*cv, "Component Based Servicing", "RebootPending"],
                [*cv, "WindowsUpdate", "Auto Update", "RebootRequired"],
            ):
                if _hive_path(sw, keys) is not None:
                    markers.append("SOFTWARE: " + "\\".join(keys))
        except VmscanError as e:
            r.notes.add(f"SOFTWARE hive: {e}")
        finally:
            with contextlib.suppress(Exception):
                sw.close()
    state["pending_reboot"] = markers
    r.facts["windows_state"] = state
    if markers:
        r.add(
            WIN_PENDING_REBOOT,
            "os",
            "pending-reboot",
            file=markers[0].split(" (")[0],
            markers=markers,
            text="; ".join(markers),
        )


#: Rules each step decides: when a step fails, its rules are reported as not evaluated.
_STEP_RULES: dict[str, tuple[Rule, ...]] = {
    "_arch": (ARCH_32BIT_OS, ARCH_32BIT_EXE, ARCH_16BIT_EXE),
    "_boot_linux": (BOOT_UEFI, BOOT_NO_BOOTLOADER, BOOT_NO_CONFIG),
    "_boot_windows": (BOOT_UEFI, BOOT_NO_BOOTLOADER),
    "_drivers_linux": (
        DRV_NO_KERNEL,
        DRV_LINUX_VIRTIO_STORAGE,
        DRV_LINUX_INITRAMFS,
        DRV_LINUX_VIRTIO_NET,
    ),
    "_drivers_windows": (DRV_WIN_VIRTIO_STORAGE, DRV_WIN_VIRTIO_NET),
    "_tools": (
        TOOLS_VMWARE,
        TOOLS_HYPERV,
        TOOLS_VIRTUALBOX,
        TOOLS_XEN,
        TOOLS_QEMU_GA_MISSING,
        TOOLS_CLOUD_INIT,
    ),
    "_network_linux": (NET_MAC_BINDING,),
    "_storage": (STOR_DEVICE_NAME, STOR_ABSENT_DEVICE),
    "_capacity": (CAP_LOW_FREE,),
    "_lifecycle": (LIFE_EOL,),
    "_windows_state": (WIN_HIBERNATED, WIN_HIBERFIL, WIN_NTFS_DIRTY, WIN_PENDING_REBOOT),
}
