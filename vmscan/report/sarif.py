"""SARIF 2.1.0 writer: one rule per finding rule, results with stable partial fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from vmscan import __version__
from vmscan.completeness import IMAGE_ERROR_RULE, INCOMPLETE_RULE, incomplete_plugins
from vmscan.diff import finding_key, iter_roots

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
FINGERPRINT_NAME = "vmscanFinding/v1"

_LEVEL = {
    "critical": "error",
    "high": "error",
    "medium": "warning",
    "low": "note",
    "info": "note",
    "unknown": "warning",
}
# GitHub code scanning reads this property (0.0-10.0) to rank security results.
_SECURITY_SEVERITY = {
    "critical": "9.5",
    "high": "8.0",
    "medium": "5.5",
    "low": "3.0",
    "info": "0.0",
    "unknown": "5.0",
}


def _uri(source: str) -> str:
    """A file URI for an absolute path, a relative URI reference otherwise."""
    if source.startswith("/"):
        return Path(source).as_uri()
    return quote(source, safe="/:@-._~")


def partial_fingerprint(source: str, device: str, finding: dict[str, Any]) -> str:
    """Stable across runs: image source, root device and the finding's own fingerprint."""
    raw = "\x1f".join((source, device, finding_key(finding))).encode("utf-8", "replace")
    return hashlib.sha256(raw).hexdigest()


def to_sarif(doc: dict[str, Any]) -> dict[str, Any]:
    """The SARIF log of a run document."""
    rules: dict[str, dict[str, Any]] = {}
    rule_index: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for image in doc.get("images") or []:
        source = str(image.get("source", ""))
        incomplete = incomplete_plugins(image)
        derived = {i.message() for i in incomplete}
        for inc in incomplete:
            # A check that did not complete is an error of the tool run, whatever else it
            # found: SARIF consumers read it from the invocation (section 3.20.21).
            notifications.append(
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
        for err in image.get("errors") or []:
            if err in derived:
                continue
            error = image.get("status") == "error"
            notifications.append(
                {
                    "level": "error" if error else "warning",
                    "message": {"text": f"{source}: {err}"},
                    **({"descriptor": {"id": IMAGE_ERROR_RULE}} if error else {}),
                }
            )
        for root in iter_roots(image):
            device = str(root.get("device", ""))
            for f in root.get("findings") or []:
                rule_id = str(f.get("rule_id") or "unknown")
                severity = str(f.get("severity") or "unknown")
                level = _LEVEL.get(severity, "warning")
                if rule_id not in rules:
                    rule_index[rule_id] = len(rules)
                    rules[rule_id] = {
                        "id": rule_id,
                        "name": str(f.get("check", "")) or "vmscan",
                        "shortDescription": {"text": str(f.get("title") or rule_id)},
                        "defaultConfiguration": {"level": level},
                        "properties": {
                            "check": str(f.get("check", "")),
                            "security-severity": _SECURITY_SEVERITY.get(severity, "5.0"),
                            "tags": ["security", str(f.get("check", ""))],
                        },
                    }
                target = str(f.get("target", ""))
                title = str(f.get("title") or rule_id)
                results.append(
                    {
                        "ruleId": rule_id,
                        "ruleIndex": rule_index[rule_id],
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
                        "partialFingerprints": {
                            FINGERPRINT_NAME: partial_fingerprint(source, device, f)
                        },
                        "properties": {
                            "severity": severity,
                            "check": str(f.get("check", "")),
                            "image": source,
                            "root": device,
                            "details": f.get("details") or {},
                        },
                    }
                )
    run_info = (doc.get("sections") or {}).get("run") or {}
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "vmscan",
                "version": str(doc.get("vmscan_version") or __version__),
                "rules": list(rules.values()),
            }
        },
        "invocations": [
            {
                # False exactly when vmscan's exit code says so (2): the notifications say why.
                "executionSuccessful": not any(
                    i.get("status") == "error" or incomplete_plugins(i)
                    for i in doc.get("images") or []
                ),
                "toolExecutionNotifications": notifications,
            }
        ],
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {"vmscan_run": run_info.get("id"), "started_at": doc.get("started_at")},
    }
    if doc.get("started_at"):
        run["invocations"][0]["startTimeUtc"] = doc["started_at"]
    if doc.get("finished_at"):
        run["invocations"][0]["endTimeUtc"] = doc["finished_at"]
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def write_sarif(doc: dict[str, Any], fp: IO[str]) -> None:
    """Write the SARIF log as JSON."""
    json.dump(to_sarif(doc), fp, indent=2, ensure_ascii=False)
    fp.write("\n")
