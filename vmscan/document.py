"""The JSON report read back as frozen dataclasses: what every writer, the diff and the
fleet summary read.

The JSON document (``vmscan/schema/report.schema.json``) is the public contract; a report
may come straight from a scan or be re-read from a file or the state database (``vmscan
report``, the nightly job), written by this or an older version. :meth:`ReportDoc.from_json`
reads it once, here: a missing key takes its default, a value of the wrong type is read as
the default (a list item that is no object is dropped), an unknown severity is
``unknown``; guest strings are kept as they are (writers escape them for their format).
Free-form parts (``details``, ``extra``, sections no reader here knows) stay mappings.

:meth:`ImageDoc.roots` is the one way to walk an image: its OS roots, then the data
volumes of disks with no OS (``sections.data_volumes``), whose findings count as much.
:meth:`ReportDoc.to_json` gives the document back (equal to what a scan wrote).
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from vmscan.model import ImageStatus, Severity

# --------------------------------------------------------------------------------------
# Reading loose JSON values: the one place that decides what a bad value becomes


def _str(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _maps(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(_str(v) for v in value if v is not None)


def _json(value: Any) -> Any:
    """A value of this module as plain JSON types (dataclasses, tuples, enums)."""
    if isinstance(value, _Doc):
        return value.to_json()
    if isinstance(value, Severity | ImageStatus):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


class _Doc:
    """Base of the document classes: fields marked ``json=False`` are derived, not written."""

    def to_json(self) -> dict[str, Any]:
        """This part of the document as JSON types."""
        return {
            f.name: _json(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if f.metadata.get("json", True)
        }


#: Metadata of a field that :meth:`_Doc.to_json` does not write under its own name.
_DERIVED = {"json": False}


# --------------------------------------------------------------------------------------
# Findings, packages, plugins, OS facts


@dataclass(frozen=True)
class FindingDoc(_Doc):
    """One rule hit on one target."""

    check: str
    rule_id: str
    severity: Severity
    title: str
    target: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FindingDoc:
        """Read one finding."""
        return cls(
            check=_str(data.get("check")),
            rule_id=_str(data.get("rule_id")),
            severity=Severity.parse(data.get("severity")),
            title=_str(data.get("title")),
            target=_str(data.get("target")),
            details=_map(data.get("details")),
            fingerprint=_str(data.get("fingerprint")),
        )

    @property
    def rank(self) -> int:
        """The severity's place in the one ordering (higher is worse)."""
        return self.severity.rank

    def key(self) -> str:
        """The fingerprint, or a stable one made from check, rule and target."""
        if self.fingerprint:
            return self.fingerprint
        raw = "\x1f".join((self.check, self.rule_id, self.target)).encode("utf-8", "replace")
        return "k:" + hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class PackageDoc(_Doc):
    """One installed package or program."""

    name: str
    version: str
    arch: str = ""
    source_name: str = ""
    source_version: str = ""
    licenses: tuple[str, ...] = ()
    license_source: str = ""
    found_by: str = ""
    purl: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PackageDoc:
        """Read one package."""
        return cls(
            name=_str(data.get("name")),
            version=_str(data.get("version")),
            arch=_str(data.get("arch")),
            source_name=_str(data.get("source_name")),
            source_version=_str(data.get("source_version")),
            licenses=_strs(data.get("licenses")),
            license_source=_str(data.get("license_source")),
            found_by=_str(data.get("found_by")),
            purl=_str(data.get("purl")),
            extra=_map(data.get("extra")),
        )

    def extra_str(self, key: str) -> str:
        """One ``extra`` value as text ('' when absent)."""
        return _str(self.extra.get(key))

    @property
    def is_windows_program(self) -> bool:
        """Found by a Windows cataloger (an application, not a library)."""
        return "windows" in self.found_by


@dataclass(frozen=True)
class PluginDoc(_Doc):
    """How one cataloger or check ran on a root."""

    name: str
    status: str
    reason: str = ""
    version: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PluginDoc:
        """Read one plugin status."""
        return cls(
            name=_str(data.get("name")),
            status=_str(data.get("status")),
            reason=_str(data.get("reason")),
            version=_str(data.get("version")),
        )


