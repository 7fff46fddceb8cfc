"""Migration rules: one :class:`Rule` per thing that can break, the per-OS rule sets, the
verdict.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vmscan.model import Finding, Severity


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
    top = max((f.severity.rank for f in findings), default=0)
    if top >= Severity.HIGH.rank:
        return "blocked"
    if top >= Severity.LOW.rank:
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
