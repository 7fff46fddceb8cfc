"""SARIF 2.1.0 writer: one rule per finding rule, results with stable partial fingerprints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from vmscan import __version__
from vmscan.completeness import IMAGE_ERROR_RULE, INCOMPLETE_RULE, incomplete_plugins
from vmscan.document import FindingDoc, ImageDoc, ReportDoc, RootDoc
from vmscan.model import ImageStatus, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
FINGERPRINT_NAME = "vmscanFinding/v1"

_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
    Severity.UNKNOWN: "warning",
}
# GitHub code scanning reads this property (0.0-10.0) to rank security results.
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
    Severity.UNKNOWN: "5.0",
}


def _uri(source: str) -> str:
    """A file URI for an absolute path, a relative URI reference otherwise."""
    if source.startswith("/"):
        return Path(source).as_uri()
    return quote(source, safe="/:@-._~")


def partial_fingerprint(source: str, device: str, finding: FindingDoc) -> str:
    """Stable across runs: image source, root device and the finding's own fingerprint."""
    raw = "\x1f".join((source, device, finding.key())).encode("utf-8", "replace")
    return hashlib.sha256(raw).hexdigest()


def _notifications(image: ImageDoc) -> list[dict[str, Any]]:
    source = image.source
    incomplete = incomplete_plugins(image)
    derived = {i.message() for i in incomplete}
    out: list[dict[str, Any]] = []
    for inc in incomplete:
        # A check that did not complete is an error of the tool run, whatever else it
        # found: SARIF consumers read it from the invocation (section 3.20.21).
        out.append(
            {
                "level": "error",
                "message": {"text": f"{source}: {inc.message()}"},
                "descriptor": {"id": INCOMPLETE_RULE},
                "properties": {
                    "image": source,
                    "root": inc.root,
                    "check": inc.plugin,
                    "status": inc.status,
                },
            }
        )
    error = image.status is ImageStatus.ERROR
    for err in image.errors:
        if err in derived:
            continue
        out.append(
            {
                "level": "error" if error else "warning",
                "message": {"text": f"{source}: {err}"},
                **({"descriptor": {"id": IMAGE_ERROR_RULE}} if error else {}),
            }
        )
    return out


def _rule(f: FindingDoc, rule_id: str, level: str) -> dict[str, Any]:
    return {
        "id": rule_id,
        "name": f.check or "vmscan",
        "shortDescription": {"text": f.title or rule_id},
        "defaultConfiguration": {"level": level},
        "properties": {
            "check": f.check,
            "security-severity": _SECURITY_SEVERITY[f.severity],
            "tags": ["security", f.check],
        },
    }


def _result(
    source: str, root: RootDoc, f: FindingDoc, rule_id: str, index: int, level: str
) -> dict[str, Any]:
    device, target = root.device, f.target
    title = f.title or rule_id
    return {
        "ruleId": rule_id,
        "ruleIndex": index,
        "level": level,
        "message": {"text": f"{title}: {target}" if target else title},
        "locations": [
            {
                "physicalLocation": {"artifactLocation": {"uri": _uri(source)}},
                "logicalLocations": [
                    {
                        "name": target or device,
                        "fullyQualifiedName": f"{source}!{device}!{target}",
                        "kind": "resource",
                    }
                ],
            }
        ],
        "partialFingerprints": {FINGERPRINT_NAME: partial_fingerprint(source, device, f)},
        "properties": {
            "severity": f.severity.value,
            "check": f.check,
            "image": source,
            "root": device,
            "details": dict(f.details),
        },
    }


def to_sarif(scan_json: ReportDoc | Mapping[str, Any]) -> dict[str, Any]:
    """The SARIF log of a run document."""
    doc = ReportDoc.of(scan_json)
    rules: dict[str, dict[str, Any]] = {}
    rule_index: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for image in doc.images:
        notifications.extend(_notifications(image))
        for root, f in image.findings():
            rule_id = f.rule_id or "unknown"
            level = _LEVEL[f.severity]
            if rule_id not in rules:
                rule_index[rule_id] = len(rules)
                rules[rule_id] = _rule(f, rule_id, level)
            results.append(_result(image.source, root, f, rule_id, rule_index[rule_id], level))
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "vmscan",
                "version": doc.vmscan_version or __version__,
                "rules": list(rules.values()),
            }
        },
        "invocations": [
            {
                # False exactly when vmscan's exit code says so (2): the notifications say why.
                "executionSuccessful": not any(
                    i.status is ImageStatus.ERROR or incomplete_plugins(i) for i in doc.images
                ),
                "toolExecutionNotifications": notifications,
            }
        ],
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {"vmscan_run": doc.run_id, "started_at": doc.started_at},
    }
    if doc.started_at:
        run["invocations"][0]["startTimeUtc"] = doc.started_at
    if doc.finished_at:
        run["invocations"][0]["endTimeUtc"] = doc.finished_at
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def write_sarif(doc: ReportDoc | Mapping[str, Any], fp: IO[str]) -> None:
    """Write the SARIF log as JSON."""
    json.dump(to_sarif(doc), fp, indent=2, ensure_ascii=False)
    fp.write("\n")
