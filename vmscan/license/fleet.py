"""Fleet licence summary: VMs per OS edition and per watched commercial product/edition.

Input is the report (:class:`~vmscan.document.ReportDoc`, or its JSON form). The licence
check puts ``sections["license"]`` (``os_edition``, ``watched``) on each root; when it did
not run the OS edition comes from the root's ``os`` and watched packages are matched with
*policy* (the default policy when none is given). The summary is written to the report as
``sections.license_fleet`` (:meth:`FleetSummary.to_json`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmscan.document import ReportDoc, RootDoc
from vmscan.license.policy import Policy, edition_of, watch_matches_os, watch_matches_package


@dataclass(frozen=True)
class EditionCount:
    """VMs running one OS edition."""

    os: str
    edition_id: str
    installation_type: str
    count: int
    vms: tuple[str, ...]


@dataclass(frozen=True)
class WatchedCount:
    """VMs holding one edition of one watched commercial product."""

    id: str
    product: str
    edition: str
    count: int
    vms: tuple[str, ...]


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _vms(value: Any) -> tuple[str, ...]:
    return tuple(_s(v) for v in value) if isinstance(value, list | tuple) else ()


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class FleetSummary:
    """Counts and VM lists per OS edition and per watched product/edition."""

    vms: int
    os_editions: tuple[EditionCount, ...]
    watched: tuple[WatchedCount, ...]

    def to_json(self) -> dict[str, Any]:
        """``sections.license_fleet`` of the report."""
        return {
            "vms": self.vms,
            "os_editions": [
                {
                    "os": e.os,
                    "edition_id": e.edition_id,
                    "installation_type": e.installation_type,
                    "count": e.count,
                    "vms": list(e.vms),
                }
                for e in self.os_editions
            ],
            "watched": [
                {
                    "id": w.id,
                    "product": w.product,
                    "edition": w.edition,
                    "count": w.count,
                    "vms": list(w.vms),
                }
                for w in self.watched
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FleetSummary:
        """A stored ``sections.license_fleet`` (rows that are no object are dropped)."""

        def rows(key: str) -> list[Mapping[str, Any]]:
            value = data.get(key)
            return [r for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []

        return cls(
            vms=_count(data.get("vms")),
            os_editions=tuple(
                EditionCount(
                    _s(r.get("os")),
                    _s(r.get("edition_id")),
                    _s(r.get("installation_type")),
                    _count(r.get("count")),
                    _vms(r.get("vms")),
                )
                for r in rows("os_editions")
            ),
            watched=tuple(
                WatchedCount(
                    _s(r.get("id")),
                    _s(r.get("product")),
                    _s(r.get("edition")),
                    _count(r.get("count")),
                    _vms(r.get("vms")),
                )
                for r in rows("watched")
            ),
        )


@dataclass(frozen=True)
class _Edition:
    type: str
    product_name: str
    edition_id: str
    installation_type: str
    distro: str = ""

    @property
    def label(self) -> str:
        return self.product_name or self.distro or "unknown"


def _edition_of_root(root: RootDoc) -> _Edition:
    ed = root.license.os_edition if root.license else None
    if ed is not None:
        return _Edition(ed.type, ed.product_name, ed.edition_id, ed.installation_type, ed.distro)
    # Without the licence check: the OS facts as the Windows cataloger stores them
    # (snake_case, vmscan.catalog.windows._FACTS), or as registry value names in reports
    # written before it did. Reading only one spelling merged Standard and Datacenter.
    extra = root.os.extra

    def fact(*keys: str) -> str:
        return next((v for v in (_s(extra.get(k)) for k in keys) if v), "")

    product = fact("product_name", "ProductName") or root.os.product_name
    itype = fact("installation_type", "InstallationType")
    if not itype and root.os.type == "windows" and product:
        itype = "Server" if "server" in product.lower() else "Client"
    return _Edition(
        type=root.os.type,
        product_name=product,
        edition_id=fact("edition_id", "EditionID"),
        installation_type=itype,
    )


def _watched_of_root(root: RootDoc, policy: Policy | None) -> list[tuple[str, str, str]]:
    """(rule id, product, edition) of every watched product on *root*."""
    if root.license is not None and root.license.watched is not None:
        return [(w.id, w.product, w.edition) for w in root.license.watched]
    policy = policy or Policy.load()
    out: list[tuple[str, str, str]] = []
    ed = _edition_of_root(root)
    product = ed.product_name
    for rule in policy.watch:
        if rule.kind == "os":
            if product and watch_matches_os(rule, product):
                out.append((rule.id, rule.product, ed.edition_id or product))
            continue
        for pkg in root.packages:
            if watch_matches_package(rule, pkg.name):
                out.append((rule.id, rule.product, edition_of(rule, pkg.name)))
                break
    return out


def summarize_fleet(doc: ReportDoc, policy: Policy | None = None) -> FleetSummary:
    """Counts and VM lists per OS edition and per watched product/edition (OS roots only:
    a data volume holds no licensed OS)."""
    editions: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    watched: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for image in doc.images:
        vm = image.source or "?"
        for root in image.roots():
            if root.data_volume:
                continue
            ed = _edition_of_root(root)
            if (ed.type or "unknown") == "unknown" and not ed.product_name:
                continue  # a data filesystem, not an OS
            editions[(ed.label, ed.edition_id, ed.installation_type)].add(vm)
            for wkey in _watched_of_root(root, policy):
                watched[wkey].add(vm)
    return FleetSummary(
        vms=len(doc.images),
        os_editions=tuple(
            EditionCount(k[0], k[1], k[2], len(v), tuple(sorted(v)))
            for k, v in sorted(editions.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ),
        watched=tuple(
            WatchedCount(k[0], k[1], k[2], len(v), tuple(sorted(v)))
            for k, v in sorted(watched.items(), key=lambda kv: (kv[0][0], kv[0][2]))
        ),
    )


def fleet_summary(
    scan_json: ReportDoc | Mapping[str, Any], policy: Policy | None = None
) -> dict[str, Any]:
    """The summary as the report's ``sections.license_fleet``."""
    return summarize_fleet(ReportDoc.of(scan_json), policy).to_json()


def fleet_of(scan_json: ReportDoc | Mapping[str, Any]) -> dict[str, Any]:
    """``sections["license_fleet"]`` of the document as stored, computed when it has none."""
    doc = ReportDoc.of(scan_json)
    sec = doc.sections.get("license_fleet")
    if isinstance(sec, Mapping):
        return dict(sec)
    return summarize_fleet(doc).to_json()


def fleet_counts(scan_json: ReportDoc | Mapping[str, Any]) -> FleetSummary:
    """:func:`fleet_of`, typed (what the CSV and HTML writers show)."""
    return FleetSummary.from_json(fleet_of(scan_json))
