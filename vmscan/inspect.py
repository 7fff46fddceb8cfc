"""vmscan's own bounded inspection: image facts, libguestfs' inspect_os with a deadline, fallback.

Why not simply ``list_filesystems`` + ``inspect_os``: inside the appliance both run
programs (parted/sfdisk, blkid, augeas, hivex) once per partition, per fstab line or per
hive, and under TCG each costs up to a second. A disk with 128 empty GPT partitions, or a
guest whose ``/etc/fstab`` has 10,000 lines, then takes the whole per-image limit. Here:

- facts come from ``list_partitions``/``lvs`` and a bounded read of each candidate's
  first and last bytes (``pread_device``, no program run): a partition holding nothing but
  zeros where every filesystem keeps its signature is empty and never probed; one too
  small to hold a filesystem is skipped; only the rest get one ``blkid`` each, at most
  :attr:`Limits.max_probed` of them, and what was not probed is said;
- a quick bounded look of our own (mount each candidate read-only, look for
  ``/etc/os-release``, ``/etc/fstab``, ``/Windows/System32/config/SOFTWARE``) decides
  whether libguestfs' ``inspect_os`` may run: not over too many filesystems, not over a
  huge fstab; when it runs it has a deadline (a watchdog kills the appliance: a
  ``user_cancel`` does not stop a non-transfer call) and the appliance is relaunched;
- when ``inspect_os`` fails (a damaged hive), is skipped or runs out of time, the roots
  are what our own look found, and the report says so. Mounts it left behind are
  undone first (they made the next mount fail with "busy").

Longer than 600 lines on purpose: the facts, our own look, the fstab budget and the
deadline share their limits and feed one decision (:func:`find_roots`); split, each
part would need the others' internals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmscan.completeness import bound
from vmscan.errors import ApplianceDiedError, GuestError, VmscanError
from vmscan.guestfs_view import GuestFS, LibguestfsFS, read_text
from vmscan.model import OSInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Budgets of one image's inspection (hostile images choose the sizes)."""

    #: Partitions, LVs and md devices probed with blkid at most.
    max_probed: int = 32
    #: Smaller than this holds no filesystem vmscan can walk (ext2's minimum is 60 KiB).
    min_fs_bytes: int = 60 * 1024
    #: Filesystems mounted by our own inspection at most.
    max_own_mounts: int = 16
    #: Above this many filesystems libguestfs' inspect_os (which probes each again) is skipped.
    max_fs_for_libguestfs: int = 24
    #: fstab larger than this: inspect_os (augeas, then one lookup per line) is skipped.
    max_fstab_bytes: int = 16 * 1024
    #: fstab lines read, and mountpoints used, at most.
    max_fstab_lines: int = 4096
    max_mountpoints: int = 64
    #: Seconds inspect_os may take (cut to what remains of the image's budget).
    inspect_deadline: float = 180.0


DEFAULT_LIMITS = Limits()

#: Bytes read from the start and the end of each candidate device.
_HEAD = 68 * 1024  # btrfs (64 KiB + 64), ReiserFS (64 KiB), ISO 9660 (32 KiB), swap, LVM

#: What blkid may say that holds no files to walk (and is not probed further).
ENCRYPTED = {"crypto_LUKS": "LUKS", "BitLocker": "BitLocker"}
CONTAINERS = {"LVM2_member", "linux_raid_member", "swap", "zfs_member"}


