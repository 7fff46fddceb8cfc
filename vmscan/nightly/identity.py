"""What an image is made of: the identity that decides whether it changed since the last run.

Every host file of every disk counts (the whole backing chain at any depth, every VMDK
extent, qcow2 external data files: walked and vetted by :func:`vmscan.source.chain.chain_files`),
each with size, mtime and ctime in nanoseconds, inode and device, plus a hash of each
layer's header and metadata (bounded reads). ctime cannot be set back from user space, so
a write that restores mtime (``touch -r``) still shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from vmscan.errors import VmscanError
from vmscan.nightly.discovery import Source

log = logging.getLogger(__name__)

#: Bytes hashed at the start of each layer (header; VMDK descriptor; VHDX headers, regions).
HEAD_BYTES = 1 << 20
#: Bytes hashed at the end of each layer (VHD footer, VMDK footer).
TAIL_BYTES = 64 << 10
#: Bytes hashed at the start of an extent or data file (its size and times do the rest).
PART_HEAD_BYTES = 64 << 10
#: Upper bound on the qcow2 L1 table hashed (8 MiB maps 8 TiB with 64 KiB clusters).
MAX_L1_BYTES = 8 << 20
_QEMU_IMG_TIMEOUT = 60
_MAX_INFO_BYTES = 4 << 20


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
    """size, mtime_ns, ctime_ns, inode and device of a file (follows symlinks)."""
    st = os.stat(path)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "dev": st.st_dev,
    }


def _hash_range(h: Any, fh: Any, offset: int, length: int) -> None:
    fh.seek(offset)
    h.update(fh.read(max(0, length)))


def layer_metadata_digest(path: str, fmt: str, *, head: int = HEAD_BYTES) -> str:
    """sha256 of a file's head and tail and, for qcow2, of its L1 table (all bounded)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        _hash_range(h, fh, 0, head)
        if size > head:
            start = max(head, size - TAIL_BYTES)
            _hash_range(h, fh, start, size - start)
        if fmt == "qcow2":
            fh.seek(0)
            hdr = fh.read(48)
            if len(hdr) == 48:
                # l1_size (entries) at 36, l1_table_offset at 40: where each cluster maps.
                l1_size = int.from_bytes(hdr[36:40], "big")
                l1_off = int.from_bytes(hdr[40:48], "big")
                _hash_range(h, fh, min(l1_off, size), min(l1_size * 8, MAX_L1_BYTES))
    return h.hexdigest()


def chain_identity(
    path: str, fmt: str | None = None, allow_backing: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], str]:
    """(one entry per host file of the disk, '' or why the chain could not be walked).

    A refused or unreadable chain is not an identity: the caller never carries a result
    forward for it (the scan then reports the refusal itself).
    """
    from vmscan.source.chain import chain_files

    try:
        files = chain_files(path, fmt, allow_backing)
    except VmscanError as exc:
        return [], str(exc)[:500]
    out: list[dict[str, Any]] = []
    for f in files:
        entry: dict[str, Any] = {"path": f.path, "layer": f.layer, "role": f.role}
        entry.update(quick_stat(f.path))
        if f.role == "layer":
            entry["meta_sha256"] = layer_metadata_digest(f.path, f.format)
        else:
            entry["head_sha256"] = layer_metadata_digest(f.path, "", head=PART_HEAD_BYTES)
        out.append(entry)
    return out, ""


def file_identity(
    path: str,
    *,
    with_qemu_info: bool = True,
    fmt: str | None = None,
    allow_backing: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Identity of one disk: its own stat and head hash, and every file of its chain.

    Raises OSError when a file is gone or unreadable.
    """
    ident: dict[str, Any] = {"path": path, **quick_stat(path)}
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(HEAD_BYTES))
    ident["head_sha256"] = h.hexdigest()
    if with_qemu_info:
        ident["info_sha256"], _info = _qemu_info_digest(path)
    files, problem = chain_identity(path, fmt, allow_backing)
    ident["files"] = files
    if problem:
        ident["chain_error"] = problem
    return ident


def source_identity(
    src: Source, *, fmt: str | None = None, allow_backing: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Identity of a source: its disks (and, for a domain, the XML's content hash)."""
    ident: dict[str, Any] = {"kind": src.kind}
    if src.kind == "libvirt-running":
        # A running VM changes under us all day: never "unchanged", scanned every night
        # from a new point-in-time view; its files are not ours to stat as an identity.
        ident["observed_at_ns"] = time.time_ns()
        ident["disks"] = []
        return ident
    if src.kind == "libvirt":
        fmt = None  # each disk's format is the domain definition's
    if src.kind == "domain":
        with open(src.path, "rb") as fh:
            data = fh.read(4 << 20)
        ident["xml_sha256"] = hashlib.sha256(data).hexdigest()
        fmt = None  # each disk's format is the domain XML's: detected here, not forced
    ident["disks"] = [file_identity(d, fmt=fmt, allow_backing=allow_backing) for d in src.disks]
    return ident


def chain_problems(identity: dict[str, Any]) -> list[str]:
    """Why some disk's chain could not be walked (empty when every disk's was)."""
    return [str(d["chain_error"]) for d in identity.get("disks") or [] if d.get("chain_error")]


def stat_parts(identity: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must not move while an image is scanned: the stat of every file of every disk."""
    out: list[tuple[Any, ...]] = []
    for d in identity.get("disks") or []:
        out.append((d.get("size"), d.get("mtime_ns"), d.get("inode")))
        for f in d.get("files") or []:
            out.append(
                (f.get("path"), f.get("size"), f.get("mtime_ns"), f.get("ctime_ns"), f.get("inode"))
            )
    return out
