"""CSV export: ``inventory.csv``, ``licenses.csv``, ``findings.csv`` (and the licence fleet
summary, ``license_fleet.csv``) in one folder.

Guest data is hostile and CSV files are opened in spreadsheets: every cell that starts
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with ``'`` so that
it is never evaluated as a formula (OWASP "CSV injection").
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vmscan.completeness import IMAGE_ERROR_RULE, INCOMPLETE_RULE, bound, incomplete_plugins
from vmscan.document import ReportDoc, RootDoc
from vmscan.model import ImageStatus
from vmscan.report.json_out import atomic_write_text

_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")

INVENTORY_COLUMNS = [
    "image",
    "device",
    "os",
    "name",
    "version",
    "arch",
    "source_name",
    "found_by",
    "purl",
    "publisher",
    "install_location",
]
LICENSE_COLUMNS = ["image", "device", "name", "version", "licenses", "category", "license_source"]
FLEET_COLUMNS = ["kind", "product", "edition", "installation_type", "count", "vms"]
FINDING_COLUMNS = ["image", "device", "check", "rule_id", "severity", "title", "target", "details"]


def neutralise(value: Any) -> str:
    """A cell as text, defused when a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    if text.startswith(_DANGEROUS):
        return "'" + text
    return text


ReportInput = ReportDoc | Mapping[str, Any]


def _roots(doc: ReportDoc) -> Iterator[tuple[str, RootDoc]]:
    # OS roots and the data volumes of disks with no OS (their findings count as much).
    for image in doc.images:
        for root in image.roots():
            yield image.source, root


def _os(root: RootDoc) -> str:
    return root.os.product_name or root.os.distro


def inventory_rows(scan_json: ReportInput) -> Iterator[list[Any]]:
    """One row per package."""
    for source, root in _roots(ReportDoc.of(scan_json)):
        for pkg in root.packages:
            yield [
                source,
                root.device,
                _os(root),
                pkg.name,
                pkg.version,
                pkg.arch,
                pkg.source_name,
                pkg.found_by,
                pkg.purl,
                pkg.extra_str("publisher"),
                pkg.extra_str("install_location"),
            ]


def license_rows(scan_json: ReportInput) -> Iterator[list[Any]]:
    """One row per package: its SPDX licences (``unknown`` when none)."""
    for source, root in _roots(ReportDoc.of(scan_json)):
        for pkg in root.packages:
            yield [
                source,
                root.device,
                pkg.name,
                pkg.version,
                " ; ".join(pkg.licenses) or "unknown",
                pkg.extra_str("license_category"),
                pkg.license_source or "unknown",
            ]


def finding_rows(scan_json: ReportInput) -> Iterator[list[Any]]:
    """One row per finding (all checks); details as compact JSON.

    First, a row per image that could not be scanned and per check that did not
    complete on a root (rule ``VMSCAN-IMAGE-ERROR`` / ``VMSCAN-CHECK-INCOMPLETE``): a
    spreadsheet without findings must never read as a clean fleet.
    """
    doc = ReportDoc.of(scan_json)
    for image in doc.images:
        source = image.source
        if image.status is ImageStatus.ERROR:
            errors = list(image.errors) or ["could not be scanned"]
            yield [
                source,
                "",
                "scan",
                IMAGE_ERROR_RULE,
                "unknown",
                bound(f"image could not be scanned: {errors[0]}"),
                source,
                json.dumps({"status": "error", "errors": errors[:10]}, ensure_ascii=False),
            ]
        for inc in incomplete_plugins(image):
            yield [
                source,
                inc.root,
                inc.plugin,
                INCOMPLETE_RULE,
                "unknown",
                inc.message(),
                inc.root,
                json.dumps(
                    {"status": inc.status, "reason": inc.reason}, sort_keys=True, ensure_ascii=False
                ),
            ]
    for source, root in _roots(doc):
        for f in root.findings:
            yield [
                source,
                root.device,
                f.check,
                f.rule_id,
                f.severity.value,
                f.title,
                f.target,
                json.dumps(dict(f.details), sort_keys=True, ensure_ascii=False),
            ]


def fleet_rows(scan_json: ReportInput) -> Iterator[list[Any]]:
    """The licence fleet summary: one row per OS edition and per watched product/edition."""
    from vmscan.license.fleet import fleet_counts

    fleet = fleet_counts(scan_json)
    for e in fleet.os_editions:
        yield ["os", e.os, e.edition_id, e.installation_type, e.count, " ".join(e.vms)]
    for w in fleet.watched:
        yield ["watched", w.product, w.edition, "", w.count, " ".join(w.vms)]


def csv_text(columns: list[str], rows: Iterable[list[Any]]) -> str:
    """A CSV document (header + rows), every cell neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    return buf.getvalue()


def write_csv(scan_json: ReportInput, out_dir: Path) -> list[Path]:
    """Write inventory.csv, licenses.csv, findings.csv, license_fleet.csv; their paths."""
    scan_json = ReportDoc.of(scan_json)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        ("inventory.csv", INVENTORY_COLUMNS, inventory_rows(scan_json)),
        ("licenses.csv", LICENSE_COLUMNS, license_rows(scan_json)),
        ("findings.csv", FINDING_COLUMNS, finding_rows(scan_json)),
        ("license_fleet.csv", FLEET_COLUMNS, fleet_rows(scan_json)),
    ]
    paths: list[Path] = []
    for name, cols, rows in files:
        path = out_dir / name
        atomic_write_text(path, csv_text(cols, rows))
        paths.append(path)
    return paths
