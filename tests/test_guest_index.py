"""The indexed file view on a real appliance: same answers as libguestfs, no per-file calls.

One appliance over the phony Debian fixture (symlinks absolute, relative and dangling, a
name that is not UTF-8, a tree 40 directories deep). A counting wrapper around the raw
libguestfs handle counts every call by name.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import fixtures
from vmscan.guestcall import GuestHandle
from vmscan.guestfs_view import LibguestfsFS
from vmscan.guestindex import FileIndex, IndexedFS
from vmscan.inspect import DEFAULT_LIMITS, _libguestfs_root
from vmscan.license.copyright import is_copyright_file
from vmscan.manifest import build_manifest
from vmscan.model import DiskRef, RootResult
from vmscan.plugins import ScanContext, prefetch, run_plugins
from vmscan.registry import all_catalogers, all_checks
from vmscan.rootstream import BlobStore, stream_root
from vmscan.scanner import _os_release_into
from vmscan.session import GuestSession
from vmscan.walk import WalkLimits, folder_walk

pytestmark = pytest.mark.guest

#: Calls that answer metadata (what the index is for); reads are not counted here.
METADATA_CALLS = frozenset(
    {"lstatns", "statns", "exists", "is_file", "is_dir", "ls", "glob_expand", "readlink"}
)


class Counting:
    """The raw handle, with every method call counted by name."""

    def __init__(self, g: Any) -> None:
        self._g = g
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._g, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def guest() -> Iterator[dict[str, Any]]:
    img = fixtures.build("debian-lvm")
    with GuestSession([DiskRef(str(img), "qcow2")]) as sess:
        counting = Counting(sess.g)
        h = GuestHandle(counting)
        (root,) = h.inspect_os()
        assert sess.mount_ro(root, "/") is None
        index = FileIndex()
        entries, _ = build_manifest(h, [("/", root)], walk=index)
        index.finish(h)
        yield {
            "h": h,
            "root": root,
            "counting": counting,
            "index": index,
            "entries": entries,
            "plain": LibguestfsFS(h),
            "alive": sess.alive,
        }


def _probe_paths(index: FileIndex) -> list[str]:
    paths = sorted(index.stats)
    extra = [
        "/no/such/file",
        "/etc/hostname/below-a-file",
        "/etc/os-release",  # relative symlink
        "/etc/localtime",  # absolute, dangling
        "/etc/../etc/hostname",
        "/home/user/notes-link",
        "/home/user/./notes.txt",
        "/bin/../usr/bin/ls",
    ]
    return paths + extra


def test_index_holds_every_entry(guest: dict[str, Any]) -> None:
    index = guest["index"]
    files = {e.path for e in guest["entries"] if e.error is None and "\\x" not in e.path}
    indexed = {p for p, st in index.stats.items() if st.is_file}
    assert files <= indexed
    assert index.stats["/"].is_dir
    assert index.links["/etc/os-release"] == "../usr/lib/os-release"


def _via_absolute_link(index: FileIndex, path: str) -> bool:
    """Does resolving *path* follow an absolute symlink?"""
    cur = ""
    for part in [p for p in path.split("/") if p]:
        cur = f"{cur}/{part}"
        if index.links.get(cur, "").startswith("/"):
            return True
    return False


def test_same_answers_as_libguestfs(guest: dict[str, Any]) -> None:
    idx = IndexedFS(guest["index"], guest["plain"])
    plain = guest["plain"]
    for path in _probe_paths(guest["index"]):
        assert idx.lstat(path) == plain.lstat(path), path
        assert idx.readlink(path) == plain.readlink(path), path
        if _via_absolute_link(guest["index"], path):
            # The daemon resolves an absolute guest symlink against the *appliance's*
            # root, not the guest's: the index resolves it inside the guest (below).
            continue
        assert idx.exists(path) == plain.exists(path), path
        assert idx.is_file(path) == plain.is_file(path), path
        assert idx.is_dir(path) == plain.is_dir(path), path
        if plain.is_dir(path) and path not in guest["index"].foreign:
            assert idx.listdir(path) == plain.listdir(path), path
    for pattern in ("/etc/*", "/usr/share/doc/*/copyright", "/boot/*", "/lib/modules/*", "/*"):
        assert idx.glob(pattern) == plain.glob(pattern), pattern
    # /etc/localtime -> /usr/share/zoneinfo/Etc/UTC dangles in the guest; the appliance
    # has that file of its own and says it exists.
    assert idx.exists("/etc/localtime") is False
    assert idx.lstat("/etc/localtime") is not None
    assert idx.ci_lookup("/ETC/HostName") == "/etc/hostname"
    # /home/user holds a Latin-1 name: its UTF-8 names are answered, a listing is not.
    assert guest["index"].foreign == {"/home/user"}
    assert idx.fallbacks == {}
    assert idx.ci_lookup("/etc/nope") is None


def _plugin_phase(guest: dict[str, Any], fs: Any) -> tuple[Counter[str], RootResult]:
    h: GuestHandle = guest["h"]
    root = RootResult(
        device=guest["root"], os=_libguestfs_root(h, guest["root"], DEFAULT_LIMITS).os
    )
    _os_release_into(LibguestfsFS(h), root.os)
    ctx = ScanContext(root=root, manifest=guest["entries"])
    checks = [c for c in all_checks() if c.NAME in ("license", "migration", "patch")]
    counting: Counting = guest["counting"]
    before = Counter(counting.calls)
    run_plugins(fs, ctx, all_catalogers(), checks, guest["alive"])
    return counting.calls - before, root


def test_plugins_make_no_per_file_metadata_calls(guest: dict[str, Any]) -> None:
    idx = IndexedFS(guest["index"], guest["plain"])
    calls, root = _plugin_phase(guest, idx)
    meta = {k: v for k, v in calls.items() if k in METADATA_CALLS}
    # The same plugins over the plain view, for scale: one call per lookup.
    plain_calls, plain_root = _plugin_phase(guest, guest["plain"])
    plain_meta = sum(v for k, v in plain_calls.items() if k in METADATA_CALLS)
    assert plain_meta > 50
    # For the record (pytest -s): what the index saved on this guest.
    print(f"\nmetadata calls in the plugin phase: indexed {meta}, plain {plain_meta}")
    # Reads (statns before each read_file, pread, download) still go to the appliance;
    # every other metadata call is an index fallback, counted, and there are few.
    reads = calls["read_file"] + calls["download"] + calls["pread"]
    assert meta.get("statns", 0) <= reads
    fallbacks = sum(v for k, v in meta.items() if k != "statns")
    assert fallbacks == sum(idx.fallbacks.values())
    assert fallbacks <= 5, meta
    # And the answers did not change.
    assert [p.status for p in root.plugins] == [p.status for p in plain_root.plugins]
    assert {f.rule_id for f in root.findings} == {f.rule_id for f in plain_root.findings}
    assert len(root.packages) == len(plain_root.packages) > 0


def test_folder_walk_stats_each_entry_once(guest: dict[str, Any]) -> None:
    """The fallback walk's stats go to the manifest: no entry is stat'ed twice, and the
    manifest is the one the find0 walk gives."""
    h: GuestHandle = guest["h"]
    counting: Counting = guest["counting"]
    before = Counter(counting.calls)
    listing = folder_walk(h, WalkLimits())
    walked = counting.calls - before
    mid = Counter(counting.calls)
    entries, _ = build_manifest(h, [("/", guest["root"])], listing=listing, hash_files=False)
    again = counting.calls - mid
    assert listing.how == "folder walk" and walked["ls0"] > 10
    # One ls0 per folder, at most one lstatnslist per folder (none for an empty one).
    assert 0 < walked["lstatnslist"] <= walked["ls0"]
    assert again["lstatnslist"] == 0, again

    def key(es: list[Any]) -> set[tuple[str, int, int, int]]:
        return {(e.path, e.size, e.mode, e.mtime) for e in es}

    assert key(entries) == key(guest["entries"])


def test_one_stream_serves_the_plugins_reads(guest: dict[str, Any]) -> None:
    """Catalogers and the licence, patch and migration checks declare their files: ONE
    tar_out brings them, the package database and copyright files are read from it, and
    the answers are those of the plain view."""
    idx = IndexedFS(guest["index"], guest["plain"])
    h: GuestHandle = guest["h"]
    root = RootResult(
        device=guest["root"], os=_libguestfs_root(h, guest["root"], DEFAULT_LIMITS).os
    )
    _os_release_into(LibguestfsFS(h), root.os)
    ctx = ScanContext(root=root, manifest=guest["entries"])
    checks = [c for c in all_checks() if c.NAME in ("license", "migration", "patch")]
    counting: Counting = guest["counting"]
    before = Counter(counting.calls)
    # (blob_only_min=1: this phony guest has fewer files to declare than the scanner's
    # threshold for a stream that only fetches declared files)
    rep = prefetch(h, idx, ctx, [*all_catalogers(), *checks], blob_only_min=1)
    run_plugins(idx, ctx, all_catalogers(), checks, guest["alive"])
    calls = counting.calls - before
    assert calls["tar_out"] == rep.tar_out_calls == 1
    copyrights = {e.path for e in guest["entries"] if is_copyright_file(e)}
    kept = set(idx.blobs.blobs)
    assert copyrights and copyrights <= kept
    assert "/var/lib/dpkg/status" in kept and "/etc/fstab" in kept
    # Nothing the plugins declared was read from the appliance.
    assert not any(p in kept for p in idx.read_fallback_paths), idx.read_fallback_paths
    assert "/var/lib/dpkg/status" not in idx.read_fallback_paths
    assert idx.streamed_reads >= len(copyrights) + 2
    _plain_calls, plain_root = _plugin_phase(guest, guest["plain"])
    assert [(p.name, p.status) for p in root.plugins] == [
        (p.name, p.status) for p in plain_root.plugins
    ]
    assert sorted(f.fingerprint for f in root.findings) == sorted(
        f.fingerprint for f in plain_root.findings
    )

    def pkgs(r: RootResult) -> list[tuple[str, str, tuple[str, ...], str]]:
        return sorted((p.name, p.version, tuple(p.licenses), p.license_source) for p in r.packages)

    assert pkgs(root) == pkgs(plain_root) and len(root.packages) > 0


class _Taker:
    """A stream consumer keeping what it takes; with *fail_at*, it raises on that take."""

    def __init__(self, paths: list[str], fail_at: int = -1) -> None:
        self.paths = paths
        self.fail_at = fail_at
        self.got: dict[str, bytes] = {}
        self.calls = 0
        self.taken: set[str] | None = None

    def wanted(self) -> list[str]:
        return self.paths

    def take(self, entry: Any, size: int, fh: Any) -> bool:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise ValueError("this consumer broke")
        self.got[entry.path] = fh.read(size)
        return True

    def active(self) -> bool:
        return True

    def done(self, error: str | None, taken: set[str]) -> None:
        self.taken = taken


def test_a_broken_consumer_never_stops_the_stream(guest: dict[str, Any]) -> None:
    """A consumer that raises gets nothing more; the others get every member they asked
    for, byte for byte (the manifest's SHA-256), from the same single tar_out."""
    files = [e for e in guest["entries"] if e.sha256 and e.size < (1 << 20)][:40]
    assert len(files) >= 10
    broken = _Taker([e.path for e in files[:5]], fail_at=1)
    rest = _Taker([e.path for e in files])
    rep = stream_root(guest["h"], guest["entries"], {"a": broken, "b": rest}, {}, BlobStore())
    assert rep.tar_out_calls == 1
    assert "this consumer broke" in rep.consumer_errors["a"]
    assert len(broken.got) == 1 and broken.taken == set(broken.got)
    assert set(rest.got) == {e.path for e in files} - set(broken.got)
    by_path = {e.path: e for e in files}
    for path, data in rest.got.items():
        assert hashlib.sha256(data).hexdigest() == by_path[path].sha256, path
