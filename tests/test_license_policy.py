"""Licence policy: categories, AND strictest / OR most lenient, loading, watch rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmscan.errors import UsageError
from vmscan.license.policy import (
    DEFAULT_POLICY,
    Policy,
    edition_of,
    load_policy,
    watch_matches_os,
    watch_matches_package,
)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(DEFAULT_POLICY)


@pytest.mark.parametrize(
    ("expr", "category"),
    [
        ("MIT", "permissive"),
        ("Apache-2.0", "notice"),
        ("GPL-2.0-or-later", "reciprocal"),
        ("AGPL-3.0-only", "restricted"),
        ("MIT AND GPL-2.0-only", "reciprocal"),  # AND: the strictest
        ("MIT OR GPL-2.0-only", "permissive"),  # OR: the most lenient
        ("GPL-2.0-only OR AGPL-3.0-only", "reciprocal"),
        ("(MIT OR AGPL-3.0-only) AND Apache-2.0", "notice"),
        ("GPL-3.0-or-later WITH Bison-exception-2.2", "reciprocal"),
        ("LicenseRef-TinySCHEME", "unknown"),
        ("LicenseRef-TinySCHEME AND AGPL-3.0-only", "restricted"),
        ("LicenseRef-TinySCHEME OR MIT", "permissive"),
        ("LicenseRef-public-domain", "permissive"),
        ("", "unknown"),
    ],
)
def test_classify(policy: Policy, expr: str, category: str) -> None:
    assert policy.classify(expr).category == category


def test_package_licences_all_apply(policy: Policy) -> None:
    d = policy.classify_all(["MIT", "GPL-2.0-or-later", "BSD-3-Clause"])
    assert d.category == "reciprocal"
    assert d.licence == "GPL-2.0-or-later"
    assert d.rule == "reciprocal:GPL-*"
    none = policy.classify_all([])
    assert (none.category, none.rule) == ("unknown", "no-licence")


def test_with_exception_listed_as_written(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(
        '[license.categories]\nreciprocal = ["GPL-*"]\n'
        'notice = ["GPL-2.0-only WITH Classpath-exception-2.0"]\n'
    )
    pol = Policy.load(f)
    # "order" puts reciprocal before notice, but the full WITH text is looked up first.
    assert pol.classify("GPL-2.0-only WITH Classpath-exception-2.0").category == "notice"
    assert pol.classify("GPL-2.0-only").category == "reciprocal"


def test_custom_forbidden_from_options(tmp_path: Path) -> None:
    pol = load_policy({"license_policy": {"categories": {"forbidden": ["GPL-3.0*"]}}})
    assert pol.classify("GPL-3.0-or-later").category == "forbidden"
    assert pol.classify("MIT AND GPL-3.0-only").category == "forbidden"
    f = tmp_path / "vmscan.toml"
    f.write_text(
        '[license]\nreport = ["reciprocal"]\n[license.categories]\nreciprocal = ["MPL-2.0"]\n'
    )
    pol2 = load_policy({"license_policy": str(f)})
    assert pol2.report == ("reciprocal",)
    assert pol2.classify("MPL-2.0").category == "reciprocal"


@pytest.mark.parametrize(
    "text",
    [
        "[license.categories]\nweird = ['MIT']\n",
        "[license]\norder = ['forbidden']\n",
        "[license]\nwatch = [{product = 'x'}]\n",
        "not toml = = =\n",
        "[license.severity]\nforbidden = 'severe'\n",  # no such severity: refused at load
    ],
)
def test_malformed_policy(tmp_path: Path, text: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UsageError):
        Policy.load(f)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_policy({"license_policy": str(tmp_path / "nope.toml")})


def test_watch_rules(policy: Policy) -> None:
    rules = {r.id: r for r in policy.watch}
    sql = rules["sql-server"]
    assert watch_matches_package(sql, "Microsoft SQL Server 2019 (64-bit)")
    assert not watch_matches_package(sql, "Microsoft SQL Server Management Studio - 18.12")
    assert not watch_matches_package(sql, "Microsoft SQL Server 2019 Setup (English)")
    assert edition_of(sql, "Microsoft SQL Server 2019 (64-bit)") == "2019"
    assert edition_of(sql, "Microsoft SQL Server 2008 R2 (64-bit)") == "2008 R2"
    ws = rules["windows-server"]
    assert watch_matches_os(ws, "Windows Server 2019 Standard")
    assert not watch_matches_os(ws, "Windows 10 Pro")
    vmt = rules["vmware-tools"]
    assert watch_matches_package(vmt, "open-vm-tools")
    assert watch_matches_package(vmt, "VMware Tools")
    ora = rules["oracle-database"]
    assert watch_matches_package(ora, "oracle-database-ee-19c")
    assert edition_of(ora, "oracle-database-ee-19c") == "ee"
