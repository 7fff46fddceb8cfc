"""Roots, images and the whole report; :meth:`ImageDoc.roots` is every root of an image."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from vmscan.document.parts import (
    DiskDoc,
    FileDoc,
    FilesystemDoc,
    FindingDoc,
    OSDoc,
    PackageDoc,
    PluginDoc,
)
from vmscan.document.read import (
    DERIVED,
    Doc,
    opt_str,
    read_map,
    read_maps,
    read_str,
    read_strs,
)
from vmscan.document.sections import (
    AntivirusDoc,
    LicenseDoc,
    MigrationDoc,
    StateDoc,
    TrendPoint,
)
from vmscan.model import ImageStatus


@dataclass(frozen=True)
class RootDoc(Doc):
    """One operating-system root, or one data volume of a disk with no OS."""

    device: str
    os: OSDoc
    mountpoints: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[PackageDoc, ...] = ()
    findings: tuple[FindingDoc, ...] = ()
    plugins: tuple[PluginDoc, ...] = ()
    sections: Mapping[str, Any] = field(default_factory=dict)
    #: True for a root of ``sections.data_volumes`` (a filesystem, not an OS).
    data_volume: bool = field(default=False, metadata=DERIVED)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, data_volume: bool = False) -> RootDoc:
        """Read one root (or data volume)."""
        sections = read_map(data.get("sections"))
        return cls(
            device=read_str(data.get("device")),
            os=OSDoc.from_json(read_map(data.get("os"))),
            mountpoints={str(k): read_str(v) for k, v in read_map(data.get("mountpoints")).items()},
            packages=tuple(PackageDoc.from_json(p) for p in read_maps(data.get("packages"))),
            findings=tuple(FindingDoc.from_json(f) for f in read_maps(data.get("findings"))),
            plugins=tuple(PluginDoc.from_json(p) for p in read_maps(data.get("plugins"))),
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


def _status(value: Any) -> ImageStatus:
    try:
        return ImageStatus(read_str(value))
    except ValueError:
        # Unreadable: never "ok" (a result nobody can read is not a clean one).
        return ImageStatus.PARTIAL


@dataclass(frozen=True)
class ImageDoc(Doc):
    """Everything the report says about one source (an image or a libvirt domain)."""

    source: str
    disks: tuple[DiskDoc, ...] = ()
    status: ImageStatus = ImageStatus.OK
    errors: tuple[str, ...] = ()
    filesystems: tuple[FilesystemDoc, ...] = ()
    #: The OS roots (JSON ``roots``); :meth:`roots` adds the data volumes.
    os_roots: tuple[RootDoc, ...] = field(default=(), metadata=DERIVED)
    #: Roots of disks with no OS (JSON ``sections.data_volumes``).
    data_volumes: tuple[RootDoc, ...] = field(default=(), metadata=DERIVED)
    #: The manifest as read (JSON objects); :attr:`manifest` reads it into :class:`FileDoc`.
    raw_manifest: Sequence[Mapping[str, Any]] = field(default=(), repr=False, metadata=DERIVED)
    not_scanned: tuple[Mapping[str, Any], ...] = ()
    #: Sections other than ``data_volumes`` (free-form; the known ones are read below).
    sections: Mapping[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageDoc:
        """Read one image result."""
        sections = read_map(data.get("sections"))
        vols = sections.pop("data_volumes", None)
        duration = data.get("duration_s")
        return cls(
            source=read_str(data.get("source")),
            disks=tuple(DiskDoc.from_json(d) for d in read_maps(data.get("disks"))),
            status=_status(data.get("status")),
            errors=read_strs(data.get("errors")),
            filesystems=tuple(
                FilesystemDoc.from_json(f) for f in read_maps(data.get("filesystems"))
            ),
            os_roots=tuple(RootDoc.from_json(r) for r in read_maps(data.get("roots"))),
            data_volumes=tuple(RootDoc.from_json(v, data_volume=True) for v in read_maps(vols)),
            raw_manifest=read_maps(data.get("manifest")),
            not_scanned=tuple(read_maps(data.get("not_scanned"))),
            sections=sections,
            started_at=read_str(data.get("started_at")),
            finished_at=read_str(data.get("finished_at")),
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
        return tuple(FindingDoc.from_json(f) for f in read_maps(self.sections.get("findings")))

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
class ReportDoc(Doc):
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
            schema_version=read_str(data.get("schema_version")),
            vmscan_version=read_str(data.get("vmscan_version")),
            started_at=read_str(data.get("started_at")),
            finished_at=read_str(data.get("finished_at")),
            images=tuple(ImageDoc.from_json(i) for i in read_maps(data.get("images"))),
            sections=read_map(data.get("sections")),
            interrupted=bool(data.get("interrupted")),
            interrupted_by=opt_str(data.get("interrupted_by")),
        )

    @classmethod
    def of(cls, doc: ReportDoc | Mapping[str, Any]) -> ReportDoc:
        """*doc* itself, or read from its JSON form (what a writer is given)."""
        return doc if isinstance(doc, ReportDoc) else cls.from_json(doc)

    def section(self, name: str) -> Mapping[str, Any]:
        """One run-level section ({} when absent or not an object)."""
        value = self.sections.get(name)
        return value if isinstance(value, Mapping) else {}

    @cached_property
    def trend(self) -> tuple[TrendPoint, ...]:
        """``sections.trend`` of a nightly report: one point per earlier run, oldest first."""
        rows = self.sections.get("trend")
        return tuple(TrendPoint.of(r) for r in read_maps(rows))

    @property
    def run_id(self) -> Any:
        """The nightly run's id (``sections.run.id``), None for a ``vmscan scan``."""
        return self.section("run").get("id")
