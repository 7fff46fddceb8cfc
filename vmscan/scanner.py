"""Scan orchestration: one worker process and one appliance per image, in parallel.

Each image runs in a forked worker with its own process group (started and killed by
:mod:`vmscan.pool`), its own ``TMPDIR`` in the run's folder (:mod:`vmscan.runctl`), and
the image's whole time budget, host-side vetting included. Inspection is
:mod:`vmscan.inspect`, the plugin loop :func:`vmscan.plugins.run_plugins`; what stays here
is the order of one image's phases (vet, launch, facts, inspect, mount, walk and hash,
plugins, cache) and of many images.

Past 600 lines on purpose: the phases of one image share its session (relaunched when the
appliance dies, with the roots remounted), its result and its timings, and each phase's
failure decides what the next one may still do (a root walked but not streamed, a stream
that failed so the plugins read for themselves); split apart, every part would take and
hand back the same half-dozen objects (and the helper appliances, which follow the
roots). The inspection, the walk, the stream, the helpers and the plugin loop already
live in their own modules.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vmscan import SCHEMA_VERSION, __version__, inspect, pool, runctl, split
from vmscan.completeness import bound, finalize_image
from vmscan.disk import resolve_source
from vmscan.errors import ApplianceDiedError, GuestError, ImageError, VmscanError
from vmscan.filecache import FileHashCache
from vmscan.guestcall import GuestHandle
from vmscan.guestfs_view import LibguestfsFS, read_text
from vmscan.guestindex import FileIndex, IndexedFS
from vmscan.manifest import build_manifest, hash_pending
from vmscan.model import (
    DiskRef,
    Filesystem,
    ImageResult,
    ImageStatus,
    OSInfo,
    PluginStatus,
    RootResult,
    ScanResult,
)
from vmscan.plugins import ScanContext, prefetch, run_plugins
from vmscan.proc import Budget, set_pdeathsig
from vmscan.session import GuestSession
from vmscan.source.domain import DEFAULT_URI, is_domain_source, open_domain
from vmscan.source.points import open_views
from vmscan.stream import TarStream
from vmscan.timings import Timings
from vmscan.walk import Listing, WalkLimits, find0_listing, folder_walk

log = logging.getLogger(__name__)

ALL_CHECK_NAMES = ("antivirus", "patch", "license", "migration")
# Filesystem types that hold no files to walk.
_NOT_WALKABLE = {"swap", "unknown", "LVM2_member", "linux_raid_member", "crypto_LUKS", "BitLocker"}


def now_iso() -> str:
    """UTC time stamp for reports."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ScanOptions:
    """Everything that changes what a scan does."""

    jobs: int = 1
    memsize: int | None = None
    timeout: float = 3600.0
    accel: str = "auto"
    manifest: bool = False
    checks: tuple[str, ...] = ALL_CHECK_NAMES
    fail_on: str | None = None
    allow_backing: tuple[str, ...] = ()
    disk_format: str | None = None
    state_db: str | None = None
    #: File-hash cache database (vmscan.filecache); the state database when None.
    cache_db: str | None = None
    #: Storage group of each source (source -> key; vmscan.nightly) and the most sources
    #: of one group scanned at once (0: no limit).
    storage: dict[str, str] = field(default_factory=dict)
    max_per_storage: int = 0
    #: Sources that start only once another (earlier) source has finished (source -> the
    #: one it waits for): the snapshots of an image after its current state, whose files
    #: they then take from the hash cache (vmscan.source.points.cache_order).
    after: dict[str, str] = field(default_factory=dict)
    #: How deep, how long and how wide a walk of a guest tree goes (vmscan.walk).
    walk_limits: WalkLimits = field(default_factory=WalkLimits)
    #: Re-read every file even when its cached hash is still valid.
    rehash: bool = False
    #: No file-hash cache at all (``--no-cache``).
    no_cache: bool = False
    quiet: bool = True
    plugin_options: dict[str, Any] = field(default_factory=dict)
    libvirt_uri: str = DEFAULT_URI  # for libvirt:NAME sources
    #: Appliances per image for the content stream (``--stream-appliances``, vmscan.split).
    stream_appliances: split.Policy = field(default_factory=split.Policy)


