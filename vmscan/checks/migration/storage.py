"""Storage identity: fstab/crypttab entries that name devices by kernel name or hardware
path, and absent devices.
"""

from __future__ import annotations

import re
from typing import Any

from vmscan.checks.migration.common import Run
from vmscan.checks.migration.parse import (
    classify_device_spec,
    mapper_to_lv,
    parse_crypttab,
    parse_fstab,
)
from vmscan.checks.migration.rules import STOR_ABSENT_DEVICE, STOR_DEVICE_NAME
from vmscan.model import Severity


def _known_devices(r: Run) -> tuple[set[str], set[str], set[str], bool]:
    """(device names, UUIDs, labels, facts available) of the image set."""
    facts = r.ctx.image_facts
    devs: set[str] = set(facts.get("disks") or [])
    uuids: set[str] = set()
    labels: set[str] = set()
    fss = list(facts.get("filesystems") or [])
    if not fss and r.ctx.image is not None:
        fss = [
            {"device": f.device, "uuid": f.uuid, "label": f.label} for f in r.ctx.image.filesystems
        ]
    for f in fss:
        if f.get("device"):
            devs.add(str(f["device"]))
        if f.get("uuid"):
            uuids.add(str(f["uuid"]).lower())
        if f.get("label"):
            labels.add(str(f["label"]))
    for lv in facts.get("lvs") or []:
        devs.add(str(lv))
    available = bool(devs or uuids)
    return devs, uuids, labels, available


def _present(spec: str, kind: str, devs: set[str], uuids: set[str], labels: set[str]) -> bool:
    s = spec.strip('"')
    val = s.split("=", 1)[1].strip('"') if "=" in s else s.rsplit("/", 1)[-1]
    if kind == "uuid":
        return val.lower() in uuids
    if kind == "label":
        return val in labels
    if kind == "kernel_name":
        # The appliance names every disk /dev/sdX whatever the guest called it.
        m = re.match(r"^/dev/(?:sd|hd|vd|xvd)([a-z]+)(\d*)$", s)
        if m:
            return f"/dev/sd{m.group(1)}{m.group(2)}" in devs
        return True  # nvme/mmcblk/cciss: no reliable mapping to the appliance's names
    if kind == "lvm":
        lv = mapper_to_lv(s) or s
        return lv in devs or s in devs
    return True  # partuuid, hardware paths, md...: not judged


_KIND_WORDS = {"kernel_name": "kernel device name", "hardware_path": "hardware path"}


def storage(r: Run) -> None:
    devs, uuids, labels, available = _known_devices(r)
    r.facts["image_devices_known"] = available
    mounts: list[dict[str, Any]] = []
    fstab_text = r.text("/etc/fstab")
    entries: list[tuple[str, int, str, str, str, bool, str]] = []
    if fstab_text is None:
        r.facts["fstab"] = "absent"
    else:
        r.facts["fstab"] = "/etc/fstab"
        for e in parse_fstab(fstab_text, "/etc/fstab", r.notes):
            if "bind" in e.options or e.fstype in ("proc", "sysfs", "tmpfs", "devpts", "none"):
                continue
            entries.append(
                ("/etc/fstab", e.line, e.text, e.spec, e.mountpoint, e.optional, e.fstype)
            )
    crypttab_text = r.text("/etc/crypttab")
    if crypttab_text is not None:
        for c in parse_crypttab(crypttab_text, "/etc/crypttab", r.notes):
            optional = "nofail" in c.options or "noauto" in c.options
            entries.append(
                (
                    "/etc/crypttab",
                    c.line,
                    c.text,
                    c.device,
                    f"/dev/mapper/{c.name}",
                    optional,
                    "crypt",
                )
            )
    for file, line, text, spec, mp, optional, fstype in entries:
        kind = classify_device_spec(spec)
        what = mp if mp.startswith("/") else (fstype or mp)
        common: dict[str, Any] = {
            "file": file,
            "line": line,
            "text": text,
            "device": spec,
            "mountpoint": mp,
        }
        if kind in ("kernel_name", "hardware_path"):
            mounts.append({**common, "kind": kind})
            r.add(
                STOR_DEVICE_NAME,
                f"{file}:{mp}",
                f"{spec}|{mp}",
                title=f"{what} is mounted by {_KIND_WORDS[kind]} {spec}",
                kind=kind,
                **common,
            )
        if (
            available
            and kind in ("kernel_name", "uuid", "label", "lvm")
            and not _present(spec, kind, devs, uuids, labels)
        ):
            r.add(
                STOR_ABSENT_DEVICE,
                f"{file}:{mp}",
                f"absent|{spec}|{mp}",
                title=f"{what}: {spec} is not in the image",
                severity=Severity.LOW if optional else "",
                optional=optional,
                **common,
            )
    r.facts["device_name_mounts"] = mounts
    if not available:
        r.facts["absent_devices_note"] = "image devices unknown: absent entries not judged"
