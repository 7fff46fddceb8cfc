"""Advisory feeds: OSV schema validation, import, the compiled index, the corpus oracles."""

from __future__ import annotations

import copy
import datetime as dt
import json
import lzma
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest

from vmscan.advisories import (
    AdvisoryError,
    Ecosystem,
    alpine_secdb,
    debian_tracker,
    ensure_index,
    guest_ecosystem,
    import_feed,
    match_packages,
    open_index,
    windows,
)
from vmscan.advisories.index import INDEX_NAME, content_digest
from vmscan.advisories.severity import debian_urgency, osv_rating, score_vector
from vmscan.model import OSInfo, Package

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
OSV = CORPUS / "osv"
STARTER = Path(__file__).resolve().parents[1] / "signatures" / "advisories"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")

GOOD = {
    "id": "OSV-TEST-1",
    "modified": "2024-01-01T00:00:00Z",
    "affected": [
        {
            "package": {"ecosystem": "Debian:12", "name": "curl"},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "7.88.1-10+deb12u5"}],
                }
            ],
        }
    ],
}


def _pkg(name: str, version: str, src: str = "", src_version: str = "") -> Package:
    return Package(
        name=name,
        version=version,
        arch="amd64",
        source_name=src or name,
        source_version=src_version or version,
        found_by="os/dpkg",
    )


def _match(adv_dir: Path, eco: Ecosystem, pkgs: list[Package]) -> list[tuple[str, str, str | None]]:
    idx = open_index(ensure_index(adv_dir))
    try:
        res = match_packages(idx, eco, pkgs)
    finally:
        idx.close()
    return sorted((m.package.name, m.advisory.id, m.fixed_version) for m in res.matches)


# --------------------------------------------------------------------------- severities


def test_cvss_versions_and_words() -> None:
    assert score_vector("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == (
        9.8,
        "critical",
    )
    assert score_vector("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:L/UI:R/S:C/C:L/I:L/A:N") == (
        5.4,
        "medium",
    )
    assert score_vector("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:P/A:P") == (7.5, "high")
    v4 = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"
    assert score_vector("CVSS_V4", v4) == (9.3, "critical")
    assert score_vector("CVSS_V3", "CVSS:3.1/AV:X/garbage") is None
    rec = {
        "severity": [
            {"type": "CVSS_V2", "score": "AV:N/AC:L/Au:N/C:P/I:P/A:P"},
            {"type": "CVSS_V4", "score": v4},
        ]
    }
    assert osv_rating(rec).severity == "critical"
    assert osv_rating({"severity": [{"type": "Ubuntu", "score": "medium"}]}).severity == "medium"
    assert osv_rating({"database_specific": {"severity": "Important"}}).severity == "high"
    assert osv_rating({"summary": "Moderate: perl:5.32 security update"}).severity == "medium"
    assert osv_rating({}).severity == "unknown"
    assert debian_urgency("high**").severity == "high"
    assert debian_urgency("unimportant").severity == "info"
    assert debian_urgency("not yet assigned").severity == "unknown"
    assert debian_urgency("end-of-life").severity == "unknown"


# --------------------------------------------------------------------------- import / index


