"""Prometheus textfile metrics of one nightly run (node_exporter textfile collector)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vmscan.faults import stop_point
from vmscan.model import SEVERITY_ORDER
from vmscan.nightly.defaults import ALL_CHECKS

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vmscan.nightly.run import NightlyOutcome


def format_metrics(outcome: NightlyOutcome) -> str:
    """Prometheus text exposition of one nightly run (node_exporter textfile collector)."""
    lines: list[str] = []

    def metric(name: str, help_: str, values: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in values:
            text = str(int(value)) if float(value).is_integer() else f"{value:.3f}"
            lines.append(f"{name}{labels} {text}")

    metric(
        "vmscan_nightly_images_scanned",
        "Images opened and scanned in the last run.",
        [("", outcome.scanned)],
    )
    metric(
        "vmscan_nightly_images_failed",
        "Images that could not be scanned in the last run.",
        [("", outcome.failed)],
    )
    metric(
        "vmscan_nightly_images_skipped_unchanged",
        "Images not opened because they were unchanged (result carried forward).",
        [("", outcome.skipped)],
    )
    metric(
        "vmscan_nightly_images_partial_rescans",
        "Unchanged images re-checked only for changed signatures or advisories.",
        [("", outcome.partial_rescans)],
    )
    names = sorted(set(ALL_CHECKS) | set(outcome.checks_incomplete))
    metric(
        "vmscan_nightly_checks_incomplete",
        "Checks and catalogers that failed or did not complete, per name, in the last run "
        "(one per root; those images are partial and are rescanned next run).",
        [(f'{{check="{_label(n)}"}}', outcome.checks_incomplete.get(n, 0)) for n in names],
    )
    metric(
        "vmscan_nightly_images_incomplete",
        "Images on which at least one selected check did not complete in the last run.",
        [("", outcome.images_incomplete)],
    )
    metric(
        "vmscan_nightly_findings",
        "Findings in the last run by severity.",
        [(f'{{severity="{k}"}}', outcome.findings_by_severity.get(k, 0)) for k in SEVERITY_ORDER],
    )
    metric(
        "vmscan_nightly_run_duration_seconds",
        "Wall time of the last run.",
        [("", outcome.duration_s)],
    )
    metric("vmscan_nightly_exit_code", "Exit code of the last run.", [("", outcome.exit_code)])
    metric(
        "vmscan_nightly_last_run_timestamp_seconds",
        "When the last run ended (Unix time).",
        [("", round(time.time()))],
    )
    if outcome.run_id is not None:
        metric(
            "vmscan_nightly_last_run_id",
            "Id of the last run in the state database.",
            [("", outcome.run_id)],
        )
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value, escaped (text exposition format)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(path: str | os.PathLike[str], outcome: NightlyOutcome) -> None:
    """Write the textfile atomically (node_exporter must never read half a file)."""
    from vmscan.report.json_out import ReportWriteError, atomic_writer

    text = format_metrics(outcome)
    target = Path(path)
    # A temp file left by a process killed between write and rename (the rename is atomic:
    # the metrics file itself is always whole).
    with contextlib.suppress(OSError):
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            stale.unlink()
    try:
        with atomic_writer(target) as fp:
            fp.write(text)
            stop_point("metrics")  # tests: SIGKILL while the metrics file is written
    except ReportWriteError as exc:
        log.error("metrics: %s", exc)
