"""Red Hat CSAF 2.0 advisories and VEX files: per product and package, fixed or not.

A CSAF document names products in ``product_tree``: branches whose ``product_name``
entries carry a CPE (``cpe:/a:redhat:rhel_aus:8.6::appstream``: the repository of a
release), ``product_version`` entries naming packages (``git-lfs-0:2.13.3-3.el8_6.1.x86_64``,
with a purl), and ``relationships`` that make ``PRODUCT:PACKAGE`` ids of them. Each
vulnerability's ``product_status`` lists those ids as ``fixed`` (the package version is the
fix), ``known_affected`` (no fix yet) or ``known_not_affected`` (nothing stored). A CPE maps
to the ecosystem Red Hat's own OSV records use (``Red Hat:rhel_aus:8.6::appstream``), so
CSAF and OSV entries are matched by the same rules; a ``.src`` package is kept by its
source name, as Red Hat's own OSV conversion does.
"""

from __future__ import annotations

import re
from typing import Any

from vmscan.advisories.model import (
    Advisory,
    Affected,
    FeedKind,
    ParseResult,
    Rating,
    bounded,
)
from vmscan.advisories.osv import module_streams
from vmscan.advisories.severity import score_vector, word_rating, worst

MAX_PRODUCTS, MAX_VULNS, MAX_IDS = 500_000, 10_000, 200_000
#: ``name-EPOCH:VERSION-RELEASE.ARCH`` of a product_version (Red Hat's component ids).
_NEVRA_RE = re.compile(r"^(?P<name>.+)-(?P<evr>\d+:[^-]+-[^-]+)\.(?P<arch>[A-Za-z0-9_]+)$")
_CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")


def looks_like_csaf(data: Any) -> bool:
    """A CSAF document: ``document.csaf_version`` and a ``product_tree``."""
    doc = data.get("document") if isinstance(data, dict) else None
    return isinstance(doc, dict) and "csaf_version" in doc and "product_tree" in data


def ecosystem_of_cpe(cpe: str) -> str:
    """``Red Hat:rhel_aus:8.6::appstream`` for ``cpe:/a:redhat:rhel_aus:8.6::appstream``."""
    m = re.match(r"^cpe:/[aho]:redhat:(.+)$", cpe.strip())
    return f"Red Hat:{m.group(1)}" if m else ""


def _walk(branches: Any, out: dict[str, dict[str, str]], depth: int = 0) -> None:
    if not isinstance(branches, list) or depth > 12:
        return
    for b in branches:
        if not isinstance(b, dict):
            continue
        prod = b.get("product")
        if isinstance(prod, dict) and len(out) < MAX_PRODUCTS:
            helper = prod.get("product_identification_helper") or {}
            out[str(prod.get("product_id", ""))[:300]] = {
                "category": str(b.get("category", "")),
                "name": str(b.get("name", ""))[:300],
                "cpe": str(helper.get("cpe", "")) if isinstance(helper, dict) else "",
                "purl": str(helper.get("purl", "")) if isinstance(helper, dict) else "",
            }
        _walk(b.get("branches"), out, depth + 1)


def _package(ref: str, info: dict[str, str] | None) -> tuple[str, str, str]:
    """(name, EVR or "", arch) of a component reference."""
    m = _NEVRA_RE.match(ref)
    if m:
        return m.group("name"), m.group("evr"), m.group("arch")
    purl = (info or {}).get("purl", "")
    pm = re.match(r"^pkg:rpm/[^/]+/([^@?]+)(?:@([^?]+))?(?:\?(.*))?$", purl)
    if pm:
        quals = dict(q.split("=", 1) for q in (pm.group(3) or "").split("&") if "=" in q)
        version = pm.group(2) or ""
        if version and quals.get("epoch"):
            version = f"{quals['epoch']}:{version}"
        return pm.group(1), version, quals.get("arch", "")
    return ref, "", ""  # a bare package name (VEX: "red_hat_enterprise_linux_8:curl")


def _product(
    ref: str, products: dict[str, dict[str, str]], composite: dict[str, tuple[str, str]]
) -> tuple[str, list[str]]:
    """(ecosystem of the product *ref* belongs to, module streams on the way).

    A module package is a component of a module (``python39:3.9:…``) which is a component
    of a product: ``PRODUCT:MODULE:PACKAGE``.
    """
    modules: list[str] = []
    for _depth in range(4):
        eco = ecosystem_of_cpe((products.get(ref) or {}).get("cpe", ""))
        if eco or ref not in composite:
            return eco, modules
        inner, ref = composite[ref]
        if (products.get(inner) or {}).get("purl", "").startswith("pkg:rpmmod/"):
            name, _, rest = inner.partition(":")
            modules.append(f"{name}:{rest.partition(':')[0]}")
    return "", modules


