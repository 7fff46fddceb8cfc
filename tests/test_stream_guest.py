"""One content stream per root: hashed on the host as it passes, each file moved once.

A scan with the antivirus check hashes files in its tar stream instead of with
``checksums_out`` inside the appliance; the manifest must come out the same as the one
``sha256sum`` gives (``--checks none``), every file crossing once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from typing import Any

import pytest

import fixtures
from fixtures.specs.debian_lvm import EICAR, EICAR_PATH, NON_UTF8_NAME
from vmscan import split
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
    orig_on = split.Helper.on

    def on_then_killed(self: split.Helper, *a: Any, **kw: Any) -> Any:
        h = orig_on(self, *a, **kw)
        if h is not None:
            _kill_appliance(self.sess.g)
        return h

    for name, checks, appliances in (
        ("none", "none", "1"),
        ("av", "antivirus,license", "1"),
        # The same stream shared by two appliances, and with the helper killed as it
        # starts (its share goes back to the main appliance).
        ("split", "antivirus,license", "2"),
        ("helper_killed", "antivirus,license", "2"),
    ):
        path = tmp / f"{name}.json"
        # --no-cache: every run reads every file (the session's cache may know this image).
        # The shared streams with a state database of their own (empty, so every file is
        # read): the verdict cache's SQLite connection is then in use while they stream.
        cache = ["--state-db", str(tmp / f"{name}.db")] if appliances == "2" else ["--no-cache"]
        args = ["scan", "-q", "--manifest", *cache, "--checks", checks, "-o", str(path)]
        args += ["-j", "2", "--stream-appliances", appliances]
        mp = pytest.MonkeyPatch()
        if name == "helper_killed":
            mp.setattr(split.Helper, "on", on_then_killed)  # the worker is forked: in force
        try:
            rc = main([*args, str(image)])
        finally:
            mp.undo()
        out[name] = {"rc": rc, "image": json.loads(path.read_text())["images"][0]}
    out["unchanged"] = sha256_file(image) == before
    return out


def _kill_appliance(g: Any) -> None:
    os.kill(int(g.get_pid()), signal.SIGKILL)
    time.sleep(0.5)


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


def _findings(img: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (f["check"], f["target"], f["title"]) for root in img["roots"] for f in root["findings"]
    )


def test_two_appliances_share_the_stream_with_the_same_result(runs: dict[str, Any]) -> None:
    """``--stream-appliances 2``: each appliance streams a share of the root, by bytes;
    manifest hashes, packages with licences and findings are those of one appliance."""
    one, two = runs["av"]["image"], runs["split"]["image"]
    assert two["sections"]["split"] == {"helpers": 1, "why_not": None, "helper_errors": []}
    (root,) = two["roots"]
    stream = root["sections"]["stream"]
    assert stream["appliances"] == 2
    shares = stream["shares"]
    assert [s["appliance"] for s in shares] == [0, 1]
    assert all(s["delivered"] == s["files"] > 0 and s["error"] is None for s in shares)
    assert sum(s["files"] for s in shares) == stream["files_wanted"] == stream["files_delivered"]
    assert all(s["bytes"] > 0 for s in shares)
    assert stream["given_back"] == 0
    assert stream["tar_out_calls"] == 2
    assert _manifest(two) == _manifest(one)
    pk = {p["name"]: p["licenses"] for p in root["packages"]}
    assert pk == {p["name"]: p["licenses"] for p in one["roots"][0]["packages"]}
    assert _findings(two) == _findings(one)
    assert two["status"] == one["status"]
    assert two["sections"]["antivirus"]["status"] == "complete"
    # Each file still crosses once: the second stream adds its tar framing (at most a
    # 10 KiB record of padding and end blocks), no file.
    streamed = [img["sections"]["timings"]["bytes"]["streamed"] for img in (one, two)]
    assert sum(m["size"] for m in two["manifest"]) <= streamed[1] <= streamed[0] + 2 * 10240
    assert runs["unchanged"]


def test_a_helper_killed_gives_its_share_back(runs: dict[str, Any]) -> None:
    one, img = runs["av"]["image"], runs["helper_killed"]["image"]
    (root,) = img["roots"]
    stream = root["sections"]["stream"]
    helper = stream["shares"][1]
    assert helper["error"] and helper["delivered"] < helper["files"]
    assert stream["given_back"] == helper["files"] - helper["delivered"] > 0
    # Nothing lost: every wanted file delivered, the same result as one appliance.
    assert stream["files_delivered"] == stream["files_wanted"]
    assert _manifest(img) == _manifest(one)
    assert _findings(img) == _findings(one)
    assert img["status"] == one["status"]
    assert img["sections"]["antivirus"]["status"] == "complete"