@dataclass(frozen=True)
class OSDoc(_Doc):
    """Facts about the operating system of a root."""

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
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OSDoc:
        """Read the ``os`` object of a root."""
        return cls(
            type=_str(data.get("type"), "unknown"),
            distro=_str(data.get("distro"), "unknown"),
            product_name=_str(data.get("product_name")),
            major_version=_int(data.get("major_version")),
            minor_version=_int(data.get("minor_version")),
            arch=_str(data.get("arch"), "unknown"),
            hostname=_str(data.get("hostname")),
            package_format=_str(data.get("package_format"), "unknown"),
            package_management=_str(data.get("package_management"), "unknown"),
            os_release_id=_str(data.get("os_release_id")),
            version_id=_str(data.get("version_id")),
            version_codename=_str(data.get("version_codename")),
            extra=_map(data.get("extra")),
        )

    @property
    def version(self) -> str:
        """``version_id``, else ``major.minor``."""
        return self.version_id or f"{self.major_version}.{self.minor_version}"


# --------------------------------------------------------------------------------------
# Sections the readers know (the rest stay mappings)


@dataclass(frozen=True)
class MigrationDoc:
    """``sections.migration`` of a root: the migration audit's verdict and coverage."""

    verdict: str
    rules_evaluated: frozenset[str]
    rules_failed: Mapping[str, str]
    os_kind: str

    @classmethod
    def of(cls, value: Any) -> MigrationDoc | None:
        """The section, or None when the audit did not run (no section)."""
        if not isinstance(value, Mapping):
            return None
        return cls(
            verdict=_str(value.get("verdict")),
            rules_evaluated=frozenset(_strs(value.get("rules_evaluated"))),
            rules_failed={str(k): _str(v) for k, v in _map(value.get("rules_failed")).items()},
            os_kind=_str(_map(value.get("facts")).get("os_kind"), "this"),
        )


@dataclass(frozen=True)
class AntivirusDoc:
    """``sections.antivirus`` of an image or a root: coverage of the content scan."""

    status: str
    engine: str
    database_digest: str
    files_scanned: int
    not_scanned: Mapping[str, Any]  # reason -> files not scanned
    incomplete_reasons: tuple[str, ...]
    detail: str
    roots: tuple[str, ...]
    #: When the SHA-256 hash lists were last matched again with no scan ('' if never).
    hash_rechecked_at: str

    @classmethod
    def of(cls, value: Any) -> AntivirusDoc | None:
        """The section, or None when there is none."""
        if not isinstance(value, Mapping):
            return None
        counts = _map(value.get("not_scanned")).get("counts")
        return cls(
            status=_str(value.get("status")),
            engine=_str(value.get("engine")),
            database_digest=_str(value.get("database_digest")),
            files_scanned=_int(value.get("files_scanned")),
            not_scanned=dict(counts) if isinstance(counts, Mapping) else {},
            incomplete_reasons=_strs(value.get("incomplete_reasons")),
            detail=_str(value.get("detail")),
            roots=_strs(value.get("roots")),
            hash_rechecked_at=_str(_map(value.get("hash_rechecked")).get("at")),
        )


@dataclass(frozen=True)
class EditionDoc:
    """The OS edition the licence check read (``sections.license.os_edition``)."""

    type: str
    distro: str
    product_name: str
    edition_id: str
    installation_type: str

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> EditionDoc:
        """Read the edition object."""
        return cls(
            type=_str(value.get("type"), "unknown"),
            distro=_str(value.get("distro")),
            product_name=_str(value.get("product_name")),
            edition_id=_str(value.get("edition_id")),
            installation_type=_str(value.get("installation_type")),
        )


@dataclass(frozen=True)
class WatchedDoc:
    """One watched commercial product the licence check found on a root."""

    id: str
    product: str
    edition: str


@dataclass(frozen=True)
class LicenseDoc:
    """``sections.license`` of a root: the OS edition and watched products (licence check)."""

    os_edition: EditionDoc | None
    watched: tuple[WatchedDoc, ...] | None  # None: not recorded (older results)

    @classmethod
    def of(cls, value: Any) -> LicenseDoc | None:
        """The section, or None when the licence check did not run."""
        if not isinstance(value, Mapping):
            return None
        ed = value.get("os_edition")
        watched = value.get("watched")
        return cls(
            os_edition=EditionDoc.of(ed) if isinstance(ed, Mapping) else None,
            watched=tuple(
                WatchedDoc(_str(w.get("id")), _str(w.get("product")), _str(w.get("edition")))
                for w in _maps(watched)
            )
            if isinstance(watched, list)
            else None,
        )


