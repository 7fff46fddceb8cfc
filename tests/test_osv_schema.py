"""vmscan's OSV record schema: what it refuses, and that it agrees with the published one."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vmscan.advisories.osv import SCHEMA_DIFFERENCES, schema, validate_record

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
PUBLISHED = CORPUS / "osv" / "osv-schema.json"
STARTER = ROOT / "signatures" / "advisories" / "starter"

V3 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
GOOD: dict[str, Any] = {
    "schema_version": "1.6.0",
    "id": "OSV-TEST-1",
    "modified": "2024-01-01T00:00:00Z",
    "published": "2023-12-01T10:00:00.123Z",
    "aliases": ["CVE-2024-0001"],
    "related": ["CVE-2024-0002"],
    "summary": "one line",
    "details": "details",
    "severity": [{"type": "CVSS_V3", "score": V3}],
    "affected": [
        {
            "package": {"ecosystem": "Debian:12", "name": "curl", "purl": "pkg:deb/debian/curl"},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "7.88.1-10+deb12u5"}],
                }
            ],
            "versions": ["7.88.1-10"],
            "ecosystem_specific": {"urgency": "high"},
            "database_specific": {"source": "x"},
        }
    ],
    "references": [{"type": "ADVISORY", "url": "https://example.org/a"}],
    "credits": [{"name": "n", "contact": ["mailto:a@example.org"], "type": "FINDER"}],
    "database_specific": {"k": 1},
}
_DEL = object()
_R = ("affected", 0, "ranges", 0)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(rec: dict[str, Any]) -> None:
        cur: Any = rec
        for p in path[:-1]:
            cur = cur[p]
        if value is _DEL:
            del cur[path[-1]]
        else:
            cur[path[-1]] = value

    return apply


def _sev(kind: str, score: str) -> Callable[[dict[str, Any]], None]:
    return _set(("severity", 0), {"type": kind, "score": score})


def _range(events: list[dict[str, Any]], **kw: Any) -> Callable[[dict[str, Any]], None]:
    return _set(_R, {"type": kw.pop("type", "ECOSYSTEM"), "events": events, **kw})


#: (name, mutation of GOOD, valid per the OSV specification?, deliberate difference or "").
CASES: list[tuple[str, Callable[[dict[str, Any]], None], bool, str]] = [
    ("missing id", _set(("id",), _DEL), False, ""),
    ("id not a string", _set(("id",), 5), False, ""),
    ("id without DB prefix", _set(("id",), "nodash"), False, ""),
    ("missing modified", _set(("modified",), _DEL), False, ""),
    ("modified not a timestamp", _set(("modified",), "yesterday"), False, ""),
    ("modified not UTC", _set(("modified",), "2024-01-01T00:00:00+02:00"), False, ""),
    ("modified date only", _set(("modified",), "2024-01-01"), False, ""),
    ("modified month 13", _set(("modified",), "2024-13-01T00:00:00Z"), False, "timestamp calendar"),
    ("modified a number", _set(("modified",), 20240101), False, ""),
    ("published bad", _set(("published",), "2024/01/01"), False, ""),
    ("withdrawn bad", _set(("withdrawn",), "never"), False, ""),
    ("withdrawn given", _set(("withdrawn",), "2024-02-01T00:00:00Z"), True, ""),
    ("aliases a string", _set(("aliases",), "CVE-1"), False, ""),
    ("aliases holds a number", _set(("aliases",), [5]), False, ""),
    ("related a string", _set(("related",), "CVE-1"), False, ""),
    ("upstream a string", _set(("upstream",), "CVE-1"), False, ""),
    ("upstream given", _set(("upstream",), ["CVE-2024-0003"]), True, ""),
    ("summary a number", _set(("summary",), 5), False, ""),
    ("details a list", _set(("details",), ["x"]), False, ""),
    ("severity an object", _set(("severity",), {"type": "CVSS_V3"}), False, ""),
    ("severity without score", _set(("severity", 0, "score"), _DEL), False, ""),
    ("severity without type", _set(("severity", 0, "type"), _DEL), False, ""),
    ("severity type unknown", _set(("severity", 0, "type"), "CVSS_V5"), False, ""),
    ("severity bad v3 vector", _set(("severity", 0, "score"), "CVSS:3.1/AV:X/x"), False, ""),
    ("severity score a number", _set(("severity", 0, "score"), 9.8), False, ""),
    (
        "severity v2",
        _set(("severity", 0), {"type": "CVSS_V2", "score": "AV:N/AC:L/Au:N/C:P/I:P/A:P"}),
        True,
        "",
    ),
    ("severity v2 given a v3 vector", _set(("severity", 0, "type"), "CVSS_V2"), False, ""),
    (
        "severity v4",
        _set(
            ("severity", 0),
            {
                "type": "CVSS_V4",
                "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
            },
        ),
        True,
        "",
    ),
    ("severity v4 empty", _sev("CVSS_V4", "CVSS:4.0"), False, ""),
    ("severity Ubuntu", _set(("severity", 0), {"type": "Ubuntu", "score": "medium"}), True, ""),
    ("severity Ubuntu bad", _set(("severity", 0), {"type": "Ubuntu", "score": "Huge"}), False, ""),
    (
        "severity both top and per package",
        _set(("affected", 0, "severity"), [{"type": "CVSS_V3", "score": V3}]),
        False,
        "",
    ),
    ("affected an object", _set(("affected",), {"package": "x"}), False, ""),
    ("affected item a string", _set(("affected", 0), "x"), False, ""),
    ("package without ecosystem", _set(("affected", 0, "package", "ecosystem"), _DEL), False, ""),
    ("package without name", _set(("affected", 0, "package", "name"), _DEL), False, ""),
    ("package name a number", _set(("affected", 0, "package", "name"), 5), False, ""),
    ("purl a number", _set(("affected", 0, "package", "purl"), 5), False, ""),
    ("affected without package", _set(("affected", 0, "package"), _DEL), True, ""),
    (
        "ecosystem unknown",
        _set(("affected", 0, "package", "ecosystem"), "NotAnEcosystem"),
        True,
        "ecosystem names",
    ),
    ("range type unknown", _set((*_R, "type"), "DATE"), False, ""),
    ("range without type", _set((*_R, "type"), _DEL), False, ""),
    ("range without events", _set((*_R, "events"), _DEL), False, ""),
    ("events empty", _set((*_R, "events"), []), False, ""),
    ("events a string", _set((*_R, "events"), "nope"), False, ""),
    ("event with two keys", _range([{"introduced": "0", "fixed": "1"}]), False, ""),
    ("event of unknown kind", _range([{"introduced": "0"}, {"broken": "1"}]), False, ""),
    ("event empty", _range([{"introduced": "0"}, {}]), False, ""),
    ("event value a number", _range([{"introduced": "0"}, {"fixed": 1}]), False, ""),
    ("events without introduced", _range([{"fixed": "1"}]), False, ""),
    (
        "fixed and last_affected",
        _range([{"introduced": "0"}, {"fixed": "1"}, {"last_affected": "2"}]),
        False,
        "",
    ),
    ("last_affected", _range([{"introduced": "0"}, {"last_affected": "2"}]), True, ""),
    ("limit", _range([{"introduced": "0"}, {"limit": "2"}]), True, ""),
    ("GIT without repo", _range([{"introduced": "0"}], type="GIT"), False, ""),
    ("GIT with repo", _range([{"introduced": "0"}], type="GIT", repo="https://x/y"), True, ""),
    ("SEMVER", _range([{"introduced": "1.0.0"}, {"fixed": "1.2.3"}], type="SEMVER"), True, ""),
    ("range database_specific a string", _set((*_R, "database_specific"), "x"), False, ""),
    ("versions a string", _set(("affected", 0, "versions"), "1"), False, ""),
    ("versions hold a number", _set(("affected", 0, "versions"), [1]), False, ""),
    ("ecosystem_specific a string", _set(("affected", 0, "ecosystem_specific"), "x"), False, ""),
    ("affected db_specific a list", _set(("affected", 0, "database_specific"), [1]), False, ""),
    ("database_specific a list", _set(("database_specific",), [1]), False, ""),
    ("reference without url", _set(("references", 0, "url"), _DEL), False, ""),
    ("reference without type", _set(("references", 0, "type"), _DEL), False, ""),
    ("reference type unknown", _set(("references", 0, "type"), "BLOG"), False, ""),
    ("reference url a number", _set(("references", 0, "url"), 5), False, ""),
    ("credit without name", _set(("credits", 0, "name"), _DEL), False, ""),
    ("credit type unknown", _set(("credits", 0, "type"), "HERO"), False, ""),
    ("credit contact a string", _set(("credits", 0, "contact"), "a@example.org"), False, ""),
    ("schema_version a number", _set(("schema_version",), 1), False, ""),
    ("unknown top-level field", _set(("x_custom",), 1), False, ""),
    ("unknown nested field", _set(("affected", 0, "x_custom"), 1), True, ""),
]


def _mutated(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    rec = copy.deepcopy(GOOD)
    mutate(rec)
    return rec


def test_schema_is_vmscans_own_and_valid() -> None:
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert "vmscan's own" in s["$comment"]
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(("name", "mutate", "valid", "_diff"), CASES, ids=[c[0] for c in CASES])
def test_vmscan_schema_follows_the_specification(
    name: str, mutate: Callable[[dict[str, Any]], None], valid: bool, _diff: str
) -> None:
    assert validate_record(GOOD) == []
    problems = validate_record(_mutated(mutate))
    assert (problems == []) is valid, (name, problems)
    assert all(len(p) <= 200 for p in problems)


@pytest.mark.skipif(not PUBLISHED.is_file(), reason=f"{PUBLISHED} not present")
def test_agrees_with_published_schema_on_corpus_and_broken_records() -> None:
    published = json.loads(PUBLISHED.read_text())
    cls = jsonschema.Draft202012Validator
    theirs = cls(published, format_checker=cls.FORMAT_CHECKER)
    records = [
        (p.name, json.loads(p.read_text()))
        for p in sorted(PUBLISHED.parent.rglob("*.json"))
        if p != PUBLISHED
    ]
    records += [(p.name, json.loads(p.read_text())) for p in sorted(STARTER.glob("*.json"))]
    assert len(records) >= 30  # the corpus' osv/ tree may grow: no exact count
    for name, rec in records:
        assert theirs.is_valid(rec), name  # the corpus holds valid records
        assert validate_record(rec) == [], name
    # With rfc3339-validator installed jsonschema checks "date-time" itself: no difference.
    gone = {"timestamp calendar"} if "date-time" in cls.FORMAT_CHECKER.checkers else set()
    used: set[str] = set(gone)
    for name, mutate, _valid, diff in CASES:
        rec = _mutated(mutate)
        mine_ok, theirs_ok = validate_record(rec) == [], theirs.is_valid(rec)
        if diff and diff not in gone:
            # A documented difference must still be one (else the documentation is stale).
            assert mine_ok != theirs_ok, name
            used.add(diff)
        else:
            assert mine_ok == theirs_ok, name
    assert used == set(SCHEMA_DIFFERENCES)
