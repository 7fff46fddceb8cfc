"""End to end over fixture guests: a Debian-like LVM guest in every format, bad images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import fixtures
from vmscan.cli import main
from vmscan.manifest import sha256_file

pytestmark = pytest.mark.guest
SCHEMA = Path(__file__).resolve().parent.parent / "vmscan" / "schema" / "report.schema.json"
FORMATS = ("qcow2", "vmdk", "vpc", "vhdx")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One scan of every image of interest, two appliances at a time."""
    images = {f"debian.{fmt}": fixtures.build("debian-lvm", fmt) for fmt in FORMATS}
    images["data-disk"] = fixtures.build("data-disk")
    for bad in ("backing-outside", "truncated", "random-bytes"):
        images[bad] = fixtures.build(bad)
    before = {k: sha256_file(p) for k, p in images.items()}
    out = tmp_path_factory.mktemp("scan") / "report.json"
    rc = main(
        [
            "scan",
            "-q",
            "--manifest",
            "--no-cache",
            "--checks",
            "none",
            "-j",
            "2",
            "-o",
            str(out),
            *map(str, images.values()),
        ]
    )
    text = out.read_text()
    report = json.loads(text)
    by_name = dict(zip(images, report["images"], strict=True))
    after = {k: sha256_file(p) for k, p in images.items()}
    return {
        "rc": rc,
        "report": report,
        "text": text,
        "img": by_name,
        "before": before,
        "after": after,
    }


def test_report_validates_and_exit_code(run: dict[str, Any]) -> None:
    jsonschema.validate(run["report"], json.loads(SCHEMA.read_text()))
    assert run["rc"] == 2  # the bad images could not be scanned, the others were


def test_images_unchanged(run: dict[str, Any]) -> None:
    assert run["before"] == run["after"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_debian_facts(run: dict[str, Any], fmt: str) -> None:
    img = run["img"][f"debian.{fmt}"]
    assert img["disks"][0]["format"] == fmt
    (root,) = img["roots"]
    os_ = root["os"]
    assert (os_["type"], os_["distro"], os_["major_version"]) == ("linux", "debian", 12)
    assert os_["hostname"] == "phony-debian"
    assert os_["arch"] == "x86_64"
    assert (os_["os_release_id"], os_["version_id"], os_["version_codename"]) == (
        "debian",
        "12",
        "bookworm",
    )
    assert root["device"] == "/dev/vg0/root"
    assert root["mountpoints"]["/boot"] == "/dev/sda1"


@pytest.mark.parametrize("fmt", FORMATS)
def test_absent_second_disk_is_reported(run: dict[str, Any], fmt: str) -> None:
    img = run["img"][f"debian.{fmt}"]
    assert img["status"] == "partial"
    assert any("/dev/sdb1" in e and "/data" in e for e in img["errors"])
    absent = [f for f in img["filesystems"] if f["device"] == "/dev/sdb1"]
    assert absent and not absent[0]["mounted"]
    mounted = {f["mountpoint"] for f in img["filesystems"] if f["mounted"]}
    assert mounted == {"/", "/boot"}


def test_same_manifest_from_every_format(run: dict[str, Any]) -> None:
    manifests = [
        {
            (m["device"], m["path"], m["sha256"], m["size"], m["mode"], m["mtime"])
            for m in run["img"][f"debian.{fmt}"]["manifest"]
        }
        for fmt in FORMATS
    ]
    assert all(m == manifests[0] for m in manifests)
    paths = {m[1] for m in manifests[0]}
    # A non-UTF-8 name survives, reversibly escaped; /boot files are on /dev/sda1.
    assert "/home/user/caf\\xe9.txt" in paths
    assert any(p.endswith("/d40/bottom.txt") for p in paths)
    assert all(m[0] == "/dev/sda1" for m in manifests[0] if m[1].startswith("/boot/"))
    assert not any(m[2] is None for m in manifests[0])


def test_manifest_hash_is_content_hash(run: dict[str, Any]) -> None:
    import hashlib

    notes = [m for m in run["img"]["debian.qcow2"]["manifest"] if m["path"] == "/etc/hostname"]
    assert notes and notes[0]["sha256"] == hashlib.sha256(b"phony-debian\n").hexdigest()


def test_data_disk_is_no_os(run: dict[str, Any]) -> None:
    img = run["img"]["data-disk"]
    assert img["status"] == "no_os"
    assert img["roots"] == []
    assert img["manifest"]
    assert img["sections"]["data_volumes"]


def test_bad_images_are_errors_with_reasons(run: dict[str, Any]) -> None:
    back = run["img"]["backing-outside"]
    assert back["status"] == "error"
    assert "/etc/hostname" in back["errors"][0] and "refused" in back["errors"][0]
    # Nothing of the host file is in the report.
    host_name = Path("/etc/hostname").read_text().strip()
    if len(host_name) >= 6:
        assert host_name not in run["text"].replace(str(fixtures.build("backing-outside")), "")
    for name in ("truncated", "random-bytes"):
        img = run["img"][name]
        assert img["status"] == "error", name
        assert img["errors"] and "Traceback" not in run["text"]


def test_timeout_costs_one_image(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = main(
        [
            "scan",
            "-q",
            "--checks",
            "none",
            "--timeout",
            "3",
            "-o",
            str(out),
            str(fixtures.build("debian-lvm")),
        ]
    )
    img = json.loads(out.read_text())["images"][0]
    assert rc == 2
    assert img["status"] == "error" and "timed out" in img["errors"][0]


def test_report_reads_into_the_model_and_back(run: dict[str, Any]) -> None:
    """A real scan's report: every field reaches the read model, which gives it back."""
    from test_document import assert_round_trips

    report = assert_round_trips(run["report"])
    data = report.images[list(run["img"]).index("data-disk")]
    assert data.os_roots == () and data.roots() == data.data_volumes
    assert all(r.data_volume for r in data.roots()) and data.manifest
