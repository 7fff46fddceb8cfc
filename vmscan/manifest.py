"""The file manifest of a mounted root: metadata and SHA-256 of every regular file.

Batched, never one round trip per file: ``find0`` lists the tree in one call,
``lstatnslist`` stats a whole directory per call, and ``checksums_out`` hashes every
file inside the appliance in one streamed call (measured here under TCG: in-appliance
SHA-256 is about twice as fast as streaming the bytes out with ``tar_out``).

Names that are not UTF-8 cannot be passed to the libguestfs Python bindings as
arguments, so entries below a directory holding such names are read with one
``tar_out`` of that directory and hashed on the host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat as statmod
import tarfile
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vmscan.errors import GuestError
from vmscan.model import FileEntry
from vmscan.pathenc import encode_path, needs_escape

log = logging.getLogger(__name__)

#: lstatnslist batch: well under the 4 MB protocol message limit.
_STAT_BATCH = 2000
#: Cap on the find0 listing brought to the host (hostile trees).
MAX_LISTING_BYTES = 512 * 1024 * 1024


class WalkSink(Protocol):
    """Receives the walk as it happens (:class:`vmscan.guestindex.FileIndex` is one)."""

    def batch(self, parent: bytes, names: list[bytes], stats: list[dict[str, Any]] | None) -> None:
        """``lstatnslist`` of *names* in *parent* (relative to "/"); None when it failed."""

    def incomplete(self, dir_raw: bytes) -> None:
        """The walk could not see all of *dir_raw* (b"": the whole tree)."""


def _device_for(path: str, mounts: list[tuple[str, str]]) -> str:
    """The device whose mountpoint is the longest prefix of *path*."""
    for mp, dev in mounts:
        if mp == "/" or path == mp or path.startswith(mp.rstrip("/") + "/"):
            return dev
    return mounts[-1][1] if mounts else ""


def parse_checksums(data: bytes) -> dict[bytes, str]:
    """Parse ``sha256sum`` output (``HASH  ./path``), undoing its escapes for ``\\``/newline."""
    out: dict[bytes, str] = {}
    for line in data.split(b"\n"):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line.partition(b"  ")
        if not sep or len(digest) != 64:
            continue
        if escaped:
            name = _unescape_sum_name(name)
        out[name.removeprefix(b"./")] = digest.decode("ascii", "replace")
    return out


def _unescape_sum_name(name: bytes) -> bytes:
    res = bytearray()
    i = 0
    while i < len(name):
        c = name[i : i + 1]
        if c == b"\\" and i + 1 < len(name):
            nxt = name[i + 1 : i + 2]
            res += b"\n" if nxt == b"n" else b"\r" if nxt == b"r" else nxt
            i += 2
        else:
            res += c
            i += 1
    return bytes(res)


def _glob_escape(name: str) -> str:
    """Escape a name for tar's wildcard exclude patterns."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in name)


def _hash_members(tf: tarfile.TarFile) -> list[tuple[bytes, tarfile.TarInfo, str | None]]:
    out: list[tuple[bytes, tarfile.TarInfo, str | None]] = []
    for ti in tf:
        rel = os.fsencode(ti.name).removeprefix(b"./").rstrip(b"/")
        digest = None
        if ti.isreg():
            h = hashlib.sha256()
            src = tf.extractfile(ti)
            if src is not None:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
            digest = h.hexdigest()
        out.append((rel, ti, digest))
    return out


def _tar_out_entries(
    g: Any, dir_raw: bytes, excludes: list[str]
) -> list[tuple[bytes, tarfile.TarInfo, str | None]]:
    """Stream one directory out with tar_out and hash its regular files on the host."""
    results: list[tuple[bytes, tarfile.TarInfo, str | None]] = []
    rfd, wfd = os.pipe()
    err: list[BaseException] = []

    def produce() -> None:
        try:
            g.tar_out(
                "/" + dir_raw.decode("utf-8"),
                f"/dev/fd/{wfd}",
                numericowner=True,
                excludes=excludes,
            )
        except BaseException as e:  # reported below
            err.append(e)
        finally:
            # Our copy of the write end: closing it gives the reader its EOF.
            os.close(wfd)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    with os.fdopen(rfd, "rb") as fh:
        try:
            with tarfile.open(
                fileobj=fh, mode="r|", encoding="utf-8", errors="surrogateescape"
            ) as tf:
                results.extend(_hash_members(tf))
        except tarfile.TarError as e:
            log.warning("tar_out of %r: %s", dir_raw, e)
        # Drain so that the producer can finish.
        while fh.read(1 << 20):
            pass
    t.join()
    if err:
        log.warning("tar_out of %r failed: %s", dir_raw, err[0])
    return results


