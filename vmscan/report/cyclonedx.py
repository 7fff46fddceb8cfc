"""CycloneDX 1.6 JSON export (cyclonedx-python-lib): one BOM per scanned image.

Layout of one BOM: ``metadata.component`` is the image (type "file"); each OS root is an
"operating-system" component (a data volume of a disk with no OS a "data" one); every
package is a component (type "library", Windows programs "application") with its purl
and licences; patch-level findings (check "patch") are ``vulnerabilities`` whose
``affects`` point at the package they name.

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
from collections.abc import Mapping
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

from vmscan.document import FindingDoc, ImageDoc, OSDoc, PackageDoc, ReportDoc, RootDoc
from vmscan.license.spdx_map import is_listed
from vmscan.model import Severity
from vmscan.report.json_out import atomic_write_text

log = logging.getLogger(__name__)

_NS = uuid.UUID("6b3c4a52-5a2e-4c4e-9a59-1f4d3c1f0c6d")
_SEVERITY = {
    Severity.CRITICAL: VulnerabilitySeverity.CRITICAL,
    Severity.HIGH: VulnerabilitySeverity.HIGH,
    Severity.MEDIUM: VulnerabilitySeverity.MEDIUM,
    Severity.LOW: VulnerabilitySeverity.LOW,
    Severity.INFO: VulnerabilitySeverity.INFO,
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


def _os_name(os_: OSDoc) -> str:
    return os_.product_name or os_.distro or os_.type or "unknown"


def _ref(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9._:@/+-]+", "-", "-".join(str(p) for p in parts))[:200]


def _tool_metadata(report: ReportDoc, component: Component, fleet: str, when: str) -> BomMetaData:
    return BomMetaData(
        tools=ToolRepository(
            components=[
                Component(
                    type=ComponentType.APPLICATION,
                    name="vmscan",
                    bom_ref="tool-vmscan",
                    version=report.vmscan_version or None,
                )
            ]
        ),
        component=component,
        properties=[Property(name="vmscan:license_fleet", value=fleet)],
        timestamp=_ts(when),
    )


def image_bom(
    scan_json: ReportDoc | Mapping[str, Any],
    image: ImageDoc | Mapping[str, Any],
    index: int = 0,
    fleet: str | None = None,
) -> Bom:
    """The BOM of one image of the scan document (*fleet*: the fleet summary as JSON)."""
    report = ReportDoc.of(scan_json)
    img = image if isinstance(image, ImageDoc) else ImageDoc.from_json(image)
    meta_component, components, vulns, graph = _image_parts(img, index)
    if fleet is None:
        fleet = _fleet_json(report)
    when = img.finished_at or report.finished_at
    source = img.source or f"image-{index}"
    bom = Bom(
        components=components,
        metadata=_tool_metadata(report, meta_component, fleet, when),
        vulnerabilities=vulns,
        serial_number=uuid.uuid5(_NS, f"{source}\0{report.started_at}"),
    )
    # The image holds its OS roots; each OS holds its packages.
    bom.register_dependency(meta_component, [os_c for os_c, _ in graph])
    for os_c, pkgs in graph:
        bom.register_dependency(os_c, pkgs)
    return bom


def run_bom(scan_json: ReportDoc | Mapping[str, Any], fleet: str | None = None) -> Bom:
    """One BOM for the whole run: the run is the subject, each VM image a component.

    Each image component nests its OS components and their packages, so a consumer sees
    which VM holds what; every bom-ref carries the image's index, so they stay unique.
    """
    report = ReportDoc.of(scan_json)
    if fleet is None:
        fleet = _fleet_json(report)
    run_component = Component(
        name=f"vmscan run of {len(report.images)} images",
        type=ComponentType.PLATFORM,
        bom_ref="run",
        properties=[Property(name="vmscan:started_at", value=report.started_at)],
    )
    tops: list[Component] = []
    vulns: list[Vulnerability] = []
    graphs: list[tuple[Component, list[tuple[Component, list[Component]]]]] = []
    for index, image in enumerate(report.images):
        image_c, components, image_vulns, graph = _image_parts(image, index)
        image_c.components = components
        tops.append(image_c)
        vulns.extend(image_vulns)
        graphs.append((image_c, graph))
    bom = Bom(
        components=tops,
        metadata=_tool_metadata(report, run_component, fleet, report.finished_at),
        vulnerabilities=vulns,
        serial_number=uuid.uuid5(_NS, f"run\0{report.started_at}"),
    )
    bom.register_dependency(run_component, tops)
    for image_c, graph in graphs:
        bom.register_dependency(image_c, [os_c for os_c, _ in graph])
        for os_c, pkgs in graph:
            bom.register_dependency(os_c, pkgs)
    return bom


def _root_component(root: RootDoc, ref: str) -> Component:
    """An OS root's component, or a data volume's (type "data": a filesystem, not an OS)."""
    if root.data_volume:
        return Component(
            name=f"data volume {root.device}",
            type=ComponentType.DATA,
            bom_ref=ref,
            properties=[Property(name="vmscan:device", value=root.device)],
        )
    return Component(
        name=_os_name(root.os),
        version=root.os.version,
        type=ComponentType.OPERATING_SYSTEM,
        bom_ref=ref,
        properties=[
            Property(name="vmscan:device", value=root.device),
            Property(name="vmscan:distro", value=root.os.distro),
        ],
    )


def _package_component(pkg: PackageDoc, ref: str) -> Component:
    props = [Property(name="vmscan:found_by", value=pkg.found_by)]
    if pkg.license_source:
        props.append(Property(name="vmscan:license_source", value=pkg.license_source))
    if category := pkg.extra_str("license_category"):
        props.append(Property(name="vmscan:license_category", value=category))
    return Component(
        name=pkg.name or "?",
        version=pkg.version or None,
        type=ComponentType.APPLICATION if pkg.is_windows_program else ComponentType.LIBRARY,
        bom_ref=ref,
        purl=_purl(pkg.purl),
        publisher=pkg.extra_str("publisher") or None,
        licenses=cdx_licenses(list(pkg.licenses)),
        properties=props,
    )


def _image_parts(
    image: ImageDoc, index: int
) -> tuple[
    Component, list[Component], list[Vulnerability], list[tuple[Component, list[Component]]]
]:
    """The image's component, its OS and package components, vulnerabilities, graph."""
    meta_component = Component(
        name=image.source or f"image-{index}",
        type=ComponentType.FILE,
        bom_ref=_ref("image", index),
        properties=[Property(name="vmscan:status", value=image.status.value)],
    )
    components: list[Component] = []
    vulns: list[Vulnerability] = []
    graph: list[tuple[Component, list[Component]]] = []
    # OS roots, then the data volumes of a disk with no OS (their packages count too).
    for r_idx, root in enumerate(image.roots()):
        os_ref = _ref("os", index, r_idx)
        os_component = _root_component(root, os_ref)
        components.append(os_component)
        root_packages: list[Component] = []
        by_name: dict[str, list[tuple[str, PackageDoc]]] = {}
        for p_idx, pkg in enumerate(root.packages):
            ref = _ref("pkg", index, r_idx, p_idx, pkg.name)
            by_name.setdefault(pkg.name, []).append((ref, pkg))
            component = _package_component(pkg, ref)
            components.append(component)
            root_packages.append(component)
        graph.append((os_component, root_packages))
        for f_idx, finding in enumerate(root.findings):
            if finding.check != "patch":
                continue
            vulns.append(_vulnerability(finding, by_name, os_ref, (index, r_idx, f_idx)))
    return meta_component, components, vulns, graph


