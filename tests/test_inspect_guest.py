"""Inputs that used to stall or mislead inspection, in one real ``vmscan scan -j 2`` run.

Cases built on the host by ``fixtures/inspection.py`` (a GPT of 128 empty partitions, 300
tiny partitions and one data filesystem, a Linux root whose fstab has 10,000 entries, a
LUKS partition, a whole-disk LUKS volume) plus the ``truncated-hive-windows`` guest. Each
must finish well inside the per-image ``--timeout`` (asserted: not hit, no timed
assertion), with the status and a message naming the real problem; images unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_hostile import tree_hashes

import fixtures
from fixtures.inspection import FSTAB_LINES, TINY_PARTITIONS, build_inspection
from fixtures.specs.many_lvs import EMPTY_LVS
from fixtures.specs.truncated_hive import NOTES_PATH

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # generous: 5 contributors share 2 cores under TCG; "not hit" is what counts


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("inspection")
    cases = {c.name: c.path for c in build_inspection(root / "cases")}
    cases["truncated-hive"] = Path(fixtures.build("truncated-hive-windows", "raw"))
    cases["many-lvs"] = Path(fixtures.build("many-lvs", "raw"))
    built = [root / "cases", cases["truncated-hive"].parent, cases["many-lvs"].parent]
    before = {k: v for d in built for k, v in tree_hashes(d).items()}
    out = root / "report.json"
    tmp = tmp_path_factory.mktemp("tmpdir")
    proc = subprocess.run(
        [sys.executable, "-m", "vmscan", "scan", "-q", "-j", "2", "--timeout", str(TIMEOUT),
         "--disk-format", "raw", "--manifest", "--checks", "license", "-o", str(out),
         *map(str, cases.values())],
        env={**os.environ, "TMPDIR": str(tmp)}, cwd=REPO, capture_output=True,
        timeout=TIMEOUT * 4,
    )  # fmt: skip
    report = json.loads(out.read_text())
    after = {k: v for d in built for k, v in tree_hashes(d).items()}
    by_path = {img["source"]: img for img in report["images"]}
    return {
        "rc": proc.returncode,
        "stderr": proc.stderr.decode("utf-8", "replace"),
        "images": {name: by_path[str(p)] for name, p in cases.items()},
        "unchanged": before == after,
        "tmp": tmp,
    }


def _errors(img: dict[str, Any]) -> str:
    return "\n".join(img["errors"])


def test_every_case_finished_inside_its_limit(run: dict[str, Any]) -> None:
    for name, img in run["images"].items():
        assert "time limit" not in _errors(img), (name, img["errors"])
        # vmscan's own crash line (libguestfs' quoted "internal error" of a hivex failure is
        # the truncated hive's message, not ours).
        assert not any(e.startswith("internal error") for e in img["errors"]), (name, img)
    assert run["unchanged"]
    # Nothing left but libguestfs' appliance cache, which is meant to persist (README,
    # Safety: it lives in TMPDIR when LIBGUESTFS_CACHEDIR is unset, as libguestfs does).
    left = [p for p in Path(run["tmp"]).iterdir() if not p.name.startswith(".guestfs-")]
    assert left == []


def test_gpt_of_128_empty_partitions(run: dict[str, Any]) -> None:
    img = run["images"]["gpt128-empty"]
    assert img["status"] == "error"
    assert img["errors"][0].startswith("128 partitions/volumes: libguestfs inspection")
    assert img["errors"][-1] == (
        "no operating system and no readable filesystem found (128 empty partitions)"
    )
    assert img["sections"]["image_facts"]["probe"]["empty"] == 128


def test_hundreds_of_tiny_partitions_and_one_data_filesystem(run: dict[str, Any]) -> None:
    img = run["images"]["tiny-partitions"]
    assert img["status"] == "no_os"
    probe = img["sections"]["image_facts"]["probe"]
    assert probe["too_small"] == TINY_PARTITIONS and probe["candidates"] == TINY_PARTITIONS + 1
    assert f"{TINY_PARTITIONS + 1} partitions/volumes: libguestfs inspection" in _errors(img)
    paths = {e["path"] for e in img["manifest"]}
    assert {"/docs/hello.txt", "/eicar.com"} <= paths


def test_many_empty_lvs_and_one_data_lv(run: dict[str, Any]) -> None:
    img = run["images"]["many-lvs"]
    assert img["status"] == "no_os", img["errors"]
    probe = img["sections"]["image_facts"]["probe"]
    assert probe["empty"] == EMPTY_LVS and probe["not_probed"] == 0
    assert f"{EMPTY_LVS + 2} partitions/volumes: libguestfs inspection" in _errors(img)
    assert "/hello.txt" in {e["path"] for e in img["manifest"]}


def test_fstab_with_10000_entries(run: dict[str, Any]) -> None:
    img = run["images"]["fstab-10000"]
    errors = _errors(img)
    assert img["status"] == "partial"
    (root,) = img["roots"]
    assert (root["os"]["type"], root["os"]["distro"]) == ("linux", "debian")
    assert "/etc/fstab is" in errors and "vmscan's own bounded inspection used" in errors
    assert f"/etc/fstab has {FSTAB_LINES} lines" in errors
    assert "more mountpoints than the 64" in errors
    assert "/srv/eicar.com" in {e["path"] for e in img["manifest"]}
    assert len(img["errors"]) <= 100


def test_luks_partition_is_named_and_the_rest_scanned(run: dict[str, Any]) -> None:
    img = run["images"]["luks-partition"]
    assert img["status"] == "partial"  # the OS may well be inside the LUKS volume
    assert "/dev/sda1: LUKS encrypted volume: encrypted, no key given: not scanned" in _errors(img)
    assert "/docs/hello.txt" in {e["path"] for e in img["manifest"]}


def test_whole_disk_luks_is_named(run: dict[str, Any]) -> None:
    img = run["images"]["luks-whole-disk"]
    assert img["status"] == "error"
    assert img["errors"][0].endswith(
        "luks-whole-disk.raw: a whole-disk LUKS encrypted volume: encrypted, no key given: "
        "not scanned"
    )
    assert "not a disk" not in _errors(img)


def test_partitions_the_appliance_cannot_see_are_said(run: dict[str, Any]) -> None:
    img = run["images"]["gpt300-unseen"]
    assert img["status"] == "error"
    assert "45 partitions of the partition table are not visible in the appliance" in (
        img["errors"][-2] + img["errors"][-1]
    )
    assert "first: /dev/sda256, /dev/sda257" in _errors(img) and "not scanned" in _errors(img)


def test_truncated_software_hive_says_what_is_true(run: dict[str, Any]) -> None:
    img = run["images"]["truncated-hive"]
    errors = _errors(img)
    assert img["status"] == "partial", img["errors"]
    assert "busy" not in errors
    (root,) = img["roots"]
    assert root["os"]["type"] == "windows"
    assert "Windows installation found, its SOFTWARE hive is damaged" in errors
    assert "inventory incomplete" in errors
    assert NOTES_PATH in {e["path"] for e in img["manifest"]}


def test_inspect_os_deadline_kills_and_the_own_look_takes_over() -> None:
    """inspect_os cannot be cancelled inside the appliance: the deadline kills qemu, the
    session relaunches, and vmscan's own look finds the root libguestfs would have."""
    from vmscan import inspect
    from vmscan.model import DiskRef
    from vmscan.session import GuestSession

    image = fixtures.build("debian-lvm", "qcow2")
    with GuestSession([DiskRef(str(image), "qcow2")]) as sess:
        old_pid = sess.h.get_pid()
        with pytest.raises(inspect.InspectTimeout, match="did not finish in 0 s"):
            inspect.inspect_os_with_deadline(sess.h, 0.01)
        sess.restart()
        assert sess.h.get_pid() != old_pid
        facts = inspect.image_facts(sess.h)
        found, skipped = inspect.own_look(sess, facts)
    assert skipped == []
    (root,) = found
    assert (root.device, root.os.type, root.os.distro) == ("/dev/vg0/root", "linux", "debian")
    assert root.mountpoints["/boot"] == "/dev/sda1"
    assert root.mountpoints["/data"] == "/dev/sdb1"  # named by fstab, absent: said later
