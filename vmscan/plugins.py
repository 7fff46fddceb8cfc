"""Plugin bases (catalogers fill ``packages``, checks add ``findings``) and how they are run.

Plugins are registered in explicit tuples (``ALL_CATALOGERS``, ``ALL_CHECKS`` in
:mod:`vmscan.registry`), never by import side effects. ``NAME`` and ``VERSION`` go
into the report's plugin status list (bump ``VERSION`` when a plugin's behaviour changes).
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmscan.completeness import PluginState, bound, plugin_status, skipped
from vmscan.errors import ApplianceDiedError
from vmscan.guestfs_view import GuestFS
from vmscan.model import (
    FileEntry,
    Finding,
    ImageResult,
    OSInfo,
    Package,
    PluginStatus,
    RootResult,
)

log = logging.getLogger(__name__)


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


def _died(name: str, why: str, version: str = "") -> PluginStatus:
    return PluginStatus(name, PluginState.FAILED.value, bound(why), version)


class _PhaseClock(Protocol):
    def plugin(self, name: str) -> AbstractContextManager[object]: ...


def run_plugins(
    fs: GuestFS,
    ctx: ScanContext,
    catalogers: Iterable[Cataloger],
    checks: Iterable[Check],
    alive: Callable[[], bool],
    *,
    not_selected: Iterable[Check] = (),
    timings: _PhaseClock | None = None,
) -> None:
    """Every cataloger, then the selected checks; each one's status from what it said.

    One plugin never aborts the image: an exception makes it ``failed``, a gap note
    ``partial`` (see :mod:`vmscan.completeness`); the image status follows from them.
    Every registered plugin reports on every root: a cataloger whose database is not
    there and each check in *not_selected* are ``skipped`` with the reason; each status
    carries the plugin's ``VERSION``. The appliance is checked before the first plugin
    and after each (``alive``, one ping): once it is dead the remaining plugins are
    ``failed`` without being run, and what the plugin that was running returned is
    dropped, since a plugin that catches broadly could have read "absent" into a failure
    to look.
    """
    # Each runner returns False when its plugin does not apply (then it is skipped).
    plugins: list[tuple[str, str, Callable[[], bool]]] = []
    for cat in catalogers:

        def run_cat(cat: Any = cat) -> bool:
            if not cat.applies(fs, ctx.root.os):
                return False
            ctx.root.packages.extend(cat.catalog(fs, ctx))
            return True

        plugins.append((cat.NAME, cat.VERSION, run_cat))
    for check in checks:

        def run_check(check: Any = check) -> bool:
            ctx.root.findings.extend(check.run(fs, ctx))
            return True

        plugins.append((check.NAME, check.VERSION, run_check))
    # The check after one plugin is the check before the next: one ping per plugin.
    dead = None if alive() else "not run: the appliance died before the plugins ran"
    for name, version, run in plugins:
        if dead is not None:
            ctx.root.plugins.append(_died(name, dead, version))
            continue
        ctx.notes = []
        sections = dict(ctx.root.sections)
        npkgs, nfind = len(ctx.root.packages), len(ctx.root.findings)
        error: Exception | None = None
        ran = True
        try:
            with timings.plugin(name) if timings is not None else contextlib.nullcontext():
                ran = run()
        except Exception as e:  # one plugin never aborts the image
            log.debug("plugin %s failed", name, exc_info=True)
            error = e
        if isinstance(error, ApplianceDiedError) or not alive():
            # Nothing this plugin produced can be trusted: drop it.
            del ctx.root.packages[npkgs:]
            del ctx.root.findings[nfind:]
            ctx.root.sections.clear()
            ctx.root.sections.update(sections)
            why = f"the appliance died during this plugin: {error}" if error else ""
            ctx.root.plugins.append(
                _died(name, why or "the appliance died during this plugin", version)
            )
            dead = "not run: the appliance died during an earlier plugin"
            continue
        if error is not None:
            ctx.root.plugins.append(plugin_status(name, ctx.notes, error, version))
        elif ran:
            ctx.root.plugins.append(plugin_status(name, ctx.notes, version=version))
        else:
            why = "not applicable: its package database is not on this root"
            ctx.root.plugins.append(skipped(name, why, version))
    for check in not_selected:
        ctx.root.plugins.append(skipped(check.NAME, "not selected (--checks)", check.VERSION))