@needs_corpus
def test_import_osv_folder_and_zip_incremental(tmp_path: Path) -> None:
    src = tmp_path / "feed"
    src.mkdir()
    tops = [p for p in OSV.glob("*.json") if p.name != "osv-schema.json"]
    for p in tops:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.json").write_text('{"id": "X", "modified": 5}')
    (src / "notjson.json").write_text("{")
    dest = tmp_path / "advisories"
    rep = import_feed(src, dest)
    assert (rep.kind, rep.imported, rep.rejected_count) == ("osv", len(tops), 2)
    assert any("modified" in r for r in rep.rejected)
    # The same folder again is skipped by digest; the index is not rebuilt.
    mtime = (dest / INDEX_NAME).stat().st_mtime_ns
    again = import_feed(src, dest)
    assert again.skipped and (dest / INDEX_NAME).stat().st_mtime_ns == mtime
    # A zip of the same records is another source (other bytes) but the same records.
    zpath = tmp_path / "osv-all.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, f"osv/{p.name}")
    rep2 = import_feed(zpath, dest)
    assert rep2.imported == len(tops) and rep2.digest == rep.digest
    idx = open_index(ensure_index(dest))
    feeds = {f.name: f for f in idx.feeds()}
    idx.close()
    assert feeds["feed"].records == feeds["osv-all"].records == len(tops)
    # Read-only: a worker's connection cannot write.
    con = sqlite3.connect(f"file:{dest / INDEX_NAME}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError):
        con.execute("DELETE FROM feeds")
    con.close()


def test_import_rejects_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(AdvisoryError):
        import_feed(bad, tmp_path / "dest")
    with pytest.raises(AdvisoryError):
        import_feed(tmp_path / "missing", tmp_path / "dest")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(AdvisoryError, match="none of OSV"):
        import_feed(tmp_path / "other.json", tmp_path / "dest")


def test_stale_index_recompiled_only_for_changed_feed(tmp_path: Path) -> None:
    adv = tmp_path / "adv"
    (adv / "a").mkdir(parents=True)
    (adv / "a" / "r.json").write_text(json.dumps(GOOD))
    (adv / "b").mkdir()
    (adv / "b" / "broken.json").write_text("[1, 2")
    idx = open_index(ensure_index(adv))
    first = idx.digest
    feeds = {f.name: f for f in idx.feeds()}
    idx.close()
    assert feeds["a"].records == 1 and feeds["b"].records == 0 and feeds["b"].rejected == 1
    rec = copy.deepcopy(GOOD)
    rec["id"] = "OSV-TEST-2"
    (adv / "a" / "s.json").write_text(json.dumps(rec))
    idx = open_index(ensure_index(adv))
    assert idx.digest != first
    assert {f.name: f.records for f in idx.feeds()}["a"] == 2
    idx.close()


def test_match_fixed_release_and_source_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "r.json").write_text(json.dumps(GOOD))
    eco = Ecosystem("Debian", "12", "bookworm")
    assert _match(tmp_path, eco, [_pkg("libcurl4", "7.88.1-10", "curl")]) == [
        ("libcurl4", "OSV-TEST-1", "7.88.1-10+deb12u5")
    ]
    for v in ("7.88.1-10+deb12u5", "7.88.1-10+deb12u6", "8.0-1"):
        assert _match(tmp_path, eco, [_pkg("curl", v)]) == []
    # The release dimension: a bookworm record does not apply to bullseye.
    assert _match(tmp_path, Ecosystem("Debian", "11", "bullseye"), [_pkg("curl", "7.0-1")]) == []