@dataclass
class Probe:
    """What the bounded probe of the devices found (``facts["probe"]`` in the report)."""

    candidates: int = 0
    empty: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    not_probed: list[str] = field(default_factory=list)
    #: In the partition table but not shown by the appliance's kernel.
    unseen: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Counts and the first few names (bounded: a disk may have thousands)."""
        return {
            "candidates": self.candidates,
            "empty": len(self.empty),
            "too_small": len(self.too_small),
            "not_probed": len(self.not_probed),
            "not_probed_first": self.not_probed[:10],
            "unseen": len(self.unseen),
            "unseen_first": self.unseen[:10],
            "failed": dict(list(self.failed.items())[:10]),
        }


def _all_zero(data: bytes) -> bool:
    return not data.strip(b"\0")


#: Logical partitions followed in an MBR's extended chain at most.
_MAX_LOGICAL = 256
_GPT_ENTRIES_LIMIT = 1024 * 1024


def partition_sizes(read: Callable[[int, int], bytes], disk: str) -> dict[str, int]:
    """Partition -> size in bytes (see :func:`partition_table`)."""
    return {name: size for name, (_off, size) in partition_table(read, disk).items()}


def partition_table(read: Callable[[int, int], bytes], disk: str) -> dict[str, tuple[int, int]]:
    """Partition -> (offset, size) in bytes from the disk's own GPT or MBR, bounded reads.

    Parsed here because the appliance's ways to ask cost a program run per partition under
    TCG: ``blockdev_getsize64`` about 2 s each, ``part_get_gpt_type`` (sgdisk) 30 s,
    ``part_list`` (parted) a minute for 128 partitions. *read(offset, size)* reads the disk.
    Partitions are named as Linux numbers them (GPT: the entry's slot; MBR: 1-4, logical 5+).
    """
    head = read(0, 8192)
    out: dict[str, tuple[int, int]] = {}
    for sector in (512, 4096):
        hdr = head[sector : sector + 92]
        if hdr[:8] != b"EFI PART":
            continue
        entries_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
        if esize < 128 or count == 0:
            return out
        table = read(entries_lba * sector, min(count * esize, _GPT_ENTRIES_LIMIT))
        for i in range(min(count, len(table) // esize)):
            ent = table[i * esize : i * esize + 56]
            if ent[:16] == b"\0" * 16:
                continue
            first, last = struct.unpack_from("<QQ", ent, 32)
            if last >= first:
                out[f"{disk}{i + 1}"] = (first * sector, (last - first + 1) * sector)
        return out
    if head[510:512] != b"\x55\xaa":
        return out
    ext_start = 0
    for i in range(4):
        ptype, start, count = struct.unpack_from("<B3xII", head, 446 + 16 * i + 4)
        if ptype == 0 or count == 0:
            continue
        if ptype in (0x05, 0x0F, 0x85):
            # What Linux shows for an extended partition: 1 KiB (its first two sectors).
            out[f"{disk}{i + 1}"] = (start * 512, 1024)
            ext_start = start
        else:
            out[f"{disk}{i + 1}"] = (start * 512, count * 512)
    ebr, n = ext_start, 5
    while ebr and n < 5 + _MAX_LOGICAL:
        rec = read(ebr * 512, 512)
        if rec[510:512] != b"\x55\xaa":
            break
        _t, start, count = struct.unpack_from("<B3xII", rec, 446 + 4)
        if count:
            out[f"{disk}{n}"] = ((ebr + start) * 512, count * 512)
        n += 1
        _t2, nxt, _c = struct.unpack_from("<B3xII", rec, 462 + 4)
        ebr = ext_start + nxt if nxt else 0
    return out


def _reader(g: Any, dev: str) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        return bytes(g.pread_device(dev, size, offset))

    return read


def _extents(g: Any, disks: list[str]) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
    """Sizes of disks and partitions; where each partition starts on its disk."""
    sizes: dict[str, int] = {}
    where: dict[str, tuple[str, int]] = {}
    for disk in disks:
        try:
            sizes[disk] = int(g.blockdev_getsize64(disk))
            for name, (off, size) in partition_table(_reader(g, disk), disk).items():
                sizes[name] = size
                where[name] = (disk, off)
        except (GuestError, struct.error) as e:
            log.info("partition table of %s: %s", disk, e)
    # LVs: no size asked (lvs_full names no VG, and an lvm run costs seconds); an LV is
    # never smaller than one extent, and its first bytes are read for the blank check.
    return sizes, where


#: One pread_device call reads at most this much (the protocol's messages are 4 MiB).
_READ_CHUNK = 2 * 1024 * 1024


def blank_devices(
    g: Any, devs: list[str], sizes: dict[str, int], where: dict[str, tuple[str, int]]
) -> set[str]:
    """The devices whose first 68 KiB (where every filesystem, LVM, LUKS, BitLocker, swap
    and md 1.1/1.2 signature lives) hold only zeros: nothing there to probe.

    Partitions are read from their disk, neighbours together in one call of at most 2 MiB:
    under TCG each call costs far more than the bytes it carries. md 0.90/1.0 members keep
    their superblock at the end, but the appliance assembles them: the md device is probed.
    """
    blank: set[str] = set()
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for dev in devs:
        size = sizes.get(dev)
        length = _HEAD if size is None else min(_HEAD, size)
        if dev in where:
            disk, off = where[dev]
            spans.setdefault(disk, []).append((off, length, dev))
        else:
            spans.setdefault(dev, []).append((0, length, dev))
    for disk, items in spans.items():
        items.sort()
        i = 0
        while i < len(items):
            start = items[i][0]
            j = i
            while j + 1 < len(items) and items[j + 1][0] + items[j + 1][1] - start <= _READ_CHUNK:
                j += 1
            end = max(off + n for off, n, _d in items[i : j + 1])
            try:
                data = bytes(g.pread_device(disk, end - start, start))
            except GuestError:
                data = b""  # cannot tell: probe them
            for off, n, dev in items[i : j + 1]:
                piece = data[off - start : off - start + n]
                if len(piece) == n and _all_zero(piece):
                    blank.add(dev)
            i = j + 1
    return blank


def _blkid(g: Any, dev: str) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in dict(g.blkid(dev)).items()}
    except GuestError:
        return {}  # blkid found nothing it knows


def image_facts(g: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Disks, partition tables, LVs and filesystems, with a bounded number of probes.

    The shape is the one ``list_filesystems`` gave (``filesystems[]``: device, type, uuid,
    label) plus ``probe`` (what was skipped) and ``encrypted`` (LUKS/BitLocker devices).
    """
    facts: dict[str, Any] = {
        "disks": [],
        "partition_tables": {},
        "filesystems": [],
        "lvs": [],
        "encrypted": [],
    }
    probe = Probe()
    try:
        disks = [str(d) for d in g.list_devices()]
        facts["disks"] = disks
        parts = [str(p) for p in g.list_partitions()]
        with contextlib.suppress(GuestError):
            facts["lvs"] = [str(lv) for lv in g.lvs()]
        md: list[str] = []
        with contextlib.suppress(GuestError):
            md = [str(m) for m in g.list_md_devices()]
    except GuestError as e:
        log.warning("image facts: %s", e)
        facts["probe"] = probe.as_dict()
        return facts
    for dev in disks:
        facts["partition_tables"][dev] = _ptable_type(g, dev)
    # A disk with partitions holds its filesystems in them; one without may be a whole-
    # device filesystem (or a whole-disk LUKS volume).
    whole = [d for d in disks if not any(_parent_disk(p) == d for p in parts)]
    candidates = whole + parts + md + facts["lvs"]
    probe.candidates = len(candidates)
    sizes, where = _extents(g, disks)
    # The partition table may list more than the appliance's kernel shows (255 per disk).
    probe.unseen = sorted(set(where) - set(parts), key=_natural)
    small = {d for d in candidates if sizes.get(d, limits.min_fs_bytes) < limits.min_fs_bytes}
    blank = blank_devices(g, [d for d in candidates if d not in small], sizes, where)
    probed = 0
    for dev in candidates:
        if dev in small:
            probe.too_small.append(dev)
            continue
        if dev in blank:
            probe.empty.append(dev)
            continue
        if probed >= limits.max_probed:
            probe.not_probed.append(dev)
            continue
        probed += 1
        info = _blkid(g, dev)
        fstype = info.get("TYPE", "") or "unknown"
        if fstype in ENCRYPTED:
            facts["encrypted"].append({"device": dev, "kind": ENCRYPTED[fstype]})
        if fstype == "unknown" and dev in whole and facts["partition_tables"].get(dev):
            continue  # a partition table with no partitions in it
        if fstype in ("LVM2_member", "linux_raid_member"):
            continue  # their LVs and md devices are candidates (as list_filesystems does)
        facts["filesystems"].append(
            {
                "device": dev,
                "type": fstype,
                "uuid": info.get("UUID", ""),
                "label": info.get("LABEL", ""),
            }
        )
    facts["filesystems"].sort(key=lambda f: f["device"])
    facts["probe"] = probe.as_dict()
    return facts


def ptable_type(head: bytes) -> str | None:
    """ "gpt", "msdos" or None from a disk's first 8 KiB (512- or 4096-byte sectors).

    Read here instead of ``part_get_parttype``: that runs parted in the appliance, and
    parted probes every partition (58 s under TCG for a GPT of 128 empty partitions).
    """
    if head[512:520] == b"EFI PART" or head[4096:4104] == b"EFI PART":
        return "gpt"
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        entries = [head[446 + 16 * i : 462 + 16 * i] for i in range(4)]
        # Boot flag 0x00/0x80 and a non-zero type in at least one entry: an MBR, not the
        # boot sector of a whole-disk FAT/NTFS filesystem (which also ends in 55 AA).
        if (
            head[3:11] not in (b"NTFS    ", b"EXFAT   ", b"-FVE-FS-")
            and any(e[0] in (0, 0x80) and e[4] != 0 for e in entries)
            and all(e[0] in (0, 0x80) for e in entries)
        ):
            return "msdos"
    return None


def _ptable_type(g: Any, dev: str) -> str | None:
    try:
        return ptable_type(g.pread_device(dev, 8192, 0))
    except GuestError:
        return None


def _natural(dev: str) -> tuple[str, int]:
    m = re.match(r"^(.*?)(\d+)$", dev)
    return (m.group(1), int(m.group(2))) if m else (dev, 0)


def _parent_disk(part: str) -> str:
    """/dev/sda12 -> /dev/sda (libguestfs names: sdX, vdX, no nvme in the appliance)."""
    return re.sub(r"\d+$", "", part)


def probe_messages(facts: dict[str, Any]) -> list[str]:
    """errors[] lines for what the probe did not look at (image partial when any)."""
    p = facts.get("probe") or {}
    out: list[str] = []
    if p.get("not_probed"):
        first = ", ".join(p.get("not_probed_first") or [])
        out.append(
            f"{p['not_probed']} of {p['candidates']} partitions/volumes were not probed for a "
            f"filesystem (limit {DEFAULT_LIMITS.max_probed}; first: {first}): their files, "
            "if any, were not scanned"
        )
    if p.get("unseen"):
        first = ", ".join(p.get("unseen_first") or [])
        out.append(
            f"{p['unseen']} partitions of the partition table are not visible in the appliance "
            f"(Linux shows at most 255 per disk; first: {first}): their files, if any, were "
            "not scanned"
        )
    for enc in facts.get("encrypted") or []:
        out.append(encrypted_message(enc["device"], enc["kind"]))
    return out


def nothing_found(facts: dict[str, Any]) -> str:
    """The error of an image with no OS and no filesystem: what it does hold, named."""
    enc = facts.get("encrypted") or []
    if enc:
        # Encrypted volumes are named, never "not a disk".
        return "; ".join(encrypted_message(e["device"], e["kind"]) for e in enc[:10])
    p = facts.get("probe") or {}
    held = []
    if p.get("empty"):
        held.append(f"{p['empty']} empty partitions")
    if p.get("too_small"):
        held.append(f"{p['too_small']} partitions too small for a filesystem")
    if p.get("not_probed"):
        held.append(f"{p['not_probed']} partitions not probed (over the limit)")
    if p.get("unseen"):
        held.append(f"{p['unseen']} partitions the appliance cannot see")
    if any((facts.get("partition_tables") or {}).values()):
        why = f" ({', '.join(held)})" if held else ""
    else:
        why = " (no partition table either: not a disk?)"
    return "no operating system and no readable filesystem found" + why


def encrypted_message(device: str, kind: str) -> str:
    """What a person is told of an encrypted volume vmscan has no key for."""
    return f"{device}: {kind} encrypted volume: encrypted, no key given: not scanned"


# ---------------------------------------------------------------------------------------
# Our own look at each filesystem


@dataclass
class FoundRoot:
    """An operating system root: from libguestfs' inspection or from our own look."""

    device: str
    os: OSInfo
    mountpoints: dict[str, str]
    #: What our own look saw (``fstab_bytes``, ``software_hive``...), for the decisions.
    evidence: dict[str, Any] = field(default_factory=dict)


_ELF_MACHINES = {3: "i386", 62: "x86_64", 40: "arm", 183: "aarch64", 243: "riscv64", 21: "ppc64"}
_PKG_DBS = (
    ("/var/lib/dpkg/status", "deb", "apt"),
    ("/lib/apk/db/installed", "apk", "apk"),
    ("/var/lib/rpm", "rpm", "dnf"),
    ("/usr/lib/sysimage/rpm", "rpm", "dnf"),
)


def _elf_arch(fs: GuestFS) -> str:
    for path in ("/bin/ls", "/usr/bin/ls", "/bin/sh", "/usr/bin/env"):
        with contextlib.suppress(VmscanError, GuestError):
            head = fs.read_head(path, 20)
            if head[:4] == b"\x7fELF" and len(head) >= 20:
                endian = "<" if head[5] == 1 else ">"
                (machine,) = struct.unpack(endian + "H", head[18:20])
                return _ELF_MACHINES.get(machine, "unknown")
    return "unknown"


def _os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines()[:500]:
        m = re.match(r"^\s*([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            val = m.group(2).strip()
            if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
                val = val[1:-1]
            out[m.group(1)] = val[:256]
    return out


def _int(text: str) -> int:
    m = re.match(r"\d+", text)
    return int(m.group(0)) if m else 0


def look_linux(fs: GuestFS, device: str) -> FoundRoot | None:
    """A Linux root by its os-release (the only file every current distribution has)."""
    rel: dict[str, str] | None = None
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        with contextlib.suppress(VmscanError, GuestError):
            rel = _os_release(read_text(fs, path, 64 * 1024))
            break
    if rel is None:
        return None
    version = rel.get("VERSION_ID", "")
    info = OSInfo(
        type="linux",
        distro=rel.get("ID", "unknown") or "unknown",
        product_name=rel.get("PRETTY_NAME", "") or rel.get("NAME", ""),
        major_version=_int(version),
        minor_version=_int(version.partition(".")[2]),
        arch=_elf_arch(fs),
        os_release_id=rel.get("ID", ""),
        version_id=version,
        version_codename=rel.get("VERSION_CODENAME", ""),
    )
    with contextlib.suppress(VmscanError, GuestError):
        info.hostname = read_text(fs, "/etc/hostname", 4096).strip().splitlines()[0][:255]
    for path, fmt, mgmt in _PKG_DBS:
        if fs.exists(path):
            info.package_format, info.package_management = fmt, mgmt
            break
    st = fs.lstat("/etc/fstab")
    return FoundRoot(device, info, {"/": device}, {"fstab_bytes": st.size if st else 0})


def look_windows(fs: GuestFS, device: str) -> FoundRoot | None:
    """A Windows root by its SOFTWARE hive (found case-insensitively, as NTFS does)."""
    from vmscan.catalog.windows import find_hive

    hive = find_hive(fs, "SOFTWARE")
    if hive is None:
        return None
    arch = "x86_64" if any(n.lower() == "syswow64" for n in _windir(fs)) else "unknown"
    info = OSInfo(type="windows", distro="windows", arch=arch, product_name="Windows")
    return FoundRoot(device, info, {"/": device}, {"software_hive": hive})


def _windir(fs: GuestFS) -> list[str]:
    for name in fs.listdir("/"):
        if name.lower() in ("windows", "winnt"):
            return fs.listdir("/" + name)
    return []


def own_look(
    sess: Any, facts: dict[str, Any], limits: Limits = DEFAULT_LIMITS
) -> tuple[list[FoundRoot], list[str]]:
    """Mount each candidate filesystem read-only (at most ``max_own_mounts``) and look.

    Returns the roots found (Linux by os-release, Windows by its SOFTWARE hive) and the
    devices that could hold files but were not looked at (over the limit). Mountpoints
    other than ``/`` come later, from the root's fstab (:func:`fstab_mountpoints`).
    """
    found: list[FoundRoot] = []
    skipped: list[str] = []
    looked = 0
    for f in facts.get("filesystems") or []:
        if f["type"] in ENCRYPTED or f["type"] in CONTAINERS or f["type"] == "unknown":
            continue
        if looked >= limits.max_own_mounts:
            skipped.append(f["device"])
            continue
        looked += 1
        sess.umount_all()
        if sess.mount_ro(f["device"], "/"):
            continue
        fs = LibguestfsFS(sess.h)
        try:
            root = look_linux(fs, f["device"]) or look_windows(fs, f["device"])
            if root is not None and root.os.type == "linux":
                root.evidence["fstab_cut"] = fstab_mountpoints(fs, root, facts, limits)
        except ApplianceDiedError:
            raise
        except (GuestError, VmscanError, UnicodeError) as e:
            # One hostile filesystem never stops the look at the others.
            log.info("own inspection of %s: %s", f["device"], e)
            root = None
        finally:
            sess.umount_all()
        if root is not None:
            found.append(root)
    return found, skipped


# ---------------------------------------------------------------------------------------
# fstab, bounded


FSTAB_SKIP_TYPES = frozenset(
    {"swap", "proc", "sysfs", "tmpfs", "devpts", "none", "nfs", "nfs4", "cifs", "devtmpfs"}
    | {"cgroup", "cgroup2", "securityfs", "debugfs", "autofs", "fuse"}
)
FSTAB_READ_LIMIT = 1024 * 1024


@dataclass
class Fstab:
    """Mountpoint -> (device spec, line number), and what was cut."""

    entries: dict[str, tuple[str, int]] = field(default_factory=dict)
    lines: int = 0
    cut: list[str] = field(default_factory=list)


def parse_fstab(text: str, limits: Limits = DEFAULT_LIMITS) -> Fstab:
    """The entries vmscan mounts (no swap, pseudo, network or bind), at most the limits."""
    out = Fstab()
    lines = text.splitlines()
    out.lines = len(lines)
    if len(lines) > limits.max_fstab_lines:
        out.cut.append(
            f"/etc/fstab has {len(lines)} lines: only the first {limits.max_fstab_lines} read"
        )
    dropped = 0
    for n, line in enumerate(lines[: limits.max_fstab_lines], 1):
        parts = line.split("#", 1)[0].split()
        if len(parts) < 3 or not parts[1].startswith("/"):
            continue
        spec, mpoint, fstype = parts[0], parts[1], parts[2]
        opts = parts[3].split(",") if len(parts) > 3 else []
        if fstype in FSTAB_SKIP_TYPES or "bind" in opts:
            continue
        if mpoint not in out.entries and len(out.entries) >= limits.max_mountpoints:
            dropped += 1
            continue
        out.entries[mpoint] = (spec[:4096], n)
    if dropped:
        out.cut.append(
            f"/etc/fstab names {dropped} more mountpoints than the {limits.max_mountpoints} "
            "vmscan mounts: those were not mounted"
        )
    return out


def read_fstab(fs: GuestFS, limits: Limits = DEFAULT_LIMITS) -> Fstab:
    """:func:`parse_fstab` of the guest's ``/etc/fstab`` (absent or unreadable: empty)."""
    try:
        text = read_text(fs, "/etc/fstab", FSTAB_READ_LIMIT)
    except VmscanError as e:
        out = Fstab()
        if fs.exists("/etc/fstab"):
            out.cut.append(f"/etc/fstab not read: {bound(str(e), 200)}")
        return out
    return parse_fstab(text, limits)


def resolve_spec(spec: str, facts: dict[str, Any]) -> str | None:
    """The device of this image an fstab spec names (UUID=, LABEL=, /dev/...), or None."""
    fss = facts.get("filesystems") or []
    key, _, val = spec.partition("=")
    if key in ("UUID", "LABEL", "PARTUUID", "PARTLABEL") and val:
        field_ = {"UUID": "uuid", "LABEL": "label"}.get(key)
        if field_ is None:
            return None
        val = val.strip("\"'")
        hit = next((f["device"] for f in fss if f.get(field_) and f[field_] == val), None)
        return str(hit) if hit else None
    devices = {f["device"] for f in fss}
    if spec in devices:
        return spec
    m = re.match(r"^/dev/mapper/([^-]+(?:--[^-]+)*)-(.+)$", spec)
    if m:
        lv = "/dev/{}/{}".format(m.group(1).replace("--", "-"), m.group(2).replace("--", "-"))
        return lv if lv in devices else None
    return None


def fstab_mountpoints(
    fs: GuestFS, root: FoundRoot, facts: dict[str, Any], limits: Limits = DEFAULT_LIMITS
) -> list[str]:
    """Fill ``root.mountpoints`` from the mounted root's fstab; returns what was cut."""
    tab = read_fstab(fs, limits)
    for mpoint, (spec, _line) in tab.entries.items():
        if mpoint == "/":
            continue
        dev = resolve_spec(spec, facts)
        # Unresolved specs are left to the caller's "not in this image" report.
        root.mountpoints[mpoint] = dev if dev else spec
    return tab.cut


# ---------------------------------------------------------------------------------------
# libguestfs' inspect_os, with a deadline


class InspectTimeout(Exception):
    """inspect_os did not return in time; the appliance was killed."""


def inspect_os_with_deadline(g: Any, seconds: float) -> list[str]:
    """``g.inspect_os()``, killing the appliance after *seconds* (then InspectTimeout).

    ``g.user_cancel()`` only cancels file transfers; a call like inspect_os runs inside
    the appliance until it returns, so the only bound is to kill qemu: the call then fails
    at once and the handle is dead (the caller relaunches).
    """
    try:
        pid = int(g.get_pid())
    except GuestError:  # not the direct backend: no qemu of ours to kill
        return [str(r) for r in g.inspect_os()]
    fired = threading.Event()
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(seconds):
            fired.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=watchdog, name="inspect-deadline", daemon=True)
    t.start()
    try:
        return [str(r) for r in g.inspect_os()]
    except GuestError as e:
        if fired.is_set():
            raise InspectTimeout(f"libguestfs inspection did not finish in {seconds:.0f} s") from e
        raise
    finally:
        done.set()
        t.join()


def _libguestfs_root(g: Any, root: str, limits: Limits) -> FoundRoot:
    def get(fn: str, default: Any) -> Any:
        try:
            return getattr(g, fn)(root)
        except GuestError:
            return default

    info = OSInfo(
        type=get("inspect_get_type", "unknown"),
        distro=get("inspect_get_distro", "unknown"),
        product_name=get("inspect_get_product_name", ""),
        major_version=int(get("inspect_get_major_version", 0)),
        minor_version=int(get("inspect_get_minor_version", 0)),
        arch=get("inspect_get_arch", "unknown"),
        hostname=get("inspect_get_hostname", ""),
        package_format=get("inspect_get_package_format", "unknown"),
        package_management=get("inspect_get_package_management", "unknown"),
    )
    mps = get("inspect_get_mountpoints", None)
    mountpoints = dict(mps) if mps else {"/": root}
    if len(mountpoints) > limits.max_mountpoints:
        keep = sorted(mountpoints, key=lambda m: (len(m), m))[: limits.max_mountpoints]
        mountpoints = {m: mountpoints[m] for m in keep}
    return FoundRoot(root, info, mountpoints)


def find_roots(
    sess: Any,
    facts: dict[str, Any],
    remaining: Callable[[], float],
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[FoundRoot], list[str], bool]:
    """The OS roots of the image, and errors[] lines; the flag says something was not looked at.

    libguestfs' inspection when it is safe to run and finishes in time; otherwise (and when
    it fails or finds nothing our own look found) the roots of our own look, saying so.
    """
    errors: list[str] = []
    incomplete = False
    own, skipped = own_look(sess, facts, limits)
    if skipped:
        incomplete = True
        errors.append(
            f"{len(skipped)} filesystems were not looked at for an operating system (limit "
            f"{limits.max_own_mounts}; first: {', '.join(skipped[:5])})"
        )
    walkable = [
        f for f in facts.get("filesystems") or [] if f["type"] not in CONTAINERS | set(ENCRYPTED)
    ]
    why_not = ""
    big = [r for r in own if int(r.evidence.get("fstab_bytes", 0)) > limits.max_fstab_bytes]
    candidates = int((facts.get("probe") or {}).get("candidates", 0))
    if candidates > limits.max_fs_for_libguestfs:
        why_not = (
            f"{candidates} partitions/volumes: libguestfs inspection (which runs parted and "
            "blkid in the appliance for each one) skipped"
        )
    elif len(walkable) > limits.max_fs_for_libguestfs:
        why_not = (
            f"{len(walkable)} filesystems: libguestfs inspection (which probes each one again) "
            "skipped"
        )
    elif big:
        why_not = (
            f"{big[0].device}: /etc/fstab is {big[0].evidence['fstab_bytes']} bytes: libguestfs "
            "inspection (which resolves every line) skipped"
        )
    roots: list[FoundRoot] = []
    if not why_not:
        deadline = max(10.0, min(limits.inspect_deadline, remaining() * 0.5))
        try:
            names = inspect_os_with_deadline(sess.h, deadline)
            roots = [_libguestfs_root(sess.h, r, limits) for r in sorted(names)]
        except InspectTimeout as e:
            why_not = str(e)
            sess.restart()
        except GuestError as e:
            why_not = f"libguestfs inspection failed ({bound(str(e).strip(), 300)})"
        # inspect_os mounts what it looks at and may leave it mounted when it fails: the
        # next mount of the same device would fail with "busy".
        sess.umount_all()
    if why_not:
        roots = own
        what = (
            ", ".join(f"{r.os.type} on {r.device}" for r in own) if own else "no operating system"
        )
        errors.append(f"{why_not}; vmscan's own bounded inspection used: {what}")
    else:
        seen = {r.device for r in roots}
        for r in own:
            if r.device not in seen and r.os.type == "windows":
                # libguestfs drops a Windows tree whose hives it cannot read; it is there.
                errors.append(
                    f"libguestfs inspection did not report the Windows installation on "
                    f"{r.device} ({r.evidence.get('software_hive')}); vmscan's own "
                    "inspection used for it"
                )
                roots.append(r)
    return roots, errors, incomplete
