"""What changed between two run results: findings, packages, executables, images."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from vmscan.document import FileDoc, FindingDoc, ImageDoc, ReportDoc
from vmscan.model import Severity
from vmscan.versions import COMPARATORS

ImageInput = ImageDoc | Mapping[str, Any]


def finding_key(finding: FindingDoc | Mapping[str, Any]) -> str:
    """The finding's fingerprint, or a stable one made from check, rule and target."""
    if not isinstance(finding, FindingDoc):
        finding = FindingDoc.from_json(finding)
    return finding.key()


def _image(image: ImageInput) -> ImageDoc:
    return image if isinstance(image, ImageDoc) else ImageDoc.from_json(image)


def _findings(image: ImageDoc) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for root, finding in image.findings():
        out[(root.device, finding.key())] = {**finding.to_json(), "root": root.device}
    # Image-level findings (e.g. antivirus on a data disk) may sit in sections.
    for finding in image.image_findings:
        out[("", finding.key())] = {**finding.to_json(), "root": ""}
    return out


def _packages(image: ImageDoc) -> tuple[dict[tuple[str, str, str], set[str]], dict[str, str]]:
    pkgs: dict[tuple[str, str, str], set[str]] = {}
    schemes: dict[str, str] = {}
    for root in image.roots():
        schemes[root.device] = root.os.package_format
        for pkg in root.packages:
            pkgs.setdefault((root.device, pkg.name, pkg.arch), set()).add(pkg.version)
    return pkgs, schemes


def _compare(scheme: str, a: str, b: str) -> int:
    cmp = COMPARATORS.get(scheme)
    if cmp is not None:
        try:
            return cmp(a, b)
        except Exception:  # a malformed guest version string must not stop the diff
            pass
    return (a > b) - (a < b)


def _files(image: ImageDoc) -> dict[tuple[str, str], FileDoc]:
    return {(e.device, e.path): e for e in image.manifest}


def _file_row(key: tuple[str, str], entry: FileDoc) -> dict[str, Any]:
    return {"device": key[0], "path": key[1], "sha256": entry.sha256, "size": entry.size}


def diff_files(a: ImageInput, b: ImageInput) -> dict[str, list[dict[str, Any]]]:
    """Files added, removed and changed (by SHA-256) between two manifests.

    A file whose hash could not be computed on either side is "unreadable", never "same".
    """
    fa, fb = _files(_image(a)), _files(_image(b))
    added = [_file_row(k, fb[k]) for k in sorted(fb.keys() - fa.keys())]
    removed = [_file_row(k, fa[k]) for k in sorted(fa.keys() - fb.keys())]
    changed: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    for k in sorted(fa.keys() & fb.keys()):
        ha, hb = fa[k].sha256, fb[k].sha256
        if ha is None or hb is None:
            unreadable.append(_file_row(k, fb[k]))
        elif ha != hb:
            changed.append({**_file_row(k, fb[k]), "from_sha256": ha, "from_size": fa[k].size})
    return {
        "files_added": added,
        "files_removed": removed,
        "files_changed": changed,
        "files_unreadable": unreadable,
    }


