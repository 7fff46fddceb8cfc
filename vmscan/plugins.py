"""Plugin bases: catalogers fill ``packages``, checks add ``findings``.

Plugins are registered in explicit tuples (``ALL_CATALOGERS``, ``ALL_CHECKS`` in
:mod:`vmscan.registry`), never by import side effects. ``NAME`` and ``VERSION`` go
into the report's plugin status list (bump ``VERSION`` when a plugin's behaviour changes).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from vmscan.guestfs_view import GuestFS
from vmscan.model import FileEntry, Finding, ImageResult, OSInfo, Package, RootResult


@dataclass
class ScanContext:
    """What a plugin may use for one root besides the guest view."""

    root: RootResult
    manifest: list[FileEntry]
    options: dict[str, Any] = field(default_factory=dict)
    # Facts about the whole image (partition tables, filesystems, disks).
    image_facts: dict[str, Any] = field(default_factory=dict)
    # Per-plugin notes (e.g. "copyright file of foo is not UTF-8"): end up in the report.
    notes: list[str] = field(default_factory=list)
    # The image being scanned (image-level sections such as ``antivirus`` go here).
    image: ImageResult | None = None
    # The raw libguestfs handle with this root mounted read-only at "/", for checks
    # that need bulk transfers (tar_out, checksums_out). None under HostDirFS.
    handle: Any = None
    # The state database (vmscan.state.StateDB) when the run has one, for caches.
    state: Any = None


class Cataloger(abc.ABC):
    """Finds installed packages of one format. Pure parsing lives in separate functions."""

    NAME: str = ""
    VERSION: str = "1"

    @abc.abstractmethod
    def applies(self, fs: GuestFS, os_info: OSInfo) -> bool:
        """True when this package database is present (by presence, not by distro name)."""

    @abc.abstractmethod
    def catalog(self, fs: GuestFS, ctx: ScanContext) -> list[Package]:
        """Packages found; raise only for a fatal failure, add notes for partial ones."""


class Check(abc.ABC):
    """Produces findings for one root from the guest, packages and manifest."""

    NAME: str = ""
    VERSION: str = "1"

    @abc.abstractmethod
    def run(self, fs: GuestFS, ctx: ScanContext) -> list[Finding]:
        """Findings; may also put a section into ``ctx.root.sections``."""
