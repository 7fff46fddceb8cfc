"""CycloneDX 1.6 JSON export (cyclonedx-python-lib): one BOM per scanned image.

Layout of one BOM: ``metadata.component`` is the image (type "file"); each OS root is an
"operating-system" component; every package is a component (type "library", Windows
programs "application") with its purl and licences; patch-level findings (check "patch")
are ``vulnerabilities`` whose ``affects`` point at the package they name.

Output: :func:`write_cyclonedx` writes one CycloneDX document to one stream: with one
image, that image's BOM; with several, one BOM of the run (:func:`run_bom`) whose
``metadata.component`` is the run and whose top-level components are the VM images, each
nesting its OS and package components. :func:`write_cyclonedx_dir` writes one
``<n>-<image>.cdx.json`` BOM per image instead.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.model.tool import ToolRepository
from cyclonedx.model.vulnerability import (
    BomTarget,
    BomTargetVersionRange,
    Vulnerability,
    VulnerabilityRating,
    VulnerabilityReference,
    VulnerabilitySeverity,
    VulnerabilitySource,
)
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from vmscan.license.spdx_map import is_listed
from vmscan.report.json_out import atomic_write_text

log = logging.getLogger(__name__)

_NS = uuid.UUID("6b3c4a52-5a2e-4c4e-9a59-1f4d3c1f0c6d")
_SEVERITY = {
    "critical": VulnerabilitySeverity.CRITICAL,
    "high": VulnerabilitySeverity.HIGH,
    "medium": VulnerabilitySeverity.MEDIUM,
    "low": VulnerabilitySeverity.LOW,
    "info": VulnerabilitySeverity.INFO,
}


def _purl(text: str) -> PackageURL | None:
    if not text:
        return None
    try:
        return PackageURL.from_string(text)
    except ValueError:
        return None


def cdx_licenses(licenses: list[str]) -> list[LicenseExpression | DisjunctiveLicense]:
    """One SPDX id → ``license.id``; anything else → one ``expression`` (1.6 allows one)."""
    exprs = [e for e in licenses if e.strip()]
    if not exprs:
        return []
    if len(exprs) == 1 and " " not in exprs[0] and is_listed(exprs[0]):
        return [DisjunctiveLicense(id=exprs[0])]
    if len(exprs) == 1:
        return [LicenseExpression(exprs[0])]
    return [LicenseExpression(" AND ".join(f"({e})" if " " in e else e for e in exprs))]


def _ts(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _os_name(os_: dict[str, Any]) -> str:
    return str(os_.get("product_name") or os_.get("distro") or os_.get("type") or "unknown")


def _os_version(os_: dict[str, Any]) -> str:
    return str(
        os_.get("version_id") or f"{os_.get('major_version', 0)}.{os_.get('minor_version', 0)}"
    )


def _ref(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9._:@/+-]+", "-", "-".join(str(p) for p in parts))[:200]


def _tool_metadata(
    scan_json: dict[str, Any], component: Component, fleet: str, when: str
) -> BomMetaData:
    return BomMetaData(
        tools=ToolRepository(
            components=[
                Component(
                    type=ComponentType.APPLICATION,
                    name="vmscan",
                    bom_ref="tool-vmscan",
                    version=str(scan_json.get("vmscan_version") or "") or None,
                )
            ]
        ),
        component=component,
        properties=[Property(name="vmscan:license_fleet", value=fleet)],
        timestamp=_ts(when),
    )


def image_bom(
    scan_json: dict[str, Any], image: dict[str, Any], index: int = 0, fleet: str | None = None
) -> Bom:
    """The BOM of one image of the scan document (*fleet*: the fleet summary as JSON)."""
    meta_component, components, vulns, graph = _image_parts(image, index)
    if fleet is None:
        fleet = _fleet_json(scan_json)
    when = str(image.get("finished_at") or scan_json.get("finished_at") or "")
    source = str(image.get("source") or f"image-{index}")
    bom = Bom(
        components=components,
        metadata=_tool_metadata(scan_json, meta_component, fleet, when),
        vulnerabilities=vulns,
        serial_number=uuid.uuid5(_NS, f"{source}\0{scan_json.get('started_at', '')}"),
    )
    # The image holds its OS roots; each OS holds its packages.
    bom.register_dependency(meta_component, [os_c for os_c, _ in graph])
    for os_c, pkgs in graph:
        bom.register_dependency(os_c, pkgs)
    return bom


def run_bom(scan_json: dict[str, Any], fleet: str | None = None) -> Bom:
    """One BOM for the whole run: the run is the subject, each VM image a component.

    Each image component nests its OS components and their packages, so a consumer sees
    which VM holds what; every bom-ref carries the image's index, so they stay unique.
    """
    if fleet is None:
        fleet = _fleet_json(scan_json)
    images = [i for i in scan_json.get("images") or [] if isinstance(i, dict)]
    run_component = Component(
        name=f"vmscan run of {len(images)} images",
        type=ComponentType.PLATFORM,
        bom_ref="run",
        properties=[
            Property(name="vmscan:started_at", value=str(scan_json.get("started_at") or ""))
        ],
    )
    tops: list[Component] = []
    vulns: list[Vulnerability] = []
    graphs: list[tuple[Component, list[tuple[Component, list[Component]]]]] = []
    for index, image in enumerate(images):
        image_c, components, image_vulns, graph = _image_parts(image, index)
        image_c.components = components
        tops.append(image_c)
        vulns.extend(image_vulns)
        graphs.append((image_c, graph))
    bom = Bom(
        components=tops,
        metadata=_tool_metadata(
            scan_json, run_component, fleet, str(scan_json.get("finished_at") or "")
        ),
        vulnerabilities=vulns,
        serial_number=uuid.uuid5(_NS, f"run\0{scan_json.get('started_at', '')}"),
    )
    bom.register_dependency(run_component, tops)
    for image_c, graph in graphs:
        bom.register_dependency(image_c, [os_c for os_c, _ in graph])
        for os_c, pkgs in graph:
            bom.register_dependency(os_c, pkgs)
    return bom


def _image_parts(
    image: dict[str, Any], index: int
) -> tuple[
    Component, list[Component], list[Vulnerability], list[tuple[Component, list[Component]]]
]:
    """The image's component, its OS and package components, vulnerabilities, graph."""
    source = str(image.get("source") or f"image-{index}")
    meta_component = Component(
        name=source,
        type=ComponentType.FILE,
        bom_ref=_ref("image", index),
        properties=[Property(name="vmscan:status", value=str(image.get("status", "")))],
    )
    components: list[Component] = []
    vulns: list[Vulnerability] = []
    graph: list[tuple[Component, list[Component]]] = []
    for r_idx, root in enumerate(image.get("roots") or []):
        os_ = root.get("os") or {}
        os_ref = _ref("os", index, r_idx)
        os_component = Component(
            name=_os_name(os_),
            version=_os_version(os_),
            type=ComponentType.OPERATING_SYSTEM,
            bom_ref=os_ref,
            properties=[
                Property(name="vmscan:device", value=str(root.get("device", ""))),
                Property(name="vmscan:distro", value=str(os_.get("distro", ""))),
            ],
        )
        components.append(os_component)
        root_packages: list[Component] = []
        by_name: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for p_idx, pkg in enumerate(root.get("packages") or []):
            ref = _ref("pkg", index, r_idx, p_idx, pkg.get("name", ""))
            by_name.setdefault(str(pkg.get("name", "")), []).append((ref, pkg))
            extra = pkg.get("extra") or {}
            props = [Property(name="vmscan:found_by", value=str(pkg.get("found_by", "")))]
            if pkg.get("license_source"):
                props.append(
                    Property(name="vmscan:license_source", value=str(pkg["license_source"]))
                )
            if extra.get("license_category"):
                props.append(
                    Property(name="vmscan:license_category", value=str(extra["license_category"]))
                )
            ctype = (
                ComponentType.APPLICATION
                if "windows" in str(pkg.get("found_by", ""))
                else ComponentType.LIBRARY
            )
            component = Component(
                name=str(pkg.get("name") or "?"),
                version=str(pkg.get("version") or "") or None,
                type=ctype,
                bom_ref=ref,
                purl=_purl(str(pkg.get("purl") or "")),
                publisher=str(extra.get("publisher") or "") or None,
                licenses=cdx_licenses(list(pkg.get("licenses") or [])),
                properties=props,
            )
            components.append(component)
            root_packages.append(component)
        graph.append((os_component, root_packages))
        for f_idx, finding in enumerate(root.get("findings") or []):
            if finding.get("check") != "patch":
                continue
            vulns.append(_vulnerability(finding, by_name, os_ref, (index, r_idx, f_idx)))
    return meta_component, components, vulns, graph


