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
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vmscan.errors import ApplianceDiedError, GuestError
from vmscan.model import FileEntry
from vmscan.pathenc import decode_path, encode_path, needs_escape
from vmscan.stream import READ_ERRORS, TarStream, build_excludes, exclude_pattern
from vmscan.timings import Timings
from vmscan.walk import STAT_BATCH, Listing, WalkLimits, find0_listing

log = logging.getLogger(__name__)


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


def _hash_stream(
    g: Any, dir_raw: bytes, excludes: list[str], wanted: Callable[[bytes], bool]
) -> tuple[list[tuple[bytes, tarfile.TarInfo, str | None]], str | None]:
    """Stream one directory out and hash the regular members *wanted* keeps, on the host.

    Returns ``(rel path, member, sha256)`` per wanted member and the transfer's error.
    """
    results: list[tuple[bytes, tarfile.TarInfo, str | None]] = []
    directory = "/" + dir_raw.decode("utf-8")
    src = TarStream(g, excludes, directory)
    try:
        for raw, ti, tf in src.members():
            rel = raw.lstrip(b"/")
            if not rel or not wanted(rel):
                continue
            digest = None
            if ti.isreg():
                fh = tf.extractfile(ti)
                if fh is not None:
                    h = hashlib.sha256()
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                    digest = h.hexdigest()
            results.append((rel, ti, digest))
    finally:
        src.close(cancel=False)
    if src.error:
        log.warning("tar_out of %r: %s", dir_raw, src.error)
    return results, src.error


def _not_examined(rel: bytes, mounts: list[tuple[str, str]], prefix: str, why: str) -> FileEntry:
    """A listed path that was not examined: in the manifest with the reason, never a gap."""
    return FileEntry(
        device=_device_for("/" + rel.decode("utf-8", "replace"), mounts),
        path=prefix + encode_path(b"/" + rel),
        size=0,
        mode=0,
        uid=0,
        gid=0,
        mtime=0,
        sha256=None,
        error=why,
    )


def _not_in(listed: set[bytes]) -> Callable[[bytes], bool]:
    """Keeps a streamed path whose first component is not one of *listed*."""
    return lambda rel: rel.split(b"/", 1)[0] not in listed


def build_manifest(
    g: Any,
    mounts: list[tuple[str, str]],
    progress: Callable[[int], None] | None = None,
    prefix: str = "",
    timings: Timings | None = None,
    hash_files: bool = True,
    walk: WalkSink | None = None,
    listing: Listing | None = None,
    limits: WalkLimits | None = None,
) -> tuple[list[FileEntry], list[str]]:
    """Manifest of everything mounted under ``/`` in the appliance.

    *mounts* is ``[(mountpoint, device)]``. *prefix* is prepended to reported paths
    (unused for roots). Returns the entries and a list of problems (human-readable).

    With *hash_files* false the regular files are not hashed here (``sha256`` and
    ``error`` both None): the root's content stream hashes them on the host as they pass
    (the antivirus scan, then :func:`hash_pending` for what it did not take).

    *walk*, when given, receives every entry's ``lstat`` (not only regular files'), so
    that the scanner's index needs no walk of its own.

    *listing* is the tree to walk (:mod:`vmscan.walk`; one ``find0`` cut at *limits*
    when None). Every folder it cut is a manifest entry with the reason, so what was not
    walked is never missing without a word.
    """
    problems: list[str] = []
    tm = timings or Timings()
    mounts = sorted(mounts, key=lambda m: len(m[0]), reverse=True)
    if listing is None:
        with tm.phase("walk"):
            listing = find0_listing(g, limits or WalkLimits())
    names = listing.names
    for cut in listing.cuts:
        problems.append(cut.message())
        if walk is not None:
            walk.incomplete(cut.folder)
    with tempfile.TemporaryDirectory(prefix="vmscan-man-") as tmp:
        sums_path = os.path.join(tmp, "sums")
        sums_ok = True
        try:
            if hash_files:
                with tm.phase("hash"):
                    g.checksums_out("sha256", "/", sums_path)
        except ApplianceDiedError:
            raise  # a dead appliance is not an unreadable file
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
    # Non-UTF-8 path -> the directory whose tar_out must deliver it.
    escaped: dict[bytes, bytes] = {}
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
            escaped[rel] = b"/".join(anc)
            continue
        by_dir[parent].append(base)

    entries: list[FileEntry] = []
    done = 0
    # Every path below a non-UTF-8 component is itself non-UTF-8, so the groups in
    # by_dir never overlap with what the tar_out pass below covers.
    for parent, bases in by_dir.items():
        dir_str = "/" + parent.decode("utf-8")
        for i in range(0, len(bases), STAT_BATCH):
            batch = bases[i : i + STAT_BATCH]
            strs = [b.decode("utf-8") for b in batch]
            known = [listing.stats.get(parent + b"/" + b if parent else b) for b in batch]
            try:
                if all(st is not None for st in known):
                    # The folder walk stat'ed them already: not twice.
                    stats = [st for st in known if st is not None]
                else:
                    with tm.phase("walk"):
                        stats = g.lstatnslist(dir_str, strs)
            except ApplianceDiedError:
                raise  # a dead appliance is not an unreadable file
            except GuestError as e:
                problems.append(f"{dir_str}: cannot stat entries: {e}")
                if walk is not None:
                    walk.batch(parent, batch, None)
                # Listed but not examined: in the manifest with the reason, never a gap.
                for base in batch:
                    rel = parent + b"/" + base if parent else base
                    entries.append(
                        _not_examined(rel, mounts, prefix, f"cannot stat: {str(e)[:200]}")
                    )
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
                if digest is None and hash_files:
                    try:
                        with tm.phase("hash"):
                            digest = str(g.checksum("sha256", gpath))
                    except ApplianceDiedError:
                        raise  # a dead appliance is not an unreadable file
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
                        ident=(
                            st["st_size"],
                            st["st_mtime_sec"] * 1_000_000_000 + st["st_mtime_nsec"],
                            st["st_ctime_sec"] * 1_000_000_000 + st["st_ctime_nsec"],
                            st["st_ino"],
                        ),
                    )
                )
                done += 1
                if digest is not None:
                    tm.count("hashed_in_appliance", st["st_size"])
            if progress:
                progress(done)

    for bad in sorted(bad_dirs):
        if walk is not None:
            walk.incomplete(bad)
        # Stream only the non-UTF-8 children of this directory (with their subtrees). A
        # UTF-8 sibling whose name cannot be an exclude pattern (a newline) travels too
        # and is dropped here: it was listed and hashed above.
        siblings = by_dir.get(bad, [])
        keep_out = [p for p in (exclude_pattern(b) for b in siblings) if p is not None]
        with tm.phase("hash"):
            streamed, err = _hash_stream(g, bad, keep_out, _not_in(set(siblings)))
        got = {bad + b"/" + r if bad else r for r, _ti, _d in streamed}
        # Listed by find0 but absent from the stream: never a silent gap.
        for rel in sorted(n for n, d in escaped.items() if d == bad and n not in got):
            why = f"not delivered by tar_out ({err or 'missing from the stream'})"[:300]
            problems.append(f"{encode_path(b'/' + rel)}: {why}")
            entries.append(_not_examined(rel, mounts, prefix, why))
        for rel_in_dir, ti, digest in streamed:
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
    for cut in listing.cuts:
        entries.append(_not_examined(cut.folder, mounts, prefix, cut.reason()[:300]))
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


