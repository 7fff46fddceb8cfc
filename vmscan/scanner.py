"""Scan orchestration: one worker process and one appliance per image, in parallel.

Each image runs in a forked worker with its own process group (started and killed by
:mod:`vmscan.pool`), its own ``TMPDIR`` in the run's folder (:mod:`vmscan.runctl`), and
the image's whole time budget, host-side vetting included.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vmscan import SCHEMA_VERSION, __version__, pool, runctl
from vmscan.completeness import bound, finalize_image
from vmscan.disk import resolve_source
from vmscan.errors import ApplianceDiedError, GuestError, ImageError, VmscanError
from vmscan.guestfs_view import LibguestfsFS, read_text
from vmscan.guestindex import FileIndex, IndexedFS
from vmscan.manifest import build_manifest
from vmscan.model import (
    Filesystem,
    ImageResult,
    ImageStatus,
    OSInfo,
    PluginStatus,
    RootResult,
    ScanResult,
)
from vmscan.plugins import ScanContext, run_plugins
from vmscan.proc import Budget, set_pdeathsig
from vmscan.session import GuestSession

log = logging.getLogger(__name__)

ALL_CHECK_NAMES = ("antivirus", "patch", "license", "migration")
# Filesystem types that hold no files to walk.
_NOT_WALKABLE = {"swap", "unknown", "LVM2_member", "linux_raid_member", "crypto_LUKS", "BitLocker"}
_FSTAB_SKIP_TYPES = {
    "swap",
    "proc",
    "sysfs",
    "tmpfs",
    "devpts",
    "none",
    "nfs",
    "nfs4",
    "cifs",
    "devtmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "autofs",
    "fuse",
}
_FSTAB_LIMIT = 1024 * 1024


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
    quiet: bool = True
    plugin_options: dict[str, Any] = field(default_factory=dict)


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


def _inspect_root(g: Any, root: str) -> OSInfo:
    def get(fn: str, default: Any) -> Any:
        try:
            return getattr(g, fn)(root)
        except GuestError:
            return default

    return OSInfo(
        type=get("inspect_get_type", "unknown"),
        distro=get("inspect_get_distro", "unknown"),
        product_name=get("inspect_get_product_name", ""),
        major_version=int(get("inspect_get_major_version", 0)),
        minor_version=int(get("inspect_get_minor_version", 0)),
        arch=get("inspect_get_arch", "unknown"),
        hostname=get("inspect_get_hostname", ""),
        package_format=get("inspect_get_package_format", "unknown"),
        package_management=get("inspect_get_package_management", "unknown"),
    )


def _fstab_entries(fs: LibguestfsFS) -> dict[str, tuple[str, int]]:
    """Mountpoint -> (device spec, line number) of the guest's /etc/fstab."""
    try:
        text = read_text(fs, "/etc/fstab", _FSTAB_LIMIT)
    except VmscanError:
        return {}
    entries: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if len(parts) < 3 or not parts[1].startswith("/"):
            continue
        spec, mpoint, fstype = parts[0], parts[1], parts[2]
        opts = parts[3].split(",") if len(parts) > 3 else []
        if fstype in _FSTAB_SKIP_TYPES or "bind" in opts:
            continue
        entries[mpoint] = (spec, n)
    return entries


def _image_facts(g: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"disks": [], "partition_tables": {}, "filesystems": [], "lvs": []}
    try:
        facts["disks"] = list(g.list_devices())
        for dev in facts["disks"]:
            try:
                facts["partition_tables"][dev] = g.part_get_parttype(dev)
            except GuestError:
                facts["partition_tables"][dev] = None
        facts["lvs"] = list(g.lvs())
        for dev, fstype in sorted(g.list_filesystems().items()):
            entry = {"device": dev, "type": fstype, "uuid": "", "label": ""}
            for key, fn in (("uuid", "vfs_uuid"), ("label", "vfs_label")):
                with contextlib.suppress(GuestError):
                    entry[key] = getattr(g, fn)(dev)
            facts["filesystems"].append(entry)
    except ApplianceDiedError:
        raise
    except GuestError as e:
        log.warning("image facts: %s", e)
    return facts


