"""JUnit XML of the migration audit: one test suite per VM, one test case per rule and root.

CI systems (Jenkins, GitLab, GitHub test reporters) show each migration rule as a
passing, failing, skipped or errored test. The writer only sees the JSON-able report.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import IO, Any

from vmscan.checks.migration import ALL_RULES, RULES_BY_ID
from vmscan.completeness import incomplete_plugins
from vmscan.diff import iter_roots
from vmscan.model import SEVERITY_ORDER

#: Findings below this severity do not fail their test case (shown in system-out).
FAIL_FROM = "low"

# XML 1.0 forbids most control characters; guest text may contain anything.
_BAD_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(value: Any) -> str:
    return _BAD_XML.sub("\ufffd", str(value))


def _classname(*parts: str) -> str:
    # Reporters split classnames on dots into packages: keep dots only between parts.
    return ".".join(re.sub(r"[.\s]+", "_", p.strip("/")) or "_" for p in parts)


def _finding_text(f: dict[str, Any]) -> str:
    d = f.get("details") or {}
    lines = [f"[{f.get('severity', '')}] {f.get('title', '')}"]
    if f.get("target"):
        lines.append(f"  target: {f['target']}")
    if d.get("file"):
        where = str(d["file"]) + (f":{d['line']}" if d.get("line") else "")
        lines.append(f"  file: {where}")
    if d.get("text"):
        lines.append(f"  text: {d['text']}")
    if d.get("sample"):
        lines.append("  sample: " + ", ".join(str(s) for s in d["sample"]))
    if d.get("remediation"):
        lines.append(f"  remediation: {d['remediation']}")
    return "\n".join(lines)


class _Counts:
    def __init__(self) -> None:
        self.tests = self.failures = self.errors = self.skipped = 0

    def set_on(self, el: ET.Element) -> None:
        el.set("tests", str(self.tests))
        el.set("failures", str(self.failures))
        el.set("errors", str(self.errors))
        el.set("skipped", str(self.skipped))

    def add(self, other: _Counts) -> None:
        self.tests += other.tests
        self.failures += other.failures
        self.errors += other.errors
        self.skipped += other.skipped


def _case(suite: ET.Element, counts: _Counts, classname: str, name: str) -> ET.Element:
    counts.tests += 1
    return ET.SubElement(
        suite, "testcase", classname=_clean(classname), name=_clean(name), time="0"
    )


def _root_cases(suite: ET.Element, counts: _Counts, source: str, root: dict[str, Any]) -> None:
    device = str(root.get("device", ""))
    os_info = root.get("os") or {}
    label = os_info.get("product_name") or os_info.get("distro") or "unknown OS"
    cls = _classname("migration", source.rsplit("/", 1)[-1], device)
    section = (root.get("sections") or {}).get("migration")
    if not isinstance(section, dict):
        status = next(
            (
                p
                for p in root.get("plugins") or []
                if isinstance(p, dict) and p.get("name") == "migration"
            ),
            None,
        )
        case = _case(suite, counts, cls, f"migration audit of {device} ({label})")
        msg = "migration check did not run"
        if status:
            msg += f" ({status.get('status')}: {status.get('reason', '')})"
        ET.SubElement(case, "error", message=_clean(msg), type="not-run")
        counts.errors += 1
        return
    evaluated = set(section.get("rules_evaluated") or [])
    rules_failed = section.get("rules_failed") or {}
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for f in root.get("findings") or []:
        if isinstance(f, dict) and f.get("check") == "migration":
            by_rule.setdefault(str(f.get("rule_id")), []).append(f)
    rule_ids = [r.id for r in ALL_RULES] + sorted(set(by_rule) - set(RULES_BY_ID))
    for rid in rule_ids:
        rule = RULES_BY_ID.get(rid)
        title = rule.title if rule else rid
        case = _case(suite, counts, cls, f"{rid}: {title}")
        found = by_rule.get(rid, [])
        failing = [
            f
            for f in found
            if SEVERITY_ORDER.get(str(f.get("severity")), 0) >= SEVERITY_ORDER[FAIL_FROM]
        ]
        if failing:
            top = max(failing, key=lambda f: SEVERITY_ORDER.get(str(f.get("severity")), 0))
            msg = str(top.get("title", title))
            if len(failing) > 1:
                msg += f" (+{len(failing) - 1} more)"
            fail = ET.SubElement(
                case, "failure", message=_clean(msg), type=_clean(top.get("severity", ""))
            )
            fail.text = _clean("\n\n".join(_finding_text(f) for f in failing))
            counts.failures += 1
        elif rid in rules_failed:
            err = ET.SubElement(case, "error", message=_clean(rules_failed[rid]), type="not-run")
            err.text = _clean(f"the check could not evaluate this rule: {rules_failed[rid]}")
            counts.errors += 1
        elif found:
            out = ET.SubElement(case, "system-out")
            out.text = _clean("\n\n".join(_finding_text(f) for f in found))
        elif rid not in evaluated:
            kind = (section.get("facts") or {}).get("os_kind", "this")
            ET.SubElement(case, "skipped", message=_clean(f"not applicable to a {kind} root"))
            counts.skipped += 1


def _completeness_cases(
    suite: ET.Element, counts: _Counts, source: str, image: dict[str, Any]
) -> None:
    """An errored test case per check or cataloger that did not complete on a root: the
    audit above it may rest on an incomplete inventory, and a pipeline must not pass."""
    roots = {str(r.get("device", "")): r for r in iter_roots(image)}
    for inc in incomplete_plugins(image):
        root = roots.get(inc.root)
        migration_section = (root.get("sections") or {}).get("migration") if root else None
        if (
            inc.plugin == "migration"
            and root is not None
            and not isinstance(migration_section, dict)
        ):
            continue  # already the errored "migration audit of ..." case of that root
        cls = _classname("migration", source.rsplit("/", 1)[-1], inc.root)
        case = _case(suite, counts, cls, f"{inc.plugin} completed")
        err = ET.SubElement(
            case, "error", message=_clean(inc.message()), type=f"check-{inc.status}"
        )
        err.text = _clean(
            f"{inc.plugin} did not complete on {inc.root} ({inc.status}): {inc.reason}\n"
            "Not scanned is not clean: this image is partial."
        )
        counts.errors += 1


def _suite(image: dict[str, Any]) -> tuple[ET.Element, _Counts]:
    source = str(image.get("source", ""))
    counts = _Counts()
    suite = ET.Element("testsuite", name=_clean(source))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="status", value=_clean(image.get("status", "")))
    for root in image.get("roots") or []:
        sec = (root.get("sections") or {}).get("migration")
        if isinstance(sec, dict):
            ET.SubElement(
                props,
                "property",
                name=_clean(f"verdict {root.get('device', '')}"),
                value=_clean(sec.get("verdict", "")),
            )
    cls = _classname("migration", source.rsplit("/", 1)[-1])
    if image.get("status") == "error":
        case = _case(suite, counts, cls, "scan")
        errors = image.get("errors") or ["image could not be scanned"]
        err = ET.SubElement(case, "error", message=_clean(errors[0]), type="image-error")
        err.text = _clean("\n".join(str(e) for e in errors))
        counts.errors += 1
    elif not iter_roots(image):
        case = _case(suite, counts, cls, "migration audit")
        ET.SubElement(case, "skipped", message="no operating system found in the image")
        counts.skipped += 1
    else:
        # OS roots and the data volumes of a disk with no OS (their rules count as much).
        for root in iter_roots(image):
            _root_cases(suite, counts, source, root)
    _completeness_cases(suite, counts, source, image)
    counts.set_on(suite)
    suite.set("time", "0")
    return suite, counts


def build_junit(scan_json: dict[str, Any]) -> ET.Element:
    """The ``<testsuites>`` element for a whole report."""
    top = ET.Element("testsuites", name="vmscan migration")
    total = _Counts()
    images: Iterable[dict[str, Any]] = scan_json.get("images") or []
    for image in images:
        suite, counts = _suite(image)
        top.append(suite)
        total.add(counts)
    total.set_on(top)
    return top


def write_junit(scan_json: dict[str, Any], out: IO[str]) -> None:
    """Write the JUnit XML of *scan_json* (the JSON-able report) to *out*."""
    top = build_junit(scan_json)
    ET.indent(top)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(top, encoding="unicode"))
    out.write("\n")
