"""The leaves of the report: findings, packages, plugin statuses, OS facts, files, disks."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmscan.document.read import (
    Doc,
    opt_int,
    opt_str,
    read_int,
    read_map,
    read_maps,
    read_str,
    read_strs,
)
from vmscan.document.sections import AntivirusDetails, Evidence, PatchDetails
from vmscan.model import Severity


@dataclass(frozen=True)
class FindingDoc(Doc):
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
            check=read_str(data.get("check")),
            rule_id=read_str(data.get("rule_id")),
            severity=Severity.parse(data.get("severity")),
            title=read_str(data.get("title")),
            target=read_str(data.get("target")),
            details=read_map(data.get("details")),
            fingerprint=read_str(data.get("fingerprint")),
        )

    @property
    def rank(self) -> int:
        """The severity's place in the one ordering (higher is worse)."""
        return self.severity.rank

    @property
    def patch(self) -> PatchDetails:
        """The details as a patch finding's."""
        return PatchDetails.of(self.details)

    @property
    def evidence(self) -> Evidence:
        """The details as evidence (file, line, text, sample, remediation)."""
        return Evidence.of(self.details)

    @property
    def antivirus(self) -> AntivirusDetails:
        """The details as an antivirus finding's."""
        return AntivirusDetails.of(self.details)

    def key(self) -> str:
        """The fingerprint, or a stable one made from check, rule and target."""
        if self.fingerprint:
            return self.fingerprint
        raw = "\x1f".join((self.check, self.rule_id, self.target)).encode("utf-8", "replace")
        return "k:" + hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class PackageDoc(Doc):
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
            name=read_str(data.get("name")),
            version=read_str(data.get("version")),
            arch=read_str(data.get("arch")),
            source_name=read_str(data.get("source_name")),
            source_version=read_str(data.get("source_version")),
            licenses=read_strs(data.get("licenses")),
            license_source=read_str(data.get("license_source")),
            found_by=read_str(data.get("found_by")),
            purl=read_str(data.get("purl")),
            extra=read_map(data.get("extra")),
        )

    def extra_str(self, key: str) -> str:
        """One ``extra`` value as text ('' when absent)."""
        return read_str(self.extra.get(key))

    @property
    def is_windows_program(self) -> bool:
        """Found by a Windows cataloger (an application, not a library)."""
        return "windows" in self.found_by


@dataclass(frozen=True)
class PluginDoc(Doc):
    """How one cataloger or check ran on a root."""

    name: str
    status: str
    reason: str = ""
    version: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PluginDoc:
        """Read one plugin status."""
        return cls(
            name=read_str(data.get("name")),
            status=read_str(data.get("status")),
            reason=read_str(data.get("reason")),
            version=read_str(data.get("version")),
        )


@dataclass(frozen=True)
class OSDoc(Doc):
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
            type=read_str(data.get("type"), "unknown"),
            distro=read_str(data.get("distro"), "unknown"),
            product_name=read_str(data.get("product_name")),
            major_version=read_int(data.get("major_version")),
            minor_version=read_int(data.get("minor_version")),
            arch=read_str(data.get("arch"), "unknown"),
            hostname=read_str(data.get("hostname")),
            package_format=read_str(data.get("package_format"), "unknown"),
            package_management=read_str(data.get("package_management"), "unknown"),
            os_release_id=read_str(data.get("os_release_id")),
            version_id=read_str(data.get("version_id")),
            version_codename=read_str(data.get("version_codename")),
            extra=read_map(data.get("extra")),
        )

    @property
    def version(self) -> str:
        """``version_id``, else ``major.minor``."""
        return self.version_id or f"{self.major_version}.{self.minor_version}"


@dataclass(frozen=True)
class FileDoc(Doc):
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
            device=read_str(data.get("device")),
            path=read_str(data.get("path")),
            size=read_int(data.get("size")),
            mode=read_int(data.get("mode")),
            uid=read_int(data.get("uid")),
            gid=read_int(data.get("gid")),
            mtime=read_int(data.get("mtime")),
            sha256=opt_str(data.get("sha256")),
            error=opt_str(data.get("error")),
        )

    @property
    def is_executable(self) -> bool:
        """A regular file (or one of unknown type) with an execute bit."""
        if stat.S_IFMT(self.mode) and not stat.S_ISREG(self.mode):
            return False
        return bool(self.mode & 0o111)


@dataclass(frozen=True)
class FilesystemDoc(Doc):
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
            device=read_str(data.get("device")),
            type=read_str(data.get("type")),
            mountpoint=opt_str(data.get("mountpoint")),
            mounted=bool(data.get("mounted")),
            files=read_int(data.get("files")),
            bytes=read_int(data.get("bytes")),
            error=opt_str(data.get("error")),
            size=opt_int(data.get("size")),
            free=opt_int(data.get("free")),
            uuid=read_str(data.get("uuid")),
            label=read_str(data.get("label")),
        )


@dataclass(frozen=True)
class LayerDoc(Doc):
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
            index=read_int(data.get("index")),
            path=read_str(data.get("path")),
            format=read_str(data.get("format")),
            size=read_int(data.get("size")),
            mtime=read_str(data.get("mtime")),
            virtual_size=opt_int(data.get("virtual_size")),
        )


@dataclass(frozen=True)
class SnapshotDoc(Doc):
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
            id=read_str(data.get("id")),
            name=read_str(data.get("name")),
            date=read_str(data.get("date")),
            vm_clock_ns=read_int(data.get("vm_clock_ns")),
            vm_state_size=read_int(data.get("vm_state_size")),
            disk_size=opt_int(data.get("disk_size")),
        )


@dataclass(frozen=True)
class DiskDoc(Doc):
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
            path=read_str(data.get("path")),
            format=read_str(data.get("format")),
            virtual_size=opt_int(data.get("virtual_size")),
            backing=read_strs(data.get("backing")),
            given=read_str(data.get("given")),
            layers=tuple(LayerDoc.from_json(x) for x in read_maps(data.get("layers"))),
            snapshots=tuple(SnapshotDoc.from_json(x) for x in read_maps(data.get("snapshots"))),
            point=read_map(data.get("point")),
            nbd_socket=read_str(data.get("nbd_socket")),
            nbd_export=read_str(data.get("nbd_export")),
        )
