"""An in-memory index of one mounted guest root: metadata lookups without a round trip.

The manifest's one walk of a root (``find0`` + ``lstatnslist`` per directory, see
:mod:`vmscan.manifest`) feeds a :class:`FileIndex` (it is the walk's
:class:`vmscan.manifest.WalkSink`); symlink targets come with one ``readlinklist`` per
directory holding links. :class:`IndexedFS` answers ``lstat``, ``exists``, ``is_file``,
``is_dir``, ``listdir``, ``readlink``, ``glob`` and case-insensitive lookups from it,
resolving symlinks inside the root like a chroot would (the appliance resolves them the
same way below its sysroot). Reads of files the root's one content stream delivered (a
:class:`vmscan.rootstream.BlobStore`, filled before the plugins run from what they declared)
are answered from memory; other reads go to the appliance through the wrapped
:class:`vmscan.guestfs_view.LibguestfsFS`, counted in :attr:`IndexedFS.read_fallbacks`.

Where the walk did not see everything (a directory ``lstatnslist`` failed on, names that
are not UTF-8 and cannot be passed to libguestfs, a listing over the size cap), lookups
at or below that directory go to the appliance, counted in :attr:`IndexedFS.fallbacks`:
an index gap is never read as an absence.
"""

from __future__ import annotations

import contextlib
import fnmatch
import posixpath
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmscan.errors import TooLargeError
from vmscan.guestcall import as_handle
from vmscan.guestfs_view import DEFAULT_READ_LIMIT, Hive, LibguestfsFS, Stat
from vmscan.rootstream import BlobStore

#: Symlinks followed while resolving one path (Linux's MAXSYMLINKS).
MAX_SYMLINKS = 40
#: Names per readlinklist call: far below the 4 MB protocol message limit.
_LINK_BATCH = 1000


class _Gap(Exception):
    """A lookup reached a part of the tree the index does not know."""


def _stat_of(st: dict[str, Any]) -> Stat:
    return Stat(
        st["st_mode"], st["st_size"], st["st_uid"], st["st_gid"], st["st_mtime_sec"], st["st_ino"]
    )


class FileIndex:
    """Path -> Stat of every entry of a walked root, children per directory, link targets."""

    def __init__(self) -> None:
        self.stats: dict[str, Stat] = {}
        self.children: dict[str, list[str]] = {}
        self.links: dict[str, str] = {}
        #: Directories whose content the index does not fully know ("/" for everything).
        self.gaps: set[str] = set()
        #: Directories holding names that are not UTF-8: every UTF-8 name in them is
        #: indexed, so lookups are answered, but a listing goes to the appliance.
        self.foreign: set[str] = set()

    # -- the manifest's WalkSink -------------------------------------------------

    def batch(self, parent: bytes, names: list[bytes], stats: list[dict[str, Any]] | None) -> None:
        """Entries *names* of directory *parent* (relative to "/"), or a failed stat."""
        dir_ = "/" + parent.decode("utf-8")
        if stats is None or len(stats) != len(names):
            self.gaps.add(dir_)
            return
        kids = self.children.setdefault(dir_, [])
        for raw, st in zip(names, stats, strict=True):
            name = raw.decode("utf-8")
            kids.append(name)
            self.stats[posixpath.join(dir_, name)] = _stat_of(st)

    def incomplete(self, dir_raw: bytes) -> None:
        """The walk could not list *dir_raw* completely (b"": the listing hit its cap)."""
        if not dir_raw:
            self.gaps.add("/")
        else:
            # The manifest calls this for the directories that hold non-UTF-8 names
            # (the topmost ancestor that is still UTF-8); their UTF-8 names were stat'd.
            self.foreign.add("/" + dir_raw.decode("utf-8"))

    # -- after the walk ----------------------------------------------------------

    def finish(self, g: Any) -> int:
        """Stat "/" and read every symlink target, batched; returns the calls made."""
        h = as_handle(g)
        calls = 1
        self.stats["/"] = _stat_of(h.lstatns("/"))
        for kids in self.children.values():
            kids.sort()
        by_dir: dict[str, list[str]] = {}
        for path, st in self.stats.items():
            if st.is_link:
                d, _, name = path.rpartition("/")
                by_dir.setdefault(d or "/", []).append(name)
        for d, names in sorted(by_dir.items()):
            for i in range(0, len(names), _LINK_BATCH):
                part = names[i : i + _LINK_BATCH]
                calls += 1
                targets = h.readlinklist(d, part)
                for name, target in zip(part, targets, strict=False):
                    # libguestfs gives "" for an entry it could not read: ask later.
                    if target:
                        self.links[posixpath.join(d, name)] = str(target)
        return calls

    # -- lookups -----------------------------------------------------------------

    def _in_gap(self, path: str) -> bool:
        if "/" in self.gaps:
            return True
        return any(path == g or path.startswith(g.rstrip("/") + "/") for g in self.gaps)

    def resolve(self, path: str, follow_last: bool) -> str | None:
        """The real path of *path* inside the root, or None when it does not exist.

        Raises _Gap when the answer depends on something the index does not hold.
        """
        todo = [p for p in path.split("/") if p and p != "."]
        todo.reverse()
        cur = "/"
        hops = 0
        while todo:
            part = todo.pop()
            if part == "..":
                cur = posixpath.dirname(cur) or "/"
                continue
            if self._in_gap(cur):
                raise _Gap(cur)
            nxt = posixpath.join(cur, part)
            st = self.stats.get(nxt)
            if st is None:
                return None
            if st.is_link and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINKS:
                    return None  # ELOOP: every target is known, the loop is a fact
                target = self.links.get(nxt)
                if target is None:
                    raise _Gap(nxt)
                if target.startswith("/"):
                    cur = "/"
                parts = [p for p in target.split("/") if p and p != "."]
                todo.extend(reversed(parts))
                continue
            if todo and not st.is_dir:
                return None  # ENOTDIR
            cur = nxt
        return cur


