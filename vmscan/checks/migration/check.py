"""The migration check itself: which steps run for which OS, and which rules each step decides."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from vmscan.checks.migration.arch import arch, exe_candidate
from vmscan.checks.migration.binaries import HEAD_SIZE
from vmscan.checks.migration.boot import boot_linux, boot_windows
from vmscan.checks.migration.capacity import capacity
from vmscan.checks.migration.common import INITRAMFS_LIMIT, Run
from vmscan.checks.migration.drivers import drivers_linux, drivers_windows
from vmscan.checks.migration.lifecycle import lifecycle, windows_state
from vmscan.checks.migration.network import network_linux, network_windows
from vmscan.checks.migration.rules import (
    ALL_RULES,
    ARCH_16BIT_EXE,
    ARCH_32BIT_EXE,
    ARCH_32BIT_OS,
    BOOT_NO_BOOTLOADER,
    BOOT_NO_CONFIG,
    BOOT_UEFI,
    CAP_LOW_FREE,
    DATA_RULES,
    DRV_LINUX_INITRAMFS,
    DRV_LINUX_VIRTIO_NET,
    DRV_LINUX_VIRTIO_STORAGE,
    DRV_NO_KERNEL,
    DRV_WIN_VIRTIO_NET,
    DRV_WIN_VIRTIO_STORAGE,
    LIFE_EOL,
    LINUX_RULES,
    NET_MAC_BINDING,
    RULES_BY_ID,
    STOR_ABSENT_DEVICE,
    STOR_DEVICE_NAME,
    TOOLS_CLOUD_INIT,
    TOOLS_HYPERV,
    TOOLS_QEMU_GA_MISSING,
    TOOLS_VIRTUALBOX,
    TOOLS_VMWARE,
    TOOLS_XEN,
    WIN_HIBERFIL,
    WIN_HIBERNATED,
    WIN_NTFS_DIRTY,
    WIN_PENDING_REBOOT,
    WINDOWS_RULES,
    Rule,
    verdict_for,
)
from vmscan.checks.migration.storage import storage
from vmscan.checks.migration.tools import tools
from vmscan.errors import VmscanError
from vmscan.guestfs_view import GuestFS
from vmscan.model import Finding
from vmscan.plugins import Check, Requirements, ScanContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One area of the audit: the function that gathers its facts and the rules it decides.

    When the step fails, its rules are reported as not evaluated (never as passed).
    """

    name: str
    gather: Callable[[Run], None]
    rules: tuple[Rule, ...]


ARCH = Step("arch", arch, (ARCH_32BIT_OS, ARCH_32BIT_EXE, ARCH_16BIT_EXE))
BOOT_LINUX = Step("boot_linux", boot_linux, (BOOT_UEFI, BOOT_NO_BOOTLOADER, BOOT_NO_CONFIG))
BOOT_WINDOWS = Step("boot_windows", boot_windows, (BOOT_UEFI, BOOT_NO_BOOTLOADER))
DRIVERS_LINUX = Step(
    "drivers_linux",
    drivers_linux,
    (DRV_NO_KERNEL, DRV_LINUX_VIRTIO_STORAGE, DRV_LINUX_INITRAMFS, DRV_LINUX_VIRTIO_NET),
)
DRIVERS_WINDOWS = Step(
    "drivers_windows", drivers_windows, (DRV_WIN_VIRTIO_STORAGE, DRV_WIN_VIRTIO_NET)
)
TOOLS = Step(
    "tools",
    tools,
    (
        TOOLS_VMWARE,
        TOOLS_HYPERV,
        TOOLS_VIRTUALBOX,
        TOOLS_XEN,
        TOOLS_QEMU_GA_MISSING,
        TOOLS_CLOUD_INIT,
    ),
)
NETWORK_LINUX = Step("network_linux", network_linux, (NET_MAC_BINDING,))
NETWORK_WINDOWS = Step("network_windows", network_windows, ())
STORAGE = Step("storage", storage, (STOR_DEVICE_NAME, STOR_ABSENT_DEVICE))
CAPACITY = Step("capacity", capacity, (CAP_LOW_FREE,))
LIFECYCLE = Step("lifecycle", lifecycle, (LIFE_EOL,))
WINDOWS_STATE = Step(
    "windows_state",
    windows_state,
    (WIN_HIBERNATED, WIN_HIBERFIL, WIN_NTFS_DIRTY, WIN_PENDING_REBOOT),
)

