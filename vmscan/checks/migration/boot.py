"""Boot: firmware (BIOS/UEFI) from the partition table, the boot loader and its configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmscan.checks.migration.common import SAMPLE, Run, ci_path
from vmscan.checks.migration.rules import BOOT_NO_BOOTLOADER, BOOT_NO_CONFIG, BOOT_UEFI
from vmscan.guestfs_view import GuestFS


def _disk_of(dev: str) -> str:
    m = re.match(r"^(/dev/(?:[a-z]+d[a-z]+|nvme\d+n\d+|mmcblk\d+))(?:p?\d+)?$", dev)
    return m.group(1) if m else dev


def _partition_facts(r: Run) -> None:
    tables: dict[str, Any] = dict(r.ctx.image_facts.get("partition_tables") or {})
    r.facts["partition_tables"] = tables
    disk = _disk_of(r.ctx.root.device)
    if disk in tables:
        pt = tables[disk]
    else:
        kinds = {v for v in tables.values() if v}
        pt = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    r.facts["partition_table"] = {"msdos": "mbr"}.get(pt or "", pt)


@dataclass(frozen=True)
class LoaderProbe:
    """A Linux boot loader, known by its configuration files (globs allowed)."""

    name: str
    configs: tuple[str, ...]
    #: Not reported when this other loader's configuration is there (GRUB 2 keeps the
    #: legacy menu.lst of an upgraded system around).
    superseded_by: str = ""


#: Boot loaders vmscan recognises, in report order.
LINUX_LOADERS: tuple[LoaderProbe, ...] = (
    LoaderProbe(
        "grub2", ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/efi/EFI/*/grub.cfg")
    ),
    LoaderProbe("grub-legacy", ("/boot/grub/menu.lst", "/boot/grub/grub.conf"), "grub2"),
    LoaderProbe(
        "systemd-boot",
        ("/boot/efi/loader/loader.conf", "/boot/loader/loader.conf", "/efi/loader/loader.conf"),
    ),
    LoaderProbe(
        "syslinux",
        (
            "/boot/extlinux/extlinux.conf",
            "/boot/extlinux.conf",
            "/boot/syslinux/syslinux.cfg",
            "/extlinux.conf",
        ),
    ),
    LoaderProbe("lilo", ("/etc/lilo.conf",)),
)
_GRUB_BIOS_DIRS = ("/boot/grub/i386-pc", "/boot/grub2/i386-pc")
_GRUB_EFI_DIRS = ("/boot/grub/x86_64-efi", "/boot/grub2/x86_64-efi", "/boot/grub/arm64-efi")


def _configs_of(fs: GuestFS, probe: LoaderProbe) -> list[str]:
    """The probe's configuration files present in the guest (fixed names, then globs)."""
    fixed = [p for p in probe.configs if "*" not in p and fs.is_file(p)]
    globbed = [m for p in probe.configs if "*" in p for m in fs.glob(p)]
    return fixed + globbed


def boot_linux(r: Run) -> None:
    fs = r.fs
    _partition_facts(r)
    grub_dirs = [p for p in ("/boot/grub", "/boot/grub2") if fs.is_dir(p)]
    bios_grub = [p for p in _GRUB_BIOS_DIRS if fs.is_dir(p)]
    efi_grub = [p for p in _GRUB_EFI_DIRS if fs.is_dir(p)]
    configs = {probe.name: _configs_of(fs, probe) for probe in LINUX_LOADERS}
    grub_cfgs, legacy = configs["grub2"], configs["grub-legacy"]
    sdboot, sysl = configs["systemd-boot"], configs["syslinux"]
    loaders: list[dict[str, Any]] = []
    for probe in LINUX_LOADERS:
        found = configs[probe.name]
        if probe.name == "grub2" and (bios_grub or efi_grub):
            pass  # GRUB's platform modules alone show it is installed
        elif not found or (probe.superseded_by and configs[probe.superseded_by]):
            continue
        loaders.append({"name": probe.name, "config": found})
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
    if sysl or legacy or configs["lilo"]:
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


def boot_windows(r: Run) -> None:
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
