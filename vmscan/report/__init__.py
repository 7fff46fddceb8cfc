"""Report writers: each turns a run document (canonical result dict) into one format."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from vmscan.report.cyclonedx import write_cyclonedx
from vmscan.report.html import write_html
from vmscan.report.json_out import write_json
from vmscan.report.junit import write_junit
from vmscan.report.sarif import write_sarif
from vmscan.report.spdx import write_spdx

Writer = Callable[[dict[str, Any], IO[str]], None]

# Registry of single-stream writers by format name: explicit entries, no import side
# effects. CSV writes a folder of files (vmscan.report.csv_out.write_csv), so it is not
# a stream writer and is not listed here.
WRITERS: dict[str, Writer] = {
    "json": write_json,
    "html": write_html,
    "sarif": write_sarif,
    "cyclonedx": write_cyclonedx,
    "spdx": write_spdx,
    "junit": write_junit,
}

__all__ = ["WRITERS", "Writer"]
