"""A check that could not run never makes an image "ok": real appliances, real clamd.

Two runs share the cost: one ``vmscan scan -j 2`` with a ``--clamd`` address nobody
listens on over two crafted guests (a Debian root whose dpkg database is random bytes
and whose rpmdb is cut in half; a Windows tree whose SOFTWARE hive is cut in half), and
one nightly run over ``debian-lvm`` whose own clamd is SIGKILLed in the middle of the
scan. Every assertion is per image, on the report a user would read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import fixtures
from vmscan.catalog.common import BROKEN_DB_RULE
from vmscan.cli import main
from vmscan.completeness import REASON_LIMIT, incomplete_plugins
from vmscan.manifest import sha256_file
from vmscan.report.html import render_html

pytestmark = pytest.mark.guest
SCHEMA = Path(__file__).resolve().parent.parent / "vmscan" / "schema" / "report.schema.json"
DEAD = "unix:/nonexistent/vmscan-dead/clamd.sock"


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    images = {
        "linux": fixtures.build("broken-pkgdb-linux"),
        "windows": fixtures.build("broken-hive-windows"),
    }
    before = {k: sha256_file(p) for k, p in images.items()}
    out = tmp_path_factory.mktemp("dead") / "report.json"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(
            ["scan", "-q", "-j", "2", "--clamd", DEAD, "-o", str(out), *map(str, images.values())]
        )
    report = json.loads(out.read_text())
    return {
        "rc": rc,
        "report": report,
        "img": dict(zip(images, report["images"], strict=True)),
        "stderr": err.getvalue(),
        "unchanged": before == {k: sha256_file(p) for k, p in images.items()},
    }


def _plugins(img: dict[str, Any]) -> dict[str, dict[str, Any]]:
    roots = img["roots"] + img["sections"].get("data_volumes", [])
    # What ran (a plugin skipped on one root must not hide how it ran on another).
    return {p["name"]: p for r in roots for p in r["plugins"] if p["status"] != "skipped"}


def test_exit_code_schema_and_images_unchanged(dead_run: dict[str, Any]) -> None:
    assert dead_run["rc"] == 2
    jsonschema.validate(dead_run["report"], json.loads(SCHEMA.read_text()))
    assert dead_run["unchanged"]
    for img in dead_run["report"]["images"]:
        assert img["status"] in ("partial", "no_os") and img["status"] != "ok"
        assert img["errors"] and all(len(e) <= REASON_LIMIT for e in img["errors"])
        for p in _plugins(img).values():
            assert len(p["reason"]) <= REASON_LIMIT


def test_dead_clamd_every_file_counted(dead_run: dict[str, Any]) -> None:
    for img in dead_run["img"].values():
        av = img["sections"]["antivirus"]
        files = img["sections"]["manifest_files"]
        assert files > 0
        assert av["status"] == "incomplete" and av["incomplete_reasons"] == ["engine_unavailable"]
        assert av["files_total"] == files and av["files_scanned"] == 0
        assert av["not_scanned"]["counts"] == {"engine_unavailable": files}
        assert av["detail"].startswith(f"engine unavailable: clamd at {DEAD}")
        assert _plugins(img)["antivirus"]["status"] == "failed"
        assert any("antivirus did not complete (failed)" in e for e in img["errors"])


def test_garbage_dpkg_and_truncated_rpmdb(dead_run: dict[str, Any]) -> None:
    img = dead_run["img"]["linux"]
    assert img["status"] == "partial"
    (root,) = img["roots"]
    assert (root["os"]["distro"], root["os"]["major_version"]) == ("debian", 12)
    plugins = _plugins(img)
    dpkg, rpm = plugins["os/dpkg"], plugins["os/rpm"]
    assert dpkg["status"] == "failed" and "malformed line(s)" in dpkg["reason"]
    assert rpm["status"] == "failed" and "database truncated" in rpm["reason"]
    assert root["packages"] == []
    broken = {f["target"]: f for f in root["findings"] if f["rule_id"] == BROKEN_DB_RULE}
    assert set(broken) == {"/var/lib/dpkg/status", "/var/lib/rpm/rpmdb.sqlite"}
    assert all(f["severity"] == "high" and f["check"] == "inventory" for f in broken.values())


def test_damaged_software_hive(dead_run: dict[str, Any]) -> None:
    img = dead_run["img"]["windows"]
    assert img["status"] == "partial"
    (root,) = img["roots"]
    assert root["os"]["type"] == "windows"
    win = _plugins(img)["os/windows"]
    assert win["status"] == "partial"
    assert win["reason"].startswith("Windows installation found, its SOFTWARE hive is damaged (")
    assert "Uninstall" in win["reason"] and "inventory incomplete" in win["reason"]
    assert any("SOFTWARE hive is damaged" in e for e in img["errors"])
    # What could be read was: the OS facts; and the rest of the tree was walked.
    assert root["os"]["extra"]["product_name"] == "Windows 10 Pro"
    assert img["sections"]["manifest_files"] >= 3
    assert {"license", "migration"} <= set(_plugins(img))
    (f,) = [f for f in root["findings"] if f["rule_id"] == BROKEN_DB_RULE]
    assert f["severity"] == "medium" and f["target"].lower().endswith("/config/software")


def test_terminal_line_and_html_banner_per_image(dead_run: dict[str, Any]) -> None:
    lines = [ln for ln in dead_run["stderr"].splitlines() if "checks that did not complete" in ln]
    for img in dead_run["report"]["images"]:
        (line,) = [ln for ln in lines if img["source"] in ln]
        for inc in incomplete_plugins(img):
            assert inc.plugin in line
    head = render_html(dead_run["report"]).partition('<section id="fleet-overview">')[0]
    assert head.count('<div class="banner" role="alert"') == 2


# ---- the nightly with its own clamd killed mid-scan ----------------------------------------


def _clamd_pid(address: str) -> int:
    """The managed clamd serving *address*: the one whose --config-file lies beside it."""
    conf = str(Path(address.removeprefix("unix:")).parent / "clamd.conf")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if conf.encode() in argv and any(a.endswith(b"clamd") for a in argv[:1]):
            return int(proc.name)
    raise AssertionError(f"no clamd running with {conf}")


def _kill_on_third_stream(monkeypatch: pytest.MonkeyPatch, flag: Path) -> None:
    """The scan workers are forked: a patch made here is theirs too. The real clamd is
    SIGKILLed once, when the third file is about to be streamed to it."""
    from vmscan.av.clamd_client import ClamdClient

    real_open = ClamdClient.open_stream
    calls = {"n": 0}

    def open_stream(self: ClamdClient) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.kill(_clamd_pid(self.address), signal.SIGKILL)
        return real_open(self)

    monkeypatch.setattr(ClamdClient, "open_stream", open_stream)


def test_nightly_with_clamd_killed_mid_scan_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmscan.nightly import dry_run, load_config, run_nightly

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    debian = fixtures.build("debian-lvm")
    os.symlink(debian, imgs / "debian-lvm.qcow2")
    cfg_path = tmp_path / "vmscan.toml"
    cfg_path.write_text(
        f'fail_on = "none"\n[images]\npaths = ["{imgs}/*.qcow2"]\n'
        f'symlink_targets = ["{debian.parent}"]\n'
        '[scan]\nchecks = ["antivirus"]\nmanifest = false\n'
        f'[state]\ndatabase = "{tmp_path}/state.db"\n'
        f'[reports]\ndir = "{tmp_path}/reports"\nformats = ["json", "html", "sarif"]\n'
    )
    cfg = load_config(cfg_path)
    flag = tmp_path / "killed"
    _kill_on_third_stream(monkeypatch, flag)
    out = run_nightly(cfg, metrics_path=tmp_path / "vmscan.prom")
    assert flag.exists(), "clamd was never killed"
    assert out.exit_code == 2 and out.images_incomplete == 1
    report = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    (img,) = report["images"]
    av = img["sections"]["antivirus"]
    assert av["status"] == "incomplete" and "clamd_died" in av["incomplete_reasons"]
    assert av["clamd"]["restarts"] >= 1
    # Every file has a fate: a verdict, or a reason it was not scanned.
    not_scanned = sum(av["not_scanned"]["counts"].values())
    assert av["files_total"] == img["sections"]["manifest_files"] > 0
    assert av["files_scanned"] + av["files_hash_matched"] + not_scanned == av["files_total"]
    assert img["status"] == "partial"
    assert any("antivirus did not complete (partial)" in e for e in img["errors"])
    html = (cfg.reports_dir / "latest" / "report.html").read_text()
    assert 'id="banner-vm-0"' in html
    sarif = json.loads((cfg.reports_dir / "latest" / "report.sarif").read_text())
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert (
        'vmscan_nightly_checks_incomplete{check="antivirus"} 1'
        in (tmp_path / "vmscan.prom").read_text()
    )
    # The next night retries the image instead of carrying this result forward.
    (item,) = dry_run(cfg)
    assert item.action == "scan" and item.reason.endswith(
        "did not complete (or the image changed under it): retried"
    )
