"""SPDX 2.3 JSON export: one document for the whole run.

Every image is a package (purpose "OPERATING_SYSTEM" roots inside it, "LIBRARY" or
"APPLICATION" packages inside those) linked by ``CONTAINS`` relationships; the document
``DESCRIBES`` each image. A data volume of a disk with no OS is a package of purpose
"OTHER" in its image. A package's licences go to ``licenseDeclared`` (they are what the
package states; ``licenseConcluded`` stays NOASSERTION: vmscan does not audit sources).
Every ``LicenseRef-`` used is declared in ``hasExtractedLicensingInfos``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from license_expression import ExpressionError

from vmscan.document import PackageDoc, ReportDoc, RootDoc
from vmscan.license.spdx_map import licensing

NOASSERTION = "NOASSERTION"
_NS = uuid.UUID("0e8f8c1e-2d7a-4b55-8a8b-54b7d7c7a0f1")


def _spdx_id(*parts: object) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(str(p) for p in parts))[:180]


def _created(text: str) -> str:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        dt = None
    dt = dt or datetime(1970, 1, 1, tzinfo=UTC)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def declared(licenses: list[str], refs: set[str]) -> str:
    """The licences of a package as one SPDX expression (AND); NOASSERTION when none."""
    exprs = [e.strip() for e in licenses if e and e.strip()]
    if not exprs:
        return NOASSERTION
    text = " AND ".join(f"({e})" if " " in e else e for e in exprs)
    try:
        parsed = licensing().parse(text, validate=False)
    except ExpressionError:
        return NOASSERTION
    if parsed is None:
        return NOASSERTION
    for key in licensing().license_keys(parsed):
        if key.startswith("LicenseRef-"):
            refs.add(key)
    return str(parsed.render())


def _purpose(pkg: PackageDoc) -> str:
    return "APPLICATION" if pkg.is_windows_program else "LIBRARY"


def _package(pid: str, pkg: PackageDoc, refs: set[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "SPDXID": pid,
        "name": pkg.name or "?",
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": declared(list(pkg.licenses), refs),
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": _purpose(pkg),
    }
    if pkg.version:
        entry["versionInfo"] = pkg.version
    if publisher := pkg.extra_str("publisher"):
        entry["supplier"] = "Organization: " + publisher[:200]
    if pkg.license_source:
        entry["sourceInfo"] = f"licence read from {pkg.license_source}"
    if pkg.purl:
        entry["externalRefs"] = [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": pkg.purl,
            }
        ]
    return entry


def _root_package(root_id: str, root: RootDoc) -> dict[str, Any]:
    """An OS root's package, or a data volume's (purpose OTHER: a filesystem, not an OS)."""
    if root.data_volume:
        name, version, purpose = f"data volume {root.device}", None, "OTHER"
    else:
        os_ = root.os
        name, version = os_.product_name or os_.distro or "unknown", os_.version
        purpose = "OPERATING_SYSTEM"
    entry: dict[str, Any] = {"SPDXID": root_id, "name": name}
    if version is not None:
        entry["versionInfo"] = version
    entry.update(
        {
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "primaryPackagePurpose": purpose,
            "comment": f"{'data volume' if root.data_volume else 'root'} {root.device}",
        }
    )
    return entry


def _contains(parent: str, child: str) -> dict[str, str]:
    return {"spdxElementId": parent, "relationshipType": "CONTAINS", "relatedSpdxElement": child}


def spdx_document(scan_json: ReportDoc | Mapping[str, Any]) -> dict[str, Any]:
    """The SPDX 2.3 document (a JSON-ready dict) of a scan."""
    report = ReportDoc.of(scan_json)
    started = report.started_at
    packages: list[dict[str, Any]] = []
    rels: list[dict[str, str]] = []
    refs: set[str] = set()
    describes: list[str] = []
    for i, image in enumerate(report.images):
        source = image.source or f"image-{i}"
        img_id = _spdx_id("image", i)
        describes.append(img_id)
        packages.append(
            {
                "SPDXID": img_id,
                "name": source,
                "downloadLocation": NOASSERTION,
                "filesAnalyzed": False,
                "licenseConcluded": NOASSERTION,
                "licenseDeclared": NOASSERTION,
                "copyrightText": NOASSERTION,
                "primaryPackagePurpose": "FILE",
                "comment": f"disk image scanned by vmscan, status {image.status.value}",
            }
        )
        rels.append(
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": img_id,
            }
        )
        # OS roots, then the data volumes of a disk with no OS (their packages count too).
        for r, root in enumerate(image.roots()):
            os_id = _spdx_id("os", i, r)
            packages.append(_root_package(os_id, root))
            rels.append(_contains(img_id, os_id))
            for p, pkg in enumerate(root.packages):
                pid = _spdx_id("pkg", i, r, p, pkg.name)
                packages.append(_package(pid, pkg, refs))
                rels.append(_contains(os_id, pid))
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"vmscan-{started or 'run'}",
        "documentNamespace": "https://vmscan.invalid/spdx/"
        + str(
            uuid.uuid5(
                _NS,
                started + "\0" + "\0".join(i.source for i in report.images),
            )
        ),
        "creationInfo": {
            "created": _created(report.finished_at or started),
            "creators": [f"Tool: vmscan-{report.vmscan_version or 'unknown'}"],
        },
        "documentDescribes": describes,
        "packages": packages,
        "relationships": rels,
    }
    from vmscan.license.fleet import fleet_of

    doc["comment"] = "vmscan license_fleet: " + json.dumps(
        fleet_of(report), sort_keys=True, ensure_ascii=False
    )
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {
                "licenseId": ref,
                "name": ref[len("LicenseRef-") :],
                "extractedText": f"Licence named {ref[len('LicenseRef-') :]!r} by the package's "
                "licence statement; it has no SPDX identifier. See the package's copyright "
                "file for its text.",
            }
            for ref in sorted(refs)
        ]
    return doc


def write_spdx(scan_json: ReportDoc | Mapping[str, Any], out: IO[str]) -> None:
    """SPDX 2.3 JSON of the whole run to *out*."""
    json.dump(spdx_document(scan_json), out, indent=2, ensure_ascii=False)
    out.write("\n")
