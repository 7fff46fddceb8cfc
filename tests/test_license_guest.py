"""The licence check through a real libguestfs appliance (LibguestfsFS): one launch.

The guest disk holds this Debian 12 host's real copyright files (with the doc-dir symlinks
dpkg made) and, under Program Files, the corpus' PuTTY and PowerShell executables with no
Uninstall entry.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmscan.checks.license import LicenseCheck
from vmscan.guestfs_view import LibguestfsFS
from vmscan.model import FileEntry, OSInfo, Package, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
HOST_DOC = Path("/usr/share/doc")
HOST_STATUS = Path("/var/lib/dpkg/status")

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present"),
    pytest.mark.skipif(not HOST_STATUS.is_file(), reason="not a Debian host"),
]


def _host_packages() -> list[str]:
    names: list[str] = []
    for para in HOST_STATUS.read_text(errors="replace").split("\n\n"):
        m = re.search(r"^Package:\s*(\S+)", para, re.M)
        if m and re.search(r"^Status:.*\binstalled$", para, re.M):
            names.append(m.group(1))
    return names


def _tar(out: Path) -> None:
    """The host's copyright files and doc-dir symlinks, plus the PE files."""
    with tarfile.open(out, "w") as tar:
        for entry in sorted(HOST_DOC.iterdir()):
            arc = f"usr/share/doc/{entry.name}"
            if entry.is_symlink():
                tar.add(entry, arc, recursive=False)
                continue
            cr = entry / "copyright"
            if entry.is_dir() and (cr.is_file() or cr.is_symlink()):
                tar.add(entry, arc, recursive=False)
                tar.add(cr, arc + "/copyright", recursive=False)
        tar.add(CORPUS / "pe/putty.exe", "Program Files/PuTTY/putty.exe")
        tar.add(CORPUS / "pe/pwsh.exe", "Program Files/PowerShell/7/pwsh.exe")


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    guestfs = pytest.importorskip("guestfs")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    tar = tmp_path_factory.mktemp("lic") / "tree.tar"
    _tar(tar)
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_scratch(256 * 1024 * 1024)
    g.launch()
    g.mkfs("ext4", "/dev/sda")
    g.mount("/dev/sda", "/")
    g.tar_in(str(tar), "/")
    try:
        yield g
    finally:
        g.close()


def test_debian_licences_in_appliance(handle: Any) -> None:
    fs = LibguestfsFS(handle)
    pkgs = [
        Package(name=n, version="1", found_by="os/dpkg", purl=f"pkg:deb/debian/{n}@1")
        for n in _host_packages()
    ]
    ctx = ScanContext(
        root=RootResult(device="/dev/sda", os=OSInfo(type="linux", distro="debian"), packages=pkgs),
        manifest=[],
    )
    LicenseCheck().run(fs, ctx)
    by = {p.name: p for p in pkgs}
    with_lic = sum(1 for p in pkgs if p.licenses)
    assert with_lic / len(pkgs) >= 0.95, f"{with_lic}/{len(pkgs)}"
    for name in ("bash", "coreutils"):
        if name in by:
            assert by[name].licenses[0] == "GPL-3.0-or-later"
    if "curl" in by:
        assert by["curl"].licenses[0] == "curl"
    # Doc dirs that are symlinks to another package's are followed inside the guest.
    linked = [e.name for e in HOST_DOC.iterdir() if e.is_symlink() and e.name in by]
    for name in linked[:10]:
        if (HOST_DOC / name / "copyright").is_file():
            assert by[name].licenses, name
    assert ctx.root.sections["license"]["with_license"] == with_lic


def test_windows_programs_on_disk_in_appliance(handle: Any) -> None:
    fs = LibguestfsFS(handle)
    manifest = [
        FileEntry(
            device="/dev/sda",
            path=p,
            size=int(handle.filesize(p)),
            mode=0o100644,
            uid=0,
            gid=0,
            mtime=0,
            sha256=None,
        )
        for p in ("/Program Files/PuTTY/putty.exe", "/Program Files/PowerShell/7/pwsh.exe")
    ]
    os_info = OSInfo(
        type="windows",
        product_name="Windows Server 2022 Datacenter",
        extra={"edition_id": "ServerDatacenter", "installation_type": "Server"},
    )
    ctx = ScanContext(root=RootResult(device="/dev/sda", os=os_info), manifest=manifest)
    findings = LicenseCheck().run(fs, ctx)
    found = {
        (p.name, p.version, p.extra.get("publisher"))
        for p in ctx.root.packages
        if p.found_by == "windows/pe"
    }
    assert ("PuTTY suite", "0.73", "Simon Tatham") in found
    assert ("PowerShell", "7.3.4", "Microsoft Corporation") in found
    assert any(f.rule_id == "license.watch.windows-server" for f in findings)
