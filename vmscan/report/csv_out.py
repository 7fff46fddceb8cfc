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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vmscan.completeness import IMAGE_ERROR_RULE, INCOMPLETE_RULE, bound, incomplete_plugins
from vmscan.diff import iter_roots
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


def _roots(scan_json: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    # OS roots and the data volumes of disks with no OS (their findings count as much).
    for image in scan_json.get("images") or []:
        for root in iter_roots(image):
            yield str(image.get("source") or ""), root


def _os(root: dict[str, Any]) -> str:
    os_ = root.get("os") or {}
    return str(os_.get("product_name") or os_.get("distro") or "")


def inventory_rows(scan_json: dict[str, Any]) -> Iterator[list[Any]]:
    """One row per package."""
    for source, root in _roots(scan_json):
        for pkg in root.get("packages") or []:
            extra = pkg.get("extra") or {}
            yield [
                source,
                root.get("device", ""),
                _os(root),
                pkg.get("name", ""),
                pkg.get("version", ""),
                pkg.get("arch", ""),
                pkg.get("source_name", ""),
                pkg.get("found_by", ""),
                pkg.get("purl", ""),
                extra.get("publisher", ""),
                extra.get("install_location", ""),
            ]


def license_rows(scan_json: dict[str, Any]) -> Iterator[list[Any]]:
    """One row per package: its SPDX licences (``unknown`` when none)."""
    for source, root in _roots(scan_json):
        for pkg in root.get("packages") or []:
            extra = pkg.get("extra") or {}
            lics = [str(x) for x in pkg.get("licenses") or []]
            yield [
                source,
                root.get("device", ""),
                pkg.get("name", ""),
                pkg.get("version", ""),
                " ; ".join(lics) or "unknown",
                extra.get("license_category", ""),
                pkg.get("license_source") or "unknown",
            ]


def finding_rows(scan_json: dict[str, Any]) -> Iterator[list[Any]]:
    """One row per finding (all checks); details as compact JSON.

    First, a row per image that could not be scanned and per check that did not
    complete on a root (rule ``VMSCAN-IMAGE-ERROR`` / ``VMSCAN-CHECK-INCOMPLETE``): a
    spreadsheet without findings must never read as a clean fleet.
    """
    for image in scan_json.get("images") or []:
        source = str(image.get("source") or "")
        if image.get("status") == "error":
            errors = [str(e) for e in image.get("errors") or []] or ["could not be scanned"]
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
    for source, root in _roots(scan_json):
        for f in root.get("findings") or []:
            yield [
                source,
                root.get("device", ""),
                f.get("check", ""),
                f.get("rule_id", ""),
                f.get("severity", ""),
                f.get("title", ""),
                f.get("target", ""),
                json.dumps(f.get("details") or {}, sort_keys=True, ensure_ascii=False),
            ]


def fleet_rows(scan_json: dict[str, Any]) -> Iterator[list[Any]]:
    """The licence fleet summary: one row per OS edition and per watched product/edition."""
    from vmscan.license.fleet import fleet_of

    fleet = fleet_of(scan_json)
    for e in fleet.get("os_editions") or []:
        yield [
            "os",
            e.get("os", ""),
            e.get("edition_id", ""),
            e.get("installation_type", ""),
            e.get("count", 0),
            " ".join(e.get("vms") or []),
        ]
    for w in fleet.get("watched") or []:
        yield [
            "watched",
            w.get("product", ""),
            w.get("edition", ""),
            "",
            w.get("count", 0),
            " ".join(w.get("vms") or []),
        ]


def csv_text(columns: list[str], rows: Iterable[list[Any]]) -> str:
    """A CSV document (header + rows), every cell neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    return buf.getvalue()


def write_csv(scan_json: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write inventory.csv, licenses.csv, findings.csv, license_fleet.csv; their paths."""
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
