"""WES-NG definitions: CVE -> KB per product, the KB's UBR from the build table, supersedence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vmscan.advisories import ensure_index, import_feed, open_index
from vmscan.advisories.wesng import Product, closure, looks_like_wesng, product_of
from vmscan.advisories.windows import parse_builds
from vmscan.checks.patch import PatchCheck
from vmscan.guestfs_view import HostDirFS
from vmscan.model import Finding, OSInfo, RootResult
from vmscan.plugins import ScanContext

ROOT = Path(__file__).resolve().parents[1]
WESNG = ROOT.parent / "shared" / "corpus" / "windows" / "wesng-CVEs_20260628.csv.xz"
needs_wesng = pytest.mark.skipif(not WESNG.is_file(), reason=f"{WESNG} not present")
W11_23H2 = "Windows 11 Version 23H2 for x64-based Systems"


def test_product_names() -> None:
    assert product_of(W11_23H2) == Product(22631, "client", "x64")
    assert product_of("Windows 11 version 21H2 for ARM64-based Systems") == Product(
        22000, "client", "arm64"
    )
    assert product_of("Windows 10 Version 1607 for 32-bit Systems") == Product(
        14393, "client", "x86"
    )
    assert product_of("Windows 10 for x64-based Systems") == Product(10240, "client", "x64")
    assert product_of("Windows Server 2022 (Server Core installation)") == Product(
        20348, "server", ""
    )
    assert product_of("Windows Server 2016  ") == Product(14393, "server", "")
    for other in (
        "Microsoft .NET Framework 3.5 AND 4.8.1 on Windows Server 2022",
        "Windows Server 2012 R2",
        "Windows 11 Version 26H1 for x64-based Systems",  # no build known to vmscan
        "Windows Server 2022, 23H2 Edition (Server Core installation)",
    ):
        assert product_of(other) is None, other
    assert looks_like_wesng(
        b'"DatePosted","CVE","BulletinKB","Title","AffectedProduct",'
        b'"AffectedComponent","Severity","Impact","Supersedes","Exploits"\n'
    )
    assert not looks_like_wesng(b"CVE,KB,ProductID,ProductName,FixedBuild\n")
    assert closure("C", {"C": {"B"}, "B": {"A", "C"}}) == {"A", "B", "C"}  # cycles end


@pytest.fixture(scope="module")
def wesng_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not WESNG.is_file():
        pytest.skip(f"{WESNG} not present")
    adv = tmp_path_factory.mktemp("wesng") / "adv"
    rep = import_feed(WESNG, adv)  # ~6 s: 608,740 rows streamed, OS rows kept
    assert rep.kind == "wesng" and rep.date == "2026-06-25"
    assert any("name no KB" in r for r in rep.rejected)  # counted, said, not silently lost
    return adv


@needs_wesng
def test_oracle_kb5035853(wesng_dir: Path) -> None:
    """KB5035853 (20240312) lists 38 CVEs for Windows 11 23H2 x64 and supersedes 5034765."""
    idx = open_index(ensure_index(wesng_dir))
    try:
        rows = [r for r in idx.windows_kb_cves(22631) if r["product"] == W11_23H2]
        march = {r["cve"] for r in rows if r["kb"] == "KB5035853"}
        assert len(march) == 38
        assert min(r["date"] for r in rows if r["kb"] == "KB5035853") == "2024-03-12"
        assert idx.windows_supersedes(22631, "client", "x64")["KB5035853"] == {"KB5034765"}
    finally:
        idx.close()


@needs_wesng
def test_shipped_build_table_agrees_with_wesng(wesng_dir: Path) -> None:
    """Every hand-compiled row's KB is one WES-NG lists for that build, on that date."""
    table = json.loads((ROOT / "signatures" / "windows-builds.json").read_text())
    rows = parse_builds(table).rows
    idx = open_index(ensure_index(wesng_dir))
    try:
        posted: dict[int, dict[str, set[str]]] = {}
        for build in {r["build"] for r in rows}:
            for r in idx.windows_kb_cves(build):
                posted.setdefault(build, {}).setdefault(r["kb"], set()).add(r["date"])
    finally:
        idx.close()
    problems = [
        (r["build"], r["kb"], r["date"], sorted(posted.get(r["build"], {}).get(r["kb"], ())))
        for r in rows
        if r["date"] not in posted.get(r["build"], {}).get(r["kb"], set())
    ]
    assert problems == []
    assert len(rows) > 150


