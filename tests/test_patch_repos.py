"""The guest's configured repositories, and whether each fix is available from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmscan.advisories import import_feed
from vmscan.checks.patch import PatchCheck
from vmscan.checks.patch_repos import (
    FILE_LIMIT,
    parse_apk_repositories,
    parse_deb822_sources,
    parse_sources_list,
    parse_yum_repo,
    read_repositories,
)
from vmscan.guestfs_view import HostDirFS
from vmscan.model import Finding, OSInfo, Package, RootResult
from vmscan.plugins import ScanContext

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")

BOOKWORM = OSInfo(
    type="linux",
    distro="debian",
    os_release_id="debian",
    version_id="12",
    version_codename="bookworm",
    package_format="deb",
)
SECURITY_SOURCES = """Types: deb deb-src
URIs: http://security.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://example.org/disabled
Suites: bookworm-backports
Enabled: no
"""


def _write(root: Path, files: dict[str, str | bytes]) -> HostDirFS:
    for path, text in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode() if isinstance(text, str) else text)
    return HostDirFS(root)


def test_parsers() -> None:
    text = """# a comment
deb http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://deb.debian.org/d bookworm-updates main
deb-src http://deb.debian.org/debian bookworm-proposed main
# deb http://deb.debian.org/debian bookworm-backports main
deb http://security.debian.org/ buster/updates main
deb broken
"""
    assert parse_sources_list(text) == ["bookworm", "bookworm-updates", "buster-security"]
    assert parse_deb822_sources(SECURITY_SOURCES) == ["bookworm-security"]
    apk = "http://dl-cdn.alpinelinux.org/alpine/v3.10/main\n#x/v3.10/testing\n@c https://m/alpine/v3.10/community/\n"
    assert parse_apk_repositories(apk) == ["v3.10/main", "v3.10/community"]
    repo = parse_yum_repo(
        "[baseos]\nname=BaseOS\nmirrorlist=https://m/x\n\n[extras]\nbaseurl=https://m/e\n"
        "enabled=0\n\n[nourl]\nname=x\n"
    )
    assert [(r["id"], r["enabled"]) for r in repo] == [
        ("baseos", True),
        ("extras", False),
        ("nourl", False),
    ]
    with pytest.raises(ValueError):
        parse_yum_repo("no section header\n")


def test_reading_is_bounded_and_hostile_input_survives(tmp_path: Path) -> None:
    fs = _write(
        tmp_path,
        {
            "/etc/apt/sources.list": "deb http://deb.debian.org/debian bookworm main\n",
            "/etc/apt/sources.list.d/big.list": b"#" * (FILE_LIMIT + 1),
            "/etc/apt/sources.list.d/bin.list": b"deb \xff\xfe http://x bookworm-updates main\n",
        },
    )
    cfg = read_repositories(fs, "deb")
    assert cfg.read and cfg.kind == "apt"
    assert cfg.suites == ["bookworm"]  # the binary line has no valid URI/suite pair
    assert any("big.list" in p for p in cfg.problems)  # too large: said, not silently dropped
    # Nothing under /etc/yum.repos.d on an rpm guest: looked, and nothing is configured.
    (tmp_path / "rpm").mkdir()
    empty = read_repositories(HostDirFS(tmp_path / "rpm"), "rpm")
    assert empty.read and empty.repos == []
    # No guest (offline re-check): not read.
    assert not read_repositories(None, "deb").read


def _ctx(root: RootResult, adv: Path) -> ScanContext:
    return ScanContext(
        root=root, manifest=[], options={"advisories_dir": str(adv), "today": "2025-09-01"}
    )


def _run(
    fs: HostDirFS | None, os_info: OSInfo, pkgs: list[Package], adv: Path
) -> tuple[list[Finding], RootResult]:
    root = RootResult(device="/dev/sda1", os=os_info, packages=pkgs)
    found = [
        f for f in PatchCheck().run(fs, _ctx(root, adv)) if f.details.get("kind") == "advisory"
    ]  # type: ignore[arg-type]
    return found, root


@needs_corpus
def test_tracker_fix_in_bookworm_security(tmp_path: Path) -> None:
    """sope CVE-2025-53603: fixed 5.8.0-1+deb12u1, published in bookworm-security only."""
    adv = tmp_path / "adv"
    import_feed(CORPUS / "debian-tracker" / "vunnel-6-packages.json", adv)
    sope = [Package("sope", "5.8.0-1", "amd64", "sope", "5.8.0-1", found_by="os/dpkg")]
    main_only = {"/etc/apt/sources.list": "deb http://deb.debian.org/debian bookworm main\n"}
    found, root = _run(_write(tmp_path / "a", main_only), BOOKWORM, sope, adv)
    f = next(x for x in found if x.rule_id == "CVE-2025-53603")
    assert f.details["fix_in_repositories"] == ["bookworm-security"]
    assert f.details["fix_available"] == "not_configured"
    assert "bookworm-security" in f.details["fix_available_reason"]
    assert root.sections["patch"]["repositories"]["suites"] == ["bookworm"]
    assert root.sections["patch"]["summary"]["fix_available"]["not_configured"] >= 1
    with_sec = {**main_only, "/etc/apt/sources.list.d/debian.sources": SECURITY_SOURCES}
    found, root = _run(_write(tmp_path / "b", with_sec), BOOKWORM, sope, adv)
    f = next(x for x in found if x.rule_id == "CVE-2025-53603")
    assert f.details["fix_available"] == "available"
    # The nightly's offline re-check has no guest: it reuses the stored reading.
    again = RootResult(device="/dev/sda1", os=BOOKWORM, packages=sope)
    again.sections = json.loads(json.dumps(root.sections))
    found = [f for f in PatchCheck().run(None, _ctx(again, adv)) if f.rule_id == "CVE-2025-53603"]  # type: ignore[arg-type]
    assert found[0].details["fix_available"] == "available"
    assert again.sections["patch"]["repositories"]["from_previous_scan"] is True
    # Nothing readable at all: unknown, never "not configured".
    fresh = RootResult(device="/dev/sda1", os=BOOKWORM, packages=sope)
    found = [f for f in PatchCheck().run(None, _ctx(fresh, adv)) if f.rule_id == "CVE-2025-53603"]  # type: ignore[arg-type]
    assert found[0].details["fix_available"] == "unknown"


def test_osv_dsa_needs_the_security_suite(tmp_path: Path) -> None:
    """A DSA (starter set) is published in bookworm-security; without it: unknown."""
    curl = [Package("curl", "7.88.1-10", "amd64", "curl", "7.88.1-10", found_by="os/dpkg")]
    adv = ROOT / "signatures" / "advisories"
    main_only = {"/etc/apt/sources.list": "deb http://deb.debian.org/debian bookworm main\n"}
    found, _ = _run(_write(tmp_path / "a", main_only), BOOKWORM, curl, adv)
    assert found and {f.details["fix_available"] for f in found} == {"unknown"}
    with_sec = {**main_only, "/etc/apt/sources.list.d/debian.sources": SECURITY_SOURCES}
    found, _ = _run(_write(tmp_path / "b", with_sec), BOOKWORM, curl, adv)
    assert {f.details["fix_available"] for f in found} == {"available"}


@needs_corpus
def test_alpine_repository_and_rpm_repos(tmp_path: Path) -> None:
    adv = tmp_path / "adv"
    import_feed(CORPUS / "alpine-secdb" / "claircore-v3.10-community.json", adv)
    alpine = OSInfo(type="linux", os_release_id="alpine", version_id="3.10.9", package_format="apk")
    botan = [Package("botan", "2.8.0-r0", source_name="botan", found_by="os/apk")]
    main = {"/etc/apk/repositories": "https://dl-cdn.alpinelinux.org/alpine/v3.10/main\n"}
    found, _ = _run(_write(tmp_path / "a", main), alpine, botan, adv)
    f = next(x for x in found if x.rule_id == "CVE-2018-20187")
    assert (f.details["fix_available"], f.details["fix_available_reason"]) == (
        "not_configured",
        "v3.10/community is not in /etc/apk/repositories",
    )
    both = {
        "/etc/apk/repositories": main["/etc/apk/repositories"]
        + "https://m/alpine/v3.10/community\n"
    }
    found, _ = _run(_write(tmp_path / "b", both), alpine, botan, adv)
    assert (
        next(x for x in found if x.rule_id == "CVE-2018-20187").details["fix_available"]
        == "available"
    )
    # rpm: repositories do not say what they carry; none enabled is a clear "no".
    rec = {
        "id": "ALSA-TEST-1",
        "modified": "2024-01-01T00:00:00Z",
        "affected": [
            {
                "package": {"ecosystem": "AlmaLinux:9", "name": "curl"},
                "ranges": [
                    {
                        "type": "ECOSYSTEM",
                        "events": [{"introduced": "0"}, {"fixed": "7.76.1-23.el9_2.4"}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "rpmadv" / "f").mkdir(parents=True)
    (tmp_path / "rpmadv" / "f" / "r.json").write_text(json.dumps(rec))
    alma = OSInfo(type="linux", os_release_id="almalinux", version_id="9.2", package_format="rpm")
    curl = [Package("curl", "7.76.1-23.el9_2.2", "x86_64", "curl", found_by="os/rpm")]
    enabled = {"/etc/yum.repos.d/almalinux.repo": "[baseos]\nmirrorlist=https://m/b\nenabled=1\n"}
    found, _ = _run(_write(tmp_path / "c", enabled), alma, curl, tmp_path / "rpmadv")
    assert [f.details["fix_available"] for f in found] == ["unknown"]
    disabled = {"/etc/yum.repos.d/almalinux.repo": "[baseos]\nmirrorlist=https://m/b\nenabled=0\n"}
    found, _ = _run(_write(tmp_path / "d", disabled), alma, curl, tmp_path / "rpmadv")
    assert [f.details["fix_available"] for f in found] == ["not_configured"]
