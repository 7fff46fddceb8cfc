"""rpm cataloger: SQLite, BerkeleyDB and NDB databases from the real-world corpus."""

from __future__ import annotations

import contextlib
import lzma
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

import defusedxml.ElementTree as ET
import pytest

from vmscan.catalog.rpm import RpmCataloger, header_to_package, parse_db_file, sniff
from vmscan.catalog.rpm.errors import RpmDbError
from vmscan.catalog.rpm.header import HeaderError, read_header, source_name_version
from vmscan.guestfs_view import HostDirFS
from vmscan.model import OSInfo, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
RPM = CORPUS / "rpm"
BDB = RPM / "centos8-libuuid-bdb" / "Packages"
NDB = RPM / "sle15-bci-ndb" / "Packages.db"
F36_SQL = RPM / "fedora36-sqlite" / "rpmdb.sql.xz"
F36_XML = RPM / "fedora36-sqlite" / "virt-inspector-expected.xml"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")


_FS = HostDirFS


@pytest.fixture(scope="module")
def f36_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("f36") / "rpmdb.sqlite"
    con = sqlite3.connect(out)
    con.executescript(lzma.decompress(F36_SQL.read_bytes()).decode())
    con.commit()
    con.close()
    return out


def _rpm_qa(dbdir: Path, backend: str | None = None) -> list[str]:
    if shutil.which("rpm") is None:
        pytest.skip("rpm not installed")
    cmd = [
        "rpm",
        "-qa",
        "--dbpath",
        str(dbdir),
        "--qf",
        "%{NAME} %{EPOCHNUM} %{VERSION} %{RELEASE} %{ARCH}\\n",
    ]
    if backend:
        cmd += ["--define", f"_db_backend {backend}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return sorted(out.splitlines())


def _mine(path: Path) -> list[str]:
    res = parse_db_file(path)
    assert res.notes == []
    return sorted(
        f"{h.name} {h.epoch or 0} {h.version} {h.release} {h.arch or '(none)'}" for h in res.headers
    )


def test_bdb_one_package_like_rpm(tmp_path: Path) -> None:
    shutil.copy(BDB, tmp_path / "Packages")
    mine = _mine(tmp_path / "Packages")
    assert mine == ["libuuid 0 2.32.1 42.el8_8 x86_64"]
    assert mine == _rpm_qa(tmp_path, "bdb_ro")


def test_ndb_35_packages() -> None:
    res = parse_db_file(NDB)
    assert res.notes == []
    assert len(res.headers) == 35
    assert len({h.name for h in res.headers}) == 35
    assert all(h.vendor.startswith("SUSE") for h in res.headers if h.name != "gpg-pubkey")
    pkg = header_to_package(
        next(h for h in res.headers if h.name == "system-user-root"),
        OSInfo(os_release_id="sles", version_id="15.3"),
    )
    assert pkg.purl.startswith("pkg:rpm/suse/system-user-root@20190513-3.3.1?arch=noarch")


def test_sqlite_fedora36_like_rpm_and_virt_inspector(f36_sqlite: Path) -> None:
    mine = _mine(f36_sqlite)
    assert len(mine) == 172
    root = ET.parse(F36_XML).getroot()
    expected = sorted(
        " ".join(
            [
                app.findtext("name") or "",
                app.findtext("epoch") or "0",
                app.findtext("version") or "",
                app.findtext("release") or "",
                app.findtext("arch") or "(none)",
            ]
        )
        for app in root.iter("application")
    )
    assert mine == expected
    assert mine == _rpm_qa(f36_sqlite.parent)


def test_package_fields(f36_sqlite: Path) -> None:
    res = parse_db_file(f36_sqlite)
    os_info = OSInfo(os_release_id="fedora", version_id="36")
    by = {h.name: header_to_package(h, os_info) for h in res.headers}
    gmp = by["gmp"]
    assert gmp.version == "1:6.2.1-2.fc36"
    assert gmp.arch == "x86_64"
    assert gmp.source_name == "gmp"
    assert gmp.source_version == "1:6.2.1-2.fc36"
    assert gmp.found_by == "os/rpm"
    assert gmp.extra["license_declared"]
    assert gmp.purl == (
        "pkg:rpm/fedora/gmp@6.2.1-2.fc36?arch=x86_64&distro=fedora-36&epoch=1"
        "&upstream=gmp-6.2.1-2.fc36.src.rpm"
    )


def test_source_name_version() -> None:
    assert source_name_version("util-linux-2.32.1-42.el8_8.src.rpm") == (
        "util-linux",
        "2.32.1-42.el8_8",
    )
    assert source_name_version("(none)") == ("", "")
    assert source_name_version("x.src.rpm") == ("", "")


def test_cataloger_finds_db_by_presence(tmp_path: Path, f36_sqlite: Path) -> None:
    (tmp_path / "a/usr/lib/sysimage/rpm").mkdir(parents=True)
    shutil.copy(f36_sqlite, tmp_path / "a/usr/lib/sysimage/rpm/rpmdb.sqlite")
    (tmp_path / "a/var/lib").mkdir(parents=True)
    (tmp_path / "a/var/lib/rpm").symlink_to("../../usr/lib/sysimage/rpm")
    (tmp_path / "b/var/lib/rpm").mkdir(parents=True)
    shutil.copy(NDB, tmp_path / "b/var/lib/rpm/Packages.db")
    (tmp_path / "c/var/lib/rpm").mkdir(parents=True)
    shutil.copy(BDB, tmp_path / "c/var/lib/rpm/Packages")
    for sub, count in (("a", 172), ("b", 35), ("c", 1)):
        fs = _FS(tmp_path / sub)
        ctx = ScanContext(root=RootResult(device="/dev/sda", os=OSInfo()), manifest=[])
        cat = RpmCataloger()
        assert cat.applies(fs, ctx.root.os)
        assert len(cat.catalog(fs, ctx)) == count
        assert ctx.notes == []
    assert not RpmCataloger().applies(_FS(tmp_path), OSInfo())


def test_size_limit_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    shutil.copy(NDB, tmp_path / "var/lib/rpm/Packages.db")
    ctx = ScanContext(
        root=RootResult(device="/dev/sda", os=OSInfo()), manifest=[], options={"rpmdb_limit": 1000}
    )
    with pytest.raises(RpmDbError, match="limit"):
        RpmCataloger().catalog(_FS(tmp_path), ctx)


def test_truncated_databases_are_partial(tmp_path: Path, f36_sqlite: Path) -> None:
    ndb = tmp_path / "ndb"
    ndb.write_bytes(NDB.read_bytes()[: NDB.stat().st_size // 2])
    res = parse_db_file(ndb)
    assert 0 < len(res.headers) < 35
    assert res.notes
    bdb = tmp_path / "bdb"
    bdb.write_bytes(BDB.read_bytes()[: 4096 * 3])
    res = parse_db_file(bdb)
    assert res.headers == []
    assert res.notes


def test_corrupt_header_blob_in_sqlite(tmp_path: Path, f36_sqlite: Path) -> None:
    db = tmp_path / "rpmdb.sqlite"
    shutil.copy(f36_sqlite, db)
    con = sqlite3.connect(db)
    blob = con.execute("SELECT blob FROM Packages ORDER BY hnum LIMIT 1").fetchone()[0]
    con.execute(
        "UPDATE Packages SET blob=? WHERE hnum=(SELECT min(hnum) FROM Packages)", (blob[:100],)
    )
    con.commit()
    con.close()
    res = parse_db_file(db)
    assert len(res.headers) == 171
    assert any("corrupt package header" in n for n in res.notes)


def test_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "Packages"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(RpmDbError):
        parse_db_file(junk)
    assert sniff(b"junk") is None


@pytest.mark.parametrize("src", [BDB, NDB])
def test_fuzzed_databases_never_crash(src: Path, tmp_path: Path) -> None:
    rnd = random.Random(1234)
    data = src.read_bytes()
    for _ in range(60):
        buf = bytearray(data)
        for _k in range(rnd.randint(1, 40)):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        out = tmp_path / "fuzz"
        out.write_bytes(bytes(buf))
        with contextlib.suppress(RpmDbError):
            parse_db_file(out)


def test_header_bounds() -> None:
    for blob in (b"", b"\0\0\0\1", b"\x7f\xff\xff\xff\0\0\0\0", b"\0\0\0\1\0\0\0\x10" + b"\0" * 8):
        with pytest.raises(HeaderError):
            read_header(blob)


SPEC = """\
Name: {name}
{epoch}Version: {version}
Release: {release}
Summary: vmscan test package
License: MIT
Vendor: vmscan tests
BuildArch: {arch}
%description
vmscan test package
%files
"""


@pytest.fixture(scope="module")
def rpm_built_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An rpmdb.sqlite written by the host's real rpm from packages built here."""
    if shutil.which("rpmbuild") is None or shutil.which("rpm") is None:
        pytest.skip("rpm/rpmbuild not installed")
    tmp = tmp_path_factory.mktemp("rpmbuild")
    pkgs = [
        ("tilde-caret", "Epoch: 2\n", "1.0~rc1^git3", "4.el9", "noarch"),
        ("plain", "", "3.0.7", "27.el9", "noarch"),
        ("zero-epoch", "Epoch: 0\n", "0.9", "1", "noarch"),
    ]
    rpms = []
    for name, epoch, version, release, arch in pkgs:
        spec = tmp / f"{name}.spec"
        spec.write_text(
            SPEC.format(name=name, epoch=epoch, version=version, release=release, arch=arch)
        )
        subprocess.run(
            ["rpmbuild", "-bb", "--define", f"_topdir {tmp / 'top'}", str(spec)],
            check=True,
            capture_output=True,
        )
    rpms = sorted(str(p) for p in (tmp / "top" / "RPMS").rglob("*.rpm"))
    db = tmp / "db"
    db.mkdir()
    base = ["rpm", "--dbpath", str(db), "--define", "_db_backend sqlite"]
    subprocess.run([*base, "--initdb"], check=True, capture_output=True)
    subprocess.run(
        [*base, "-i", "--justdb", "--nodeps", "--noscripts", "--ignorearch", "--ignoreos", *rpms],
        check=True,
        capture_output=True,
    )
    return db / "rpmdb.sqlite"


def test_rpm_written_sqlite_db(rpm_built_db: Path) -> None:
    mine = _mine(rpm_built_db)
    assert mine == _rpm_qa(rpm_built_db.parent)
    res = parse_db_file(rpm_built_db)
    by = {h.name: header_to_package(h) for h in res.headers}
    assert by["tilde-caret"].version == "2:1.0~rc1^git3-4.el9"
    assert by["plain"].version == "3.0.7-27.el9"
    assert by["zero-epoch"].version == "0:0.9-1"
    assert by["plain"].extra["license_declared"] == "MIT"
    assert by["plain"].extra["vendor"] == "vmscan tests"


def test_sqlite_wal_is_read(tmp_path: Path, f36_sqlite: Path) -> None:
    db = tmp_path / "live" / "rpmdb.sqlite"
    db.parent.mkdir()
    shutil.copy(f36_sqlite, db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("DELETE FROM Packages WHERE hnum IN (SELECT hnum FROM Packages LIMIT 2)")
    con.commit()
    # Copy while the connection is open: the deletion lives only in the -wal file.
    snap = tmp_path / "snap"
    snap.mkdir()
    shutil.copy(db, snap / "main")
    shutil.copy(db.with_name("rpmdb.sqlite-wal"), snap / "wal")
    con.close()
    assert len(parse_db_file(snap / "main").headers) == 172
    assert len(parse_db_file(snap / "main", wal=snap / "wal").headers) == 170
    # The cataloger copies the -wal beside the database out of the guest too.
    guest = tmp_path / "guest" / "var/lib/rpm"
    guest.mkdir(parents=True)
    shutil.copy(snap / "main", guest / "rpmdb.sqlite")
    shutil.copy(snap / "wal", guest / "rpmdb.sqlite-wal")
    ctx = ScanContext(root=RootResult(device="/dev/sda", os=OSInfo()), manifest=[])
    assert len(RpmCataloger().catalog(_FS(tmp_path / "guest"), ctx)) == 170
