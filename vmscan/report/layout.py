"""Where a run's reports go: ``<reports>/<run-id>/report.<ext>`` and a ``latest`` symlink."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from vmscan.document import ReportDoc
from vmscan.faults import stop_point
from vmscan.report.json_out import ReportWriteError, atomic_writer

log = logging.getLogger(__name__)

LATEST = "latest"
EXTENSIONS: dict[str, str] = {
    "json": "json",
    "html": "html",
    "sarif": "sarif",
    "csv": "csv",
    "junit": "junit.xml",
    "cyclonedx": "cdx.json",
    "spdx": "spdx.json",
}


def run_dir(reports_dir: str | os.PathLike[str], run_id: int) -> Path:
    """The folder of one run's reports."""
    return Path(reports_dir) / str(run_id)


def report_path(reports_dir: str | os.PathLike[str], run_id: int, fmt: str) -> Path:
    """``<reports>/<run-id>/report.<ext>``."""
    return run_dir(reports_dir, run_id) / f"report.{EXTENSIONS.get(fmt, fmt)}"


def write_run_reports(
    reports_dir: str | os.PathLike[str],
    run_id: int,
    doc: dict[str, Any],
    formats: list[str],
    *,
    latest: bool = True,
) -> list[Path]:
    """Write each format atomically, then point ``latest`` at the run (unless ``latest`` is
    False: the caller repoints it once the run is recorded complete). Returns the files."""
    from vmscan.report import WRITERS

    report = ReportDoc.from_json(doc)  # read once for every writer but JSON's
    written: list[Path] = []
    for fmt in formats:
        writer = WRITERS.get(fmt)
        if writer is None:
            raise ReportWriteError(f"no report writer for format {fmt!r}")
        path = report_path(reports_dir, run_id, fmt)
        with atomic_writer(path) as fp:
            # The JSON report is the stored document as it is, byte for byte.
            writer(doc if fmt == "json" else report, fp)
        written.append(path)
        stop_point("reports")  # tests: SIGKILL between two report files
    if latest:
        update_latest(reports_dir, run_id)
    return written


def update_latest(reports_dir: str | os.PathLike[str], run_id: int) -> None:
    """Atomically repoint ``<reports>/latest`` (relative symlink, replaced by rename)."""
    base = Path(reports_dir)
    tmp = base / f".{LATEST}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(str(run_id), tmp)
        os.replace(tmp, base / LATEST)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ReportWriteError(f"cannot update {base / LATEST}: {exc.strerror or exc}") from exc


def remove_run_dir(reports_dir: str | os.PathLike[str], run_id: int) -> None:
    """Delete one run's report folder (retention); missing is fine."""
    path = run_dir(reports_dir, run_id)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed reports of run %d (%s)", run_id, path)
