"""Pure parsers of the migration check: configs, device names, headers, initramfs."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest
from test_migration_trees import dos_mz, elf, ne_exe, pe

from vmscan.checks.migration.binaries import (
    classify_executable,
    hiberfil_state,
    scan_initramfs,
)
from vmscan.checks.migration.parse import (
    ParseNotes,
    classify_device_spec,
    mapper_to_lv,
    parse_crypttab,
    parse_debian_interfaces,
    parse_fstab,
    parse_ifcfg,
    parse_netplan,
    parse_nm_keyfile,
    parse_systemd_network,
    parse_udev_rules,
)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("/dev/sda1", "kernel_name"),
        ("/dev/sdb", "kernel_name"),
        ("/dev/hda2", "kernel_name"),
        ("/dev/vdc1", "kernel_name"),
        ("/dev/xvda1", "kernel_name"),
        ("/dev/sdaa12", "kernel_name"),
        ("/dev/nvme0n1p2", "kernel_name"),
        ("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001-part1", "hardware_path"),
        ("/dev/disk/by-path/pci-0000:00:05.0-part1", "hardware_path"),
        ("UUID=1234-ABCD", "uuid"),
        ('UUID="c3d9e7a2-51f4"', "uuid"),
        ("LABEL=root", "label"),
        ("PARTUUID=0a1b2c3d-02", "partuuid"),
        ("/dev/disk/by-uuid/c3d9", "uuid"),
        ("/dev/mapper/vg0-root", "lvm"),
        ("/dev/vg0/root", "lvm"),
        ("/dev/md0", "md"),
        ("server:/export", "network"),
        ("//server/share", "network"),
        ("proc", "virtual"),
        ("tmpfs", "virtual"),
    ],
)
def test_classify_device_spec(spec: str, kind: str) -> None:
    assert classify_device_spec(spec) == kind


def test_mapper_to_lv() -> None:
    assert mapper_to_lv("/dev/mapper/vg0-root") == "/dev/vg0/root"
    assert mapper_to_lv("/dev/mapper/my--vg-lv--data") == "/dev/my-vg/lv-data"
    assert mapper_to_lv("/dev/mapper/cryptroot") is None
    assert mapper_to_lv("/dev/vg0/root") is None


def test_fstab_octal_escapes_and_options() -> None:
    notes = ParseNotes()
    [e] = parse_fstab("/dev/sdb1 /mnt/My\\040Disk ext4 nofail,ro 0 2\n", "/etc/fstab", notes)
    assert e.mountpoint == "/mnt/My Disk" and e.optional and e.line == 1
    assert notes.items == []


def test_crypttab() -> None:
    notes = ParseNotes()
    text = "# comment\ncryptdata /dev/sdb2 none luks,nofail\nbroken\n"
    [c] = parse_crypttab(text, "/etc/crypttab", notes)
    assert (c.name, c.device, c.line) == ("cryptdata", "/dev/sdb2", 2)
    assert "nofail" in c.options and len(notes.items) == 1


def test_notes_are_capped() -> None:
    notes = ParseNotes()
    parse_fstab("junk\n" * 500, "/etc/fstab", notes)
    assert len(notes.items) == 51 and "capped" in notes.items[-1]


def test_udev_attrs_address_and_comments() -> None:
    text = (
        '# SUBSYSTEM=="net", ATTR{address}=="00:11:22:33:44:55", NAME="old"\n'
        'SUBSYSTEM=="net", ATTRS{address}=="00:0C:29:AA:BB:CC", NAME="ens192"\n'
        'SUBSYSTEM=="net", ATTR{address}=="?*", NAME="any"\n'
    )
    res = parse_udev_rules("/etc/udev/rules.d/x.rules", text, ParseNotes())
    assert [(m.mac, m.interface, m.line) for m in res.macs] == [("00:0c:29:aa:bb:cc", "ens192", 2)]


def test_ifcfg() -> None:
    text = 'DEVICE=eth0\nHWADDR="00:50:56:01:02:03"\nBOOTPROTO=none\nIPADDR=10.1.2.3\n'
    res = parse_ifcfg("/etc/sysconfig/network-scripts/ifcfg-eth0", text, ParseNotes())
    assert [(m.mac, m.interface, m.line) for m in res.macs] == [("00:50:56:01:02:03", "eth0", 2)]
    assert [(s.address, s.line) for s in res.statics] == [("10.1.2.3", 4)]


NETPLAN = """\
network:
  version: 2
  ethernets:
    eth0:
      match:
        macaddress: "52:54:00:ab:cd:ef"
      set-name: eth0
      addresses:
        - 192.0.2.5/24
        - "2001:db8::5/64"
      routes:
        - to: default
          via: 192.0.2.1
    eth1:
      dhcp4: true
      macaddress: 52:54:00:00:00:01
      addresses: [198.51.100.7/24]
