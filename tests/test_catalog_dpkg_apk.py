"""dpkg and apk catalogers against the real-world corpus and dpkg-query."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from vmscan.catalog.apk import ApkCataloger, parse_installed
from vmscan.catalog.dpkg import DpkgCataloger, parse_status
from vmscan.guestfs_view import HostDirFS
from vmscan.model import OSInfo, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")


_FS = HostDirFS


def _ctx(os_info: OSInfo | None = None) -> ScanContext:
    return ScanContext(root=RootResult(device="/dev/sda1", os=os_info or OSInfo()), manifest=[])


def _dpkg_query(status: Path, tmp: Path) -> set[tuple[str, str, str]]:
    admin = tmp / "admin"
    (admin / "updates").mkdir(parents=True, exist_ok=True)
    shutil.copy(status, admin / "status")
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={admin}",
            "-W",
            "-f=${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = set()
    for line in out.splitlines():
        name, version, arch, abbrev = line.split("\t")
        # dpkg's "installed" state is the second letter of the abbreviation.
        if abbrev[1:2] == "i":
            rows.add((name, version, arch))
    return rows


@needs_corpus
@pytest.mark.parametrize(
    "name",
    [
        "scalibr-valid",
        "scalibr-single",
        "scalibr-trailingnewlines",
        "scalibr-transitional",
        "scalibr-statusfield",
        "scalibr-empty",
        "claircore-debian-only.status",
        "claircore-debian10-postgresql.status",
        "debian-inspector-simple_status",
        "debian-inspector-perl_status",
    ],
)
def test_dpkg_matches_dpkg_query(name: str, tmp_path: Path) -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("dpkg-query not installed")
    path = CORPUS / "dpkg" / name
    res = parse_status(path.read_text(errors="replace"), name)
    mine = {(p.name, p.version, p.arch) for p in res.packages}
    assert mine == _dpkg_query(path, tmp_path)
    assert res.notes == []


@needs_corpus
@pytest.mark.parametrize("name", ["simple_status", "perl_status"])
def test_dpkg_matches_debian_inspector_oracle(name: str) -> None:
    path = CORPUS / "dpkg" / f"debian-inspector-{name}"
    expected = json.loads((CORPUS / "dpkg" / f"debian-inspector-{name}-expected.json").read_text())
    if isinstance(expected, dict):
        expected = [expected]
    res = parse_status(path.read_text(), name)
    assert [(p.name, p.version, p.arch) for p in res.packages] == [
        (e["package"], e["version"], e["architecture"]) for e in expected
    ]
    for pkg, exp in zip(res.packages, expected, strict=True):
        src = exp.get("source", exp["package"]).split(" ")[0]
        assert pkg.source_name == src


@needs_corpus
def test_dpkg_statusfield_only_installed() -> None:
    res = parse_status((CORPUS / "dpkg" / "scalibr-statusfield").read_text(), "s")
    assert sorted(p.name for p in res.packages) == [
        "wantdeinstall_installed",
        "wantinstall_installed",
        "wantpurge_installed",
    ]
    assert res.skipped_not_installed == 4


@needs_corpus
def test_dpkg_source_with_version() -> None:
    res = parse_status((CORPUS / "dpkg" / "claircore-debian10-postgresql.status").read_text(), "s")
    pkg = {p.name: p for p in res.packages}["postgresql-client"]
    assert (pkg.source_name, pkg.source_version) == ("postgresql-common", "200+deb10u5")
    trans = parse_status((CORPUS / "dpkg" / "scalibr-transitional").read_text(), "s").packages[0]
    assert (trans.source_name, trans.source_version) == ("firefox-esr", trans.version)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "kept", "note"),
    [
        ("scalibr-invalid", [], "malformed line"),
        ("scalibr-noversion", ["bar", "foo"], "no Version"),
        ("scalibr-nopackage", ["bar", "foo"], "no Package"),
    ],
)
def test_dpkg_bad_paragraphs_are_notes(name: str, kept: list[str], note: str) -> None:
    res = parse_status((CORPUS / "dpkg" / name).read_text(), name)
    assert sorted(p.name for p in res.packages) == kept
    assert any(note in n for n in res.notes)


def test_dpkg_cataloger_purl_and_status_d(tmp_path: Path) -> None:
    dpkg = tmp_path / "var/lib/dpkg"
    (dpkg / "status.d").mkdir(parents=True)
    (dpkg / "status").write_text(
        "Package: libcurl4\nStatus: install ok installed\nArchitecture: amd64\n"
        "Source: curl\nVersion: 7.88.1-10\n\n"
        "Package: bash\nStatus: install ok installed\nArchitecture: amd64\n"
        "Source: bash (5.2.15-2)\nVersion: 5.2.15-2+b2\n"
    )
    (dpkg / "status.d" / "base").write_text(
        "Package: base-files\nVersion: 12.4\nArchitecture: amd64\n"
    )
    (dpkg / "status.d" / "base.md5sums").write_text("junk\n")
    fs = _FS(tmp_path)
    os_info = OSInfo(type="linux", distro="debian", os_release_id="debian", version_id="12")
    cat = DpkgCataloger()
    assert cat.applies(fs, os_info)
    ctx = _ctx(os_info)
    pkgs = {p.name: p for p in cat.catalog(fs, ctx)}
    assert ctx.notes == []
    assert set(pkgs) == {"libcurl4", "bash", "base-files"}
    assert pkgs["libcurl4"].purl == (
        "pkg:deb/debian/libcurl4@7.88.1-10?arch=amd64&distro=debian-12&upstream=curl"
    )
    assert pkgs["bash"].source_version == "5.2.15-2"
    assert pkgs["bash"].found_by == "os/dpkg"


def test_dpkg_truncated_status_is_partial(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_bytes(
        b"Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: all\n\n"
        b"Package: b\nStatus: install ok inst\xff\x00garbage without colon\n"
    )
    ctx = _ctx()
    pkgs = DpkgCataloger().catalog(_FS(tmp_path), ctx)
    assert [p.name for p in pkgs] == ["a"]
    assert ctx.notes


@needs_corpus
def test_apk_corpus_15_packages() -> None:
    res = parse_installed((CORPUS / "apk" / "scalibr-alpine318-installed").read_text(), "a")
    assert len(res.packages) == 15
    assert res.notes == []
    by = {p.name: p for p in res.packages}
    assert by["libcrypto3"].version == "3.1.0-r4"
    assert by["libcrypto3"].source_name == "openssl"
    assert by["libcrypto3"].arch == "x86_64"
    assert by["libcrypto3"].extra["license_declared"] == "Apache-2.0"


def test_apk_cataloger(tmp_path: Path) -> None:
    (tmp_path / "lib/apk/db").mkdir(parents=True)
    (tmp_path / "lib/apk/db/installed").write_text(
        "P:musl\nV:1.2.4-r0\nA:x86_64\nL:MIT\no:musl\n\nP:broken\nbad line\n\n"
    )
    fs = _FS(tmp_path)
    os_info = OSInfo(os_release_id="alpine", version_id="3.18.4")
    ctx = _ctx(os_info)
    cat = ApkCataloger()
    assert cat.applies(fs, os_info)
    pkgs = cat.catalog(fs, ctx)
    assert [p.name for p in pkgs] == ["musl"]
    assert pkgs[0].purl == "pkg:apk/alpine/musl@1.2.4-r0?arch=x86_64&distro=alpine-3.18.4"
    # The malformed line and the record without V: counted in one bounded note.
    (note,) = ctx.notes
    assert "1 malformed line(s)" in note and "1 record(s) with no P: or V:" in note
    assert "1 package(s) read" in note


@pytest.mark.skipif(
    not Path("/var/lib/dpkg/status").is_file() or shutil.which("dpkg-query") is None,
    reason="the host is not a dpkg system",
)
def test_dpkg_host_root_equals_dpkg_query() -> None:
    """The host is a real Debian root: every installed package as dpkg-query sees it."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\\t${Version}\\t${Architecture}\\t${Status}\\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = set()
    for line in out.splitlines():
        name, version, arch, status = line.split("\t")
        if status.split()[-1] in ("installed", "triggers-pending", "triggers-awaited"):
            expected.add((name, version, arch))
    ctx = _ctx(OSInfo(os_release_id="debian", version_id="12"))
    pkgs = DpkgCataloger().catalog(_FS("/"), ctx)
    assert {(p.name, p.version, p.arch) for p in pkgs} == expected
    assert len(pkgs) == len(expected)
