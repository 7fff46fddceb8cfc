"""The report read model: the schema's every field reachable, real reports round-trip,
loose documents normalised in one place, every writer reads every root through it."""

from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_completeness import DEBIAN, GOOD_STATUS, _dpkg_tree, scan_tree

from vmscan import __version__
from vmscan.cli import finalize_report
from vmscan.completeness import PluginState
from vmscan.document import (
    DiskDoc,
    FileDoc,
    FilesystemDoc,
    FindingDoc,
    ImageDoc,
    LayerDoc,
    OSDoc,
    PackageDoc,
    PluginDoc,
    ReportDoc,
    RootDoc,
    SnapshotDoc,
)
from vmscan.model import (
    DiskLayer,
    DiskRef,
    FileEntry,
    Filesystem,
    Finding,
    ImageResult,
    ImageStatus,
    OSInfo,
    Package,
    PluginStatus,
    RootResult,
    ScanResult,
    Severity,
    Snapshot,
)
from vmscan.report import ReportFormat
from vmscan.scanner import SCHEMA_VERSION

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "vmscan" / "schema" / "report.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())


def json_keys(cls: type) -> set[str]:
    """The JSON keys a document class reads and writes (derived views excluded)."""
    return {f.name for f in fields(cls) if f.metadata.get("json", True)}  # type: ignore[arg-type]


def _declared(node: dict[str, Any]) -> set[str]:
    return set(node.get("properties", {})) | set(node.get("required", []))


def _def(name: str) -> dict[str, Any]:
    node: dict[str, Any] = SCHEMA["$defs"][name]
    return node


def _image_props() -> dict[str, Any]:
    props: dict[str, Any] = _def("image")["properties"]
    return props


#: Every object the schema declares, and the class that carries it.
SCHEMA_OBJECTS: list[tuple[str, dict[str, Any], type]] = [
    ("report", SCHEMA, ReportDoc),
    ("image", _def("image"), ImageDoc),
    ("disk", _image_props()["disks"]["items"], DiskDoc),
    ("layer", _image_props()["disks"]["items"]["properties"]["layers"]["items"], LayerDoc),
    (
        "snapshot",
        _image_props()["disks"]["items"]["properties"]["snapshots"]["items"],
        SnapshotDoc,
    ),
    ("filesystem", _image_props()["filesystems"]["items"], FilesystemDoc),
    ("root", _def("root"), RootDoc),
    ("os", _def("root")["properties"]["os"], OSDoc),
    ("package", _def("root")["properties"]["packages"]["items"], PackageDoc),
    ("finding", _def("root")["properties"]["findings"]["items"], FindingDoc),
    ("plugin", _def("root")["properties"]["plugins"]["items"], PluginDoc),
    ("file", _def("file"), FileDoc),
]
#: Keys whose JSON place differs from the class's field (read as typed fields).
MOVED = {("image", "roots"): "os_roots", ("image", "manifest"): "raw_manifest"}


@pytest.mark.parametrize(("name", "node", "cls"), SCHEMA_OBJECTS, ids=lambda x: str(x)[:12])
def test_every_field_the_schema_declares_is_in_the_model(
    name: str, node: dict[str, Any], cls: type
) -> None:
    keys = json_keys(cls) | {k for (n, k), _ in MOVED.items() if n == name}
    assert _declared(node) - keys == set(), f"{name}: schema fields the model cannot reach"


def test_data_volumes_are_roots_of_the_model() -> None:
    vols = _image_props()["sections"]["properties"]["data_volumes"]
    assert vols["items"] == {"$ref": "#/$defs/root"}
    assert {f.name for f in fields(ImageDoc)} >= {"data_volumes", "os_roots"}


def test_enums_are_the_schemas() -> None:
    assert [s.value for s in Severity] == _def("severity")["enum"]
    assert {s.value for s in ImageStatus} == set(_image_props()["status"]["enum"])
    plugin = _def("root")["properties"]["plugins"]["items"]["properties"]["status"]
    assert {s.value for s in PluginState} == set(plugin["enum"])