def build_manifest(
    g: Any,
    mounts: list[tuple[str, str]],
    progress: Callable[[int], None] | None = None,
    prefix: str = "",
    walk: WalkSink | None = None,
) -> tuple[list[FileEntry], list[str]]:
    """Manifest of everything mounted under ``/`` in the appliance.

    *mounts* is ``[(mountpoint, device)]``. *prefix* is prepended to reported paths
    (unused for roots). Returns the entries and a list of problems (human-readable).
    *walk*, when given, receives every entry's ``lstat`` (not only regular files'), so
    that the scanner's index needs no walk of its own.
    """
    problems: list[str] = []
    mounts = sorted(mounts, key=lambda m: len(m[0]), reverse=True)
    with tempfile.TemporaryDirectory(prefix="vmscan-man-") as tmp:
        listing = os.path.join(tmp, "find0")
        g.find0("/", listing)
        if os.path.getsize(listing) > MAX_LISTING_BYTES:
            problems.append("file listing larger than the limit; manifest truncated")
            if walk is not None:
                walk.incomplete(b"")
        with open(listing, "rb") as fh:
            names = [n for n in fh.read(MAX_LISTING_BYTES).split(b"\0") if n]
        sums_path = os.path.join(tmp, "sums")
        sums_ok = True
        try:
            g.checksums_out("sha256", "/", sums_path)
        except GuestError as e:
            # One unreadable file makes sha256sum fail and the daemon cancel the
            # transfer; keep what arrived and hash the rest one by one below.
            sums_ok = False
            log.info("checksums_out incomplete: %s", e)
        sums: dict[bytes, str] = {}
        if os.path.exists(sums_path):
            with open(sums_path, "rb") as fh:
                sums = parse_checksums(fh.read())

    # Directories whose children include non-UTF-8 names: handled by tar_out.
    bad_dirs: set[bytes] = set()
    by_dir: dict[bytes, list[bytes]] = defaultdict(list)
    for rel in names:
        parent, _, base = rel.rpartition(b"/")
        if needs_escape(rel):
            # the topmost ancestor path that is still valid UTF-8
            parts = rel.split(b"/")
            anc: list[bytes] = []
            for part in parts:
                if needs_escape(part):
                    break
                anc.append(part)
            bad_dirs.add(b"/".join(anc))
            continue
        by_dir[parent].append(base)

    entries: list[FileEntry] = []
    done = 0
    # Every path below a non-UTF-8 component is itself non-UTF-8, so the groups in
    # by_dir never overlap with what the tar_out pass below covers.
    for parent, bases in by_dir.items():
        dir_str = "/" + parent.decode("utf-8")
        for i in range(0, len(bases), _STAT_BATCH):
            batch = bases[i : i + _STAT_BATCH]
            strs = [b.decode("utf-8") for b in batch]
            try:
                stats = g.lstatnslist(dir_str, strs)
            except GuestError as e:
                problems.append(f"{dir_str}: cannot stat entries: {e}")
                if walk is not None:
                    walk.batch(parent, batch, None)
                continue
            if walk is not None:
                walk.batch(parent, batch, stats)
            for base, st in zip(batch, stats, strict=False):
                if not statmod.S_ISREG(st["st_mode"]):
                    continue
                rel = parent + b"/" + base if parent else base
                digest = sums.get(rel)
                error = None
                gpath = "/" + rel.decode("utf-8")
                if digest is None:
                    try:
                        digest = str(g.checksum("sha256", gpath))
                    except GuestError as e:
                        error = f"unreadable: {e}"
                        problems.append(f"{gpath}: {error}")
                entries.append(
                    FileEntry(
                        device=_device_for(gpath, mounts),
                        path=prefix + encode_path(b"/" + rel),
                        size=st["st_size"],
                        mode=st["st_mode"],
                        uid=st["st_uid"],
                        gid=st["st_gid"],
                        mtime=st["st_mtime_sec"],
                        sha256=digest,
                        error=error,
                    )
                )
                done += 1
            if progress:
                progress(done)

    for bad in sorted(bad_dirs):
        if walk is not None:
            walk.incomplete(bad)
        # Stream only the non-UTF-8 children of this directory (with their subtrees).
        keep_out = ["./" + _glob_escape(b.decode("utf-8")) for b in by_dir.get(bad, [])]
        for rel_in_dir, ti, digest in _tar_out_entries(g, bad, keep_out):
            if not ti.isreg():
                continue
            rel = bad + b"/" + rel_in_dir if bad else rel_in_dir
            gpath = "/" + rel.decode("utf-8", "replace")
            entries.append(
                FileEntry(
                    device=_device_for(gpath, mounts),
                    path=prefix + encode_path(b"/" + rel),
                    size=ti.size,
                    mode=statmod.S_IFREG | ti.mode,
                    uid=ti.uid,
                    gid=ti.gid,
                    mtime=int(ti.mtime),
                    sha256=digest,
                )
            )
    if not sums_ok and not any(e.error for e in entries):
        log.debug("checksums_out failed but every file was hashed individually")
    entries.sort(key=lambda e: e.path)
    return entries, problems


def sha256_file(path: Path) -> str:
    """SHA-256 of a host file (tests, image identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
