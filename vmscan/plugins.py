"""Plugin bases (catalogers fill ``packages``, checks add ``findings``) and how they are run.

Plugins are registered in explicit tuples (``ALL_CATALOGERS``, ``ALL_CHECKS`` in
:mod:`vmscan.registry`), never by import side effects. ``NAME`` and ``VERSION`` go
into the report's plugin status list (bump ``VERSION`` when a plugin's behaviour changes).

Each plugin declares the content it needs (:class:`Requirements`, and for a check that
takes whole files as they pass, a :class:`vmscan.rootstream.MemberConsumer`);
:func:`prefetch` merges them and moves every needed file out of the appliance once, in
the root's one ``tar_out``, before the plugins run (see :func:`vmscan.rootstream.stream_root`).
"""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import logging
import sqlite3
import stat
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmscan.completeness import PluginState, bound, plugin_status, skipped
from vmscan.errors import ApplianceDiedError
from vmscan.filecache import BlobCache
from vmscan.guestfs_view import GuestFS
from vmscan.model import (
    FileEntry,
    Finding,
    ImageResult,
    OSInfo,
    Package,
    PluginStatus,
    RootResult,
)
from vmscan.rootstream import (
    BLOB_ONLY_MIN,
    BlobRequest,
    BlobStore,
    MemberConsumer,
    StreamReport,
    stream_root,
)

log = logging.getLogger(__name__)


@dataclass
class ScanContext:
    """What a plugin may use for one root besides the guest view."""

    root: RootResult
    manifest: list[FileEntry]
    options: dict[str, Any] = field(default_factory=dict)
    # Facts about the whole image (partition tables, filesystems, disks).
    image_facts: dict[str, Any] = field(default_factory=dict)
    # Per-plugin notes (e.g. "copyright file of foo is not UTF-8"): end up in the report.
    notes: list[str] = field(default_factory=list)
    # The image being scanned (image-level sections such as ``antivirus`` go here).
    image: ImageResult | None = None
    # What a plugin's ``consumer`` prepared before the stream, for its ``run`` (by NAME);
    # an exception there is the plugin's failure, raised when it runs.
    prepared: dict[str, Any] = field(default_factory=dict)


#: Default per-file limit of a requirement: bytes kept (the head of a larger file).
REQUIRED_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Requirements:
    """Content one plugin needs from the root's stream, matched on manifest entries.

    A regular file is needed when its path is in *paths*, matches one of *globs*
    (``fnmatch``, so ``*`` crosses "/"), or *predicate* says so; at most *max_bytes* of
    it are kept (its head when larger; with *whole*, a larger file is not kept at all:
    its reader wants all of it and reads it from the appliance). *persist*: whole files
    are also kept by content in the cache database (``doc_blobs``), so that a rescan or a
    clone is served from there instead of streaming them again. *if_streamed*: kept only
    when the file passes in the stream anyway (the heads of executables: a ``tar_out``
    carries whole files, so asking for a head alone would cost the whole file).
    """

    paths: frozenset[str] = frozenset()
    globs: tuple[str, ...] = ()
    predicate: Callable[[FileEntry], bool] | None = None
    max_bytes: int = REQUIRED_MAX_BYTES
    whole: bool = False
    persist: bool = False
    if_streamed: bool = False

    def __bool__(self) -> bool:
        return bool(self.paths or self.globs or self.predicate)

    def matches(self, e: FileEntry) -> bool:
        if e.path in self.paths:
            return True
        if any(fnmatch.fnmatchcase(e.path, g) for g in self.globs):
            return True
        return self.predicate is not None and self.predicate(e)


class _Plugin:
    NAME: str = ""

    def requirements(self, ctx: ScanContext) -> tuple[Requirements, ...]:
        """Files whose content this plugin reads (served from the stream): none by default."""
        return ()

    def consumer(self, fs: GuestFS, ctx: ScanContext) -> MemberConsumer | None:
        """Takes whole files as the stream passes (the antivirus scanner); None here."""
        return None


class Cataloger(_Plugin, abc.ABC):
    """Finds installed packages of one format. Pure parsing lives in separate functions."""

    NAME: str = ""
    VERSION: str = "1"

    @abc.abstractmethod
    def applies(self, fs: GuestFS, os_info: OSInfo) -> bool:
        """True when this package database is present (by presence, not by distro name)."""

    @abc.abstractmethod
    def catalog(self, fs: GuestFS, ctx: ScanContext) -> list[Package]:
        """Packages found; raise only for a fatal failure, add notes for partial ones."""