"""


def test_netplan() -> None:
    res = parse_netplan("/etc/netplan/50.yaml", NETPLAN, ParseNotes())
    assert [(m.mac, m.interface, m.line) for m in res.macs] == [
        ("52:54:00:ab:cd:ef", "eth0", 6),
        ("52:54:00:00:00:01", "eth1", 16),
    ]
    assert [(s.address, s.interface) for s in res.statics] == [
        ("192.0.2.5/24", "eth0"),
        ("2001:db8::5/64", "eth0"),
        ("198.51.100.7/24", "eth1"),
    ]


def test_networkmanager_keyfile() -> None:
    text = (
        "[connection]\nid=Wired 1\ntype=ethernet\ninterface-name=enp1s0\n\n"
        "[ethernet]\nmac-address=52:54:00:11:22:33\n\n"
        "[ipv4]\nmethod=manual\naddress1=192.0.2.9/24,192.0.2.1\n\nnot a line\n"
    )
    notes = ParseNotes()
    res = parse_nm_keyfile("/etc/NetworkManager/system-connections/w.nmconnection", text, notes)
    assert [(m.mac, m.interface, m.line) for m in res.macs] == [("52:54:00:11:22:33", "enp1s0", 7)]
    assert [s.address for s in res.statics] == ["192.0.2.9/24"]
    assert len(notes.items) == 1


def test_systemd_link_and_network() -> None:
    link = "[Match]\nMACAddress=52:54:00:aa:bb:cc\n\n[Link]\nName=lan0\n"
    res = parse_systemd_network("/etc/systemd/network/10-lan.link", link, ParseNotes())
    assert [(m.mac, m.interface, m.line) for m in res.macs] == [("52:54:00:aa:bb:cc", "lan0", 2)]
    net = "[Match]\nName=lan0\n\n[Network]\nAddress=192.0.2.44/24\nGateway=192.0.2.1\n"
    res = parse_systemd_network("/etc/systemd/network/10-lan.network", net, ParseNotes())
    assert [(s.address, s.interface) for s in res.statics] == [("192.0.2.44/24", "lan0")]


def test_debian_interfaces_hwaddress() -> None:
    text = "iface eth0 inet static\n  hwaddress ether 00:16:3e:01:02:03\n  address 10.0.0.2\n"
    res = parse_debian_interfaces("/etc/network/interfaces", text, ParseNotes())
    assert [(m.mac, m.interface) for m in res.macs] == [("00:16:3e:01:02:03", "eth0")]
    assert [s.address for s in res.statics] == ["10.0.0.2"]


def test_executable_kinds() -> None:
    assert classify_executable(elf(32, 3)).__dict__ == {
        "kind": "elf",
        "bits": 32,
        "machine": "i386",
        "note": "",
    }
    assert classify_executable(elf(64, 62)).machine == "x86_64"
    assert classify_executable(elf(64, 183)).machine == "aarch64"
    assert classify_executable(pe(0x14C, 0x10B)).bits == 32
    assert classify_executable(pe(0x8664, 0x20B)).bits == 64
    assert classify_executable(pe(0x14C, 0x10B, dotnet=True)).note == "dotnet"
    assert classify_executable(dos_mz()).bits == 16
    assert classify_executable(ne_exe()).kind == "ne"
    assert classify_executable(b"\xb4\x09\xba\x0d\x01\xcd\x21", "/dos/HELLO.COM").kind == "com"
    assert classify_executable(b"#!/bin/sh\n").kind == "other"
    assert classify_executable(b"").kind == "other"
    assert classify_executable(b"MZ").kind == "other"
    # e_lfanew past the bytes read: not guessed.
    far = bytearray(dos_mz())
    far[0x18] = 0x40
    far[0x3C:0x40] = (0x4000).to_bytes(4, "little")
    assert classify_executable(bytes(far)).kind == "other"


def test_pe_corpus(corpus: Path) -> None:
    for name, machine, bits in (
        ("putty.exe", "x86_64", 64),
        ("impbyord-noversion.exe", "i386", 32),
    ):
        head = (corpus / "pe" / name).read_bytes()[:4096]
        k = classify_executable(head, name)
        assert (k.kind, k.machine, k.bits) == ("pe", machine, bits)


def test_hiberfil_state() -> None:
    assert hiberfil_state(b"hibr....") == "hibernated"
    assert hiberfil_state(b"HIBR....") == "hibernated"
    assert hiberfil_state(b"wake....") == "clean"
    assert hiberfil_state(b"\x00" * 8) == "clean"
    assert hiberfil_state(b"RSTR") == "unknown"


def _newc(names: list[str]) -> bytes:
    out = b""
    for i, name in enumerate([*names, "TRAILER!!!"]):
        data = b"" if name == "TRAILER!!!" else b"module-bytes"
        nb = name.encode() + b"\x00"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out += b"070701" + b"".join(b"%08X" % v for v in fields) + nb
        out += b"\x00" * ((-(110 + len(nb))) % 4) + data + b"\x00" * ((-len(data)) % 4)
    return out


def test_initramfs_plain_gzip_xz() -> None:
    mods = [
        "lib/modules/6.1/kernel/drivers/block/virtio_blk.ko.zst",
        "lib/modules/6.1/kernel/drivers/scsi/virtio-scsi.ko",
    ]
    early = _newc(["kernel/x86/microcode/AuthenticAMD.bin"]) + b"\x00" * 512
    for data, comp in (
        (_newc(mods), []),
        (early + gzip.compress(_newc(mods)), ["gzip"]),
        (early + lzma.compress(_newc(mods)), ["xz"]),
    ):
        scan = scan_initramfs(data)
        assert scan.complete, scan.note
        assert scan.modules == {"virtio_blk", "virtio_scsi"}
        assert scan.compressions == comp


def test_initramfs_zstd() -> None:
    zstandard = pytest.importorskip("zstandard")
    data = zstandard.ZstdCompressor().compress(_newc(["x/virtio_net.ko"]))
    scan = scan_initramfs(data)
    assert scan.complete and scan.modules == {"virtio_net"}


def test_initramfs_hostile() -> None:
    truncated = gzip.compress(_newc(["a/virtio_blk.ko"]))[:40]
    scan = scan_initramfs(truncated)
    assert not scan.complete or scan.modules <= {"virtio_blk"}
    garbage = scan_initramfs(b"\x01\x02\x03garbage")
    assert not garbage.complete and "unknown data" in garbage.note
    bad_hdr = scan_initramfs(b"070701" + b"Z" * 104)
    assert not bad_hdr.complete
    lz4 = scan_initramfs(b"\x02\x21\x4c\x18" + b"\x00" * 20)
    assert not lz4.complete and "lz4" in lz4.note


def test_ntfs_flags_on_a_real_mkntfs_volume(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from vmscan.checks.migration.binaries import (
        ntfs_volume_flags,
    )

    if shutil.which("mkntfs") is None:
        pytest.skip("mkntfs (ntfs-3g) not installed")
    vol = tmp_path / "ntfs.img"
    with open(vol, "wb") as fh:
        fh.truncate(8 * 1024 * 1024)
    subprocess.run(["mkntfs", "-F", "-f", "-q", str(vol)], check=True, capture_output=True)
    data = vol.read_bytes()
    # A freshly made volume is clean: the walk over boot sector, MFT record 3 (with its
    # update sequence fixups) and attributes found $VOLUME_INFORMATION.
    assert ntfs_volume_flags(lambda off, n: data[off : off + n]) == 0
