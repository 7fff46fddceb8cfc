"""FileIndex/IndexedFS over a host tree: the same answers as HostDirFS, from memory.

The index is fed the way the manifest's walk feeds it (one batch of lstat dicts per
directory); the reads go to the wrapped view. The real-appliance contract and the call
counts are in ``test_guest_index.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vmscan.guestfs_view import HostDirFS
from vmscan.guestindex import FileIndex, IndexedFS, _stat_of


def _lstat_dict(p: Path) -> dict[str, Any]:
    st = os.lstat(p)
    return {
        "st_mode": st.st_mode,
        "st_size": st.st_size,
        "st_uid": st.st_uid,
        "st_gid": st.st_gid,
        "st_mtime_sec": int(st.st_mtime),
        "st_ino": st.st_ino,
    }


def _index(root: Path, skip: set[str] = frozenset()) -> FileIndex:  # type: ignore[assignment]
    idx = FileIndex()
    idx.stats["/"] = _stat_of(_lstat_dict(root))
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parent = b"" if rel == "." else os.fsencode(rel)
        if "/" + parent.decode() in skip:
            idx.batch(parent, [os.fsencode(n) for n in dirnames + filenames], None)
            continue
        names = sorted(dirnames + filenames)
        idx.batch(
            parent, [n.encode() for n in names], [_lstat_dict(Path(dirpath, n)) for n in names]
        )
        for n in names:
            if os.path.islink(Path(dirpath, n)):
                idx.links["/" + os.path.join(rel, n).removeprefix("./")] = os.readlink(
                    Path(dirpath, n)
                )
    for kids in idx.children.values():
        kids.sort()
    return idx


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr/lib/modules/6.1.0").mkdir(parents=True)
    (r / "usr/lib/modules/6.1.0/modules.dep").write_text("x\n")
    (r / "lib").symlink_to("usr/lib")  # merged /usr
    (r / "etc/ssh").mkdir(parents=True)
    (r / "etc/hostname").write_text("guest\n")
    (r / "etc/.hidden").write_text("h\n")
    (r / "etc/os-release").symlink_to("../usr/lib/os-release")  # dangling, relative
    (r / "usr/lib/os-release").write_text("ID=debian\n")
    (r / "etc/abs").symlink_to("/etc/hostname")  # absolute: inside the guest
    (r / "etc/loop1").symlink_to("loop2")
    (r / "etc/loop2").symlink_to("loop1")
    (r / "etc/up").symlink_to("../../../../etc")  # .. above / stays at /
    (r / "Windows/System32/config").mkdir(parents=True)
    (r / "Windows/System32/config/SOFTWARE").write_bytes(b"regf")
    return r


PATHS = [
    "/",
    "/etc",
    "/etc/hostname",
    "/etc/os-release",
    "/etc/abs",
    "/etc/loop1",
    "/lib/modules/6.1.0/modules.dep",
    "/lib/modules",
    "/lib",
    "/nope",
    "/etc/hostname/below",
    "/etc/../etc/./hostname",
]


def test_same_answers_as_hostdirfs(tree: Path) -> None:
    host = HostDirFS(tree)
    fs = IndexedFS(_index(tree), host)
    for p in PATHS:
        assert fs.lstat(p) == host.lstat(p), p
        assert fs.is_dir(p) == host.is_dir(p), p
        assert fs.readlink(p) == host.readlink(p), p
        if not p.startswith("/etc/abs"):  # HostDirFS resolves absolute links on the host
            assert fs.is_file(p) == host.is_file(p), p
    for p in ("/", "/etc", "/lib/modules"):
        assert fs.listdir(p) == host.listdir(p), p
    assert fs.fallbacks == {}


def test_symlinks_resolve_inside_the_guest(tree: Path) -> None:
    fs = IndexedFS(_index(tree), HostDirFS(tree))
    assert fs.is_file("/etc/abs")  # /etc/hostname of the guest
    assert fs.exists("/etc/os-release")
    assert fs.lstat("/etc/os-release") is not None and fs.lstat("/etc/os-release").is_link  # type: ignore[union-attr]
    # ".." above "/" stays at "/" (HostDirFS would leave the tree here).
    assert fs.lstat("/etc/up/hostname") == fs.lstat("/etc/hostname")
    # ".." after a symlink is taken from where the link led, as the kernel does.
    assert fs.lstat("/lib/../etc/hostname") is None
    assert fs.is_dir("/lib/../lib/modules")
    # A loop is a fact of the index, not a gap: it does not exist.
    assert fs.exists("/etc/loop1") is False
    assert fs.lstat("/etc/loop1") is not None
    assert fs.fallbacks == {}


def test_glob_like_glob_expand(tree: Path) -> None:
    fs = IndexedFS(_index(tree), HostDirFS(tree))
    assert fs.glob("/lib/modules/*") == ["/lib/modules/6.1.0"]
    # Wildcards skip dot files, as glob(3) in the appliance does.
    assert "/etc/.hidden" not in fs.glob("/etc/*")
    assert fs.glob("/etc/.h*") == ["/etc/.hidden"]
    assert fs.glob("/nope/*") == []


def test_case_insensitive_lookup(tree: Path) -> None:
    fs = IndexedFS(_index(tree), HostDirFS(tree))
    assert fs.ci_lookup("/windows/system32/CONFIG/software") == (
        "/Windows/System32/config/SOFTWARE"
    )
    assert fs.ci_lookup("/windows/nope") is None


def test_gaps_go_to_the_appliance_and_are_counted(tree: Path) -> None:
    # /etc could not be stat'd in the walk: never "absent", ask the backend.
    fs = IndexedFS(_index(tree, skip={"/etc"}), HostDirFS(tree))
    assert fs.is_file("/etc/hostname")
    assert fs.lstat("/etc/nope") is None
    assert "hostname" in fs.listdir("/etc")
    assert fs.fallbacks == {"is_file": 1, "lstat": 1, "listdir": 1}
    whole = FileIndex()
    whole.incomplete(b"")  # the find0 listing hit its cap
    fs2 = IndexedFS(whole, HostDirFS(tree))
    assert fs2.exists("/usr/lib/os-release")
    assert fs2.fallbacks == {"exists": 1}


def test_reads_go_to_the_backend(tree: Path) -> None:
    fs = IndexedFS(_index(tree), HostDirFS(tree))
    assert fs.read_bytes("/etc/hostname") == b"guest\n"
    assert fs.read_head("/lib/modules/6.1.0/modules.dep", 1) == b"x"


def test_reads_of_streamed_files_come_from_the_blob_store(tmp_path: Path) -> None:
    """Copyright files the stream kept are read from memory, through doc-dir symlinks;
    what the stream did not bring goes to the appliance (here the host view), counted."""
    from vmscan.errors import TooLargeError
    from vmscan.license.copyright import read_package_copyright
    from vmscan.rootstream import BlobStore

    r = tmp_path / "root"
    doc = r / "usr/share/doc"
    (doc / "libfoo-common").mkdir(parents=True)
    text = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
    text += b"Files: *\nCopyright: x\nLicense: Zlib\n"
    (doc / "libfoo-common/copyright").write_bytes(text)
    os.symlink("libfoo-common", doc / "libfoo1")
    os.symlink("/usr/share/doc/libfoo-common", doc / "libfoo2")
    (doc / "big").mkdir()
    (doc / "big/copyright").write_bytes(b"B" * 5000)
    (r / "etc").mkdir()
    (r / "etc/hostname").write_text("guest\n")
    blobs = BlobStore()
    blobs.put("/usr/share/doc/libfoo-common/copyright", len(text), text)
    blobs.put("/usr/share/doc/big/copyright", 5000, b"B" * 100)  # only its head was kept
    fs = IndexedFS(_index(r), HostDirFS(r), blobs)  # type: ignore[arg-type]
    for name in ("libfoo-common", "libfoo1", "libfoo2"):
        res, path = read_package_copyright(fs, name)
        assert res.licenses == ("Zlib",), name
        assert path == "/usr/share/doc/libfoo-common/copyright"
    assert fs.streamed_reads == 3 and not fs.read_fallbacks
    assert fs.read_head("/usr/share/doc/big/copyright", 50) == b"B" * 50
    with pytest.raises(TooLargeError):
        fs.read_bytes("/usr/share/doc/big/copyright", 1000)
    assert not fs.read_fallbacks
    # Whole file wanted but only the head kept, and a file nobody asked for: the appliance.
    assert fs.read_bytes("/usr/share/doc/big/copyright") == b"B" * 5000
    assert fs.read_bytes("/etc/hostname") == b"guest\n"
    assert fs.read_fallbacks == {"read_bytes": 2}
    with fs.materialize("/usr/share/doc/libfoo1/copyright", 1 << 20) as host:
        assert host.read_bytes() == text