def diff_images(a: ImageInput, b: ImageInput, files: bool = False) -> dict[str, Any]:
    """Changes from image result ``a`` (older) to ``b`` (newer) of the same source.

    With *files*, also every file added, removed or changed (``vmscan diff`` of two points
    in time); the nightly leaves it out, its reports would carry whole manifests.
    """
    a, b = _image(a), _image(b)
    fa, fb = _findings(a), _findings(b)
    new_findings = [fb[k] for k in sorted(fb.keys() - fa.keys())]
    resolved = [fa[k] for k in sorted(fa.keys() - fb.keys())]

    pa, schemes_a = _packages(a)
    pb, schemes_b = _packages(b)
    added: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    upgraded: list[dict[str, Any]] = []
    downgraded: list[dict[str, Any]] = []
    for key in sorted(pa.keys() | pb.keys()):
        device, name, arch = key
        va, vb = pa.get(key, set()), pb.get(key, set())
        if va == vb:
            continue
        base = {"root": device, "name": name, "arch": arch}
        if len(va) == 1 and len(vb) == 1:
            old, new = next(iter(va)), next(iter(vb))
            scheme = schemes_b.get(device) or schemes_a.get(device, "")
            entry = {**base, "from": old, "to": new}
            (upgraded if _compare(scheme, old, new) < 0 else downgraded).append(entry)
            continue
        # Several versions side by side (kernels): report the set differences.
        removed.extend({**base, "version": v} for v in sorted(va - vb))
        added.extend({**base, "version": v} for v in sorted(vb - va))

    notes: list[str] = []
    new_exec: list[dict[str, Any]] = []
    if not a.raw_manifest and b.raw_manifest:
        notes.append("the earlier result has no file manifest: new executables not compared")
    else:
        ea = {(e.device, e.path): e for e in a.manifest if e.is_executable}
        eb = {(e.device, e.path): e for e in b.manifest if e.is_executable}
        for path_key in sorted(eb):
            e = eb[path_key]
            before = ea.get(path_key)
            if before is None:
                change = "new"
            elif before.sha256 != e.sha256:
                change = "modified"
            else:
                continue
            new_exec.append(
                {
                    "device": e.device,
                    "path": e.path,
                    "sha256": e.sha256,
                    "size": e.size,
                    "mode": e.mode,
                    "change": change,
                }
            )
    changes: dict[str, list[dict[str, Any]]] = {}
    if files and a.raw_manifest and b.raw_manifest:
        changes = diff_files(a, b)
    elif files:
        notes.append("a result has no file manifest: files not compared")
    out: dict[str, Any] = {
        "source": b.source or a.source,
        "new_findings": new_findings,
        "resolved_findings": resolved,
        "packages_added": added,
        "packages_removed": removed,
        "packages_upgraded": upgraded,
        "packages_downgraded": downgraded,
        "new_executables": new_exec,
        **changes,
        "notes": notes,
    }
    if a.status != b.status:
        out["status"] = {"from": a.status.value, "to": b.status.value}
    out["changed"] = (
        bool(new_findings or resolved or added or removed or upgraded or downgraded or new_exec)
        or any(changes.get(k) for k in ("files_added", "files_removed", "files_changed"))
        or ("status" in out)
    )
    return out


