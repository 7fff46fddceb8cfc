"""Helper appliances for one image's stream: the share cut, the policy, the pool's loans.

The guest side (two real appliances sharing a root's stream, a helper killed) is in
``tests/test_stream_guest.py``.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from vmscan import pool, runctl
from vmscan.model import ImageResult, ImageStatus, ScanResult
from vmscan.rootstream import partition
from vmscan.split import MIN_SPLIT_BYTES, Policy
from vmscan.stream import build_excludes


def test_partition_covers_every_path_once_in_contiguous_byte_balanced_ranges() -> None:
    sizes = {f"/usr/lib/a{i:03d}": 1000 for i in range(100)}
    sizes |= {f"/var/b{i:03d}": 3000 for i in range(50)}
    shares = partition(sizes, 2)
    assert set().union(*shares) == set(sizes)
    assert sum(len(s) for s in shares) == len(sizes)
    loads = [sum(sizes[p] for p in s) for s in shares]
    total = sum(loads)
    assert all(abs(load - total / 2) <= 3000 for load in loads)
    # Contiguous in path order: every path of the first share sorts before the second's.
    assert max(shares[0]) < min(shares[1])
    assert partition(sizes, 1) == [set(sizes)]


def test_partition_keeps_exclude_lists_short() -> None:
    """Ranges, not files dealt out in turn: each share's excludes are a few folders."""
    from vmscan.model import FileEntry

    entries = [
        FileEntry(
            path=f"/d{d}/f{i}",
            device="/dev/sda1",
            size=100,
            mode=0o100644,
            uid=0,
            gid=0,
            mtime=0,
            sha256=None,
        )
        for d in range(10)
        for i in range(200)
    ]
    shares = partition({e.path: e.size for e in entries}, 2)
    for share in shares:
        ex = build_excludes(entries, share)
        assert len(ex) <= 12, ex


def test_partition_gives_one_huge_file_its_own_share() -> None:
    sizes = {"/a": 10, "/big": 10_000_000, "/c": 10}
    shares = partition(sizes, 2)
    assert set().union(*shares) == set(sizes)
    assert any(s == {"/big", "/c"} or s == {"/big"} for s in shares)


def test_policy() -> None:
    assert Policy.parse("auto") == Policy(0)
    assert Policy.parse("1").appliances == 1
    assert not Policy.parse("1").forced
    assert Policy.parse("3").wanted() == 2
    assert Policy.parse("2").min_bytes() == 0
    assert Policy.parse("auto").min_bytes() == MIN_SPLIT_BYTES
    for bad in ("0", "9", "two", ""):
        with pytest.raises(ValueError, match="stream-appliances"):
            Policy.parse(bad)


def _borrowing_worker(
    label: str, conn: Connection, run: runctl.RunDir, wdir: Path
) -> None:  # pragma: no cover - runs in the forked worker
    """Try to borrow a slot for up to 3 s; report how it went in the image's errors."""
    got = False
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        got = pool.borrow_slot()
        if not got:
            time.sleep(0.05)
    second = pool.borrow_slot() if got else False
    if got:
        time.sleep(0.5)
        pool.return_slot()
    conn.send(ImageResult(source=label, status=ImageStatus.OK, errors=[f"borrowed={got} {second}"]))
    conn.close()


def _run(sources: list[str], jobs: int) -> list[str]:
    result = ScanResult(schema_version="1", vmscan_version="t", started_at="now")
    with runctl.run_scope() as run:
        pool.run_images(
            run,
            result,
            sources,
            worker=_borrowing_worker,
            worker_args=(),
            jobs=jobs,
            timeout=60,
            clock=lambda: "now",
        )
    return [img.errors[0] for img in result.images]


def test_a_free_slot_is_lent_once_and_none_when_the_pool_has_no_room() -> None:
    # One image, two slots: one loan, not two.
    assert _run(["a"], 2) == ["borrowed=True False"]
    # One slot: nothing to lend.
    assert _run(["a"], 1) == ["borrowed=False False"]


def test_pending_images_come_before_loans() -> None:
    """Four images on two slots: while images wait, no worker gets a loan; the last two
    (nothing pending any more, one slot free once the other finished) may."""
    out = _run(["a", "b", "c", "d"], 2)
    assert out[:2] == ["borrowed=False False", "borrowed=False False"]
    assert len(out) == 4


def test_no_helper_outside_a_pool_or_for_small_disks(tmp_path: Path) -> None:
    from vmscan.model import DiskRef
    from vmscan.split import Helpers

    small = tmp_path / "small.qcow2"
    small.write_bytes(b"\0" * 4096)
    disks = [DiskRef(path=str(small), format="qcow2")]
    assert Helpers(disks, None, "tcg", Policy.parse("auto")).why_not == "the disks hold little"
    assert Helpers(disks, None, "tcg", Policy.parse("1")).why_not == "--stream-appliances 1"
    # Forced, but no pool lends this process a slot (not a scan worker).
    forced = Helpers(disks, None, "tcg", Policy.parse("2"))
    assert forced.why_not == "no free slot in the pool"
    forced.launch(cache_knows=False)
    assert forced.helpers == []


def test_cache_knows_a_scanned_filesystem(tmp_path: Path) -> None:
    from vmscan.filecache import FileHashCache
    from vmscan.model import FileEntry

    cache = FileHashCache(str(tmp_path / "c.db"))
    assert not cache.knows(["uuid-1"])
    e = FileEntry("/dev/sda1", "/a", 1, 0o100644, 0, 0, 0, "aa", ident=(1, 2, 3, 4))
    cache.store("uuid-1", [e])
    assert cache.knows(["uuid-2", "uuid-1"])
    assert not cache.knows(["uuid-2"])
    assert not cache.knows([])
    cache.close()


def test_folders_and_symlinks_without_wanted_files_are_excluded_too() -> None:
    """On a rescan of a few changed files, the tar headers of every folder and symlink
    passing were most of the stream: they are excluded unless a kept file lies below."""
    from vmscan.model import FileEntry

    def f(path: str) -> FileEntry:
        return FileEntry("/dev/sda1", path, 10, 0o100644, 0, 0, 0, None)

    entries = [f("/usr/bin/kept"), f("/usr/bin/other"), f("/etc/passwd")]
    others = ["/usr", "/usr/bin", "/usr/bin/sh", "/usr/lib", "/usr/lib/empty", "/var", "/"]
    ex = build_excludes(entries, {"/usr/bin/kept"}, others=others)
    assert ex == sorted(["./usr/bin/other", "./usr/bin/sh", "./usr/lib", "./var", "./etc"])
    # Without them (an index that is not there): folders holding only links travel.
    assert "./var" not in build_excludes(entries, {"/usr/bin/kept"})
