"""Fleet licence summary over hand-made scan documents."""

from __future__ import annotations

from typing import Any

from vmscan.license.fleet import fleet_of, fleet_summary


def _root(
    product: str,
    edition: str = "",
    itype: str = "",
    watched: list[dict[str, Any]] | None = None,
    ostype: str = "windows",
) -> dict[str, Any]:
    sec: dict[str, Any] = {
        "os_edition": {
            "type": ostype,
            "product_name": product,
            "edition_id": edition,
            "installation_type": itype,
        }
    }
    if watched is not None:
        sec["watched"] = watched
    return {
        "device": "/dev/sda2",
        "os": {"type": ostype, "product_name": product},
        "packages": [],
        "findings": [],
        "sections": {"license": sec},
    }


def _scan() -> dict[str, Any]:
    sql19 = {"id": "sql-server", "product": "Microsoft SQL Server", "edition": "2019"}
    ws = {"id": "windows-server", "product": "Windows Server", "edition": "ServerStandard (Server)"}
    return {
        "images": [
            {
                "source": "vm1.qcow2",
                "roots": [
                    _root("Windows Server 2019 Standard", "ServerStandard", "Server", [ws, sql19])
                ],
            },
            {
                "source": "vm2.qcow2",
                "roots": [_root("Windows Server 2019 Standard", "ServerStandard", "Server", [ws])],
            },
            {
                "source": "vm3.qcow2",
                "roots": [
                    _root(
                        "Windows Server 2022 Datacenter", "ServerDatacenter", "Server Core", [sql19]
                    )
                ],
            },
            # No licence section: the OS comes from "os", watched packages from the policy.
            {
                "source": "vm4.qcow2",
                "roots": [
                    {
                        "device": "/dev/sda1",
                        "os": {"type": "linux", "product_name": "Debian GNU/Linux 12", "extra": {}},
                        "packages": [{"name": "open-vm-tools", "version": "12"}],
                        "sections": {},
                    }
                ],
            },
            {
                "source": "empty.raw",
                "roots": [
                    {
                        "device": "/dev/sdb",
                        "os": {"type": "unknown"},
                        "packages": [],
                        "sections": {},
                    }
                ],
            },
        ]
    }


def test_fleet_counts_and_lists() -> None:
    fleet = fleet_summary(_scan())
    assert fleet["vms"] == 5
    eds = {(e["os"], e["installation_type"]): e for e in fleet["os_editions"]}
    ws19 = eds[("Windows Server 2019 Standard", "Server")]
    assert (ws19["count"], ws19["vms"], ws19["edition_id"]) == (
        2,
        ["vm1.qcow2", "vm2.qcow2"],
        "ServerStandard",
    )
    assert eds[("Windows Server 2022 Datacenter", "Server Core")]["vms"] == ["vm3.qcow2"]
    assert eds[("Debian GNU/Linux 12", "")]["count"] == 1
    assert not any("empty.raw" in e["vms"] for e in fleet["os_editions"])
    w = {(x["id"], x["edition"]): x for x in fleet["watched"]}
    assert w[("sql-server", "2019")]["vms"] == ["vm1.qcow2", "vm3.qcow2"]
    assert w[("windows-server", "ServerStandard (Server)")]["count"] == 2
    assert w[("vmware-tools", "open-vm-tools")]["vms"] == ["vm4.qcow2"]
    assert fleet["os_editions"][0]["count"] == 2  # largest first


def test_fleet_of_prefers_the_run_section() -> None:
    doc = {"images": [], "sections": {"license_fleet": {"vms": 7}}}
    assert fleet_of(doc) == {"vms": 7}
    assert fleet_of({"images": []})["vms"] == 0


def test_fleet_tolerates_junk() -> None:
    assert fleet_summary({"images": [None, {"roots": [None, {}]}]})["vms"] == 1


def _catalog_only_root(product: str, registry: dict[str, str]) -> dict[str, Any]:
    """A Windows root scanned without the licence check: only the cataloger's OS facts."""
    from vmscan.catalog.windows import _FACTS

    names = dict(_FACTS)
    extra = {names[k]: v for k, v in registry.items()}
    return {
        "device": "/dev/sda2",
        "os": {"type": "windows", "product_name": product, "extra": extra},
        "packages": [],
        "findings": [],
        "sections": {},
    }


def test_editions_kept_apart_without_the_licence_check() -> None:
    # Standard and Datacenter of one product name: the cataloger's EditionID and
    # InstallationType must keep them in separate rows (they merged when the fleet read
    # registry value names the cataloger does not write).
    doc = {
        "images": [
            {
                "source": f"vm{i}.qcow2",
                "roots": [
                    _catalog_only_root(
                        "Windows Server 2022",
                        {
                            "EditionID": ed,
                            "InstallationType": it,
                            "ProductName": "Windows Server 2022",
                        },
                    )
                ],
            }
            for i, (ed, it) in enumerate(
                [("ServerStandard", "Server"), ("ServerDatacenter", "Server Core")] * 2
            )
        ]
    }
    rows = {(e["edition_id"], e["installation_type"]): e for e in fleet_summary(doc)["os_editions"]}
    assert set(rows) == {("ServerStandard", "Server"), ("ServerDatacenter", "Server Core")}
    assert rows[("ServerStandard", "Server")]["vms"] == ["vm0.qcow2", "vm2.qcow2"]
    assert rows[("ServerDatacenter", "Server Core")]["count"] == 2
