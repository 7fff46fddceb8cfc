"""Windows cataloger and hive readers over hives built with hivexregedit (no appliance)."""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import defusedxml.ElementTree as ET
import pytest

from vmscan.catalog.windows import WindowsCataloger, find_hive, read_system
from vmscan.errors import VmscanError
from vmscan.guestfs_view import HostDirFS
from vmscan.hive import HiveError, HostHive, lookup, reg_int, reg_multi, reg_str, walk
from vmscan.model import OSInfo, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
REG = CORPUS / "registry"

pytestmark = [
    pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present"),
    pytest.mark.skipif(shutil.which("hivexregedit") is None, reason="hivexregedit missing"),
]

_CBS = r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing"
_TOKEN = "31bf3856ad364e35~amd64~"
EXTRA_SOFTWARE = rf"""Windows Registry Editor Version 5.00

[HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion]
"EditionID"="Professional"
"DisplayVersion"="22H2"
"CurrentBuildNumber"="19045"
"UBR"=dword:000016e0

[{_CBS}]

[{_CBS}\Packages]

[{_CBS}\Packages\Package_for_KB5011048~{_TOKEN}~10.0.1.2]

[{_CBS}\Packages\Package_1_for_KB5044273~{_TOKEN}~19041.5011.1.4]

[{_CBS}\Packages\Microsoft-Windows-Foundation-Package~{_TOKEN}~10.0.19041.1]
"""


_FS = HostDirFS


def _merge(hive: Path, prefix: str, reg: Path) -> None:
    subprocess.run(
        ["hivexregedit", "--merge", "--prefix", prefix, str(hive), str(reg)],
        check=True,
        capture_output=True,
    )


def _build_guest(tmp: Path, extra_software: str = "") -> Path:
    root = tmp / "guest"
    config = root / "WINDOWS" / "system32" / "Config"  # odd case on purpose
    config.mkdir(parents=True)
    for name, reg in (
        ("SOFTWARE", "phony-windows-software.reg"),
        ("SYSTEM", "phony-windows-system.reg"),
    ):
        hive = config / name
        shutil.copy(REG / "hivex-minimal-hive", hive)
        hive.chmod(0o644)
        _merge(hive, f"HKEY_LOCAL_MACHINE\\{name}", REG / reg)
    if extra_software:
        (tmp / "extra.reg").write_text(extra_software)
        _merge(config / "SOFTWARE", "HKEY_LOCAL_MACHINE\\SOFTWARE", tmp / "extra.reg")
    return root


def _ctx() -> ScanContext:
    os_info = OSInfo(type="windows", distro="windows", arch="x86_64")
    return ScanContext(root=RootResult(device="/dev/sda2", os=os_info), manifest=[])


def test_phony_windows_programs_match_virt_inspector(tmp_path: Path) -> None:
    fs = _FS(_build_guest(tmp_path))
    assert find_hive(fs, "SOFTWARE") == "/WINDOWS/system32/Config/SOFTWARE"
    cat = WindowsCataloger()
    ctx = _ctx()
    assert cat.applies(fs, ctx.root.os)
    pkgs = cat.catalog(fs, ctx)
    assert ctx.notes == []
    xml = ET.parse(REG / "phony-windows-virt-inspector-expected.xml").getroot()
    expected = sorted(
        (
            a.findtext("name"),
            a.findtext("display_name"),
            a.findtext("version"),
            a.findtext("publisher") or "",
        )
        for a in xml.iter("application")
    )
    mine = sorted(
        (p.extra["registry_key"], p.name, p.version, p.extra.get("publisher", "")) for p in pkgs
    )
    assert mine == expected
    by = {p.extra["registry_key"]: p for p in pkgs}
    assert by["test4"].arch == "x86"
    assert by["test1"].arch == "x86_64"
    assert by["test3"].extra["install_location"] == "C:\\Program Files\\Red Hat\\test3"
    assert all(p.found_by == "os/windows" for p in pkgs)
    extra = ctx.root.os.extra
    assert extra["product_name"] == "Microsoft Windows 7 Phony Edition"
    assert extra["installation_type"] == "Client"
    assert extra["current_version"] == "6.1"
    assert extra["hostname"] == "windows.invalid"
    assert extra["installed_kbs"] == []
    assert ctx.root.os.hostname == "windows.invalid"
    assert ctx.root.os.product_name == "Microsoft Windows 7 Phony Edition"


