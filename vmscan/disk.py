"""Decide what to open, on the host and before any appliance: sources, domains, vetted disks.

Security: qemu must never guess an image format (CVE-2010-3851), and a qcow2/VMDK file can
name any host file as its backing file, extent or data file. The vetting itself lives in
:mod:`vmscan.source` (header parsing per format, chain vetting, source kinds); this module
keeps the entry points: command-line sources, libvirt domain XML, folder expansion.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET

from vmscan.errors import ImageError
from vmscan.model import DiskRef
from vmscan.proc import Budget
from vmscan.source import headers
from vmscan.source.chain import FORMAT_ALIASES, MAX_CHAIN, normalise_format, vet_disk
from vmscan.source.points import pick_layer, pick_snapshot, split_point

__all__ = [
    "FORMATS",
    "FORMAT_ALIASES",
    "IMAGE_SUFFIXES",
    "MAX_CHAIN",
    "Source",
    "check_disk",
    "is_domain_xml",
    "normalise_format",
    "parse_domain_xml",
    "resolve_source",
    "sniff_format",
]

#: Formats vmscan accepts (qemu names).
FORMATS = headers.SUPPORTED
_MAX_DOMAIN_XML = 1024 * 1024


@dataclass(frozen=True)
class Source:
    """One thing to scan: a VM made of one or more disks."""

    label: str  # as the user gave it
    disks: tuple[DiskRef, ...]


def sniff_format(path: Path) -> str:
    """The image format from its magic bytes ("raw" when nothing matches; never blocks).

    Formats vmscan does not open (QED, VDI, LUKS, ...) come back under their qemu name.
    """
    return headers.sniff(os.fspath(path))


def check_disk(
    path: str | Path,
    fmt: str | None = None,
    allow_backing: tuple[str, ...] = (),
    budget: Budget | None = None,
) -> DiskRef:
    """Detect the format and vet the whole backing chain of one disk.

    Raises :class:`UnsafeImageError` when the image refers to something unsafe (outside its
    own folder and the ``allow_backing`` folders, a protocol, a loop, an unrecorded format,
    a device or FIFO) and :class:`ImageError` when it is not a readable image.
    """
    return vet_disk(os.fspath(path), fmt, allow_backing, budget)


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
    return [(file, dtype) for file, dtype, _target in domain_disks(root, str(path))]


def domain_disks(root: Any, where: str) -> list[tuple[str, str | None, str]]:
    """(disk path, driver type, target dev) of each file or block disk of a parsed domain."""
    if root is None or root.tag != "domain":
        raise ImageError(f"{where}: the XML root element is not <domain>")
    disks: list[tuple[str, str | None, str]] = []
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
        tgt = disk.find("target")
        disks.append((file, dtype, (tgt.get("dev") or "") if tgt is not None else ""))
    if not disks:
        raise ImageError(f"{where}: domain has no file-backed disks")
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
    label: str,
    disk_format: str | None = None,
    allow_backing: tuple[str, ...] = (),
    budget: Budget | None = None,
) -> Source:
    """Turn one command-line source into vetted disks (raises ImageError).

    ``IMAGE@SNAPSHOT`` (name or id, ``IMAGE@id:N``) and ``IMAGE@layer:N`` name a point in
    time of one image (:mod:`vmscan.source.points`).
    """
    path, selector = split_point(label)
    if selector is not None:
        return _resolve_point(label, path, selector, disk_format, allow_backing, budget)
    p = Path(label)
    if is_domain_xml(p):
        disks = []
        for file, dtype in parse_domain_xml(p):
            fp = Path(file) if os.path.isabs(file) else p.parent / file
            fmt = disk_format or dtype
            disks.append(check_disk(fp, fmt, allow_backing, budget))
        return Source(label, tuple(disks))
    return Source(label, (check_disk(p, disk_format, allow_backing, budget),))


def _resolve_point(
    label: str,
    path: str,
    selector: str,
    disk_format: str | None,
    allow_backing: tuple[str, ...],
    budget: Budget | None,
) -> Source:
    if is_domain_xml(Path(path)):
        raise ImageError(f"{label}: a point in time (@...) names one image file, not a domain")
    # The whole chain is vetted first: a lower layer is opened only as part of a vetted chain.
    disk = check_disk(path, disk_format, allow_backing, budget)
    if not selector.startswith("layer:"):
        return Source(label, (pick_snapshot(disk, selector, label),))
    lpath, lfmt, n = pick_layer(disk, selector, label)
    if n == len(disk.layers) - 1:
        point = {"kind": "layer", "index": n, "of": len(disk.layers)}
        return Source(label, (dataclasses.replace(disk, point=point),))
    # The folders allowed for the chain stay allowed when it is opened from a lower layer.
    folders = (os.path.dirname(disk.path), *allow_backing)
    low = check_disk(lpath, lfmt, folders, budget)
    point = {"kind": "layer", "index": n, "of": len(disk.layers), "image": disk.path}
    return Source(label, (dataclasses.replace(low, point=point),))


IMAGE_SUFFIXES = {".qcow2", ".qcow", ".img", ".raw", ".vmdk", ".vhd", ".vhdx", ".avhdx", ".xml"}
