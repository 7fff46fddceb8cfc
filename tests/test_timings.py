"""Per-phase timings: the clock itself, and ``sections.timings`` of a real scan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import fixtures
from vmscan.cli import main
from vmscan.timings import Timings

SCHEMA = Path(__file__).resolve().parent.parent / "vmscan" / "schema" / "report.schema.json"


def test_phases_add_up_per_image_and_per_root() -> None:
    tm = Timings()
    tm.add("launch", 2.0)
    tm.start_root("/dev/a")
    tm.add("walk", 1.0)
    with tm.plugin("os/dpkg"):
        pass
    tm.end_root()
    tm.start_root("/dev/b")
    tm.add("walk", 0.5)
    with pytest.raises(ValueError), tm.phase("hash"):
        raise ValueError("a phase that raises is still timed")
    tm.end_root()
    d = tm.to_dict()
    assert d["phases"]["launch"] == 2.0
    assert d["phases"]["walk"] == 1.5
    assert "hash" in d["phases"]
    assert [r["device"] for r in d["roots"]] == ["/dev/a", "/dev/b"]
    assert d["roots"][0]["phases"] == {"walk": 1.0}
    assert "os/dpkg" in d["roots"][0]["plugins"] and "os/dpkg" in d["plugins"]
    assert "launch" not in d["roots"][0]["phases"]
    assert d["total_s"] >= 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    image = fixtures.build("debian-lvm", "qcow2")
    out = tmp_path_factory.mktemp("timings") / "r.json"
    args = ["scan", "-q", "--no-cache", "--checks", "license,migration", "-o", str(out)]
    main([*args, str(image)])
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.guest
def test_real_scan_reports_every_phase(report: dict[str, Any]) -> None:
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    (img,) = report["images"]
    tm = img["sections"]["timings"]
    for phase in ("vet", "launch", "image_facts", "inspect", "walk", "hash"):
        assert tm["phases"][phase] > 0, phase
    assert {"license", "migration", "os/dpkg"} <= set(tm["plugins"])
    (root,) = tm["roots"]
    assert root["device"] == img["roots"][0]["device"]
    assert root["phases"]["walk"] > 0 and "launch" not in root["phases"]
    # The phases are parts of the whole.
    assert sum(tm["phases"].values()) + sum(tm["plugins"].values()) <= tm["total_s"] + 0.01