class Check(_Plugin, abc.ABC):
    """Produces findings for one root from the guest, packages and manifest."""

    NAME: str = ""
    VERSION: str = "1"

    @abc.abstractmethod
    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        """Findings; may also put a section into ``ctx.root.sections``."""


def _is_regular(e: FileEntry) -> bool:
    return e.error is None and (e.mode & 0o170000) == 0o100000


def _not_regular(fs: Any) -> list[str]:
    """Paths of the root's index entries that are not regular files (none without one)."""
    index = getattr(fs, "index", None)
    stats = getattr(index, "stats", None)
    if not isinstance(stats, dict):
        return []
    return [p for p, st in stats.items() if not stat.S_ISREG(st.mode)]


def prefetch(
    handle: Any,
    fs: Any,
    ctx: ScanContext,
    plugins: Iterable[_Plugin],
    hash_paths: Iterable[str] = (),
    blob_only_min: int = BLOB_ONLY_MIN,
    helpers: Sequence[Callable[[], Any | None]] = (),
    split_min_bytes: int = 0,
) -> StreamReport:
    """Merge what *plugins* need and move it out of the appliance in ONE ``tar_out``
    (one per appliance when *helpers* share it: :func:`vmscan.rootstream.stream_root`).

    *fs* is the root's :class:`vmscan.guestindex.IndexedFS`: the blobs land in its store.
    Consumers (in plugin order) take whole files; requirements' files are kept as blobs
    (those the blob cache already holds by hash are served from there, not streamed);
    *hash_paths* are hashed on the host as they pass. A plugin whose consumer could not
    be made fails when it runs, with that error.
    """
    # The indexed view serves reads from its store; another view only feeds consumers.
    blobs: BlobStore = getattr(fs, "blobs", None) or BlobStore()
    consumers: dict[str, MemberConsumer] = {}
    wanted: list[Requirements] = []
    for p in plugins:
        try:
            c = p.consumer(fs, ctx)
        except Exception as err:  # the plugin fails when it runs, not the image
            log.debug("consumer of %s failed", p.NAME, exc_info=True)
            ctx.prepared[p.NAME] = err
            c = None
        if c is not None:
            consumers[p.NAME] = c
        wanted.extend(r for r in p.requirements(ctx) if r)
    requests: dict[str, BlobRequest] = {}
    for e in ctx.manifest:
        if not _is_regular(e):
            continue
        hits = [r for r in wanted if not (r.whole and e.size > r.max_bytes) and r.matches(e)]
        if hits:
            requests[e.path] = BlobRequest(
                max(r.max_bytes for r in hits),
                any(r.persist for r in hits),
                all(r.if_streamed for r in hits),
            )
    cache_db = ctx.options.get("state_db")
    if cache_db:
        _from_blob_cache(str(cache_db), ctx, requests, blobs)
    rep = stream_root(
        handle,
        ctx.manifest,
        consumers,
        requests,
        blobs,
        hash_paths,
        blob_only_min,
        helpers=helpers,
        split_min_bytes=split_min_bytes,
        others=_not_regular(fs),
    )
    if cache_db:
        _into_blob_cache(str(cache_db), ctx, requests, blobs)
    return rep


def _from_blob_cache(
    cache_db: str, ctx: ScanContext, requests: dict[str, BlobRequest], blobs: BlobStore
) -> None:
    """Persistent requests whose content the cache holds: served from it, not streamed."""
    entries = {e.path: e for e in ctx.manifest if e.path in requests and requests[e.path].persist}
    hashes = {e.sha256.lower() for e in entries.values() if e.sha256}
    if not hashes:
        return
    try:
        cache = BlobCache(cache_db)
        try:
            got = cache.get(hashes)
        finally:
            cache.close()
    except sqlite3.Error as err:
        log.info("blob cache unusable (%s): files streamed", err)
        return
    for path, e in entries.items():
        data = got.get((e.sha256 or "").lower())
        if data is not None and len(data) == e.size and blobs.put(path, e.size, data):
            del requests[path]


