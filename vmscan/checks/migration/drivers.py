"""Drivers: kernels, virtio modules and initramfs on Linux; virtio services in the Windows
SYSTEM hive.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from vmscan.checks.migration.binaries import (
    scan_initramfs,
)
from vmscan.checks.migration.common import (
    INITRAMFS_LIMIT,
    KCONFIG,
    MODULE_PATHS,
    VIRTIO_LINUX,
    VIRTIO_WINDOWS,
    Run,
    ci_path,
    hive_path,
    hive_values,
    reg_dword,
    reg_multi_sz,
)
from vmscan.checks.migration.rules import (
    DRV_LINUX_INITRAMFS,
    DRV_LINUX_VIRTIO_NET,
    DRV_LINUX_VIRTIO_STORAGE,
    DRV_NO_KERNEL,
    DRV_WIN_VIRTIO_NET,
    DRV_WIN_VIRTIO_STORAGE,
)
from vmscan.errors import VmscanError
from vmscan.model import Severity


def _module_names_from_list(text: str) -> set[str]:
    out: set[str] = set()
    for line in text.splitlines():
        path = line.split(":", 1)[0].strip()
        base = path.rsplit("/", 1)[-1]
        m = re.match(r"^(.+?)\.ko(?:\.\w+)?$", base)
        if m:
            out.add(m.group(1).replace("-", "_"))
    return out


def _kernel(r: Run, ver: str, moddir: str | None) -> dict[str, Any]:
    fs = r.fs
    how: dict[str, str] = {d: "absent" for d in VIRTIO_LINUX}
    sources: list[str] = []
    if moddir:
        builtin_text = r.text(f"{moddir}/modules.builtin", 4 * 1024 * 1024)
        if builtin_text is not None:
            sources.append("modules.builtin")
            builtin = _module_names_from_list(builtin_text)
            for d in VIRTIO_LINUX:
                if d in builtin:
                    how[d] = "builtin"
        dep_text = r.text(f"{moddir}/modules.dep", 16 * 1024 * 1024)
        if dep_text is not None:
            sources.append("modules.dep")
            mods = _module_names_from_list(dep_text)
            for d in VIRTIO_LINUX:
                if how[d] == "absent" and d in mods:
                    how[d] = "module"
        else:
            sources.append("module files")
            for d in VIRTIO_LINUX:
                if how[d] == "absent" and fs.glob(f"{moddir}/{MODULE_PATHS[d]}"):
                    how[d] = "module"
    cfg = r.text(f"/boot/config-{ver}", 4 * 1024 * 1024)
    if cfg is not None:
        sources.append(f"/boot/config-{ver}")
        for d, opt in KCONFIG.items():
            m = re.search(rf"^{opt}=([ym])\s*$", cfg, re.MULTILINE)
            if m and m.group(1) == "y":
                how[d] = "builtin"
    kernel: dict[str, Any] = {
        "version": ver,
        "module_tree": moddir,
        "image": next(
            (
                p
                for p in (
                    f"/boot/vmlinuz-{ver}",
                    f"/boot/vmlinux-{ver}",
                    f"/boot/Image-{ver}",
                    f"/boot/kernel-{ver}",
                )
                if fs.exists(p)
            ),
            None,
        ),
        "virtio": {d: how[d] != "absent" for d in VIRTIO_LINUX},
        "virtio_how": how,
        "sources": sources,
    }
    kernel["initramfs"] = _initramfs(r, ver)
    return kernel


def _initramfs(r: Run, ver: str) -> dict[str, Any]:
    fs = r.fs
    path = next(
        (
            p
            for p in (
                f"/boot/initrd.img-{ver}",
                f"/boot/initramfs-{ver}.img",
                f"/boot/initrd-{ver}",
                f"/boot/initramfs-{ver}",
            )
            if fs.is_file(p)
        ),
        None,
    )
    info: dict[str, Any] = {"path": path, "read": False, "virtio": None}
    if path is None:
        return info
    st = fs.lstat(path)
    info["size"] = st.size if st else None
    if not r.ctx.options.get("migration_read_initramfs", True):
        info["note"] = "not read (migration_read_initramfs is off)"
        return info
    try:
        data = fs.read_bytes(path, INITRAMFS_LIMIT)
    except VmscanError as e:
        info["note"] = f"not read: {e}"
        return info
    scan = scan_initramfs(data)
    if not scan.complete:
        r.notes.add(f"{path}: initramfs not fully read ({scan.note or 'truncated'})")
    info["read"] = True
    info["complete"] = scan.complete
    info["compression"] = scan.compressions
    if scan.note:
        info["note"] = scan.note
    if scan.complete or scan.modules:
        info["virtio"] = {d: d in scan.modules for d in VIRTIO_LINUX}
    info["modules"] = len(scan.modules)
    return info


def drivers_linux(r: Run) -> None:
    fs = r.fs
    trees: dict[str, str] = {}
    for base in ("/lib/modules", "/usr/lib/modules"):
        for ver in fs.listdir(base):
            if ver not in trees and fs.is_dir(f"{base}/{ver}"):
                trees[ver] = f"{base}/{ver}"
    versions = set(trees)
    for pattern, prefix in (
        ("/boot/vmlinuz-*", "/boot/vmlinuz-"),
        ("/boot/vmlinux-*", "/boot/vmlinux-"),
    ):
        for p in fs.glob(pattern):
            versions.add(p[len(prefix) :])
    kernels = [_kernel(r, v, trees.get(v)) for v in sorted(versions)]
    r.facts["kernels"] = kernels
    r.facts["drivers"] = {
        "checked": list(VIRTIO_LINUX),
        "initramfs_method": "cpio listing of the initramfs (plain, gzip, xz, "
        "lzma, bzip2; zstd when python zstandard is installed)",
    }
    dracut_hostonly = False
    for p in ["/etc/dracut.conf", *fs.glob("/etc/dracut.conf.d/*.conf")]:
        t = r.text(p)
        if t and re.search(r"^\s*hostonly\s*=\s*\"?yes", t, re.MULTILINE):
            dracut_hostonly = True
    r.facts["drivers"]["dracut_hostonly"] = dracut_hostonly
    if not kernels:
        r.facts["kernels_note"] = "no kernel installed (no /lib/modules/*, no /boot/vmlinuz-*)"
        r.add(
            DRV_NO_KERNEL,
            "kernel",
            "none",
            text="no /lib/modules/<version> and no /boot/vmlinuz-* in this root",
        )
        return

    def storage(k: dict[str, Any]) -> bool:
        return bool(k["virtio"]["virtio_blk"] or k["virtio"]["virtio_scsi"])

    any_storage = any(storage(k) for k in kernels)
    any_net = any(k["virtio"]["virtio_net"] for k in kernels)
    for k in kernels:
        ver = k["version"]
        target = f"kernel {ver}"
        file = k["module_tree"] or k["image"] or ""
        if not storage(k):
            missing = "virtio_blk and virtio_scsi"
            why = "no module tree" if not k["module_tree"] else "not built in, no module"
            r.add(
                DRV_LINUX_VIRTIO_STORAGE,
                target,
                "storage",
                title=f"Kernel {ver} has no virtio storage driver ({missing})",
                severity="" if not any_storage else Severity.LOW,
                file=file,
                kernel=ver,
                missing=["virtio_blk", "virtio_scsi"],
                text=f"{missing}: {why}",
            )
        if not k["virtio"]["virtio_net"]:
            r.add(
                DRV_LINUX_VIRTIO_NET,
                target,
                "net",
                title=f"Kernel {ver} has no virtio network driver (virtio_net)",
                severity="" if not any_net else Severity.LOW,
                file=file,
                kernel=ver,
                missing=["virtio_net"],
                text="virtio_net absent",
            )
        how = k["virtio_how"]
        needs_initramfs = storage(k) and "builtin" not in (how["virtio_blk"], how["virtio_scsi"])
        ird = k["initramfs"]
        if not needs_initramfs:
            continue
        if ird["path"] is None and k["image"]:
            r.add(
                DRV_LINUX_INITRAMFS,
                target,
                "no-initramfs",
                title=f"Kernel {ver} has no initramfs to load its virtio storage modules",
                file=k["image"],
                kernel=ver,
                text="virtio_blk/virtio_scsi are modules and there is no initramfs",
            )
        elif (
            ird.get("virtio") is not None
            and ird.get("complete")
            and not (ird["virtio"]["virtio_blk"] or ird["virtio"]["virtio_scsi"])
        ):
            r.add(
                DRV_LINUX_INITRAMFS,
                target,
                "initramfs",
                title=f"initramfs of kernel {ver} lacks virtio_blk and virtio_scsi",
                file=ird["path"],
                kernel=ver,
                text=f"{ird['modules']} modules in the initramfs, no virtio storage"
                + (" (dracut hostonly=yes)" if dracut_hostonly else ""),
            )


def drivers_windows(r: Run) -> None:
    fs = r.fs
    sysroot = r.facts.get("systemroot") or ci_path(fs, "/Windows") or "/Windows"
    ddir = ci_path(fs, f"{sysroot}/System32/drivers")
    names = {n.lower(): n for n in fs.listdir(ddir)} if ddir else {}
    repo = ci_path(fs, f"{sysroot}/System32/DriverStore/FileRepository")
    staged_names = [n.lower() for n in fs.listdir(repo)] if repo else []
    services = _windows_services(r, sysroot)
    drivers: dict[str, Any] = {}
    for d in VIRTIO_WINDOWS:
        fname = names.get(f"{d}.sys")
        svc = services.get(d) if services is not None else None
        drivers[d] = {
            "file": f"{ddir}/{fname}" if fname else None,
            "service": svc is not None if services is not None else None,
            "start": svc,
            "staged": any(n.startswith(f"{d}.inf_") for n in staged_names),
        }
    r.facts["drivers"] = drivers
    r.facts["drivers_source"] = {
        "files": ddir or "System32/drivers not found",
        "registry": "SYSTEM hive Services keys" if services is not None else "not read",
    }

    def present(d: str) -> bool:
        return bool(drivers[d]["file"] or drivers[d]["service"])

    def describe(d: str) -> str:
        st = drivers[d]
        if st["staged"]:
            return f"{d}: not installed (only staged in the DriverStore)"
        return f"{d}: no {d}.sys" + (", no service key" if st["service"] is False else "")

    file = f"{ddir or sysroot + '/System32/drivers'}"
    if not present("viostor") and not present("vioscsi"):
        r.add(
            DRV_WIN_VIRTIO_STORAGE,
            "viostor",
            "storage",
            title="Windows virtio storage driver missing: viostor (virtio-blk) and "
            "vioscsi (virtio-scsi)",
            file=file,
            missing=["viostor", "vioscsi"],
            text="; ".join(describe(d) for d in ("viostor", "vioscsi")),
        )
    else:
        # Installed but not loaded at boot: the disk would still be unreachable.
        boot = [
            d for d in ("viostor", "vioscsi") if present(d) and drivers[d]["start"] in (0, None)
        ]
        if services is not None and not boot:
            r.add(
                DRV_WIN_VIRTIO_STORAGE,
                "viostor",
                "not-boot-start",
                severity=Severity.MEDIUM,
                title="Windows virtio storage driver present but not a boot-start service",
                file=file,
                missing=[],
                text="; ".join(
                    f"{d}: Start={drivers[d]['start']}"
                    for d in ("viostor", "vioscsi")
                    if present(d)
                ),
            )
    if not present("netkvm"):
        r.add(
            DRV_WIN_VIRTIO_NET,
            "netkvm",
            "net",
            title="Windows virtio network driver missing: netkvm",
            file=file,
            missing=["netkvm"],
            text=describe("netkvm"),
        )


def open_hive(r: Run, sysroot: str, name: str) -> Any | None:
    path = ci_path(r.fs, f"{sysroot}/System32/config/{name}")
    if path is None:
        r.facts.setdefault("registry", {})[name] = "absent"
        return None
    try:
        hive = r.fs.open_hive(path)
    except ImportError:
        r.notes.add(f"{name} hive not read: no hive reader in this build")
        return None
    except Exception as e:  # hostile or damaged hive
        r.notes.add(f"{name} hive not read: {e}")
        return None
    r.facts.setdefault("registry", {})[name] = path
    return hive


def _control_set(hive: Any) -> str:
    sel = hive_path(hive, ["Select"])
    cur = reg_dword(hive_values(hive, sel).get("current")) if sel is not None else None
    return f"ControlSet{cur or 1:03d}"


def _windows_services(r: Run, sysroot: str) -> dict[str, int | None] | None:
    """Start value of each virtio service key in the SYSTEM hive; None when unreadable."""
    hive = open_hive(r, sysroot, "SYSTEM")
    if hive is None:
        return None
    try:
        try:
            cs = _control_set(hive)
            svcs = hive_path(hive, [cs, "Services"])
            if svcs is None:
                r.notes.add(f"SYSTEM hive has no {cs}\\Services")
                return None
            out: dict[str, int | None] = {}
            for d in VIRTIO_WINDOWS:
                node = hive.child(svcs, d)
                if node is not None:
                    out[d] = reg_dword(hive_values(hive, node).get("start"))
        except VmscanError as e:
            r.notes.add(f"SYSTEM hive: services not read: {e}")
            return None
        try:
            _system_side_facts(r, hive, cs)
        except VmscanError as e:
            r.notes.add(f"SYSTEM hive: {e}")
        return out
    finally:
        # Closing a broken hive must not hide what was read.
        with contextlib.suppress(Exception):
            hive.close()


def _system_side_facts(r: Run, hive: Any, cs: str) -> None:
    """Pending file renames and static IPv4 addresses, from the same SYSTEM hive."""
    sm = hive_path(hive, [cs, "Control", "Session Manager"])
    if sm is not None:
        pfro = reg_multi_sz(hive_values(hive, sm).get("pendingfilerenameoperations"))
        r.facts["pending_file_renames"] = len(pfro)
    ifs = hive_path(hive, [cs, "Services", "Tcpip", "Parameters", "Interfaces"])
    statics: list[dict[str, Any]] = []
    if ifs is not None:
        for name, node in hive.children(ifs)[:256]:
            vals = hive_values(hive, node)
            if reg_dword(vals.get("enabledhcp")) != 0:
                continue
            for addr in reg_multi_sz(vals.get("ipaddress")):
                if addr != "0.0.0.0":
                    where = f"SYSTEM\\{cs}\\Services\\Tcpip\\Parameters\\Interfaces\\{name}"
                    statics.append({"file": where, "interface": name, "address": addr})
    r.facts["static_ip"] = statics
