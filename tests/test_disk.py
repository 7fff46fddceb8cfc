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


# ---- host-side header parsing (vmscan/source) ------------------------------------------


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"QFI\xfb\x00\x00\x00\x01", "qcow"),
        (b"QFI\xfb\x00\x00\x00\x03", "qcow2"),
        (b"QED\x00", "qed"),
        (b"LUKS\xba\xbe\x00\x01", "luks"),
        (b"\0" * 0x40 + bytes.fromhex("7f10dabe"), "vdi"),
        (b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0", "cloop"),
        (b"WithoutFreeSpace", "parallels"),
        (b"Bochs Virtual HD Image", "bochs"),
        (b"KDMV", "vmdk"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"\0" * 512, "raw"),
    ],
)
def test_detect_formats(head: bytes, fmt: str) -> None:
    from vmscan.source.headers import detect

    assert detect(head, b"") == fmt


def test_dmg_is_recognised_by_its_trailer() -> None:
    from vmscan.source.headers import detect

    assert detect(b"\0" * 512, b"koly" + b"\0" * 508) == "dmg"


def test_unsupported_format_is_refused_by_name(tmp_path: Path) -> None:
    vdi = tmp_path / "disk.vdi"
    qemu_img("create", "-f", "vdi", str(vdi), "8M")
    with pytest.raises(ImageError, match="VirtualBox VDI image: vmscan does not open"):
        check_disk(vdi)


def test_encrypted_qcow2_refused(tmp_path: Path) -> None:
    img = tmp_path / "enc.qcow2"
    qemu_img("create", "-f", "qcow2", str(img), "8M")
    data = bytearray(img.read_bytes())
    data[32:36] = (2).to_bytes(4, "big")  # crypt_method: LUKS
    img.write_bytes(bytes(data))
    with pytest.raises(UnsafeImageError, match="encrypted qcow2"):
        check_disk(img)


def test_vhdx_differencing_refused(tmp_path: Path) -> None:
    """A VHDX whose file parameters say HasParent is refused before qemu sees it."""
    import struct

    from vmscan.source import headers

    img = tmp_path / "diff.vhdx"
    qemu_img("create", "-f", "vhdx", str(img), "8M")
    data = bytearray(img.read_bytes())
    table = data[192 * 1024 : 256 * 1024]
    meta_off = 0
    for i in range(struct.unpack("<I", table[8:12])[0]):
        e = table[16 + 32 * i : 48 + 32 * i]
        if headers._guid(e[:16]) == headers._VHDX_METADATA_REGION:
            meta_off = struct.unpack("<Q", e[16:24])[0]
    meta = data[meta_off : meta_off + 65536]
    for i in range(struct.unpack("<H", meta[10:12])[0]):
        e = meta[32 + 32 * i : 64 + 32 * i]
        if headers._guid(e[:16]) == headers._VHDX_FILE_PARAMETERS:
            at = meta_off + struct.unpack("<I", e[16:20])[0] + 4
            data[at] |= headers._VHDX_HAS_PARENT
    img.write_bytes(bytes(data))
    with pytest.raises(UnsafeImageError, match="VHDX differencing disk"):
        check_disk(img)


def test_vmdk_parent_inside_folder_is_followed(tmp_path: Path) -> None:
    base = tmp_path / "base.vmdk"
    qemu_img("create", "-f", "vmdk", str(base), "8M")
    snap = tmp_path / "snap.vmdk"
    qemu_img("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(snap))
    ref = check_disk(snap)
    assert ref.backing == (str(base),)


def test_split_vmdk_and_absolute_data_file_inside(tmp_path: Path) -> None:
    split = tmp_path / "split.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", str(split), "5G")
    assert check_disk(split).virtual_size == 5 << 30
    df = tmp_path / "df.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}", str(df), "8M")
    assert check_disk(df).format == "qcow2"
    # The data file is outside once its folder is not the image's: --allow-backing allows it.
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "df.qcow2").rename(other / "df.qcow2")
    with pytest.raises(UnsafeImageError, match="external data file"):
        check_disk(other / "df.qcow2")
    assert check_disk(other / "df.qcow2", allow_backing=(str(tmp_path),)).format == "qcow2"


def test_symlinked_source_is_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real" / "disk.qcow2"
    real.parent.mkdir()
    qemu_img("create", "-f", "qcow2", str(real), "8M")
    link = tmp_path / "link.qcow2"
    link.symlink_to(real)
    ref = check_disk(link)
    assert ref.path == str(real) and ref.given == str(link)
