"""Every line of the shared corpus' version vectors (dpkg, rpm, apk) against vmscan.versions."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from vmscan.versions import (
    APK_EQUAL,
    APK_GREATER,
    APK_LESS,
    apk_match,
    apk_op_mask,
    apk_validate,
    compare_apk,
    compare_deb,
    compare_rpm,
    rpmvercmp,
)

VERSIONS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "versions"
pytestmark = pytest.mark.skipif(not VERSIONS.is_dir(), reason="../shared/corpus not present")
OPS = {"<": -1, "=": 0, ">": 1}


def _lines(name: str) -> list[str]:
    path = VERSIONS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]


def _tsv(name: str) -> list[tuple[str, str, int]]:
    out = []
    for ln in _lines(name):
        if ln.startswith("#") or not ln.strip():
            continue
        a, b, expected = ln.split("\t")
        out.append((a, b, int(expected)))
    return out


def _ops(name: str) -> list[tuple[str, str, int]]:
    out = []
    for ln in _lines(name):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        a, op, b = s.split()
        out.append((a, b, OPS[op]))
    return out


def _disagreements(
    rows: list[tuple[str, str, int]], cmp: Callable[[str, str], int]
) -> list[tuple[str, str, int, int]]:
    return [(a, b, e, cmp(a, b)) for a, b, e in rows if cmp(a, b) != e]


@pytest.mark.parametrize(
    ("name", "cmp", "minimum"),
    [
        ("dpkg-Dpkg_Version.tsv", compare_deb, 43),
        ("rpm-rpmvercmp.tsv", rpmvercmp, 91),
    ],
)
def test_tsv_vectors(name: str, cmp: Callable[[str, str], int], minimum: int) -> None:
    rows = _tsv(name)
    assert len(rows) >= minimum
    assert _disagreements(rows, cmp) == []


@pytest.mark.parametrize(
    ("name", "cmp", "minimum"),
    [
        ("scalibr-debian-versions-generated.txt", compare_deb, 14_000),
        ("scalibr-debian-versions.txt", compare_deb, 30),
        ("scalibr-redhat-versions.txt", compare_rpm, 165),
        ("scalibr-alpine-versions-generated.txt", compare_apk, 13_900),
        ("scalibr-alpine-versions.txt", compare_apk, 700),
    ],
)
def test_operator_vectors(name: str, cmp: Callable[[str, str], int], minimum: int) -> None:
    rows = _ops(name)
    assert len(rows) >= minimum
    assert _disagreements(rows, cmp) == []
    # Antisymmetry: the reverse comparison gives the opposite answer.
    assert [(a, b) for a, b, e in rows if cmp(b, a) != -e] == []


def test_apk_tools_version_data() -> None:
    """apk-tools' own test/unit/version.data, read the way its version_test.c reads it."""
    failed, checked = [], 0
    for raw in _lines("apk-tools-version.data"):
        arg = raw.split("#", 1)[0].strip()
        if not arg:
            continue
        checked += 1
        parts = arg.split(" ")
        if len(parts) >= 3:
            v1, op, v2 = parts[0], parts[1], parts[2]
            invert = op.startswith("!")
            ok = apk_match(v1, apk_op_mask(op.removeprefix("!")), v2)
            if "~" not in op:
                # compare_apk (what matching uses) must give the same answer as apk_match.
                res = {-1: APK_LESS, 0: APK_EQUAL, 1: APK_GREATER}[compare_apk(v1, v2)]
                assert bool(res & apk_op_mask(op.removeprefix("!"))) == ok, arg
        else:
            invert = arg.startswith("!")
            ok = apk_validate(arg.removeprefix("!"))
        if ok == invert:
            failed.append(arg)
    assert checked > 700
    assert failed == []


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed")
def test_dpkg_spot_check() -> None:
    """A sample of the generated Debian vectors through ``dpkg --compare-versions``."""
    rows = _ops("scalibr-debian-versions-generated.txt")[::1500]
    for a, b, _e in rows:
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode
        assert (lt == 0) == (compare_deb(a, b) < 0), (a, b)


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_rpm_evr_agrees_with_rpm() -> None:
    """scalibr's RPM vectors through Debian's rpm ``rpm.vercmp`` (EVR comparison)."""
    rows = _ops("scalibr-redhat-versions.txt")
    lua = "".join(f'print(rpm.vercmp("{a}","{b}").." ")' for a, b, _e in rows if '"' not in a + b)
    out = subprocess.run(
        ["rpm", "--eval", f"%{{lua:{lua}}}"], capture_output=True, text=True, check=True
    ).stdout
    ref = [int(x) for x in out.split()]
    mine = [compare_rpm(a, b) for a, b, _e in rows if '"' not in a + b]
    assert ref == mine
