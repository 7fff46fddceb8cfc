"""The appliance's qemu killed in the middle of a root, during a real scan.

One ``vmscan scan -j 2`` over three names of the phony Debian fixture: on ``mig`` qemu is
SIGKILLed as the migration check starts (so that check runs against a dead appliance),
on ``dpkg`` as the dpkg cataloger starts (so every later plugin meets a dead one), on
``walk`` as the manifest's walk starts (outside any plugin). The workers are forked, so
the patches made here before the scan are in force there.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

import fixtures
from vmscan import scanner
from vmscan.catalog.dpkg import DpkgCataloger
from vmscan.checks.migration import MigrationCheck
from vmscan.cli import main
from vmscan.manifest import sha256_file
from vmscan.plugins import ScanContext

pytestmark = pytest.mark.guest


def _kill_appliance(handle: Any) -> None:
    """Kill the qemu behind *handle* (the plugins' view has no handle: its backend's)."""
    pid = int(handle.get_pid())
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):  # until it is a zombie (libguestfs reaps it) or gone
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    img = fixtures.build("debian-lvm")
    tmp = tmp_path_factory.mktemp("kill")
    names = {}
    for name in ("mig", "dpkg", "walk"):
        names[name] = tmp / f"{name}.qcow2"
        names[name].symlink_to(img)
    before = sha256_file(img)
    mp = pytest.MonkeyPatch()
    orig_run, orig_catalog = MigrationCheck.run, DpkgCataloger.catalog
    orig_scan, orig_manifest = scanner.scan_image, scanner.build_manifest
    current: list[str] = []

    def scan_image(label: str, opts: Any) -> Any:
        current.append(label)  # one image per forked worker
        return orig_scan(label, opts)

    def build_manifest(g: Any, *args: Any, **kwargs: Any) -> Any:
        if current and current[-1].endswith("walk.qcow2"):
            _kill_appliance(g)
        return orig_manifest(g, *args, **kwargs)

    def run(self: MigrationCheck, fs: Any, ctx: ScanContext) -> Any:
        if ctx.image is not None and ctx.image.source.endswith("mig.qcow2"):
            _kill_appliance(fs.backend.g)
        return orig_run(self, fs, ctx)

    def catalog(self: DpkgCataloger, fs: Any, ctx: ScanContext) -> Any:
        if ctx.image is not None and ctx.image.source.endswith("dpkg.qcow2"):
            _kill_appliance(fs.backend.g)
        return orig_catalog(self, fs, ctx)

    mp.setattr(MigrationCheck, "run", run)
    mp.setattr(DpkgCataloger, "catalog", catalog)
    mp.setattr(scanner, "scan_image", scan_image)
    mp.setattr(scanner, "build_manifest", build_manifest)
    out = tmp / "report.json"
    try:
        rc = main(
            [
                "scan",
                "-q",
                "-j",
                "2",
                "--checks",
                "license,migration",
                "-o",
                str(out),
                str(names["mig"]),
                str(names["dpkg"]),
                str(names["walk"]),
            ]
        )
    finally:
        mp.undo()
    report = json.loads(out.read_text())
    imgs = dict(zip(("mig", "dpkg", "walk"), report["images"], strict=True))
    return {"rc": rc, "img": imgs, "before": before, "after": sha256_file(img)}


def _root(img: dict[str, Any]) -> dict[str, Any]:
    (root,) = img["roots"]
    assert isinstance(root, dict)
    return root


def _plugins(img: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in _root(img)["plugins"]}


def test_exit_code_and_image_unchanged(killed: dict[str, Any]) -> None:
    assert killed["rc"] == 2
    assert killed["before"] == killed["after"]
    for img in killed["img"].values():
        assert img["status"] == "partial"


def test_killed_during_migration(killed: dict[str, Any]) -> None:
    img = killed["img"]["mig"]
    plugins = _plugins(img)
    # What ran before the kill stands.
    assert plugins["os/dpkg"]["status"] == "succeeded"
    assert plugins["license"]["status"] == "succeeded"
    assert _root(img)["packages"]
    mig = plugins["migration"]
    assert mig["status"] == "failed"
    assert "appliance died" in mig["reason"]
    # No finding of absence ("no bootloader", "no kernel") from a dead appliance.
    assert [f for f in _root(img)["findings"] if f["check"] == "migration"] == []
    assert "migration" not in _root(img)["sections"]
    assert any("migration did not complete (failed)" in e for e in img["errors"])


def test_killed_during_a_cataloger(killed: dict[str, Any]) -> None:
    img = killed["img"]["dpkg"]
    plugins = _plugins(img)
    assert plugins["os/dpkg"]["status"] == "failed"
    assert "appliance died during this plugin" in plugins["os/dpkg"]["reason"]
    # Every later plugin is failed without being run, none "does not apply".
    for name in ("os/rpm", "os/apk", "os/windows", "license", "migration"):
        assert plugins[name]["status"] == "failed", name
        assert "not run: the appliance died" in plugins[name]["reason"], name
    root = _root(img)
    assert root["packages"] == []
    assert root["findings"] == []
    assert "migration" not in root["sections"]


def test_killed_outside_the_plugins(killed: dict[str, Any]) -> None:
    img = killed["img"]["walk"]
    assert any(e.startswith("the appliance died; the rest was not scanned") for e in img["errors"])
    root = _root(img)
    assert root["packages"] == [] and root["findings"] == []
    plugins = _plugins(img)
    assert set(plugins) == {"inventory", "license", "migration"}
    for p in plugins.values():
        assert p["status"] == "failed"
        assert p["reason"].startswith("not run: the appliance died")