@needs_corpus
def test_corpus_osv_records(tmp_path: Path) -> None:
    adv = tmp_path / "adv"
    rep = import_feed(OSV, adv, name="osv")  # the folder and its subfolders, one feed
    assert rep.rejected_count == 1 and "osv-schema.json" in rep.rejected[0]
    dsa = _match(adv, Ecosystem("Debian", "7"), [_pkg("nginx", "1.2.1-2.2+wheezy2")])
    assert dsa == [("nginx", "DSA-3029-1", "1.2.1-2.2+wheezy3")]
    apk = [Package("libssl1.0", "1.0.2o-r2", source_name="openssl")]
    assert [f for _p, _i, f in _match(adv, Ecosystem("Alpine", "3.8"), apk)] == ["1.0.2q-r0"]
    rh = [Package("git-lfs", "2.13.3-3.el8_6", source_name="git-lfs")]
    assert _match(adv, Ecosystem("Red Hat", "8.6"), rh) == [
        ("git-lfs", "RHSA-2024:4546", "0:2.13.3-3.el8_6.1")
    ]
    # DLA-3022-1: dpkg fixed 1.18.26; 1.18.24 and 1.18.25 listed affected.
    d9 = Ecosystem("Debian", "9", "stretch")
    assert _match(adv, d9, [_pkg("dpkg", "1.18.25")]) == [("dpkg", "DLA-3022-1", "1.18.26")]
    assert _match(adv, d9, [_pkg("dpkg", "1.18.26")]) == []
    assert ("openssl", "DLA-3008-1", "1.1.0l-1~deb9u6") in _match(
        adv, d9, [_pkg("openssl", "1.1.0l-1~deb9u5")]
    )
    a9, a8 = Ecosystem("AlmaLinux", "9"), Ecosystem("AlmaLinux", "8")
    assert ("glibc", "ALSA-2023:5453", "2.34-60.el9_2.7") in _match(
        adv, a9, [Package("glibc", "2.34-60.el9_2.6", source_name="glibc")]
    )
    assert ("glibc", "ALSA-2023:5455", "2.28-225.el8_8.6") in _match(
        adv, a8, [Package("glibc", "2.28-225.el8_8.5", source_name="glibc")]
    )
    assert ("openssh", "ALSA-2024:4312", "8.7p1-38.el9_4.1") in _match(
        adv, a9, [Package("openssh", "8.7p1-38.el9", source_name="openssh")]
    )
    assert ("curl", "ALSA-2023:5763", "7.76.1-23.el9_2.4") in _match(
        adv, a9, [Package("curl", "7.76.1-23.el9_2.2", source_name="curl")]
    )
    # Epoch and module stream (ALSA-2024:3128, perl:5.32, fixed in
    # 4:5.32.1-473.module_el8.10.0+3779+d5938d28): it applies to a perl:5.32 module build,
    # not to a perl:5.26 one, nor to the base (non-module) perl.
    fixed = "4:5.32.1-473.module_el8.10.0+3779+d5938d28"

    def perl(version: str, label: str = "") -> list[Package]:
        extra = {"modularitylabel": label} if label else {}
        return [Package("perl", version, source_name="perl", found_by="os/rpm", extra=extra)]

    def alsa_3128(pkgs: list[Package]) -> list[tuple[str | None, str]]:
        idx = open_index(ensure_index(adv))
        try:
            res = match_packages(idx, a8, pkgs)
        finally:
            idx.close()
        return [
            (m.fixed_version, m.module) for m in res.matches if m.advisory.id == "ALSA-2024:3128"
        ]

    m532 = "4:5.32.1-471.module_el8.6.0+2766+8bf0b7ce"
    assert alsa_3128(perl(m532, "perl:5.32:8060020220211120709:9fe1d287")) == [(fixed, "perl:5.32")]
    assert alsa_3128(perl(fixed, "perl:5.32:8100020240314121426:9fe1d287")) == []  # fixed
    m526 = "4:5.26.3-420.module_el8.6.0+2766+8bf0b7ce"
    assert alsa_3128(perl(m526, "perl:5.26:8060020220211120709:3dcbba06")) == []
    assert alsa_3128(perl("4:5.26.3-422.el8")) == []  # base perl, not a module build
    # A module build whose header names no stream: matched, and said to be unknown.
    assert alsa_3128(perl(m532)) == [(fixed, "unknown stream")]
    # The record without "affected" loads and matches nothing.
    assert _match(adv, Ecosystem("Red Hat", "8"), [Package("eap7-wildfly", "1")]) == []


# --------------------------------------------------------------------------- Debian tracker


def _tracker(name: str) -> dict[str, object]:
    path = CORPUS / "debian-tracker" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data: dict[str, object] = json.loads(path.read_text())
    return data