@dataclass(frozen=True)
class AsOfDoc:
    """``sections.state.antivirus_as_of``: the database the image's files stand clean under."""

    engine: str
    date: str
    kinds_rechecked: tuple[str, ...]


@dataclass(frozen=True)
class StateDoc:
    """``sections.state`` of an image: what the nightly job did with it."""

    carried_forward: bool
    scanned_at: str
    rescanned_checks: tuple[str, ...]
    antivirus_as_of: AsOfDoc | None

    @classmethod
    def of(cls, value: Any) -> StateDoc:
        """The section (empty when there is none)."""
        data = _map(value)
        as_of = data.get("antivirus_as_of")
        return cls(
            carried_forward=bool(data.get("carried_forward")),
            scanned_at=_str(data.get("scanned_at")),
            rescanned_checks=_strs(data.get("rescanned_checks")),
            antivirus_as_of=AsOfDoc(
                engine=_str(as_of.get("engine")),
                date=_str(as_of.get("date")),
                kinds_rechecked=_strs(as_of.get("kinds_rechecked")),
            )
            if isinstance(as_of, Mapping) and as_of
            else None,
        )


# --------------------------------------------------------------------------------------
# Roots and images


@dataclass(frozen=True)
class RootDoc(_Doc):
    """One operating-system root, or one data volume of a disk with no OS."""

    device: str
    os: OSDoc
    mountpoints: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[PackageDoc, ...] = ()
    findings: tuple[FindingDoc, ...] = ()
    plugins: tuple[PluginDoc, ...] = ()
    sections: Mapping[str, Any] = field(default_factory=dict)
    #: True for a root of ``sections.data_volumes`` (a filesystem, not an OS).
    data_volume: bool = field(default=False, metadata=_DERIVED)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, data_volume: bool = False) -> RootDoc:
        """Read one root (or data volume)."""
        sections = _map(data.get("sections"))
        return cls(
            device=_str(data.get("device")),
            os=OSDoc.from_json(_map(data.get("os"))),
            mountpoints={str(k): _str(v) for k, v in _map(data.get("mountpoints")).items()},
            packages=tuple(PackageDoc.from_json(p) for p in _maps(data.get("packages"))),
            findings=tuple(FindingDoc.from_json(f) for f in _maps(data.get("findings"))),
            plugins=tuple(PluginDoc.from_json(p) for p in _maps(data.get("plugins"))),
            sections=sections,
            data_volume=data_volume,
        )

    # Typed views of the sections the readers know, read on first use: a copy made with
    # ``dataclasses.replace(root, sections=...)`` reads its own.

    @cached_property
    def migration(self) -> MigrationDoc | None:
        """``sections.migration`` (None: the audit did not run)."""
        return MigrationDoc.of(self.sections.get("migration"))

    @cached_property
    def license(self) -> LicenseDoc | None:
        """``sections.license`` (None: the licence check did not run)."""
        return LicenseDoc.of(self.sections.get("license"))

    @cached_property
    def antivirus(self) -> AntivirusDoc | None:
        """``sections.antivirus`` of this root (None when there is none)."""
        return AntivirusDoc.of(self.sections.get("antivirus"))

    def plugin(self, name: str) -> PluginDoc | None:
        """The status of one plugin on this root."""
        return next((p for p in self.plugins if p.name == name), None)


@dataclass(frozen=True)
class FileDoc(_Doc):
    """One regular file of an image's manifest."""

    device: str
    path: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    sha256: str | None
    error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileDoc:
        """Read one manifest entry."""
        return cls(
            device=_str(data.get("device")),
            path=_str(data.get("path")),
            size=_int(data.get("size")),
            mode=_int(data.get("mode")),
            uid=_int(data.get("uid")),
            gid=_int(data.get("gid")),
            mtime=_int(data.get("mtime")),
            sha256=_opt_str(data.get("sha256")),
            error=_opt_str(data.get("error")),
        )

    @property
    def is_executable(self) -> bool:
        """A regular file (or one of unknown type) with an execute bit."""
        if stat.S_IFMT(self.mode) and not stat.S_ISREG(self.mode):
            return False
        return bool(self.mode & 0o111)