def _vulnerability(
    finding: dict[str, Any],
    by_name: dict[str, list[tuple[str, dict[str, Any]]]],
    os_ref: str,
    where: tuple[int, int, int],
) -> Vulnerability:
    d = finding.get("details") or {}
    name = str(d.get("package") or "")
    installed = str(d.get("installed_version") or "")
    fixed = str(d.get("fixed_version") or "")
    candidates = by_name.get(name, [])
    ref = next((r for r, p in candidates if str(p.get("version")) == installed), None)
    if ref is None and candidates:
        ref = candidates[0][0]
    versions = [BomTargetVersionRange(version=installed)] if installed else None
    aliases = [str(a) for a in d.get("aliases") or [] if a]
    vid = str(finding.get("rule_id") or "unknown")
    rating = _SEVERITY.get(str(finding.get("severity", "")).lower())
    return Vulnerability(
        bom_ref=_ref("vuln", *where, vid),
        id=vid,
        description=str(finding.get("title") or "") or None,
        recommendation=f"upgrade {name} to {fixed}" if fixed else None,
        ratings=[VulnerabilityRating(severity=rating)] if rating else None,
        references=[
            VulnerabilityReference(id=a, source=VulnerabilitySource(name="alias"))
            for a in aliases
            if a != vid
        ],
        affects=[BomTarget(ref=ref or os_ref, versions=versions)],
        properties=[Property(name="vmscan:fixed_version", value=fixed)] if fixed else None,
    )


