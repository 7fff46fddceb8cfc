"""Read-only view of one mounted guest root: the seam between checks and libguestfs.

Catalogers and checks only see :class:`GuestFS`. Two implementations:
:class:`LibguestfsFS` (a mounted libguestfs handle, used for real scans) and
:class:`HostDirFS` (a folder on the host, used by fast unit tests). Every read has a
size limit because guest content may be hostile.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat as statmod
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmscan.errors import (
    ApplianceDiedError,
    GuestBackendError,
    GuestError,
    GuestNotFoundError,
    GuestReadError,
    TooLargeError,
    VmscanError,
)
from vmscan.guestcall import as_handle

#: Default cap for config-like files read from the guest.
DEFAULT_READ_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Stat:
    """The parts of ``lstat`` vmscan uses."""

    mode: int
    size: int
    uid: int
    gid: int
    mtime: int
    ino: int = 0

    @property
    def is_file(self) -> bool:
        return statmod.S_ISREG(self.mode)

    @property
    def is_dir(self) -> bool:
        return statmod.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return statmod.S_ISLNK(self.mode)


class Hive(Protocol):
    """A Windows registry hive opened read-only (libguestfs hivex calls, or host hivex)."""

    def root(self) -> int: ...
    def child(self, node: int, name: str) -> int | None: ...
    def children(self, node: int) -> list[tuple[str, int]]: ...
    def values(self, node: int) -> dict[str, tuple[int, bytes]]: ...
    def close(self) -> None: ...


class GuestFS(Protocol):
    """Read-only access to one guest root. Paths are absolute guest paths."""

    def lstat(self, path: str) -> Stat | None:
        """``lstat`` of *path*, or None when it does not exist."""
        ...

    def exists(self, path: str) -> bool: ...
    def is_file(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]:
        """Names in a directory (empty when it is not one)."""
        ...

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """Whole file content; TooLargeError past *limit*, GuestReadError otherwise."""
        ...

    def read_head(self, path: str, size: int) -> bytes:
        """The first *size* bytes (fewer for a short file)."""
        ...

    def readlink(self, path: str) -> str | None: ...

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a shell pattern (``*`` does not cross ``/``)."""
        ...

    def materialize(self, path: str, limit: int) -> contextlib.AbstractContextManager[Path]:
        """Copy a guest file to a private host temp file for host-side parsers."""
        ...

    def open_hive(self, path: str) -> Hive: ...

    def statvfs(self, path: str) -> dict[str, int] | None: ...

    def read_device(self, device: str, size: int, offset: int) -> bytes | None:
        """*size* bytes of a block device of the image at *offset* (raw volume facts such
        as NTFS's dirty bit); None when the view has no devices (a host folder)."""
        ...


def read_text(fs: GuestFS, path: str, limit: int = DEFAULT_READ_LIMIT) -> str:
    """Guest text, decoded leniently: guest bytes are untrusted."""
    return fs.read_bytes(path, limit).decode("utf-8", errors="replace")


def _glob_parts(fs: GuestFS, pattern: str) -> list[str]:
    parts = [p for p in pattern.split("/") if p]
    found = ["/"]
    for part in parts:
        nxt: list[str] = []
        for base in found:
            if any(c in part for c in "*?["):
                for name in fs.listdir(base):
                    if fnmatch.fnmatchcase(name, part):
                        nxt.append(os.path.join(base, name))
            else:
                cand = os.path.join(base, part)
                if fs.lstat(cand) is not None:
                    nxt.append(cand)
        found = nxt
    return sorted(found)


