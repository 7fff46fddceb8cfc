"""Nightly job (``vmscan nightly``): one module per concern, re-exported here.

config (schema, loading) -> discovery (sources) -> identity (what a disk is made of) and
digests (data and settings a result depends on) -> plan (carry, partial, scan) -> run
(execution, storing) -> merge (partial rescans, report document) -> metrics. unit: one
planned image scanned into its result (the local run and a fleet executor call it);
av_recheck: bounded antivirus re-checks after a signature update; faults (vmscan.faults):
test-only stop points.
"""

from __future__ import annotations

from vmscan.nightly.config import (
    ConfigError,
    NightlyConfig,
    config_from_dict,
    key_line,
    load_config,
)
from vmscan.nightly.defaults import ALL_CHECKS, IMAGE_EXTENSIONS, REPORT_FORMATS_DEFAULT
from vmscan.nightly.digests import data_digests, default_signatures_dir, keys_for, scan_settings
from vmscan.nightly.discovery import Discovery, Source, discover
from vmscan.nightly.identity import file_identity, quick_stat, source_identity
from vmscan.nightly.merge import (
    CHECK_SECTIONS,
    OFFLINE_CHECKS,
    build_report_document,
    offline_recheck,
    summarize,
)
from vmscan.nightly.metrics import format_metrics, write_metrics
from vmscan.nightly.plan import DIGEST_CHECKS, PlanItem, plan
from vmscan.nightly.run import (
    BusyError,
    NightlyOutcome,
    dry_run,
    run_lock,
    run_nightly,
    store_image_result,
)
from vmscan.nightly.unit import (
    ScanFn,
    _default_scan_fn,
    image_result,
    make_scan_options,
    plugin_options,
    scan_planned_image,
)

__all__ = [
    "ALL_CHECKS",
    "CHECK_SECTIONS",
    "DIGEST_CHECKS",
    "IMAGE_EXTENSIONS",
    "OFFLINE_CHECKS",
    "REPORT_FORMATS_DEFAULT",
    "BusyError",
    "ConfigError",
    "Discovery",
    "NightlyConfig",
    "NightlyOutcome",
    "PlanItem",
    "ScanFn",
    "Source",
    "_default_scan_fn",
    "build_report_document",
    "config_from_dict",
    "data_digests",
    "default_signatures_dir",
    "discover",
    "dry_run",
    "file_identity",
    "format_metrics",
    "image_result",
    "key_line",
    "keys_for",
    "load_config",
    "make_scan_options",
    "offline_recheck",
    "plan",
    "plugin_options",
    "quick_stat",
    "run_lock",
    "run_nightly",
    "scan_planned_image",
    "scan_settings",
    "source_identity",
    "store_image_result",
    "summarize",
    "write_metrics",
]
