"""``/usr/share/doc`` copyright files fetched from the appliance in one ``tar_out``.

Reading 100-1000 copyright files one by one costs several appliance round trips each
(seconds per hundred under TCG). With a libguestfs handle the licence check instead
streams the doc tree once (documentation bodies excluded) and serves the copyright files
and doc-dir symlinks from memory through :class:`DocTreeFS`, a read-only :class:`GuestFS`
that answers for ``/usr/share/doc`` and passes everything else to the real view.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import posixpath
import sqlite3
import stat as statmod
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmscan.completeness import info
from vmscan.errors import GuestError, GuestReadError, TooLargeError
from vmscan.filecache import BlobCache
from vmscan.guestfs_view import DEFAULT_READ_LIMIT, GuestFS, Hive, Stat
from vmscan.model import FileEntry
from vmscan.stream import TarStream, exclude_pattern

log = logging.getLogger(__name__)

DOC_ROOT = "/usr/share/doc"
#: Largest doc tree streamed (bytes of the files the manifest says will be sent).
MAX_TREE_BYTES = 256 * 1024 * 1024
#: Bytes kept of one copyright file (the parser reads at most this much anyway).
MAX_MEMBER_BYTES = 4 * 1024 * 1024
#: Documentation bodies never needed for licences: left out of the stream.
TAR_EXCLUDES = (
    "*.gz", "*.bz2", "*.xz", "*.zst", "*.html", "*.htm", "*.pdf", "*.ps", "*.dvi", "*.png",
    "*.jpg", "*.gif", "*.svg", "*.css", "*.js", "*.json", "*.xml", "*.txt", "*.md", "*.rst",
    "*.py", "*.c", "*.h", "*.pl", "*.sh", "*.el", "*.info", "*.tex", "*.ico",
    "*/examples", "*/html", "*/api", "*/manual", "*/tutorial", "*/contrib",
    "*/NEWS*", "*/README*", "*/changelog*", "*/AUTHORS*", "*/THANKS*", "*/TODO*",
)  # fmt: skip


def _excluded(rel: str) -> bool:
    # Same reading as GNU tar's --exclude (wildcards match "/" and any path component).
    parts = rel.split("/")
    for pat in TAR_EXCLUDES:
        bare = pat.removeprefix("*/")
        if fnmatch.fnmatchcase(rel, pat) or any(fnmatch.fnmatchcase(p, bare) for p in parts):
            return True
    return False


def expected_tree_bytes(manifest: list[FileEntry]) -> int | None:
    """Bytes the stream would carry, from the manifest; None without a manifest."""
    if not manifest:
        return None
    total = 0
    prefix = DOC_ROOT + "/"
    for fe in manifest:
        if fe.path.startswith(prefix) and not _excluded(fe.path[len(prefix) :]):
            total += fe.size
    return total


class DocTreeFS:
    """A :class:`GuestFS` whose ``/usr/share/doc`` comes from a tar of the guest's."""

    def __init__(self, fallback: GuestFS, *, metadata_from_fallback: bool = False) -> None:
        self.fallback = fallback
        # guest path → (Stat, data or link target)
        self.entries: dict[str, tuple[Stat, bytes | str]] = {}
        #: Only file contents are held here (from the blob cache); stat, listdir and
        #: readlink go to *fallback* (the indexed view: no round trip).
        self.metadata_from_fallback = metadata_from_fallback

    @classmethod
    def from_tar(cls, tar_path: Path, fallback: GuestFS) -> DocTreeFS:
        """Members of a ``tar_out`` of /usr/share/doc: dirs, symlinks, copyright files."""
        self = cls(fallback)
        with tarfile.open(tar_path, "r:") as tar:
            for m in tar:
                rel = posixpath.normpath(m.name.removeprefix("./") or ".")
                if rel.startswith("..") or rel.startswith("/"):
                    continue
                path = DOC_ROOT if rel == "." else f"{DOC_ROOT}/{rel}"
                mtime = int(m.mtime)
                if m.isdir():
                    self.entries[path] = (Stat(statmod.S_IFDIR | 0o755, 0, 0, 0, mtime), b"")
                elif m.issym():
                    st = Stat(statmod.S_IFLNK | 0o777, len(m.linkname), 0, 0, mtime)
                    self.entries[path] = (st, m.linkname)
                elif m.isfile() and posixpath.basename(rel) == "copyright":
                    fh = tar.extractfile(m)
                    data = fh.read(MAX_MEMBER_BYTES) if fh is not None else b""
                    st = Stat(statmod.S_IFREG | 0o644, int(m.size), 0, 0, mtime)
                    self.entries[path] = (st, data)
        return self

    def _mine(self, path: str) -> bool:
        norm = posixpath.normpath(path)
        if self.metadata_from_fallback:
            return norm in self.entries
        return norm == DOC_ROOT or norm.startswith(DOC_ROOT + "/")

    def lstat(self, path: str) -> Stat | None:
        norm = posixpath.normpath(path)
        if norm in ("/", "/usr", "/usr/share") and not self.metadata_from_fallback:
            return Stat(statmod.S_IFDIR | 0o755, 0, 0, 0, 0)
        if self._mine(norm):
            e = self.entries.get(norm)
            return e[0] if e else None
        return self.fallback.lstat(path)

    def exists(self, path: str) -> bool:
        return self.lstat(path) is not None

    def is_file(self, path: str) -> bool:
        st = self.lstat(path)
        return st is not None and st.is_file

    def is_dir(self, path: str) -> bool:
        st = self.lstat(path)
        return st is not None and st.is_dir

    def listdir(self, path: str) -> list[str]:
        norm = posixpath.normpath(path)
        if not self._mine(norm) or self.metadata_from_fallback:
            return self.fallback.listdir(path)
        return sorted(posixpath.basename(p) for p in self.entries if posixpath.dirname(p) == norm)

    def _data(self, path: str) -> tuple[Stat, bytes]:
        e = self.entries.get(posixpath.normpath(path))
        if e is None or not e[0].is_file or not isinstance(e[1], bytes):
            raise GuestReadError(f"{path}: not a regular file in the doc tree")
        return e[0], e[1]

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        if not self._mine(path):
            return self.fallback.read_bytes(path, limit)
        st, data = self._data(path)
        if st.size > limit or st.size > len(data):
            raise TooLargeError(f"{path}: {st.size} bytes is over the {limit} byte limit")
        return data

    def read_head(self, path: str, size: int) -> bytes:
        if not self._mine(path):
            return self.fallback.read_head(path, size)
        return self._data(path)[1][:size]

    def readlink(self, path: str) -> str | None:
        if not self._mine(path) or self.metadata_from_fallback:
            return self.fallback.readlink(path)
        e = self.entries.get(posixpath.normpath(path))
        return e[1] if e is not None and isinstance(e[1], str) else None

    def glob(self, pattern: str) -> list[str]:
        return self.fallback.glob(pattern)

    def materialize(self, path: str, limit: int) -> contextlib.AbstractContextManager[Path]:
        return self.fallback.materialize(path, limit)

    def open_hive(self, path: str) -> Hive:
        return self.fallback.open_hive(path)

    def statvfs(self, path: str) -> dict[str, int] | None:
        return self.fallback.statvfs(path)


