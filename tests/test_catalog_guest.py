"""Catalogers through a real libguestfs appliance (LibguestfsFS, GuestHive): one launch."""

from __future__ import annotations

import lzma
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmscan.catalog.apk import ApkCataloger
from vmscan.catalog.dpkg import DpkgCataloger
from vmscan.catalog.rpm import RpmCataloger
from vmscan.catalog.windows import WindowsCataloger
from vmscan.guestfs_view import LibguestfsFS
from vmscan.hive import GuestHive, HiveError
from vmscan.model import OSInfo, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
REG = CORPUS / "registry"

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present"),
    pytest.mark.skipif(shutil.which("hivexregedit") is None, reason="hivexregedit missing"),
]


def _hive(tmp: Path, name: str, reg: str) -> Path:
    out = tmp / name
    shutil.copy(REG / "hivex-minimal-hive", out)
    out.chmod(0o644)
    subprocess.run(
        [
            "hivexregedit",
            "--merge",
            "--prefix",
            f"HKEY_LOCAL_MACHINE\\{name}",
            str(out),
            str(REG / reg),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    guestfs = pytest.importorskip("guestfs")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    tmp = tmp_path_factory.mktemp("guest")
    f36 = tmp / "rpmdb.sqlite"
    con = sqlite3.connect(f36)
    con.executescript(
        lzma.decompress((CORPUS / "rpm/fedora36-sqlite/rpmdb.sql.xz").read_bytes()).decode()
    )
    con.commit()
    con.close()
    software = _hive(tmp, "SOFTWARE", "phony-windows-software.reg")
    system = _hive(tmp, "SYSTEM", "phony-windows-system.reg")
    corrupt = tmp / "corrupt"
    corrupt.write_bytes(lzma.decompress((REG / "regipy-corrupted_system_hive.xz").read_bytes()))
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_scratch(128 * 1024 * 1024)
    g.launch()
    g.mkfs("ext4", "/dev/sda")
    g.mount("/dev/sda", "/")
    files = {
        "/var/lib/dpkg/status": CORPUS / "dpkg/scalibr-valid",
        "/usr/lib/sysimage/rpm/rpmdb.sqlite": f36,
        "/var/lib/rpm/Packages": CORPUS / "rpm/centos8-libuuid-bdb/Packages",
        "/lib/apk/db/installed": CORPUS / "apk/scalibr-alpine318-installed",
        "/Windows/System32/config/SOFTWARE": software,
        "/Windows/System32/config/SYSTEM": system,
        "/corrupt.hive": corrupt,
    }
    for guest, host in files.items():
        g.mkdir_p(os.path.dirname(guest))
        g.upload(str(host), guest)
    try:
        yield g
    finally:
        g.close()


def _ctx(os_info: OSInfo | None = None) -> ScanContext:
    return ScanContext(root=RootResult(device="/dev/sda", os=os_info or OSInfo()), manifest=[])


def test_dpkg_apk_rpm_in_appliance(handle: Any) -> None:
    fs = LibguestfsFS(handle)
    ctx = _ctx()
    assert len(DpkgCataloger().catalog(fs, ctx)) == 7
    assert len(ApkCataloger().catalog(fs, ctx)) == 15
    rpm = RpmCataloger().catalog(fs, ctx)
    assert len(rpm) == 172  # sqlite is preferred over the older bdb file
    assert any("several rpm databases" in n for n in ctx.notes)


def test_windows_through_guest_hivex(handle: Any) -> None:
    fs = LibguestfsFS(handle)
    ctx = _ctx(OSInfo(type="windows", arch="x86_64"))
    cat = WindowsCataloger()
    assert cat.applies(fs, ctx.root.os)
    pkgs = cat.catalog(fs, ctx)
    assert sorted(p.extra["registry_key"] for p in pkgs) == ["test1", "test2", "test3", "test4"]
    assert ctx.root.os.extra["hostname"] == "windows.invalid"
    assert ctx.notes == []


def test_one_guest_hive_at_a_time_and_corrupt(handle: Any) -> None:
    with GuestHive(handle, "/Windows/System32/config/SOFTWARE") as hive:
        assert hive.children(hive.root())
        with pytest.raises(HiveError, match="already open"):
            GuestHive(handle, "/Windows/System32/config/SYSTEM")
    with pytest.raises(HiveError, match="cannot open hive"):
        GuestHive(handle, "/corrupt.hive")
    # The handle is usable again after the failure.
    with GuestHive(handle, "/Windows/System32/config/SYSTEM") as hive:
        assert hive.child(hive.root(), "Select") is not None


def test_guest_hive_and_host_hive_agree(handle: Any, tmp_path: Path) -> None:
    """The two Hive implementations return the same keys and raw values."""
    from vmscan.hive import HostHive, walk

    path = "/Windows/System32/config/SOFTWARE"
    handle.download(path, str(tmp_path / "SOFTWARE"))

    def dump(hive: Any) -> dict[str, dict[str, tuple[int, bytes]]]:
        out = {"": hive.values(hive.root())}
        for key, node in walk(hive, hive.root()):
            out[key] = hive.values(node)
        return out

    with GuestHive(handle, path) as guest:
        in_guest = dump(guest)
    with HostHive(tmp_path / "SOFTWARE") as host:
        on_host = dump(host)
    assert in_guest == on_host
    assert len(in_guest) > 10


def _open_fixture(name: str) -> Any:
    """A read-only handle on fixture *name* with its root mounted (skips when absent)."""
    guestfs = pytest.importorskip("guestfs")
    import fixtures

    if name not in fixtures.names():
        pytest.skip(f"fixture {name} not defined")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    image = fixtures.build(name, "qcow2")
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), readonly=1, format="qcow2")
    g.launch()
    root = g.inspect_os()[0]
    mps = g.inspect_get_mountpoints(root)
    for mp in sorted(mps, key=len):
        g.mount_ro(mps[mp], mp)
    return g, root


