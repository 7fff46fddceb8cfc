"""Migration check over guest trees in host folders (HostDirFS): fast, no appliance."""

from __future__ import annotations

import datetime as dt
import gzip
import struct
from pathlib import Path
from typing import Any

import pytest
from test_migration_trees import (
    BOOT_UUID,
    DEBIAN_FACTS,
    KERNEL,
    MAC,
    GuestDir,
    context,
    debian_os,
    debian_tree,
    dos_mz,
    elf,
    pe,
    windows_os,
    windows_tree,
    write,
)

from vmscan.checks.migration import (
    ALL_RULES,
    LINUX_RULES,
    RULES_BY_ID,
    WINDOWS_RULES,
    MigrationCheck,
    Rule,
    verdict_for,
)
from vmscan.model import Finding, OSInfo, Package


def run(root: Path, os_info: OSInfo, **kw: Any) -> tuple[list[Finding], dict[str, Any], Any]:
    ctx = context(root, os_info, **kw)
    findings = MigrationCheck().run(GuestDir(root), ctx)
    return findings, ctx.root.sections["migration"], ctx


def by_rule(findings: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule_id]


# ---------------------------------------------------------------------------
# Rules


def test_rules_are_declared_once_with_remediation() -> None:
    ids = [r.id for r in ALL_RULES]
    assert len(ids) == len(set(ids))
    for r in ALL_RULES:
        assert isinstance(r, Rule) and r.id.startswith("MIG-") and r.remediation and r.title
    assert set(LINUX_RULES) <= set(ALL_RULES) and set(WINDOWS_RULES) <= set(ALL_RULES)
    assert RULES_BY_ID["MIG-ARCH-32BIT-OS"].severity == "high"


def test_verdict_from_highest_severity() -> None:
    def f(sev: str) -> Finding:
        return Finding("migration", "X", sev, "t")

    assert verdict_for([]) == "ready"
    assert verdict_for([f("info")]) == "ready"
    assert verdict_for([f("info"), f("low")]) == "needs_work"
    assert verdict_for([f("medium"), f("high")]) == "blocked"
    assert verdict_for([f("critical")]) == "blocked"


# ---------------------------------------------------------------------------
# Debian on LVM: the case the issue names


@pytest.fixture()
def debian(tmp_path: Path) -> tuple[list[Finding], dict[str, Any], Any]:
    debian_tree(tmp_path)
    return run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)


def test_debian_fstab_device_names_with_file_and_line(debian: Any) -> None:
    findings, section, _ = debian
    names = by_rule(findings, "MIG-STOR-DEVICE-NAME")
    got = {(f.details["device"], f.details["file"], f.details["line"]) for f in names}
    assert got == {("/dev/sda2", "/etc/fstab", 4), ("/dev/sdb1", "/etc/fstab", 6)}
    for f in names:
        assert f.details["text"].startswith(f.details["device"])
        assert f.details["remediation"]
        assert f.check == "migration" and f.severity == "medium" and f.fingerprint
    # LVM names (both spellings), UUIDs and pseudo filesystems are fine.
    assert not [f for f in findings if "vg0" in f.details.get("device", "")]
    assert not [f for f in findings if BOOT_UUID in f.details.get("device", "")]
    mounts = section["facts"]["device_name_mounts"]
    assert {m["device"] for m in mounts} == {"/dev/sda2", "/dev/sdb1"}


def test_debian_absent_device(debian: Any) -> None:
    findings, _, _ = debian
    absent = by_rule(findings, "MIG-STOR-ABSENT-DEVICE")
    # /dev/sdb1 is on a disk that is not in the image; sda2, the LVs and the UUID are.
    assert [(f.details["device"], f.details["line"]) for f in absent] == [("/dev/sdb1", 6)]