def test_build_ubr_and_kbs(tmp_path: Path) -> None:
    fs = _FS(_build_guest(tmp_path, EXTRA_SOFTWARE))
    ctx = _ctx()
    WindowsCataloger().catalog(fs, ctx)
    extra = ctx.root.os.extra
    assert extra["current_build"] == "19045"
    assert extra["ubr"] == 5856
    assert extra["edition_id"] == "Professional"
    assert extra["display_version"] == "22H2"
    assert extra["installed_kbs"] == ["KB5011048", "KB5044273"]


def test_real_windows10_system_hive(tmp_path: Path) -> None:
    hive_path = tmp_path / "SYSTEM"
    hive_path.write_bytes(lzma.decompress((REG / "regipy-SYSTEM_WIN_10_1709.xz").read_bytes()))
    hive = HostHive(hive_path)
    try:
        setup = lookup(hive, "Setup")
        assert setup is not None
        seen = set()
        for name, node in hive.children(setup):
            if name.startswith("Source OS"):
                vals = hive.values(node)
                seen.add((reg_str(vals.get("CurrentBuild")), reg_int(vals.get("UBR"))))
        assert seen == {("15063", 1387), ("17134", 765)}
        facts, notes = read_system(hive)
        assert facts["product_type"] == "WinNT"
        assert notes == []
    finally:
        hive.close()


def test_unicode_names_round_trip() -> None:
    hive = HostHive(REG / "hivex-special-unicode-hive")
    try:
        keys = {path: list(hive.values(node)) for path, node in walk(hive, hive.root())}
    finally:
        hive.close()
    assert keys["abcd_äöüß"] == ["abcd_äöüß"]
    assert keys["weird™"] == ["symbols $£₤₧€"]


def test_corrupt_hive_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "SYSTEM"
    bad.write_bytes(lzma.decompress((REG / "regipy-corrupted_system_hive.xz").read_bytes()))
    with pytest.raises(HiveError, match="cannot open hive"):
        HostHive(bad)
    junk = tmp_path / "junk"
    junk.write_bytes(b"regf" + b"\xff" * 5000)
    with pytest.raises(HiveError):
        HostHive(junk)
    with pytest.raises(HiveError, match="regf"):
        HostHive(REG / "phony-windows-system.reg")


def test_corrupt_software_hive_is_fatal_with_reason(tmp_path: Path) -> None:
    root = _build_guest(tmp_path)
    sw = root / "WINDOWS" / "system32" / "Config" / "SOFTWARE"
    sw.write_bytes(lzma.decompress((REG / "regipy-corrupted_system_hive.xz").read_bytes()))
    with pytest.raises(VmscanError, match="SOFTWARE"):
        WindowsCataloger().catalog(_FS(root), _ctx())


def test_corrupt_system_hive_is_a_note(tmp_path: Path) -> None:
    root = _build_guest(tmp_path)
    sysh = root / "WINDOWS" / "system32" / "Config" / "SYSTEM"
    sysh.write_bytes(lzma.decompress((REG / "regipy-corrupted_system_hive.xz").read_bytes()))
    ctx = _ctx()
    pkgs = WindowsCataloger().catalog(_FS(root), ctx)
    assert len(pkgs) == 4
    assert any("SYSTEM" in n for n in ctx.notes)


def test_reg_decoders() -> None:
    assert reg_str((1, "abc\0".encode("utf-16-le"))) == "abc"
    assert reg_str((1, b"a\x00b")) == "a"  # odd length: last byte dropped
    assert reg_int((4, b"\x01\x00\x00\x00")) == 1
    assert reg_int((4, b"\x01")) is None
    assert reg_int((11, (2**40).to_bytes(8, "little"))) == 2**40
    assert reg_multi((7, "a\0b\0\0".encode("utf-16-le"))) == ["a", "b"]
    assert reg_str((4, b"\x05\x00\x00\x00")) == "5"


def test_windows11_product_name_corrected(tmp_path: Path) -> None:
    reg = (
        "Windows Registry Editor Version 5.00\n\n"
        "[HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion]\n"
        '"ProductName"="Windows 10 Pro"\n'
        '"CurrentBuildNumber"="22631"\n'
        '"DisplayVersion"="23H2"\n'
        '"UBR"=dword:00000c6c\n'
    )
    fs = _FS(_build_guest(tmp_path, reg))
    ctx = _ctx()
    WindowsCataloger().catalog(fs, ctx)
    assert ctx.root.os.extra["product_name"] == "Windows 10 Pro"
    assert ctx.root.os.product_name == "Windows 11 Pro"
    assert ctx.root.os.extra["ubr"] == 3180
