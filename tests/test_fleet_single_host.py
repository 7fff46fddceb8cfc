"""A single host never imports Dask: ``vmscan nightly`` without a scheduler runs as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs the real CLI in a fresh interpreter, then lists what it imported. The nightly
# plans, stores and reports (the not-an-image file is an image that could not be
# scanned), and the scanner and pool modules are imported as a scan would.
_PROBE = """
import json, sys
import vmscan.cli, vmscan.scanner, vmscan.pool, vmscan.nightly
code = vmscan.cli.main(["nightly", "--config", sys.argv[1]])
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("distributed", "dask", "tornado"))
print(json.dumps({"code": code, "mods": mods}))
"""


def test_nightly_without_scheduler_imports_no_dask(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "notes.qcow2").write_bytes(b"this is not a qcow2 image\n" * 8)
    cfg = tmp_path / "vmscan.toml"
    cfg.write_text(
        f"""fail_on = "critical"
[images]
paths = ["{imgs}"]
[scan]
checks = ["migration"]
[state]
database = "{tmp_path}/state.db"
[reports]
dir = "{tmp_path}/reports"
formats = ["json"]
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["mods"] == [], probe
    assert probe["code"] == 2  # the not-an-image file: an image that could not be scanned
    report = json.loads((tmp_path / "reports" / "latest" / "report.json").read_text())
    (img,) = report["images"]
    assert img["status"] == "error" and "fleet" not in (img.get("sections") or {})
