"""Points in time end to end: internal snapshots and a 3-layer chain of a guest, and their diff.

Each point holds its own EICAR file, package set and executable (``fixtures.points``); every
scan must see exactly that point's, and leave the image files, snapshot list and chain as
they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fixtures import points
from vmscan.cli import main
from vmscan.diff import diff_points
from vmscan.manifest import sha256_file
from vmscan.report.html import render_html

pytestmark = pytest.mark.guest
SCHEMA = Path(__file__).resolve().parent.parent / "vmscan" / "schema" / "report.schema.json"
EICAR_SHA = hashlib.sha256(points.EICAR).hexdigest()


def _state(files: list[Path], top: Path) -> dict[str, Any]:
    """What must not change: file hashes, snapshot list, backing chain."""

    def run(*a: str | Path) -> str:
        return subprocess.run(
            ["qemu-img", *map(str, a)], capture_output=True, text=True, check=True
        ).stdout

    return {
        "hashes": {f.name: sha256_file(f) for f in files},
        "snapshots": run("snapshot", "-l", top),
        "chain": run("info", "-U", "--backing-chain", top),
    }


def _scan(tmp: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out = tmp / "report.json"
    rc = main(["scan", "-q", "--manifest", "-j", "2", "-o", str(out), *argv])
    return rc, json.loads(out.read_text())


def _eicar_paths(img: dict[str, Any]) -> set[str]:
    return {e["path"] for e in img["manifest"] if e["sha256"] == EICAR_SHA}


def _packages(img: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["version"] for r in img["roots"] for p in r["packages"]}


def _expect_point(img: dict[str, Any], n: int) -> None:
    want = points.POINTS[n]
    assert img["status"] in ("ok", "partial"), img["errors"]
    assert _eicar_paths(img) == {want["eicar"]}
    pkgs = _packages(img)
    assert pkgs["curl"] == want["curl"]
    for name in ("vmscan-p1", "vmscan-p2"):
        assert (name in pkgs) == (name in want["packages"]), name
    tool = [e for e in img["manifest"] if e["path"] == points.TOOL]
    if want["tool"] is None:
        assert tool == []
    else:
        assert tool[0]["sha256"] == hashlib.sha256(want["tool"]).hexdigest()


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    img = points.build_snapshots()
    before = _state([img], img)
    tmp = tmp_path_factory.mktemp("snap")
    # A state database of its own: the hash cache starts empty, so what the points take
    # from it was put there by the earlier points of this run.
    state = str(tmp / "state.db")
    rc, report = _scan(
        tmp, "--checks", "antivirus", "--state-db", state, "--snapshots", "all", str(img)
    )
    return {"img": img, "rc": rc, "report": report, "before": before, "after": _state([img], img)}


def test_snapshots_all_gives_each_point(snap_run: dict[str, Any]) -> None:
    images = snap_run["report"]["images"]
    img = snap_run["img"]
    assert [i["source"] for i in images] == [
        str(img),
        f"{img}@{points.SNAPSHOT_NAMES[0]}",
        f"{img}@{points.SNAPSHOT_NAMES[1]}",
    ]
    # current = point 2; snapshot 1 = point 0; snapshot 2 = point 1.
    for result, n in zip(images, (2, 0, 1), strict=True):
        _expect_point(result, n)
    jsonschema.validate(snap_run["report"], json.loads(SCHEMA.read_text()))


def test_snapshots_listed_and_point_named(snap_run: dict[str, Any]) -> None:
    current, first, second = snap_run["report"]["images"]
    disk = current["disks"][0]
    assert [(s["id"], s["name"]) for s in disk["snapshots"]] == [
        ("1", points.SNAPSHOT_NAMES[0]),
        ("2", points.SNAPSHOT_NAMES[1]),
    ]
    assert disk["point"] == {}
    assert first["disks"][0]["point"]["kind"] == "snapshot"
    assert first["disks"][0]["point"]["id"] == "1"
    assert second["disks"][0]["point"]["name"] == points.SNAPSHOT_NAMES[1]


def test_eicar_found_at_each_point(snap_run: dict[str, Any]) -> None:
    for result, n in zip(snap_run["report"]["images"], (2, 0, 1), strict=True):
        targets = {
            f["target"] for r in result["roots"] for f in r["findings"] if f["check"] == "antivirus"
        }
        assert targets == {points.POINTS[n]["eicar"]}, result["source"]


def _sha(img: dict[str, Any], path: str) -> str | None:
    return next((e["sha256"] for e in img["manifest"] if e["path"] == path), None)


def test_snapshots_all_shares_the_hash_cache(snap_run: dict[str, Any]) -> None:
    """The current state is read whole; each snapshot, scanned after it, takes the files
    unchanged since from the hash cache (not read again) and reads the ones that changed."""
    current, first, second = snap_run["report"]["images"]
    hc = [i["sections"]["hash_cache"] for i in (current, first, second)]
    assert all(h["enabled"] for h in hc)
    assert hc[0].get("from_cache", 0) == 0  # the first point of the run: nothing cached yet
    # Bytes of the content stream that reached the host (file data and tar headers).
    streamed = [i["sections"]["timings"]["bytes"]["streamed"] for i in (current, first, second)]
    assert streamed[1] < streamed[0] / 4 and streamed[2] < streamed[0] / 4, streamed
    now = {e["path"]: e for e in current["manifest"]}
    for img, h in ((first, hc[1]), (second, hc[2])):
        entries = img["manifest"]
        assert h["files"] == len(entries)
        same = [
            e
            for e in entries
            if e["size"] > 0  # an empty file's hash is known without reading it
            and (e["path"], e["size"], e["mtime"], e["sha256"])
            == tuple(now.get(e["path"], {}).get(k) for k in ("path", "size", "mtime", "sha256"))
        ]
        changed = [e for e in entries if now.get(e["path"], {}).get("sha256") != e["sha256"]]
        assert changed and len(same) >= 0.75 * len(entries), (len(same), len(entries))
        # Every file unchanged since the current state came from the cache; none that
        # changed did (their hashes are the point's own, checked below).
        assert len(same) <= h["from_cache"] <= len(entries) - len(changed), (h, len(same))
    # What changed between the points was read at each point: their hashes differ.
    status = [_sha(i, "/var/lib/dpkg/status") for i in (current, first, second)]
    assert None not in status and len(set(status)) == 3, status
    tools = [_sha(i, points.TOOL) for i in (current, second)]
    assert tools == [hashlib.sha256(points.POINTS[n]["tool"]).hexdigest() for n in (2, 1)]
    for img, n in zip((current, first, second), (2, 0, 1), strict=True):
        assert _sha(img, points.POINTS[n]["eicar"]) == EICAR_SHA


def test_snapshot_image_unchanged(snap_run: dict[str, Any]) -> None:
    assert snap_run["after"] == snap_run["before"]


def test_diff_html_of_two_snapshots(snap_run: dict[str, Any]) -> None:
    _current, first, second = snap_run["report"]["images"]
    diff = diff_points(first, second)
    doc = dict(snap_run["report"], sections={"changes": diff})
    html = render_html(doc)
    assert "What changed between two points in time" in html
    assert f"file added: <code>{points.POINTS[1]['eicar']}</code>" in html
    assert f"file removed: <code>{points.POINTS[0]['eicar']}</code>" in html
    assert "package added: vmscan-p1 1.0-1" in html


@pytest.fixture(scope="module")
def diff_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    img = points.build_snapshots()
    tmp = tmp_path_factory.mktemp("diff")
    out = tmp / "diff.json"
    rc = main(
        [
            "diff",
            "--checks",
            "none",
            "--format",
            "json",
            "-o",
            str(out),
            f"{img}@{points.SNAPSHOT_NAMES[0]}",
            f"{img}@{points.SNAPSHOT_NAMES[1]}",
        ]
    )
    return {"rc": rc, "diff": json.loads(out.read_text())}


def test_diff_names_files_and_packages(diff_run: dict[str, Any]) -> None:
    assert diff_run["rc"] == 0
    (img,) = diff_run["diff"]["images"]
    p0, p1 = points.POINTS[0], points.POINTS[1]
    assert {e["path"] for e in img["files_added"]} == {p1["eicar"], points.TOOL}
    assert {e["path"] for e in img["files_removed"]} == {p0["eicar"]}
    assert "/var/lib/dpkg/status" in {e["path"] for e in img["files_changed"]}
    assert [p["name"] for p in img["packages_added"]] == ["vmscan-p1"]
    assert img["packages_removed"] == []
    assert [(p["name"], p["from"], p["to"]) for p in img["packages_upgraded"]] == [
        ("curl", p0["curl"], p1["curl"])
    ]
    assert {e["path"] for e in img["new_executables"]} == {points.TOOL}
    assert diff_run["diff"]["summary"]["files_added"] == 2


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    top = points.build_chain()
    files = [top.parent / n for n in points.CHAIN_FILES]
    before = _state(files, top)
    tmp = tmp_path_factory.mktemp("chain")
    rc, report = _scan(tmp, "--checks", "none", f"{top}@layer:0", f"{top}@layer:1", str(top))
    return {"top": top, "rc": rc, "report": report, "before": before, "after": _state(files, top)}


def test_chain_layers_each_point(chain_run: dict[str, Any]) -> None:
    for result, n in zip(chain_run["report"]["images"], (0, 1, 2), strict=True):
        _expect_point(result, n)


def test_chain_reported_and_unchanged(chain_run: dict[str, Any]) -> None:
    top_result = chain_run["report"]["images"][2]
    layers = top_result["disks"][0]["layers"]
    assert [Path(la["path"]).name for la in layers] == list(points.CHAIN_FILES)
    assert all(la["format"] == "qcow2" and la["size"] > 0 for la in layers)
    low = chain_run["report"]["images"][0]["disks"][0]
    assert low["point"]["kind"] == "layer" and low["point"]["index"] == 0
    assert chain_run["after"] == chain_run["before"]


def _is_ours(pid: int) -> bool:
    """True when *pid* descends from this test process (not another run on the same image)."""
    for _ in range(64):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == os.getpid():
            return True
        if pid <= 1:
            return False
    return False


def _qemu_nbd_pids(img: Path, socket: bytes = b"") -> dict[int, list[bytes]]:
    """qemu-nbd serving *img* (on *socket* when given; else only those under this test).

    The fixture image is shared by every checkout's test runs: another run's qemu-nbd of
    it must never be stopped here, nor taken for one this scan left behind.
    """
    out: dict[int, list[bytes]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if not cmd[0].endswith(b"qemu-nbd") or str(img).encode() not in cmd or state == "Z":
            continue
        if (socket in cmd) if socket else _is_ours(int(pid)):
            out[int(pid)] = cmd
    return out


def test_stalled_nbd_export_is_a_timeout(tmp_path: Path) -> None:
    """A snapshot export that stops answering costs that image (a timeout), nothing is left."""
    img = points.build_snapshots()
    before = _state([img], img)
    stopped: list[int] = []
    sockets: list[bytes] = []
    done = threading.Event()

    def freeze_once_listening() -> None:
        while not done.is_set() and not stopped:
            for pid, cmd in _qemu_nbd_pids(img).items():
                sock = cmd[cmd.index(b"--socket") + 1].decode()
                if os.path.exists(sock):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
                    sockets.append(sock.encode())
            time.sleep(0.005)

    t = threading.Thread(target=freeze_once_listening, daemon=True)
    t.start()
    out = tmp_path / "r.json"
    try:
        rc = main(
            [
                "scan",
                "-q",
                "--checks",
                "none",
                "--timeout",
                "120",
                "-o",
                str(out),
                f"{img}@{points.SNAPSHOT_NAMES[0]}",
            ]
        )
    finally:
        done.set()
        t.join()
    result = json.loads(out.read_text())["images"][0]
    assert stopped, "qemu-nbd was never seen serving"
    assert rc == 2
    assert result["status"] == "error" and "timed out" in result["errors"][0]
    for _ in range(100):
        if not _qemu_nbd_pids(img, sockets[0]):
            break
        time.sleep(0.1)
    assert _qemu_nbd_pids(img, sockets[0]) == {}  # reparented or not, it is gone
    assert _state([img], img) == before
