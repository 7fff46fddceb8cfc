"""JUnit XML writer of the migration audit, over reports made by the real check."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as DET
from test_migration_trees import (
    DEBIAN_FACTS,
    GuestDir,
    context,
    debian_os,
    debian_tree,
    windows_os,
    windows_tree,
)

from vmscan.checks.migration import ALL_RULES, MigrationCheck
from vmscan.model import Finding, ImageResult, ImageStatus, PluginStatus, to_jsonable
from vmscan.report.junit import write_junit


def _image(source: str, root_dir: Path, os_info: Any, device: str, **kw: Any) -> ImageResult:
    ctx = context(root_dir, os_info, device=device, **kw)
    ctx.root.findings = MigrationCheck().run(GuestDir(root_dir), ctx)
    return ImageResult(source=source, roots=[ctx.root])


def _report(tmp_path: Path) -> dict[str, Any]:
    win = tmp_path / "win"
    windows_tree(win)
    deb = tmp_path / "deb"
    debian_tree(deb)
    images = [
        _image("/images/win2019.v1.qcow2", win, windows_os(), "/dev/sda2"),
        _image(
            "/images/debian12.qcow2", deb, debian_os(), "/dev/vg0/root", image_facts=DEBIAN_FACTS
        ),
        ImageResult(
            source="/images/broken.vmdk",
            status=ImageStatus.ERROR,
            errors=["qemu-img: bad header \x01"],
        ),
        ImageResult(source="/images/data.raw", status=ImageStatus.NO_OS),
    ]
    return {"schema_version": "1", "images": [to_jsonable(i) for i in images]}


def _xml(scan: dict[str, Any]) -> Any:
    out = io.StringIO()
    write_junit(scan, out)
    text = out.getvalue()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return DET.fromstring(text.encode("utf-8"))


def _cases(suite: Any) -> dict[str, Any]:
    return {c.get("name").split(":")[0]: c for c in suite.findall("testcase")}


def test_one_suite_per_image_one_case_per_rule(tmp_path: Path) -> None:
    top = _xml(_report(tmp_path))
    assert top.tag == "testsuites"
    suites = top.findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "/images/win2019.v1.qcow2",
        "/images/debian12.qcow2",
        "/images/broken.vmdk",
        "/images/data.raw",
    ]
    for suite in suites[:2]:
        assert len(suite.findall("testcase")) == len(ALL_RULES)
        assert list(_cases(suite)) == [r.id for r in ALL_RULES]
    # Counts add up, per suite and in total.
    for el in [top, *suites]:
        cases = el.iter("testcase")
        n = f = e = s = 0
        for c in cases:
            n += 1
            f += c.find("failure") is not None
            e += c.find("error") is not None
            s += c.find("skipped") is not None
        assert (el.get("tests"), el.get("failures"), el.get("errors"), el.get("skipped")) == (
            str(n),
            str(f),
            str(e),
            str(s),
        )


def test_windows_missing_virtio_is_a_failing_case(tmp_path: Path) -> None:
    win = _xml(_report(tmp_path)).findall("testsuite")[0]
    cases = _cases(win)
    fail = cases["MIG-DRV-WIN-VIRTIO-STORAGE"].find("failure")
    assert fail is not None and fail.get("type") == "high"
    assert "viostor" in fail.get("message") and "vioscsi" in fail.get("message")
    assert "remediation:" in fail.text and "/Windows/System32/drivers" in fail.text
    # Linux-only rules are skipped on a Windows root; passing rules have no child.
    assert cases["MIG-STOR-DEVICE-NAME"].find("skipped") is not None
    assert len(cases["MIG-WIN-PENDING-REBOOT"]) == 0
    assert cases["MIG-DRV-WIN-VIRTIO-STORAGE"].get("classname") == (
        "migration.win2019_v1_qcow2.dev/sda2"
    )
    props = {p.get("name"): p.get("value") for p in win.find("properties")}
    assert props == {"status": "ok", "verdict /dev/sda2": "blocked"}


def test_debian_cases(tmp_path: Path) -> None:
    deb = _xml(_report(tmp_path)).findall("testsuite")[1]
    cases = _cases(deb)
    fail = cases["MIG-STOR-DEVICE-NAME"].find("failure")
    assert "(+1 more)" in fail.get("message")
    assert "/etc/fstab:4" in fail.text and "/etc/fstab:6" in fail.text
    assert cases["MIG-NET-MAC-BINDING"].find("failure") is not None
    assert len(cases["MIG-ARCH-32BIT-OS"]) == 0  # evaluated and passed
    assert cases["MIG-WIN-NTFS-DIRTY"].find("skipped") is not None


def test_error_and_no_os_images(tmp_path: Path) -> None:
    suites = _xml(_report(tmp_path)).findall("testsuite")
    [err_case] = suites[2].findall("testcase")
    err = err_case.find("error")
    assert err is not None and err.get("message").startswith("qemu-img: bad header")
    assert suites[2].get("errors") == "1"
    [skip_case] = suites[3].findall("testcase")
    assert skip_case.find("skipped") is not None


def test_check_not_run_and_unknown_rules_and_info(tmp_path: Path) -> None:
    scan = _report(tmp_path)
    root = scan["images"][0]["roots"][0]
    failed_root = dict(
        root,
        sections={},
        findings=[],
        plugins=[to_jsonable(PluginStatus("migration", "failed", "boom"))],
    )
    scan["images"][0]["roots"].append(failed_root)
    root["findings"].append(to_jsonable(Finding("migration", "MIG-FUTURE", "medium", "new rule")))
    root["findings"].append(to_jsonable(Finding("antivirus", "EICAR", "high", "not ours")))
    win = _xml(scan).findall("testsuite")[0]
    cases = win.findall("testcase")
    assert len(cases) == len(ALL_RULES) + 1 + 1
    assert cases[len(ALL_RULES)].get("name").startswith("MIG-FUTURE")
    err = cases[-1].find("error")
    assert err is not None and "failed: boom" in err.get("message")
    assert not [c for c in cases if "EICAR" in (c.get("name") or "")]


def test_info_findings_pass_and_hostile_text_is_escaped(tmp_path: Path) -> None:
    scan = _report(tmp_path)
    root = scan["images"][1]["roots"][0]
    root["findings"] = [
        to_jsonable(
            Finding(
                "migration",
                "MIG-TOOLS-CLOUD-INIT",
                "info",
                "cloud-init <x>",
                details={"text": "a\x00b\x1b]0;evil\x07 & </failure>"},
            )
        ),
        to_jsonable(
            Finding(
                "migration",
                "MIG-STOR-DEVICE-NAME",
                "medium",
                "t\x0c<&>",
                details={"text": "\ud800 lone surrogate"},
            )
        ),
    ]
    deb = _xml(scan).findall("testsuite")[1]
    cases = _cases(deb)
    info = cases["MIG-TOOLS-CLOUD-INIT"]
    assert info.find("failure") is None
    assert "</failure>" in info.find("system-out").text
    fail = cases["MIG-STOR-DEVICE-NAME"].find("failure")
    assert fail.get("message") == "t\ufffd<&>"


def test_rule_whose_step_failed_is_an_error(tmp_path: Path) -> None:
    scan = _report(tmp_path)
    section = scan["images"][1]["roots"][0]["sections"]["migration"]
    section["rules_evaluated"].remove("MIG-CAP-LOW-FREE")
    section["rules_failed"] = {"MIG-CAP-LOW-FREE": "capacity: ValueError: boom"}
    deb = _xml(scan).findall("testsuite")[1]
    err = _cases(deb)["MIG-CAP-LOW-FREE"].find("error")
    assert err is not None and err.get("message") == "capacity: ValueError: boom"
