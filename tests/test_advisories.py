"""OSV advisories: validation (against the real OSV schema), import, matching."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import jsonschema
import pytest

from vmscan.advisories import (
    MANIFEST,
    AdvisoryError,
    Ecosystem,
    cvss3_base_score,
    feed_digest,
    guest_ecosystem,
    import_feed,
    load_db,
    severity_of,
    validate_record,
)
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


def _broken() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    r = copy.deepcopy(GOOD)
    del r["id"]
    out.append(r)
    r = copy.deepcopy(GOOD)
    del r["modified"]
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["modified"] = "yesterday"
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["aliases"] = "CVE-1"
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["affected"][0]["package"] = {"name": "curl"}  # type: ignore[index]
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["affected"][0]["ranges"][0]["events"] = [{"fixed": "1"}]  # type: ignore[index]
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["affected"][0]["ranges"][0]["type"] = "DATE"  # type: ignore[index]
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["affected"][0]["ranges"][0]["events"] = [  # type: ignore[index]
        {"introduced": "0"},
        {"fixed": "2"},
        {"last_affected": "1"},
    ]
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["severity"] = [{"type": "CVSS_V3"}]
    out.append(r)
    r = copy.deepcopy(GOOD)
    r["affected"] = {"package": "x"}
    out.append(r)
    return out


@needs_corpus
def test_validator_agrees_with_osv_schema() -> None:
    schema = json.loads((OSV / "osv-schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    records = [
        json.loads(p.read_text()) for p in sorted(OSV.glob("*.json")) if p.name != "osv-schema.json"
    ]
    records += [
        json.loads(p.read_text()) for p in sorted(STARTER.rglob("*.json")) if p.name != MANIFEST
    ]
    records.append(GOOD)
    for rec in records:
        assert validate_record(rec) == []
        assert list(validator.iter_errors(rec)) == []
    for rec in _broken():
        assert validate_record(rec), rec
        assert list(validator.iter_errors(rec)), rec


def test_cvss3() -> None:
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == 9.8
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H") == 8.1
    assert cvss3_base_score("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H") == 7.8
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H") == 10.0
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:L/UI:R/S:C/C:L/I:L/A:N") == 5.4
    assert cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N") == 0.0
    assert cvss3_base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P") is None
    assert severity_of({"severity": [{"type": "Ubuntu", "score": "medium"}]}) == ("medium", None)
    assert severity_of({"database_specific": {"severity": "Important"}}) == ("high", None)
    assert severity_of({}) == ("unknown", None)


@needs_corpus
def test_import_directory_and_zip(tmp_path: Path) -> None:
    src = tmp_path / "feed"
    src.mkdir()
    for p in OSV.glob("*.json"):
        if p.name != "osv-schema.json":
            (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.json").write_text('{"id": "X", "modified": 5}')
    (src / "notjson.json").write_text("{")
    dest = tmp_path / "advisories"
    rep = import_feed(src, dest)
    # Every top-level record of the corpus is valid OSV; the two planted ones are not.
    expected = len([p for p in OSV.glob("*.json") if p.name != "osv-schema.json"])
    assert rep.imported == expected
    assert len(rep.rejected) == 2
    assert any("modified" in r for r in rep.rejected)
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["feeds"]["feed"]["count"] == expected
    assert manifest["feeds"]["feed"]["sha256"] == feed_digest(dest / "feed") == rep.digest
    # Same content from a zip gives the same digest; re-import replaces the feed folder.
    zpath = tmp_path / "feed.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, f"osv/{p.name}")
    rep2 = import_feed(zpath, dest)
    assert rep2.imported == expected
    assert rep2.digest == rep.digest
    names = sorted(p.name for p in (dest / "feed").iterdir())
    assert len(names) == expected
    assert {"CVE-2018-5407.json", "DSA-3029-1.json", "RHSA-2024_4546.json"} <= set(names)
    db = load_db(dest)
    assert len(db.advisories) == expected
    assert db.notes == []


def test_import_rejects_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(AdvisoryError):
        import_feed(bad, tmp_path / "dest")
    with pytest.raises(AdvisoryError):
        import_feed(tmp_path / "missing", tmp_path / "dest")


def test_load_notes_broken_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    (tmp_path / "b.json").write_text("[1, 2")
    (tmp_path / "c.json").write_text(json.dumps({"id": "C"}))
    db = load_db(tmp_path)
    assert [a.id for a in db.advisories] == ["OSV-TEST-1"]
    assert len(db.notes) == 2


def _pkg(name: str, version: str, src: str = "", src_version: str = "") -> Package:
    return Package(
        name=name,
        version=version,
        arch="amd64",
        source_name=src or name,
        source_version=src_version or version,
        found_by="os/dpkg",
    )


def test_match_fixed_and_not(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    db = load_db(tmp_path)
    eco = Ecosystem("Debian", "12")
    matches, notes = db.match(eco, [_pkg("libcurl4", "7.88.1-10", "curl")])
    assert notes == []
    assert len(matches) == 1
    assert matches[0].fixed_version == "7.88.1-10+deb12u5"
    assert matches[0].status == "fixable"
    for v in ("7.88.1-10+deb12u5", "7.88.1-10+deb12u6", "8.0-1"):
        assert db.match(eco, [_pkg("curl", v)])[0] == []
    assert db.match(Ecosystem("Debian", "11"), [_pkg("curl", "7.88.1-10")])[0] == []


def test_match_unfixed_last_affected_and_versions(tmp_path: Path) -> None:
    rec = copy.deepcopy(GOOD)
    rec["affected"] = [
        {
            "package": {"ecosystem": "Alpine:v3.18", "name": "openssl"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "3.0.0-r0"}]}],
        },
        {
            "package": {"ecosystem": "Alpine:v3.18", "name": "zlib"},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"last_affected": "1.2.13-r1"}],
                }
            ],
        },
        {"package": {"ecosystem": "Alpine:v3.18", "name": "musl"}, "versions": ["1.2.4-r0"]},
    ]
    (tmp_path / "a.json").write_text(json.dumps(rec))
    db = load_db(tmp_path)
    eco = Ecosystem("Alpine", "3.18")
    pk = [
        Package("libcrypto3", "3.1.0-r4", source_name="openssl"),
        Package("zlib", "1.2.13-r1", source_name="zlib"),
        Package("musl", "1.2.4-r0", source_name="musl"),
        Package("zlib-old", "1.2.14-r0", source_name="zlib"),
    ]
    matches, _ = db.match(eco, pk)
    assert sorted((m.package.name, m.status) for m in matches) == [
        ("libcrypto3", "unfixed"),
        ("musl", "unfixed"),
        ("zlib", "unfixed"),
    ]


@needs_corpus
def test_corpus_records_match_their_ecosystems() -> None:
    db = load_db(OSV)
    assert {a.id for a in db.advisories} >= {"DSA-3029-1", "RHSA-2024:4546", "CVE-2018-5407"}
    ms, _ = db.match(Ecosystem("Debian", "7"), [_pkg("nginx", "1.2.1-2.2+wheezy2")])
    assert [m.fixed_version for m in ms] == ["1.2.1-2.2+wheezy3"]
    ms, _ = db.match(
        Ecosystem("Alpine", "3.8"), [Package("libssl1.0", "1.0.2o-r2", source_name="openssl")]
    )
    assert [m.fixed_version for m in ms] == ["1.0.2q-r0"]
    ms, _ = db.match(
        Ecosystem("Red Hat", "8.6"), [Package("git-lfs", "2.13.3-3.el8_6", source_name="git-lfs")]
    )
    assert ms and ms[0].fixed_version == "0:2.13.3-3.el8_6.1"
    assert ms[0].affected.severity == "high"
    # The record without "affected" loads and matches nothing.
    ms, _ = db.match(Ecosystem("Red Hat", "8"), [Package("eap7-wildfly", "1", source_name="x")])
    assert ms == []


def test_guest_ecosystems() -> None:
    def eco(**kw: object) -> str:
        e = guest_ecosystem(OSInfo(type="linux", **kw))  # type: ignore[arg-type]
        return f"{e.base}:{e.release}" if e else ""

    assert eco(os_release_id="debian", version_id="12") == "Debian:12"
    assert eco(os_release_id="ubuntu", version_id="22.04") == "Ubuntu:22.04"
    assert Ecosystem("Ubuntu", "22.04").matches("Ubuntu:22.04:LTS")
    assert Ecosystem("Ubuntu", "22.04").matches("Ubuntu:Pro:22.04:LTS")
    assert eco(os_release_id="alpine", version_id="3.18.4") == "Alpine:3.18"
    assert Ecosystem("Alpine", "3.18").matches("Alpine:v3.18")
    assert eco(os_release_id="mariner", version_id="2.0") == "Mariner:2.0"
    assert Ecosystem("Red Hat", "9.2").matches("Red Hat:enterprise_linux:9::appstream")
    assert not Ecosystem("Red Hat", "9.2").matches("Red Hat:rhel_eus:9.0::appstream")
    assert Ecosystem("SUSE", "15.5").matches("SUSE:Linux Enterprise Server 15 SP5")
    assert not Ecosystem("SUSE", "15.5").matches("SUSE:Linux Enterprise Server 15 SP4")
    assert Ecosystem("Rocky Linux", "9.3").matches("Rocky Linux:9")
    assert eco(os_release_id="fedora", version_id="36") == ""


def test_starter_set_matches_debian12_curl() -> None:
    db = load_db(STARTER)
    assert db.notes == []
    ms, _ = db.match(Ecosystem("Debian", "12"), [_pkg("curl", "7.88.1-10")])
    ids = {m.advisory.id: m.fixed_version for m in ms}
    assert ids["DSA-5587-1"] == "7.88.1-10+deb12u5"
    assert ids["DSA-5523-1"] == "7.88.1-10+deb12u4"


def test_starter_manifest_is_current() -> None:
    manifest = json.loads((STARTER / MANIFEST).read_text())
    feed = manifest["feeds"]["starter"]
    assert feed["sha256"] == feed_digest(STARTER / "starter")
    assert feed["count"] == len(list((STARTER / "starter").glob("*.json")))
    assert manifest["sha256"] == feed_digest(STARTER)