def _vulnerability(
    finding: FindingDoc,
    by_name: dict[str, list[tuple[str, PackageDoc]]],
    os_ref: str,
    where: tuple[int, int, int],
) -> Vulnerability:
    d = finding.patch
    name, installed, fixed = d.package, d.installed_version, d.fixed_version
    candidates = by_name.get(name, [])
    ref = next((r for r, p in candidates if p.version == installed), None)
    if ref is None and candidates:
        ref = candidates[0][0]
    versions = [BomTargetVersionRange(version=installed)] if installed else None
    aliases = d.aliases
    vid = finding.rule_id or "unknown"
    rating = _SEVERITY.get(finding.severity)
    return Vulnerability(
        bom_ref=_ref("vuln", *where, vid),
        id=vid,
        description=finding.title or None,
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


def _fleet_json(report: ReportDoc) -> str:
    from vmscan.license.fleet import fleet_of

    return json.dumps(fleet_of(report), sort_keys=True, ensure_ascii=False)


def boms(scan_json: ReportDoc | Mapping[str, Any]) -> list[tuple[str, str]]:
    """(image source, BOM JSON) for every image; each carries the run's licence fleet."""
    report = ReportDoc.of(scan_json)
    fleet = _fleet_json(report)
    return [
        (image.source or f"image-{i}", bom_json(image_bom(report, image, i, fleet)))
        for i, image in enumerate(report.images)
    ]


def write_cyclonedx(scan_json: ReportDoc | Mapping[str, Any], out: IO[str]) -> None:
    """One image: its BOM. Several: one BOM of the run with each VM as a component."""
    report = ReportDoc.of(scan_json)
    if len(report.images) == 1:
        out.write(boms(report)[0][1])
    else:
        out.write(bom_json(run_bom(report)))
    out.write("\n")


def write_cyclonedx_dir(scan_json: ReportDoc | Mapping[str, Any], out_dir: Path) -> list[Path]:
    """One ``<n>-<image name>.cdx.json`` per image in *out_dir*; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, (source, text) in enumerate(boms(scan_json)):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)[:80] or "image"
        path = out_dir / f"{i:03d}-{stem}.cdx.json"
        atomic_write_text(path, text + "\n")
        paths.append(path)
    return paths