@needs_corpus
def test_debian_tracker_oracles(tmp_path: Path) -> None:
    adv = tmp_path / "adv"
    for name in ("osvdev-busybox-apparmor", "vunnel-6-packages", "vuls-389-ds-base-wordpress"):
        rep = import_feed(CORPUS / "debian-tracker" / f"{name}.json", adv)
        assert rep.kind == "debian-tracker" and rep.rejected_count == 0
    bookworm = Ecosystem("Debian", "12", "bookworm")
    bullseye = Ecosystem("Debian", "11", "bullseye")
    # busybox CVE-2018-1000500: open in bookworm (no fix yet), urgency unimportant.
    idx = open_index(ensure_index(adv))
    res = match_packages(idx, bookworm, [_pkg("busybox", "1:1.35.0-4")])
    assert [(m.advisory.id, m.status, m.affected.rating.severity) for m in res.matches] == [
        ("CVE-2018-1000500", "unfixed", "info")
    ]
    # apparmor: CVE-2014-1424 fixed "0" (never affected); CVE-2016-1585 open in bookworm;
    # CVE-2017-6507 fixed 2.11.0-3, so bookworm's 3.0.8-3 is not affected.
    res = match_packages(idx, bookworm, [_pkg("apparmor", "3.0.8-3")])
    assert [(m.advisory.id, m.status) for m in res.matches] == [("CVE-2016-1585", "unfixed")]
    # sope: bookworm 5.8.0-1 vulnerable, +deb12u1 fixed (published in bookworm-security).
    res = match_packages(idx, bookworm, [_pkg("sope", "5.8.0-1")])
    assert [(m.advisory.id, m.fixed_version) for m in res.matches] == [
        ("CVE-2025-53603", "5.8.0-1+deb12u1")
    ]
    assert res.matches[0].affected.extra["repositories"]["bookworm-security"] == "5.8.0-1+deb12u1"
    assert match_packages(idx, bookworm, [_pkg("sope", "5.8.0-1+deb12u1")]).matches == []
    # The release dimension: bookworm's fix version is not used for bullseye.
    res = match_packages(idx, bullseye, [_pkg("sope", "5.0.1-2")])
    assert [m.fixed_version for m in res.matches] == ["5.0.1-2+deb11u1"]
    # chromium CVE-2022-0456: open in buster with urgency end-of-life.
    res = match_packages(idx, Ecosystem("Debian", "10", "buster"), [_pkg("chromium", "1")])
    assert [(m.status, m.affected.extra["urgency"]) for m in res.matches] == [
        ("unfixed", "end-of-life")
    ]
    # 389-ds-base: CVE-2016-5416 open in bullseye, CVE-2016-5405 fixed, CVE-2012-0833 "0".
    res = match_packages(idx, bullseye, [_pkg("389-ds-base", "1.4.4.11-2")])
    assert [(m.advisory.id, m.status) for m in res.matches] == [("CVE-2016-5416", "unfixed")]
    res = match_packages(idx, bullseye, [_pkg("389-ds-base", "1.3.5.14-1")])
    assert sorted(m.advisory.id for m in res.matches) == ["CVE-2016-5405", "CVE-2016-5416"]
    idx.close()
    # chromium-browser's "releases": [] is no error.
    vunnel = debian_tracker.parse(_tracker("vunnel-6-packages.json"), "t")
    assert vunnel.rejected == []
    proto = next(a for a in vunnel.advisories if a.id == "CVE-2008-7220")
    assert proto.affected[0].rating.severity == "high"  # "high**"


def test_debian_tracker_hostile_shapes() -> None:
    data = {
        "x": {"CVE-2020-0001": {"releases": {"bookworm": {"status": "weird"}}}},
        "y": {"not-an-id": {"releases": {}}},
        "z": "no",
        "w": {"CVE-2020-0002": {"releases": {"bookworm": {"status": "resolved"}}}},
        "v": {"CVE-2020-0003": {"releases": {"bookworm": {"status": "undetermined"}}}},
        "u": {"TEMP-0000000-0CA7E3": {"releases": {"bookworm": {"status": "open"}}}},
    }
    res = debian_tracker.parse(data, "t")
    assert len(res.rejected) == 4
    assert [a.id for a in res.advisories] == ["CVE-2020-0003", "TEMP-0000000-0CA7E3"]
    assert res.advisories[0].affected[0].status == "undetermined"  # kept apart, not a finding


# --------------------------------------------------------------------------- Alpine secdb