def test_windows_fixture_guest(tmp_path: Path) -> None:
    """windows-phony: programs, facts and KBs through libguestfs, then the patch check."""
    from vmscan.checks.patch import PatchCheck

    g, root = _open_fixture("windows-phony")
    try:
        os_info = OSInfo(
            type=g.inspect_get_type(root),
            distro=g.inspect_get_distro(root),
            product_name=g.inspect_get_product_name(root),
            arch=g.inspect_get_arch(root),
        )
        apps = g.inspect_list_applications2(root)
        ctx = _ctx(os_info)
        fs = LibguestfsFS(g)
        pkgs = WindowsCataloger().catalog(fs, ctx)
        ctx.root.packages.extend(pkgs)
        ctx.options["today"] = "2025-01-01"
        findings = PatchCheck().run(fs, ctx)
    finally:
        g.close()
    assert sorted((p.name, p.version) for p in pkgs) == sorted(
        (a["app2_display_name"], a["app2_version"]) for a in apps
    )
    assert len(pkgs) == 4
    extra = ctx.root.os.extra
    assert (extra["current_build"], extra["ubr"]) == ("19045", 5011)
    assert extra["installed_kbs"] == ["KB5011048", "KB5044273"]
    assert extra["hostname"] == "PHONY-WIN10"
    cu = [f for f in findings if f.rule_id == "windows-cu/19045"]
    assert cu and cu[0].details["updates_behind"] == 12


def test_rocky_fixture_guest() -> None:
    """rocky9-rpm: the rpmdb written by real rpm, read out of the guest."""
    g, _root = _open_fixture("rocky9-rpm")
    try:
        ctx = _ctx(OSInfo(type="linux", distro="rocky", os_release_id="rocky", version_id="9.3"))
        pkgs = RpmCataloger().catalog(LibguestfsFS(g), ctx)
    finally:
        g.close()
    assert ctx.notes == []
    got = {p.name: p for p in pkgs}
    assert set(got) == {"bash", "curl", "libcurl", "openssl-libs", "glibc", "rocky-release"}
    assert got["openssl-libs"].version == "1:3.0.7-24.el9"
    assert got["libcurl"].source_name == "curl"
    assert got["rocky-release"].arch == "noarch"


def test_mariner_fixture_guest_equals_rpm_qa(tmp_path: Path) -> None:
    """mariner2-rpm: every package ``rpm -qa`` lists, with epoch, version, release, arch."""
    if shutil.which("rpm") is None:
        pytest.skip("rpm not installed")
    g, _root = _open_fixture("mariner2-rpm")
    try:
        os_info = OSInfo(type="linux", os_release_id="mariner", version_id="2.0")
        ctx = _ctx(os_info)
        pkgs = RpmCataloger().catalog(LibguestfsFS(g), ctx)
        (tmp_path / "db").mkdir()
        g.download("/var/lib/rpm/rpmdb.sqlite", str(tmp_path / "db" / "rpmdb.sqlite"))
    finally:
        g.close()
    out = subprocess.run(
        [
            "rpm",
            "-qa",
            "--dbpath",
            str(tmp_path / "db"),
            "--qf",
            "%{NAME} %{EPOCH} %{VERSION} %{RELEASE} %{ARCH}\\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = sorted(out.splitlines())
    mine = sorted(
        f"{p.name} {p.extra['epoch'] if p.extra['epoch'] is not None else '(none)'} "
        f"{p.extra['version']} {p.extra['release']} {p.arch}"
        for p in pkgs
    )
    assert mine == expected
    assert len(mine) == 9
    assert ctx.notes == []


def test_catalogers_from_the_stream_equal_the_appliance(handle: Any) -> None:
    """Package databases and hives declared by the catalogers come in ONE tar_out and
    are read from it (rpm's copied to the host, the hives parsed there with hivex): the
    same packages and facts as through libguestfs, no read left to the appliance."""
    from vmscan.guestcall import GuestHandle
    from vmscan.guestindex import FileIndex, IndexedFS
    from vmscan.manifest import build_manifest
    from vmscan.plugins import prefetch
    from vmscan.stream import TarStream

    h = GuestHandle(handle)
    index = FileIndex()
    entries, _ = build_manifest(h, [("/", "/dev/sda")], walk=index)
    index.finish(h)
    idx = IndexedFS(index, LibguestfsFS(h))
    cats = [DpkgCataloger(), ApkCataloger(), RpmCataloger(), WindowsCataloger()]
    win = OSInfo(type="windows", arch="x86_64")
    ctx = ScanContext(root=RootResult(device="/dev/sda", os=win), manifest=entries)
    calls = TarStream.calls
    rep = prefetch(h, idx, ctx, cats, blob_only_min=1)
    assert rep.tar_out_calls == TarStream.calls - calls == 1
    assert "/Windows/System32/config/SOFTWARE" in idx.blobs
    assert "/corrupt.hive" not in idx.blobs  # nobody asked for it

    def run(fs: Any) -> tuple[list[tuple[str, str, str]], dict[str, Any], list[str]]:
        c = _ctx(OSInfo(type="windows", arch="x86_64"))
        got = [(p.found_by, p.name, p.version) for cat in cats for p in cat.catalog(fs, c)]
        return sorted(got), dict(c.root.os.extra), sorted(c.notes)

    assert run(idx) == run(LibguestfsFS(h))
    assert not idx.read_fallbacks, idx.read_fallback_paths
    assert idx.streamed_reads >= 5
