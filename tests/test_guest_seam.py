"""The guest-access seam on a real appliance: absence only when libguestfs says so.

One appliance over the phony Debian fixture serves every test of the module; the last
test kills its qemu, so it must stay last (pytest keeps file order).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fixtures
from vmscan.errors import (
    ApplianceDiedError,
    GuestBackendError,
    GuestNotFoundError,
    GuestReadError,
)
from vmscan.guestcall import GuestHandle, last_errno
from vmscan.guestfs_view import LibguestfsFS
from vmscan.model import DiskRef
from vmscan.session import GuestSession

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def sess() -> Iterator[GuestSession]:
    img = fixtures.build("debian-lvm")
    with GuestSession([DiskRef(str(img), "qcow2")]) as s:
        assert s.h is not None
        (root,) = s.h.inspect_os()
        assert s.mount_ro(root, "/") is None
        yield s


@pytest.fixture()
def fs(sess: GuestSession) -> LibguestfsFS:
    return LibguestfsFS(sess.h)


def test_enoent_is_absent(fs: LibguestfsFS) -> None:
    assert fs.lstat("/no/such/file") is None
    assert fs.exists("/no/such/file") is False
    assert fs.is_file("/no/such/file") is False
    assert fs.is_dir("/no/such/file") is False
    assert fs.listdir("/no/such/dir") == []
    assert fs.readlink("/no/such/link") is None
    assert fs.glob("/no/such/*") == []
    assert fs.statvfs("/no/such/dir") is None


def test_through_a_non_directory_is_absent(fs: LibguestfsFS) -> None:
    # ENOTDIR: /etc/hostname is a file, so nothing can be below it.
    assert fs.lstat("/etc/hostname/x") is None
    assert fs.listdir("/etc/hostname") == []
    assert fs.exists("/etc/hostname/x") is False


def test_present_entries_are_seen(fs: LibguestfsFS) -> None:
    st = fs.lstat("/etc/hostname")
    assert st is not None and st.is_file
    assert fs.read_bytes("/etc/hostname").strip() == b"phony-debian"
    assert "hostname" in fs.listdir("/etc")
    assert fs.readlink("/etc/os-release") == "../usr/lib/os-release"
    # A regular file is no symlink: EINVAL from the daemon, answered as "no link".
    assert fs.readlink("/etc/hostname") is None


def test_raw_handle_errors_are_translated(sess: GuestSession) -> None:
    h = sess.h
    assert h is not None
    with pytest.raises(GuestNotFoundError) as nf:
        h.lstatns("/no/such/file")
    assert nf.value.errno == 2 and last_errno(h.raw) == 2
    # Reading a directory fails without an errno: a backend error, never an absence.
    with pytest.raises(GuestBackendError) as be:
        h.read_file("/etc")
    assert not isinstance(be.value, GuestNotFoundError)
    assert h.alive()


def test_unreadable_file_of_live_appliance_is_a_read_error(fs: LibguestfsFS) -> None:
    with pytest.raises(GuestReadError):
        fs.read_bytes("/no/such/file")
    with pytest.raises(GuestReadError):
        fs.read_head("/etc", 16)


def test_killed_qemu_is_a_backend_error_never_absent(sess: GuestSession) -> None:
    """Last test of the module: it kills the shared appliance."""
    h = sess.h
    assert h is not None
    pid = int(h.get_pid())
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # the zombie stays until libguestfs reaps it: wait for the kill
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1].startswith("Z"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    fs = LibguestfsFS(h)
    with pytest.raises(ApplianceDiedError):
        fs.lstat("/no/such/file")
    # From now on every call fails at once, and none reads as "absent".
    calls: list[Any] = [
        lambda: fs.lstat("/etc/hostname"),
        lambda: fs.exists("/etc/hostname"),
        lambda: fs.is_file("/etc/hostname"),
        lambda: fs.listdir("/etc"),
        lambda: fs.glob("/etc/*"),
        lambda: fs.readlink("/etc/os-release"),
        lambda: fs.statvfs("/"),
        lambda: fs.read_bytes("/etc/hostname"),
        lambda: fs.read_head("/bin/ls", 4),
        lambda: fs.open_hive("/etc/hostname"),
    ]
    for call in calls:
        with pytest.raises(ApplianceDiedError):
            call()
    assert not sess.alive()
    with pytest.raises(ApplianceDiedError):
        sess.mount_ro("/dev/sda1", "/")


def test_closed_handle_is_a_backend_error() -> None:
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    g.close()
    h = GuestHandle(g)
    with pytest.raises(ApplianceDiedError):
        h.lstatns("/")
    assert not h.alive()
    with pytest.raises(ApplianceDiedError):
        LibguestfsFS(h).exists("/")
