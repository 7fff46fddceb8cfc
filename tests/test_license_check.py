"""The licence check on Linux roots: dpkg copyright files, rpm tags, apk fields, policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmscan.catalog.apk import parse_installed
from vmscan.catalog.rpm import header_to_package, parse_db_file
from vmscan.checks.license import LicenseCheck, fill_licences, package_kind
from vmscan.guestfs_view import HostDirFS
from vmscan.license.spdx_map import default_map
from vmscan.model import FileEntry, OSInfo, Package, RootResult
from vmscan.plugins import ScanContext

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")

DEP5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"


_FS = HostDirFS


def _deb(name: str, version: str = "1.0") -> Package:
    return Package(
        name=name, version=version, found_by="os/dpkg", purl=f"pkg:deb/debian/{name}@{version}"
    )


def _tree(tmp_path: Path) -> Path:
    docs = {
        "bash": DEP5 + "Files: *\nCopyright: FSF\nLicense: GPL-3+\n",
        "libfoo1": DEP5 + "Files: *\nCopyright: x\nLicense: Expat\n\n"
        "Files: debian/*\nCopyright: y\nLicense: GPL-2+\n",
        "agpl-thing": DEP5 + "Files: *\nCopyright: x\nLicense: AGPL-3+\n",
        "mystery": "Copyright 2001 Someone. Ask for permission.\n",
    }
    for pkg, text in docs.items():
        d = tmp_path / "usr/share/doc" / pkg
        d.mkdir(parents=True)
        (d / "copyright").write_text(text)
    return tmp_path


def _ctx(
    pkgs: list[Package],
    options: dict[str, object] | None = None,
    manifest: list[FileEntry] | None = None,
) -> ScanContext:
    os_info = OSInfo(
        type="linux", distro="debian", product_name="Debian GNU/Linux 12", major_version=12
    )
    return ScanContext(
        root=RootResult(device="/dev/sda1", os=os_info, packages=pkgs),
        manifest=manifest or [],
        options=dict(options or {}),
    )


def test_package_kind() -> None:
    assert package_kind(_deb("x")) == "dpkg"
    assert package_kind(Package("x", "1", found_by="os/rpm")) == "rpm"
    assert package_kind(Package("x", "1", purl="pkg:apk/alpine/x@1")) == "apk"
    assert package_kind(Package("x", "1", found_by="os/windows")) == "windows"
    assert package_kind(Package("x", "1")) == ""


def test_dpkg_licences_policy_and_findings(tmp_path: Path) -> None:
    fs = _FS(_tree(tmp_path))
    pkgs = [
        _deb("bash"),
        _deb("libfoo1"),
        _deb("agpl-thing"),
        _deb("mystery"),
        _deb("nodoc"),
        Package("open-vm-tools", "12.2", found_by="os/dpkg"),
    ]
    ctx = _ctx(pkgs)
    findings = LicenseCheck().run(fs, ctx)
    by = {p.name: p for p in pkgs}
    assert by["bash"].licenses == ["GPL-3.0-or-later"]
    assert by["bash"].license_source == "/usr/share/doc/bash/copyright#dep5"
    assert by["libfoo1"].licenses == ["MIT"]  # debian/* packaging is not in the binary
    assert by["mystery"].licenses == []
    assert by["mystery"].license_source == "unknown"
    assert by["nodoc"].licenses == []
    assert by["bash"].extra["license_category"] == "reciprocal"
    assert by["libfoo1"].extra["license_category"] == "permissive"
    rules = {(f.rule_id, f.details.get("package")) for f in findings}
    assert ("license.restricted", "agpl-thing") in rules
    assert ("license.unknown", "mystery") in rules
    assert ("license.unknown", "nodoc") in rules
    assert ("license.watch.vmware-tools", "open-vm-tools") in {
        (f.rule_id, f.target.split(": ")[-1].split("@")[0]) for f in findings
    }
    # Default policy reports forbidden/restricted/unknown only.
    assert not any(f.details.get("package") == "bash" for f in findings)
    restricted = next(f for f in findings if f.rule_id == "license.restricted")
    assert restricted.check == "license"
    assert restricted.severity == "medium"
    assert restricted.details["license"] == "AGPL-3.0-or-later"
    assert restricted.details["category"] == "restricted"
    assert restricted.details["rule"] == "restricted:AGPL-*"
    assert restricted.fingerprint
    sec = ctx.root.sections["license"]
    assert sec["packages"] == 6
    assert sec["with_license"] == 3
    assert sec["categories"]["unknown"] == 3


def test_policy_from_options_and_watch_paths(tmp_path: Path) -> None:
    fs = _FS(_tree(tmp_path))
    pol = tmp_path / "pol.toml"
    pol.write_text(
        '[license]\nreport = ["forbidden"]\n[license.categories]\nforbidden = ["GPL-3.0*"]\n'
        '[[license.watch]]\nid = "oracle"\nproduct = "Oracle Database"\n'
        'paths = ["*/product/*/dbhome*/bin/oracle"]\n'
        'edition_regex = "product/(?P<edition>[0-9.]+)/"\n'
    )
    fe = FileEntry(
        device="/dev/sda1",
        path="/u01/app/oracle/product/19.0.0/dbhome_1/bin/oracle",
        size=1,
        mode=0o100755,
        uid=0,
        gid=0,
        mtime=0,
        sha256=None,
    )
    ctx = _ctx([_deb("bash")], {"license_policy": str(pol)}, [fe])
    findings = LicenseCheck().run(fs, ctx)
    assert [f.rule_id for f in findings] == ["license.forbidden", "license.watch.oracle"]
    assert findings[0].severity == "high"
    assert ctx.root.sections["license"]["watched"][0]["edition"] == "19.0.0"


@needs_corpus
def test_apk_license_field_corpus() -> None:
    text = (CORPUS / "apk/scalibr-alpine318-installed").read_text()
    pkgs = parse_installed(text, "installed").packages
    assert len(pkgs) == 15
    notes: list[str] = []
    fill_licences(_FS("/nonexistent"), pkgs, default_map(), notes)
    assert all(p.licenses for p in pkgs), [p.name for p in pkgs if not p.licenses]
    assert all(p.license_source == "apk:license" for p in pkgs)
    by = {p.name: p for p in pkgs}
    assert any(p.licenses == ["MIT AND BSD-2-Clause AND GPL-2.0-or-later"] for p in pkgs)
    assert notes == []
    assert by  # names kept


@needs_corpus
def test_rpm_license_tag_corpus() -> None:
    parsed = parse_db_file(CORPUS / "rpm/sle15-bci-ndb/Packages.db")
    pkgs = [header_to_package(h) for h in parsed.headers]
    fill_licences(_FS("/nonexistent"), pkgs, default_map(), [])
    by = {p.name: p for p in pkgs}
    assert len(pkgs) == 35
    assert all(p.licenses for p in pkgs)
    assert by["bash"].licenses == ["GPL-3.0-or-later"]
    assert by["libacl1"].licenses == ["GPL-2.0-or-later AND LGPL-2.1-or-later"]
    assert by["libcap2"].licenses == ["BSD-3-Clause OR GPL-2.0-only"]
    assert by["libgcc_s1"].licenses == ["GPL-3.0-or-later WITH GCC-exception-3.1"]
    assert by["liblzma5"].licenses == ["LicenseRef-SUSE-Public-Domain"]
    assert by["bash"].license_source == "rpm:LICENSE"
    old = parse_db_file(CORPUS / "rpm/centos8-libuuid-bdb/Packages")
    uuid = header_to_package(old.headers[0])
    fill_licences(_FS("/nonexistent"), [uuid], default_map(), [])
    # RHEL's bare "BSD" names no clause count: stated, but not guessed into an SPDX id.
    assert uuid.licenses == ["LicenseRef-BSD"]


def test_rpm_legacy_tags_and_unparseable() -> None:
    pkgs = [
        Package("a", "1", found_by="os/rpm", extra={"license_declared": "GPLv2+ and LGPLv2+"}),
        Package("b", "1", found_by="os/rpm", extra={"license_declared": "ASL 2.0"}),
        Package("c", "1", found_by="os/rpm", extra={"license_declared": "(((("}),
        Package("d", "1", found_by="os/rpm", extra={}),
        Package("e", "1", found_by="os/rpm", licenses=["MIT"]),
    ]
    notes: list[str] = []
    fill_licences(_FS("/nonexistent"), pkgs, default_map(), notes)
    assert [p.licenses for p in pkgs] == [
        ["GPL-2.0-or-later AND LGPL-2.0-or-later"],
        ["Apache-2.0"],
        [],
        [],
        ["MIT"],
    ]
    assert pkgs[2].license_source == "unknown"
    assert pkgs[4].license_source == "cataloger"
    assert any("not understood" in n for n in notes)
