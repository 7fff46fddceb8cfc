"""Windows inventory: OS edition, programs found on disk by their version resources, stale
Uninstall entries; real PE files from the shared corpus planted in a HostDirFS tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vmscan.checks.license import LicenseCheck
from vmscan.guestfs_view import HostDirFS
from vmscan.license.windows_inventory import (
    candidate_exes,
    clean_version,
    cross_check,
    os_edition,
    windows_path,
)
from vmscan.model import FileEntry, OSInfo, Package, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PE = CORPUS / "pe"

needs_pe = pytest.mark.skipif(not PE.is_dir(), reason="../shared/corpus not present")


_FS = HostDirFS


def _win_os() -> OSInfo:
    return OSInfo(
        type="windows",
        distro="windows",
        product_name="Windows Server 2019 Standard",
        major_version=10,
        minor_version=0,
        extra={
            "product_name": "Windows Server 2019 Standard",
            "edition_id": "ServerStandard",
            "installation_type": "Server Core",
            "current_build": "17763",
        },
    )


def _plant(root: Path, files: dict[str, bytes]) -> list[FileEntry]:
    manifest: list[FileEntry] = []
    for guest, data in files.items():
        host = root / guest.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)
        manifest.append(
            FileEntry(
                device="/dev/sda2",
                path=guest,
                size=len(data),
                mode=0o100644,
                uid=0,
                gid=0,
                mtime=0,
                sha256=None,
            )
        )
    return manifest


def _mis_encoded(data: bytes) -> bytes:
    name = "PuTTY suite".encode("utf-16-le")
    i = data.find(name)
    assert i > 0
    # A lone UTF-16 high surrogate where "P" was: not decodable text.
    return data[:i] + b"\x00\xd8" + data[i + 2 :]


@pytest.fixture
def windows_tree(tmp_path: Path) -> tuple[Path, list[FileEntry]]:
    if not PE.is_dir():
        pytest.skip("../shared/corpus not present")
    putty = (PE / "putty.exe").read_bytes()
    files = {
        "/Program Files/PuTTY/putty.exe": putty,
        "/Program Files/PowerShell/7/pwsh.exe": (PE / "pwsh.exe").read_bytes(),
        "/Program Files (x86)/Tiny/tiny.exe": (PE / "impbyord-noversion.exe").read_bytes(),
        "/Program Files/Odd/odd.exe": _mis_encoded(putty),
        "/Program Files/Broken/broken.exe": b"MZ" + b"\xff" * 300,
        "/Program Files/PuTTY/unins000.exe": b"MZ not read",
        "/Windows/System32/notepad.exe": (PE / "pwsh.exe").read_bytes(),
    }
    manifest = _plant(tmp_path, files)
    (tmp_path / "Program Files/Still There").mkdir(parents=True)
    return tmp_path, manifest


def _uninstall(name: str, version: str, location: str = "", publisher: str = "") -> Package:
    return Package(
        name=name,
        version=version,
        found_by="os/windows",
        extra={"install_location": location, "publisher": publisher},
    )


def test_os_edition_from_cataloger_extra() -> None:
    ed = os_edition(_win_os())
    assert ed["product_name"] == "Windows Server 2019 Standard"
    assert ed["edition_id"] == "ServerStandard"
    assert ed["installation_type"] == "Server Core"
    assert ed["build"] == "17763"
    client = os_edition(OSInfo(type="windows", product_name="Windows 10 Pro"))
    assert client["installation_type"] == "Client"


def test_windows_path() -> None:
    assert windows_path("C:\\Program Files\\PuTTY\\") == "/Program Files/PuTTY"
    assert windows_path('"c:\\Tools"') == "/Tools"
    assert windows_path("D:\\Apps\\x") is None
    assert windows_path("") is None
    assert windows_path("relative\\dir") is None


def test_clean_version() -> None:
    assert clean_version("Release 0.73") == "0.73"
    assert clean_version("7.3.4 SHA: b59f05d5") == "7.3.4"
    assert clean_version(None, "1,2,3,4") == "1.2.3.4"
    assert clean_version("beta") == "beta"


@needs_pe
def test_programs_found_on_disk_without_uninstall_entry(
    windows_tree: tuple[Path, list[FileEntry]],
) -> None:
    root, manifest = windows_tree
    pkgs = [
        _uninstall("Gone App", "1.0", "C:\\Program Files\\Gone\\"),
        _uninstall("Still There", "2.0", "C:\\Program Files\\Still There"),
    ]
    inv = cross_check(_FS(root), pkgs, manifest)
    found = {(p.name, p.version): p for p in inv.new_packages}
    assert ("PuTTY suite", "0.73") in found
    assert ("PowerShell", "7.3.4") in found
    putty = found[("PuTTY suite", "0.73")]
    assert putty.found_by == "windows/pe"
    assert putty.extra["publisher"] == "Simon Tatham"
    assert putty.extra["install_location"] == "/Program Files/PuTTY"
    assert putty.extra["uninstall_entry"] is False
    assert found[("PowerShell", "7.3.4")].extra["publisher"] == "Microsoft Corporation"
    # Only program folders are searched; uninstallers are skipped.
    files = [f for p in found.values() for f in p.extra["files"]]
    assert all("System32" not in f for f in files)
    assert inv.exes_without_version == 1  # the tiny i386 PE with no version resource
    assert [p.name for p in inv.stale] == ["Gone App"]
    assert pkgs[0].extra["stale"] is True
    assert "stale" not in pkgs[1].extra
    assert any("not a readable PE" in n for n in inv.notes)


@needs_pe
def test_uninstall_entry_verified_by_location(
    windows_tree: tuple[Path, list[FileEntry]],
) -> None:
    root, manifest = windows_tree
    putty = _uninstall(
        "PuTTY release 0.73 (64-bit)", "0.73.0.0", "C:\\Program Files\\PuTTY\\", "Simon Tatham"
    )
    inv = cross_check(_FS(root), [putty], manifest)
    assert "PuTTY suite" not in {p.name for p in inv.new_packages}
    assert putty.extra["pe_verified"][0]["product"] == "PuTTY suite"
    assert "pe_version_differs" not in putty.extra


@needs_pe
def test_exe_cap_is_noted(windows_tree: tuple[Path, list[FileEntry]]) -> None:
    root, manifest = windows_tree
    inv = cross_check(_FS(root), [], manifest, max_exes=1)
    assert inv.exes_read == 1
    assert any("only 1 read" in n for n in inv.notes)


def test_candidate_exes_per_user_installs() -> None:
    fe = FileEntry(
        device="d",
        path="/Users/bob/AppData/Local/Programs/Code/Code.exe",
        size=1,
        mode=0o100644,
        uid=0,
        gid=0,
        mtime=0,
        sha256=None,
    )
    got = candidate_exes([fe], [])
    assert got == [(fe.path, 1, "/Users/bob/AppData/Local/Programs/Code")]


@needs_pe
def test_license_check_on_windows_root(windows_tree: tuple[Path, list[FileEntry]]) -> None:
    root, manifest = windows_tree
    rr = RootResult(
        device="/dev/sda2",
        os=_win_os(),
        packages=[
            _uninstall("Gone App", "1.0", "C:\\Program Files\\Gone"),
            _uninstall(
                "Microsoft SQL Server 2019 (64-bit)", "15.0.2000.5", "", "Microsoft Corporation"
            ),
        ],
    )
    ctx = ScanContext(root=rr, manifest=manifest)
    findings = LicenseCheck().run(_FS(root), ctx)
    names = {p.name: p for p in rr.packages}
    assert names["PuTTY suite"].found_by == "windows/pe"
    assert names["PowerShell"].version == "7.3.4"
    sec = rr.sections["license"]
    assert sec["os_edition"]["installation_type"] == "Server Core"
    assert "PuTTY suite@0.73" in sec["windows"]["found_on_disk_only"]
    assert sec["windows"]["stale_uninstall_entries"] == ["Gone App@1.0"]
    rules = {f.rule_id for f in findings}
    assert "license.windows.stale-uninstall-entry" in rules
    assert "license.watch.windows-server" in rules
    assert "license.watch.sql-server" in rules
    watched = {(w["id"], w["edition"]) for w in sec["watched"]}
    assert ("windows-server", "ServerStandard (Server Core)") in watched
    assert ("sql-server", "2019") in watched
    assert all(f.check == "license" for f in findings)
    # No per-program "unknown" finding by default (report_windows_programs = false).
    assert not any(f.rule_id == "license.unknown" for f in findings)
    # Windows programs state no licence: unknown, never guessed.
    assert names["PuTTY suite"].licenses == []
    assert names["PuTTY suite"].license_source == "unknown"


@needs_pe
def test_mis_encoded_version_resource_gives_an_answer(tmp_path: Path) -> None:
    data = _mis_encoded((PE / "putty.exe").read_bytes())
    manifest = _plant(tmp_path, {"/Program Files/Odd/odd.exe": data})
    inv = cross_check(_FS(tmp_path), [], manifest)
    assert len(inv.new_packages) == 1
    pkg = inv.new_packages[0]
    assert pkg.version == "0.73"
    assert pkg.name == "\ufffduTTY suite"
    assert "mis-encoded" in pkg.extra["notes"][0]
    json.dumps(pkg.extra, ensure_ascii=False).encode("utf-8")  # valid text for the report
    shutil.rmtree(tmp_path / "Program Files")


def test_windows_programs_reported_when_asked(tmp_path: Path) -> None:
    rr = RootResult(device="/dev/sda2", os=_win_os(), packages=[_uninstall("Tool", "1")])
    opts = {"license_policy": {"report": ["unknown"], "report_windows_programs": True}}
    ctx = ScanContext(root=rr, manifest=[], options=opts)
    findings = LicenseCheck().run(_FS(tmp_path), ctx)
    unknown = [f for f in findings if f.rule_id == "license.unknown"]
    assert [f.details["package"] for f in unknown] == ["Tool"]
    assert unknown[0].details["rule"] == "no-licence"
