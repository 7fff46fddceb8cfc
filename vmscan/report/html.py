"""Self-contained HTML report: fleet overview with inline SVG charts, then one section per VM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import IO, Any

import jinja2

from vmscan.completeness import bound, incomplete_plugins
from vmscan.diff import iter_roots
from vmscan.model import SEVERITY_ORDER

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
    trend: list[dict[str, Any]], *, width: int = 560, height: int = 180
) -> dict[str, Any]:
    """Stacked columns of findings by severity per run, plus images scanned per run."""
    sevs = [s for s in sorted(SEVERITY_ORDER, key=SEVERITY_ORDER.__getitem__, reverse=True)]
    totals = [sum((t.get("findings_by_severity") or {}).values()) for t in trend]
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
        counts = t.get("findings_by_severity") or {}
        for sev in sevs:
            v = int(counts.get(sev, 0))
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
                "label": f"#{t.get('run')}",
                "total": totals[i],
                "images": t.get("images", 0),
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


def _os_label(root: dict[str, Any]) -> str:
    os_ = root.get("os") or {}
    distro = str(os_.get("distro") or os_.get("type") or "unknown")
    major = os_.get("major_version")
    if distro in ("unknown", "none", ""):
        return "no OS" if os_.get("type") == "none" else "unknown"
    return f"{distro} {major}" if major else distro


def _licence_charts(fleet: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Charts from ``sections.license_fleet`` (OS editions, watched products, or counts)."""
    if not isinstance(fleet, dict):
        return []
    charts: list[tuple[str, str, dict[str, Any]]] = []

    def pairs(rows: Any, *label_keys: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not isinstance(row.get("count"), int):
                continue
            label = " ".join(str(row.get(k) or "") for k in label_keys).strip() or "unknown"
            out.append((label, int(row["count"])))
        return sorted(out, key=lambda kv: (-kv[1], kv[0]))[:15]

    editions = pairs(fleet.get("os_editions"), "os", "edition_id")
    if editions:
        charts.append(("Licences: OS editions", "chart-licence", bar_chart(editions)))
    watched = pairs(fleet.get("watched"), "product", "edition")
    if watched:
        charts.append(("Licences: watched products", "chart-licence-watched", bar_chart(watched)))
    counts = fleet.get("licenses")
    if isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values()) and counts:
        items = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: -kv[1])
        charts.append(("Licences across the fleet", "chart-licence-counts", bar_chart(items[:15])))
    return charts


def _disk_point(disk: dict[str, Any]) -> dict[str, Any]:
    """Chain, internal snapshots and point in time of one disk (all escaped by the template)."""
    point = disk.get("point")
    return {
        "path": str(disk.get("path", "")),
        "point": point if isinstance(point, dict) and point else None,
        "layers": [la for la in disk.get("layers") or [] if isinstance(la, dict)],
        "snapshots": [s for s in disk.get("snapshots") or [] if isinstance(s, dict)],
    }