def _by_severity(findings: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of the diff's finding rows per severity, most severe first."""
    sev = Counter(str(f["severity"]) for f in findings)
    return {s.value: sev[s.value] for s in Severity.descending() if sev[s.value]}


def diff_runs(a: ReportDoc | Mapping[str, Any], b: ReportDoc | Mapping[str, Any]) -> dict[str, Any]:
    """Changes from run document ``a`` (older) to ``b`` (newer), per image and fleet-wide."""
    ra, rb = ReportDoc.of(a), ReportDoc.of(b)
    ia = {i.source: i for i in ra.images}
    ib = {i.source: i for i in rb.images}
    images = [diff_images(ia[s], ib[s]) for s in sorted(ia.keys() & ib.keys())]
    summary = {
        "images_added": len(ib.keys() - ia.keys()),
        "images_gone": len(ia.keys() - ib.keys()),
        "images_changed": sum(1 for i in images if i["changed"]),
        "new_findings": sum(len(i["new_findings"]) for i in images),
        "new_findings_by_severity": _by_severity([f for i in images for f in i["new_findings"]]),
        "resolved_findings": sum(len(i["resolved_findings"]) for i in images),
        "packages_added": sum(len(i["packages_added"]) for i in images),
        "packages_removed": sum(len(i["packages_removed"]) for i in images),
        "packages_upgraded": sum(len(i["packages_upgraded"]) for i in images),
        "packages_downgraded": sum(len(i["packages_downgraded"]) for i in images),
        "new_executables": sum(len(i["new_executables"]) for i in images),
    }
    return {
        "from_run": ra.run_id,
        "to_run": rb.run_id,
        "from_started_at": ra.started_at,
        "to_started_at": rb.started_at,
        "images_added": sorted(ib.keys() - ia.keys()),
        "images_gone": sorted(ia.keys() - ib.keys()),
        "images": images,
        "summary": summary,
    }


def diff_points(a: ImageInput, b: ImageInput) -> dict[str, Any]:
    """Changes from image result ``a`` to ``b``: two points in time of one VM (files too)."""
    a, b = _image(a), _image(b)
    img = diff_images(a, b, files=True)
    img["from_source"] = a.source
    keys = (
        "new_findings",
        "resolved_findings",
        "packages_added",
        "packages_removed",
        "packages_upgraded",
        "packages_downgraded",
        "new_executables",
        "files_added",
        "files_removed",
        "files_changed",
        "files_unreadable",
    )
    summary: dict[str, Any] = {k: len(img.get(k) or []) for k in keys}
    summary.update(
        images_added=0,
        images_gone=0,
        images_changed=int(bool(img["changed"])),
        new_findings_by_severity=_by_severity(img["new_findings"]),
    )
    return {
        "from_run": img["from_source"],
        "to_run": img["source"],
        "from_started_at": a.started_at,
        "to_started_at": b.started_at,
        "points": True,
        "images_added": [],
        "images_gone": [],
        "images": [img],
        "summary": summary,
    }


def format_text(diff: dict[str, Any]) -> str:
    """A short human-readable rendering of :func:`diff_runs` output."""
    s = diff["summary"]
    what = "" if diff.get("points") else "run "
    files = (
        f"; files +{s['files_added']} -{s['files_removed']} ~{s['files_changed']}"
        if diff.get("points")
        else ""
    )
    lines = [
        f"{what}{diff.get('from_run')} -> {what}{diff.get('to_run')}: "
        f"{s['images_changed']} image(s) changed, {s['images_added']} added, "
        f"{s['images_gone']} gone; findings +{s['new_findings']} -{s['resolved_findings']}; "
        f"packages +{s['packages_added']} -{s['packages_removed']} "
        f"^{s['packages_upgraded']}; new executables {s['new_executables']}{files}"
    ]
    lines += [f"+ image {src}" for src in diff["images_added"]]
    lines += [f"- image {src}" for src in diff["images_gone"]]
    for img in diff["images"]:
        if not img["changed"]:
            continue
        lines.append(f"* {img['source']}")
        if "status" in img:
            lines.append(f"    status {img['status']['from']} -> {img['status']['to']}")
        for f in img["new_findings"]:
            lines.append(f"    + [{f.get('severity')}] {f.get('rule_id')} {f.get('target', '')}")
        for f in img["resolved_findings"]:
            lines.append(f"    - [{f.get('severity')}] {f.get('rule_id')} {f.get('target', '')}")
        for p in img["packages_added"]:
            lines.append(f"    + pkg {p['name']} {p['version']}")
        for p in img["packages_removed"]:
            lines.append(f"    - pkg {p['name']} {p['version']}")
        for p in img["packages_upgraded"] + img["packages_downgraded"]:
            lines.append(f"    ~ pkg {p['name']} {p['from']} -> {p['to']}")
        for e in img["new_executables"]:
            lines.append(f"    + exec ({e['change']}) {e['device']}:{e['path']}")
        for mark, key in (("+", "files_added"), ("-", "files_removed"), ("~", "files_changed")):
            for e in img.get(key) or []:
                lines.append(f"    {mark} file {e['device']}:{e['path']}")
        for e in img.get("files_unreadable") or []:
            lines.append(f"    ? file (not readable on one side) {e['device']}:{e['path']}")
    # Guest strings may hold terminal escapes: keep the output printable.
    return "\n".join(_printable(line) for line in lines) + "\n"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
