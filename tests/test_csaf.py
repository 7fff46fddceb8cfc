"""Red Hat CSAF advisories and VEX: the corpus' converter oracles and matching."""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Any

import pytest

from vmscan.advisories import Ecosystem, csaf, ensure_index, import_feed, match_packages, open_index
from vmscan.model import Package

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(
    not (CORPUS / "csaf").is_dir(), reason="../shared/corpus not present"
)


def _load(rel: str) -> Any:
    path = CORPUS / rel
    raw = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    return json.loads(raw)


@needs_corpus
@pytest.mark.parametrize(
    ("doc", "osv"),
    [
        ("csaf/rhsa-2024_4546.json", "osv/RHSA-2024_4546.json"),
        ("csaf/rhsa-2024_6220.json.xz", "osv/RHSA-2024_6220.json"),
    ],
)
def test_csaf_gives_what_red_hats_osv_conversion_gives(doc: str, osv: str) -> None:
    """Each RHSA's OSV file is Red Hat's converter output for the CSAF one: same entries."""
    res = csaf.parse(_load(doc), "t")
    assert res.rejected == []
    mine = {
        (a.ecosystem, a.name, a.ranges[0][-1][1]) for adv in res.advisories for a in adv.affected
    }
    record = _load(osv)
    theirs = {
        (a["package"]["ecosystem"], a["package"]["name"], a["ranges"][0]["events"][-1]["fixed"])
        for a in record["affected"]
    }
    assert mine == theirs
    assert [a.id for a in res.advisories] == [record["id"]]
    assert set(res.advisories[0].aliases) == set(record["upstream"])


@needs_corpus
def test_csaf_module_streams_come_from_the_module_component() -> None:
    res = csaf.parse(_load("csaf/rhsa-2024_6220.json.xz"), "t")
    streams = {s for a in res.advisories[0].affected for s in a.extra.get("module_streams", [])}
    assert streams == {"python39:3.9"}


@needs_corpus
def test_vex_curl(tmp_path: Path) -> None:
    """curl CVE-2023-38545: RHEL 8 known_not_affected; RHEL 9.2 EUS fixed 0:7.76.1-23.el9_2.4."""
    adv = tmp_path / "adv"
    rep = import_feed(CORPUS / "csaf" / "claircore-vex-cve-2023-38545.json.xz", adv)
    assert rep.kind == "csaf" and rep.imported == 1
    vex = csaf.parse(_load("csaf/claircore-vex-cve-2023-38545.json.xz"), "t").advisories[0]
    assert vex.id == "CVE-2023-38545" and vex.rating.severity == "high"
    curl = {(a.ecosystem, a.ranges[0][-1][1]) for a in vex.affected if a.name == "curl"}
    assert ("Red Hat:enterprise_linux:9::appstream", "0:7.76.1-23.el9_2.4") in curl
    assert not [e for e, _f in curl if e.startswith("Red Hat:enterprise_linux:8")]
    idx = open_index(ensure_index(adv))
    try:
        old = [Package("curl", "7.76.1-23.el9_2.2", "x86_64", "curl", found_by="os/rpm")]
        hits = match_packages(idx, Ecosystem("Red Hat", "9.2"), old).matches
        assert {m.advisory.id for m in hits} == {"CVE-2023-38545"}
        el8 = [Package("curl", "7.61.1-30.el8", "x86_64", "curl", found_by="os/rpm")]
        assert match_packages(idx, Ecosystem("Red Hat", "8.8"), el8).matches == []
        fixed = [Package("curl", "7.76.1-26.el9_3.2", "x86_64", "curl", found_by="os/rpm")]
        assert match_packages(idx, Ecosystem("Red Hat", "9.3"), fixed).matches == []
    finally:
        idx.close()
    # A layered product names its RHEL release last: not a RHEL 6 entry.
    assert not Ecosystem("Red Hat", "6.10").matches("Red Hat:rhel_satellite_client:6::el8")
    assert Ecosystem("Red Hat", "8.9").matches("Red Hat:rhel_satellite_client:6::el8")


def test_hostile_csaf_shapes() -> None:
    assert not csaf.looks_like_csaf({"document": "x"})
    doc = {
        "document": {"csaf_version": "2.0", "tracking": {"id": "RHSA-X"}},
        "product_tree": {"branches": "no", "relationships": [1, {"x": 2}]},
        "vulnerabilities": [
            5,
            {"cve": "not-a-cve"},
            {"cve": "CVE-2024-0001", "product_status": []},
        ],
    }
    res = csaf.parse(doc, "t")
    assert res.advisories == [] and len(res.rejected) == 1