@dataclass(frozen=True)
class FilesystemDoc(_Doc):
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FilesystemDoc:
        """Read one filesystem."""
        return cls(
            device=_str(data.get("device")),
            type=_str(data.get("type")),
            mountpoint=_opt_str(data.get("mountpoint")),
            mounted=bool(data.get("mounted")),
            files=_int(data.get("files")),
            bytes=_int(data.get("bytes")),
            error=_opt_str(data.get("error")),
            size=_opt_int(data.get("size")),
            free=_opt_int(data.get("free")),
            uuid=_str(data.get("uuid")),
            label=_str(data.get("label")),
        )


@dataclass(frozen=True)
class LayerDoc(_Doc):
    """One file of a disk's chain (index 0 is the base)."""

    index: int
    path: str
    format: str
    size: int
    mtime: str
    virtual_size: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerDoc:
        """Read one layer."""
        return cls(
            index=_int(data.get("index")),
            path=_str(data.get("path")),
            format=_str(data.get("format")),
            size=_int(data.get("size")),
            mtime=_str(data.get("mtime")),
            virtual_size=_opt_int(data.get("virtual_size")),
        )


@dataclass(frozen=True)
class SnapshotDoc(_Doc):
    """One internal snapshot of a qcow2 image."""

    id: str
    name: str
    date: str
    vm_clock_ns: int
    vm_state_size: int
    disk_size: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotDoc:
        """Read one snapshot."""
        return cls(
            id=_str(data.get("id")),
            name=_str(data.get("name")),
            date=_str(data.get("date")),
            vm_clock_ns=_int(data.get("vm_clock_ns")),
            vm_state_size=_int(data.get("vm_state_size")),
            disk_size=_opt_int(data.get("disk_size")),
        )


@dataclass(frozen=True)
class DiskDoc(_Doc):
    """One disk of a VM."""

    path: str
    format: str
    virtual_size: int | None = None
    backing: tuple[str, ...] = ()
    given: str = ""
    layers: tuple[LayerDoc, ...] = ()
    snapshots: tuple[SnapshotDoc, ...] = ()
    point: Mapping[str, Any] = field(default_factory=dict)
    nbd_socket: str = ""
    nbd_export: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DiskDoc:
        """Read one disk."""
        return cls(
            path=_str(data.get("path")),
            format=_str(data.get("format")),
            virtual_size=_opt_int(data.get("virtual_size")),
            backing=_strs(data.get("backing")),
            given=_str(data.get("given")),
            layers=tuple(LayerDoc.from_json(x) for x in _maps(data.get("layers"))),
            snapshots=tuple(SnapshotDoc.from_json(x) for x in _maps(data.get("snapshots"))),
            point=_map(data.get("point")),
            nbd_socket=_str(data.get("nbd_socket")),
            nbd_export=_str(data.get("nbd_export")),
        )


def _status(value: Any) -> ImageStatus:
    try:
        return ImageStatus(_str(value))
    except ValueError:
        # Unreadable: never "ok" (a result nobody can read is not a clean one).
        return ImageStatus.PARTIAL


