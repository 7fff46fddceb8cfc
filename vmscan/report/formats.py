"""Report formats: one enum whose members know their writer, and the rule that picks one.

Every format writes either to one stream (JSON, HTML, SARIF, JUnit, CycloneDX, SPDX, the
terminal table) or into a folder (CSV: several files; CycloneDX to a folder: one BOM per
image). :meth:`ReportFormat.write` hides the difference, so the command line and the
nightly job call one thing.

Which format, when none is given (:func:`choose_format`): the extension of ``-o``
(``.html``, ``.sarif``, ``.xml`` for JUnit, ``.cdx.json``, ``.spdx.json``, ``.json``, a
folder for CSV is never guessed); with no ``-o``, the terminal table when stdout is a
terminal and JSON when it is not (a pipe or a file), as Trivy and Grype do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from vmscan.document import ReportDoc
from vmscan.report.json_out import atomic_writer, write_json

#: A report, as the model or its JSON form (every writer reads it through the model).
ReportInput = ReportDoc | Mapping[str, Any]
StreamWriter = Callable[[ReportInput, IO[str]], None]


class ReportFormat(enum.StrEnum):
    """A report format by its command-line name."""

    JSON = "json"
    HTML = "html"
    SARIF = "sarif"
    JUNIT = "junit"
    CYCLONEDX = "cyclonedx"
    SPDX = "spdx"
    CSV = "csv"
    TABLE = "table"

    @property
    def stream_writer(self) -> StreamWriter | None:
        """The writer to one stream; None for CSV (a folder of files)."""
        return _stream_writers().get(self)

    @property
    def writes_folder(self) -> bool:
        """True when ``-o`` must name a folder."""
        return self is ReportFormat.CSV

    def write(self, scan_json: ReportInput, output: str | None, out: IO[str]) -> list[Path]:
        """Write the report to *output* (a file, or a folder), or to *out* when None.

        CycloneDX given an existing folder writes one BOM per image into it. Files are
        replaced atomically. Returns the files written (empty for *out*).
        """
        if self.writes_folder or (
            self is ReportFormat.CYCLONEDX and output and Path(output).is_dir()
        ):
            if not output:
                raise ValueError(f"--format {self.value} writes several files: give -o FOLDER")
            return _folder_writers()[self](scan_json, Path(output))
        writer = self.stream_writer
        assert writer is not None  # every non-folder format has one
        if output is None:
            writer(scan_json, out)
            return []
        with atomic_writer(output) as f:
            writer(scan_json, f)
        return [Path(output)]


#: ``-o`` extensions and the format they imply (longest suffix first).
_BY_SUFFIX: tuple[tuple[str, ReportFormat], ...] = (
    (".cdx.json", ReportFormat.CYCLONEDX),
    (".spdx.json", ReportFormat.SPDX),
    (".sarif.json", ReportFormat.SARIF),
    (".sarif", ReportFormat.SARIF),
    (".html", ReportFormat.HTML),
    (".htm", ReportFormat.HTML),
    (".xml", ReportFormat.JUNIT),
    (".json", ReportFormat.JSON),
    (".txt", ReportFormat.TABLE),
)


def format_for_path(path: str) -> ReportFormat | None:
    """The format an output file name implies, or None when its extension says nothing."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in _BY_SUFFIX if name.endswith(suffix)), None)


def choose_format(given: str | None, output: str | None, stdout_is_tty: bool) -> ReportFormat:
    """The format of a run: *given*, else by ``-o``'s extension, else table or JSON."""
    if given:
        try:
            return ReportFormat(given)
        except ValueError:
            known = ", ".join(f.value for f in ReportFormat)
            raise ValueError(f"unknown report format {given!r} (known: {known})") from None
    if output:
        return format_for_path(output) or ReportFormat.JSON
    return ReportFormat.TABLE if stdout_is_tty else ReportFormat.JSON


def _stream_writers() -> dict[ReportFormat, StreamWriter]:
    # Imported here: each writer pulls its own libraries (jinja2, cyclonedx-python-lib),
    # which a run writing JSON need not load.
    from vmscan.report.cyclonedx import write_cyclonedx
    from vmscan.report.html import write_html
    from vmscan.report.junit import write_junit
    from vmscan.report.sarif import write_sarif
    from vmscan.report.spdx import write_spdx
    from vmscan.report.table import write_table_stream

    return {
        ReportFormat.JSON: write_json,
        ReportFormat.HTML: write_html,
        ReportFormat.SARIF: write_sarif,
        ReportFormat.JUNIT: write_junit,
        ReportFormat.CYCLONEDX: write_cyclonedx,
        ReportFormat.SPDX: write_spdx,
        ReportFormat.TABLE: write_table_stream,
    }


def _folder_writers() -> dict[ReportFormat, Callable[[ReportInput, Path], list[Path]]]:
    from vmscan.report.csv_out import write_csv
    from vmscan.report.cyclonedx import write_cyclonedx_dir

    return {ReportFormat.CSV: write_csv, ReportFormat.CYCLONEDX: write_cyclonedx_dir}