def test_one_severity_ordering() -> None:
    ranks = [s.rank for s in Severity]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert Severity.descending()[0] is Severity.CRITICAL
    assert Severity.parse("HIGH") is Severity.HIGH
    assert Severity.parse("weird") is Severity.UNKNOWN and Severity.parse(None) is Severity.UNKNOWN


def test_a_scanner_finding_holds_a_severity() -> None:
    f = Finding("patch", "R", "high", "t")  # type: ignore[arg-type]  # given by its value
    assert f.severity is Severity.HIGH
    with pytest.raises(ValueError):
        Finding("patch", "R", "severe", "t")  # type: ignore[arg-type]


def _full_run() -> ScanResult:
    """A run with every part of the model filled, as the scanner's dataclasses make it."""
    root = RootResult(
        device="/dev/sda1",
        os=OSInfo(type="linux", distro="debian", product_name="Debian 12", major_version=12),
        mountpoints={"/": "/dev/sda1", "/boot": "/dev/sda2"},
        packages=[Package("bash", "5.2", "amd64", licenses=["GPL-3.0"], extra={"x": [1]})],
        findings=[
            Finding("patch", "DSA-1", "high", "bash: CVE", "bash@5.2", {"package": "bash"}, "fp1")
        ],
        plugins=[PluginStatus("os/dpkg", "succeeded", "", "3")],
        sections={"migration": {"verdict": "ready", "rules_evaluated": [], "rules_failed": {}}},
    )
    vol = RootResult(device="/dev/sdb1", os=OSInfo(type="none"), mountpoints={"/": "/dev/sdb1"})
    vol.findings.append(
        Finding("antivirus", "Eicar-Test-Signature", "critical", "malware", "/data/eicar.com")
    )
    disk = DiskRef(
        "/vms/a.qcow2",
        "qcow2",
        1 << 30,
        backing=("/vms/base.qcow2",),
        layers=(DiskLayer(0, "/vms/base.qcow2", "qcow2", 10, "2026-01-01T00:00:00Z", 1 << 30),),
        snapshots=(Snapshot("1", "before", "2026-01-01T00:00:00Z", 5, 0, None),),
        point={"kind": "snapshot", "id": "1", "name": "before", "date": "2026-01-01T00:00:00Z"},
    )
    img = ImageResult(
        source="/vms/a.qcow2",
        disks=[disk],
        status=ImageStatus.PARTIAL,
        errors=["one problem"],
        filesystems=[Filesystem("/dev/sda1", "ext4", "/", True, 3, 300, None, 1000, 500, "u", "l")],
        roots=[root],
        manifest=[FileEntry("/dev/sda1", "/bin/sh", 10, 0o100755, 0, 0, 1, "0" * 64)],
        not_scanned=[{"path": "/x", "reason": "too large"}],
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:01Z",
        duration_s=1.5,
    )
    img.sections["data_volumes"] = [vol]
    img.sections["antivirus"] = {"status": "complete", "files_scanned": 1}
    run = ScanResult(SCHEMA_VERSION, __version__, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
    run.images = [img, ImageResult(source="/vms/bad.raw", status=ImageStatus.ERROR, errors=["x"])]
    return run


def assert_round_trips(doc: dict[str, Any]) -> ReportDoc:
    """*doc* validates, reads into the model, and the model gives it back unchanged."""
    jsonschema.validate(doc, SCHEMA)
    before = json.dumps(doc, sort_keys=True)
    report = ReportDoc.from_json(doc)
    assert json.dumps(doc, sort_keys=True) == before  # reading never changes the document
    assert report.to_json() == doc
    return report


def test_a_full_run_round_trips() -> None:
    report = assert_round_trips(finalize_report(_full_run()))
    img = report.images[0]
    assert [r.device for r in img.roots()] == ["/dev/sda1", "/dev/sdb1"]
    assert [r.data_volume for r in img.roots()] == [False, True]
    assert img.manifest[0].is_executable and img.disks[0].layers[0].virtual_size == 1 << 30
    assert img.roots()[0].migration is not None and img.roots()[0].migration.verdict == "ready"
    assert img.antivirus is not None and img.antivirus.status == "complete"
    assert [f.severity for _, f in img.findings()] == [Severity.HIGH, Severity.CRITICAL]


def test_reports_of_real_plugin_runs_round_trip(tmp_path: Path) -> None:
    """Catalogers and checks run over host trees (the scanner's own path after the walk)."""
    fine = scan_tree(_dpkg_tree(tmp_path / "a", GOOD_STATUS.encode()), DEBIAN, ("license",))
    garbage = scan_tree(
        _dpkg_tree(tmp_path / "b", os.urandom(50_000)), DEBIAN, (), "/img/garbage.qcow2"
    )
    run = ScanResult(SCHEMA_VERSION, __version__, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
    run.images = [fine, garbage]
    report = assert_round_trips(finalize_report(run))
    assert {p.name for p in report.images[0].os_roots[0].packages} == {"bash", "curl"}


def test_loose_documents_are_read_in_one_place() -> None:
    hostile = "\x1b[31mred\\xff"  # a terminal escape and an escaped non-UTF-8 byte stand
    doc = {
        "images": [
            None,
            {
                "source": hostile,
                "status": "bogus",
                "errors": "not a list",
                "roots": [
                    "not an object",
                    {
                        "device": 7,
                        "os": None,
                        "packages": [{"name": hostile, "licenses": ["MIT", None]}],
                        "findings": [{"rule_id": "R", "severity": "weird", "details": []}],
                        "plugins": [{"name": "x", "status": "partial"}],
                        "sections": {"migration": "not an object"},
                    },
                ],
                "sections": {"data_volumes": [{"device": "/dev/sdb1"}], "findings": [{}]},
                "manifest": [{"path": "/a", "mode": "rwx"}],
            },
        ]
    }
    original = copy.deepcopy(doc)
    report = ReportDoc.from_json(doc)
    assert doc == original
    (img,) = report.images
    assert img.source == hostile and img.status is ImageStatus.PARTIAL and img.errors == ()
    root, vol = img.roots()
    assert root.device == "7" and root.os == OSDoc() and root.migration is None
    assert root.packages[0].name == hostile and root.packages[0].licenses == ("MIT",)
    f = root.findings[0]
    assert (f.severity, f.details, f.check, f.target) == (Severity.UNKNOWN, {}, "", "")
    assert vol.data_volume and vol.device == "/dev/sdb1"
    assert len(img.image_findings) == 1 and img.manifest[0].mode == 0
    assert report.run_id is None and report.section("license_fleet") == {}


def test_finding_key_is_the_fingerprint_or_stable() -> None:
    a = FindingDoc("patch", "R", Severity.LOW, "t", "x")
    assert a.key() == FindingDoc("patch", "R", Severity.HIGH, "other", "x").key()
    assert (
        a.key().startswith("k:")
        and FindingDoc("p", "R", Severity.LOW, "t", fingerprint="f").key() == "f"
    )


def test_an_eicar_on_a_data_volume_is_in_every_writer_given_the_model(tmp_path: Path) -> None:
    """Each writer, given the model or the JSON, writes the same; each lists the data volume
    (findings formats its EICAR, SPDX and CycloneDX the volume itself)."""
    doc = finalize_report(_full_run())
    report = ReportDoc.from_json(doc)
    for fmt in ReportFormat:
        if fmt.writes_folder:
            a = fmt.write(doc, str(tmp_path / "a"), io.StringIO())
            b = fmt.write(report, str(tmp_path / "b"), io.StringIO())
            texts = [[p.read_text() for p in a], [p.read_text() for p in b]]
            assert texts[0] == texts[1], fmt
            assert any("/data/eicar.com" in t for t in texts[0]), fmt
            continue
        bufs = io.StringIO(), io.StringIO()
        fmt.write(doc, None, bufs[0])
        fmt.write(report, None, bufs[1])
        assert bufs[0].getvalue() == bufs[1].getvalue(), fmt
        text = bufs[0].getvalue()
        if fmt in (ReportFormat.SPDX, ReportFormat.CYCLONEDX):
            assert "data volume /dev/sdb1" in text, fmt
        elif fmt is ReportFormat.JUNIT:
            assert "/dev/sdb1" in text  # the volume's migration audit (it did not run)
        else:
            assert "/data/eicar.com" in text, fmt