def test_debian_mac_binding(debian: Any) -> None:
    findings, section, _ = debian
    macs = by_rule(findings, "MIG-NET-MAC-BINDING")
    assert len(macs) == 1
    f = macs[0]
    assert f.details["file"] == "/etc/udev/rules.d/70-persistent-net.rules"
    assert f.details["line"] == 5 and f.details["mac"] == MAC
    assert f.details["interface"] == "eth0"
    assert MAC in f.title
    facts = section["facts"]
    assert facts["mac_bindings"][0]["mac"] == MAC
    # Static addresses are listed, not judged.
    assert [s["address"] for s in facts["static_ip"]] == ["192.0.2.10/24"]


def test_debian_boot_arch_kernel_capacity(debian: Any) -> None:
    findings, section, _ = debian
    facts = section["facts"]
    assert facts["partition_table"] == "mbr"
    assert facts["firmware"] == "bios"
    assert facts["bootloader"][0]["name"] == "grub2"
    assert facts["bootloader"][0]["config"] == ["/boot/grub/grub.cfg"]
    assert facts["arch"] == "x86_64" and facts["arch_bits"] == 64
    assert not by_rule(findings, "MIG-ARCH-32BIT-OS")
    assert not by_rule(findings, "MIG-BOOT-UEFI")
    [k] = facts["kernels"]
    assert k["version"] == KERNEL
    assert k["virtio"] == {
        "virtio_blk": True,
        "virtio_scsi": True,
        "virtio_net": True,
        "virtio_pci": True,
    }
    assert k["virtio_how"]["virtio_blk"] == "module"
    assert not by_rule(findings, "MIG-DRV-LINUX-VIRTIO-STORAGE")
    # Modules without an initramfs to load them.
    assert [f.target for f in by_rule(findings, "MIG-DRV-LINUX-INITRAMFS-VIRTIO")] == [
        f"kernel {KERNEL}"
    ]
    [fsys] = facts["filesystems"]
    assert fsys["mountpoint"] == "/" and fsys["size"] > 0
    assert fsys["used"] >= 0 and 0 <= fsys["free"] <= fsys["size"]
    assert section["verdict"] == "needs_work"
    assert "MIG-STOR-DEVICE-NAME" in section["rules_evaluated"]
    assert "MIG-DRV-WIN-VIRTIO-STORAGE" not in section["rules_evaluated"]


