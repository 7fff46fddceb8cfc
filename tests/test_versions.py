"""Version ordering per scheme: Debian, RPM (checked against rpm's own rpm.vercmp), apk."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vmscan.versions import (
    compare,
    compare_apk,
    compare_deb,
    compare_rpm,
    rpmvercmp,
    scheme_for_ecosystem,
    split_evr,
)

# (a, b, expected rpmvercmp(a, b)): rpm's own test cases plus tilde/caret ones; the
# expected values were produced by rpm 4.18's rpm.vercmp.
RPM_CASES = [
    ("1.0", "1.0", 0),
    ("1.0", "2.0", -1),
    ("2.0", "1.0", 1),
    ("2.0.1", "2.0.1", 0),
    ("2.0", "2.0.1", -1),
    ("2.0.1a", "2.0.1a", 0),
    ("2.0.1a", "2.0.1", 1),
    ("5.5p1", "5.5p1", 0),
    ("5.5p1", "5.5p2", -1),
    ("5.5p10", "5.5p10", 0),
    ("5.5p1", "5.5p10", -1),
    ("10xyz", "10.1xyz", -1),
    ("xyz10", "xyz10", 0),
    ("xyz10", "xyz10.1", -1),
    ("xyz.4", "xyz.4", 0),
    ("xyz.4", "8", -1),
    ("xyz.4", "2", -1),
    ("5.5p2", "5.6p1", -1),
    ("5.6p1", "6.5p1", -1),
    ("6.0.rc1", "6.0", 1),
    ("10b2", "10a1", 1),
    ("1.0aa", "1.0aa", 0),
    ("1.0a", "1.0aa", -1),
    ("10.0001", "10.0001", 0),
    ("10.0001", "10.1", 0),
    ("10.0001", "10.0039", -1),
    ("4.999.9", "5.0", -1),
    ("20101121", "20101121", 0),
    ("20101121", "20101122", -1),
    ("2_0", "2_0", 0),
    ("2.0", "2_0", 0),
    ("a", "b", -1),
    ("a+", "a+", 0),
    ("a+", "a_", 0),
    ("+a", "+a", 0),
    ("+_", "_+", 0),
    ("1.0~rc1", "1.0~rc1", 0),
    ("1.0~rc1", "1.0", -1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0^", "1.0^", 0),
    ("1.0^", "1.0", 1),
    ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.01", -1),
    ("1.0^20160101", "1.0.1", -1),
    ("1.0^20160101^git1", "1.0^20160101", 1),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
    ("001", "1", 0),
    ("1a", "1.a", 0),
    ("1.0.0", "1.0", 1),
    ("fc4", "fc.4", 0),
    ("3.0.0_fc", "3.0.0.fc", 0),
    ("1.2.3-4", "1.2.3-4.el8", -1),
    ("0.9", "0.10", -1),
]

DEB_CASES = [
    ("7.88.1-10", "7.88.1-10+deb12u5", -1),
    ("7.88.1-10+deb12u5", "7.88.1-10+deb12u5", 0),
    ("1.0~rc1-1", "1.0-1", -1),
    ("1:1.0-1", "2.0-1", 1),
    ("5.2.15-2+b2", "5.2.15-2", 1),
    ("2.36-9+deb12u4", "2.36-9", 1),
    ("1.0", "1.0-0", 0),
    ("1.0+dfsg", "1.0", 1),
    ("1.0a", "1.0+", -1),
    ("9.1-1", "9.1-1", 0),
    ("3.0.11-1~deb12u2", "3.0.11-1", -1),
]

APK_CASES = [
    ("1.0", "1.0-r1", -1),
    ("1.0_alpha", "1.0", -1),
    ("1.0_rc1", "1.0", -1),
    ("1.0_p1", "1.0", 1),
    ("1.0a", "1.0", 1),
    ("1.0_alpha1", "1.0_beta1", -1),
    ("1.0_beta1", "1.0_pre1", -1),
    ("1.0_pre1", "1.0_rc1", -1),
    ("1.0_git20200101", "1.0", 1),
    ("1.0_cvs1", "1.0_p1", -1),
    ("0.9", "0.10", -1),
    ("3.1.0-r4", "3.1.0-r10", -1),
    ("1.2.3_p1-r0", "1.2.3-r5", 1),
    ("1.0.2q-r0", "1.0.2p-r0", 1),
    ("1.0.2q-r0", "1.0.2q-r0", 0),
    ("1.01", "1.1", -1),
    ("1.0", "1.01", -1),
    ("1.36.0-r9", "1.36.1-r0", -1),
    ("20230506-r0", "20230506-r1", -1),
]


@pytest.mark.parametrize(("a", "b", "expected"), RPM_CASES)
def test_rpmvercmp(a: str, b: str, expected: int) -> None:
    assert rpmvercmp(a, b) == expected
    assert rpmvercmp(b, a) == -expected


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_rpmvercmp_agrees_with_rpm() -> None:
    lua = "".join(f'print(rpm.vercmp("{a}","{b}").." ")' for a, b, _e in RPM_CASES)
    out = subprocess.run(
        ["rpm", "--eval", f"%{{lua:{lua}}}"], capture_output=True, text=True, check=True
    ).stdout
    ref = [int(x) for x in out.split()]
    assert ref == [rpmvercmp(a, b) for a, b, _e in RPM_CASES]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1:1.0-1", "2.0-1", 1),
        ("0:2.13.3-3.el8_6.1", "2.13.3-3.el8_6", 1),
        ("2.13.3-3.el8_6.1", "0:2.13.3-3.el8_6.1", 0),
        ("1.0-1", "1.0", 1),  # rpm: a missing release sorts first
        ("1.0~beta-1", "1.0-1", -1),
        ("2:1.0-1", "1:9.9-9", 1),
    ],
)
def test_compare_rpm_evr(a: str, b: str, expected: int) -> None:
    assert compare_rpm(a, b) == expected


def test_split_evr() -> None:
    assert split_evr("1:2.3-4.el9") == (1, "2.3", "4.el9")
    assert split_evr("2.3") == (0, "2.3", "")
    assert split_evr("a:b-c-d") == (0, "a:b-c", "d")


@pytest.mark.parametrize(("a", "b", "expected"), DEB_CASES)
def test_compare_deb(a: str, b: str, expected: int) -> None:
    assert compare_deb(a, b) == expected
    assert compare_deb(b, a) == -expected


@pytest.mark.parametrize(("a", "b", "expected"), APK_CASES)
def test_compare_apk(a: str, b: str, expected: int) -> None:
    assert compare_apk(a, b) == expected
    assert compare_apk(b, a) == -expected


def test_schemes() -> None:
    assert scheme_for_ecosystem("Debian:12") == "deb"
    assert scheme_for_ecosystem("Ubuntu:22.04:LTS") == "deb"
    assert scheme_for_ecosystem("Alpine:v3.18") == "apk"
    assert scheme_for_ecosystem("Red Hat:enterprise_linux:9::appstream") == "rpm"
    assert scheme_for_ecosystem("Mariner:2.0") == "rpm"
    assert scheme_for_ecosystem("PyPI") is None
    assert compare("deb", "1", "2") == -1