#: Per kind of root: its rule set and its steps, in the order they run.
PLANS: dict[str, tuple[tuple[Rule, ...], tuple[Step, ...]]] = {
    "windows": (
        WINDOWS_RULES,
        (
            ARCH,
            BOOT_WINDOWS,
            DRIVERS_WINDOWS,
            TOOLS,
            NETWORK_WINDOWS,
            CAPACITY,
            LIFECYCLE,
            WINDOWS_STATE,
        ),
    ),
    "linux": (
        LINUX_RULES,
        (ARCH, BOOT_LINUX, DRIVERS_LINUX, TOOLS, NETWORK_LINUX, STORAGE, CAPACITY, LIFECYCLE),
    ),
    "data": (DATA_RULES, (CAPACITY,)),
}


#: What the Linux steps read with ``Run.text`` (fnmatch: ``*`` also crosses "/").
_CONFIG_GLOBS = (
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/udev/rules.d/*.rules",
    "/etc/sysconfig/network-scripts/ifcfg-*",
    "/etc/sysconfig/network/ifcfg-*",
    "/etc/netplan/*.yaml",
    "/etc/netplan/*.yml",
    "/etc/NetworkManager/system-connections/*",
    "/etc/systemd/network/*.link",
    "/etc/systemd/network/*.network",
    "/etc/systemd/network/*.netdev",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d/*",
    "/etc/dracut.conf",
    "/etc/dracut.conf.d/*.conf",
    "/lib/modules/*/modules.builtin",
    "/lib/modules/*/modules.dep",
    "/usr/lib/modules/*/modules.builtin",
    "/usr/lib/modules/*/modules.dep",
    "/boot/config-*",
)
_INITRAMFS_GLOBS = ("/boot/initrd.img-*", "/boot/initramfs-*", "/boot/initrd-*")


class MigrationCheck(Check):
    """Pre-migration audit of one root (see :data:`ALL_RULES`)."""

    NAME = "migration"
    VERSION = "1"

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """Its configuration files and kernel module lists (whole, up to the largest read
        limit: the reads' own limits still apply; kept by content, so a rescan is served
        from the cache database); initramfs images and the heads of
        executables only when they pass in the stream anyway (a tar_out carries whole
        files: a head alone would cost the whole file)."""
        windows = ctx.root.os.type == "windows"
        return (
            Requirements(globs=_CONFIG_GLOBS, max_bytes=16 * 1024 * 1024, whole=True, persist=True),
            Requirements(
                globs=_INITRAMFS_GLOBS, max_bytes=INITRAMFS_LIMIT, whole=True, if_streamed=True
            ),
            Requirements(
                predicate=lambda e: exe_candidate(e, windows),
                max_bytes=HEAD_SIZE,
                if_streamed=True,
            ),
        )

    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        r = Run(fs, ctx)
        os_type = ctx.root.os.type
        if os_type == "windows":
            kind = "windows"
        elif os_type in ("linux", "hurd") or fs.is_dir("/etc"):
            kind = "linux"
        else:
            kind = "data"
        rules, steps = PLANS[kind]
        r.facts["os_kind"] = kind
        failed: dict[str, str] = {}
        for step in steps:
            try:
                step.gather(r)
                continue
            except VmscanError as e:  # one failed area never hides the others
                msg = f"{step.name}: {e}"
            except Exception as e:  # hostile data: parsers may hit the unexpected
                log.debug("migration step %s failed", step.name, exc_info=True)
                msg = f"{step.name}: {type(e).__name__}: {e}"
            r.notes.add(msg)
            # Not evaluated is not passed: the report (and JUnit) show these as errors.
            for rule in step.rules:
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
