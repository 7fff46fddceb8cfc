"""Patch check: advisory findings, end of life, Windows cumulative-update level."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from vmscan.advisories.windows import parse_builds, patch_level
from vmscan.checks.patch import PatchCheck, load_builds_table
from vmscan.eol import load_table, lookup, status
from vmscan.guestfs_view import HostDirFS
from vmscan.model import OSInfo, Package, PluginStatus, RootResult
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
    (d / "feed").mkdir(parents=True)
    (d / "feed" / "r.json").write_text(json.dumps(rec))
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
    assert f.rule_id == "CVE-2099-0001"  # one finding per (package, CVE)
    assert f.details["advisory_ids"] == ["DSA-9999-1"]
    assert f.severity == "critical"
    assert f.details["severity_source"] == "CVSS_V3 9.8"
    assert f.details["installed_version"] == "7.88.1-10"
    assert f.details["fixed_version"] == "7.88.1-10+deb12u5"
    assert f.details["status"] == "fixable"
    assert f.details["aliases"] == ["DSA-9999-1"]
    assert f.details["ecosystem"] == "Debian:12"
    assert len(f.fingerprint) == 64
    assert len({x.fingerprint for x in findings}) == 2
    summary = ctx.root.sections["patch"]["summary"]
    assert summary["packages"] == 3
    assert summary["vulnerable_packages"] == 2
    assert summary["by_severity"]["critical"] == 2
    assert summary["fixable"] == 2 and summary["unfixed"] == 0
    assert ctx.root.sections["patch"]["status"] == "complete"
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


def test_starter_set_finds_debian12_curl_and_says_it_is_stale(tmp_path: Path) -> None:
    ctx = _ctx(_curl("7.88.1-10"), DEBIAN12, today="2025-01-01")
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    by_rule = {(f.rule_id, f.target): f for f in findings}
    assert "DSA-5587-1" in by_rule[("CVE-2023-46218", "curl")].details["advisory_ids"]
    assert "DSA-5523-1" in by_rule[("CVE-2023-38545", "libcurl4")].details["advisory_ids"]
    stale = [f for f in findings if f.rule_id == "patch/stale-data"]
    assert stale and stale[0].severity == "info" and "starter" in stale[0].title


def test_broken_inventory_is_incomplete_not_clean(tmp_path: Path) -> None:
    """A failed/partial cataloger or an empty database where the OS needs one: incomplete."""
    feed = str(_feed(tmp_path, "7.88.1-10+deb12u5"))
    deb = OSInfo(**{**DEBIAN12.__dict__, "package_format": "deb"})
    for plugins, packages, why in (
        ([PluginStatus("os/dpkg", "failed", "status file is garbage")], [], "os/dpkg failed"),
        ([PluginStatus("os/dpkg", "partial", "3 bad paragraphs")], _curl("8.0-1"), "partial"),
        ([PluginStatus("os/dpkg", "succeeded")], [], "found none"),
    ):
        ctx = _ctx(packages, deb, advisories_dir=feed, today="2025-01-01")
        ctx.root.plugins.extend(plugins)
        PatchCheck().run(HostDirFS(tmp_path), ctx)
        sec = ctx.root.sections["patch"]
        assert sec["status"] == "incomplete", why
        assert any(why in r for r in sec["reasons"]), sec["reasons"]
    ctx = _ctx(_curl("8.0-1"), deb, advisories_dir=feed, today="2025-01-01")
    ctx.root.plugins.append(PluginStatus("os/dpkg", "succeeded"))
    PatchCheck().run(HostDirFS(tmp_path), ctx)
    assert ctx.root.sections["patch"]["status"] == "complete"


def test_no_feed_for_the_release_is_a_finding(tmp_path: Path) -> None:
    feed = str(_feed(tmp_path, "7.88.1-10+deb12u5"))
    d11 = OSInfo(type="linux", distro="debian", os_release_id="debian", version_id="11")
    ctx = _ctx(_curl("7.74.0-1"), d11, advisories_dir=feed, today="2025-01-01")
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    assert [f.rule_id for f in findings if f.rule_id.startswith("patch/")] == [
        "patch/no-advisory-data"
    ]
    assert ctx.root.sections["patch"]["status"] == "incomplete"


def test_eol_findings() -> None:
    table = load_table(SIGNATURES / "eol.json")
    st = status(DEBIAN12, table, dt.date(2025, 1, 1))
    assert st is not None and st.state == "supported"
    st = status(DEBIAN12, table, dt.date(2027, 1, 1))
    assert st is not None and st.state == "extended"
    st = status(DEBIAN12, table, dt.date(2029, 1, 1))
    assert st is not None and st.state == "eol"
    ctx = _ctx([], DEBIAN12, today="2029-01-01")
    findings = PatchCheck().run(HostDirFS("/nonexistent"), ctx)
    assert [(f.rule_id, f.severity) for f in findings if f.rule_id.startswith("eol/")] == [
        ("eol/debian-12", "high")
    ]
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
    rows = parse_builds(load_builds_table(SIGNATURES / "windows-builds.json")).rows
    lvl = patch_level(19045, 6456, rows)
    assert lvl is not None and lvl.updates_behind == 0 and lvl.months_behind == 0
    lvl = patch_level(19045, 6216, rows)
    assert lvl is not None
    assert lvl.updates_behind == lvl.months_behind == 2 and not lvl.gaps
    assert lvl.installed_kb == "KB5063709"
    assert lvl.latest_kb == "KB5066791"
    assert lvl.days_behind == 63
    lvl = patch_level(19044, 1, rows)  # 21H2 shares 22H2's servicing branch
    assert lvl is not None and lvl.installed_kb is None and lvl.updates_behind > 30
    assert lvl.months_behind is None  # older than the table: only "at least" is known
    assert patch_level(7601, 0, rows) is None
    # Server 2022 (hand-compiled rows): 20348.3692 is the May 2025 update.
    lvl = patch_level(20348, 3692, rows, "server")
    assert lvl is not None and lvl.installed_kb == "KB5058385"
    assert lvl.sources == ("vmscan-hand",)
    # Windows Server 2025 shares build 26100 (and its updates) with Windows 11 24H2.
    client = patch_level(26100, 4946, rows, "client")
    server = patch_level(26100, 4946, rows, "server")
    assert client is not None and server is not None
    assert client.latest_kb == server.latest_kb and client.installed_kb == "KB5063878"


def test_windows_levels_with_an_edition_and_a_gap() -> None:
    """Rows for one edition are not used for the other; a gap makes months the measure."""
    rows = [
        {"build": 26100, "ubr": 100, "kb": "KB1000001", "date": "2025-01-14", "edition": ""},
        {"build": 26100, "ubr": 200, "kb": "KB1000002", "date": "2025-02-11", "edition": ""},
        {"build": 26100, "ubr": 900, "kb": "KB1000009", "date": "2025-09-09", "edition": "client"},
        {
            "build": 26100,
            "ubr": 33000,
            "kb": "KB1000010",
            "date": "2025-10-14",
            "edition": "server",
        },
    ]
    for r in rows:
        r.update(name="Windows", also=[], source="t")
    client = patch_level(26100, 100, rows, "client")
    assert client is not None and client.latest_kb == "KB1000009"
    assert (client.updates_behind, client.months_behind, client.gaps) == (2, 8, True)
    server = patch_level(26100, 200, rows, "server")
    assert server is not None and server.latest_kb == "KB1000010"
    assert (server.updates_behind, server.months_behind) == (1, 8)
    assert server.days_behind == (dt.date(2025, 10, 14) - dt.date(2025, 2, 11)).days
    both = patch_level(26100, 200, rows)  # edition unknown: every row
    assert both is not None and both.latest_ubr == 33000


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
    assert "verify against Microsoft's update history" in cu[0].details["table_notice"]
    assert ctx.root.sections["patch"]["windows"]["installed_kbs"] == ["KB5044273", "KB5011048"]


def test_windows_unknown_build_is_an_explicit_finding(tmp_path: Path) -> None:
    os_info = OSInfo(
        type="windows",
        product_name="Windows Server 2012 R2 Standard",
        extra={"current_build": "9600", "ubr": 20000, "installation_type": "Server"},
    )
    ctx = _ctx([], os_info, today="2026-08-12")
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    unknown = [f for f in findings if f.rule_id == "windows-cu/unknown-build"]
    assert unknown and unknown[0].severity == "info" and "9600" in unknown[0].title
    assert ctx.root.sections["patch"]["status"] == "incomplete"
    assert any("9600" in n for n in ctx.notes)


def test_eol_from_libguestfs_names_only() -> None:
    table = load_table(SIGNATURES / "eol.json")
    alpine = OSInfo(type="linux", distro="alpinelinux", major_version=3, minor_version=18)
    row = lookup(alpine, table)
    assert row is not None and row.name == "Alpine Linux 3.18"
    rhel = OSInfo(type="linux", distro="rhel", major_version=9, minor_version=2)
    row = lookup(rhel, table)
    assert row is not None and row.version == "9"
    assert lookup(OSInfo(type="linux", distro="gentoo"), table) is None


CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@pytest.mark.skipif(not (CORPUS / "windows").is_dir(), reason="../shared/corpus not present")
def test_windows_per_cve_from_cvrf_table(tmp_path: Path) -> None:
    from vmscan.advisories import import_feed

    adv = tmp_path / "adv"
    import_feed(CORPUS / "windows" / "zentrix-kb_cve_data.csv.xz", adv)
    server = OSInfo(
        type="windows",
        product_name="Windows Server 2022 Datacenter",
        extra={"current_build": "20348", "ubr": 5386, "installation_type": "Server"},
    )
    ctx = _ctx([], server, advisories_dir=str(adv), today="2026-08-12")
    cves = [
        f for f in PatchCheck().run(HostDirFS(tmp_path), ctx) if f.details["kind"] == "windows_cve"
    ]
    assert cves and all(f.rule_id.startswith("CVE-") for f in cves)
    assert all("KB5120242" in f.details["kbs"] for f in cves)
    assert {f.details["fixed_build"] for f in cves} == {"20348.5499"}
    assert ctx.root.sections["patch"]["summary"]["vulnerabilities"] == len(cves)
    ctx = _ctx(
        [],
        OSInfo(**{**server.__dict__, "extra": {**server.extra, "ubr": 5499}}),
        advisories_dir=str(adv),
        today="2026-08-12",
    )
    findings = PatchCheck().run(HostDirFS(tmp_path), ctx)
    assert [f for f in findings if f.details["kind"] == "windows_cve"] == []


@pytest.mark.skipif(not (CORPUS / "windows").is_dir(), reason="../shared/corpus not present")
def test_imported_windows_versions_refresh_the_shipped_table(tmp_path: Path) -> None:
    """A windows-versions.json snapshot imported offline gives the latest update per product."""
    from vmscan.advisories import import_feed

    adv = tmp_path / "adv"
    rep = import_feed(CORPUS / "windows" / "zentrix-windows-versions.json", adv)
    assert rep.kind == "windows-builds" and rep.date == "2026-08-11"

    def run(product: str, build: int, ubr: int, kind: str) -> tuple[list[Any], dict[str, Any]]:
        os_info = OSInfo(
            type="windows",
            product_name=product,
            extra={"current_build": str(build), "ubr": ubr, "installation_type": kind},
        )
        ctx = _ctx([], os_info, advisories_dir=str(adv), today="2026-08-12")
        found = [
            f
            for f in PatchCheck().run(HostDirFS(tmp_path), ctx)
            if f.rule_id.startswith("windows-cu/")
        ]
        return found, ctx.root.sections["patch"]["windows"]

    # The corpus oracle: Windows Server 2022 = build 20348.5499, KB5120242, 2026-08-11.
    found, win = run("Windows Server 2022 Datacenter", 20348, 3692, "Server")
    cu = next(f for f in found if f.rule_id == "windows-cu/20348")
    assert (win["latest"], win["latest_kb"], win["latest_date"]) == (
        "20348.5499",
        "KB5120242",
        "2026-08-11",
    )
    assert "KB5120242" in cu.title and "20348.3692" in cu.title
    assert cu.details["installed_update_kb"] == "KB5058385"  # the shipped May 2025 row
    assert cu.details["months_behind"] == 15 and cu.details["table_gaps"] is True
    assert cu.details["days_behind"] == (dt.date(2026, 8, 11) - dt.date(2025, 5, 13)).days
    assert "15 monthly cumulative update(s)" in cu.title
    # Server 2025's imported row (26100.33296) is a server row: a 24H2 client is not
    # measured against it, a Server 2025 guest is.
    found, win = run("Windows 10 Pro", 26100, 6899, "Client")
    assert found == [] and win["latest_kb"] == "KB5066835"
    found, win = run("Windows Server 2025 Standard", 26100, 6899, "Server")
    assert [f.details["latest_kb"] for f in found] == ["KB5120233"]