def _rating(vuln: dict[str, Any]) -> Rating:
    ratings = []
    for s in vuln.get("scores") or []:
        for key in ("cvss_v4", "cvss_v3"):
            vec = (s.get(key) or {}).get("vectorString") if isinstance(s, dict) else None
            kind = "CVSS_V4" if key == "cvss_v4" else "CVSS_V3"
            scored = score_vector(kind, str(vec)) if vec else None
            if scored:
                ratings.append(Rating(scored[1], scored[0], f"CVSS {scored[0]}"))
    for t in vuln.get("threats") or []:
        if isinstance(t, dict) and t.get("category") == "impact":
            w = word_rating(t.get("details"))
            if w:
                ratings.append(Rating(w, None, f"Red Hat {str(t.get('details'))[:20]}"))
    return worst(ratings)


def parse(data: Any, feed: str) -> ParseResult:
    """Advisories (one per vulnerability of the document) with their affected entries."""
    res = ParseResult()
    if not looks_like_csaf(data):
        res.rejected.append("document: not CSAF (no document.csaf_version/product_tree)")
        return res
    doc = data["document"]
    tracking = doc.get("tracking") if isinstance(doc.get("tracking"), dict) else {}
    doc_id = str(tracking.get("id", ""))[:80]
    title = str(doc.get("title", ""))
    res.date = str(tracking.get("current_release_date", ""))[:10]
    vex = doc.get("category") == "csaf_vex"
    products: dict[str, dict[str, str]] = {}
    tree = data.get("product_tree") if isinstance(data.get("product_tree"), dict) else {}
    _walk(tree.get("branches"), products)
    composite: dict[str, tuple[str, str]] = {}
    for rel in (tree.get("relationships") or [])[:MAX_PRODUCTS]:
        if not isinstance(rel, dict):
            continue
        pid = (rel.get("full_product_name") or {}).get("product_id")
        if pid:
            composite[str(pid)] = (
                str(rel.get("product_reference", "")),
                str(rel.get("relates_to_product_reference", "")),
            )
    streams = module_streams(title)
    for vuln in (data.get("vulnerabilities") or [])[:MAX_VULNS]:
        if not isinstance(vuln, dict):
            continue
        cve = str(vuln.get("cve", ""))
        if cve and not _CVE_RE.match(cve):
            res.rejected.append(bounded(f"{doc_id}: bad CVE id {cve[:40]!r}", 200))
            continue
        rating = _rating(vuln)
        raw_status = vuln.get("product_status")
        status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
        seen: set[tuple[str, str, str]] = set()
        affected: list[Affected] = []
        for state in ("fixed", "known_affected"):
            for pid in (status.get(state) or [])[:MAX_IDS]:
                comp = composite.get(str(pid))
                if comp is None:
                    continue
                name, evr, _arch = _package(comp[0], products.get(comp[0]))
                eco, modules = _product(comp[1], products, composite)
                if not eco or (state == "fixed" and not evr):
                    continue
                if (products.get(comp[0]) or {}).get("purl", "").startswith("pkg:rpmmod/"):
                    continue  # the module itself, not a package
                key = (eco, name, evr if state == "fixed" else "")
                if key in seen:
                    continue
                seen.add(key)
                ranges = (
                    (("introduced", "0"), ("fixed", evr))
                    if state == "fixed"
                    else (("introduced", "0"),)
                )
                extra: dict[str, Any] = {"csaf_status": state}
                if ".module" in evr and (modules or streams):
                    extra["module_streams"] = list(modules or streams)
                affected.append(
                    Affected(
                        ecosystem=eco,
                        name=name,
                        ranges=(ranges,),
                        name_kind="binary",
                        rating=rating,
                        extra=extra,
                    )
                )
        if not affected:
            continue
        ident = cve if (vex or not doc_id) and cve else doc_id
        res.advisories.append(
            Advisory(
                id=ident or "CSAF",
                feed=feed,
                kind=FeedKind.CSAF,
                summary=bounded(title),
                aliases=tuple(a for a in (cve, doc_id) if a and a != ident),
                published=str(tracking.get("initial_release_date", ""))[:40],
                modified=str(tracking.get("current_release_date", ""))[:40],
                references=(
                    f"https://access.redhat.com/errata/{doc_id}"
                    if doc_id.startswith("RH")
                    else f"https://access.redhat.com/security/cve/{cve}",
                ),
                rating=rating,
                affected=tuple(affected),
            )
        )
    return res
