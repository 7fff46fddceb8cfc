"""qcow2 internal snapshots read from the snapshot table on the host, with bounded reads.

Why parse the table in Python rather than trust ``qemu-img snapshot -l``: the vetting already
reads every header this way (one bounded parser, no subprocess, no output format to scrape),
and ``qemu-img info`` (run anyway as the vetting's cross-check) lists the same snapshots, so
any disagreement is a refusal, as for every other header field. Layout: qemu's
``docs/interop/qcow2.txt`` ("Snapshots") and ``qcow2_read_snapshots`` in
``block/qcow2-snapshot.c`` (qemu 7.2), whose limits are kept.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import struct
from typing import Any

from vmscan.errors import ImageError
from vmscan.model import Snapshot
from vmscan.source.headers import open_no_block

#: qemu's QCOW_MAX_SNAPSHOTS and QCOW_MAX_SNAPSHOTS_SIZE.
MAX_SNAPSHOTS = 65536
MAX_TABLE_BYTES = 64 * 1024 * 1024
#: QCOW_MAX_SNAPSHOT_EXTRA_DATA.
MAX_EXTRA = 1024
_ENTRY = struct.Struct(">QIHHIIQII")
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def _pread(fd: int, offset: int, length: int, path: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ImageError(f"{path}: not a valid qcow2 image: snapshot table cut short")
    return data


def read_snapshots(path: str) -> tuple[Snapshot, ...]:
    """The snapshots of the qcow2 image *path*, in table order (ImageError when damaged)."""
    fd = open_no_block(path)
    try:
        head = os.pread(fd, 72, 0)
        if len(head) < 72 or not head.startswith(b"QFI\xfb"):
            raise ImageError(f"{path}: not a valid qcow2 image: header missing or cut short")
        count, offset = struct.unpack(">IQ", head[60:72])
        if count == 0:
            return ()
        if count > MAX_SNAPSHOTS:
            raise ImageError(
                f"{path}: not a valid qcow2 image: {count} snapshots (qemu's limit "
                f"is {MAX_SNAPSHOTS})"
            )
        if offset % 8:
            raise ImageError(f"{path}: not a valid qcow2 image: misaligned snapshot table")
        snaps: list[Snapshot] = []
        pos = offset
        for _ in range(count):
            if pos - offset > MAX_TABLE_BYTES:
                raise ImageError(f"{path}: not a valid qcow2 image: snapshot table too large")
            (_l1, _l1_size, id_len, name_len, dsec, dnsec, clock, vmstate, extra_len) = (
                _ENTRY.unpack(_pread(fd, pos, _ENTRY.size, path))
            )
            if extra_len > MAX_EXTRA:
                raise ImageError(f"{path}: not a valid qcow2 image: snapshot extra data too long")
            rest = _pread(fd, pos + _ENTRY.size, extra_len + id_len + name_len, path)
            extra = rest[:extra_len]
            disk_size = struct.unpack(">Q", extra[8:16])[0] if extra_len >= 16 else None
            if extra_len >= 8:
                vmstate = max(vmstate, struct.unpack(">Q", extra[0:8])[0])
            sid = rest[extra_len : extra_len + id_len].decode("utf-8", "replace")
            name = rest[extra_len + id_len :].decode("utf-8", "replace")
            when = dt.datetime.fromtimestamp(dsec, dt.UTC) + dt.timedelta(
                microseconds=dnsec // 1000
            )
            snaps.append(
                Snapshot(
                    id=sid,
                    name=name,
                    date=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    vm_clock_ns=clock,
                    vm_state_size=vmstate,
                    disk_size=disk_size,
                )
            )
            pos += (_ENTRY.size + extra_len + id_len + name_len + 7) & ~7
        return tuple(snaps)
    finally:
        os.close(fd)


def cross_check(snaps: tuple[Snapshot, ...], info: dict[str, Any]) -> str:
    """Where ``qemu-img info``'s snapshot list differs from the table read here ("" if not)."""
    theirs = info.get("snapshots") or []
    ours = [(s.id, s.name) for s in snaps]
    got = [(str(s.get("id", "")), str(s.get("name", ""))) for s in theirs if isinstance(s, dict)]
    if ours != got:
        return f"snapshots {got[:8]!r} instead of {ours[:8]!r}"
    return ""


def find(snaps: tuple[Snapshot, ...], selector: str) -> Snapshot | None:
    """The snapshot *selector* names: ``id:N`` by id; else an exact name, else an id."""
    if selector.startswith("id:"):
        return next((s for s in snaps if s.id == selector[3:]), None)
    by_name = [s for s in snaps if s.name == selector]
    if by_name:
        return by_name[0]
    return next((s for s in snaps if s.id == selector), None)


def selector_for(snap: Snapshot, snaps: tuple[Snapshot, ...]) -> str:
    """The shortest selector that names *snap* alone (its name when that is unambiguous)."""
    name = snap.name
    if (
        name
        and sum(1 for s in snaps if s.name == name) == 1
        and not any(s.id == name for s in snaps if s is not snap)
        and not name.startswith(("id:", "layer:"))
        # Labels end up in shells and file names: plain names only, others by id.
        and _PLAIN.fullmatch(name)
    ):
        return name
    return f"id:{snap.id}"