def _scan_mounted(
    sess: GuestSession,
    result: ImageResult,
    root: RootResult,
    mounts: list[tuple[str, str]],
    opts: ScanOptions,
    facts: dict[str, Any],
    fs_by_dev: dict[str, Filesystem],
) -> None:
    g = sess.h
    assert g is not None
    # The manifest's walk also fills the index the plugins look things up in.
    index = FileIndex()
    entries, problems = build_manifest(g, mounts, progress=_file_progress, walk=index)
    try:
        index_calls = index.finish(g)
    except GuestError as err:
        # Without "/" or the link targets every lookup goes to the appliance.
        index.gaps.add("/")
        index_calls = 0
        problems.append(f"file index incomplete: {err}")
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
        handle=g,
    )
    ctx.options.setdefault("state_db", opts.state_db)
    fs = IndexedFS(index, LibguestfsFS(g))
    from vmscan.registry import catalogers_for, checks_for

    run_plugins(fs, ctx, catalogers_for(opts.checks), checks_for(opts.checks), sess.alive)
    root.sections["index"] = {
        "entries": len(index.stats),
        "symlinks": len(index.links),
        "walk_calls": index_calls,
        "gaps": sorted(index.gaps)[:50],
        "non_utf8_dirs": sorted(index.foreign)[:50],
        # Lookups the index could not answer, answered by the appliance instead.
        "fallbacks": dict(sorted(fs.fallbacks.items())),
    }


def scan_image(label: str, opts: ScanOptions) -> ImageResult:
    """Scan one source (image or libvirt domain) in this process. Never raises."""
    t0 = time.monotonic()
    result = ImageResult(source=label, started_at=now_iso())
    # Host-side vetting (qemu-img included) spends the same per-image budget.
    budget = Budget(opts.timeout)
    try:
        src = resolve_source(label, opts.disk_format, opts.allow_backing, budget)
        result.disks = list(src.disks)
        with GuestSession(src.disks, opts.memsize, opts.accel) as sess:
            _appliance_started(sess.h)
            pending: list[str] = []
            try:
                _scan_session(sess, result, opts, pending)
            except ApplianceDiedError as e:
                # Outside a plugin (facts, inspection, mounting, the manifest): what was
                # scanned so far stays, the rest is said to be missing.
                result.errors.append(f"the appliance died; the rest was not scanned: {e}")
                _roots_not_scanned(result, pending, opts.checks, str(e))
                # Nothing scanned at all (it died before inspection ended): an error.
                scanned = result.roots or result.sections.get("data_volumes")
                result.status = ImageStatus.PARTIAL if scanned else ImageStatus.ERROR
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
    sess: GuestSession, result: ImageResult, opts: ScanOptions, pending: list[str]
) -> None:
    """Scan every root; *pending* holds the roots not yet in ``result.roots``."""
    g = sess.h
    assert g is not None
    facts = _image_facts(g)
    fs_by_dev: dict[str, Filesystem] = {}
    for f in facts["filesystems"]:
        fs_by_dev[f["device"]] = Filesystem(
            device=f["device"], type=f["type"], uuid=f["uuid"], label=f["label"]
        )
    result.filesystems = list(fs_by_dev.values())
    result.sections["image_facts"] = facts
    try:
        roots = list(g.inspect_os())
    except ApplianceDiedError:
        raise
    except GuestError as e:
        result.errors.append(f"inspection failed: {e}")
        roots = []
    pending[:] = sorted(roots)
    partial = False
    for root_dev in sorted(roots):
        os_info = _inspect_root(g, root_dev)
        try:
            mps: dict[str, str] = dict(g.inspect_get_mountpoints(root_dev))
        except ApplianceDiedError:
            raise
        except GuestError:
            mps = {"/": root_dev}
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
                _not_mounted(
                    result,
                    dev,
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
                if mp_ == "/":
                    break
            else:
                fsr.mountpoint, fsr.mounted = mp_, True
                mounted.append((mp_, dev))
                if mp_ == "/" and os_info.type == "linux":
                    fstab = _fstab_entries(LibguestfsFS(g))
        if not any(m == "/" for m, _ in mounted):
            result.roots.append(root)
            pending.remove(root_dev)
            sess.umount_all()
            continue
        fs = LibguestfsFS(g)
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
        _scan_mounted(sess, result, root, mounted, opts, facts, fs_by_dev)
        result.roots.append(root)
        pending.remove(root_dev)
        sess.umount_all()
    if not roots:
        if not any(f.type not in _NOT_WALKABLE for f in fs_by_dev.values()):
            parts = facts["partition_tables"]
            raise ImageError(
                "no operating system and no readable filesystem found"
                + ("" if any(parts.values()) else " (no partition table either: not a disk?)")
            )
        result.status = ImageStatus.NO_OS
        _scan_data_disks(sess, result, opts, facts, fs_by_dev)
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
        _scan_mounted(sess, result, vol, [("/", dev)], opts, facts, fs_by_dev)
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
        )
    return result