@needs_corpus
def test_alpine_secdb_oracles(tmp_path: Path) -> None:
    folder = CORPUS / "alpine-secdb"
    v311 = alpine_secdb.parse(
        json.loads((folder / "vulnerablecode-v3.11-main.json").read_text()), "t"
    )
    ids = {
        (a.affected[0].name, a.id, a.aliases, a.affected[0].ranges[0][1][1])
        for a in v311.advisories
    }
    assert ("apk-tools", "CVE-2017-9669", (), "2.7.2-r0") in ids
    assert ("apk-tools", "CVE-2017-9671", (), "2.7.2-r0") in ids
    # Two ids in one string are split: the CVE is the id, XSA-252 its alias.
    assert ("xen", "CVE-2018-7540", ("XSA-252",), "4.10.0-r2") in ids
    assert ("xen", "XSA-248", (), "4.10.0-r1") in ids
    adv = tmp_path / "adv"
    for p in sorted(folder.glob("*.json")):
        assert import_feed(p, adv).kind == "alpine-secdb"
    botan = _match(
        adv, Ecosystem("Alpine", "3.10"), [Package("botan", "2.8.0-r0", source_name="botan")]
    )
    assert ("botan", "CVE-2018-20187", "2.9.0-r0") in botan
    chicken = _match(
        adv, Ecosystem("Alpine", "3.10"), [Package("chicken", "4.11.0-r0", source_name="chicken")]
    )
    assert {"CVE-2016-6830", "CVE-2016-6831"} <= {i for _p, i, _f in chicken}
    bash = _match(
        adv, Ecosystem("Alpine", "3.2"), [Package("bash", "4.3.33-r1", source_name="bash")]
    )
    assert bash == [("bash", "CVE-2016-9401", "4.3.33-r2")]
    assert (
        _match(adv, Ecosystem("Alpine", "3.2"), [Package("bash", "4.3.33-r2", source_name="bash")])
        == []
    )


# --------------------------------------------------------------------------- Windows tables


@needs_corpus
def test_windows_tables_oracles(tmp_path: Path) -> None:
    win = CORPUS / "windows"
    csv_rows = windows.parse_cve_csv(
        lzma.decompress((win / "zentrix-kb_cve_data.csv.xz").read_bytes()).decode()
    )
    assert len(csv_rows.rows) == 3683 and csv_rows.rejected == []
    s2022 = [r for r in csv_rows.rows if r["product_id"] == "11923" and r["kb"] == "KB5120242"]
    assert s2022 and {r["fixed_build"] for r in s2022} == {"10.0.20348.5499"}
    assert {(r["build"], r["fixed_ubr"]) for r in s2022} == {(20348, 5499)}
    assert any(r["product_id"] == "12243" and r["build"] == 22621 for r in csv_rows.rows)
    mar = windows.parse_cvrf((win / "msrc-cvrf-2024-Mar-excerpt.xml").read_bytes())
    assert {r["cve"] for r in mar.rows} == {"CVE-2024-21392"}
    assert {r["fixed_build"] for r in mar.rows} >= {
        "17.9.3",
        "7.0.17",
        "8.0.3",
        "17.6.13",
        "17.4.17",
    }
    assert {r["severity"] for r in mar.rows} == {"high"}  # CVSS 7.5
    apr = windows.parse_cvrf((win / "msrc-cvrf-2016-Apr-excerpt.xml").read_bytes())
    kbs = [r["kb"] for r in apr.rows]
    assert kbs.count("KB3135456") == 5
    assert "10735" in {r["product_id"] for r in apr.rows if r["kb"] == "KB3147461"}
    assert all(r["build"] is None for r in apr.rows)  # no FixedBuild in 2016
    versions = json.loads((win / "zentrix-windows-versions.json").read_text())
    assert len(versions) == 19
    builds = windows.parse_builds(versions, source="zentrix")
    row = next(r for r in builds.rows if r["name"] == "Windows Server 2022")
    assert (row["build"], row["ubr"], row["kb"], row["date"]) == (
        20348,
        5499,
        "KB5120242",
        "2026-08-11",
    )
    index_json = json.loads((win / "msrc-cvrf-updates-index-excerpt.json").read_text())
    assert {v["ID"] for v in index_json["value"]} == {"2016-Apr", "2024-Mar"}


def test_shipped_builds_table_covers_clients_and_servers() -> None:
    table = json.loads((STARTER.parent / "windows-builds.json").read_text())
    res = windows.parse_builds(table)
    assert res.rejected == []
    builds = {r["build"] for r in res.rows}
    assert {14393, 17763, 20348, 19045, 22631, 26100} <= builds
    for b in builds:
        ups = sorted((r["date"], r["ubr"], int(r["kb"][2:])) for r in res.rows if r["build"] == b)
        assert [u for _d, u, _k in ups] == sorted(u for _d, u, _k in ups), b  # UBR grows
        assert [k for _d, _u, k in ups] == sorted(k for _d, _u, k in ups), b  # so do KBs
        # Monthly B releases are published on the second Tuesday.
        for d, _u, _k in ups:
            day = dt.date.fromisoformat(d)
            assert day.weekday() == 1 and 8 <= day.day <= 14, (b, d)
    # Every row says where it comes from, and the table is dated by its newest row.
    assert {r["source"] for r in res.rows} <= set(table["sources"])
    assert table["as_of"] == max(r["date"] for r in res.rows) == res.date
    assert "verify against Microsoft's update history" in table["notice"]
    assert windows.patch_level(19044, 1, res.rows) is not None  # 21H2 shares 22H2's branch
    assert windows.patch_level(7601, 0, res.rows) is None