def _into_blob_cache(
    cache_db: str, ctx: ScanContext, requests: dict[str, BlobRequest], blobs: BlobStore
) -> None:
    """Keep the whole files of persistent requests by content for the next scan."""
    keep = []
    for path, req in requests.items():
        got = blobs.get(path)
        if req.persist and got is not None and len(got[1]) == got[0]:
            keep.append(got[1])
    if not keep:
        return
    try:
        cache = BlobCache(cache_db)
        try:
            cache.put(keep)
        finally:
            cache.close()
    except sqlite3.Error as e:
        log.info("blob cache not updated: %s", e)


def _died(name: str, why: str, version: str = "") -> PluginStatus:
    return PluginStatus(name, PluginState.FAILED.value, bound(why), version)


def _raise_prepared(ctx: ScanContext, name: str) -> None:
    """The error the plugin's consumer met before the stream, as its own failure."""
    got = ctx.prepared.get(name)
    if isinstance(got, Exception):
        raise got


class _PhaseClock(Protocol):
    def plugin(self, name: str) -> AbstractContextManager[object]: ...


def run_plugins(
    fs: GuestFS,
    ctx: ScanContext,
    catalogers: Iterable[Cataloger],
    checks: Iterable[Check],
    alive: Callable[[], bool],
    *,
    not_selected: Iterable[Check] = (),
    timings: _PhaseClock | None = None,
) -> None:
    """Every cataloger, then the selected checks; each one's status from what it said.

    One plugin never aborts the image: an exception makes it ``failed``, a gap note
    ``partial`` (see :mod:`vmscan.completeness`); the image status follows from them.
    Every registered plugin reports on every root: a cataloger whose database is not
    there and each check in *not_selected* are ``skipped`` with the reason; each status
    carries the plugin's ``VERSION``. The appliance is checked before the first plugin
    and after each (``alive``, one ping): once it is dead the remaining plugins are
    ``failed`` without being run, and what the plugin that was running returned is
    dropped, since a plugin that catches broadly could have read "absent" into a failure
    to look.
    """
    # Each runner returns False when its plugin does not apply (then it is skipped).
    plugins: list[tuple[str, str, Callable[[], bool]]] = []
    for cat in catalogers:

        def run_cat(cat: Any = cat) -> bool:
            _raise_prepared(ctx, cat.NAME)
            if not cat.applies(fs, ctx.root.os):
                return False
            ctx.root.packages.extend(cat.catalog(fs, ctx))
            return True

        plugins.append((cat.NAME, cat.VERSION, run_cat))
    for check in checks:

        def run_check(check: Any = check) -> bool:
            _raise_prepared(ctx, check.NAME)
            ctx.root.findings.extend(check.run(fs, ctx))
            return True

        plugins.append((check.NAME, check.VERSION, run_check))
    # The check after one plugin is the check before the next: one ping per plugin.
    dead = None if alive() else "not run: the appliance died before the plugins ran"
    for name, version, run in plugins:
        if dead is not None:
            ctx.root.plugins.append(_died(name, dead, version))
            continue
        ctx.notes = []
        sections = dict(ctx.root.sections)
        npkgs, nfind = len(ctx.root.packages), len(ctx.root.findings)
        error: Exception | None = None
        ran = True
        try:
            with timings.plugin(name) if timings is not None else contextlib.nullcontext():
                ran = run()
        except Exception as e:  # one plugin never aborts the image
            log.debug("plugin %s failed", name, exc_info=True)
            error = e
        if isinstance(error, ApplianceDiedError) or not alive():
            # Nothing this plugin produced can be trusted: drop it.
            del ctx.root.packages[npkgs:]
            del ctx.root.findings[nfind:]
            ctx.root.sections.clear()
            ctx.root.sections.update(sections)
            why = f"the appliance died during this plugin: {error}" if error else ""
            ctx.root.plugins.append(
                _died(name, why or "the appliance died during this plugin", version)
            )
            dead = "not run: the appliance died during an earlier plugin"
            continue
        if error is not None:
            ctx.root.plugins.append(plugin_status(name, ctx.notes, error, version))
        elif ran:
            ctx.root.plugins.append(plugin_status(name, ctx.notes, version=version))
        else:
            why = "not applicable: its package database is not on this root"
            ctx.root.plugins.append(skipped(name, why, version))
    for check in not_selected:
        ctx.root.plugins.append(skipped(check.NAME, "not selected (--checks)", check.VERSION))
