"""Points in time of one image: ``IMAGE@SNAPSHOT``, ``IMAGE@id:N``, ``IMAGE@layer:N``.

An internal qcow2 snapshot is read through ``qemu-nbd --read-only --load-snapshot`` (qemu
loads the snapshot's L1 table into memory only: ``bdrv_snapshot_load_tmp`` refuses a
writable image, so the file is never written) on a unix socket in the worker's private
folder; libguestfs adds it as a read-only raw NBD drive. Why not ``qemu-img convert -l`` to a
temporary copy: that costs a disk's worth of space and time before the scan starts, the NBD
view costs nothing and reads only what the scan reads. A layer of an external chain needs no
helper: the chain is opened from that layer down (the overlays above it left out), vetted
like any image but with the folders allowed for the whole chain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from vmscan.errors import ImageError, ImageTimeoutError
from vmscan.model import DiskRef
from vmscan.proc import Budget, SubprocessError, reap, spawn
from vmscan.source import snapshots

log = logging.getLogger(__name__)

#: How long qemu-nbd may take to open the image and listen.
NBD_START_TIMEOUT = 60.0
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL
_MAX_ERR = 2000


def split_point(label: str) -> tuple[str, str | None]:
    """(image, selector) of ``IMAGE@SELECTOR``; a file that exists under the whole name wins."""
    if os.path.lexists(label) or label.startswith("libvirt:"):
        return label, None
    base, sep, sel = label.rpartition("@")
    if not sep or not base or "/" in sel:
        return label, None
    return base, sel


def _layer_number(sel: str, label: str) -> int:
    raw = sel[len("layer:") :]
    try:
        n = int(raw, 10)
    except ValueError:
        raise ImageError(
            f"{label}: {raw!r} is not a layer number (layer:0 is the base of the chain)"
        ) from None
    return n


def pick_layer(disk: DiskRef, sel: str, label: str) -> tuple[str, str, int]:
    """(path, format, index) of the layer ``layer:N`` names, counted from the base (0)."""
    n = _layer_number(sel, label)
    total = len(disk.layers)
    if not 0 <= n < total:
        top = f"layer:{total - 1} is the image itself" if total > 1 else "it has no backing file"
        raise ImageError(
            f"{label}: layer {n} is out of range: the chain of {disk.path} has {total} "
            f"layer(s), counted from the base: layer:0 is the base, {top}"
        )
    layer = disk.layers[n]
    return layer.path, layer.format, n


def pick_snapshot(disk: DiskRef, sel: str, label: str) -> DiskRef:
    """*disk* set to be read at the internal snapshot *sel* names (name, id or ``id:N``)."""
    if disk.format != "qcow2":
        raise ImageError(
            f"{label}: {disk.path} is a {disk.format} image: only qcow2 images hold internal "
            f"snapshots (use IMAGE@layer:N for a layer of an external chain)"
        )
    names = [s.name for s in disk.snapshots]
    if not sel.startswith("id:") and names.count(sel) > 1:
        raise ImageError(
            f"{label}: {names.count(sel)} snapshots are named {sel!r}: name one by its id "
            f"(IMAGE@id:N)"
        )
    snap = snapshots.find(disk.snapshots, sel)
    if snap is None:
        have = ", ".join(f"{s.id} {s.name!r}" for s in disk.snapshots[:20]) or "none"
        raise ImageError(
            f"{label}: {disk.path} has no internal snapshot named or numbered {sel!r} "
            f"(it has: {have})"[:_MAX_ERR]
        )
    point = {"kind": "snapshot", "id": snap.id, "name": snap.name, "date": snap.date}
    return dataclasses.replace(disk, point=point)


def expand_snapshots(sources: list[str]) -> list[str]:
    """Each qcow2 source, then one ``SOURCE@SELECTOR`` per internal snapshot (``--snapshots all``).

    A source that cannot be read here is kept as it is: its scan reports the error.
    """
    out: list[str] = []
    for src in sources:
        out.append(src)
        if split_point(src)[1] is not None or not os.path.isfile(src):
            continue
        try:
            with open(src, "rb") as fh:
                if fh.read(4) != b"QFI\xfb":
                    continue
            snaps = snapshots.read_snapshots(src)
        except (OSError, ImageError) as e:
            log.debug("%s: snapshots not listed: %s", src, e)
            continue
        out.extend(f"{src}@{snapshots.selector_for(s, snaps)}" for s in snaps)
    return out


def cache_order(sources: list[str]) -> dict[str, str]:
    """``IMAGE@SELECTOR`` -> ``IMAGE`` for each point whose image is scanned before it.

    Such a point waits for that scan (``ScanOptions.after``): a point in time shares most
    files with the current state (same filesystem UUID, path, size, times and inode), so it
    takes them from the hash cache the current state's scan filled instead of reading them
    again; started at the same time, both would read everything.
    """
    seen: set[str] = set()
    out: dict[str, str] = {}
    for src in sources:
        base, sel = split_point(src)
        if sel is not None and base in seen:
            out[src] = base
        seen.add(src)
    return out


def _wait_listening(path: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise ImageError("qemu-nbd exited before serving the snapshot")
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
        if time.monotonic() > deadline:
            raise ImageTimeoutError("qemu-nbd did not start serving the snapshot in time")
        time.sleep(0.05)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            text = fh.read(_MAX_ERR).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f": {text.splitlines()[-1]}" if text else ""


@contextlib.contextmanager
def open_views(disks: tuple[DiskRef, ...], budget: Budget) -> Iterator[tuple[DiskRef, ...]]:
    """The disks to hand to libguestfs: snapshot points served by qemu-nbd for the duration.

    Every qemu-nbd started here is killed and reaped on the way out, error or not (and dies
    with the worker through PDEATHSIG when the worker is killed on ``--timeout``).
    """
    procs: list[subprocess.Popen[bytes]] = []
    folder: str | None = None
    try:
        out: list[DiskRef] = []
        for i, d in enumerate(disks):
            if d.point.get("kind") != "snapshot" or d.nbd_socket:
                out.append(d)
                continue
            if folder is None:
                folder = tempfile.mkdtemp(prefix="nbd-")
            sock = os.path.join(folder, f"d{i}.sock")
            if len(sock) > _MAX_SOCKET_PATH:
                raise ImageError(
                    f"the socket path {sock} is longer than a unix socket allows: set TMPDIR "
                    f"to a shorter folder"
                )
            argv = [
                "qemu-nbd",
                "--read-only",
                "--persistent",
                # Room for the readiness probe's connection besides the appliance's.
                "--shared=2",
                "--format",
                d.format,
                # By id: ids are unique in a qcow2 image, names need not be.
                f"--load-snapshot=snapshot.id={d.point['id']}",
                "--export-name",
                "disk",
                "--socket",
                sock,
                d.path,
            ]
            errlog = os.path.join(folder, f"d{i}.err")
            with open(errlog, "wb") as err:
                try:
                    proc = spawn(argv, stderr=err.fileno())
                except SubprocessError as e:
                    raise ImageError(f"{e} (Debian package qemu-utils)") from e
            procs.append(proc)
            try:
                _wait_listening(sock, proc, time.monotonic() + budget.cap(NBD_START_TIMEOUT))
            except ImageError as e:
                raise ImageError(f"{d.path} at snapshot {d.point['id']}: {e}{_tail(errlog)}") from e
            out.append(dataclasses.replace(d, nbd_socket=sock, nbd_export="disk"))
        yield tuple(out)
    finally:
        for proc in procs:
            reap(proc, grace=2.0)
        if folder is not None:
            with contextlib.suppress(OSError):
                for name in os.listdir(folder):
                    os.unlink(os.path.join(folder, name))
                os.rmdir(folder)