def _copyright_entries(manifest: list[FileEntry]) -> dict[str, FileEntry]:
    prefix = DOC_ROOT + "/"
    return {
        fe.path: fe
        for fe in manifest
        if fe.path.startswith(prefix)
        and posixpath.basename(fe.path) == "copyright"
        and not fe.error
    }


def _cached_blobs(cache_db: str | None, wanted: dict[str, FileEntry]) -> dict[str, bytes]:
    """guest path -> content, for the copyright files whose hash the blob cache holds."""
    hashes = {fe.sha256.lower() for fe in wanted.values() if fe.sha256}
    if not cache_db or not hashes:
        return {}
    try:
        cache = BlobCache(cache_db)
        try:
            blobs = cache.get(hashes)
        finally:
            cache.close()
    except sqlite3.Error as e:
        log.info("doc blob cache unusable (%s): copyright files streamed", e)
        return {}
    return {
        p: blobs[fe.sha256.lower()]
        for p, fe in wanted.items()
        if fe.sha256 and fe.sha256.lower() in blobs
    }


def _remember(cache_db: str | None, view: DocTreeFS, wanted: dict[str, FileEntry]) -> None:
    """Keep the streamed copyright files whole (not cut at MAX_MEMBER_BYTES) by content."""
    if not cache_db:
        return
    blobs = [
        data
        for path, (st, data) in view.entries.items()
        if path in wanted and isinstance(data, bytes) and len(data) == st.size
    ]
    try:
        cache = BlobCache(cache_db)
        try:
            cache.put(blobs)
        finally:
            cache.close()
    except sqlite3.Error as e:
        log.info("doc blob cache not updated: %s", e)


@contextlib.contextmanager
def prefetched_docs(
    handle: Any,
    fs: GuestFS,
    manifest: list[FileEntry],
    notes: list[str],
    cache_db: str | None = None,
) -> Iterator[GuestFS]:
    """A view serving /usr/share/doc from one ``tar_out``; *fs* itself when that is not
    possible (no handle, no manifest to size it, a tree too large, a failed transfer).

    With *cache_db*, copyright files whose hash (from the manifest, so from the hash
    cache on a rescan) is in its blob cache are served from there and left out of the
    stream; when that is all of them nothing is streamed and *fs* (the indexed view)
    answers the metadata.
    """
    if handle is None:
        yield fs
        return
    size = expected_tree_bytes(manifest)
    if size is None or size > MAX_TREE_BYTES:
        if size is not None:
            notes.append(
                info(f"{DOC_ROOT} holds {size} bytes of docs: copyright files read one by one")
            )
        yield fs
        return
    wanted = _copyright_entries(manifest)
    cached = _cached_blobs(cache_db, wanted)
    if wanted and len(cached) == len(wanted):
        view = DocTreeFS(fs, metadata_from_fallback=True)
        for path, data in cached.items():
            fe = wanted[path]
            view.entries[path] = (Stat(statmod.S_IFREG | 0o644, fe.size, 0, 0, fe.mtime), data)
        yield view
        return
    skip = [exclude_pattern(p[len(DOC_ROOT) + 1 :].encode()) for p in cached]
    excludes = [*TAR_EXCLUDES, *(p for p in skip if p is not None)]
    with tempfile.TemporaryDirectory(prefix="vmscan-doc-") as tmp:
        tar_path = Path(tmp) / "doc.tar"
        try:
            if (
                TarStream.to_file(handle, DOC_ROOT, str(tar_path), excludes)
                > MAX_TREE_BYTES + 64 * 1024 * 1024
            ):
                raise GuestReadError("doc tree larger than the manifest said")
            view = DocTreeFS.from_tar(tar_path, fs)
        except (GuestError, OSError, tarfile.TarError, GuestReadError) as e:
            # The fallback reads every file itself: slower, not less complete.
            notes.append(
                info(f"{DOC_ROOT} bulk read failed ({e}): copyright files read one by one")
            )
            yield fs
            return
        _remember(cache_db, view, wanted)
        for path, data in cached.items():
            fe = wanted[path]
            view.entries[path] = (Stat(statmod.S_IFREG | 0o644, fe.size, 0, 0, fe.mtime), data)
        yield view
