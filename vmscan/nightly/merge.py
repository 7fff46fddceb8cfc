"""Results: partial-rescan merges, offline re-checks, error results and the report document."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections import Counter
from typing import Any

from vmscan.completeness import (
    finalize_image_dict,
    plugin_status,
)
from vmscan.diff import diff_runs, iter_roots
from vmscan.model import SEVERITY_ORDER, ImageResult, ImageStatus, to_jsonable
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


def _merge_partial(
    old: dict[str, Any], new: dict[str, Any], checks: tuple[str, ...]
) -> dict[str, Any]:
    """Old result with only ``checks``' findings and sections replaced by the new scan's."""
    if new.get("status") == "error":
        return new
    merged = copy.deepcopy(old)
    new_roots = {str(r.get("device")): r for r in iter_roots(new)}
    for root in iter_roots(merged):
        fresh = new_roots.get(str(root.get("device")))
        if fresh is None:
            continue
        root["findings"] = [
            f for f in root.get("findings") or [] if f.get("check") not in checks
        ] + [f for f in fresh.get("findings") or [] if f.get("check") in checks]
        sections = dict(root.get("sections") or {})
        for name in _sections_of(checks):
            sections.pop(name, None)
            if name in (fresh.get("sections") or {}):
                sections[name] = fresh["sections"][name]
        root["sections"] = sections
        plugins = {p.get("name"): p for p in root.get("plugins") or []}
        plugins.update({p.get("name"): p for p in fresh.get("plugins") or []})
        root["plugins"] = list(plugins.values())
    sections = merged.setdefault("sections", {})
    for name in _sections_of(checks):
        sections.pop(name, None)
        if name in (new.get("sections") or {}):
            sections[name] = new["sections"][name]
    errors = list(merged.get("errors") or [])
    errors += [e for e in new.get("errors") or [] if e not in errors]
    merged["errors"] = errors
    if new.get("status") == "partial" and merged.get("status") == "ok":
        merged["status"] = "partial"
    for k in ("started_at", "finished_at", "duration_s"):
        if k in new:
            merged[k] = new[k]
    return merged


def _from_dict(cls: Any, data: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


def offline_recheck(
    old: dict[str, Any], checks: tuple[str, ...], options: dict[str, Any]
) -> dict[str, Any] | None:
    """Re-run inventory-only checks on a stored result; None when that is not possible."""
    import importlib

    from vmscan.model import OSInfo, Package, PluginStatus, RootResult
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
    merged = copy.deepcopy(old)
    for root in iter_roots(merged):
        rr = RootResult(
            device=str(root.get("device", "")),
            os=_from_dict(OSInfo, root.get("os")),
            mountpoints=dict(root.get("mountpoints") or {}),
            packages=[_from_dict(Package, p) for p in root.get("packages") or []],
            # Cataloger statuses: the patch check reports a failed inventory as incomplete.
            plugins=[_from_dict(PluginStatus, p) for p in root.get("plugins") or []],
            # Earlier sections: the patch check reuses the repository configuration read then.
            sections=copy.deepcopy(dict(root.get("sections") or {})),
        )
        ctx = ScanContext(root=rr, manifest=[], options=dict(options))
        statuses = {str(p.get("name")): p for p in root.get("plugins") or []}
        fresh: list[Any] = []
        for plugin in plugins:
            ctx.notes = []
            try:
                fresh.extend(plugin.run(None, ctx))
            except Exception as exc:  # fall back to a scan with the appliance
                log.info("offline %s re-check failed (%s); rescanning", plugin.NAME, exc)
                return None
            statuses[plugin.NAME] = to_jsonable(plugin_status(plugin.NAME, ctx.notes))
        root["findings"] = [
            f for f in root.get("findings") or [] if f.get("check") not in checks
        ] + to_jsonable(fresh)
        sections = dict(root.get("sections") or {})
        for check in checks:
            sections.pop(check, None)
            if check in rr.sections:
                sections[check] = to_jsonable(rr.sections[check])
        root["sections"] = sections
        root["plugins"] = list(statuses.values())
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


def _all_findings(image: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for r in iter_roots(image) for f in r.get("findings") or []]


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Counts kept in ``runs.summary`` for trends and metrics."""
    images = doc.get("images") or []
    status = Counter(str(i.get("status")) for i in images)
    sev: Counter[str] = Counter()
    by_check: Counter[str] = Counter()
    carried = 0
    for img in images:
        if ((img.get("sections") or {}).get("state") or {}).get("carried_forward"):
            carried += 1
        for f in _all_findings(img):
            sev[str(f.get("severity", "unknown"))] += 1
            by_check[str(f.get("check", ""))] += 1
    return {
        "images": len(images),
        "images_by_status": dict(sorted(status.items())),
        "findings_by_severity": {k: sev.get(k, 0) for k in SEVERITY_ORDER},
        "findings_by_check": dict(sorted(by_check.items())),
        "carried_forward": carried,
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
