"""JUnit XML of the migration audit: one test suite per VM, one test case per rule and root.

CI systems (Jenkins, GitLab, GitHub test reporters) show each migration rule as a
passing, failing, skipped or errored test. The writer only sees the report
(:class:`~vmscan.document.ReportDoc`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import IO, Any

from vmscan.checks.migration import ALL_RULES, RULES_BY_ID
from vmscan.completeness import incomplete_plugins
from vmscan.document import FindingDoc, ImageDoc, ReportDoc, RootDoc
from vmscan.model import ImageStatus, Severity

#: Findings below this severity do not fail their test case (shown in system-out).
FAIL_FROM = Severity.LOW

# XML 1.0 forbids most control characters; guest text may contain anything.
_BAD_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(value: Any) -> str:
    return _BAD_XML.sub("\ufffd", str(value))


def _classname(*parts: str) -> str:
    # Reporters split classnames on dots into packages: keep dots only between parts.
    return ".".join(re.sub(r"[.\s]+", "_", p.strip("/")) or "_" for p in parts)


def _finding_text(f: FindingDoc) -> str:
    ev = f.evidence
    lines = [f"[{f.severity.value}] {f.title}"]
    if f.target:
        lines.append(f"  target: {f.target}")
    if ev.file:
        lines.append(f"  file: {ev.file}" + (f":{ev.line}" if ev.line else ""))
    if ev.text:
        lines.append(f"  text: {ev.text}")
    if ev.sample:
        lines.append("  sample: " + ", ".join(ev.sample))
    if ev.remediation:
        lines.append(f"  remediation: {ev.remediation}")
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


def _root_cases(suite: ET.Element, counts: _Counts, source: str, root: RootDoc) -> None:
    device = root.device
    label = root.os.product_name or root.os.distro or "unknown OS"
    cls = _classname("migration", source.rsplit("/", 1)[-1], device)
    section = root.migration
    if section is None:
        status = root.plugin("migration")
        case = _case(suite, counts, cls, f"migration audit of {device} ({label})")
        msg = "migration check did not run"
        if status:
            msg += f" ({status.status}: {status.reason})"
        ET.SubElement(case, "error", message=_clean(msg), type="not-run")
        counts.errors += 1
        return
    by_rule: dict[str, list[FindingDoc]] = {}
    for f in root.findings:
        if f.check == "migration":
            by_rule.setdefault(f.rule_id, []).append(f)
    rule_ids = [r.id for r in ALL_RULES] + sorted(set(by_rule) - set(RULES_BY_ID))
    fail_from = FAIL_FROM.rank
    for rid in rule_ids:
        rule = RULES_BY_ID.get(rid)
        title = rule.title if rule else rid
        case = _case(suite, counts, cls, f"{rid}: {title}")
        found = by_rule.get(rid, [])
        failing = [f for f in found if f.rank >= fail_from]
        if failing:
            top = max(failing, key=lambda f: f.rank)
            msg = top.title
            if len(failing) > 1:
                msg += f" (+{len(failing) - 1} more)"
            fail = ET.SubElement(
                case, "failure", message=_clean(msg), type=_clean(top.severity.value)
            )
            fail.text = _clean("\n\n".join(_finding_text(f) for f in failing))
            counts.failures += 1
        elif rid in section.rules_failed:
            why = section.rules_failed[rid]
            err = ET.SubElement(case, "error", message=_clean(why), type="not-run")
            err.text = _clean(f"the check could not evaluate this rule: {why}")
            counts.errors += 1
        elif found:
            out = ET.SubElement(case, "system-out")
            out.text = _clean("\n\n".join(_finding_text(f) for f in found))
        elif rid not in section.rules_evaluated:
            kind = section.os_kind
            ET.SubElement(case, "skipped", message=_clean(f"not applicable to a {kind} root"))
            counts.skipped += 1


def _completeness_cases(suite: ET.Element, counts: _Counts, source: str, image: ImageDoc) -> None:
    """An errored test case per check or cataloger that did not complete on a root: the
    audit above it may rest on an incomplete inventory, and a pipeline must not pass."""
    roots = {r.device: r for r in image.roots()}
    for inc in incomplete_plugins(image):
        root = roots.get(inc.root)
        if inc.plugin == "migration" and root is not None and root.migration is None:
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


def _suite(image: ImageDoc) -> tuple[ET.Element, _Counts]:
    source = image.source
    counts = _Counts()
    suite = ET.Element("testsuite", name=_clean(source))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="status", value=_clean(image.status.value))
    for root in image.os_roots:
        if root.migration is not None:
            ET.SubElement(
                props,
                "property",
                name=_clean(f"verdict {root.device}"),
                value=_clean(root.migration.verdict),
            )
    cls = _classname("migration", source.rsplit("/", 1)[-1])
    if image.status is ImageStatus.ERROR:
        case = _case(suite, counts, cls, "scan")
        errors = list(image.errors) or ["image could not be scanned"]
        err = ET.SubElement(case, "error", message=_clean(errors[0]), type="image-error")
        err.text = _clean("\n".join(errors))
        counts.errors += 1
    elif not image.roots():
        case = _case(suite, counts, cls, "migration audit")
        ET.SubElement(case, "skipped", message="no operating system found in the image")
        counts.skipped += 1
    else:
        # OS roots and the data volumes of a disk with no OS (their rules count as much).
        for root in image.roots():
            _root_cases(suite, counts, source, root)
    _completeness_cases(suite, counts, source, image)
    counts.set_on(suite)
    suite.set("time", "0")
    return suite, counts


def build_junit(scan_json: ReportDoc | Mapping[str, Any]) -> ET.Element:
    """The ``<testsuites>`` element for a whole report."""
    top = ET.Element("testsuites", name="vmscan migration")
    total = _Counts()
    for image in ReportDoc.of(scan_json).images:
        suite, counts = _suite(image)
        top.append(suite)
        total.add(counts)
    total.set_on(top)
    return top


def write_junit(scan_json: ReportDoc | Mapping[str, Any], out: IO[str]) -> None:
    """Write the JUnit XML of *scan_json* (the JSON-able report) to *out*."""
    top = build_junit(scan_json)
    ET.indent(top)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(top, encoding="unicode"))
    out.write("\n")