def build_context(doc: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, computed from the run document."""
    images = list(doc.get("images") or [])
    sections = doc.get("sections") or {}
    status = Counter(str(i.get("status", "unknown")) for i in images)
    sev: Counter[str] = Counter()
    by_check: Counter[str] = Counter()
    os_dist: Counter[str] = Counter()
    migration: Counter[str] = Counter()
    changes = sections.get("changes") or {}
    changes_by_source = {c.get("source"): c for c in changes.get("images") or []}
    vms = []
    for idx, img in enumerate(images):
        findings = []
        roots = []
        packages = 0
        for root in iter_roots(img):
            os_ = root.get("os") or {}
            if root in (img.get("roots") or []):
                os_dist[_os_label(root)] += 1
            verdict = ((root.get("sections") or {}).get("migration") or {}).get("verdict")
            if verdict:
                migration[str(verdict)] += 1
            packages += len(root.get("packages") or [])
            roots.append(
                {
                    "device": root.get("device", ""),
                    "os": os_,
                    "label": _os_label(root),
                    "packages": len(root.get("packages") or []),
                    "migration": verdict,
                }
            )
            for f in root.get("findings") or []:
                s = str(f.get("severity") or "unknown")
                sev[s] += 1
                by_check[str(f.get("check", ""))] += 1
                findings.append(
                    {
                        **f,
                        "severity": s,
                        "root": root.get("device", ""),
                        "sev_order": SEVERITY_ORDER.get(s, 0),
                    }
                )
        findings.sort(key=lambda f: (-f["sev_order"], str(f.get("rule_id", ""))))
        worst = findings[0]["severity"] if findings else ""
        state = (img.get("sections") or {}).get("state") or {}
        av = (img.get("sections") or {}).get("antivirus")
        av_view = None
        if isinstance(av, dict):
            not_scanned = av.get("not_scanned") if isinstance(av.get("not_scanned"), dict) else {}
            counts = not_scanned.get("counts") if isinstance(not_scanned, dict) else None
            av_view = {
                "status": str(av.get("status", "")),
                "not_scanned": dict(counts) if isinstance(counts, dict) else {},
                "reasons": [str(r) for r in av.get("incomplete_reasons") or []][:10],
            }
        as_of = state.get("antivirus_as_of")
        as_of = as_of if isinstance(as_of, dict) else {}
        hashed = [
            ((r.get("sections") or {}).get("antivirus") or {}).get("hash_rechecked")
            for r in iter_roots(img)
        ]
        hash_at = max((str(h.get("at", "")) for h in hashed if isinstance(h, dict)), default="")
        av_as_of = None
        if as_of or hash_at:
            av_as_of = {
                "engine": str(as_of.get("engine") or ""),
                "date": str(as_of.get("date") or ""),
                "kinds": [str(k) for k in as_of.get("kinds_rechecked") or []],
                "hash_at": hash_at,
            }
        incomplete = [
            {"root": i.root, "plugin": i.plugin, "status": i.status, "reason": bound(i.reason, 300)}
            for i in incomplete_plugins(img)
        ]
        vms.append(
            {
                "id": f"vm-{idx}",
                "incomplete": incomplete[:MAX_BANNER_LINES],
                "incomplete_more": max(0, len(incomplete) - MAX_BANNER_LINES),
                "source": str(img.get("source", "")),
                "status": str(img.get("status", "unknown")),
                "errors": [str(e) for e in img.get("errors") or []],
                "roots": roots,
                "packages": packages,
                "findings": findings[:MAX_FINDINGS_PER_VM],
                "findings_total": len(findings),
                "worst": worst,
                "checks": sorted({str(f.get("check", "")) for f in findings}),
                "carried_forward": bool(state.get("carried_forward")),
                "scanned_at": state.get("scanned_at") or img.get("finished_at") or "",
                "rescanned_checks": state.get("rescanned_checks") or [],
                "changes": changes_by_source.get(img.get("source")),
                "antivirus": av_view,
                "av_as_of": av_as_of,
                "disks": [
                    str(d.get("path", "")) for d in img.get("disks") or [] if isinstance(d, dict)
                ],
                "disk_points": [
                    _disk_point(d) for d in img.get("disks") or [] if isinstance(d, dict)
                ],
            }
        )
    sev_items = [
        (s, sev.get(s, 0)) for s in sorted(SEVERITY_ORDER, key=lambda k: -SEVERITY_ORDER[k])
    ]
    run = sections.get("run") or {}
    return {
        "doc": doc,
        "run": run,
        "vms": vms,
        # One red banner per image not fully scanned, above everything else.
        "banners": [vm for vm in vms if vm["incomplete"] or vm["status"] == "error"],
        "n_images": len(images),
        "n_findings": sum(sev.values()),
        "n_incomplete": sum(1 for vm in vms if vm["incomplete"]),
        "status_chart": bar_chart(sorted(status.items()), STATUS_COLORS),
        "severity_chart": bar_chart(sev_items, SEVERITY_COLORS),
        "check_chart": bar_chart(sorted(by_check.items())),
        "os_chart": bar_chart(os_dist.most_common(12)),
        "migration_chart": bar_chart(sorted(migration.items())) if migration else None,
        "licence_charts": _licence_charts(sections.get("license_fleet")),
        "trend": trend_chart(list(sections.get("trend") or [])),
        "changes": changes,
        "severities": sorted(SEVERITY_ORDER, key=lambda k: -SEVERITY_ORDER[k]),
        "severity_colors": SEVERITY_COLORS,
        "status_colors": STATUS_COLORS,
        "nightly": sections.get("nightly") or {},
        "all_checks": sorted(by_check),
    }


def render_html(doc: dict[str, Any]) -> str:
    """The report as one HTML string."""
    return _env().get_template("report.html.j2").render(**build_context(doc))


def write_html(doc: dict[str, Any], fp: IO[str]) -> None:
    """Write the self-contained HTML report."""
    fp.write(render_html(doc))
