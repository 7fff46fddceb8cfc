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
from vmscan.guestcall import GuestHandle
from vmscan.guestfs_view import HostDirFS, LibguestfsFS
from vmscan.guestindex import FileIndex, IndexedFS
from vmscan.license.copyright import is_copyright_file, read_package_copyright
from vmscan.manifest import build_manifest
from vmscan.model import FileEntry, OSInfo, Package, RootResult
from vmscan.plugins import ScanContext, prefetch

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
HOST_DOC = Path("/usr/share/doc")
HOST_STATUS = Path("/var/lib/dpkg/status")

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present"),
    pytest.mark.skipif(not HOST_STATUS.is_file(), reason="not a Debian host"),
]


_FS = HostDirFS


def _host_packages() -> list[str]:
    names: list[str] = []
    for para in HOST_STATUS.read_text(errors="replace").split("\n\n"):
        m = re.search(r"^Package:\s*(\S+)", para, re.M)
        if m and re.search(r"^Status:.*\binstalled$", para, re.M):
            names.append(m.group(1))
    return names


def _tar(out: Path) -> list[FileEntry]:
    """The host's copyright files and doc-dir symlinks, plus the PE files; their manifest."""
    manifest: list[FileEntry] = []

    def add(host: Path, arc: str) -> None:
        tar.add(host, arc, recursive=False)
        if host.is_file() and not host.is_symlink():
            st = host.stat()
            manifest.append(FileEntry("/dev/sda", "/" + arc, st.st_size, st.st_mode, 0, 0, 0, None))

    with tarfile.open(out, "w") as tar:
        for entry in sorted(HOST_DOC.iterdir()):
            arc = f"usr/share/doc/{entry.name}"
            if entry.is_symlink():
                add(entry, arc)
                continue
            cr = entry / "copyright"
            if entry.is_dir() and (cr.is_file() or cr.is_symlink()):
                add(entry, arc)
                add(cr, arc + "/copyright")
        add(CORPUS / "pe/putty.exe", "Program Files/PuTTY/putty.exe")
        add(CORPUS / "pe/pwsh.exe", "Program Files/PowerShell/7/pwsh.exe")
    return manifest


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[FileEntry]]]:
    guestfs = pytest.importorskip("guestfs")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    tar = tmp_path_factory.mktemp("lic") / "tree.tar"
    manifest = _tar(tar)
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_scratch(256 * 1024 * 1024)
    g.launch()
    g.mkfs("ext4", "/dev/sda")
    g.mount("/dev/sda", "/")
    g.tar_in(str(tar), "/")
    try:
        yield g, manifest
    finally:
        g.close()


def test_debian_licences_in_appliance(guest: tuple[Any, list[FileEntry]]) -> None:
    """The copyright files come in the root's one stream (declared by the check's
    requirements) and every read of them is served from it."""
    handle, _manifest = guest
    h = GuestHandle(handle)
    index = FileIndex()
    entries, _ = build_manifest(h, [("/", "/dev/sda")], walk=index)
    index.finish(h)
    fs = IndexedFS(index, LibguestfsFS(h))
    pkgs = [
        Package(name=n, version="1", found_by="os/dpkg", purl=f"pkg:deb/debian/{n}@1")
        for n in _host_packages()
    ]
    ctx = ScanContext(
        root=RootResult(device="/dev/sda", os=OSInfo(type="linux", distro="debian"), packages=pkgs),
        manifest=entries,
    )
    check = LicenseCheck()
    rep = prefetch(h, fs, ctx, [check])
    copyrights = [e for e in entries if is_copyright_file(e)]
    assert rep.tar_out_calls == 1
    assert rep.blobs_kept == len(copyrights) > 100
    check.run(fs, ctx)
    assert not fs.read_fallbacks, fs.read_fallbacks
    assert fs.streamed_reads >= len(copyrights)
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


def test_per_file_reads_agree_with_bulk(guest: tuple[Any, list[FileEntry]]) -> None:
    """Without a handle (one file at a time through LibguestfsFS): the same answers."""
    handle, _ = guest
    fs = LibguestfsFS(handle)
    names = ["bash", "coreutils", "curl", "libc6"]
    names += [e.name for e in sorted(HOST_DOC.iterdir()) if e.is_symlink()][:8]
    host = _FS("/")
    for name in names:
        got, path = read_package_copyright(fs, name)
        want, _ = read_package_copyright(host, name)
        assert got.licenses == want.licenses, name
        if want.licenses:
            assert path.endswith("/copyright")


def test_windows_programs_on_disk_in_appliance(guest: tuple[Any, list[FileEntry]]) -> None:
    handle, manifest = guest
    fs = LibguestfsFS(handle)
    os_info = OSInfo(
        type="windows",
        product_name="Windows Server 2022 Datacenter",
        extra={"edition_id": "ServerDatacenter", "installation_type": "Server"},
    )
    ctx = ScanContext(
        root=RootResult(device="/dev/sda", os=os_info),
        manifest=[m for m in manifest if m.path.startswith("/Program Files/")],
    )
    findings = LicenseCheck().run(fs, ctx)
    found = {
        (p.name, p.version, p.extra.get("publisher"))
        for p in ctx.root.packages
        if p.found_by == "windows/pe"
    }
    assert ("PuTTY suite", "0.73", "Simon Tatham") in found
    assert ("PowerShell", "7.3.4", "Microsoft Corporation") in found
    assert any(f.rule_id == "license.watch.windows-server" for f in findings)
