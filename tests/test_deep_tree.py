"""A tree a hostile guest made to stall the walk, scanned for real (issue 18 item 3).

``fixtures.inspection.build_deep_tree``: 2,000 levels of 200-byte folder names (paths of
400 KB: the libguestfs daemon's ``find0`` loses the appliance past 8 KiB), an EICAR at
level 10 and one at the bottom, a folder of 300 files scanned with
``--max-folder-entries 200``. The scan must relaunch, walk folder by folder within the
bounds, find the EICARs inside them, name every folder it did not walk, and never call
the antivirus section complete. No timed assertion (the bench and the note say how long).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_hostile import tree_hashes

from fixtures.inspection import DEEP_NAME, SHALLOW_EICAR_LEVEL, WIDE_FILES, build_deep_tree
from vmscan.cli import main

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("deep")
    image = build_deep_tree(root)
    before = tree_hashes(image.parent)
    out = tmp_path_factory.mktemp("deep-report") / "report.json"
    rc = main(
        ["scan", "-q", "--no-cache", "--manifest", "--checks", "antivirus", "--disk-format",
         "raw", "--max-folder-entries", "200", "-o", str(out), str(image)]
    )  # fmt: skip
    (img,) = json.loads(out.read_text())["images"]
    return {"rc": rc, "img": img, "unchanged": before == tree_hashes(image.parent)}


def _level(n: int) -> str:
    return "/deep/" + "/".join(f"{i:05d}".ljust(DEEP_NAME, "d") for i in range(1, n + 1))


def test_the_tree_past_the_daemon_limit_is_walked_folder_by_folder(scanned: dict[str, Any]) -> None:
    img = scanned["img"]
    errors = "\n".join(img["errors"])
    assert "listed folder by folder" in errors
    assert not any(e.startswith(("internal error", "the appliance died")) for e in img["errors"])
    assert scanned["unchanged"]


def test_eicar_inside_the_bounds_is_found(scanned: dict[str, Any]) -> None:
    (vol,) = scanned["img"]["sections"]["data_volumes"]
    found = {f["details"]["path"] for f in vol["findings"] if f["check"] == "antivirus"}
    assert found == {"/eicar.com", _level(SHALLOW_EICAR_LEVEL) + "/eicar.com"}


def test_every_folder_not_walked_is_named_and_antivirus_is_incomplete(
    scanned: dict[str, Any],
) -> None:
    img = scanned["img"]
    (vol,) = img["sections"]["data_volumes"]
    av = vol["sections"]["antivirus"]
    assert av["status"] == "incomplete"
    not_scanned = {p["path"]: p["detail"] for p in av["not_scanned"]["paths"]}
    wide = not_scanned["/wide"]
    assert f"holds more than 200 entries; {WIDE_FILES - 200} entries below it" in wide
    (deep,) = (p for p in not_scanned if p.startswith("/deep/"))
    assert "path longer than 4000 bytes" in not_scanned[deep]
    assert deep == _level(deep.count("/") - 1) and len(deep) <= 4000
    # Both also in the manifest with the reason, and in errors[]; exit code 2.
    manifest_errors = {e["path"] for e in img["manifest"] if e["error"]}
    assert {"/wide", deep} <= manifest_errors
    assert scanned["rc"] == 2


def test_the_wide_folder_files_inside_the_limit_were_read(scanned: dict[str, Any]) -> None:
    img = scanned["img"]
    wide = [e for e in img["manifest"] if e["path"].startswith("/wide/")]
    assert len(wide) == 200
    assert all(e["sha256"] and not e["error"] for e in wide)