def bom_json(bom: Bom) -> str:
    """Serialise one BOM as CycloneDX 1.6 JSON."""
    return str(JsonV1Dot6(bom).output_as_string(indent=2))


def validate_bom_json(text: str) -> list[str]:
    """Errors of the CycloneDX 1.6 schema validation (empty when valid)."""
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    if errors is None:
        return []
    items = [errors] if hasattr(errors, "data") else list(errors)
    return [_short(e) for e in items]


def _short(err: Any) -> str:
    data = getattr(err, "data", err)
    where = "/".join(str(p) for p in getattr(data, "absolute_path", ()) or ())
    return f"{where}: {getattr(data, 'message', data)}"


def _fleet_json(scan_json: dict[str, Any]) -> str:
    from vmscan.license.fleet import fleet_of

    return json.dumps(fleet_of(scan_json), sort_keys=True, ensure_ascii=False)


def boms(scan_json: dict[str, Any]) -> list[tuple[str, str]]:
    """(image source, BOM JSON) for every image; each carries the run's licence fleet."""
    fleet = _fleet_json(scan_json)
    out: list[tuple[str, str]] = []
    for i, image in enumerate(scan_json.get("images") or []):
        out.append(
            (
                str(image.get("source") or f"image-{i}"),
                bom_json(image_bom(scan_json, image, i, fleet)),
            )
        )
    return out


def write_cyclonedx(scan_json: dict[str, Any], out: IO[str]) -> None:
    """One image: its BOM. Several: one BOM of the run with each VM as a component."""
    images = scan_json.get("images") or []
    if len(images) == 1:
        out.write(boms(scan_json)[0][1])
    else:
        out.write(bom_json(run_bom(scan_json)))
    out.write("\n")


def write_cyclonedx_dir(scan_json: dict[str, Any], out_dir: Path) -> list[Path]:
    """One ``<n>-<image name>.cdx.json`` per image in *out_dir*; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, (source, text) in enumerate(boms(scan_json)):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)[:80] or "image"
        path = out_dir / f"{i:03d}-{stem}.cdx.json"
        atomic_write_text(path, text + "\n")
        paths.append(path)
    return paths
