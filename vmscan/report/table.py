"""The terminal summary: a human table of a run (what ``vmscan scan`` prints on a terminal).

Per image: its status, OS, counts of findings by severity and by check, what did not
complete, and the top findings (most severe first); then where the full report went.
Guest strings are shown with control characters replaced, so that a hostile file name
cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import IO, Any

from vmscan.completeness import incomplete_plugins
from vmscan.diff import iter_roots
from vmscan.model import SEVERITY_ORDER

#: Findings listed per image (most severe first); the rest are counted.
TOP_FINDINGS = 5
_SEVERITIES = ("critical", "high", "medium", "low", "info", "unknown")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object, width: int = 0) -> str:
    """*text* with control characters (ANSI escapes, newlines) shown as ``?``, cut to *width*."""
    out = _CONTROL.sub("?", str(text))
    if width and len(out) > width:
        out = out[: max(width - 1, 0)] + "…"
    return out


def _os_of(image: dict[str, Any]) -> str:
    names = []
    for root in image.get("roots") or []:
        os_ = root.get("os") or {}
        name = os_.get("product_name") or " ".join(
            str(p) for p in (os_.get("distro"), os_.get("version_id")) if p
        )
        names.append(str(name or os_.get("type") or "unknown"))
    if not names and (image.get("sections") or {}).get("data_volumes"):
        return "data volumes only"
    return ", ".join(names) or "-"


def _findings(image: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for root in iter_roots(image):
        out.extend(f for f in root.get("findings") or [] if isinstance(f, dict))
    return out


def write_table(scan_json: dict[str, Any], out: IO[str], full_report: str | None = None) -> None:
    """The summary of *scan_json*; *full_report* names where the whole report was written."""
    images = [i for i in scan_json.get("images") or [] if isinstance(i, dict)]
    rows = [("IMAGE", "STATUS", "OS", *(s.upper() for s in _SEVERITIES))]
    details: list[str] = []
    for image in images:
        findings = _findings(image)
        by_sev = Counter(str(f.get("severity", "unknown")) for f in findings)
        source = printable(image.get("source", ""), 48)
        rows.append(
            (
                source,
                printable(image.get("status", "")),
                printable(_os_of(image), 32),
                *(str(by_sev.get(s, 0)) for s in _SEVERITIES),
            )
        )
        lines: list[str] = []
        by_check = Counter(str(f.get("check", "")) for f in findings)
        if by_check:
            lines.append(
                "  by check: " + ", ".join(f"{c} {n}" for c, n in sorted(by_check.items()))
            )
        for err in (image.get("errors") or [])[:3]:
            lines.append(f"  ! {printable(err, 160)}")
        for inc in incomplete_plugins(image)[:5]:
            lines.append(f"  ! incomplete: {printable(inc.message(), 160)}")
        top = sorted(
            findings,
            key=lambda f: (-SEVERITY_ORDER.get(str(f.get("severity")), 0), str(f.get("rule_id"))),
        )
        for f in top[:TOP_FINDINGS]:
            lines.append(
                f"  {printable(f.get('severity', ''))[:8]:<8} "
                f"{printable(f.get('rule_id', ''), 40)}  {printable(f.get('target', ''), 70)}"
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
    if scan_json.get("interrupted"):
        out.write(f"\nrun interrupted by {scan_json.get('interrupted_by') or 'a signal'}\n")
    if full_report:
        out.write(f"\nfull report: {printable(full_report)}\n")


def write_table_stream(scan_json: dict[str, Any], out: IO[str]) -> None:
    """:func:`write_table` as a stream writer (``--format table``)."""
    write_table(scan_json, out)
