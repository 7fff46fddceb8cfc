"""Tests of the phony-guest builder (fixtures/): cache keys, tar layout, and one real image."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fixtures
from fixtures.cache import get_or_build, make_key
from fixtures.guestbuild import files_per_filesystem, write_tar
from fixtures.spec import (
    DEFAULT_MTIME,
    Disk,
    Filesystem,
    GuestSpec,
    Partition,
    Text,
    all_filesystems,
    canonical,
    validate,
)
from fixtures.specs import debian_lvm

SPEC = debian_lvm.SPEC


# ---------------------------------------------------------------- pure tests


def test_cache_key_is_stable_and_follows_the_spec() -> None:
    key = fixtures.spec_key(SPEC)
    assert key == fixtures.spec_key(SPEC)
    files = dict(SPEC.files)
    files["/etc/hostname"] = Text("other-name\n")
    changed = dataclasses.replace(SPEC, files=files)
    assert fixtures.spec_key(changed) != key
    bigger = dataclasses.replace(SPEC, disks=(dataclasses.replace(SPEC.disks[0], size="256M"),))
    assert fixtures.spec_key(bigger) != key
    assert fixtures.spec_key(SPEC, "vmdk") != key
    assert fixtures.spec_key(SPEC, "vhd") == fixtures.spec_key(SPEC, "vpc")


def test_canonical_ignores_dict_order() -> None:
    files = dict(reversed(list(SPEC.files.items())))
    assert canonical(dataclasses.replace(SPEC, files=files)) == canonical(SPEC)


def test_registry_lists_required_fixtures() -> None:
    assert {"debian-lvm", "data-disk", "backing-outside", "truncated", "random-bytes"} <= set(
        fixtures.names()
    )
    assert fixtures.cache_key("debian-lvm") == fixtures.spec_key(SPEC)


def test_validate_rejects_bad_specs() -> None:
    disk = Disk(size="64M", ptable="mbr", partitions=(Partition(None), Partition("1M")))
    with pytest.raises(ValueError, match="last partition"):
        validate(GuestSpec("bad", "", disks=(disk,)))
    fs = Filesystem("ext4", mountpoint="/data")
    nofs = Disk(size="64M", ptable="none", content=fs)
    with pytest.raises(ValueError, match="mounted on /"):
        validate(GuestSpec("bad", "", disks=(nofs,), files={"/x": Text("")}))
    with pytest.raises(ValueError, match="unknown filesystem"):
        validate(GuestSpec("bad", "", disks=(Disk("64M", "none", content=Filesystem("zfs")),)))


def test_files_are_split_by_mountpoint() -> None:
    fses = all_filesystems(SPEC)
    per_fs = files_per_filesystem(SPEC)
    boot = per_fs[[fs.mountpoint for fs in fses].index("/boot")]
    root = per_fs[[fs.mountpoint for fs in fses].index("/")]
    assert b"grub/grub.cfg" in boot and b"boot/grub/grub.cfg" not in root
    assert b"boot" in root  # the mountpoint directory lives on the parent filesystem
    assert b"etc/fstab" in root and b"home/user/caf\xe9.txt" in root


def test_tar_keeps_raw_names_owners_and_parents(tmp_path: Path) -> None:
    dest = tmp_path / "t.tar"
    write_tar(files_per_filesystem(SPEC)[-1], dest)
    with tarfile.open(dest, encoding="utf-8", errors="surrogateescape") as tf:
        members = {os.fsencode(m.name): m for m in tf.getmembers()}
    assert b"home/user/caf\xe9.txt" in members
    notes = members[b"home/user/notes.txt"]
    assert (notes.uid, notes.gid, notes.mtime, notes.uname) == (1000, 1000, DEFAULT_MTIME, "")
    assert members[b"srv/deep/d01"].isdir()  # implicit parent
    assert members[b"etc/os-release"].issym()
    names = [m for m in members if m.startswith(b"srv/deep")]
    assert len(max(names, key=len).split(b"/")) == 43  # srv/deep + 40 dirs + file


def _count_build(root: str, out: str) -> None:
    os.environ["VMSCAN_CACHE"] = root

    def produce(tmp: Path) -> list[str]:
        with open(out, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # long enough for the other process to be waiting on the lock
        (tmp / "x.img").write_bytes(b"x")
        return ["x.img"]

    get_or_build("concurrent", "0" * 64, produce)


def test_cache_builds_once_across_processes(tmp_path: Path) -> None:
    out = tmp_path / "count"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count_build, args=(str(tmp_path), str(out))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert out.read_text() == "built\n"
    entry = tmp_path / "fixtures" / "concurrent-000000000000"
    assert json.loads((entry / "entry.json").read_text())["files"] == ["x.img"]
    assert not list((tmp_path / "fixtures").glob(".tmp-*"))


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSCAN_CACHE", str(tmp_path))

    def boom(tmp: Path) -> list[str]:
        (tmp / "half.img").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        get_or_build("boom", make_key(b"boom", "raw"), boom)
    assert [p.name for p in (tmp_path / "fixtures").iterdir() if not p.name.endswith(".lock")] == []


def _qemu_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def test_cheap_broken_fixtures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMSCAN_CACHE", str(tmp_path))
    backing = fixtures.build("backing-outside")
    assert _qemu_info(backing)["backing-filename"] == "/etc/hostname"
    rnd = fixtures.build("random-bytes")
    assert rnd.name == "random-bytes.qcow2" and rnd.stat().st_size == 1024 * 1024
    assert rnd.read_bytes() == fixtures.build("random-bytes", "raw").read_bytes()
    with pytest.raises(ValueError):
        fixtures.build("backing-outside", "vmdk")


# ---------------------------------------------------------- one real appliance


@pytest.fixture(scope="session")
def debian_image() -> Path:
    return fixtures.build("debian-lvm", "qcow2")


@pytest.fixture(scope="session")
def debian_guest(debian_image: Path) -> Iterator[tuple[Any, str]]:
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(debian_image), readonly=1, format="qcow2")
    g.launch()
    roots = g.inspect_os()
    assert len(roots) == 1
    root = roots[0]
    mps = g.inspect_get_mountpoints(root)
    known = g.list_filesystems()
    mounted: set[str] = set()
    # Shortest first, ties by name (libguestfs returns the mountpoints in no fixed order).
    for mp in sorted(mps, key=lambda m: (len(m), m)):
        # fstab also names /dev/sdb1, which is not in the image: libguestfs maps it onto
        # a device by position, so mount each device once.
        if mps[mp] in known and mps[mp] not in mounted:
            g.mount_ro(mps[mp], mp)
            mounted.add(mps[mp])
    yield g, root
    g.close()


@pytest.mark.guest
def test_inspection_sees_phony_debian(debian_guest: tuple[Any, str]) -> None:
    g, root = debian_guest
    assert g.inspect_get_type(root) == "linux"
    assert g.inspect_get_distro(root) == "debian"
    assert g.inspect_get_major_version(root) == 12
    assert g.inspect_get_hostname(root) == "phony-debian"
    assert g.inspect_get_arch(root) == "x86_64"
    assert g.inspect_get_package_format(root) == "deb"
    assert g.inspect_get_mountpoints(root)["/boot"] == "/dev/sda1"
    assert g.vfs_uuid("/dev/sda1") == debian_lvm.BOOT_UUID
    assert g.vfs_uuid("/dev/vg0/root") == debian_lvm.ROOT_UUID


@pytest.mark.guest
def test_file_tree_edge_cases(debian_guest: tuple[Any, str], tmp_path: Path) -> None:
    g, _ = debian_guest
    listing = tmp_path / "ls0"
    g.ls0("/home/user", str(listing))  # ls0: raw bytes, the names are not all UTF-8
    assert b"caf\xe9.txt" in listing.read_bytes().split(b"\0")
    assert g.is_file(debian_lvm.DEEP_FILE)
    assert g.filesize("/var/log/empty.log") == 0
    assert g.readlink("/etc/os-release") == "../usr/lib/os-release"
    assert g.read_file(debian_lvm.EICAR_PATH) == debian_lvm.EICAR
    notes = g.lstatns("/home/user/notes.txt")
    assert (notes["st_uid"], notes["st_gid"], notes["st_mtime_sec"]) == (1000, 1000, DEFAULT_MTIME)
    shadow = g.lstatns("/etc/shadow")
    assert (stat.S_IMODE(shadow["st_mode"]), shadow["st_gid"]) == (0o640, 42)
    assert b"/dev/sdb1" in g.read_file("/etc/fstab")
    assert g.file_architecture("/usr/bin/ls") == "x86_64"


@pytest.mark.guest
def test_other_formats_and_truncated(debian_image: Path) -> None:
    images = fixtures.build_all_formats("debian-lvm")
    assert images["qcow2"] == debian_image
    for fmt, path in images.items():
        assert _qemu_info(path)["format"] == fmt
    assert images["vpc"].suffix == ".vhd"
    cut = fixtures.build("truncated")
    assert cut.stat().st_size == debian_image.stat().st_size // 2
