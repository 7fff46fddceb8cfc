"""Lifecycle: end-of-life of the OS release, and Windows state that must be settled before
a move (hibernation, dirty NTFS, pending reboot).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from pathlib import Path
from typing import Any

from vmscan.checks.migration.binaries import (
    hiberfil_state,
    ntfs_volume_flags,
)
from vmscan.checks.migration.common import Run, ci_path, hive_path
from vmscan.checks.migration.drivers import open_hive
from vmscan.checks.migration.rules import (
    LIFE_EOL,
    WIN_HIBERFIL,
    WIN_HIBERNATED,
    WIN_NTFS_DIRTY,
    WIN_PENDING_REBOOT,
)
from vmscan.errors import GuestError, VmscanError
from vmscan.model import Severity


@functools.lru_cache(maxsize=4)
def _eol_table(path: str | None) -> list[Any]:
    from vmscan import eol

    return eol.load_table(Path(path) if path else None)


def lifecycle(r: Run) -> None:
    from vmscan import eol

    try:
        table = _eol_table(r.ctx.options.get("eol_table"))
    except VmscanError as err:
        r.facts["eol"] = {"evaluated": False, "reason": str(err)}
        r.notes.add(f"end-of-life table not used: {err}")
        return
    today = r.ctx.options.get("today")
    st = eol.status(r.ctx.root.os, table, today if isinstance(today, dt.date) else None)
    if st is None:
        r.facts["eol"] = {"evaluated": True, "known": False}
        return
    e = st.entry
    r.facts["eol"] = {
        "evaluated": True,
        "known": True,
        "name": e.name,
        "state": st.state,
        "eol": e.eol.isoformat(),
        "extended": e.extended.isoformat() if e.extended else None,
    }
    if st.state == "eol":
        r.add(
            LIFE_EOL,
            "os",
            f"eol|{e.name}",
            title=f"{e.name} is past end of life",
            text=f"end of life {e.eol.isoformat()}"
            + (f", extended support ended {e.extended.isoformat()}" if e.extended else ""),
            eol=e.eol.isoformat(),
            days_past_eol=st.days_past_eol,
        )
    elif st.state == "extended":
        r.add(
            LIFE_EOL,
            "os",
            f"extended|{e.name}",
            severity=Severity.LOW,
            title=f"{e.name} is past standard support (extended support only)",
            text=f"standard support ended {e.eol.isoformat()}; extended support until "
            f"{e.extended.isoformat() if e.extended else '?'}",
            eol=e.eol.isoformat(),
            days_past_eol=st.days_past_eol,
        )


class _NoDevices(Exception):
    """The view has no block devices (a host folder): raw volume facts are not checked."""


def windows_state(r: Run) -> None:
    fs = r.fs
    sysroot = r.facts.get("systemroot") or "/Windows"
    hib = ci_path(fs, "/hiberfil.sys")
    state: dict[str, Any] = {"hiberfil": hib}
    if hib:
        try:
            head = fs.read_head(hib, 8)
            state["hibernation"] = hiberfil_state(head)
        except VmscanError as e:
            state["hibernation"] = f"unreadable: {e}"
        if state["hibernation"] == "hibernated":
            r.add(
                WIN_HIBERNATED,
                hib,
                "hibernated",
                file=hib,
                text="hiberfil.sys starts with a hibernation signature (hibr)",
            )
        else:
            r.add(
                WIN_HIBERFIL,
                hib,
                "hiberfil",
                file=hib,
                text=f"hiberfil.sys present ({state['hibernation']})",
            )
    # NTFS dirty flag: raw volume reads, only possible with block devices behind the view.
    dirty: dict[str, Any] = {}
    ntfs = [
        f["device"] for f in r.ctx.image_facts.get("filesystems") or [] if f.get("type") == "ntfs"
    ] or [r.ctx.root.device]
    for dev in ntfs:

        def read(off: int, n: int, dev: str = dev) -> bytes:
            data = fs.read_device(dev, n, off)
            if data is None:
                raise _NoDevices
            return data

        try:
            flags = ntfs_volume_flags(read)
        except _NoDevices:
            dirty = {}
            break
        except GuestError as e:
            dirty[dev] = f"unreadable: {e}"
            continue
        dirty[dev] = None if flags is None else bool(flags & 0x0001)
        if flags is not None and flags & 0x0001:
            r.add(
                WIN_NTFS_DIRTY,
                dev,
                "dirty",
                file=dev,
                device=dev,
                text=f"$Volume flags 0x{flags:04x} (dirty bit set)",
            )
    state["ntfs_dirty"] = dirty or "not checked (no block devices behind this view)"
    # Pending reboot markers: files, then registry.
    markers: list[str] = []
    pending_xml = ci_path(fs, f"{sysroot}/WinSxS/pending.xml")
    if pending_xml:
        markers.append(pending_xml)
    if r.facts.get("pending_file_renames"):
        markers.append(
            "SYSTEM: Session Manager\\PendingFileRenameOperations "
            f"({r.facts['pending_file_renames']} entries)"
        )
    sw = open_hive(r, sysroot, "SOFTWARE")
    if sw is not None:
        try:
            cv = ["Microsoft", "Windows", "CurrentVersion"]
            for keys in (
                [*cv, "Component Based Servicing", "RebootPending"],
                [*cv, "WindowsUpdate", "Auto Update", "RebootRequired"],
            ):
                if hive_path(sw, keys) is not None:
                    markers.append("SOFTWARE: " + "\\".join(keys))
        except VmscanError as e:
            r.notes.add(f"SOFTWARE hive: {e}")
        finally:
            with contextlib.suppress(Exception):
                sw.close()
    state["pending_reboot"] = markers
    r.facts["windows_state"] = state
    if markers:
        r.add(
            WIN_PENDING_REBOOT,
            "os",
            "pending-reboot",
            file=markers[0].split(" (")[0],
            markers=markers,
            text="; ".join(markers),
        )