def test_debian_findings_are_stable(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    a, _, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    b, _, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    assert [f.fingerprint for f in a] == [f.fingerprint for f in b]
    assert len({f.fingerprint for f in a}) == len(a)


def test_kernel_without_virtio_blocks(tmp_path: Path) -> None:
    debian_tree(tmp_path, virtio=False)
    findings, section, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    [f] = by_rule(findings, "MIG-DRV-LINUX-VIRTIO-STORAGE")
    assert f.severity == "high" and f.target == f"kernel {KERNEL}"
    assert f.details["missing"] == ["virtio_blk", "virtio_scsi"]
    assert by_rule(findings, "MIG-DRV-LINUX-VIRTIO-NET")
    assert section["facts"]["kernels"][0]["virtio"]["virtio_blk"] is False
    assert section["verdict"] == "blocked"


def test_builtin_virtio_from_modules_builtin(tmp_path: Path) -> None:
    debian_tree(tmp_path, virtio=False)
    write(
        tmp_path,
        f"/lib/modules/{KERNEL}/modules.builtin",
        "kernel/drivers/block/virtio_blk.ko\nkernel/drivers/net/virtio_net.ko\n",
    )
    findings, section, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    how = section["facts"]["kernels"][0]["virtio_how"]
    assert how["virtio_blk"] == "builtin" and how["virtio_scsi"] == "absent"
    assert not by_rule(findings, "MIG-DRV-LINUX-VIRTIO-STORAGE")
    # Built-in storage driver: no initramfs needed for it.
    assert not by_rule(findings, "MIG-DRV-LINUX-INITRAMFS-VIRTIO")


def _cpio(names: list[str]) -> bytes:
    out = b""
    for i, name in enumerate([*names, "TRAILER!!!"]):
        data = b"" if name == "TRAILER!!!" else b"\x7fELF module"
        nb = name.encode() + b"\x00"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        out += hdr + nb + b"\x00" * ((-(110 + len(nb))) % 4)
        out += data + b"\x00" * ((-len(data)) % 4)
    return out


def test_initramfs_listing(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    early = _cpio(["kernel/x86/microcode/GenuineIntel.bin"])
    main = _cpio([f"usr/lib/modules/{KERNEL}/kernel/drivers/scsi/sd_mod.ko"])
    write(tmp_path, f"/boot/initrd.img-{KERNEL}", early + gzip.compress(main))
    findings, section, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    ird = section["facts"]["kernels"][0]["initramfs"]
    assert ird["read"] and ird["complete"] and ird["compression"] == ["gzip"]
    assert ird["virtio"]["virtio_blk"] is False
    [f] = by_rule(findings, "MIG-DRV-LINUX-INITRAMFS-VIRTIO")
    assert f.details["file"] == f"/boot/initrd.img-{KERNEL}"
    # The same initramfs with virtio_blk inside: no finding.
    main = _cpio([f"usr/lib/modules/{KERNEL}/kernel/drivers/block/virtio_blk.ko.xz"])
    write(tmp_path, f"/boot/initrd.img-{KERNEL}", early + gzip.compress(main))
    findings, section, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    assert section["facts"]["kernels"][0]["initramfs"]["virtio"]["virtio_blk"] is True
    assert not by_rule(findings, "MIG-DRV-LINUX-INITRAMFS-VIRTIO")


def test_empty_guest_is_reported_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    findings, section, ctx = run(tmp_path, debian_os())
    facts = section["facts"]
    assert facts["fstab"] == "absent"
    assert facts["kernels"] == [] and "no kernel" in facts["kernels_note"]
    assert facts["network_config"] == "none found"
    assert facts["device_name_mounts"] == [] and facts["mac_bindings"] == []
    assert [f.rule_id for f in by_rule(findings, "MIG-DRV-LINUX-NO-KERNEL")]
    assert by_rule(findings, "MIG-BOOT-NO-BOOTLOADER")
    assert section["notes"] == [] and ctx.notes == []


def test_garbage_config_lines_skipped_with_note(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/etc/fstab",
        b"\xff\xfe garbage\n" + b"x" * 5000 + b"\n"
        b"/dev/hda1 / ext3 defaults 0 1\n\x00\x01\x02\n/dev/xvdb1\n",
    )
    write(tmp_path, "/etc/udev/rules.d/70-persistent-net.rules", bytes(range(256)) * 10)
    write(tmp_path, "/etc/netplan/01.yaml", b"network: [\n  ethernets: {{{\n")
    write(tmp_path, "/etc/crypttab", b"\xff" * (2 * 1024 * 1024))  # over the size limit
    findings, section, ctx = run(tmp_path, debian_os())
    [f] = by_rule(findings, "MIG-STOR-DEVICE-NAME")
    assert f.details["device"] == "/dev/hda1" and f.details["line"] == 3
    notes = " ".join(section["notes"])
    assert "/etc/fstab:2" in notes and "/etc/crypttab" in notes
    assert ctx.notes == section["notes"]


def test_no_image_facts_does_not_judge_absence(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    findings, section, _ = run(tmp_path, debian_os())
    assert not by_rule(findings, "MIG-STOR-ABSENT-DEVICE")
    assert section["facts"]["image_devices_known"] is False
    assert section["facts"]["partition_table"] is None


def test_uefi_guest(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    (tmp_path / "boot/grub/i386-pc").rmdir()
    write(tmp_path, "/boot/efi/EFI/debian/shimx64.efi", pe(0x8664, 0x20B))
    write(tmp_path, "/boot/efi/EFI/debian/grubx64.efi", pe(0x8664, 0x20B))
    facts = {**DEBIAN_FACTS, "partition_tables": {"/dev/sda": "gpt"}}
    findings, section, _ = run(tmp_path, debian_os(), image_facts=facts)
    assert section["facts"]["firmware"] == "uefi"
    assert section["facts"]["partition_table"] == "gpt"
    [f] = by_rule(findings, "MIG-BOOT-UEFI")
    assert f.details["secure_boot_shim"] is True


# ---------------------------------------------------------------------------
# Architecture


def test_32bit_os(tmp_path: Path) -> None:
    write(tmp_path, "/usr/bin/ls", elf(32, 3), 0o755)
    (tmp_path / "etc").mkdir()
    findings, section, _ = run(tmp_path, OSInfo(type="linux", arch="i686"))
    [f] = by_rule(findings, "MIG-ARCH-32BIT-OS")
    assert f.severity == "high" and "i686" in f.title
    assert section["verdict"] == "blocked"
    # 32-bit executables on a 32-bit OS are not a separate finding.
    assert not by_rule(findings, "MIG-ARCH-32BIT-EXECUTABLES")


def test_arch_from_headers_when_inspection_does_not_know(tmp_path: Path) -> None:
    write(tmp_path, "/bin/busybox", elf(32, 40), 0o755)
    (tmp_path / "etc").mkdir()
    findings, section, _ = run(tmp_path, OSInfo(type="linux", arch="unknown"))
    assert section["facts"]["arch"] == "arm"
    assert "/bin/busybox" in section["facts"]["arch_source"]
    assert by_rule(findings, "MIG-ARCH-32BIT-OS")


def test_32bit_executables_on_64bit_linux(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    write(tmp_path, "/opt/legacy/bin/tool", elf(32, 3), 0o755)
    write(tmp_path, "/usr/lib32/libold.so.1", elf(32, 3), 0o644)
    write(tmp_path, "/usr/bin/script", b"#!/bin/sh\necho hello world, long enough " * 3, 0o755)
    # PE and DOS files on Linux are data (or Wine's): listed by kind, never counted.
    write(tmp_path, "/opt/legacy/GAME.EXE", dos_mz(), 0o755)
    write(tmp_path, "/opt/legacy/setup32.exe", pe(0x14C, 0x10B), 0o755)
    write(tmp_path, "/usr/share/pip/t32.exe", pe(0x14C, 0x10B), 0o644)
    write(tmp_path, "/home/u/readme.txt", b"not an executable" * 10, 0o755)
    findings, section, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    ex = section["facts"]["executables"]
    [f32] = by_rule(findings, "MIG-ARCH-32BIT-EXECUTABLES")
    assert f32.details["count"] == 2
    assert set(f32.details["sample"]) == {"/opt/legacy/bin/tool", "/usr/lib32/libold.so.1"}
    assert not by_rule(findings, "MIG-ARCH-16BIT-EXECUTABLES")
    assert ex["kinds"]["elf64"] >= 2 and ex["kinds"]["elf32"] == 2
    assert ex["kinds"]["pe32"] == 1 and ex["kinds"]["dos16"] == 1  # /usr/share not examined
    assert ex["capped"] is False and ex["headers_from"] == "read_head"


def test_executable_sample_cap(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    for i in range(30):
        write(tmp_path, f"/usr/bin/t{i:02d}", elf(32, 3), 0o755)
    findings, section, _ = run(tmp_path, debian_os(), options={"migration_max_heads": 10})
    ex = section["facts"]["executables"]
    assert ex["examined"] == 10 and ex["capped"] is True and ex["candidates"] > 30
    [f] = by_rule(findings, "MIG-ARCH-32BIT-EXECUTABLES")
    assert "capped" in f.title


def test_hypervisor_tools_from_packages_and_files(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    write(tmp_path, "/etc/cloud/cloud.cfg", "datasource_list: [NoCloud]\n")
    write(tmp_path, "/usr/sbin/VBoxService", elf(64, 62), 0o755)
    ctx = context(tmp_path, debian_os())
    ctx.root.packages = [Package("open-vm-tools", "2:12.2.0"), Package("bash", "5.2")]
    findings = MigrationCheck().run(GuestDir(tmp_path), ctx)
    rules = {f.rule_id for f in findings}
    assert {
        "MIG-TOOLS-VMWARE",
        "MIG-TOOLS-VIRTUALBOX",
        "MIG-TOOLS-CLOUD-INIT",
        "MIG-TOOLS-QEMU-GA-MISSING",
    } <= rules
    assert "MIG-TOOLS-XEN" not in rules and "MIG-TOOLS-HYPERV" not in rules
    tools = ctx.root.sections["migration"]["facts"]["hypervisor_tools"]
    assert tools["vmware-tools"] == ["package open-vm-tools"]
    [vm] = by_rule(findings, "MIG-TOOLS-VMWARE")
    assert vm.target == "vmware-tools" and vm.details["file"] == "open-vm-tools"
    ctx.root.packages.append(Package("qemu-guest-agent", "1:7.2"))
    ctx.root.sections.clear()
    findings = MigrationCheck().run(GuestDir(tmp_path), ctx)
    assert not by_rule(findings, "MIG-TOOLS-QEMU-GA-MISSING")


def test_capacity_threshold(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    findings, _, _ = run(tmp_path, debian_os(), options={"min_free_percent": 101})
    [f] = by_rule(findings, "MIG-CAP-LOW-FREE")
    assert f.target == "/" and f.details["threshold_percent"] == 101
    findings, _, _ = run(tmp_path, debian_os(), options={"min_free_percent": 0})
    assert not by_rule(findings, "MIG-CAP-LOW-FREE")


def test_end_of_life(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    old = OSInfo(
        type="linux",
        distro="debian",
        arch="x86_64",
        os_release_id="debian",
        version_id="9",
        major_version=9,
    )
    findings, section, _ = run(tmp_path, old, options={"today": dt.date(2026, 11, 1)})
    [f] = by_rule(findings, "MIG-LIFE-EOL")
    assert "Debian 9" in f.title and f.severity == "medium"
    assert section["facts"]["eol"]["state"] == "eol"
    assert "MIG-LIFE-EOL" in section["rules_evaluated"]
    findings, section, _ = run(tmp_path, debian_os(), options={"today": dt.date(2026, 11, 1)})
    [f] = by_rule(findings, "MIG-LIFE-EOL")
    assert f.severity == "low" and section["facts"]["eol"]["state"] == "extended"


# ---------------------------------------------------------------------------
# Windows


WIN_FACTS: dict[str, Any] = {
    "disks": ["/dev/sda"],
    "partition_tables": {"/dev/sda": "msdos"},
    "lvs": [],
    "filesystems": [{"device": "/dev/sda2", "type": "ntfs", "uuid": "", "label": ""}],
}


def test_windows_without_virtio_storage_is_blocked(tmp_path: Path) -> None:
    windows_tree(tmp_path)
    findings, section, _ = run(tmp_path, windows_os(), image_facts=WIN_FACTS, device="/dev/sda2")
    [f] = by_rule(findings, "MIG-DRV-WIN-VIRTIO-STORAGE")
    assert f.severity == "high" and "viostor" in f.title and "vioscsi" in f.title
    assert f.details["missing"] == ["viostor", "vioscsi"]
    assert "only staged" in f.details["text"]  # vioscsi sits in the DriverStore
    assert f.details["file"] == "/Windows/System32/drivers"
    assert by_rule(findings, "MIG-DRV-WIN-VIRTIO-NET")
    assert section["verdict"] == "blocked"
    facts = section["facts"]
    assert facts["drivers"]["viostor"]["file"] is None
    assert facts["drivers"]["vioscsi"]["staged"] is True
    assert facts["firmware"] == "bios" and facts["partition_table"] == "mbr"
    assert facts["bootloader"][0]["name"] == "windows-bootmgr"
    assert "MIG-STOR-DEVICE-NAME" not in section["rules_evaluated"]


def test_windows_with_virtio_drivers(tmp_path: Path) -> None:
    windows_tree(tmp_path, viostor=True)
    facts = {**WIN_FACTS, "partition_tables": {"/dev/sda": "gpt"}}
    findings, section, _ = run(tmp_path, windows_os(), image_facts=facts, device="/dev/sda2")
    assert not by_rule(findings, "MIG-DRV-WIN-VIRTIO-STORAGE")
    assert not by_rule(findings, "MIG-DRV-WIN-VIRTIO-NET")
    assert section["facts"]["drivers"]["viostor"]["file"] == "/Windows/System32/drivers/viostor.sys"
    assert section["facts"]["firmware"] == "uefi"
    assert by_rule(findings, "MIG-BOOT-UEFI")


def test_windows_case_insensitive_paths(tmp_path: Path) -> None:
    write(tmp_path, "/WINDOWS/system32/DRIVERS/VioStor.SYS", pe(0x8664, 0x20B))
    findings, section, _ = run(tmp_path, windows_os(), device="/dev/sda2")
    assert not by_rule(findings, "MIG-DRV-WIN-VIRTIO-STORAGE")
    assert section["facts"]["drivers"]["viostor"]["file"].endswith("VioStor.SYS")


def test_windows_executables_outside_system_folder(tmp_path: Path) -> None:
    windows_tree(tmp_path)
    findings, section, _ = run(tmp_path, windows_os(), device="/dev/sda2")
    [f32] = by_rule(findings, "MIG-ARCH-32BIT-EXECUTABLES")
    # SysWOW64 is the OS's own; the AnyCPU .NET program is not counted as 32-bit.
    assert f32.details["sample"] == ["/Program Files (x86)/Old/old.exe"]
    [f16] = by_rule(findings, "MIG-ARCH-16BIT-EXECUTABLES")
    assert sorted(f16.details["sample"]) == [
        "/Program Files (x86)/Old/dos.exe",
        "/Program Files (x86)/Old/win16.exe",
    ]
    assert section["facts"]["executables"]["kinds"]["pe-dotnet"] == 1


def test_windows_hibernation_and_pending_reboot(tmp_path: Path) -> None:
    windows_tree(tmp_path, viostor=True)
    write(tmp_path, "/hiberfil.sys", b"HIBR" + b"\x00" * 60)
    write(tmp_path, "/Windows/WinSxS/pending.xml", "<PendingTransaction/>")
    findings, section, _ = run(tmp_path, windows_os(), device="/dev/sda2")
    [h] = by_rule(findings, "MIG-WIN-HIBERNATED")
    assert h.details["file"] == "/hiberfil.sys"
    [p] = by_rule(findings, "MIG-WIN-PENDING-REBOOT")
    assert p.details["file"] == "/Windows/WinSxS/pending.xml"
    state = section["facts"]["windows_state"]
    assert state["hibernation"] == "hibernated"
    assert "not checked" in state["ntfs_dirty"]
    assert section["verdict"] == "blocked"
    write(tmp_path, "/hiberfil.sys", b"\x00" * 64)
    findings, _, _ = run(tmp_path, windows_os(), device="/dev/sda2")
    assert not by_rule(findings, "MIG-WIN-HIBERNATED")
    assert by_rule(findings, "MIG-WIN-HIBERFIL")[0].severity == "low"


def test_32bit_windows(tmp_path: Path) -> None:
    write(tmp_path, "/Windows/System32/kernel32.dll", pe(0x14C, 0x10B))
    findings, section, _ = run(tmp_path, windows_os(arch="unknown"), device="/dev/sda2")
    assert section["facts"]["arch"] == "i386"
    assert by_rule(findings, "MIG-ARCH-32BIT-OS")


def test_data_root_only_capacity(tmp_path: Path) -> None:
    write(tmp_path, "/stuff.bin", b"x" * 100)
    findings, section, _ = run(tmp_path, OSInfo(), device="/dev/sdb1")
    assert section["facts"]["os_kind"] == "data"
    assert section["rules_evaluated"] == ["MIG-CAP-LOW-FREE"]
    assert section["verdict"] == "ready" and findings == []


def test_one_failing_area_does_not_hide_others(tmp_path: Path) -> None:
    debian_tree(tmp_path)

    class Broken(GuestDir):
        def statvfs(self, path: str) -> dict[str, int] | None:
            raise ValueError("boom")

    ctx = context(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    findings = MigrationCheck().run(Broken(tmp_path), ctx)
    section = ctx.root.sections["migration"]
    assert any("capacity" in n and "boom" in n for n in section["notes"])
    assert by_rule(findings, "MIG-STOR-DEVICE-NAME")
    # Not evaluated is not "passed".
    assert "MIG-CAP-LOW-FREE" not in section["rules_evaluated"]
    assert "boom" in section["rules_failed"]["MIG-CAP-LOW-FREE"]
    assert "MIG-STOR-DEVICE-NAME" in section["rules_evaluated"]


def _hive_available() -> bool:
    try:
        import vmscan.hive  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _hive_available(), reason="vmscan.hive (hive reader) not in this build")
def test_windows_services_from_system_hive(tmp_path: Path, corpus: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("hivexregedit") is None:
        pytest.skip("hivexregedit not installed")
    windows_tree(tmp_path)
    hive = write(
        tmp_path,
        "/Windows/System32/config/SYSTEM",
        (corpus / "registry/hivex-minimal-hive").read_bytes(),
    )
    reg = tmp_path / "system.reg"
    reg.write_text(
        "Windows Registry Editor Version 5.00\n\n"
        '[\\Select]\n"Current"=dword:00000001\n\n'
        "[\\ControlSet001]\n\n[\\ControlSet001\\Services]\n\n[\\ControlSet001\\Control]\n\n"
        "[\\ControlSet001\\Services\\Tcpip]\n\n[\\ControlSet001\\Services\\Tcpip\\Parameters]\n\n"
        "[\\ControlSet001\\Services\\Tcpip\\Parameters\\Interfaces]\n\n"
        '[\\ControlSet001\\Services\\viostor]\n"Start"=dword:00000000\n\n'
        "[\\ControlSet001\\Control\\Session Manager]\n"
        '"PendingFileRenameOperations"=hex(7):5c,00,3f,00,00,00,00,00\n\n'
        "[\\ControlSet001\\Services\\Tcpip\\Parameters\\Interfaces\\{abc}]\n"
        '"EnableDHCP"=dword:00000000\n'
        '"IPAddress"=hex(7):31,00,30,00,2e,00,30,00,2e,00,30,00,2e,00,35,00,00,00,00,00\n'
    )
    subprocess.run(["hivexregedit", "--merge", str(hive), str(reg)], check=True)
    findings, section, _ = run(tmp_path, windows_os(), device="/dev/sda2")
    drivers = section["facts"]["drivers"]
    assert drivers["viostor"]["service"] is True and drivers["viostor"]["start"] == 0
    assert drivers["vioscsi"]["service"] is False
    assert not by_rule(findings, "MIG-DRV-WIN-VIRTIO-STORAGE")
    assert section["facts"]["static_ip"][0]["address"] == "10.0.0.5"
    assert by_rule(findings, "MIG-WIN-PENDING-REBOOT")


def test_ntfs_dirty_parser_on_struct_bytes() -> None:
    from vmscan.checks.migration.binaries import (
        ntfs_volume_flags,
    )

    boot = bytearray(512)
    boot[3:11] = b"NTFS    "
    struct.pack_into("<HB", boot, 0x0B, 512, 8)
    struct.pack_into("<Q", boot, 0x30, 4)  # $MFT at cluster 4
    struct.pack_into("<b", boot, 0x40, -10)  # 1024-byte records
    rec = bytearray(1024)
    rec[:4] = b"FILE"
    struct.pack_into("<HH", rec, 4, 0x30, 3)  # update sequence array: 3 entries
    struct.pack_into("<H", rec, 0x30, 0x0007)
    struct.pack_into("<HH", rec, 0x32, 0x1111, 0x2222)  # saved sector-end bytes
    rec[510:512] = b"\x07\x00"
    rec[1022:1024] = b"\x07\x00"
    struct.pack_into("<H", rec, 0x14, 0x38)
    attr = bytearray(0x28)
    struct.pack_into("<IIBB", attr, 0, 0x70, 0x28, 0, 0)
    struct.pack_into("<IH", attr, 16, 12, 0x18)
    struct.pack_into("<BBH", attr, 0x18 + 8, 3, 1, 0x0001)  # v3.1, flags: dirty
    rec[0x38 : 0x38 + 0x28] = attr
    struct.pack_into("<I", rec, 0x38 + 0x28, 0xFFFFFFFF)
    volume = bytes(boot) + b"\x00" * (4 * 4096 - 512 + 3 * 1024) + bytes(rec)

    def read(off: int, n: int) -> bytes:
        return volume[off : off + n]

    assert ntfs_volume_flags(read) == 0x0001
    rec2 = bytearray(rec)
    struct.pack_into("<H", rec2, 0x38 + 0x18 + 10, 0)
    clean = bytes(boot) + b"\x00" * (4 * 4096 - 512 + 3 * 1024) + bytes(rec2)
    assert ntfs_volume_flags(lambda o, n: clean[o : o + n]) == 0
    assert ntfs_volume_flags(lambda o, n: b"\x00" * n) is None


def test_swap_nvme_and_crypttab_entries(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/etc/fstab",
        "/dev/vdb2 none swap sw 0 0\n/dev/nvme0n1p1 /fast xfs defaults 0 0\n"
        "/dev/disk/by-id/ata-QEMU_HARDDISK_QM00002-part1 /id ext4 nofail 0 0\n",
    )
    write(tmp_path, "/etc/crypttab", "cryptdata /dev/sdc1 none luks,nofail\n")
    findings, _, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    titles = {f.details["device"]: f.title for f in by_rule(findings, "MIG-STOR-DEVICE-NAME")}
    assert titles["/dev/vdb2"] == "swap is mounted by kernel device name /dev/vdb2"
    assert "hardware path" in titles["/dev/disk/by-id/ata-QEMU_HARDDISK_QM00002-part1"]
    assert set(titles) == {
        "/dev/vdb2",
        "/dev/nvme0n1p1",
        "/dev/disk/by-id/ata-QEMU_HARDDISK_QM00002-part1",
        "/dev/sdc1",
    }
    absent = {f.details["device"]: f for f in by_rule(findings, "MIG-STOR-ABSENT-DEVICE")}
    # vdb2 is the appliance's sdb2 (absent); nvme names are not judged; nofail lowers it.
    assert set(absent) == {"/dev/vdb2", "/dev/sdc1"}
    assert absent["/dev/sdc1"].severity == "low" and absent["/dev/sdc1"].details["optional"]
    assert absent["/dev/sdc1"].details["file"] == "/etc/crypttab"


def test_windows_tools_from_program_names(tmp_path: Path) -> None:
    windows_tree(tmp_path, viostor=True)
    ctx = context(tmp_path, windows_os(), device="/dev/sda2")
    ctx.root.packages = [
        Package("VMware Tools", "12.1.0"),
        Package("XenServer VM Tools", "9.3"),
        Package("QEMU guest agent", "107.0.1"),
        Package("Cloudbase-Init 1.1.4", "1.1.4"),
    ]
    findings = MigrationCheck().run(GuestDir(tmp_path), ctx)
    rules = {f.rule_id for f in findings}
    assert {"MIG-TOOLS-VMWARE", "MIG-TOOLS-XEN", "MIG-TOOLS-CLOUD-INIT"} <= rules
    assert "MIG-TOOLS-QEMU-GA-MISSING" not in rules


def test_unreadable_initramfs_is_a_note_not_clean(tmp_path: Path) -> None:
    debian_tree(tmp_path)
    write(tmp_path, f"/boot/initrd.img-{KERNEL}", b"\x02\x21\x4c\x18" + b"\x00" * 64)  # lz4
    findings, section, _ = run(tmp_path, debian_os(), image_facts=DEBIAN_FACTS)
    ird = section["facts"]["kernels"][0]["initramfs"]
    assert ird["read"] and not ird["complete"] and ird["virtio"] is None
    assert any("initramfs not fully read" in n for n in section["notes"])
    assert not by_rule(findings, "MIG-DRV-LINUX-INITRAMFS-VIRTIO")