def default_jobs() -> int:
    """Appliances the machine can carry: one per core, about 1.5 GiB of RAM each."""
    cores = os.cpu_count() or 1
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = 4 << 30
    return max(1, min(cores, int(mem // (1536 << 20))))


# ---------------------------------------------------------------------------
# Inside one image


def _os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines()[:500]:
        m = re.match(r"^\s*([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if not m:
            continue
        val = m.group(2).strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        out[m.group(1)] = val[:256]
    return out


def _no_appliance() -> bool:
    """``alive`` of a view with no appliance behind it (a host folder)."""
    return True


def _run_plugins(
    fs: Any,
    ctx: ScanContext,
    opts: ScanOptions,
    alive: Callable[[], bool] = _no_appliance,
    stream: tuple[Any, list[str]] | None = None,
    helpers: Sequence[Callable[[], Any | None]] = (),
) -> None:
    """:func:`vmscan.plugins.run_plugins` with this run's selection and the image's clock.

    *stream* ``(handle, paths to hash on the host)``: first move what the selected
    plugins need out of the appliance in the root's one stream (:func:`prefetch`).
    """
    from vmscan.registry import all_checks, catalogers_for

    chosen = [c for c in all_checks() if c.NAME in opts.checks]
    others = [c for c in all_checks() if c.NAME not in opts.checks]
    cats = catalogers_for(opts.checks)
    tm = _timings_of(ctx.image)
    if stream is not None and alive():
        handle, hash_paths = stream
        try:
            with tm.phase("stream"):
                rep = prefetch(
                    handle,
                    fs,
                    ctx,
                    [*cats, *chosen],
                    hash_paths,
                    helpers=helpers,
                    split_min_bytes=opts.stream_appliances.min_bytes(),
                )
            ctx.root.sections["stream"] = rep.to_dict()
        except Exception as e:  # the plugins then read for themselves; never the image
            log.warning("content stream of %s failed", ctx.root.device, exc_info=True)
            ctx.root.sections["stream"] = {"error": bound(f"{type(e).__name__}: {e}")}
    run_plugins(fs, ctx, cats, chosen, alive, not_selected=others, timings=tm)


def _scan_mounted(
    sess: GuestSession,
    result: ImageResult,
    root: RootResult,
    mounts: list[tuple[str, str]],
    opts: ScanOptions,
    facts: dict[str, Any],
    fs_by_dev: dict[str, Filesystem],
    helpers: split.Helpers | None = None,
) -> None:
    g = sess.h
    assert g is not None
    tm = _timings_of(result)
    tm.start_root(root.device)
    tar_calls0 = TarStream.calls
    cache = _open_file_cache(opts, result)
    streaming = "antivirus" in opts.checks
    # With the antivirus check, files are hashed on the host in its content stream (one
    # transfer of each file); with a hash cache only files whose metadata changed are
    # read; hash_pending below takes what is left.
    # The manifest's walk also fills the index the plugins look things up in.
    index = FileIndex()
    listing, g = _list_tree(sess, result, root, mounts, opts.walk_limits)
    entries, problems = build_manifest(
        g,
        mounts,
        progress=_file_progress,
        timings=tm,
        hash_files=not streaming and cache is None,
        walk=index,
        listing=listing,
    )
    try:
        index_calls = index.finish(g)
    except GuestError as err:
        # Without "/" or the link targets every lookup goes to the appliance.
        index.gaps.add("/")
        index_calls = 0
        problems.append(f"file index incomplete: {err}")
    fs_ids = {dev: (fs_by_dev[dev].uuid if dev in fs_by_dev else "") or dev for _m, dev in mounts}
    hc = result.sections.setdefault(
        "hash_cache", {"enabled": cache is not None, "rehash": opts.rehash, "files": 0}
    )
    hc["files"] += len(entries)
    if cache is not None and not opts.rehash:
        with tm.phase("hash_cache"):
            for dev, fs_id in fs_ids.items():
                got = cache.fill(fs_id, (e for e in entries if e.device == dev))
                hc["from_cache"] = hc.get("from_cache", 0) + got
    for p in problems[:50]:
        result.errors.append(p)
    if len(problems) > 50:
        result.errors.append(f"... and {len(problems) - 50} more file problems")
    for e in entries:
        fsr = fs_by_dev.get(e.device)
        if fsr is not None:
            fsr.files += 1
            fsr.bytes += e.size
    for mp_, dev in mounts:
        fsr = fs_by_dev.get(dev)
        st = None
        with contextlib.suppress(GuestError):
            st = g.statvfs(mp_)
        if fsr is not None and st:
            fsr.size = st["frsize"] * st["blocks"]
            fsr.free = st["frsize"] * st["bavail"]
    result.manifest.extend(entries)
    ctx = ScanContext(
        root=root,
        manifest=entries,
        options=dict(opts.plugin_options),
        image_facts=facts,
        image=result,
    )
    # The verdict cache lives beside the hash cache: a clone's files keep their verdicts.
    ctx.options.setdefault("state_db", opts.state_db or (opts.cache_db if cache else None))
    fs = IndexedFS(index, LibguestfsFS(g))
    # Files nobody else takes are hashed in the same stream, unless most are still to
    # hash and nothing needs their content on the host (checksums_out is faster then).
    unhashed = [e.path for e in entries if e.sha256 is None and e.error is None]
    host_hash = streaming or 2 * len(unhashed) <= len(entries)
    getters = [functools.partial(h.on, tuple(mounts)) for h in (helpers.helpers if helpers else [])]
    _run_plugins(
        fs, ctx, opts, sess.alive, stream=(g, unhashed if host_hash else []), helpers=getters
    )
    root.sections["index"] = {
        "entries": len(index.stats),
        "symlinks": len(index.links),
        "walk_calls": index_calls,
        "gaps": sorted(index.gaps)[:50],
        "non_utf8_dirs": sorted(index.foreign)[:50],
        # Lookups the index could not answer and reads the stream had not delivered,
        # answered by the appliance instead.
        "fallbacks": dict(sorted((fs.fallbacks + fs.read_fallbacks).items())),
        "streamed_reads": fs.streamed_reads,
        "read_fallback_paths": fs.read_fallback_paths,
    }
    for p in hash_pending(g, entries, tm, in_appliance=not streaming)[:50]:
        result.errors.append(p)
    # Every tar_out of this root: the stream's, and those of the manifest (folders
    # holding names that are not UTF-8) and of hash_pending (files still unhashed).
    root.sections.setdefault("stream", {})["tar_out_calls_root"] = TarStream.calls - tar_calls0
    if cache is not None:
        try:
            with tm.phase("hash_cache"):
                for dev, fs_id in fs_ids.items():
                    cache.store(fs_id, (e for e in entries if e.device == dev))
        except sqlite3.Error as e:
            result.errors.append(f"file hash cache not updated: {e}")
        finally:
            cache.close()
    tm.end_root()


def _list_tree(
    sess: GuestSession,
    result: ImageResult,
    root: RootResult,
    mounts: list[tuple[str, str]],
    limits: WalkLimits,
) -> tuple[Listing, GuestHandle]:
    """The root's listing (:mod:`vmscan.walk`) and the handle to go on with.

    ``find0`` first; when it fails (a path past the daemon's 8 KiB line kills the
    appliance) the appliance is relaunched if it died, the root mounted again, and the
    tree listed folder by folder within the same bounds, saying so.
    """
    g = sess.h
    assert g is not None
    tm = _timings_of(result)
    try:
        with tm.phase("walk"):
            return find0_listing(g, limits), g
    except GuestError as e:
        why = str(e)
    if not sess.alive():
        with tm.phase("relaunch"):
            sess.restart()
            _appliance_started(sess.h)
            for mp_, dev in sorted(mounts, key=lambda m: (len(m[0]), m[0])):
                err = sess.mount_ro(dev, mp_)
                if err:
                    raise ImageError(f"{root.device}: cannot mount {dev} on {mp_} again: {err}")
    g = sess.h
    assert g is not None
    result.errors.append(
        f"{root.device}: listing the tree in one call failed ({why[:200]}); the appliance "
        "was relaunched if needed and the tree listed folder by folder, within bounds"
    )
    with tm.phase("walk"):
        return folder_walk(g, limits), g


def _open_file_cache(opts: ScanOptions, result: ImageResult) -> FileHashCache | None:
    """The file-hash cache of this run (``--state-db``, else the per-user one), or None."""
    path = opts.cache_db or opts.state_db
    if not path or opts.no_cache:
        return None
    try:
        return FileHashCache(path)
    except sqlite3.Error as e:
        result.errors.append(f"file hash cache {path} unusable, every file read: {e}")
        return None


def _cache_knows(opts: ScanOptions, fs_by_dev: dict[str, Filesystem]) -> bool:
    """The file-hash cache holds rows of these filesystems (and they are to be used)."""
    path = opts.cache_db or opts.state_db
    if opts.rehash or opts.no_cache or not path:
        return False
    try:
        cache = FileHashCache(path)
    except sqlite3.Error:
        return False  # said once, when the walk opens it
    try:
        return cache.knows((f.uuid or dev) for dev, f in fs_by_dev.items())
    except sqlite3.Error:
        return False
    finally:
        cache.close()


def _timings_of(image: ImageResult | None) -> Timings:
    """The image's phase clock: kept in its sections while it is scanned (see scan_image)."""
    tm = image.sections.get("timings") if image is not None else None
    return tm if isinstance(tm, Timings) else Timings()


@contextlib.contextmanager
def _open_source(
    label: str, opts: ScanOptions, budget: Budget
) -> Iterator[tuple[tuple[DiskRef, ...], tuple[DiskRef, ...]]]:
    """(disks for the report, disks for the appliance), helpers (qemu-nbd, backup) running."""
    if is_domain_source(label):
        with open_domain(
            label, opts.libvirt_uri, opts.disk_format, opts.allow_backing, budget
        ) as pair:
            yield pair
        return
    src = resolve_source(label, opts.disk_format, opts.allow_backing, budget)
    with open_views(src.disks, budget) as disks:
        yield src.disks, disks


def scan_image(label: str, opts: ScanOptions) -> ImageResult:
    """Scan one source (image or libvirt domain) in this process. Never raises."""
    t0 = time.monotonic()
    result = ImageResult(source=label, started_at=now_iso())
    # Replaced by its dict below, before the result leaves this function.
    tm = Timings()
    result.sections["timings"] = tm
    streamed_before = TarStream.received
    # Host-side vetting (qemu-img included) spends the same per-image budget.
    budget = Budget(opts.timeout)
    try:
        t_vet = time.monotonic()
        with _open_source(label, opts, budget) as (shown, disks):
            tm.add("vet", time.monotonic() - t_vet)
            result.disks = list(shown)
            t_launch = time.monotonic()
            # Helper appliances (vmscan.split) take their pool slots here and launch once
            # the filesystems are listed (``helpers.launch`` in _scan_session).
            with (
                split.Helpers(disks, opts.memsize, opts.accel, opts.stream_appliances) as helpers,
                GuestSession(disks, opts.memsize, opts.accel) as sess,
            ):
                tm.add("launch", time.monotonic() - t_launch)
                _appliance_started(sess.h)
                pending: list[str] = []
                try:
                    _scan_session(sess, result, opts, pending, budget, helpers)
                except ApplianceDiedError as e:
                    # Outside a plugin (facts, inspection, mounting, the manifest): what
                    # was scanned so far stays, the rest is said to be missing.
                    result.errors.append(f"the appliance died; the rest was not scanned: {e}")
                    _roots_not_scanned(result, pending, opts.checks, str(e))
                    # Nothing scanned at all (it died before inspection ended): an error.
                    scanned = result.roots or result.sections.get("data_volumes")
                    result.status = ImageStatus.PARTIAL if scanned else ImageStatus.ERROR
                result.sections["split"] = {
                    "helpers": len(helpers.helpers),
                    "why_not": helpers.why_not or None,
                    "helper_errors": helpers.errors(),
                }
        # A check that could not run never leaves the image "ok".
        finalize_image(result, opts.checks)
    except ImageError as e:
        result.status = ImageStatus.ERROR
        result.errors.append(str(e))
    except Exception as e:  # never a traceback in place of a result
        log.debug("unexpected failure on %s", label, exc_info=True)
        result.status = ImageStatus.ERROR
        result.errors.append(f"internal error: {type(e).__name__}: {e}")
        result.sections["traceback"] = traceback.format_exc(limit=5)
    result.errors[:] = [bound(e) for e in result.errors]
    tm.count("streamed", TarStream.received - streamed_before)
    result.sections["timings"] = tm.to_dict()
    result.finished_at = now_iso()
    result.duration_s = round(time.monotonic() - t0, 3)
    return result


def _roots_not_scanned(
    result: ImageResult, devices: list[str], checks: tuple[str, ...], why: str
) -> None:
    """Roots the appliance died before (or while) scanning: every plugin failed, not run."""
    reason = bound(f"not run: the appliance died: {why}")
    for dev in devices:
        root = RootResult(device=dev, os=OSInfo())
        root.plugins = [PluginStatus(n, "failed", reason) for n in ("inventory", *checks)]
        result.roots.append(root)


def _scan_session(
    sess: GuestSession,
    result: ImageResult,
    opts: ScanOptions,
    pending: list[str],
    budget: Budget | None = None,
    helpers: split.Helpers | None = None,
) -> None:
    """Scan every root; *pending* holds the roots not yet in ``result.roots``."""
    # Bounded facts and inspection (vmscan.inspect): hostile partition tables and trees
    # cost seconds, and what was not looked at is said.
    assert sess.h is not None
    tm = _timings_of(result)
    with tm.phase("image_facts"):
        facts = inspect.image_facts(sess.h)
    fs_by_dev: dict[str, Filesystem] = {}
    for f in facts["filesystems"]:
        fs_by_dev[f["device"]] = Filesystem(
            device=f["device"], type=f["type"], uuid=f["uuid"], label=f["label"]
        )
    if helpers is not None:
        helpers.launch(_cache_knows(opts, fs_by_dev))
    result.filesystems = list(fs_by_dev.values())
    result.sections["image_facts"] = facts
    remaining = (budget or Budget(opts.timeout)).remaining
    with tm.phase("inspect"):
        found, inspect_errors, partial = inspect.find_roots(sess, facts, remaining)
    # sess.h, never a handle kept from before: inspection and the walk may relaunch.
    probe_errors = inspect.probe_messages(facts)
    result.errors.extend(inspect_errors + probe_errors)
    partial = partial or bool(probe_errors)
    roots = [fr.device for fr in found]
    pending[:] = list(roots)
    for fr in found:
        root_dev, os_info, mps = fr.device, fr.os, fr.mountpoints
        root = RootResult(device=root_dev, os=os_info, mountpoints=mps)
        mounted: list[tuple[str, str]] = []
        fstab: dict[str, tuple[str, int]] = {}
        # Shortest mountpoint first so that /boot lands on top of /.
        for mp_ in sorted(mps, key=lambda m: (len(m), m)):
            dev = mps[mp_]
            spec, line = fstab.get(mp_, (dev, 0))
            where = f"/etc/fstab line {line} names {spec} for {mp_}" if line else f"{mp_}"
            if dev not in fs_by_dev:
                # Named by the guest's fstab but not a device of this image set.
                _not_mounted(
                    result,
                    dev,
                    mp_,
                    "device not present in this image",
                    f"{root_dev}: {where}, but device {dev} is not in this image (a "
                    f"disk missing from the image set?); its files were not scanned",
                )
                partial = True
                continue
            taken = next((m for m, d in mounted if d == dev), None)
            if taken is not None:
                # libguestfs resolves fstab names like /dev/sdb1 by position, so a
                # missing disk can map onto a device already mounted: never walk it twice.
                # The record names the device as the guest does (its fstab spec), not
                # libguestfs' positional guess, which varies with the drive layout.
                _not_mounted(
                    result,
                    spec,
                    mp_,
                    f"fstab entry maps to {dev}, already mounted on {taken}",
                    f"{root_dev}: {where}, which resolves to {dev}, "
                    f"already mounted on {taken}: the disk it names is probably "
                    f"absent from this image; its files were not scanned",
                )
                partial = True
                continue
            err = sess.mount_ro(dev, mp_)
            fsr = fs_by_dev[dev]
            if err:
                fsr.error = err
                partial = True
                named = f" ({where})" if line else ""
                result.errors.append(f"{root_dev}: cannot mount {dev} on {mp_}{named}: {err}")
                if line and spec != dev and spec.startswith("/dev/") and spec not in fs_by_dev:
                    # libguestfs mapped a device this image lacks onto one it has.
                    result.filesystems.append(
                        Filesystem(
                            device=spec,
                            type="absent",
                            mountpoint=mp_,
                            error=f"named by /etc/fstab line {line}, not in this image "
                            f"(libguestfs mapped it to {dev})",
                        )
                    )
                if mp_ == "/":
                    break
            else:
                fsr.mountpoint, fsr.mounted = mp_, True
                mounted.append((mp_, dev))
                if mp_ == "/" and os_info.type == "linux":
                    tab = inspect.read_fstab(LibguestfsFS(sess.h))
                    fstab = tab.entries
                    if tab.cut:
                        partial = True
                        result.errors.extend(f"{root_dev}: {c}" for c in tab.cut)
        if not any(m == "/" for m, _ in mounted):
            result.roots.append(root)
            pending.remove(root_dev)
            sess.umount_all()
            continue
        fs = LibguestfsFS(sess.h)
        if os_info.type == "linux":
            _os_release_into(fs, os_info)
            missing = [(sp, m, ln) for m, (sp, ln) in fstab.items() if m not in mps]
            for spec, mpoint, line in missing:
                partial = True
                _not_mounted(
                    result,
                    spec,
                    mpoint,
                    "device not present",
                    f"{root_dev}: /etc/fstab line {line}: {spec} on {mpoint} is not in "
                    f"this image (device absent or not found); its files were not "
                    f"scanned",
                )
        _scan_mounted(sess, result, root, mounted, opts, facts, fs_by_dev, helpers)
        result.roots.append(root)
        pending.remove(root_dev)
        sess.umount_all()
    if not roots:
        if not any(f.type not in _NOT_WALKABLE for f in fs_by_dev.values()):
            raise ImageError(inspect.nothing_found(facts))
        # partial: something that could hold files (or the OS) was not looked at, e.g. a
        # LUKS volume with no key.
        result.status = ImageStatus.PARTIAL if partial else ImageStatus.NO_OS
        _scan_data_disks(sess, result, opts, facts, fs_by_dev, helpers)
    elif partial:
        result.status = ImageStatus.PARTIAL
    if not opts.manifest:
        result.sections["manifest_files"] = len(result.manifest)
        result.manifest = []


def _not_mounted(result: ImageResult, dev: str, mountpoint: str, why: str, message: str) -> None:
    """Record a filesystem the guest expects but that was not scanned."""
    result.filesystems.append(
        Filesystem(device=dev, type="absent", mountpoint=mountpoint, mounted=False, error=why)
    )
    result.errors.append(message)


def _os_release_into(fs: LibguestfsFS, os_info: OSInfo) -> None:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            rel = _os_release(read_text(fs, path, 64 * 1024))
        except VmscanError:
            continue
        os_info.os_release_id = rel.get("ID", "")
        os_info.version_id = rel.get("VERSION_ID", "")
        os_info.version_codename = rel.get("VERSION_CODENAME", "")
        if os_info.distro in ("unknown", "") and os_info.os_release_id:
            os_info.distro = os_info.os_release_id
        return


def _scan_data_disks(
    sess: GuestSession,
    result: ImageResult,
    opts: ScanOptions,
    facts: dict[str, Any],
    fs_by_dev: dict[str, Filesystem],
    helpers: split.Helpers | None = None,
) -> None:
    """No OS: mount each filesystem on its own and walk it as a data volume."""
    for dev, fsr in sorted(fs_by_dev.items()):
        if fsr.type in _NOT_WALKABLE:
            continue
        err = sess.mount_ro(dev, "/")
        if err:
            fsr.error = err
            result.errors.append(f"cannot mount {dev}: {err}")
            continue
        fsr.mountpoint, fsr.mounted = "/", True
        vol = RootResult(device=dev, os=OSInfo(type="none"), mountpoints={"/": dev})
        _scan_mounted(sess, result, vol, [("/", dev)], opts, facts, fs_by_dev, helpers)
        result.sections.setdefault("data_volumes", []).append(vol)
        sess.umount_all()


# ---------------------------------------------------------------------------
# Many images in parallel


_progress_conn: Connection | None = None
_progress_last = 0.0
_send_lock = threading.Lock()
_sockwatch: runctl.SockdirWatch | None = None


def _send(msg: Any) -> None:
    """One message to the parent (progress, a socket folder, the result); thread-safe."""
    if _progress_conn is None:
        return
    with _send_lock, contextlib.suppress(OSError):
        _progress_conn.send(msg)


def _file_progress(done: int) -> None:
    """Tell the parent how many files this worker has hashed (throttled)."""
    global _progress_last
    now = time.monotonic()
    if _progress_conn is None or now - _progress_last < 0.5:
        return
    _progress_last = now
    _send(("files", done))


def _appliance_started(g: Any) -> None:
    """Report the socket folder named on qemu's command line (if the watch missed it)."""
    if _sockwatch is None:
        return
    with contextlib.suppress(GuestError, AttributeError):
        _sockwatch.note(runctl.qemu_sockdirs(int(g.get_pid())))
    # The folder exists by now and is known: no need to keep reading /proc for hours.
    _sockwatch.stop()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (even by SIGKILL).

    The worker has its own process group, so a kill of the parent's group would
    not reach it; the run's janitor then kills the worker's group, qemu included.
    """
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker(
    label: str, opts: ScanOptions, conn: Connection, run: runctl.RunDir, wdir: Path
) -> None:
    global _progress_conn, _sockwatch
    # Own process group: the parent kills the whole group (qemu included) on timeout.
    os.setpgrp()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    runctl.enter_worker(run, wdir)
    _progress_conn = conn
    _sockwatch = runctl.SockdirWatch(lambda d: _send(("sockdir", d))).start()
    try:
        res = scan_image(label, opts)
    finally:
        _sockwatch.stop()
    try:
        _send(res)
    finally:
        conn.close()


def scan_sources(
    sources: list[str],
    opts: ScanOptions,
    on_image_done: Callable[[ImageResult], None] | None = None,
    progress: Callable[[ImageResult], None] | None = None,
    file_progress: Callable[[str, int], None] | None = None,
) -> ScanResult:
    """Scan every source, ``opts.jobs`` at a time; results keep the order of *sources*.

    On SIGTERM/SIGINT (inside :func:`vmscan.runctl.interruptible`) every worker and its
    appliance is killed, their folders removed, and :class:`vmscan.runctl.Interrupted` is
    raised with ``partial`` set: the finished images, the others marked not scanned.
    """
    result = ScanResult(
        schema_version=SCHEMA_VERSION, vmscan_version=__version__, started_at=now_iso()
    )
    first: dict[str, int] = {}
    for i, s in enumerate(sources):
        first.setdefault(s, i)
    after = [first.get(opts.after[s]) if s in opts.after else None for s in sources]
    with runctl.run_scope() as run:
        pool.run_images(
            run,
            result,
            sources,
            worker=_worker,
            worker_args=(opts,),
            jobs=max(1, opts.jobs),
            timeout=opts.timeout,
            clock=now_iso,
            on_image_done=on_image_done,
            progress=progress,
            file_progress=file_progress,
            storage=[opts.storage.get(s, s) for s in sources],
            per_storage=opts.max_per_storage,
            after=after,
        )
    return result
