"""Nightly discovery: the sources a config names (image files, libvirt domains), vetted."""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from vmscan.errors import VmscanError
from vmscan.faults import stop_point
from vmscan.nightly.config import NightlyConfig

# --------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class Source:
    """One thing to scan: an image file or a libvirt domain XML (with its disks)."""

    path: str
    kind: str  # "image" | "domain" (XML file) | "libvirt" | "libvirt-running"
    disks: tuple[str, ...]
    error: str = ""  # set when the source cannot be used (not found, bad XML)


@dataclass
class Discovery:
    """What discovery found, plus warnings for a person."""

    sources: list[Source] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _excluded(path: str, patterns: tuple[str, ...]) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(os.path.basename(path), p) for p in patterns
    )


def _domain_disks(xml_path: Path) -> tuple[str, ...]:
    from vmscan.disk import parse_domain_xml

    disks = []
    for file, _fmt in parse_domain_xml(xml_path):
        disks.append(file if os.path.isabs(file) else str(xml_path.parent / file))
    return tuple(disks)


def _is_domain(path: Path) -> bool:
    from vmscan.disk import is_domain_xml

    return is_domain_xml(path)


def _folder_images(folder: str, cfg: NightlyConfig) -> list[str]:
    exts = {"." + e for e in cfg.extensions}
    found: list[str] = []
    if cfg.recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            found.extend(os.path.join(dirpath, n) for n in sorted(filenames))
    else:
        with contextlib.suppress(OSError):
            found = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    # Not only regular files: a FIFO or socket named like an image is reported, not skipped.
    return [
        p
        for p in found
        if not os.path.isdir(p) and (Path(p).suffix.lower() in exts or Path(p).suffix == ".xml")
    ]


def _configured_roots(cfg: NightlyConfig) -> list[str]:
    """Folders the config names (resolved): where a symlink found by discovery may point."""
    roots: list[str] = []
    for item in cfg.image_paths:
        glob_at = min((item.index(c) for c in "*?[" if c in item), default=-1)
        base = os.path.dirname(item[:glob_at]) if glob_at >= 0 else item
        if glob_at < 0 and not os.path.isdir(item):
            base = os.path.dirname(item)
        roots.append(os.path.realpath(base or "."))
    roots.extend(os.path.realpath(d) for d in (*cfg.libvirt_xml_dirs, *cfg.symlink_targets))
    return roots


def _source_problem(path: str, roots: list[str]) -> str:
    """Why a discovered image cannot be used ('' when it can): kind and symlink target."""
    from vmscan.source.kinds import check_source_path

    if not os.path.lexists(path):
        return "image not found"
    try:
        src = check_source_path(path)
    except VmscanError as exc:
        return str(exc)
    real = src.real
    if real != os.path.abspath(path) and not any(
        real == r or real.startswith(r.rstrip("/") + "/") for r in roots
    ):
        return (
            f"a symlink to {real}, outside the configured paths: not followed (add its "
            f"folder to [images] symlink_targets to allow it)"
        )
    return ""


def discover(cfg: NightlyConfig) -> Discovery:
    """Sources named by the config, deduplicated; a disk owned by a domain is not repeated."""
    out = Discovery()
    candidates: list[str] = []
    for item in cfg.image_paths:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                out.warnings.append(f"{item}: the pattern matches nothing")
            for m in matches:
                candidates.extend(_folder_images(m, cfg) if os.path.isdir(m) else [m])
        elif os.path.isdir(item):
            found = _folder_images(item, cfg)
            if not found:
                out.warnings.append(f"{item}: no disk images in this folder")
            candidates.extend(found)
        else:
            # A named file that is missing is an image that could not be scanned.
            candidates.append(item)
    domain_files: list[str] = []
    for folder in cfg.libvirt_xml_dirs:
        if not os.path.isdir(folder):
            out.warnings.append(f"{folder}: libvirt XML folder not found")
            continue
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            if name.endswith(".xml") and _is_domain(Path(full)):
                domain_files.append(full)
    sources: list[Source] = []
    for path in domain_files + [c for c in candidates if c.endswith(".xml")]:
        if _excluded(path, cfg.exclude):
            continue
        if not _is_domain(Path(path)):
            continue
        try:
            disks = _domain_disks(Path(path))
        except VmscanError as exc:
            sources.append(Source(path, "domain", (), error=str(exc)))
            continue
        sources.append(Source(path, "domain", disks))
    if cfg.libvirt_uris:
        # Every domain of each connection, running or shut off: scanned as libvirt:URI/NAME
        # (a point-in-time backup for a running one, its vetted files for a shut-off one).
        from vmscan.source.domain import discover_domains

        domains, warnings = discover_domains(cfg.libvirt_uris)
        out.warnings.extend(warnings)
        for dom in domains:
            if not _excluded(dom.name, cfg.exclude):
                kind = "libvirt-running" if dom.running else "libvirt"
                sources.append(Source(dom.full_label, kind, dom.disks))
    stop_point("discovery")  # tests: SIGKILL in the middle of discovery
    owned = {os.path.realpath(d) for s in sources for d in s.disks}
    roots = _configured_roots(cfg)
    for path in candidates:
        if path.endswith(".xml") or _excluded(path, cfg.exclude):
            continue
        if os.path.realpath(path) in owned:
            continue  # scanned as part of its libvirt domain
        err = _source_problem(path, roots)
        sources.append(Source(path, "image", (path,), error=err))
    seen: set[str] = set()
    for src in sources:
        real = src.path if src.kind.startswith("libvirt") else os.path.realpath(src.path)
        if real in seen:
            continue
        seen.add(real)
        out.sources.append(src)
    return out