def _scan(
    adv: Path, build: int, ubr: int, product: str, kind: str
) -> tuple[list[Finding], dict[str, Any]]:
    os_info = OSInfo(
        type="windows",
        product_name=product,
        arch="x86_64",
        extra={"current_build": str(build), "ubr": ubr, "installation_type": kind},
    )
    root = RootResult(device="/dev/sda2", os=os_info)
    ctx = ScanContext(
        root=root, manifest=[], options={"advisories_dir": str(adv), "today": "2026-06-30"}
    )
    found = PatchCheck().run(HostDirFS("/nonexistent"), ctx)
    return [f for f in found if f.details.get("kind") == "windows_cve"], root.sections["patch"]


@needs_wesng
def test_fixed_build_from_kb_and_build_table(wesng_dir: Path) -> None:
    idx = open_index(ensure_index(wesng_dir))
    try:
        rows = [r for r in idx.windows_kb_cves(22631) if r["product"] == W11_23H2]
    finally:
        idx.close()
    march = {r["cve"] for r in rows if r["kb"] == "KB5035853"}
    only_march = {c for c in march if {r["kb"] for r in rows if r["cve"] == c} == {"KB5035853"}}
    # 22631.3155 is February 2024 (KB5034765): every March CVE is open, fixed in 22631.3296.
    found, section = _scan(wesng_dir, 22631, 3155, "Windows 10 Pro", "Client")
    by_cve = {f.rule_id: f for f in found}
    assert march <= set(by_cve)
    for cve in only_march:
        f = by_cve[cve]
        assert f.details["fixed_build"] == "22631.3296" and "KB5035853" in f.details["kbs"]
        assert f.details["sources"] == [f"wesng:{WESNG.name.removesuffix('.csv.xz')}"]
    assert {by_cve[c].severity for c in march} <= {"critical", "high", "medium", "low"}
    # KBs after the shipped table's last month (2025-10-14) are bounded by supersedence:
    # they supersede KB5066793 (22631.6060), so a guest at or below it lacks them.
    later = [f for f in found if f.details["fixed_build"] is None]
    assert later and {f.details["fixed_after"] for f in later} == {"22631.6060"}
    assert section["windows"]["wesng"]["kbs_not_in_build_table"]
    # At 22631.3296 the March-only CVEs are fixed.
    found, _ = _scan(wesng_dir, 22631, 3296, "Windows 10 Pro", "Client")
    assert not only_march & {f.rule_id for f in found}
    # Past the table's last row nothing bounds the newer KBs: undetermined, counted.
    found, section = _scan(wesng_dir, 22631, 6100, "Windows 10 Pro", "Client")
    assert [f for f in found if f.details["fixed_build"] is None] == []
    assert section["windows"]["wesng"]["undetermined_cves"] > 0


@needs_wesng
def test_server_rows_are_not_used_for_a_client(wesng_dir: Path) -> None:
    """Build 26100: Windows 11 24H2 and Windows Server 2025 rows are kept apart."""
    client, _ = _scan(wesng_dir, 26100, 2033, "Windows 10 Pro", "Client")
    server, _ = _scan(wesng_dir, 26100, 2033, "Windows Server 2025 Datacenter", "Server")
    assert client and server
    assert all(all("Server" not in p for p in f.details["products"]) for f in client)
    assert all(all("Server" in p for p in f.details["products"]) for f in server)
