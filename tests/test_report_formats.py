"""Report formats: the enum and its writers, the choice by ``-o`` and terminal, the table."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmscan.report import WRITERS
from vmscan.report.formats import ReportFormat, choose_format, format_for_path
from vmscan.report.table import printable, write_table

REPO = Path(__file__).resolve().parent.parent


def _doc() -> dict[str, Any]:
    finding = {
        "check": "antivirus",
        "rule_id": "Eicar-Signature",
        "severity": "critical",
        "title": "malware",
        "target": "/home/u/evil\x1b[31mred\nname",
        "details": {},
        "fingerprint": "f",
    }
    low = dict(finding, severity="low", rule_id="MIG-X", check="migration", target="/boot")
    return {
        "schema_version": "1.1",
        "images": [
            {
                "source": "/vms/a.qcow2",
                "status": "partial",
                "errors": ["/dev/sda1: antivirus did not complete (failed): clamd down"],
                "roots": [
                    {
                        "device": "/dev/sda1",
                        "os": {"distro": "debian", "version_id": "12", "type": "linux"},
                        "findings": [finding, low],
                        "plugins": [
                            {"name": "antivirus", "status": "failed", "reason": "clamd down"}
                        ],
                    }
                ],
                "sections": {
                    "data_volumes": [
                        {"device": "/dev/sdb1", "findings": [dict(finding, target="/data/x")]}
                    ]
                },
            },
            {"source": "/vms/b.qcow2", "status": "error", "errors": ["truncated"], "roots": []},
        ],
    }


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("r.json", ReportFormat.JSON),
        ("r.HTML", ReportFormat.HTML),
        ("r.sarif", ReportFormat.SARIF),
        ("r.xml", ReportFormat.JUNIT),
        ("vm.cdx.json", ReportFormat.CYCLONEDX),
        ("vm.spdx.json", ReportFormat.SPDX),
        ("r.txt", ReportFormat.TABLE),
        ("report", None),
    ],
)
def test_format_for_path(name: str, fmt: ReportFormat | None) -> None:
    assert format_for_path(name) is fmt


def test_choose_format() -> None:
    assert choose_format(None, None, True) is ReportFormat.TABLE
    assert choose_format(None, None, False) is ReportFormat.JSON
    assert choose_format(None, "out/r.html", True) is ReportFormat.HTML
    assert choose_format(None, "out/report", False) is ReportFormat.JSON
    assert choose_format("sarif", "r.html", True) is ReportFormat.SARIF
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        choose_format("pdf", None, False)


def test_every_format_has_a_writer() -> None:
    for fmt in ReportFormat:
        assert fmt.writes_folder or fmt.stream_writer is not None
    assert set(WRITERS) == {f.value for f in ReportFormat} - {"csv", "table"}


def test_folder_formats_write_files(tmp_path: Path) -> None:
    paths = ReportFormat.CSV.write(_doc(), str(tmp_path / "csv"), io.StringIO())
    assert {p.name for p in paths} >= {"findings.csv", "inventory.csv"}
    (tmp_path / "boms").mkdir()
    boms = ReportFormat.CYCLONEDX.write(_doc(), str(tmp_path / "boms"), io.StringIO())
    assert len(boms) == 2  # one BOM per image into an existing folder
    with pytest.raises(ValueError, match="give -o FOLDER"):
        ReportFormat.CSV.write(_doc(), None, io.StringIO())


def test_table_counts_escapes_and_lists_what_did_not_complete() -> None:
    buf = io.StringIO()
    write_table(_doc(), buf, full_report="/tmp/r.json")
    text = buf.getvalue()
    assert "\x1b" not in text and "evil?[31mred?name" in text
    header, row_a, row_b = text.splitlines()[:3]
    assert header.split()[:3] == ["IMAGE", "STATUS", "OS"]
    # critical: the root's EICAR and the data volume's; low: the migration finding.
    cols = header.split()
    a = row_a.split()
    assert a[0] == "/vms/a.qcow2" and a[1] == "partial"
    assert a[cols.index("CRITICAL") + 1] == "2" and a[cols.index("LOW") + 1] == "1"
    assert row_b.split()[:2] == ["/vms/b.qcow2", "error"]
    assert "incomplete: /dev/sda1: antivirus" in text and "! truncated" in text
    assert "by check: antivirus 2, migration 1" in text
    assert text.rstrip().endswith("full report: /tmp/r.json")


def test_printable_cuts_and_replaces() -> None:
    assert printable("a\nb\x07c") == "a?b?c"
    assert printable("x" * 10, 5) == "xxxx…"


def _vmscan_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``vmscan`` with stdout on a pseudo-terminal; (exit code, what it printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmscan", *args],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def test_terminal_gets_a_table_and_the_full_report_is_kept(tmp_path: Path) -> None:
    """On a terminal with no --format: the table, and the JSON report in the cache folder.
    A source that does not exist fails before any appliance, so this is quick."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    missing = str(tmp_path / "no-such.qcow2")
    rc, out = _vmscan_on_a_terminal(["scan", "-q", "--checks", "none", missing], env)
    assert rc == 2  # the image could not be scanned
    kept = tmp_path / "cache" / "vmscan" / "last-scan.json"
    assert out.splitlines()[0].split()[:2] == ["IMAGE", "STATUS"]
    assert f"full report: {kept}" in out
    report = json.loads(kept.read_text())
    assert report["images"][0]["source"] == missing and report["images"][0]["status"] == "error"
    # Not a terminal: JSON on stdout, as before.
    piped = subprocess.run(
        [sys.executable, "-m", "vmscan", "scan", "-q", "--checks", "none", missing],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert json.loads(piped.stdout)["images"][0]["status"] == "error"


def test_a_data_volume_finding_is_in_every_findings_format(tmp_path: Path) -> None:
    """EICAR on a data disk (an image with no OS) and that volume's migration finding: every
    format that lists findings shows them (JSON, HTML, SARIF, CSV, the table; JUnit, the
    migration audit, its rule). SPDX and CycloneDX are inventories: they list packages."""
    from vmscan.cli import finalize_report
    from vmscan.model import Finding, ImageResult, ImageStatus, OSInfo, RootResult, ScanResult

    vol = RootResult(device="/dev/sdb1", os=OSInfo(type="none"), mountpoints={"/": "/dev/sdb1"})
    vol.findings.append(
        Finding("antivirus", "Eicar-Test-Signature", "critical", "malware", "/data/eicar.com")
    )
    vol.findings.append(Finding("migration", "MIG-CAPACITY-LOW-FREE", "low", "full", "/dev/sdb1"))
    vol.sections["migration"] = {
        "verdict": "needs_work",
        "facts": {"os_kind": "data"},
        "rules_evaluated": ["MIG-CAPACITY-LOW-FREE"],
        "rules_failed": {},
        "notes": [],
    }
    img = ImageResult(source="/vms/data.qcow2", status=ImageStatus.NO_OS)
    img.sections["data_volumes"] = [vol]
    run = ScanResult("1.1", "0.1.0", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
    run.images = [img]
    doc = finalize_report(run)
    for fmt in (ReportFormat.JSON, ReportFormat.HTML, ReportFormat.SARIF, ReportFormat.TABLE):
        buf = io.StringIO()
        fmt.write(doc, None, buf)
        assert "/data/eicar.com" in buf.getvalue(), fmt
    paths = ReportFormat.CSV.write(doc, str(tmp_path / "csv"), io.StringIO())
    findings_csv = next(p for p in paths if p.name == "findings.csv").read_text()
    assert "/data/eicar.com" in findings_csv
    buf = io.StringIO()
    ReportFormat.JUNIT.write(doc, None, buf)
    assert "MIG-CAPACITY-LOW-FREE" in buf.getvalue()
    assert "no operating system found" not in buf.getvalue()