class HostDirFS:
    """A guest tree laid out in a host folder (tests, and fixture previews)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _host(self, path: str) -> Path:
        # Resolve guest symlinks inside the root only, like a chroot would.
        # lstrip first: POSIX normpath keeps a leading "//".
        rel = Path(os.path.normpath("/" + path.lstrip("/"))).relative_to("/")
        return self.root / rel

    def lstat(self, path: str) -> Stat | None:
        try:
            st = os.lstat(self._host(path))
        except OSError:
            return None
        return Stat(st.st_mode, st.st_size, st.st_uid, st.st_gid, int(st.st_mtime), st.st_ino)

    def exists(self, path: str) -> bool:
        return self.lstat(path) is not None

    def is_file(self, path: str) -> bool:
        return self._host(path).is_file()

    def is_dir(self, path: str) -> bool:
        return self._host(path).is_dir()

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._host(path)))
        except OSError:
            return []

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        host = self._host(path)
        try:
            size = host.stat().st_size
            if size > limit:
                raise TooLargeError(f"{path}: {size} bytes is over the {limit} byte limit")
            with open(host, "rb") as fh:
                return fh.read(limit + 1)[:limit]
        except OSError as e:
            raise GuestReadError(f"{path}: {e.strerror}") from e

    def read_head(self, path: str, size: int) -> bytes:
        try:
            with open(self._host(path), "rb") as fh:
                return fh.read(size)
        except OSError as e:
            raise GuestReadError(f"{path}: {e.strerror}") from e

    def readlink(self, path: str) -> str | None:
        try:
            return os.readlink(self._host(path))
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        return _glob_parts(self, pattern)

    @contextlib.contextmanager
    def materialize(self, path: str, limit: int) -> Iterator[Path]:
        data = self.read_bytes(path, limit)
        with tempfile.TemporaryDirectory(prefix="vmscan-") as tmp:
            out = Path(tmp) / "file"
            out.write_bytes(data)
            yield out

    def read_device(self, device: str, size: int, offset: int) -> bytes | None:
        return None

    def open_hive(self, path: str) -> Hive:
        from vmscan.hive import HostHive

        hive: Hive = HostHive(self._host(path))
        return hive

    def statvfs(self, path: str) -> dict[str, int] | None:
        try:
            st = os.statvfs(self._host(path))
        except OSError:
            return None
        return {
            "bsize": st.f_frsize,
            "blocks": st.f_blocks,
            "bfree": st.f_bfree,
            "bavail": st.f_bavail,
        }


class LibguestfsFS:
    """A root mounted read-only in a libguestfs appliance.

    "Absent" (None, False, ``[]``) is answered only when libguestfs said so: an explicit
    ``exists``/``is_file``/``is_dir`` answer, or a failure whose errno is ENOENT/ENOTDIR
    (:class:`~vmscan.errors.GuestNotFoundError`). Any other failure raises
    :class:`~vmscan.errors.GuestBackendError` (reads of a live appliance: GuestReadError).
    """

    def __init__(self, g: Any) -> None:
        self.g = as_handle(g)

    def lstat(self, path: str) -> Stat | None:
        try:
            st = self.g.lstatns(path)
        except GuestNotFoundError:
            return None
        return Stat(
            st["st_mode"],
            st["st_size"],
            st["st_uid"],
            st["st_gid"],
            st["st_mtime_sec"],
            st["st_ino"],
        )

    def exists(self, path: str) -> bool:
        return bool(self.g.exists(path))

    def is_file(self, path: str) -> bool:
        return bool(self.g.is_file(path, followsymlinks=True))

    def is_dir(self, path: str) -> bool:
        return bool(self.g.is_dir(path, followsymlinks=True))

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(self.g.ls(path))
        except GuestNotFoundError:
            return []
        except UnicodeDecodeError:
            # A name that is not UTF-8: the binding cannot decode the list. Such names
            # cannot be passed back to libguestfs either, so only the others are
            # returned; the content stream (tar, bytes) reads the rest.
            return self._utf8_names(path)

    def _utf8_names(self, path: str) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="vmscan-ls-") as tmp:
            out = os.path.join(tmp, "ls0")
            try:
                self.g.ls0(path, out)
            except GuestNotFoundError:
                return []
            with open(out, "rb") as fh:
                raw = fh.read(DEFAULT_READ_LIMIT)
        names = []
        for name in raw.split(b"\0"):
            if not name:
                continue
            try:
                names.append(name.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        return sorted(names)

    def _read_error(self, path: str, e: GuestError) -> VmscanError:
        # A dead appliance is not an unreadable file: callers must not skip over it.
        if isinstance(e, ApplianceDiedError):
            return e
        return GuestReadError(f"{path}: {e}")

    def _size(self, path: str) -> int:
        try:
            st = self.g.statns(path)
        except GuestError as e:
            raise self._read_error(path, e) from e
        if not statmod.S_ISREG(st["st_mode"]):
            raise GuestReadError(f"{path}: not a regular file")
        return int(st["st_size"])

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        size = self._size(path)
        if size > limit:
            raise TooLargeError(f"{path}: {size} bytes is over the {limit} byte limit")
        # read_file is capped by the protocol's message size (4 MB); larger files go
        # through a temp file on the host.
        if size < 2 * 1024 * 1024:
            try:
                data: bytes = self.g.read_file(path)
            except GuestError as e:
                raise self._read_error(path, e) from e
            return data[:limit]
        with self.materialize(path, limit) as host:
            return host.read_bytes()

    def read_head(self, path: str, size: int) -> bytes:
        try:
            data: bytes = self.g.pread(path, size, 0)
        except GuestError as e:
            raise self._read_error(path, e) from e
        return data

    def readlink(self, path: str) -> str | None:
        try:
            return str(self.g.readlink(path))
        except GuestNotFoundError:
            return None
        except GuestBackendError as e:
            if e.errno == errno.EINVAL:  # the daemon says: not a symlink
                return None
            raise

    def glob(self, pattern: str) -> list[str]:
        # glob_expand answers [] for no match; a failure is not "no match".
        return sorted(p.rstrip("/") or "/" for p in self.g.glob_expand(pattern))

    @contextlib.contextmanager
    def materialize(self, path: str, limit: int) -> Iterator[Path]:
        size = self._size(path)
        if size > limit:
            raise TooLargeError(f"{path}: {size} bytes is over the {limit} byte limit")
        with tempfile.TemporaryDirectory(prefix="vmscan-") as tmp:
            out = Path(tmp) / "file"
            try:
                self.g.download(path, str(out))
            except GuestError as e:
                raise self._read_error(path, e) from e
            # The file may have been larger than its stat said (it cannot change on a
            # read-only appliance, but be strict anyway).
            if out.stat().st_size > limit:
                raise TooLargeError(f"{path}: over the {limit} byte limit")
            yield out

    def read_device(self, device: str, size: int, offset: int) -> bytes | None:
        data: bytes = self.g.pread_device(device, min(size, 1 << 20), offset)
        return data

    def open_hive(self, path: str) -> Hive:
        from vmscan.hive import GuestHive

        hive: Hive = GuestHive(self.g, path)
        return hive

    def statvfs(self, path: str) -> dict[str, int] | None:
        try:
            st = self.g.statvfs(path)
        except GuestNotFoundError:
            return None
        return {
            "bsize": st["frsize"],
            "blocks": st["blocks"],
            "bfree": st["bfree"],
            "bavail": st["bavail"],
        }
