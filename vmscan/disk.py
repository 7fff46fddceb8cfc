"""Decide what to open, on the host and before any appliance: formats, backing chains, sources.

Security: qemu must never guess an image format (CVE-2010-3851), and a qcow2/VMDK
file can name any host file as its backing file or extent. Every disk is therefore
sniffed here, its metadata read with ``qemu-img info`` (which does not open backing
files), and every file it refers to must lie inside an allowed folder.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET

from vmscan.errors import ImageError, UnsafeImageError
from vmscan.model import DiskRef

#: Formats vmscan accepts (qemu names).
FORMATS = ("qcow2", "vmdk", "vpc", "vhdx", "raw")
#: User-facing aliases.
FORMAT_ALIASES = {"vhd": "vpc", "img": "raw"}
_QEMU_IMG_TIMEOUT = 60
_MAX_INFO_BYTES = 4 * 1024 * 1024
_MAX_CHAIN = 16
_MAX_DOMAIN_XML = 1024 * 1024


@dataclass(frozen=True)
class Source:
    """One thing to scan: a VM made of one or more disks."""

    label: str  # as the user gave it
    disks: tuple[DiskRef, ...]


def normalise_format(fmt: str) -> str:
    """User spelling to qemu's format name; ImageError for an unknown one."""
    f = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if f not in FORMATS:
        raise ImageError(
            f"unknown disk format {fmt!r} (expected one of qcow2, vmdk, vhd, vhdx, raw)"
        )
    return f


def sniff_format(path: Path) -> str:
    """The image format from its magic bytes (raw when nothing matches)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            tail = b""
            if size >= 512:
                fh.seek(size - 512)
                tail = fh.read(512)
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not a disk image") from e
    except FileNotFoundError as e:
        raise ImageError(f"{path}: no such file") from e
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from e
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"COWD"):
        return "vmdk"
    if head.startswith(b"# Disk DescriptorFile") or b"createType=" in head[:1024]:
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix") or tail.startswith(b"conectix"):
        return "vpc"
    return "raw"


def qemu_img_info(path: Path, fmt: str) -> dict[str, Any]:
    """``qemu-img info`` with the format given explicitly; backing files are not opened."""
    cmd = ["qemu-img", "info", "--output=json", "-f", fmt, "-U", str(path)]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            timeout=_QEMU_IMG_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise ImageError("qemu-img is not installed (Debian package qemu-utils)") from e
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"{path}: qemu-img info took over {_QEMU_IMG_TIMEOUT} s") from e
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = msg[-1] if msg else f"exit code {proc.returncode}"
        detail = detail.removeprefix("qemu-img: ")
        raise ImageError(f"{path}: not a valid {fmt} image: {detail}")
    if len(proc.stdout) > _MAX_INFO_BYTES:
        raise ImageError(f"{path}: qemu-img info output is implausibly large")
    try:
        info: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ImageError(f"{path}: qemu-img info gave unreadable output") from e
    return info


#: Formats whose metadata ``qemu-img check`` can verify (cheap: metadata only).
_CHECKABLE = ("qcow2", "vhdx", "vmdk")


def qemu_img_check(path: Path, fmt: str) -> None:
    """Refuse a truncated or corrupt image up front (reads would silently give zeros)."""
    cmd = ["qemu-img", "check", "--output=json", "-f", fmt, "-U", str(path)]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            timeout=_QEMU_IMG_TIMEOUT * 5,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return  # a huge image: leave it to the appliance and the per-image timeout
    if proc.returncode in (0, 3, 63):  # clean, leaked clusters only, check unsupported
        return
    try:
        info = json.loads(proc.stdout[:_MAX_INFO_BYTES] or b"{}")
    except json.JSONDecodeError:
        info = {}
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    first = lines[0].removeprefix("qemu-img: ") if lines else f"exit code {proc.returncode}"
    count = info.get("corruptions") or info.get("check-errors")
    raise ImageError(
        f"{path}: {fmt} image is corrupt or truncated"
        + (f" ({count} errors; first: {first})" if count else f": {first}")
    )


def _inside(path: Path, folders: list[Path]) -> bool:
    real = path.resolve()
    return any(real == f or f in real.parents for f in folders)


def _referenced_files(info: dict[str, Any], image: Path) -> list[tuple[str, Path]]:
    """Host files an image refers to: backing file, VMDK extents, qcow2 data file."""
    refs: list[tuple[str, Path]] = []
    base = image.parent
    backing = info.get("backing-filename")
    if backing:
        refs.append(("backing file", base / str(backing)))
    spec = (info.get("format-specific") or {}).get("data") or {}
    data_file = spec.get("data-file")
    if data_file:
        refs.append(("external data file", base / str(data_file)))
    for ext in spec.get("extents") or []:
        fn = ext.get("filename")
        if fn and Path(str(fn)).resolve() != image.resolve():
            refs.append(("VMDK extent", base / str(fn)))
    return refs


_VMDK_EXTENT = re.compile(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"')
_VMDK_PARENT = re.compile(r'^\s*parentFileNameHint\s*=\s*"([^"]*)"')


def _vet_vmdk_descriptor(path: Path, allowed: list[Path]) -> None:
    """Check a text VMDK descriptor's extents before qemu-img opens them."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from e
    if not head.startswith(b"# Disk DescriptorFile"):
        return  # binary sparse VMDK: qemu-img info reports its parent without opening it
    for line in head.decode("utf-8", "replace").splitlines():
        m = _VMDK_EXTENT.match(line) or _VMDK_PARENT.match(line)
        if m and m.group(1):
            ref = path.parent / m.group(1)
            if not _inside(ref, allowed):
                raise UnsafeImageError(
                    f"{path}: refused: its VMDK descriptor names {m.group(1)!r}, outside the "
                    f"image's folder and the folders given with --allow-backing"
                )