def hash_pending(
    g: Any, entries: list[FileEntry], timings: Timings | None = None, in_appliance: bool = False
) -> list[str]:
    """Hash, from one host-side ``tar_out`` stream, every entry not hashed yet.

    Entries the root's content stream did not hash (no antivirus check, a check that
    failed, files the hash cache did not know) get their SHA-256 here; what the stream
    does not deliver gets an ``error``. Returns the problems (human-readable).

    With *in_appliance* (no consumer needs the content on the host) and most files still
    to hash, ``checksums_out`` hashes them inside the appliance instead: measured here it
    is faster than moving the bytes out (32 against 17 MB/s).
    """
    pending = {e.path: e for e in entries if e.sha256 is None and e.error is None}
    if not pending:
        return []
    tm = timings or Timings()
    problems: list[str] = []
    if in_appliance and len(pending) * 2 > len(entries):
        with tempfile.TemporaryDirectory(prefix="vmscan-man-") as tmp:
            sums_path = os.path.join(tmp, "sums")
            try:
                with tm.phase("hash"):
                    g.checksums_out("sha256", "/", sums_path)
            except GuestError as err:
                log.info("checksums_out incomplete: %s", err)
            sums: dict[bytes, str] = {}
            if os.path.exists(sums_path):
                with open(sums_path, "rb") as sums_fh:
                    sums = parse_checksums(sums_fh.read())
        for entry in pending.values():
            digest = sums.get(decode_path(entry.path).lstrip(b"/"))
            if digest is not None:
                entry.sha256 = digest
                tm.count("hashed_in_appliance", entry.size)
        pending = {p: x for p, x in pending.items() if x.sha256 is None}
        if not pending:
            return []
    excludes = build_excludes(entries, set(pending))
    got: set[str] = set()
    with tm.phase("hash"):
        src = TarStream(g, excludes)
        try:
            for raw, ti, tf in src.members():
                e = pending.get(encode_path(raw))
                if e is None or not ti.isreg() or e.path in got:
                    continue
                fh = tf.extractfile(ti)
                if fh is None:
                    continue
                h = hashlib.sha256()
                try:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                except READ_ERRORS as err:
                    e.error = f"unreadable: {str(err)[:200]}"
                    continue
                e.sha256 = h.hexdigest()
                got.add(e.path)
                if len(got) == len(pending):
                    break
        finally:
            src.close(cancel=False)
    for path, e in sorted(pending.items()):
        if e.sha256 is None and e.error is None:
            e.error = f"not delivered by tar_out ({src.error or 'missing from the stream'})"[:300]
            problems.append(f"{path}: {e.error}")
    return problems
