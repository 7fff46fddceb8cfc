"""Digests of everything a result depends on: a change reruns only the checks that read it.

The scanner is the stand-in of nightly_samples (no appliance); the digests, the plan, the
offline patch re-check and the stored results are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nightly_samples import REPO_SIGNATURES, FakeScanner, finding, write_config, write_guest

from vmscan.checks.patch import PatchCheck
from vmscan.nightly import NightlyConfig, data_digests, load_config, run_nightly
from vmscan.nightly.digests import changed_checks

_ADVISORY = {
    "id": "DSA-9999-1",
    "summary": "openssl - security update",
    "modified": "2026-01-01T00:00:00Z",
    "affected": [
        {
            "package": {"ecosystem": "Debian:12", "name": "openssl"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.10-1"}]}
            ],
        }
    ],
}


def _mixed_fleet(tmp: Path, *, checks: str = "", extra: str = "") -> NightlyConfig:
    """One Debian and one Windows guest."""
    write_guest(
        tmp / "imgs" / "deb.img",
        hostname="deb",
        packages=[["openssl", "3.0.9-1"]],
        findings=[finding("patch", "CVE-1", "medium", "openssl")],
        migration="ready",
    )
    write_guest(
        tmp / "imgs" / "win.img",
        hostname="win",
        os_type="windows",
        distro="windows",
        product="Windows Server 2019 Standard",
        major=10,
        package_format="unknown",
        os_extra={"current_build": "17763", "ubr": "7919", "installation_type": "Server"},
        migration="ready",
    )
    path = write_config(tmp, str(tmp / "imgs" / "*.img"), extra=extra)
    if checks:
        text = path.read_text().replace(
            'checks = ["antivirus", "patch", "migration"]', f"checks = {checks}"
        )
        path.write_text(text)
    # An advisory feed that covers Debian 12 (without one the patch check is rightly partial).
    feed = tmp / "sigs" / "advisories" / "local"
    feed.mkdir(parents=True, exist_ok=True)
    (feed / "DSA-9999-1.json").write_text(json.dumps(_ADVISORY))
    builds = tmp / "sigs" / "windows-builds.json"
    if not builds.exists():
        builds.write_bytes((REPO_SIGNATURES / "windows-builds.json").read_bytes())
    return load_config(path)


def _states(cfg: NightlyConfig) -> dict[str, dict[str, Any]]:
    rep = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    return {Path(i["source"]).stem: i["sections"]["state"] for i in rep["images"]}


def _windows_patch(cfg: NightlyConfig) -> dict[str, Any]:
    rep = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    win = next(i for i in rep["images"] if Path(i["source"]).stem == "win")
    section: dict[str, Any] = win["roots"][0]["sections"]["patch"]["windows"]
    return section


def test_windows_builds_table_rechecks_only_windows_images_offline(tmp_path: Path) -> None:
    cfg = _mixed_fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())  # the guest is at the table's latest UBR, 7919
    builds = tmp_path / "sigs" / "windows-builds.json"
    data = json.loads(builds.read_text())
    # Patch Tuesday: one more cumulative update for the guest's build.
    data["builds"]["17763"]["updates"].append(
        {"ubr": 8000, "kb": "KB9999999", "date": "2025-11-11", "source": "vmscan-hand"}
    )
    data["as_of"] = "2025-11-11"
    builds.write_text(json.dumps(data))
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    plan = {Path(p.source.path).stem: p for p in out.plan}
    assert plan["win"].action == "partial" and plan["win"].checks == ("patch",)
    assert plan["deb"].action == "carry", plan["deb"].reason
    assert scanner.calls == []  # the patch check ran on the stored inventory
    states = _states(cfg)
    assert states["win"]["rechecked_offline"] is True
    assert states["win"]["rescanned_checks"] == ["patch"]
    assert states["deb"]["carried_forward"] is True
    windows = _windows_patch(cfg)
    assert windows["updates_behind"] == 1 and windows["latest_kb"] == "KB9999999"
    again = FakeScanner()
    assert run_nightly(cfg, scan_fn=again).skipped == 2 and again.calls == []


def test_eol_table_rechecks_patch_offline_and_migration_with_the_appliance(
    tmp_path: Path,
) -> None:
    cfg = _mixed_fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    eol = tmp_path / "sigs" / "eol.json"
    eol.write_bytes(eol.read_bytes().rstrip() + b"\n\n")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    # Only migration needs the guest; patch was re-matched offline before the scan.
    assert [c[1] for c in scanner.calls] == [("migration",)]
    assert sorted(scanner.opened) == sorted(str(p.source.path) for p in out.plan)
    for state in _states(cfg).values():
        assert state["rescanned_checks"] == ["migration", "patch"]
        assert state["offline_checks"] == ["patch"] and state["rechecked_offline"] is False
    again = FakeScanner()
    assert run_nightly(cfg, scan_fn=again).skipped == 2 and again.calls == []


def test_licence_policy_contents_recheck_only_the_licence_check(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes((REPO_SIGNATURES / "licenses" / "default-policy.toml").read_bytes())
    cfg = _mixed_fleet(
        tmp_path,
        checks='["patch", "license"]',
        extra="",
    )
    text = cfg.path.read_text().replace("[scan]\n", f'[scan]\nlicense_policy = "{policy}"\n')
    cfg.path.write_text(text)
    cfg = load_config(cfg.path)
    run_nightly(cfg, scan_fn=FakeScanner())
    unchanged = FakeScanner()
    assert run_nightly(cfg, scan_fn=unchanged).skipped == 2
    # Same path, new contents: the licence check alone runs again (it reads the guest).
    policy.write_text(policy.read_text() + "\n# stricter from now on\n")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert [c[1] for c in scanner.calls] == [("license",)]
    assert {p.action for p in out.plan} == {"partial"}
    assert all(s["rescanned_checks"] == ["license"] for s in _states(cfg).values())


def test_plugin_version_bump_reruns_that_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _mixed_fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    monkeypatch.setattr(PatchCheck, "VERSION", PatchCheck.VERSION + ".1")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert {p.action for p in out.plan} == {"partial"}
    assert {p.checks for p in out.plan} == {("patch",)} and scanner.calls == []


def test_every_component_and_the_remote_clamd_version(tmp_path: Path) -> None:
    cfg = _mixed_fleet(tmp_path, checks='["antivirus", "patch", "license", "migration"]')
    cfg_remote = load_config(
        Path(
            cfg.path.write_text(
                cfg.path.read_text().replace("[scan]\n", '[scan]\nclamd = "tcp:127.0.0.1:9"\n')
            )
            and cfg.path
        )
    )
    one = data_digests(cfg_remote, remote_clamd="ClamAV 1.0.7/27400/Mon Nov 30 2026")
    assert set(one) == {
        "antivirus",
        "antivirus:hashes",
        "patch",
        "patch:windows",
        "license",
        "migration",
    }
    two = data_digests(cfg_remote, remote_clamd="ClamAV 1.0.7/27401/Tue Dec  1 2026")
    assert changed_checks(one, two, cfg_remote.checks) == ("antivirus",)
    # Nothing listens on port 9: the version says so, and differs from a real one.
    assert data_digests(cfg_remote)["antivirus"] != one["antivirus"]
    # A table no component claims counts for every check.
    (tmp_path / "sigs" / "new-table.json").write_text("{}")
    three = data_digests(cfg_remote, remote_clamd="ClamAV 1.0.7/27401/Tue Dec  1 2026")
    assert changed_checks(two, three, cfg_remote.checks) == cfg_remote.checks
    # Documentation beside the tables is not data.
    (tmp_path / "sigs" / "NOTES.md").write_text("read me")
    assert data_digests(cfg_remote, remote_clamd="ClamAV 1.0.7/27401/Tue Dec  1 2026") == three


def test_hash_lists_and_content_signatures_are_separate_components(tmp_path: Path) -> None:
    from vmscan.av.signatures import split_digests

    db = tmp_path / "clamav"
    db.mkdir()
    (db / "own.ndb").write_text("Test.Body:0:*:4142434445464748\n")
    (db / "own.hsb").write_text(f"{'ab' * 32}:10:Test.Hash\n")
    content0, hashes0 = split_digests(db)
    # A new SHA-256 entry: matched against stored hashes, so only that digest moves.
    (db / "own.hsb").write_text(f"{'ab' * 32}:10:Test.Hash\n{'cd' * 32}:*:Test.Any:73\n")
    content1, hashes1 = split_digests(db)
    assert content1 == content0 and hashes1 != hashes0
    # An MD5 entry needs the file's bytes (only clamd matches it): a content change.
    (db / "own.hdb").write_text(f"{'ef' * 16}:10:Test.Md5\n")
    content2, hashes2 = split_digests(db)
    assert content2 != content1 and hashes2 == hashes1
    (db / "own.ndb").write_text("Test.Body:0:*:4142434445464749\n")
    assert split_digests(db)[0] != content2 and split_digests(db)[1] == hashes2
