"""The per-image unit of a night: scan options, and one planned image scanned into the
result to store (no database, no storing: the local run and a fleet executor both call it)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmscan.completeness import (
    finalize_image_dict,
    incomplete_plugins,
)
from vmscan.errors import VmscanError
from vmscan.model import ImageResult, ScanResult, to_jsonable
from vmscan.nightly.av_recheck import keep_unstreamed_av_findings
from vmscan.nightly.config import NightlyConfig
from vmscan.nightly.digests import default_signatures_dir
from vmscan.nightly.identity import source_identity, stat_parts
from vmscan.nightly.merge import (
    _error_result,
    _merge_partial,
)
from vmscan.nightly.plan import PlanItem

log = logging.getLogger(__name__)

ScanFn = Callable[..., ScanResult]


def plugin_options(cfg: NightlyConfig) -> dict[str, Any]:
    """Options handed to catalogers and checks (as ``vmscan scan`` builds them)."""
    sig_dir = Path(cfg.signatures_dir) if cfg.signatures_dir else default_signatures_dir()
    options: dict[str, Any] = {"av_scope": cfg.av_scope, "signatures_dir": str(sig_dir)}
    if cfg.clamd:
        options["clamd"] = cfg.clamd
    if cfg.license_policy:
        options["license_policy"] = cfg.license_policy
    if "patch" in cfg.checks:
        # Compile the advisory index once; workers open it read-only by this path.
        with contextlib.suppress(ImportError, OSError, ValueError, VmscanError):
            from vmscan.advisories import prepare

            prepare(options)
    return options


def make_scan_options(cfg: NightlyConfig, checks: tuple[str, ...], jobs: int) -> Any:
    """The scanner's ScanOptions for this config (only the fields it knows)."""
    from vmscan.scanner import ScanOptions
    from vmscan.split import Policy

    plugin_options_ = plugin_options(cfg)
    wanted: dict[str, Any] = {
        "jobs": jobs,
        "memsize": cfg.memsize,
        "timeout": cfg.timeout,
        "accel": cfg.accel,
        "stream_appliances": Policy.parse(cfg.stream_appliances),
        "rehash": cfg.rehash,
        "manifest": cfg.manifest,
        "checks": checks,
        "fail_on": cfg.fail_on,
        "allow_backing": cfg.allow_backing,
        "disk_format": cfg.disk_format,
        "state_db": str(cfg.state_db),
        "quiet": True,
        "plugin_options": plugin_options_,
    }
    names = {f.name for f in dataclasses.fields(ScanOptions)}
    return ScanOptions(**{k: v for k, v in wanted.items() if k in names})


def _default_scan_fn() -> ScanFn:
    from vmscan.scanner import scan_sources

    return scan_sources


def image_result(
    cfg: NightlyConfig, item: PlanItem, img: ImageResult, base: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The result to store for one scanned planned image, and the identity to store with it.

    ``base``: for a partial rescan, the stored result whose other checks are kept. The
    identity is None when the result must not be carried forward (a check did not complete,
    the image changed or vanished under the scan). Stores nothing.
    """
    result: dict[str, Any] = to_jsonable(img)
    result["source"] = item.source.path
    if item.action == "partial" and base is not None:
        result = _merge_partial(base, result, item.checks)
        if item.av_scope and result.get("status") != "error":
            result = keep_unstreamed_av_findings(base, result, item.av_scope, str(cfg.state_db))
    finalize_image_dict(result)  # whatever the scan function: status follows plugins
    ident = item.identity
    try:
        after = source_identity(item.source, fmt=cfg.disk_format, allow_backing=cfg.allow_backing)
        if stat_parts(after) != stat_parts(item.identity or {}):
            result.setdefault("errors", []).append(
                "the image changed while it was scanned (size, times or inode of one of its "
                "files differ): this result may be inconsistent; it is rescanned next run"
            )
            if result.get("status") == "ok":
                result["status"] = "partial"
            ident = None
    except OSError as exc:
        result.setdefault("errors", []).append(f"the image vanished during the scan: {exc}")
        result["status"] = "error"
        ident = None
    if ident is not None and incomplete_plugins(result):
        # A check that did not complete is retried next run: nothing is carried forward.
        ident = None
    return result, ident


def scan_planned_image(
    cfg: NightlyConfig,
    item: PlanItem,
    *,
    scan_fn: ScanFn | None = None,
    base: dict[str, Any] | None = None,
    plugin_options_extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Scan one planned image (action "scan" or "partial") and return what to store.

    The per-image unit of the night for other executors (a Dask worker): no database, no
    storing. ``plugin_options_extra`` carries services the caller runs (a clamd address and
    descriptor); ``base`` is the stored result a partial rescan merges into.
    """
    scan = scan_fn or _default_scan_fn()
    opts = make_scan_options(cfg, item.checks, 1)
    if item.av_scope:
        opts.plugin_options["av_scope"] = item.av_scope  # a bounded antivirus re-check
    opts.plugin_options.update(plugin_options_extra or {})
    got: list[ImageResult] = []
    scanned = scan([item.source.path], opts, on_image_done=got.append)
    img = got[0] if got else (scanned.images[0] if scanned.images else None)
    if img is None:
        return _error_result(item.source.path, "the scanner returned no result"), None
    return image_result(cfg, item, img, base)
