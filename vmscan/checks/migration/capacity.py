"""Capacity: free space of the mounted filesystems."""

from __future__ import annotations

from typing import Any

from vmscan.checks.migration.common import Run
from vmscan.checks.migration.rules import CAP_LOW_FREE


def capacity(r: Run) -> None:
    mps = r.ctx.root.mountpoints or {"/": r.ctx.root.device}
    threshold = float(r.ctx.options.get("min_free_percent", 10))
    # What the scanner could not mount must not be measured: statvfs of the empty
    # directory would report the parent filesystem.
    unmounted: set[str] = set()
    if r.ctx.image is not None:
        mounted = {(f.mountpoint, f.device) for f in r.ctx.image.filesystems if f.mounted}
        unmounted = {mp for mp, dev in mps.items() if (mp, dev) not in mounted}
    out: list[dict[str, Any]] = []
    for mp in sorted(mps):
        st = None if mp in unmounted else r.fs.statvfs(mp)
        if not st or not st.get("blocks"):
            out.append(
                {
                    "mountpoint": mp,
                    "device": mps[mp],
                    "size": None,
                    "used": None,
                    "free": None,
                    "note": "not mounted" if mp in unmounted else "statvfs failed",
                }
            )
            continue
        bs = st["bsize"]
        size = st["blocks"] * bs
        used = (st["blocks"] - st["bfree"]) * bs
        free = st["bavail"] * bs
        pct = round(100.0 * st["bavail"] / st["blocks"], 1)
        out.append(
            {
                "mountpoint": mp,
                "device": mps[mp],
                "size": size,
                "used": used,
                "free": free,
                "free_percent": pct,
            }
        )
        if pct < threshold:
            r.add(
                CAP_LOW_FREE,
                mp,
                "low-free",
                title=f"{mp} has {pct}% free (threshold {threshold:g}%)",
                file=mp,
                mountpoint=mp,
                device=mps[mp],
                size=size,
                used=used,
                free=free,
                free_percent=pct,
                threshold_percent=threshold,
                text=f"{free} of {size} bytes free",
            )
    r.facts["filesystems"] = out
    r.facts["min_free_percent"] = threshold
