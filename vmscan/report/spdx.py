"""SPDX 2.3 JSON export: one document for the whole run.

Every image is a package (purpose "OPERATING_SYSTEM" roots inside it, "LIBRARY" or
"APPLICATION" packages inside those) linked by ``CONTAINS`` relationships; the document
``DESCRIBES`` each image. A package's licences go to ``licenseDeclared`` (they are what the
package states; ``licenseConcluded`` stays NOASSERTION: vmscan does not audit sources).
Every ``LicenseRef-`` used is declared in ``hasExtractedLicensingInfos``.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import IO, Any

from license_expression import ExpressionError

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


def _purpose(pkg: dict[str, Any]) -> str:
    return "APPLICATION" if "windows" in str(pkg.get("found_by", "")) else "LIBRARY"


def spdx_document(scan_json: dict[str, Any]) -> dict[str, Any]:
    """The SPDX 2.3 document (a JSON-ready dict) of a scan."""
    started = str(scan_json.get("started_at") or "")
    packages: list[dict[str, Any]] = []
    rels: list[dict[str, str]] = []
    refs: set[str] = set()
    describes: list[str] = []
    for i, image in enumerate(scan_json.get("images") or []):
        source = str(image.get("source") or f"image-{i}")
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
                "comment": f"disk image scanned by vmscan, status {image.get('status', '')}",
            }
        )
        rels.append(
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": img_id,
            }
        )
        for r, root in enumerate(image.get("roots") or []):
            os_ = root.get("os") or {}
            os_id = _spdx_id("os", i, r)
            version = str(
                os_.get("version_id")
                or f"{os_.get('major_version', 0)}.{os_.get('minor_version', 0)}"
            )
            packages.append(
                {
                    "SPDXID": os_id,
                    "name": str(os_.get("product_name") or os_.get("distro") or "unknown"),
                    "versionInfo": version,
                    "downloadLocation": NOASSERTION,
                    "filesAnalyzed": False,
                    "licenseConcluded": NOASSERTION,
                    "licenseDeclared": NOASSERTION,
                    "copyrightText": NOASSERTION,
                    "primaryPackagePurpose": "OPERATING_SYSTEM",
                    "comment": f"root {root.get('device', '')}",
                }
            )
            rels.append(
                {
                    "spdxElementId": img_id,
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": os_id,
                }
            )
            for p, pkg in enumerate(root.get("packages") or []):
                pid = _spdx_id("pkg", i, r, p, pkg.get("name", ""))
                extra = pkg.get("extra") or {}
                entry: dict[str, Any] = {
                    "SPDXID": pid,
                    "name": str(pkg.get("name") or "?"),
                    "downloadLocation": NOASSERTION,
                    "filesAnalyzed": False,
                    "licenseConcluded": NOASSERTION,
                    "licenseDeclared": declared(list(pkg.get("licenses") or []), refs),
                    "copyrightText": NOASSERTION,
                    "primaryPackagePurpose": _purpose(pkg),
                }
                if pkg.get("version"):
                    entry["versionInfo"] = str(pkg["version"])
                if extra.get("publisher"):
                    entry["supplier"] = "Organization: " + str(extra["publisher"])[:200]
                if pkg.get("license_source"):
                    entry["sourceInfo"] = f"licence read from {pkg['license_source']}"
                if pkg.get("purl"):
                    entry["externalRefs"] = [
                        {
                            "referenceCategory": "PACKAGE-MANAGER",
                            "referenceType": "purl",
                            "referenceLocator": str(pkg["purl"]),
                        }
                    ]
                packages.append(entry)
                rels.append(
                    {
                        "spdxElementId": os_id,
                        "relationshipType": "CONTAINS",
                        "relatedSpdxElement": pid,
                    }
                )
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"vmscan-{started or 'run'}",
        "documentNamespace": "https://vmscan.invalid/spdx/"
        + str(
            uuid.uuid5(
                _NS,
                started
                + "\0"
                + "\0".join(str(i.get("source")) for i in scan_json.get("images") or []),
            )
        ),
        "creationInfo": {
            "created": _created(str(scan_json.get("finished_at") or started)),
            "creators": [f"Tool: vmscan-{scan_json.get('vmscan_version') or 'unknown'}"],
        },
        "documentDescribes": describes,
        "packages": packages,
        "relationships": rels,
    }
    from vmscan.license.fleet import fleet_of

    doc["comment"] = "vmscan license_fleet: " + json.dumps(
        fleet_of(scan_json), sort_keys=True, ensure_ascii=False
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


def write_spdx(scan_json: dict[str, Any], out: IO[str]) -> None:
    """SPDX 2.3 JSON of the whole run to *out*."""
    json.dump(spdx_document(scan_json), out, indent=2, ensure_ascii=False)
    out.write("\n")