def check_disk(
    path: str | Path, fmt: str | None = None, allow_backing: tuple[str, ...] = ()
) -> DiskRef:
    """Detect the format and vet the whole backing chain of one disk.

    Raises :class:`UnsafeImageError` when the image refers to a file outside its own
    folder and the ``allow_backing`` folders, and :class:`ImageError` when it is not a
    readable image.
    """
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not a disk image")
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    allowed = [p.resolve().parent] + [Path(a).resolve() for a in allow_backing]
    top_fmt = normalise_format(fmt) if fmt else sniff_format(p)
    named = _SUFFIX_FORMATS.get(p.suffix.lower())
    if not fmt and named and named != top_fmt:
        # e.g. random bytes or a wiped header under a .qcow2 name: never guess.
        raise ImageError(
            f"{p}: named like a {named} image but its header is {top_fmt}"
            f"{' (no known image header)' if top_fmt == 'raw' else ''}; "
            f"pass --disk-format to scan it anyway"
        )
    if top_fmt == "vmdk":
        _vet_vmdk_descriptor(p, allowed)
    chain: list[str] = []
    cur, cur_fmt = p, top_fmt
    virtual_size: int | None = None
    for depth in range(_MAX_CHAIN):
        info = qemu_img_info(cur, cur_fmt)
        if depth == 0:
            virtual_size = int(info.get("virtual-size") or 0) or None
        refs = _referenced_files(info, cur)
        for kind, ref in refs:
            if not _inside(ref, allowed):
                raise UnsafeImageError(
                    f"{p}: refused: its {kind} {str(ref)!r} lies outside the image's folder "
                    f"and the folders given with --allow-backing"
                )
        if cur_fmt in _CHECKABLE:
            qemu_img_check(cur, cur_fmt)
        backing = next((r for k, r in refs if k == "backing file"), None)
        if backing is None:
            return DiskRef(str(p), top_fmt, virtual_size, tuple(chain))
        if not backing.exists():
            raise ImageError(f"{p}: backing file {str(backing)!r} does not exist")
        bfmt = info.get("backing-filename-format")
        cur_fmt = normalise_format(str(bfmt)) if bfmt else sniff_format(backing)
        cur = backing
        chain.append(str(backing.resolve()))
    raise UnsafeImageError(f"{p}: backing chain is longer than {_MAX_CHAIN} files")


def parse_domain_xml(path: Path) -> list[tuple[str, str | None]]:
    """(disk path, driver type) of each file or block disk of a libvirt domain."""
    try:
        if path.stat().st_size > _MAX_DOMAIN_XML:
            raise ImageError(f"{path}: domain XML is larger than {_MAX_DOMAIN_XML} bytes")
        root = SafeET.parse(str(path)).getroot()
    except ImageError:
        raise
    except Exception as e:  # defusedxml raises several types for hostile XML
        raise ImageError(f"{path}: not a readable libvirt domain XML: {e}") from e
    if root is None or root.tag != "domain":
        raise ImageError(f"{path}: the XML root element is not <domain>")
    disks: list[tuple[str, str | None]] = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue  # cdrom, floppy, lun
        src = disk.find("source")
        if src is None:
            continue
        file = src.get("file") if disk.get("type") == "file" else src.get("dev")
        if not file:
            continue
        drv = disk.find("driver")
        dtype = drv.get("type") if drv is not None else None
        disks.append((file, dtype))
    if not disks:
        raise ImageError(f"{path}: domain has no file-backed disks")
    return disks


def is_domain_xml(path: Path) -> bool:
    """True for a file that looks like libvirt domain XML."""
    if path.suffix.lower() != ".xml" or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            return b"<domain" in fh.read(4096)
    except OSError:
        return False


def resolve_source(
    label: str, disk_format: str | None = None, allow_backing: tuple[str, ...] = ()
) -> Source:
    """Turn one command-line source into vetted disks (raises ImageError)."""
    p = Path(label)
    if is_domain_xml(p):
        disks = []
        for file, dtype in parse_domain_xml(p):
            fp = Path(file) if os.path.isabs(file) else p.parent / file
            fmt = disk_format or dtype
            disks.append(check_disk(fp, fmt, allow_backing))
        return Source(label, tuple(disks))
    return Source(label, (check_disk(p, disk_format, allow_backing),))


def expand_sources(items: list[str]) -> list[str]:
    """Expand globs and folders (images and domain XML inside them), keep order."""
    out: list[str] = []
    for item in items:
        if any(c in item for c in "*?["):
            out.extend(sorted(glob.glob(item)))
        elif os.path.isdir(item) and not item.endswith(os.sep + "."):
            for name in sorted(os.listdir(item)):
                full = os.path.join(item, name)
                if os.path.isfile(full) and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    out.append(full)
        else:
            out.append(item)
    return out


_SUFFIX_FORMATS = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vhd": "vpc", ".vhdx": "vhdx"}
IMAGE_SUFFIXES = {".qcow2", ".qcow", ".img", ".raw", ".vmdk", ".vhd", ".vhdx", ".xml"}