def test_guest_ecosystems() -> None:
    def eco(**kw: object) -> str:
        e = guest_ecosystem(OSInfo(type="linux", **kw))  # type: ignore[arg-type]
        return f"{e.base}:{e.release}:{e.codename}" if e else ""

    assert eco(os_release_id="debian", version_id="12") == "Debian:12:bookworm"
    assert eco(os_release_id="debian", version_codename="trixie") == "Debian:13:trixie"
    assert eco(os_release_id="ubuntu", version_id="22.04") == "Ubuntu:22.04:"
    assert Ecosystem("Ubuntu", "22.04").matches("Ubuntu:Pro:22.04:LTS")
    assert eco(os_release_id="alpine", version_id="3.18.4") == "Alpine:3.18:"
    assert Ecosystem("Alpine", "3.18").matches("Alpine:v3.18")
    assert Ecosystem("Debian", "12", "bookworm").matches("Debian:bookworm")
    assert not Ecosystem("Debian", "12", "bookworm").matches("Debian:11")
    assert Ecosystem("Red Hat", "9.2").matches("Red Hat:enterprise_linux:9::appstream")
    assert not Ecosystem("Red Hat", "9.2").matches("Red Hat:rhel_eus:9.0::appstream")
    assert Ecosystem("SUSE", "15.5").matches("SUSE:Linux Enterprise Server 15 SP5")
    assert eco(os_release_id="fedora", version_id="36") == ""


def test_starter_set_is_valid_and_matches_debian12_curl(tmp_path: Path) -> None:
    starter = STARTER / "starter"
    digest = content_digest(starter)
    assert (
        digest == json.loads((STARTER / "MANIFEST.json").read_text())["feeds"]["starter"]["sha256"]
    )
    adv = tmp_path / "adv"
    import_feed(starter, adv, name="starter")
    hits = _match(adv, Ecosystem("Debian", "12", "bookworm"), [_pkg("curl", "7.88.1-10")])
    assert ("curl", "DSA-5587-1", "7.88.1-10+deb12u5") in hits
    assert ("curl", "DSA-5523-1", "7.88.1-10+deb12u4") in hits
    assert os.access(adv / INDEX_NAME, os.R_OK)


@needs_corpus
def test_signatures_import_and_status_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmscan.cli import main

    sigs = tmp_path / "sigs"
    sigs.mkdir()
    (sigs / "windows-builds.json").write_bytes(
        (STARTER.parent / "windows-builds.json").read_bytes()
    )
    monkeypatch.setenv("VMSCAN_SIGNATURES", str(sigs))
    src = CORPUS / "alpine-secdb" / "vuls-v3.2-main.json"
    assert main(["signatures", "import", str(src), "--date", "2026-01-02"]) == 0
    assert main(["signatures", "import", str(src)]) == 0  # the same bytes: skipped
    assert "skipped" in capsys.readouterr().err
    assert main(["signatures", "import", str(tmp_path / "missing.json")]) == 2
    capsys.readouterr()
    assert main(["signatures", "status", "--json"]) == 1  # old data is stale: exit 1
    rows = {r["feed"]: r for r in json.loads(capsys.readouterr().out)["feeds"]}
    assert rows["vuls-v3.2-main"]["date"] == "2026-01-02"
    assert rows["vuls-v3.2-main"]["records"] == 1 and rows["vuls-v3.2-main"]["stale"]
    bundled = rows["windows-builds (bundled)"]
    assert bundled["date"] == json.loads((sigs / "windows-builds.json").read_text())["as_of"]
    assert bundled["records"] > 100
    assert main(["signatures", "status", "--max-age", "1000000"]) == 0
