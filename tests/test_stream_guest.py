"""One content stream per root: hashed on the host as it passes, each file moved once.

A scan with the antivirus check hashes files in its tar stream instead of with
``checksums_out`` inside the appliance; the manifest must come out the same as the one
``sha256sum`` gives (``--checks none``), every file crossing once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

import fixtures
from fixtures.specs.debian_lvm import EICAR, EICAR_PATH, NON_UTF8_NAME
from vmscan.cli import main
from vmscan.manifest import sha256_file
from vmscan.pathenc import encode_path

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    image = fixtures.build("debian-lvm", "qcow2")
    before = sha256_file(image)
    tmp = tmp_path_factory.mktemp("stream")
    out: dict[str, Any] = {}
    for name, checks in (("none", "none"), ("av", "antivirus,license")):
        path = tmp / f"{name}.json"
        # --no-cache: both runs read every file (the session's cache may know this image).
        args = ["scan", "-q", "--manifest", "--no-cache", "--checks", checks, "-o", str(path)]
        rc = main([*args, str(image)])
        out[name] = {"rc": rc, "image": json.loads(path.read_text())["images"][0]}
    out["unchanged"] = sha256_file(image) == before
    return out


def _manifest(img: dict[str, Any]) -> dict[str, tuple[str, int, int]]:
    return {m["path"]: (m["sha256"], m["size"], m["mode"]) for m in img["manifest"]}


def test_host_hashes_equal_appliance_hashes(runs: dict[str, Any]) -> None:
    none, av = _manifest(runs["none"]["image"]), _manifest(runs["av"]["image"])
    assert len(none) > 15
    assert av == none
    assert all(sha for sha, _s, _m in av.values())
    assert av[EICAR_PATH][0] == hashlib.sha256(EICAR).hexdigest()
    assert encode_path(NON_UTF8_NAME) in av
    assert runs["unchanged"]


def test_each_file_crosses_once(runs: dict[str, Any]) -> None:
    img = runs["av"]["image"]
    total = sum(m["size"] for m in img["manifest"])
    counters = img["sections"]["timings"]["bytes"]
    # Nothing hashed inside the appliance; the tar stream carries the files' bytes once
    # (plus tar headers and padding, and the small licence doc tree).
    assert "hashed_in_appliance" not in counters
    assert total <= counters["streamed"] <= 1.3 * total
    none = runs["none"]["image"]["sections"]["timings"]["bytes"]
    # (the non-UTF-8 names are hashed from a tar stream there too)
    assert 0.9 * total < none["hashed_in_appliance"] <= total


def test_one_tar_out_per_root_feeds_antivirus_and_licence(runs: dict[str, Any]) -> None:
    """Antivirus and licence check share the root's one stream: one ``tar_out``, the
    copyright files kept from it and every read of them served from it."""
    img = runs["av"]["image"]
    (root,) = img["roots"]
    stream = root["sections"]["stream"]
    assert stream["tar_out_calls"] == 1
    copyrights = [
        m
        for m in img["manifest"]
        if m["path"].startswith("/usr/share/doc/") and m["path"].endswith("/copyright")
    ]
    # ... and dpkg's status file, declared by its cataloger.
    assert stream["blobs_kept"] == len(copyrights) + 1
    assert len(copyrights) >= 4
    assert stream["consumers"]["antivirus"] == stream["files_wanted"]
    index = root["sections"]["index"]
    assert index["streamed_reads"] >= len(copyrights)
    lic = {p["name"]: p["licenses"] for p in root["packages"]}
    assert lic["bash"] == ["GPL-3.0-or-later"]
    # The only other tar_out of the root: the manifest's, of the folder holding a name
    # that is not UTF-8 (hashed on its own, tens of KB).
    assert stream["tar_out_calls_root"] == 2
    assert 0 < img["sections"]["timings"]["bytes"]["streamed"] - stream["bytes_received"] < 65536


def test_eicar_found_from_host_hashed_stream(runs: dict[str, Any]) -> None:
    img = runs["av"]["image"]
    (root,) = img["roots"]
    hits = {f["target"]: f for f in root["findings"] if f["check"] == "antivirus"}
    assert hits[EICAR_PATH]["details"]["sha256"] == hashlib.sha256(EICAR).hexdigest()
    av = img["sections"]["antivirus"]
    assert av["status"] == "complete"
    assert av["files_total"] == len(img["manifest"])