class IndexedFS:
    """A :class:`~vmscan.guestfs_view.GuestFS` answering metadata from a :class:`FileIndex`."""

    def __init__(
        self, index: FileIndex, backend: LibguestfsFS, blobs: BlobStore | None = None
    ) -> None:
        self.index = index
        self.backend = backend
        #: Contents the root's stream delivered (reads of them cost no round trip).
        self.blobs = blobs if blobs is not None else BlobStore()
        #: Lookups the index could not answer and the appliance did, by method name.
        self.fallbacks: Counter[str] = Counter()
        #: Reads the stream had not delivered, made in the appliance, by method name.
        self.read_fallbacks: Counter[str] = Counter()
        #: Reads answered from the stream's blobs.
        self.streamed_reads = 0
        #: The first paths read from the appliance (for the report: what is left to declare).
        self.read_fallback_paths: list[str] = []

    def _fallback(self, name: str) -> Any:
        self.fallbacks[name] += 1
        return getattr(self.backend, name)

    def _stat(self, path: str, follow: bool) -> Stat | None:
        real = self.index.resolve(path, follow)
        return None if real is None else self.index.stats.get(real)

    def lstat(self, path: str) -> Stat | None:
        try:
            return self._stat(path, False)
        except _Gap:
            st: Stat | None = self._fallback("lstat")(path)
            return st

    def exists(self, path: str) -> bool:
        # libguestfs' exists follows symlinks: a dangling link does not exist.
        try:
            return self._stat(path, True) is not None
        except _Gap:
            return bool(self._fallback("exists")(path))

    def is_file(self, path: str) -> bool:
        try:
            st = self._stat(path, True)
        except _Gap:
            return bool(self._fallback("is_file")(path))
        return st is not None and st.is_file

    def is_dir(self, path: str) -> bool:
        try:
            st = self._stat(path, True)
        except _Gap:
            return bool(self._fallback("is_dir")(path))
        return st is not None and st.is_dir

    def listdir(self, path: str) -> list[str]:
        try:
            real = self.index.resolve(path, True)
            if real is not None and (self.index._in_gap(real) or real in self.index.foreign):
                raise _Gap(real)
        except _Gap:
            names: list[str] = self._fallback("listdir")(path)
            return names
        if real is None:
            return []
        return list(self.index.children.get(real, []))

    def readlink(self, path: str) -> str | None:
        try:
            real = self.index.resolve(posixpath.dirname(path.rstrip("/")) or "/", True)
            if real is None:
                return None  # the parent does not exist
            if self.index._in_gap(real):
                raise _Gap(real)
        except _Gap:
            target: str | None = self._fallback("readlink")(path)
            return target
        link = posixpath.join(real, posixpath.basename(path.rstrip("/")))
        st = self.index.stats.get(link)
        if st is None or not st.is_link:
            return None
        if link in self.index.links:
            return self.index.links[link]
        fallback: str | None = self._fallback("readlink")(link)
        return fallback

    def glob(self, pattern: str) -> list[str]:
        """Like libguestfs' ``glob_expand``: wildcards do not match a leading dot."""
        found = ["/"]
        for part in [p for p in pattern.split("/") if p]:
            nxt: list[str] = []
            wild = any(c in part for c in "*?[")
            for base in found:
                if wild:
                    for name in self.listdir(base):
                        if name.startswith(".") and not part.startswith("."):
                            continue
                        if fnmatch.fnmatchcase(name, part):
                            nxt.append(posixpath.join(base, name))
                else:
                    cand = posixpath.join(base, part)
                    if self.lstat(cand) is not None:
                        nxt.append(cand)
            found = nxt
        return sorted(found)

    def ci_lookup(self, path: str) -> str | None:
        """*path* matched case-insensitively component by component (NTFS names)."""
        cur = "/"
        for part in [p for p in path.split("/") if p]:
            names = self.listdir(cur)
            hit = (
                part
                if part in names
                else next((n for n in names if n.lower() == part.lower()), None)
            )
            if hit is None:
                return None
            cur = posixpath.join(cur, hit)
        return cur

    # -- reads: the stream's blobs, else the appliance --------------------------

    def _read_fallback(self, name: str, path: str) -> None:
        self.read_fallbacks[name] += 1
        if len(self.read_fallback_paths) < 20:
            self.read_fallback_paths.append(path)

    def _blob(self, path: str) -> tuple[int, bytes] | None:
        if not self.blobs.blobs:
            return None
        try:
            real = self.index.resolve(path, True)
        except _Gap:
            return None
        return None if real is None else self.blobs.get(real)

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        got = self._blob(path)
        if got is not None:
            size, data = got
            if size > limit:
                raise TooLargeError(f"{path}: {size} bytes is over the {limit} byte limit")
            if len(data) == size:
                self.streamed_reads += 1
                return data
        self._read_fallback("read_bytes", path)
        return self.backend.read_bytes(path, limit)

    def read_head(self, path: str, size: int) -> bytes:
        got = self._blob(path)
        if got is not None and len(got[1]) >= min(size, got[0]):
            self.streamed_reads += 1
            return got[1][:size]
        self._read_fallback("read_head", path)
        return self.backend.read_head(path, size)

    @contextlib.contextmanager
    def _blob_file(self, data: bytes) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="vmscan-") as tmp:
            out = Path(tmp) / "file"
            out.write_bytes(data)
            yield out

    def materialize(self, path: str, limit: int) -> contextlib.AbstractContextManager[Path]:
        got = self._blob(path)
        if got is not None and len(got[1]) == got[0]:
            if got[0] > limit:
                raise TooLargeError(f"{path}: {got[0]} bytes is over the {limit} byte limit")
            self.streamed_reads += 1
            return self._blob_file(got[1])
        self._read_fallback("materialize", path)
        return self.backend.materialize(path, limit)

    def open_hive(self, path: str) -> Hive:
        """A hive the stream delivered is parsed on the host (python3-hivex) from a private
        copy, removed once it is open; any other goes to the appliance's hivex."""
        got = self._blob(path)
        if got is None or len(got[1]) != got[0]:
            self._read_fallback("open_hive", path)
            return self.backend.open_hive(path)
        from vmscan.hive import HostHive

        self.streamed_reads += 1
        with tempfile.TemporaryDirectory(prefix="vmscan-hive-") as tmp:
            copy = Path(tmp) / "hive"
            copy.write_bytes(got[1])
            # hivex reads the file when it opens it: the copy can go right after.
            hive: Hive = HostHive(copy, label=path)
        return hive

    def read_device(self, device: str, size: int, offset: int) -> bytes | None:
        return self.backend.read_device(device, size, offset)

    def statvfs(self, path: str) -> dict[str, int] | None:
        return self.backend.statvfs(path)
