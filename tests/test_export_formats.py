"""CycloneDX 1.6, SPDX 2.3 and CSV exports: schema-valid, complete, spreadsheet-safe."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from vmscan.checks.license import LicenseCheck
from vmscan.guestfs_view import HostDirFS
from vmscan.model import ImageResult, OSInfo, Package, RootResult, ScanResult, to_jsonable
from vmscan.plugins import ScanContext
from vmscan.report.csv_out import neutralise, write_csv
from vmscan.report.cyclonedx import (
    boms,
    cdx_licenses,
    validate_bom_json,
    write_cyclonedx,
    write_cyclonedx_dir,
)
from vmscan.report.spdx import spdx_document, write_spdx

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"
SPDX_SCHEMA = SCHEMAS / "spdx-schema-2.3.json"

DEP5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"


_FS = HostDirFS


def _hand_made() -> dict[str, Any]:
    return {
        "schema_version": "1",
        "vmscan_version": "0.1.0",
        "started_at": "2026-11-27T10:00:00Z",
        "finished_at": "2026-11-27T10:05:00Z",
        "sections": {},
        "images": [
            {
                "source": "/vms/deb12.qcow2",
                "status": "ok",
                "roots": [
                    {
                        "device": "/dev/sda1",
                        "os": {
                            "type": "linux",
                            "distro": "debian",
                            "version_id": "12",
                            "product_name": "Debian GNU/Linux 12 (bookworm)",
                            "extra": {},
                        },
                        "packages": [
                            {
                                "name": "bash",
                                "version": "5.2.15-2+b2",
                                "arch": "amd64",
                                "licenses": ["GPL-3.0-or-later", "GPL-2.0-or-later"],
                                "found_by": "os/dpkg",
                                "purl": "pkg:deb/debian/bash@5.2.15-2%2Bb2?distro=debian-12",
                                "license_source": "/usr/share/doc/bash/copyright#dep5",
                                "extra": {},
                            },
                            {
                                "name": "curl",
                                "version": "7.88.1-10",
                                "licenses": ["curl"],
                                "found_by": "os/dpkg",
                                "purl": "pkg:deb/debian/curl@7.88.1-10?arch=amd64",
                                "extra": {},
                            },
                            {
                                "name": "=cmd|' /C calc'!A0",
                                "version": "1",
                                "licenses": [],
                                "found_by": "os/dpkg",
                                "purl": "",
                                "extra": {"publisher": "@evil"},
                            },
                            {
                                "name": "scheme",
                                "version": "",
                                "licenses": ["LicenseRef-TinySCHEME AND MIT"],
                                "found_by": "os/dpkg",
                                "purl": "not a purl",
                                "extra": {},
                            },
                            {
                                "name": "bash",
                                "version": "5.2.15-2+b2",
                                "licenses": [],
                                "found_by": "x",
                                "purl": "",
                                "extra": {},
                            },
                        ],
                        "findings": [
                            {
                                "check": "patch",
                                "rule_id": "DSA-5500-1",
                                "severity": "high",
                                "title": "curl: two CVEs",
                                "target": "curl@7.88.1-10",
                                "details": {
                                    "package": "curl",
                                    "installed_version": "7.88.1-10",
                                    "fixed_version": "7.88.1-10+deb12u1",
                                    "aliases": ["CVE-2023-38545", "CVE-2023-38546"],
                                },
                            },
                            {
                                "check": "patch",
                                "rule_id": "CVE-2099-1",
                                "severity": "weird",
                                "title": "gone",
                                "details": {"package": "not-installed"},
                            },
                            {
                                "check": "license",
                                "rule_id": "license.unknown",
                                "severity": "low",
                                "title": "-2+3",
                                "target": "+x",
                                "details": {"package": "=cmd", "license": "unknown"},
                            },
                        ],
                        "plugins": [],
                        "sections": {},
                    }
                ],
            },
            {
                "source": "/vms/win2019.qcow2",
                "status": "ok",
                "roots": [
                    {
                        "device": "/dev/sda2",
                        "os": {
                            "type": "windows",
                            "product_name": "Windows Server 2019 Standard",
                            "major_version": 10,
                            "minor_version": 0,
                            "extra": {},
                        },
                        "packages": [
                            {
                                "name": "PuTTY suite",
                                "version": "0.73",
                                "licenses": [],
                                "found_by": "windows/pe",
                                "purl": "pkg:generic/PuTTY%20suite@0.73",
                                "extra": {
                                    "publisher": "Simon Tatham",
                                    "install_location": "/Program Files/PuTTY",
                                },
                            },
                        ],
                        "findings": [],
                        "plugins": [],
                        "sections": {},
                    }
                ],
            },
        ],
    }


def _from_check(tmp_path: Path) -> dict[str, Any]:
    """A scan document made by the licence check itself, through the result model."""
    d = tmp_path / "usr/share/doc/bash"
    d.mkdir(parents=True)
    (d / "copyright").write_text(DEP5 + "Files: *\nCopyright: x\nLicense: GPL-3+\n")
    root = RootResult(
        device="/dev/sda1",
        os=OSInfo(type="linux", distro="debian", product_name="Debian 12"),
        packages=[
            Package("bash", "5.2", found_by="os/dpkg", purl="pkg:deb/debian/bash@5.2"),
            Package("odd", "1", found_by="os/dpkg"),
        ],
    )
    ctx = ScanContext(root=root, manifest=[])
    root.findings = LicenseCheck().run(_FS(tmp_path), ctx)
    scan = ScanResult(
        schema_version="1",
        vmscan_version="0.1.0",
        started_at="2026-11-27T10:00:00+00:00",
        images=[ImageResult(source="/vms/x.qcow2", roots=[root])],
    )
    doc: dict[str, Any] = to_jsonable(scan)
    return doc


def _all_packages(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (str(p["name"]), str(p.get("version") or ""))
        for i in doc["images"]
        for r in i["roots"]
        for p in r["packages"]
    ]


# -- CycloneDX ----------------------------------------------------------------------------


@pytest.mark.parametrize("maker", ["hand", "check"])
def test_cyclonedx_valid_and_complete(maker: str, tmp_path: Path) -> None:
    doc = _hand_made() if maker == "hand" else _from_check(tmp_path)
    docs = boms(doc)
    assert len(docs) == len(doc["images"])
    for (source, text), image in zip(docs, doc["images"], strict=True):
        assert validate_bom_json(text) == [], source
        bom = json.loads(text)
        assert bom["specVersion"] == "1.6"
        assert bom["metadata"]["component"]["name"] == image["source"]
        comps = bom["components"]
        got = sorted(
            (c["name"], c.get("version", "")) for c in comps if c["type"] != "operating-system"
        )
        want = sorted(
            (str(p["name"]), str(p.get("version") or ""))
            for r in image["roots"]
            for p in r["packages"]
        )
        assert got == want
        assert any(c["type"] == "operating-system" for c in comps)
        fleet = [p for p in bom["metadata"]["properties"] if p["name"] == "vmscan:license_fleet"]
        assert json.loads(fleet[0]["value"])["vms"] == len(doc["images"])


def test_cyclonedx_licences_purls_and_vulnerabilities() -> None:
    text = boms(_hand_made())[0][1]
    bom = json.loads(text)
    comps = {(c["name"], c["bom-ref"]): c for c in bom["components"]}
    curl = next(c for (n, _), c in comps.items() if n == "curl")
    assert curl["licenses"] == [{"license": {"id": "curl"}}]
    assert curl["purl"].startswith("pkg:deb/debian/curl@7.88.1-10")
    bash = next(c for (n, _), c in comps.items() if n == "bash" and "licenses" in c)
    assert bash["licenses"] == [{"expression": "GPL-3.0-or-later AND GPL-2.0-or-later"}]
    scheme = next(c for (n, _), c in comps.items() if n == "scheme")
    assert scheme["licenses"] == [{"expression": "LicenseRef-TinySCHEME AND MIT"}]
    assert "purl" not in scheme  # an invalid purl is left out, not written
    vulns = {v["id"]: v for v in bom["vulnerabilities"]}
    dsa = vulns["DSA-5500-1"]
    assert dsa["affects"][0]["ref"] == curl["bom-ref"]
    assert dsa["affects"][0]["versions"] == [{"version": "7.88.1-10"}]
    assert {r["id"] for r in dsa["references"]} == {"CVE-2023-38545", "CVE-2023-38546"}
    assert dsa["ratings"] == [{"severity": "high"}]
    assert "7.88.1-10+deb12u1" in dsa["recommendation"]
    # A finding naming a package that is not there affects the OS component.
    os_ref = next(c["bom-ref"] for c in bom["components"] if c["type"] == "operating-system")
    assert vulns["CVE-2099-1"]["affects"][0]["ref"] == os_ref
    assert "license.unknown" not in vulns


def test_cdx_licenses() -> None:
    assert cdx_licenses([]) == []
    assert len(cdx_licenses(["MIT", "BSD-3-Clause OR GPL-2.0-only"])) == 1


def test_cyclonedx_stream_and_dir(tmp_path: Path) -> None:
    doc = _hand_made()
    buf = io.StringIO()
    write_cyclonedx(doc, buf)
    # Several images: one valid CycloneDX document, each VM a component holding its OS and
    # packages, every patch vulnerability of every VM kept, bom-refs unique.
    run_doc = json.loads(buf.getvalue())
    assert validate_bom_json(buf.getvalue()) == []
    assert run_doc["metadata"]["component"]["type"] == "platform"
    vms = run_doc["components"]
    assert [c["name"] for c in vms] == ["/vms/deb12.qcow2", "/vms/win2019.qcow2"]
    per_image = [json.loads(text) for _, text in boms(doc)]
    for vm, alone in zip(vms, per_image, strict=True):
        assert [c["bom-ref"] for c in vm["components"]] == [
            c["bom-ref"] for c in alone["components"]
        ]
    assert sum(len(b.get("vulnerabilities") or []) for b in per_image) == len(
        run_doc.get("vulnerabilities") or []
    )
    refs: list[str] = []

    def walk(cs: list[dict[str, Any]]) -> None:
        for c in cs:
            refs.append(c["bom-ref"])
            walk(c.get("components") or [])

    walk(vms)
    assert len(refs) == len(set(refs))
    deps = {d["ref"]: d.get("dependsOn", []) for d in run_doc["dependencies"]}
    assert deps["run"] == [vm["bom-ref"] for vm in vms]
    one = dict(doc, images=doc["images"][:1])
    buf1 = io.StringIO()
    write_cyclonedx(one, buf1)
    assert json.loads(buf1.getvalue())["bomFormat"] == "CycloneDX"
    paths = write_cyclonedx_dir(doc, tmp_path / "cdx")
    assert [p.name for p in paths] == ["000-deb12.qcow2.cdx.json", "001-win2019.qcow2.cdx.json"]
    for p in paths:
        assert validate_bom_json(p.read_text()) == []


def test_cyclonedx_validator_rejects_bad_bom() -> None:
    bom = json.loads(boms(_hand_made())[0][1])
    bom["components"][0]["type"] = "nonsense"
    assert validate_bom_json(json.dumps(bom))


# -- SPDX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("maker", ["hand", "check"])
def test_spdx_valid_and_complete(maker: str, tmp_path: Path) -> None:
    if not SPDX_SCHEMA.is_file():
        pytest.skip("../shared/schemas/spdx-schema-2.3.json not present")
    import jsonschema

    doc = _hand_made() if maker == "hand" else _from_check(tmp_path)
    buf = io.StringIO()
    write_spdx(doc, buf)
    spdx = json.loads(buf.getvalue())
    schema = json.loads(SPDX_SCHEMA.read_text())
    jsonschema.validate(spdx, schema)
    pkgs = spdx["packages"]
    got = sorted(
        (p["name"], p.get("versionInfo", ""))
        for p in pkgs
        if p.get("primaryPackagePurpose") in ("LIBRARY", "APPLICATION")
    )
    assert got == sorted(_all_packages(doc))
    ids = [p["SPDXID"] for p in pkgs]
    assert len(ids) == len(set(ids))
    known = {*ids, "SPDXRef-DOCUMENT"}
    for rel in spdx["relationships"]:
        assert rel["spdxElementId"] in known and rel["relatedSpdxElement"] in known
    # Every LicenseRef used is declared.
    declared = {e["licenseId"] for e in spdx.get("hasExtractedLicensingInfos", [])}
    for p in pkgs:
        for word in str(p["licenseDeclared"]).replace("(", " ").replace(")", " ").split():
            if word.startswith("LicenseRef-"):
                assert word in declared


def test_spdx_licences_and_purls() -> None:
    spdx = spdx_document(_hand_made())
    by = {p["name"]: p for p in spdx["packages"]}
    assert by["curl"]["licenseDeclared"] == "curl"
    assert by["scheme"]["licenseDeclared"] == "LicenseRef-TinySCHEME AND MIT"
    assert by["=cmd|' /C calc'!A0"]["licenseDeclared"] == "NOASSERTION"
    assert by["curl"]["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/debian/curl")
    assert by["PuTTY suite"]["supplier"] == "Organization: Simon Tatham"
    assert spdx["creationInfo"]["created"] == "2026-11-27T10:05:00Z"
    assert "license_fleet" in spdx["comment"]


# -- CSV ----------------------------------------------------------------------------------


def test_neutralise() -> None:
    for bad in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert neutralise(bad).startswith("'")
    assert neutralise("bash") == "bash"
    assert neutralise(None) == ""
    assert neutralise(3) == "3"


def test_csv_files(tmp_path: Path) -> None:
    doc = _hand_made()
    paths = write_csv(doc, tmp_path / "out")
    assert [p.name for p in paths] == [
        "inventory.csv",
        "licenses.csv",
        "findings.csv",
        "license_fleet.csv",
    ]
    rows = {p.name: list(csv.reader(p.open(newline=""))) for p in paths}
    inv = rows["inventory.csv"]
    assert len(inv) - 1 == len(_all_packages(doc))
    for table in rows.values():
        for row in table[1:]:
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert inv[3][:4] == [
        "/vms/deb12.qcow2",
        "/dev/sda1",
        "Debian GNU/Linux 12 (bookworm)",
        "'=cmd|' /C calc'!A0",
    ]
    assert inv[3][9] == "'@evil"
    lic: dict[str, list[str]] = {}
    for r in rows["licenses.csv"][1:]:
        lic.setdefault(r[2], r)
    assert lic["bash"][4] == "GPL-3.0-or-later ; GPL-2.0-or-later"
    assert lic["'=cmd|' /C calc'!A0"][4] == "unknown"
    find = rows["findings.csv"]
    assert len(find) == 4
    assert json.loads(find[1][7])["fixed_version"] == "7.88.1-10+deb12u1"
    fleet = rows["license_fleet.csv"]
    assert fleet[0] == ["kind", "product", "edition", "installation_type", "count", "vms"]
    assert any(r[1] == "Windows Server 2019 Standard" for r in fleet[1:])
