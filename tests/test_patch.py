"""Patch check: advisory findings, end of life, Windows cumulative-update level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmscan.checks.patch import PatchCheck, load_builds_table, windows_patch_level
from vmscan.eol import load_table, lookup, status
from vmscan.guestfs_view import HostDirFS
from vmscan.model import OSInfo, Package, RootResult
from vmscan.plugins import ScanContext

SIGNATURES = Path(__file__).resolve().parents[1] / "signatures"

DEBIAN12 = OSInfo(
    type="linux",
    distro="debian",
    product_name="Debian GNU/Linux 12 (bookworm)",
    major_version=12,
    os_release_id="debian",
    version_id="12",
)


def _feed(tmp: Path, fixed: str | None) -> Path:
    events: list[dict[str, str]] = [{"introduced": "0"}]
    if fixed:
        events.append({"fixed": fixed})
    rec = {
        "id": "DSA-9999-1",
        "modified": "2024-01-01T00:00:00Z",
        "aliases": ["CVE-2099-0001"],
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [
            {
                "package": {"ecosystem": "Debian:12", "name": "curl"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }
    d = tmp / ("adv-" + (fixed or "none"))
    d.mkdir()
    (d / "r.json").write_text(json.dumps(rec))
    return d


def _ctx(packages: list[Package], os_info: OSInfo, **options: object) -> ScanContext:
    root = RootResult(device="/dev/sda1", os=os_info, packages=packages)
    return ScanContext(root=root, manifest=[], options=dict(options))


def _curl(version: str) -> list[Package]:
    return [
        Package("curl", version, "amd64", "curl", version, found_by="os/dpkg"),
        Package("libcurl4", version, "amd64", "curl", version, found_by="os/dpkg"),
        Package("bash", "5.2.15-2+b2", "amd64", "bash", "5.2.15-2", found_by="os/dpkg"),
    ]


def test_fixed_later_gives_finding_with_both_versions(tmp_path: Path) -> None:
    feed = _feed(tmp_path, "7.88.1-10+deb12u5")
    ctx = _ctx(_curl("7.88.1-10"), DEBIAN12, advisories_dir=str(feed), today="2025-01-01")
    findings = [
        f for f in PatchCheck().run(HostDirFS(tmp_path), ctx) if f.details.get("kind") == "advisory"
    ]
    assert sorted(f.target for f in findings) == ["curl", "libcurl4"]
    f = findings[0]
    assert f.check == "patch"
    assert f.rule_id == "DSA-9999-1"
    assert f.severity == "critical"
    assert f.details["installed_version"] == "7.88.1-10"
    assert f.details["fixed_version"] == "7.88.1-10+deb12u5"
    assert f.details["status"] == "fixable"
    assert f.details["aliases"] == ["CVE-2099-0001"]
    assert f.details["ecosystem"] == "Debian:12"
    assert len(f.fingerprint) == 64
    assert len({x.fingerprint for x in findings}) == 2
    summary = ctx.root.sections["patch"]["summary"]
    assert summary["packages"] == 3
    assert summary["vulnerable_packages"] == 2
    assert summary["advisories_by_severity"]["critical"] == 2
    assert ctx.notes == []
    # Stable across runs.
    again = [
        f for f in PatchCheck().run(HostDirFS(tmp_path), ctx) if f.details.get("kind") == "advisory"
    ]
    assert sorted(x.fingerprint for x in again) == sorted(x.fingerprint for x in findings)


@pytest.mark.parametrize("version", ["7.88.1-10+deb12u5", "7.88.1-10+deb12u7", "8.5.0-1"])
def test_at_or_above_fixed_gives_none(tmp_path: Path, version: str) -> None:
    ctx = _ctx(
        _curl(version),
        DEBIAN12,
        advisories_dir=str(_feed(tmp_path, "7.88.1-10+deb12u5")),
        today="2025-01-01",
    )
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    assert [f for f in findings if f.details.get("kind") == "advisory"] == []
    assert ctx.root.sections["patch"]["summary"]["vulnerable_packages"] == 0


def test_unfixed_is_apart(tmp_path: Path) -> None:
    ctx = _ctx(
        _curl("7.88.1-10"), DEBIAN12, advisories_dir=str(_feed(tmp_path, None)), today="2025-01-01"
    )
    findings = [
        f for f in PatchCheck().run(HostDirFS(tmp_path), ctx) if f.details.get("kind") == "advisory"
    ]
    assert {f.details["status"] for f in findings} == {"unfixed"}
    assert all(f.details["fixed_version"] is None for f in findings)
    assert ctx.root.sections["patch"]["summary"]["unfixed"] == 2


def test_starter_set_finds_debian12_curl(tmp_path: Path) -> None:
    ctx = _ctx(_curl("7.88.1-10"), DEBIAN12, today="2025-01-01")
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    hits = {(f.rule_id, f.target) for f in findings}
    assert ("DSA-5587-1", "curl") in hits
    assert ("DSA-5523-1", "libcurl4") in hits


def test_eol_findings() -> None:
    table = load_table(SIGNATURES / "eol.json")
    import datetime as dt

    st = status(DEBIAN12, table, dt.date(2025, 1, 1))
    assert st is not None and st.state == "supported"
    st = status(DEBIAN12, table, dt.date(2027, 1, 1))
    assert st is not None and st.state == "extended"
    st = status(DEBIAN12, table, dt.date(2029, 1, 1))
    assert st is not None and st.state == "eol"
    ctx = _ctx([], DEBIAN12, today="2029-01-01")
    findings = PatchCheck().run(HostDirFS("/nonexistent"), ctx)
    assert [(f.rule_id, f.severity) for f in findings] == [("eol/debian-12", "high")]
    win7 = OSInfo(
        type="windows",
        product_name="Windows 7 Professional",
        major_version=6,
        minor_version=1,
        extra={"current_build": "7601"},
    )
    row = lookup(win7, table)
    assert row is not None and row.name == "Windows 7"
    phony = OSInfo(type="windows", product_name="Microsoft Windows 7 Phony Edition")
    row = lookup(phony, table)
    assert row is not None and row.name == "Windows 7"
    win11 = OSInfo(
        type="windows",
        product_name="Windows 10 Pro",
        extra={"current_build": "22631", "edition_id": "Professional"},
    )
    row = lookup(win11, table)
    assert row is not None and row.name == "Windows 11 23H2"
    ltsc = OSInfo(
        type="windows",
        product_name="Windows 10 Enterprise LTSC 2021",
        extra={"current_build": "19044", "edition_id": "EnterpriseS"},
    )
    row = lookup(ltsc, table)
    assert row is not None and row.eol.year == 2027


def test_windows_patch_level_table() -> None:
    table = load_builds_table(SIGNATURES / "windows-builds.json")
    lvl = windows_patch_level(19045, 6456, table)
    assert lvl is not None and lvl.updates_behind == 0
    lvl = windows_patch_level(19045, 6216, table)
    assert lvl is not None
    assert lvl.updates_behind == 2
    assert lvl.installed_kb == "KB5063709"
    assert lvl.latest_kb == "KB5066791"
    assert lvl.days_behind == 63
    lvl = windows_patch_level(19044, 1, table)  # 21H2 shares 22H2's servicing branch
    assert lvl is not None and lvl.installed_kb is None and lvl.updates_behind > 30
    assert windows_patch_level(7601, 0, table) is None


def test_windows_check_finding(tmp_path: Path) -> None:
    os_info = OSInfo(
        type="windows",
        distro="windows",
        product_name="Windows 10 Pro",
        major_version=10,
        extra={"current_build": "19045", "ubr": 5011, "installed_kbs": ["KB5044273", "KB5011048"]},
    )
    ctx = _ctx([], os_info, today="2025-01-01")
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    cu = [f for f in findings if f.rule_id == "windows-cu/19045"]
    assert len(cu) == 1
    assert cu[0].details["updates_behind"] == 12
    assert "KB5066791" in cu[0].details["missing_kbs"]
    assert ctx.root.sections["patch"]["windows"]["installed_kbs"] == ["KB5044273", "KB5011048"]


def test_eol_from_libguestfs_names_only() -> None:
    table = load_table(SIGNATURES / "eol.json")
    alpine = OSInfo(type="linux", distro="alpinelinux", major_version=3, minor_version=18)
    row = lookup(alpine, table)
    assert row is not None and row.name == "Alpine Linux 3.18"
    rhel = OSInfo(type="linux", distro="rhel", major_version=9, minor_version=2)
    row = lookup(rhel, table)
    assert row is not None and row.version == "9"
    assert lookup(OSInfo(type="linux", distro="gentoo"), table) is None
