"""Pure data of a scan: what was opened, what was found; no guest access here."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class ImageStatus(enum.StrEnum):
    """Outcome of one image."""

    OK = "ok"
    PARTIAL = "partial"
    NO_OS = "no_os"
    ERROR = "error"


class Severity(enum.StrEnum):
    """Finding severity; members are declared in the one ordering (least severe first)."""

    UNKNOWN = "unknown"
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Place in the ordering: 0 for ``unknown`` up to 5 for ``critical``."""
        return SEVERITY_ORDER[self.value]

    @classmethod
    def parse(cls, value: object) -> Severity:
        """*value* as a severity; anything that is not one is ``unknown``."""
        try:
            return cls(str(value).lower()) if value is not None else cls.UNKNOWN
        except ValueError:
            return cls.UNKNOWN

    @classmethod
    def descending(cls) -> tuple[Severity, ...]:
        """Every severity, most severe first."""
        return tuple(reversed(cls))


#: Rank of each severity by its value (the order of :class:`Severity`'s members).
SEVERITY_ORDER: dict[str, int] = {s.value: i for i, s in enumerate(Severity)}


@dataclass(frozen=True)
class Snapshot:
    """One internal snapshot of a qcow2 image, as its snapshot table records it."""

    id: str
    name: str
    date: str  # UTC, ISO 8601
    vm_clock_ns: int  # guest clock when it was taken (0: a disk-only snapshot)
    vm_state_size: int  # bytes of saved VM state (RAM, devices); 0 when disk-only
    disk_size: int | None  # virtual disk size at that time (qcow2 v3 extra data)


@dataclass(frozen=True)
class DiskLayer:
    """One file of a disk's chain (index 0 is the base, the last one the image itself)."""

    index: int
    path: str
    format: str
    size: int  # bytes on the host: the file plus its extents / data file
    mtime: str  # UTC, ISO 8601
    virtual_size: int | None = None


@dataclass(frozen=True)
class DiskRef:
    """One disk of a VM: a host path and its format, detected by vmscan."""

    path: str  # the real path opened (symlinks resolved)
    format: str
    virtual_size: int | None = None
    backing: tuple[str, ...] = ()
    given: str = ""  # the name as given, when it differs from ``path`` (a symlink)
    #: The chain, base first (``IMAGE@layer:N`` counts from 0, the base).
    layers: tuple[DiskLayer, ...] = ()
    #: Internal snapshots of the image (qcow2).
    snapshots: tuple[Snapshot, ...] = ()
    #: The point in time scanned when not the current state: "snapshot", "layer", "backup".
    point: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: Read through this NBD unix socket (export ``nbd_export``, raw) instead of ``path``.
    nbd_socket: str = ""
    nbd_export: str = ""


@dataclass
class OSInfo:
    """Facts about one operating system root, from libguestfs inspection + os-release."""

    type: str = "unknown"
    distro: str = "unknown"
    product_name: str = ""
    major_version: int = 0
    minor_version: int = 0
    arch: str = "unknown"
    hostname: str = ""
    package_format: str = "unknown"
    package_management: str = "unknown"
    os_release_id: str = ""
    version_id: str = ""
    version_codename: str = ""
    # Windows extras (filled by the Windows cataloger when present).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileEntry:
    """One regular file of the manifest."""

    device: str
    path: str  # escaped (see vmscan.pathenc) absolute path inside the guest root
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    sha256: str | None  # None: could not be read (see ``error``), or not hashed yet
    error: str | None = None
    #: (size, mtime ns, ctime ns, inode) from the walk, the key of vmscan.filecache; not
    #: in the report.
    ident: tuple[int, int, int, int] | None = field(
        default=None, compare=False, repr=False, metadata={"report": False}
    )


@dataclass
class Filesystem:
    """One filesystem seen in the image."""

    device: str
    type: str
    mountpoint: str | None = None
    mounted: bool = False
    files: int = 0
    bytes: int = 0
    error: str | None = None
    size: int | None = None
    free: int | None = None
    uuid: str = ""
    label: str = ""


@dataclass
class Package:
    """One installed package or program, as a cataloger found it."""

    name: str
    version: str
    arch: str = ""
    source_name: str = ""
    source_version: str = ""
    licenses: list[str] = field(default_factory=list)
    # Where the licence was read (e.g. "/usr/share/doc/bash/copyright#dep5", "rpm:LICENSE").
    license_source: str = ""
    found_by: str = ""
    purl: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finding:
    """One rule hit on one target (package, path or the root itself)."""

    check: str  # "antivirus" | "patch" | "license" | "migration" | "inventory" (catalogers)
    rule_id: str
    severity: Severity
    title: str
    target: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        # A severity given by its value ("high") is kept as the enum; a word that is no
        # severity is a bug of the check that made it (ValueError: the check fails, loudly).
        self.severity = Severity(self.severity)


@dataclass
class PluginStatus:
    """How a cataloger or check ran on one root: succeeded/partial/failed/skipped."""

    name: str
    status: str
    reason: str = ""
    version: str = ""  # the plugin's VERSION (bumped when its behaviour changes)


@dataclass
class RootResult:
    """One operating-system root (or one data filesystem for a disk with no OS)."""

    device: str
    os: OSInfo
    mountpoints: dict[str, str] = field(default_factory=dict)
    packages: list[Package] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    plugins: list[PluginStatus] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageResult:
    """Everything vmscan learned of one source (an image or a libvirt domain)."""

    source: str
    disks: list[DiskRef] = field(default_factory=list)
    status: ImageStatus = ImageStatus.OK
    errors: list[str] = field(default_factory=list)
    filesystems: list[Filesystem] = field(default_factory=list)
    roots: list[RootResult] = field(default_factory=list)
    manifest: list[FileEntry] = field(default_factory=list)
    not_scanned: list[dict[str, str]] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0


@dataclass
class ScanResult:
    """One run of vmscan over several sources."""

    schema_version: str
    vmscan_version: str
    started_at: str
    finished_at: str = ""
    images: list[ImageResult] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    #: True when SIGTERM/SIGINT stopped the run before every image was scanned.
    interrupted: bool = False
    interrupted_by: str | None = None  # "SIGTERM" | "SIGINT"


def to_jsonable(obj: Any) -> Any:
    """Turn result dataclasses into plain JSON types (enums to their values)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_jsonable(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("report", True)
        }
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj
