"""Self-contained HTML report: fleet overview with inline SVG charts, then one section per VM."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import jinja2

from vmscan.completeness import bound, incomplete_plugins
from vmscan.document import DiskDoc, FindingDoc, ImageDoc, ReportDoc, RootDoc, TrendPoint
from vmscan.license.fleet import FleetSummary
from vmscan.model import Severity

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MAX_FINDINGS_PER_VM = 2000
#: Checks listed per image in its banner (the rest are counted).
MAX_BANNER_LINES = 20

SEVERITY_COLORS = {
    "critical": "#7b1fa2",
    "high": "#c62828",
    "medium": "#ef6c00",
    "low": "#f9a825",
    "info": "#1565c0",
    "unknown": "#757575",
}
STATUS_COLORS = {"ok": "#2e7d32", "partial": "#ef6c00", "no_os": "#1565c0", "error": "#c62828"}
PALETTE = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#455a64")


def _env() -> jinja2.Environment:
    # Autoescape everything: guest strings (hostnames, paths, package names) are hostile.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def bar_chart(
    items: list[tuple[str, int]], colors: dict[str, str] | None = None, *, width: int = 360
) -> dict[str, Any]:
    """Geometry of a horizontal bar chart (labels are escaped by the template)."""
    row, label_w, pad = 22, 130, 4
    top = max((v for _, v in items), default=0) or 1
    bars = []
    for i, (label, value) in enumerate(items):
        w = round((width - label_w - 50) * value / top)
        color = (colors or {}).get(label) or PALETTE[i % len(PALETTE)]
        bars.append(
            {
                "label": label if len(label) <= 22 else label[:21] + "…",
                "full": label,
                "value": value,
                "y": i * row + pad,
                "w": max(w, 1 if value else 0),
                "color": color,
            }
        )
    return {
        "width": width,
        "height": max(len(items), 1) * row + 2 * pad,
        "label_w": label_w,
        "bars": bars,
        "empty": not items,
    }


def trend_chart(
    trend: Sequence[TrendPoint], *, width: int = 560, height: int = 180
) -> dict[str, Any]:
    """Stacked columns of findings by severity per run, plus images scanned per run."""
    sevs = [s.value for s in Severity.descending()]
    totals = [t.total for t in trend]
    top = max(totals, default=0) or 1
    plot_h, base_y, left = height - 40, height - 25, 40
    n = max(len(trend), 1)
    slot = (width - left - 10) / n
    col_w = max(min(slot * 0.6, 40), 4)
    cols = []
    for i, t in enumerate(trend):
        x = left + i * slot + (slot - col_w) / 2
        y: float = base_y
        segs = []
        for sev in sevs:
            v = t.findings_by_severity.get(sev, 0)
            if not v:
                continue
            h = plot_h * v / top
            y -= h
            segs.append(
                {
                    "y": round(y, 1),
                    "h": round(h, 1),
                    "color": SEVERITY_COLORS[sev],
                    "title": f"{sev}: {v}",
                }
            )
        cols.append(
            {
                "x": round(x, 1),
                "w": round(col_w, 1),
                "segs": segs,
                "label": f"#{t.run}",
                "total": totals[i],
                "images": t.images,
                "lx": round(x + col_w / 2, 1),
                "top_y": round(y, 1),
            }
        )
    return {
        "width": width,
        "height": height,
        "cols": cols,
        "base_y": base_y,
        "left": left,
        "top": top,
        "empty": not trend,
    }


def _os_label(root: RootDoc) -> str:
    os_ = root.os
    distro = os_.distro or os_.type or "unknown"
    if distro in ("unknown", "none", ""):
        return "no OS" if os_.type == "none" else "unknown"
    return f"{distro} {os_.major_version}" if os_.major_version else distro


def _licence_charts(fleet: FleetSummary | None) -> list[tuple[str, str, dict[str, Any]]]:
    """Charts from ``sections.license_fleet`` (OS editions, watched products)."""
    if fleet is None:
        return []
    charts: list[tuple[str, str, dict[str, Any]]] = []

    def top(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))[:15]

    editions = top(
        [(f"{e.os} {e.edition_id}".strip() or "unknown", e.count) for e in fleet.os_editions]
    )
    if editions:
        charts.append(("Licences: OS editions", "chart-licence", bar_chart(editions)))
    watched = top(
        [(f"{w.product} {w.edition}".strip() or "unknown", w.count) for w in fleet.watched]
    )
    if watched:
        charts.append(("Licences: watched products", "chart-licence-watched", bar_chart(watched)))
    return charts


def _disk_point(disk: DiskDoc) -> dict[str, Any]:
    """Chain, internal snapshots and point in time of one disk (all escaped by the template)."""
    return {
        "path": disk.path,
        "point": disk.point or None,
        "layers": list(disk.layers),
        "snapshots": list(disk.snapshots),
    }


def _finding_row(root: RootDoc, f: FindingDoc) -> dict[str, Any]:
    return {
        "check": f.check,
        "rule_id": f.rule_id,
        "severity": f.severity.value,
        "title": f.title,
        "target": f.target,
        "root": root.device,
        "sev_order": f.rank,
    }


def _antivirus_view(image: ImageDoc) -> dict[str, Any] | None:
    av = image.antivirus
    if av is None:
        return None
    return {
        "status": av.status,
        "not_scanned": dict(av.not_scanned),
        "reasons": list(av.incomplete_reasons[:10]),
    }


def _av_as_of(image: ImageDoc) -> dict[str, Any] | None:
    """Under which database the image's files stand clean, and when hashes were re-matched."""
    as_of = image.state.antivirus_as_of
    hash_at = max((r.antivirus.hash_rechecked_at for r in image.roots() if r.antivirus), default="")
    if as_of is None and not hash_at:
        return None
    return {
        "engine": as_of.engine if as_of else "",
        "date": as_of.date if as_of else "",
        "kinds": list(as_of.kinds_rechecked) if as_of else [],
        "hash_at": hash_at,
    }


