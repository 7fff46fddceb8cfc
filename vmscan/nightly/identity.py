"""What an image is made of: the identity that decides whether it changed since the last run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from vmscan.errors import VmscanError
from vmscan.nightly.discovery import Source

log = logging.getLogger(__name__)

HEAD_BYTES = 1 << 20
_QEMU_IMG_TIMEOUT = 60
_MAX_INFO_BYTES = 4 << 20


# --------------------------------------------------------------------------------------
# Identity and digests


def _qemu_info_digest(path: str) -> tuple[str, dict[str, Any]]:
    """sha256 of ``qemu-img info`` JSON (the image's metadata) and the parsed info."""
    from vmscan.disk import sniff_format

    try:
        fmt = sniff_format(Path(path))
    except VmscanError as exc:
        return "error:" + str(exc), {}
    from vmscan.disk import FORMATS
    from vmscan.proc import SubprocessError, run_bounded

    if fmt not in FORMATS:
        return f"unsupported:{fmt}", {}
    cmd = ["qemu-img", "info", "--output=json", "-f", fmt, "-U", path]
    try:
        # Own process group, killed and reaped on expiry (a hostile extent can hang it).
        proc = run_bounded(cmd, timeout=_QEMU_IMG_TIMEOUT, max_output=_MAX_INFO_BYTES)
    except SubprocessError as exc:
        return f"error:{type(exc).__name__}", {}
    if proc.returncode != 0:
        return "error:" + hashlib.sha256(proc.stderr).hexdigest(), {}
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return "error:unreadable", {}
    canon = json.dumps(info, sort_keys=True).encode()
    return hashlib.sha256(canon).hexdigest(), info if isinstance(info, dict) else {}


def quick_stat(path: str) -> dict[str, int]:
    """size, mtime_ns, inode and device of a file (follows symlinks)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "dev": st.st_dev}


def file_identity(path: str, *, with_qemu_info: bool = True) -> dict[str, Any]:
    """Identity of one disk file: stat triple, sha256 of the first MiB, metadata digest.

    Raises OSError when the file is gone or unreadable.
    """
    ident: dict[str, Any] = {"path": path, **quick_stat(path)}
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(HEAD_BYTES))
    ident["head_sha256"] = h.hexdigest()
    if with_qemu_info:
        digest, info = _qemu_info_digest(path)
        ident["info_sha256"] = digest
        # A qcow2 overlay's content depends on its backing file: include its stat.
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if isinstance(backing, str) and backing:
            bpath = (
                backing if os.path.isabs(backing) else os.path.join(os.path.dirname(path), backing)
            )
            try:
                ident["backing"] = {"path": bpath, **quick_stat(bpath)}
            except OSError as exc:
                ident["backing"] = {"path": bpath, "error": exc.strerror or str(exc)}
    # st_dev is not identity (a remount changes it); keep it only for grouping.
    ident.pop("dev", None)
    return ident


def source_identity(src: Source) -> dict[str, Any]:
    """Identity of a source: its disks (and, for a domain, the XML's content hash)."""
    ident: dict[str, Any] = {"kind": src.kind}
    if src.kind == "domain":
        data = Path(src.path).read_bytes()[: 4 << 20]
        ident["xml_sha256"] = hashlib.sha256(data).hexdigest()
    ident["disks"] = [file_identity(d) for d in src.disks]
    return ident
