"""Migration check end to end: fixture images through the real scanner and libguestfs."""

from __future__ import annotations

import io
from typing import Any

import defusedxml.ElementTree as DET
import pytest

import fixtures
from fixtures.specs import migration_debian as spec
from vmscan import registry
from vmscan.checks.migration import MigrationCheck
from vmscan.model import to_jsonable
from vmscan.report.junit import write_junit
from vmscan.scanner import ScanOptions, scan_image

pytestmark = pytest.mark.guest


def _scan(fixture: str) -> dict[str, Any]:
    """One scan (one appliance) of a fixture, migration check only."""
    image = fixtures.build(fixture)
    with pytest.MonkeyPatch.context() as mp:
        if not any(isinstance(c, MigrationCheck) for c in registry.all_checks()):
            # Until the lead registers the check, run it the way the registry would.
            mp.setattr(registry, "all_checks", lambda: (MigrationCheck(),))
        result = scan_image(str(image), ScanOptions(checks=("migration",)))
    data: dict[str, Any] = to_jsonable(result)
    return data


@pytest.fixture(scope="module")
def debian() -> dict[str, Any]:
    return _scan("migration-debian")


@pytest.fixture(scope="module")
def windows() -> dict[str, Any]:
    if "migration-windows" not in fixtures.names():
        pytest.skip("migration-windows needs ../shared/corpus hives and hivexregedit")
    return _scan("migration-windows")


def _root(data: dict[str, Any]) -> dict[str, Any]:
    (root,) = data["roots"]
    assert root["os"]["type"] == "linux"
    return root  # type: ignore[no-any-return]


def _findings(root: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [f for f in root["findings"] if f["rule_id"] == rule]


def test_fstab_device_names_are_findings_lvm_root_is_not(debian: dict[str, Any]) -> None:
    root = _root(debian)
    names = _findings(root, "MIG-STOR-DEVICE-NAME")
    got = {(f["details"]["device"], f["details"]["file"], f["details"]["line"]) for f in names}
    assert got == {("/dev/sda2", "/etc/fstab", 4), ("/dev/sdb1", "/etc/fstab", 5)}
    assert not [f for f in root["findings"] if "vg0" in str(f["details"].get("device", ""))]
    absent = _findings(root, "MIG-STOR-ABSENT-DEVICE")
    assert [f["details"]["device"] for f in absent] == ["/dev/sdb1"]


def test_udev_mac_binding(debian: dict[str, Any]) -> None:
    (f,) = _findings(_root(debian), "MIG-NET-MAC-BINDING")
    assert f["details"]["file"] == "/etc/udev/rules.d/70-persistent-net.rules"
    assert f["details"]["line"] == 5 and f["details"]["mac"] == spec.MAC


def test_boot_arch_kernel_capacity(debian: dict[str, Any]) -> None:
    section = _root(debian)["sections"]["migration"]
    facts = section["facts"]
    assert facts["partition_table"] == "mbr" and facts["firmware"] == "bios"
    assert facts["arch"] == "x86_64" and facts["arch_bits"] == 64
    (k,) = facts["kernels"]
    assert k["version"] == spec.KERNEL
    assert all(k["virtio"].values())
    assert k["initramfs"]["complete"] and k["initramfs"]["virtio"]["virtio_blk"]
    by_mp = {f["mountpoint"]: f for f in facts["filesystems"]}
    for mp in ("/", "/boot", "/srv"):
        assert by_mp[mp]["size"] > 0 and 0 < by_mp[mp]["free"] < by_mp[mp]["size"]
        assert by_mp[mp]["used"] > 0
    assert [s["address"] for s in facts["static_ip"]] == [spec.STATIC_IP]
    assert section["verdict"] == "needs_work"
    (mig,) = [p for p in _root(debian)["plugins"] if p["name"] == "migration"]
    assert (mig["status"], mig["reason"], mig["version"]) == (
        "succeeded",
        "",
        MigrationCheck.VERSION,
    )


def test_junit_from_the_scan(debian: dict[str, Any]) -> None:
    out = io.StringIO()
    write_junit({"images": [debian]}, out)
    top = DET.fromstring(out.getvalue().encode())
    (suite,) = top.findall("testsuite")
    cases = {str(c.get("name")).split(":")[0]: c for c in suite.findall("testcase")}
    assert cases["MIG-STOR-DEVICE-NAME"].find("failure") is not None
    assert cases["MIG-NET-MAC-BINDING"].find("failure") is not None
    assert len(cases["MIG-DRV-LINUX-VIRTIO-STORAGE"]) == 0


def test_windows_without_virtio_is_blocked(windows: dict[str, Any]) -> None:
    (root,) = windows["roots"]
    assert root["os"]["type"] == "windows"
    section = root["sections"]["migration"]
    assert section["verdict"] == "blocked"
    (f,) = _findings(root, "MIG-DRV-WIN-VIRTIO-STORAGE")
    assert f["severity"] == "high" and "viostor" in f["title"]
    assert f["details"]["missing"] == ["viostor", "vioscsi"]
    assert _findings(root, "MIG-DRV-WIN-VIRTIO-NET")
    facts = section["facts"]
    assert facts["drivers_source"]["registry"] == "SYSTEM hive Services keys"
    assert facts["drivers"]["viostor"]["service"] is False
    assert facts["drivers"]["vioscsi"]["staged"] is True
    assert facts["firmware"] == "bios" and facts["partition_table"] == "mbr"
    # Raw NTFS reads through the appliance: both volumes were cleanly made.
    assert facts["windows_state"]["ntfs_dirty"] == {"/dev/sda1": False, "/dev/sda2": False}
    out = io.StringIO()
    write_junit({"images": [windows]}, out)
    (suite,) = DET.fromstring(out.getvalue().encode()).findall("testsuite")
    cases = {str(c.get("name")).split(":")[0]: c for c in suite.findall("testcase")}
    failure = cases["MIG-DRV-WIN-VIRTIO-STORAGE"].find("failure")
    assert failure is not None and "viostor" in str(failure.get("message"))