@dataclass(frozen=True)
class ImageDoc(_Doc):
    """Everything the report says about one source (an image or a libvirt domain)."""

    source: str
    disks: tuple[DiskDoc, ...] = ()
    status: ImageStatus = ImageStatus.OK
    errors: tuple[str, ...] = ()
    filesystems: tuple[FilesystemDoc, ...] = ()
    #: The OS roots (JSON ``roots``); :meth:`roots` adds the data volumes.
    os_roots: tuple[RootDoc, ...] = field(default=(), metadata=_DERIVED)
    #: Roots of disks with no OS (JSON ``sections.data_volumes``).
    data_volumes: tuple[RootDoc, ...] = field(default=(), metadata=_DERIVED)
    #: The manifest as read (JSON objects); :attr:`manifest` reads it into :class:`FileDoc`.
    raw_manifest: Sequence[Mapping[str, Any]] = field(default=(), repr=False, metadata=_DERIVED)
    not_scanned: tuple[Mapping[str, Any], ...] = ()
    #: Sections other than ``data_volumes`` (free-form; the known ones are read below).
    sections: Mapping[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageDoc:
        """Read one image result."""
        sections = _map(data.get("sections"))
        vols = sections.pop("data_volumes", None)
        duration = data.get("duration_s")
        return cls(
            source=_str(data.get("source")),
            disks=tuple(DiskDoc.from_json(d) for d in _maps(data.get("disks"))),
            status=_status(data.get("status")),
            errors=_strs(data.get("errors")),
            filesystems=tuple(FilesystemDoc.from_json(f) for f in _maps(data.get("filesystems"))),
            os_roots=tuple(RootDoc.from_json(r) for r in _maps(data.get("roots"))),
            data_volumes=tuple(RootDoc.from_json(v, data_volume=True) for v in _maps(vols)),
            raw_manifest=_maps(data.get("manifest")),
            not_scanned=tuple(_maps(data.get("not_scanned"))),
            sections=sections,
            started_at=_str(data.get("started_at")),
            finished_at=_str(data.get("finished_at")),
            duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
        )

    @cached_property
    def antivirus(self) -> AntivirusDoc | None:
        """``sections.antivirus`` of the image (None when there is none)."""
        return AntivirusDoc.of(self.sections.get("antivirus"))

    @cached_property
    def state(self) -> StateDoc:
        """``sections.state``: what the nightly job did with the image."""
        return StateDoc.of(self.sections.get("state"))

    @cached_property
    def image_findings(self) -> tuple[FindingDoc, ...]:
        """Image-level findings (``sections.findings``, written by other tools or versions)."""
        return tuple(FindingDoc.from_json(f) for f in _maps(self.sections.get("findings")))

    @cached_property
    def manifest(self) -> tuple[FileDoc, ...]:
        """Every regular file (read on first use: a manifest may hold a million entries)."""
        return tuple(FileDoc.from_json(e) for e in self.raw_manifest)

    def roots(self) -> tuple[RootDoc, ...]:
        """Every root of the image: its OS roots, then its data volumes."""
        return self.os_roots + self.data_volumes

    def findings(self) -> Iterator[tuple[RootDoc, FindingDoc]]:
        """Every finding of every root, with its root."""
        for root in self.roots():
            for f in root.findings:
                yield root, f

    def to_json(self) -> dict[str, Any]:
        """The image as the report writes it."""
        out = super().to_json()
        out["roots"] = [r.to_json() for r in self.os_roots]
        out["manifest"] = [dict(e) for e in self.raw_manifest]
        if self.data_volumes:
            out["sections"]["data_volumes"] = [v.to_json() for v in self.data_volumes]
        return out


@dataclass(frozen=True)
class ReportDoc(_Doc):
    """One run of vmscan over several sources, as its report says."""

    schema_version: str
    vmscan_version: str
    started_at: str
    finished_at: str = ""
    images: tuple[ImageDoc, ...] = ()
    #: Run-level sections (``run``, ``license_fleet``, ``changes``, ``trend``, ``nightly``):
    #: documents of their own, kept as mappings.
    sections: Mapping[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    interrupted_by: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportDoc:
        """Read a whole report (a scan's, or a stored one)."""
        return cls(
            schema_version=_str(data.get("schema_version")),
            vmscan_version=_str(data.get("vmscan_version")),
            started_at=_str(data.get("started_at")),
            finished_at=_str(data.get("finished_at")),
            images=tuple(ImageDoc.from_json(i) for i in _maps(data.get("images"))),
            sections=_map(data.get("sections")),
            interrupted=bool(data.get("interrupted")),
            interrupted_by=_opt_str(data.get("interrupted_by")),
        )

    @classmethod
    def of(cls, doc: ReportDoc | Mapping[str, Any]) -> ReportDoc:
        """*doc* itself, or read from its JSON form (what a writer is given)."""
        return doc if isinstance(doc, ReportDoc) else cls.from_json(doc)

    def section(self, name: str) -> Mapping[str, Any]:
        """One run-level section ({} when absent or not an object)."""
        value = self.sections.get(name)
        return value if isinstance(value, Mapping) else {}

    @property
    def run_id(self) -> Any:
        """The nightly run's id (``sections.run.id``), None for a ``vmscan scan``."""
        return self.section("run").get("id")


__all__ = [
    "AntivirusDoc",
    "AsOfDoc",
    "DiskDoc",
    "EditionDoc",
    "FileDoc",
    "FilesystemDoc",
    "FindingDoc",
    "ImageDoc",
    "LayerDoc",
    "LicenseDoc",
    "MigrationDoc",
    "OSDoc",
    "PackageDoc",
    "PluginDoc",
    "ReportDoc",
    "RootDoc",
    "SnapshotDoc",
    "StateDoc",
    "WatchedDoc",
]
