"""Windows Server 2022 fixture guest (old UBR) through ``vmscan scan``: one appliance.

Before the scan the corpus' ``windows-versions.json`` snapshot is imported offline into a
copy of the signatures folder (read in place, never copied into the tree), so the scan
measures the guest against its oracle: Windows Server 2022 = 20348.5499, KB5120242,
2026-08-11, on top of the shipped hand-compiled rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from vmscan.cli import main

pytestmark = pytest.mark.guest

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ROOT.parent / "shared" / "corpus" / "windows" / "zentrix-windows-versions.json"


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.skipif(not VERSIONS.is_file(), reason=f"{VERSIONS} not present")
def test_server2022_old_ubr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("guestfs")
    import fixtures

    if "windows-server2022" not in fixtures.names():
        pytest.skip("windows-server2022 fixture not defined (hivexregedit missing)")
    image = fixtures.build("windows-server2022", "qcow2")
    sigs = tmp_path / "signatures"
    sigs.mkdir()
    for table in ("eol.json", "windows-builds.json"):
        shutil.copy(ROOT / "signatures" / table, sigs / table)
    monkeypatch.setenv("VMSCAN_SIGNATURES", str(sigs))
    assert main(["signatures", "import", str(VERSIONS)]) == 0
    capsys.readouterr()
    before = _sha(image)
    out = tmp_path / "report.json"
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    rc = main(["scan", "-q", "--checks", "patch", "-o", str(out), "--fail-on", "high", str(image)])
    assert _sha(image) == before  # the image is unchanged by the scan
    report = json.loads(out.read_text())
    img = report["images"][0]
    assert img["status"] in ("ok", "partial"), img["errors"]
    root = img["roots"][0]
    assert root["os"]["extra"]["installation_type"] == "Server"
    # Without the licence check the fleet count keeps the edition (it merged editions when
    # it read registry value names the cataloger does not write).
    eds = report["sections"]["license_fleet"]["os_editions"]
    edition = root["os"]["extra"]["edition_id"]
    assert edition.startswith("Server")
    assert [(e["edition_id"], e["installation_type"], e["count"]) for e in eds] == [
        (edition, "Server", 1)
    ]
    findings = {f["rule_id"]: f for f in root["findings"]}
    cu = findings["windows-cu/20348"]
    # Names the build, the latest update and how far behind the guest is.
    assert "20348.3692" in cu["title"] and "KB5120242" in cu["title"]
    assert cu["details"]["latest_kb"] == "KB5120242"
    assert cu["details"]["latest_date"] == "2026-08-11"
    assert cu["details"]["latest_ubr"] == 5499
    assert cu["details"]["installed_update_kb"] == "KB5058385"
    assert cu["details"]["months_behind"] == 15
    assert cu["details"]["days_behind"] == (dt.date(2026, 8, 11) - dt.date(2025, 5, 13)).days
    assert cu["severity"] == "high"
    # Servicing holds a newer rollup than the registry's UBR: installed but not active.
    pending = findings["windows-cu/not-active"]
    assert pending["details"]["servicing_ubr"] == 3807
    assert root["sections"]["patch"]["windows"]["servicing_ubr"] == 3807
    assert rc == 1  # --fail-on high trips on the cumulative-update finding
    capsys.readouterr()
