"""Incremental hashing: hashes kept by (filesystem, path) while size/mtime/ctime/inode hold."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import fixtures
from fixtures.specs.debian_lvm import EICAR_PATH
from vmscan.cli import main
from vmscan.filecache import FileHashCache, default_cache_db
from vmscan.model import FileEntry, to_jsonable


def _entry(path: str, ident: tuple[int, int, int, int], sha: str | None = None) -> FileEntry:
    return FileEntry("/dev/sda1", path, ident[0], 0o100644, 0, 0, 0, sha, ident=ident)


def test_hash_valid_only_while_metadata_holds(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    cache = FileHashCache(db)
    cache.store(
        "uuid-1",
        [
            _entry("/a", (1, 10, 20, 5), "aa"),
            _entry("/b", (2, 10, 20, 6), "bb"),
            _entry("/c", (3, 10, 20, 7), None),
        ],
    )
    cache.close()
    cache = FileHashCache(db)  # a new connection: it is on disk
    now = [
        _entry("/a", (1, 10, 20, 5)),  # unchanged
        _entry("/b", (2, 10, 21, 6)),  # ctime moved (e.g. a forged mtime)
        _entry("/c", (3, 10, 20, 7)),  # never hashed
        _entry("/d", (4, 10, 20, 8)),  # new
    ]
    assert cache.fill("uuid-1", now) == 1
    assert [e.sha256 for e in now] == ["aa", None, None, None]
    other = [_entry("/a", (1, 10, 20, 5))]
    assert cache.fill("uuid-2", other) == 0  # another filesystem: another namespace
    cache.close()
    # The stat identity never reaches the report.
    assert "ident" not in to_jsonable(now[0])


def test_versions_of_a_path_do_not_evict_each_other(tmp_path: Path) -> None:
    """A template's file and a clone's changed copy (same filesystem UUID, same path):
    scanning them in turn finds both; past MAX_VERSIONS the least recently seen goes."""
    import time as _time

    from vmscan import filecache

    db = str(tmp_path / "s.db")
    cache = FileHashCache(db)
    base, changed = (1, 10, 20, 5), (1, 11, 21, 5)
    cache.store("u", [_entry("/a", base, "base")])
    cache.store("u", [_entry("/a", changed, "changed")])
    got = [_entry("/a", base), _entry("/a", changed)]
    assert cache.fill("u", got[:1]) == 1 and cache.fill("u", got[1:]) == 1
    assert [e.sha256 for e in got] == ["base", "changed"]
    # More versions than kept: the oldest seen drops out, the newest stay.
    for i in range(filecache.MAX_VERSIONS + 1):
        _time.sleep(0.01)
        cache.store("u", [_entry("/a", (1, 100 + i, 200 + i, 5), f"v{i}")])
    n = cache.conn.execute("SELECT count(*) FROM file_hash_versions WHERE path = '/a'")
    assert n.fetchone()[0] == filecache.MAX_VERSIONS
    last = _entry("/a", (1, 100 + filecache.MAX_VERSIONS, 200 + filecache.MAX_VERSIONS, 5))
    assert cache.fill("u", [last]) == 1
    first = _entry("/a", base)
    assert cache.fill("u", [first]) == 0
    cache.close()


def test_default_cache_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_db() == tmp_path / "xdg" / "vmscan" / "cache.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_db() == tmp_path / "home" / ".cache" / "vmscan" / "cache.sqlite"


def _scan(out: Path, *args: str) -> dict[str, Any]:
    # The licence check too: its copyright files come from the blob cache on a rescan.
    main(["scan", "-q", "--manifest", "--checks", "antivirus,license", "-o", str(out), *args])
    img: dict[str, Any] = json.loads(out.read_text())["images"][0]
    return img


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import guestfs

    base = fixtures.build("debian-lvm", "qcow2")
    tmp = tmp_path_factory.mktemp("fcache")
    db = str(tmp / "state.db")
    out: dict[str, Any] = {}
    out["cold"] = _scan(tmp / "cold.json", "--state-db", db, str(base))
    # A clone: an overlay of the scanned disk, nothing changed.
    clone = tmp / "clone.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(clone)],
        check=True,
    )
    allow = ["--allow-backing", str(base.parent)]
    out["clone"] = _scan(tmp / "clone.json", "--state-db", db, *allow, str(clone))
    # The same overlay with one file rewritten.
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(clone), format="qcow2", readonly=0)
    g.launch()
    g.mount(next(iter(g.inspect_os())), "/")
    g.write("/etc/hostname", b"changed-host\n")
    g.shutdown()
    g.close()
    out["changed"] = _scan(tmp / "changed.json", "--state-db", db, *allow, str(clone))
    out["rehash"] = _scan(tmp / "rehash.json", "--state-db", db, "--rehash", *allow, str(clone))
    return out


def _tar_only(img: dict[str, Any]) -> int:
    """Entries with non-UTF-8 names: the binding cannot stat them, so their metadata (and
    content) always come from a tar stream of their folder, never from the cache."""
    return sum(1 for m in img["manifest"] if "\\x" in m["path"])


def _sha(img: dict[str, Any]) -> dict[str, str]:
    return {m["path"]: m["sha256"] for m in img["manifest"]}


@pytest.mark.guest
def test_clone_streams_nothing(runs: dict[str, Any]) -> None:
    cold, clone = runs["cold"], runs["clone"]
    assert cold["sections"]["hash_cache"].get("from_cache", 0) == 0
    assert cold["sections"]["timings"]["bytes"]["streamed"] > 0
    hc = clone["sections"]["hash_cache"]
    assert hc["files"] == len(clone["manifest"])
    assert _tar_only(clone) == 1
    assert hc["from_cache"] == hc["files"] - _tar_only(clone)
    # Only the folder holding the non-UTF-8 name is streamed (one 40-byte file).
    assert clone["sections"]["timings"]["bytes"].get("streamed", 0) <= 64 * 1024
    assert _sha(clone) == _sha(cold)
    av = clone["sections"]["antivirus"]
    # Every verdict from the caches (EICAR by its hash signature): nothing sent to clamd.
    assert av["status"] == "complete" and av["files_from_cache"] > 0
    assert av["files_scanned"] == 0 and av["bytes_streamed"] == 0
    (root,) = clone["roots"]
    assert EICAR_PATH in {f["target"] for f in root["findings"]}
    # The licences were read from the cached copyright files: the same as the cold scan's.
    (cold_root,) = cold["roots"]
    assert _licences(root) == _licences(cold_root) and any(_licences(root).values())


def _licences(root: dict[str, Any]) -> dict[str, list[str]]:
    return {p["name"]: sorted(p.get("licenses") or []) for p in root["packages"]}


@pytest.mark.guest
def test_changed_file_is_the_only_one_read(runs: dict[str, Any]) -> None:
    changed = runs["changed"]
    hc = changed["sections"]["hash_cache"]
    assert hc["from_cache"] == hc["files"] - 1 - _tar_only(changed)
    before, after = _sha(runs["cold"]), _sha(changed)
    assert {p for p in after if after[p] != before.get(p)} == {"/etc/hostname"}
    assert changed["sections"]["antivirus"]["status"] == "complete"
    streamed = changed["sections"]["timings"]["bytes"]["streamed"]
    # One small file, in a tar stream (headers and the end-of-archive blocks), and the
    # folder with the non-UTF-8 name.
    assert 0 < streamed <= 128 * 1024


@pytest.mark.guest
def test_rehash_reads_everything(runs: dict[str, Any]) -> None:
    rehash = runs["rehash"]
    assert rehash["sections"]["hash_cache"].get("from_cache", 0) == 0
    assert _sha(rehash) == _sha(runs["changed"])
    total = sum(m["size"] for m in rehash["manifest"])
    # Verdicts still come from the verdict cache by hash, so only hashing needs the bytes.
    assert rehash["sections"]["timings"]["bytes"]["streamed"] >= total
