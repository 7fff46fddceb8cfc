"""The terminal summary: a human table of a run (what ``vmscan scan`` prints on a terminal).

Per image: its status, OS, counts of findings by severity and by check, what did not
complete, and the top findings (most severe first); then where the full report went.
Guest strings are shown with control characters replaced, so that a hostile file name
cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import IO, Any

from vmscan.completeness import incomplete_plugins
from vmscan.document import FindingDoc, ImageDoc, ReportDoc
from vmscan.model import Severity

#: Findings listed per image (most severe first); the rest are counted.
TOP_FINDINGS = 5
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object, width: int = 0) -> str:
    """*text* with control characters (ANSI escapes, newlines) shown as ``?``, cut to *width*."""
    out = _CONTROL.sub("?", str(text))
    if width and len(out) > width:
        out = out[: max(width - 1, 0)] + "…"
    return out


def _os_of(image: ImageDoc) -> str:
    names = []
    for root in image.os_roots:
        os_ = root.os
        name = os_.product_name or " ".join(p for p in (os_.distro, os_.version_id) if p)
        names.append(name or os_.type or "unknown")
    if not names and image.data_volumes:
        return "data volumes only"
    return ", ".join(names) or "-"


def write_table(
    scan_json: ReportDoc | Mapping[str, Any], out: IO[str], full_report: str | None = None
) -> None:
    """The summary of *scan_json*; *full_report* names where the whole report was written."""
    doc = ReportDoc.of(scan_json)
    severities = Severity.descending()
    rows = [("IMAGE", "STATUS", "OS", *(s.value.upper() for s in severities))]
    details: list[str] = []
    for image in doc.images:
        findings: list[FindingDoc] = [f for _, f in image.findings()]
        by_sev = Counter(f.severity for f in findings)
        source = printable(image.source, 48)
        rows.append(
            (
                source,
                printable(image.status.value),
                printable(_os_of(image), 32),
                *(str(by_sev.get(s, 0)) for s in severities),
            )
        )
        lines: list[str] = []
        by_check = Counter(f.check for f in findings)
        if by_check:
            lines.append(
                "  by check: " + ", ".join(f"{c} {n}" for c, n in sorted(by_check.items()))
            )
        for err in image.errors[:3]:
            lines.append(f"  ! {printable(err, 160)}")
        for inc in incomplete_plugins(image)[:5]:
            lines.append(f"  ! incomplete: {printable(inc.message(), 160)}")
        top = sorted(findings, key=lambda f: (-f.rank, f.rule_id))
        for f in top[:TOP_FINDINGS]:
            lines.append(
                f"  {printable(f.severity.value)[:8]:<8} "
                f"{printable(f.rule_id, 40)}  {printable(f.target, 70)}"
            )
        if len(top) > TOP_FINDINGS:
            lines.append(f"  … and {len(top) - TOP_FINDINGS} more findings")
        if lines:
            details.append(source + "\n" + "\n".join(lines))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    if details:
        out.write("\n" + "\n\n".join(details) + "\n")
    if doc.interrupted:
        out.write(f"\nrun interrupted by {doc.interrupted_by or 'a signal'}\n")
    if full_report:
        out.write(f"\nfull report: {printable(full_report)}\n")


def write_table_stream(scan_json: ReportDoc | Mapping[str, Any], out: IO[str]) -> None:
    """:func:`write_table` as a stream writer (``--format table``)."""
    write_table(scan_json, out)
