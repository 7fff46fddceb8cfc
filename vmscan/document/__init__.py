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

from vmscan.document.parts import (
    DiskDoc,
    FileDoc,
    FilesystemDoc,
    FindingDoc,
    LayerDoc,
    OSDoc,
    PackageDoc,
    PluginDoc,
    SnapshotDoc,
)
from vmscan.document.report import ImageDoc, ReportDoc, RootDoc
from vmscan.document.sections import (
    AntivirusDetails,
    AntivirusDoc,
    AsOfDoc,
    EditionDoc,
    Evidence,
    LicenseDoc,
    MigrationDoc,
    PatchDetails,
    StateDoc,
    TrendPoint,
    WatchedDoc,
)

__all__ = [
    "AntivirusDetails",
    "AntivirusDoc",
    "AsOfDoc",
    "DiskDoc",
    "EditionDoc",
    "Evidence",
    "FileDoc",
    "FilesystemDoc",
    "FindingDoc",
    "ImageDoc",
    "LayerDoc",
    "LicenseDoc",
    "MigrationDoc",
    "OSDoc",
    "PackageDoc",
    "PatchDetails",
    "PluginDoc",
    "ReportDoc",
    "RootDoc",
    "SnapshotDoc",
    "StateDoc",
    "TrendPoint",
    "WatchedDoc",
]
