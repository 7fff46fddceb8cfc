"""What changed between two run results: findings, packages, executables, images."""

from __future__ import annotations

import hashlib
import stat
from collections import Counter
from typing import Any

from vmscan.model import SEVERITY_ORDER
from vmscan.versions import COMPARATORS


def finding_key(finding: dict[str, Any]) -> str:
    """The finding's fingerprint, or a stable one made from check, rule and target."""
    fp = str(finding.get("fingerprint") or "")
    if fp:
        return fp
    raw = "\x1f".join(str(finding.get(k, "")) for k in ("check", "rule_id", "target")).encode(
        "utf-8", "replace"
    )
    return "k:" + hashlib.sha256(raw).hexdigest()[:32]


def iter_roots(image: dict[str, Any]) -> list[dict[str, Any]]:
    """OS roots plus the data volumes of a disk with no OS (``sections.data_volumes``)."""
    roots = [r for r in image.get("roots") or [] if isinstance(r, dict)]
    vols = (image.get("sections") or {}).get("data_volumes") or []
    return roots + [v for v in vols if isinstance(v, dict)]


def _findings(image: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for root in iter_roots(image):
        device = str(root.get("device", ""))
        for finding in root.get("findings") or []:
            out[(device, finding_key(finding))] = {**finding, "root": device}
    # Image-level findings (e.g. antivirus on a data disk) may sit in sections.
    for finding in (image.get("sections") or {}).get("findings") or []:
        out[("", finding_key(finding))] = {**finding, "root": ""}
    return out


def _packages(image: dict[str, Any]) -> tuple[dict[tuple[str, str, str], set[str]], dict[str, str]]:
    pkgs: dict[tuple[str, str, str], set[str]] = {}
    schemes: dict[str, str] = {}
    for root in iter_roots(image):
        device = str(root.get("device", ""))
        schemes[device] = str((root.get("os") or {}).get("package_format", ""))
        for pkg in root.get("packages") or []:
            key = (device, str(pkg.get("name", "")), str(pkg.get("arch", "")))
            pkgs.setdefault(key, set()).add(str(pkg.get("version", "")))
    return pkgs, schemes


def _compare(scheme: str, a: str, b: str) -> int:
    cmp = COMPARATORS.get(scheme)
    if cmp is not None:
        try:
            return cmp(a, b)
        except Exception:  # a malformed guest version string must not stop the diff
            pass
    return (a > b) - (a < b)


def _is_executable(entry: dict[str, Any]) -> bool:
    mode = int(entry.get("mode") or 0)
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return False
    return bool(mode & 0o111)


def _executables(image: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (str(e.get("device", "")), str(e.get("path", ""))): e
        for e in image.get("manifest") or []
        if _is_executable(e)
    }


def _files(image: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (str(e.get("device", "")), str(e.get("path", ""))): e
        for e in image.get("manifest") or []
        if isinstance(e, dict)
    }


def _file_row(key: tuple[str, str], entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": key[0],
        "path": key[1],
        "sha256": entry.get("sha256"),
        "size": entry.get("size"),
    }


def diff_files(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Files added, removed and changed (by SHA-256) between two manifests.

    A file whose hash could not be computed on either side is "unreadable", never "same".
    """
    fa, fb = _files(a), _files(b)
    added = [_file_row(k, fb[k]) for k in sorted(fb.keys() - fa.keys())]
    removed = [_file_row(k, fa[k]) for k in sorted(fa.keys() - fb.keys())]
    changed: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    for k in sorted(fa.keys() & fb.keys()):
        ha, hb = fa[k].get("sha256"), fb[k].get("sha256")
        if ha is None or hb is None:
            unreadable.append(_file_row(k, fb[k]))
        elif ha != hb:
            changed.append(
                {**_file_row(k, fb[k]), "from_sha256": ha, "from_size": fa[k].get("size")}
            )
    return {
        "files_added": added,
        "files_removed": removed,
        "files_changed": changed,
        "files_unreadable": unreadable,
    }


def diff_images(a: dict[str, Any], b: dict[str, Any], files: bool = False) -> dict[str, Any]:
    """Changes from image result ``a`` (older) to ``b`` (newer) of the same source.

    With *files*, also every file added, removed or changed (``vmscan diff`` of two points
    in time); the nightly leaves it out, its reports would carry whole manifests.
    """
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
    if not a.get("manifest") and b.get("manifest"):
        notes.append("the earlier result has no file manifest: new executables not compared")
    else:
        ea, eb = _executables(a), _executables(b)
        for path_key in sorted(eb):
            entry = eb[path_key]
            before = ea.get(path_key)
            if before is None:
                change = "new"
            elif before.get("sha256") != entry.get("sha256"):
                change = "modified"
            else:
                continue
            new_exec.append(
                {
                    "device": path_key[0],
                    "path": path_key[1],
                    "sha256": entry.get("sha256"),
                    "size": entry.get("size"),
                    "mode": entry.get("mode"),
                    "change": change,
                }
            )
    changes: dict[str, list[dict[str, Any]]] = {}
    if files and a.get("manifest") and b.get("manifest"):
        changes = diff_files(a, b)
    elif files:
        notes.append("a result has no file manifest: files not compared")
    out: dict[str, Any] = {
        "source": str(b.get("source", a.get("source", ""))),
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
    if a.get("status") != b.get("status"):
        out["status"] = {"from": a.get("status"), "to": b.get("status")}
    out["changed"] = (
        bool(new_findings or resolved or added or removed or upgraded or downgraded or new_exec)
        or any(changes.get(k) for k in ("files_added", "files_removed", "files_changed"))
        or ("status" in out)
    )
    return out


def _run_id(doc: dict[str, Any]) -> Any:
    return ((doc.get("sections") or {}).get("run") or {}).get("id")


def diff_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Changes from run document ``a`` (older) to ``b`` (newer), per image and fleet-wide."""
    ia = {str(i.get("source")): i for i in a.get("images") or []}
    ib = {str(i.get("source")): i for i in b.get("images") or []}
    images = [diff_images(ia[s], ib[s]) for s in sorted(ia.keys() & ib.keys())]
    sev: Counter[str] = Counter()
    for img in images:
        for f in img["new_findings"]:
            sev[str(f.get("severity", "unknown"))] += 1
    summary = {
        "images_added": len(ib.keys() - ia.keys()),
        "images_gone": len(ia.keys() - ib.keys()),
        "images_changed": sum(1 for i in images if i["changed"]),
        "new_findings": sum(len(i["new_findings"]) for i in images),
        "new_findings_by_severity": {
            k: sev[k] for k in sorted(sev, key=lambda s: -SEVERITY_ORDER.get(s, 0))
        },
        "resolved_findings": sum(len(i["resolved_findings"]) for i in images),
        "packages_added": sum(len(i["packages_added"]) for i in images),
        "packages_removed": sum(len(i["packages_removed"]) for i in images),
        "packages_upgraded": sum(len(i["packages_upgraded"]) for i in images),
        "packages_downgraded": sum(len(i["packages_downgraded"]) for i in images),
        "new_executables": sum(len(i["new_executables"]) for i in images),
    }
    return {
        "from_run": _run_id(a),
        "to_run": _run_id(b),
        "from_started_at": a.get("started_at"),
        "to_started_at": b.get("started_at"),
        "images_added": sorted(ib.keys() - ia.keys()),
        "images_gone": sorted(ia.keys() - ib.keys()),
        "images": images,
        "summary": summary,
    }


def diff_points(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Changes from image result ``a`` to ``b``: two points in time of one VM (files too)."""
    img = diff_images(a, b, files=True)
    img["from_source"] = str(a.get("source", ""))
    sev: Counter[str] = Counter(str(f.get("severity", "unknown")) for f in img["new_findings"])
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
        new_findings_by_severity={
            k: sev[k] for k in sorted(sev, key=lambda s: -SEVERITY_ORDER.get(s, 0))
        },
    )
    return {
        "from_run": img["from_source"],
        "to_run": img["source"],
        "from_started_at": a.get("started_at"),
        "to_started_at": b.get("started_at"),
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
