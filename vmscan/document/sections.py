"""Typed views of the sections the readers know (the rest of ``sections`` stays mappings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmscan.document.read import (
    read_int,
    read_map,
    read_maps,
    read_str,
    read_strs,
    truthy_str,
)


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
            verdict=read_str(value.get("verdict")),
            rules_evaluated=frozenset(read_strs(value.get("rules_evaluated"))),
            rules_failed={
                str(k): read_str(v) for k, v in read_map(value.get("rules_failed")).items()
            },
            os_kind=read_str(read_map(value.get("facts")).get("os_kind"), "this"),
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
        counts = read_map(value.get("not_scanned")).get("counts")
        return cls(
            status=read_str(value.get("status")),
            engine=read_str(value.get("engine")),
            database_digest=read_str(value.get("database_digest")),
            files_scanned=read_int(value.get("files_scanned")),
            not_scanned=dict(counts) if isinstance(counts, Mapping) else {},
            incomplete_reasons=read_strs(value.get("incomplete_reasons")),
            detail=read_str(value.get("detail")),
            roots=read_strs(value.get("roots")),
            hash_rechecked_at=read_str(read_map(value.get("hash_rechecked")).get("at")),
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
            type=read_str(value.get("type"), "unknown"),
            distro=read_str(value.get("distro")),
            product_name=read_str(value.get("product_name")),
            edition_id=read_str(value.get("edition_id")),
            installation_type=read_str(value.get("installation_type")),
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
                WatchedDoc(
                    read_str(w.get("id")), read_str(w.get("product")), read_str(w.get("edition"))
                )
                for w in read_maps(watched)
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
        data = read_map(value)
        as_of = data.get("antivirus_as_of")
        return cls(
            carried_forward=bool(data.get("carried_forward")),
            scanned_at=read_str(data.get("scanned_at")),
            rescanned_checks=read_strs(data.get("rescanned_checks")),
            antivirus_as_of=AsOfDoc(
                engine=read_str(as_of.get("engine")),
                date=read_str(as_of.get("date")),
                kinds_rechecked=read_strs(as_of.get("kinds_rechecked")),
            )
            if isinstance(as_of, Mapping) and as_of
            else None,
        )


# --------------------------------------------------------------------------------------
# Finding details (free-form per check; these are the fields other readers rely on)


@dataclass(frozen=True)
class PatchDetails:
    """``details`` of a patch finding: the package, its version, the fix, other names."""

    package: str
    installed_version: str
    fixed_version: str
    aliases: tuple[str, ...]

    @classmethod
    def of(cls, details: Mapping[str, Any]) -> PatchDetails:
        """Read the details of one finding."""
        aliases = details.get("aliases")
        return cls(
            package=truthy_str(details.get("package")),
            installed_version=truthy_str(details.get("installed_version")),
            fixed_version=truthy_str(details.get("fixed_version")),
            aliases=tuple(str(a) for a in aliases if a) if isinstance(aliases, list) else (),
        )


@dataclass(frozen=True)
class Evidence:
    """Where a finding was seen (migration rules): a file and line, a text, a sample."""

    file: str
    line: str
    text: str
    sample: tuple[str, ...]
    remediation: str

    @classmethod
    def of(cls, details: Mapping[str, Any]) -> Evidence:
        """Read the details of one finding."""
        sample = details.get("sample")
        return cls(
            file=truthy_str(details.get("file")),
            line=truthy_str(details.get("line")),
            text=truthy_str(details.get("text")),
            sample=tuple(str(s) for s in sample) if isinstance(sample, list | tuple) else (),
            remediation=truthy_str(details.get("remediation")),
        )


@dataclass(frozen=True)
class AntivirusDetails:
    """``details`` of an antivirus finding: how it was detected, the file's hash and size."""

    detected_by: str  # "clamd" | "hash" | ...
    sha256: str
    size: int

    @classmethod
    def of(cls, details: Mapping[str, Any]) -> AntivirusDetails:
        """Read the details of one finding."""
        return cls(
            detected_by=truthy_str(details.get("detected_by")),
            sha256=truthy_str(details.get("sha256")),
            size=read_int(details.get("size")),
        )


@dataclass(frozen=True)
class TrendPoint:
    """One run of the nightly report's ``sections.trend``: images and findings by severity."""

    run: object  # the run id as stored
    images: int
    findings_by_severity: Mapping[str, int]

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> TrendPoint:
        """Read one trend row (counts that are no integers are dropped)."""
        counts = read_map(value.get("findings_by_severity"))
        return cls(
            run=value.get("run"),
            images=read_int(value.get("images")),
            findings_by_severity={
                str(k): v
                for k, v in counts.items()
                if isinstance(v, int) and not isinstance(v, bool)
            },
        )

    @property
    def total(self) -> int:
        """Findings of that run."""
        return sum(self.findings_by_severity.values())