def _vm(
    idx: int, img: ImageDoc, changes: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[RootDoc]]:
    """The template's view of one image, and its roots."""
    findings: list[dict[str, Any]] = []
    roots: list[dict[str, Any]] = []
    for root in img.roots():
        verdict = root.migration.verdict if root.migration else ""
        roots.append(
            {
                "device": root.device,
                "os": root.os,
                "label": _os_label(root),
                "packages": len(root.packages),
                "migration": verdict or None,
            }
        )
        findings.extend(_finding_row(root, f) for f in root.findings)
    findings.sort(key=lambda f: (-f["sev_order"], f["rule_id"]))
    incomplete = [
        {"root": i.root, "plugin": i.plugin, "status": i.status, "reason": bound(i.reason, 300)}
        for i in incomplete_plugins(img)
    ]
    state = img.state
    vm = {
        "id": f"vm-{idx}",
        "incomplete": incomplete[:MAX_BANNER_LINES],
        "incomplete_more": max(0, len(incomplete) - MAX_BANNER_LINES),
        "source": img.source,
        "status": img.status.value,
        "errors": list(img.errors),
        "roots": roots,
        "packages": sum(len(r.packages) for r in img.roots()),
        "findings": findings[:MAX_FINDINGS_PER_VM],
        "findings_total": len(findings),
        "worst": findings[0]["severity"] if findings else "",
        "checks": sorted({f["check"] for f in findings}),
        "carried_forward": state.carried_forward,
        "scanned_at": state.scanned_at or img.finished_at,
        "rescanned_checks": list(state.rescanned_checks),
        "changes": changes,
        "antivirus": _antivirus_view(img),
        "av_as_of": _av_as_of(img),
        "disks": [d.path for d in img.disks],
        "disk_points": [_disk_point(d) for d in img.disks],
    }
    return vm, list(img.roots())


def build_context(scan_json: ReportDoc | Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template shows, computed from the run document."""
    doc = ReportDoc.of(scan_json)
    status = Counter(i.status.value for i in doc.images)
    sev: Counter[str] = Counter()
    by_check: Counter[str] = Counter()
    os_dist: Counter[str] = Counter()
    migration: Counter[str] = Counter()
    # Sections the nightly job adds (the diff of two runs, the trend): documents of their own.
    changes = doc.section("changes")
    changed_images = changes.get("images")
    changes_by_source = {
        c.get("source"): c
        for c in (changed_images if isinstance(changed_images, list) else [])
        if isinstance(c, Mapping)
    }
    vms = []
    for idx, img in enumerate(doc.images):
        vm, roots = _vm(idx, img, changes_by_source.get(img.source))
        for root in roots:
            if not root.data_volume:
                os_dist[_os_label(root)] += 1
            if root.migration and root.migration.verdict:
                migration[root.migration.verdict] += 1
            for f in root.findings:
                sev[f.severity.value] += 1
                by_check[f.check] += 1
        vms.append(vm)
    severities = [s.value for s in Severity.descending()]
    sev_items = [(s, sev.get(s, 0)) for s in severities]
    fleet = doc.sections.get("license_fleet")
    return {
        "doc": doc,
        "run": doc.section("run"),
        "vms": vms,
        # One red banner per image not fully scanned, above everything else.
        "banners": [vm for vm in vms if vm["incomplete"] or vm["status"] == "error"],
        "n_images": len(doc.images),
        "n_findings": sum(sev.values()),
        "n_incomplete": sum(1 for vm in vms if vm["incomplete"]),
        "status_chart": bar_chart(sorted(status.items()), STATUS_COLORS),
        "severity_chart": bar_chart(sev_items, SEVERITY_COLORS),
        "check_chart": bar_chart(sorted(by_check.items())),
        "os_chart": bar_chart(os_dist.most_common(12)),
        "migration_chart": bar_chart(sorted(migration.items())) if migration else None,
        "licence_charts": _licence_charts(
            FleetSummary.from_json(fleet) if isinstance(fleet, Mapping) else None
        ),
        "trend": trend_chart(doc.trend),
        "changes": changes,
        "severities": severities,
        "severity_colors": SEVERITY_COLORS,
        "status_colors": STATUS_COLORS,
        "nightly": doc.section("nightly"),
        "all_checks": sorted(by_check),
    }


def render_html(doc: ReportDoc | Mapping[str, Any]) -> str:
    """The report as one HTML string."""
    return _env().get_template("report.html.j2").render(**build_context(doc))


def write_html(doc: ReportDoc | Mapping[str, Any], fp: IO[str]) -> None:
    """Write the self-contained HTML report."""
    fp.write(render_html(doc))
