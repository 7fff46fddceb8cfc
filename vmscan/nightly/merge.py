"""Results: partial-rescan merges, offline re-checks, error results and the report document."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from vmscan.completeness import (
    finalize_image_dict,
    plugin_status,
)
from vmscan.diff import diff_runs
from vmscan.document import (
    FindingDoc,
    ImageDoc,
    OSDoc,
    PackageDoc,
    PluginDoc,
    ReportDoc,
    RootDoc,
)
from vmscan.model import (
    Finding,
    ImageResult,
    ImageStatus,
    OSInfo,
    Package,
    PluginStatus,
    RootResult,
    Severity,
    to_jsonable,
)
from vmscan.state import RUN_COMPLETE, StateDB, utcnow

log = logging.getLogger(__name__)

# Checks that read only the stored inventory (packages, OS facts), never the guest: when
# only their data changed they are re-run on the stored result, with no appliance.
# PatchCheck.run matches ctx.root.packages against the advisory feed and ignores ``fs``.
# Sections a check writes besides its own name (replaced with it on a partial rescan).
CHECK_SECTIONS: dict[str, tuple[str, ...]] = {"antivirus": ("antivirus", "pe")}
OFFLINE_CHECKS: dict[str, tuple[str, str]] = {"patch": ("vmscan.checks.patch", "PatchCheck")}


# --------------------------------------------------------------------------------------
# Results


def _sections_of(checks: tuple[str, ...]) -> list[str]:
    return [name for c in checks for name in CHECK_SECTIONS.get(c, (c,))]


def _replace_sections(
    sections: Mapping[str, Any], fresh: Mapping[str, Any], names: list[str]
) -> dict[str, Any]:
    """*sections* with each of *names* taken from *fresh* (dropped when *fresh* has none)."""
    out = dict(sections)
    for name in names:
        out.pop(name, None)
        if name in fresh:
            out[name] = fresh[name]
    return out


def _with_roots(image: ImageDoc, roots: list[RootDoc]) -> ImageDoc:
    """*image* with its roots (OS roots, then data volumes, as :meth:`ImageDoc.roots`)."""
    n = len(image.os_roots)
    return dataclasses.replace(image, os_roots=tuple(roots[:n]), data_volumes=tuple(roots[n:]))


def merge_partial(old: ImageDoc, new: ImageDoc, checks: tuple[str, ...]) -> ImageDoc:
    """Old result with only ``checks``' findings and sections replaced by the new scan's."""
    if new.status is ImageStatus.ERROR:
        return new
    names = _sections_of(checks)
    new_roots = {r.device: r for r in new.roots()}
    roots: list[RootDoc] = []
    for root in old.roots():
        fresh = new_roots.get(root.device)
        if fresh is None:
            roots.append(root)
            continue
        plugins = {p.name: p for p in root.plugins}
        plugins.update({p.name: p for p in fresh.plugins})
        roots.append(
            dataclasses.replace(
                root,
                findings=tuple(f for f in root.findings if f.check not in checks)
                + tuple(f for f in fresh.findings if f.check in checks),
                sections=_replace_sections(root.sections, fresh.sections, names),
                plugins=tuple(plugins.values()),
            )
        )
    errors = list(old.errors)
    errors += [e for e in new.errors if e not in errors]
    status = old.status
    if new.status is ImageStatus.PARTIAL and status is ImageStatus.OK:
        status = ImageStatus.PARTIAL
    return dataclasses.replace(
        _with_roots(old, roots),
        sections=_replace_sections(old.sections, new.sections, names),
        errors=tuple(errors),
        status=status,
        started_at=new.started_at,
        finished_at=new.finished_at,
        duration_s=new.duration_s,
    )


def _merge_partial(
    old: dict[str, Any], new: dict[str, Any], checks: tuple[str, ...]
) -> dict[str, Any]:
    """:func:`merge_partial` of two stored (JSON) results."""
    return merge_partial(ImageDoc.from_json(old), ImageDoc.from_json(new), checks).to_json()


def _os_info(os_: OSDoc) -> OSInfo:
    return OSInfo(
        **{f.name: getattr(os_, f.name) for f in dataclasses.fields(OSInfo) if f.name != "extra"},
        extra=copy.deepcopy(dict(os_.extra)),
    )


def _package(p: PackageDoc) -> Package:
    return Package(
        name=p.name,
        version=p.version,
        arch=p.arch,
        source_name=p.source_name,
        source_version=p.source_version,
        licenses=list(p.licenses),
        license_source=p.license_source,
        found_by=p.found_by,
        purl=p.purl,
        extra=copy.deepcopy(dict(p.extra)),
    )


def offline_recheck(
    old: dict[str, Any], checks: tuple[str, ...], options: dict[str, Any]
) -> dict[str, Any] | None:
    """Re-run inventory-only checks on a stored result; None when that is not possible."""
    import importlib

    from vmscan.plugins import ScanContext

    if not checks or any(c not in OFFLINE_CHECKS for c in checks):
        return None
    try:
        plugins = [
            getattr(importlib.import_module(OFFLINE_CHECKS[c][0]), OFFLINE_CHECKS[c][1])()
            for c in checks
        ]
    except (ImportError, AttributeError) as exc:
        log.debug("offline re-check unavailable: %s", exc)
        return None
    image = ImageDoc.from_json(old)
    roots: list[RootDoc] = []
    for root in image.roots():
        rr = RootResult(
            device=root.device,
            os=_os_info(root.os),
            mountpoints=dict(root.mountpoints),
            packages=[_package(p) for p in root.packages],
            # Cataloger statuses: the patch check reports a failed inventory as incomplete.
            plugins=[PluginStatus(p.name, p.status, p.reason, p.version) for p in root.plugins],
            # Earlier sections: the patch check reuses the repository configuration read then.
            sections=copy.deepcopy(dict(root.sections)),
        )
        ctx = ScanContext(root=rr, manifest=[], options=dict(options))
        statuses = {p.name: p for p in root.plugins}
        fresh: list[Finding] = []
        for plugin in plugins:
            ctx.notes = []
            try:
                fresh.extend(plugin.run(None, ctx))
            except Exception as exc:  # fall back to a scan with the appliance
                log.info("offline %s re-check failed (%s); rescanning", plugin.NAME, exc)
                return None
            statuses[plugin.NAME] = PluginDoc.from_json(
                to_jsonable(plugin_status(plugin.NAME, ctx.notes))
            )
        sections = dict(root.sections)
        for check in checks:
            sections.pop(check, None)
            if check in rr.sections:
                sections[check] = to_jsonable(rr.sections[check])
        roots.append(
            dataclasses.replace(
                root,
                findings=tuple(f for f in root.findings if f.check not in checks)
                + tuple(FindingDoc.from_json(to_jsonable(f)) for f in fresh),
                sections=sections,
                plugins=tuple(statuses.values()),
            )
        )
    merged = _with_roots(image, roots).to_json()
    finalize_image_dict(merged)
    return merged


def _error_result(source: str, message: str) -> dict[str, Any]:
    now = utcnow()
    result: dict[str, Any] = to_jsonable(
        ImageResult(
            source=source,
            status=ImageStatus.ERROR,
            errors=[message],
            started_at=now,
            finished_at=now,
        )
    )
    return result


def summarize(doc: ReportDoc | Mapping[str, Any]) -> dict[str, Any]:
    """Counts kept in ``runs.summary`` for trends and metrics."""
    report = ReportDoc.of(doc)
    status = Counter(i.status.value for i in report.images)
    sev: Counter[str] = Counter()
    by_check: Counter[str] = Counter()
    for img in report.images:
        for _, f in img.findings():
            sev[f.severity.value] += 1
            by_check[f.check] += 1
    return {
        "images": len(report.images),
        "images_by_status": dict(sorted(status.items())),
        "findings_by_severity": {s.value: sev[s.value] for s in Severity},
        "findings_by_check": dict(sorted(by_check.items())),
        "carried_forward": sum(1 for i in report.images if i.state.carried_forward),
    }


def build_report_document(db: StateDB, run_id: int, *, trend_runs: int = 14) -> dict[str, Any]:
    """A stored run as the report sees it: canonical result + changes + trend."""
    doc = db.run_document(run_id)
    run = db.get_run(run_id)
    assert run is not None
    sections = doc["sections"]
    nightly = run.summary.get("nightly")
    if nightly:
        sections["nightly"] = nightly
    with contextlib.suppress(ImportError):
        from vmscan.license.fleet import fleet_summary

        try:
            sections["license_fleet"] = fleet_summary(doc)
        except Exception as exc:  # a summary never loses the report
            log.warning("licence fleet summary failed: %s", exc)
    prev = db.latest_run(status=RUN_COMPLETE, before=run_id)
    if prev is not None:
        sections["changes"] = diff_runs(db.run_document(prev.id), doc)
    else:
        sections["changes"] = {"baseline": True, "from_run": None, "to_run": run_id}
    trend = []
    for r in reversed(db.list_runs(limit=trend_runs * 3)):
        if r.id > run_id or (r.status not in (RUN_COMPLETE,) and r.id != run_id):
            continue
        summary = summarize(doc) if r.id == run_id else r.summary
        trend.append(
            {
                "run": r.id,
                "started_at": r.started_at,
                "status": r.status,
                **{k: v for k, v in summary.items() if k != "nightly"},
            }
        )
    sections["trend"] = trend[-trend_runs:]
    return doc
