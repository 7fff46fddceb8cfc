"""Host-side image vetting: format sniffing, backing chains, domain XML (no appliance)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmscan.disk import check_disk, parse_domain_xml, resolve_source, sniff_format
from vmscan.errors import ImageError, UnsafeImageError


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("dfvfs-ext2.qcow2", "qcow2"), ("dfvfs-ext2.vmdk", "vmdk"), ("dfvfs-ext2.vhd", "vpc")],
)
def test_sniff_corpus(corpus: Path, name: str, fmt: str) -> None:
    assert sniff_format(corpus / "images" / name) == fmt
    ref = check_disk(corpus / "images" / name)
    assert ref.format == fmt
    assert ref.virtual_size and ref.virtual_size >= 4 * 1024 * 1024


def test_bad_checksum_vhd_is_an_error(corpus: Path) -> None:
    with pytest.raises(ImageError, match="checksum"):
        check_disk(corpus / "images" / "dfvfs-bad-checksum.vhd")


def test_formats_made_here(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    for fmt, ext in [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vpc", "vhd"), ("vhdx", "vhdx")]:
        out = tmp_path / f"d.{ext}"
        qemu_img("convert", "-f", "raw", "-O", fmt, str(raw), str(out))
        assert check_disk(out).format == fmt
    assert check_disk(raw).format == "raw"


def test_backing_outside_folder_refused(tmp_path: Path) -> None:
    top = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "-u", str(top), "64M")
    with pytest.raises(UnsafeImageError) as ei:
        check_disk(top)
    assert "/etc/hostname" in str(ei.value)
    # Allowed explicitly: accepted, and the chain is recorded.
    ref = check_disk(top, allow_backing=("/etc",))
    assert ref.backing == (str(Path("/etc/hostname").resolve()),)


def test_relative_backing_escape_refused(tmp_path: Path) -> None:
    sub = tmp_path / "vms"
    sub.mkdir()
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    top = sub / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", "../base.qcow2", "-u", str(top), "16M")
    with pytest.raises(UnsafeImageError, match=r"\.\./base\.qcow2"):
        check_disk(top)


def test_backing_inside_folder_and_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", str(mid))
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(mid), str(top))
    ref = check_disk(top)
    assert ref.format == "qcow2"
    assert [Path(p).name for p in ref.backing] == ["mid.qcow2", "base.qcow2"]


def test_second_level_backing_escape_refused(tmp_path: Path) -> None:
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", "-u", str(mid), "16M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", "mid.qcow2", "-u", str(top), "16M")
    with pytest.raises(UnsafeImageError, match="/etc/passwd"):
        check_disk(top)


def test_vmdk_descriptor_extent_outside_refused(tmp_path: Path) -> None:
    desc = tmp_path / "evil.vmdk"
    desc.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\n'
        'RW 2048 FLAT "/etc/hostname" 0\n\n# The Disk Data Base\n'
        'ddb.virtualHWVersion = "4"\n'
    )
    with pytest.raises(UnsafeImageError, match="/etc/hostname"):
        check_disk(desc)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        check_disk(tmp_path / "missing.qcow2")
    with pytest.raises(ImageError, match="directory"):
        check_disk(tmp_path)
    rnd = tmp_path / "random.qcow2"
    rnd.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(1 << 16)))
    with pytest.raises(ImageError, match="header"):
        check_disk(rnd)
    trunc = tmp_path / "trunc.qcow2"
    qemu_img("create", "-f", "qcow2", str(trunc), "64M")
    trunc.write_bytes(trunc.read_bytes()[:100])
    with pytest.raises(ImageError):
        check_disk(trunc)


def test_domain_xml(tmp_path: Path) -> None:
    for name in ("a.qcow2", "b.raw"):
        qemu_img(
            "create",
            "-f",
            "qcow2" if name.endswith("qcow2") else "raw",
            str(tmp_path / name),
            "16M",
        )
    xml = tmp_path / "vm.xml"
    xml.write_text(
        f"""<domain type='kvm'><name>vm</name><devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='{tmp_path / "a.qcow2"}'/><target dev='vda'/></disk>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>
          <source file='b.raw'/><target dev='vdb'/></disk>
        <disk type='file' device='cdrom'><source file='/x.iso'/></disk>
        </devices></domain>"""
    )
    assert [t for _, t in parse_domain_xml(xml)] == ["qcow2", "raw"]
    src = resolve_source(str(xml))
    assert [d.format for d in src.disks] == ["qcow2", "raw"]


def test_domain_xml_hostile(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><domain>&lol2;</domain>'
    )
    with pytest.raises(ImageError):
        parse_domain_xml(bomb)
    notdom = tmp_path / "x.xml"
    notdom.write_text("<network/>")
    with pytest.raises(ImageError, match="domain"):
        parse_domain_xml(notdom)
