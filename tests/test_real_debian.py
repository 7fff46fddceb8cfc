"""A real Debian 12 guest (debootstrap) end to end: every check, every format, twice.

The guest is ``migration-debian-real``: debootstrap minbase bookworm on MBR + LVM, an
fstab naming ``/dev/sda2`` and an absent ``/dev/sdb1``, a udev rule binding a MAC, and
EICAR planted under a dull name, inside a zip and under a non-UTF-8 name. Building it
needs a Debian mirror; without one the module skips with the reason.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import fixtures
from fixtures.specs.debian_lvm import EICAR
from fixtures.specs.migration_debian_real import HOSTNAME, REAL_EICAR_PATHS
from vmscan.cli import main
from vmscan.pathenc import encode_path

pytestmark = pytest.mark.guest
FORMATS = ("qcow2", "vmdk", "vpc", "vhdx")
NAME = "migration-debian-real"


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    try:
        return {fmt: fixtures.build(NAME, fmt) for fmt in FORMATS}
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        pytest.skip(f"cannot build the debootstrap guest here (mirror or debootstrap): {e}")


def _scan(args: list[str], out: Path) -> tuple[int, dict[str, Any]]:
    rc = main(["scan", "-q", "-o", str(out), *args])
    return rc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def formats_run(
    images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fmt") / "r.json"
    rc, data = _scan(
        ["--manifest", "--no-cache", "--checks", "none", "-j", "2", *map(str, images.values())], out
    )
    return {"rc": rc, "images": dict(zip(FORMATS, data["images"], strict=True))}


@pytest.fixture(scope="module")
def full_runs(
    images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("full")
    runs = []
    for n in (1, 2):
        rc, data = _scan(
            ["--state-db", str(tmp / "state.db"), str(images["qcow2"])], tmp / f"r{n}.json"
        )
        runs.append({"rc": rc, "image": data["images"][0]})
    return runs


def test_os_facts_and_absent_disk_every_format(formats_run: dict[str, Any]) -> None:
    assert formats_run["rc"] == 0
    for fmt, img in formats_run["images"].items():
        assert img["disks"][0]["format"] == fmt
        (root,) = img["roots"]
        os_ = root["os"]
        assert (os_["distro"], os_["major_version"], os_["hostname"]) == ("debian", 12, HOSTNAME)
        assert img["status"] == "partial"
        assert any("/dev/sdb1" in e and "/data" in e for e in img["errors"]), img["errors"]


def test_same_manifest_every_format(formats_run: dict[str, Any]) -> None:
    sets = [
        {(m["path"], m["sha256"], m["size"], m["mode"]) for m in img["manifest"]}
        for img in formats_run["images"].values()
    ]
    assert len(sets[0]) > 3000
    assert all(s == sets[0] for s in sets)
    paths = {m[0] for m in sets[0]}
    assert encode_path(REAL_EICAR_PATHS[2]) in paths


def test_packages_equal_dpkg_query(
    full_runs: list[dict[str, Any]], images: dict[str, Path], tmp_path: Path
) -> None:
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(images["qcow2"]), readonly=1, format="qcow2")
    g.launch()
    try:
        g.mount_ro("/dev/vg0/root", "/")
        admin = tmp_path / "admin"
        (admin / "updates").mkdir(parents=True)
        g.download("/var/lib/dpkg/status", str(admin / "status"))
    finally:
        g.close()
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={admin}",
            "-W",
            "-f=${Package}\\t${Version}\\t${Architecture}\\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = sorted(tuple(line.split("\t")) for line in out.splitlines())
    (root,) = full_runs[0]["image"]["roots"]
    got = sorted((p["name"], p["version"], p["arch"]) for p in root["packages"])
    assert len(expected) > 80 and got == expected


def test_licences(full_runs: list[dict[str, Any]]) -> None:
    (root,) = full_runs[0]["image"]["roots"]
    pkgs = {p["name"]: p for p in root["packages"]}
    with_spdx = [p for p in pkgs.values() if p["licenses"]]
    assert len(with_spdx) / len(pkgs) >= 0.95
    for name in ("bash", "coreutils"):
        assert pkgs[name]["licenses"][0].startswith("GPL-3.0-or-later")
    assert pkgs["dpkg"]["license_source"].startswith("/usr/share/doc/dpkg/copyright")


def test_antivirus_finds_planted_eicar(full_runs: list[dict[str, Any]]) -> None:
    (root,) = full_runs[0]["image"]["roots"]
    hits = {f["target"]: f for f in root["findings"] if f["check"] == "antivirus"}
    plain = REAL_EICAR_PATHS[0]
    assert isinstance(plain, str)
    assert hits[plain]["details"]["sha256"] == hashlib.sha256(EICAR).hexdigest()
    assert "EICAR" in hits[plain]["rule_id"]
    assert str(REAL_EICAR_PATHS[1]) in hits  # inside a zip
    assert encode_path(REAL_EICAR_PATHS[2]) in hits  # non-UTF-8 name
    av = full_runs[0]["image"]["sections"]["antivirus"]
    assert av["status"] == "complete" and av["bytes_streamed"] > 10_000_000


def test_second_run_streams_nothing(full_runs: list[dict[str, Any]]) -> None:
    first, second = (r["image"] for r in full_runs)
    assert second["sections"]["antivirus"]["bytes_streamed"] == 0

    def detections(img: dict[str, Any]) -> set[tuple[str, str]]:
        (root,) = img["roots"]
        return {(f["target"], f["rule_id"]) for f in root["findings"] if f["check"] == "antivirus"}

    assert detections(second) == detections(first) and len(detections(first)) == 3


def test_migration_findings(full_runs: list[dict[str, Any]]) -> None:
    (root,) = full_runs[0]["image"]["roots"]
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for f in root["findings"]:
        by_rule.setdefault(f["rule_id"], []).append(f)
    names = {
        (f["details"]["device"], f["details"]["file"], f["details"]["line"])
        for f in by_rule["MIG-STOR-DEVICE-NAME"]
    }
    assert names == {("/dev/sda2", "/etc/fstab", 4), ("/dev/sdb1", "/etc/fstab", 5)}
    assert not [f for f in root["findings"] if "vg0" in str(f["details"].get("device", ""))]
    (mac,) = by_rule["MIG-NET-MAC-BINDING"]
    assert mac["details"]["file"] == "/etc/udev/rules.d/70-persistent-net.rules"
    facts = root["sections"]["migration"]["facts"]
    assert facts["partition_table"] == "mbr" and facts["firmware"] == "bios"
    assert facts["arch_bits"] == 64
    assert facts["kernels"] == [] and "MIG-DRV-LINUX-NO-KERNEL" in by_rule
    sized = {f["mountpoint"]: f for f in facts["filesystems"] if f.get("size")}
    assert set(sized) >= {"/", "/boot", "/srv"}
    assert all(0 < f["free"] < f["size"] for f in sized.values())
