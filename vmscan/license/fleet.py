"""Fleet licence summary: VMs per OS edition and per watched commercial product/edition.

Input is the canonical scan document (the JSON report as a dict). The licence check puts
``sections["license"]`` (``os_edition``, ``watched``) on each root; when it did not run
the OS edition comes from the root's ``os`` and watched packages are matched with
*policy* (the default policy when none is given).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vmscan.license.policy import Policy, edition_of, watch_matches_os, watch_matches_package


def _vm_name(image: dict[str, Any]) -> str:
    return str(image.get("source") or "?")


def _edition_of_root(root: dict[str, Any]) -> dict[str, Any]:
    sec = (root.get("sections") or {}).get("license") or {}
    ed = sec.get("os_edition")
    if isinstance(ed, dict):
        return ed
    os_ = root.get("os") or {}
    extra = os_.get("extra") or {}
    return {
        "type": os_.get("type", "unknown"),
        "product_name": extra.get("ProductName") or os_.get("product_name", ""),
        "edition_id": extra.get("EditionID", ""),
        "installation_type": extra.get("InstallationType", ""),
    }


def _edition_label(ed: dict[str, Any]) -> str:
    name = str(ed.get("product_name") or "") or str(ed.get("distro") or "unknown")
    return name


def _watched_of_root(root: dict[str, Any], policy: Policy | None) -> list[dict[str, Any]]:
    sec = (root.get("sections") or {}).get("license") or {}
    if isinstance(sec.get("watched"), list):
        return [w for w in sec["watched"] if isinstance(w, dict)]
    policy = policy or Policy.load()
    out: list[dict[str, Any]] = []
    ed = _edition_of_root(root)
    product = str(ed.get("product_name") or "")
    for rule in policy.watch:
        if rule.kind == "os":
            if product and watch_matches_os(rule, product):
                out.append(
                    {
                        "id": rule.id,
                        "product": rule.product,
                        "edition": str(ed.get("edition_id") or product),
                    }
                )
            continue
        for pkg in root.get("packages") or []:
            name = str(pkg.get("name", ""))
            if watch_matches_package(rule, name):
                out.append(
                    {"id": rule.id, "product": rule.product, "edition": edition_of(rule, name)}
                )
                break
    return out


def fleet_summary(scan_json: dict[str, Any], policy: Policy | None = None) -> dict[str, Any]:
    """Counts and VM lists per OS edition and per watched product/edition."""
    editions: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    watched: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    images = [i for i in scan_json.get("images") or [] if isinstance(i, dict)]
    for image in images:
        vm = _vm_name(image)
        for root in image.get("roots") or []:
            if not isinstance(root, dict):
                continue
            ed = _edition_of_root(root)
            if str(ed.get("type", "unknown")) == "unknown" and not ed.get("product_name"):
                continue  # a data filesystem, not an OS
            key = (
                _edition_label(ed),
                str(ed.get("edition_id") or ""),
                str(ed.get("installation_type") or ""),
            )
            editions[key].add(vm)
            for w in _watched_of_root(root, policy):
                wkey = (str(w.get("id", "")), str(w.get("product", "")), str(w.get("edition", "")))
                watched[wkey].add(vm)
    return {
        "vms": len(images),
        "os_editions": [
            {
                "os": k[0],
                "edition_id": k[1],
                "installation_type": k[2],
                "count": len(v),
                "vms": sorted(v),
            }
            for k, v in sorted(editions.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ],
        "watched": [
            {"id": k[0], "product": k[1], "edition": k[2], "count": len(v), "vms": sorted(v)}
            for k, v in sorted(watched.items(), key=lambda kv: (kv[0][0], kv[0][2]))
        ],
    }


def fleet_of(scan_json: dict[str, Any]) -> dict[str, Any]:
    """``sections["license_fleet"]`` of the document, computed when the run has none."""
    sec = (scan_json.get("sections") or {}).get("license_fleet")
    if isinstance(sec, dict):
        return sec
    return fleet_summary(scan_json)
