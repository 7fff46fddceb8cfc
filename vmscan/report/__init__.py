"""Report writers: each turns a run's report (:class:`~vmscan.document.ReportDoc`, or its
JSON form, read once through it) into one format.

:class:`~vmscan.report.formats.ReportFormat` names every format and gives its writer;
:data:`WRITERS` maps the names of the stream formats to their writers (what the nightly
job's ``formats`` setting and ``vmscan report`` accept).
"""

from __future__ import annotations

from vmscan.report.formats import ReportFormat, StreamWriter

Writer = StreamWriter

#: Stream writers by format name (the terminal table and the CSV folder are not listed:
#: the nightly job and ``vmscan report`` write files for machines and people to keep).
WRITERS: dict[str, Writer] = {
    fmt.value: writer
    for fmt in ReportFormat
    if fmt is not ReportFormat.TABLE and (writer := fmt.stream_writer) is not None
}

__all__ = ["WRITERS", "ReportFormat", "Writer"]
