"""Did every selected check run to completion? Plugin statuses, bounded reasons, exit codes.

"Not scanned" is never "clean" and a failure to look is never "absent": a cataloger or
check that failed, or examined only part of what it should have, makes its image
``partial`` (an ``errors[]`` line per such plugin) and the run's exit code 2. This module
is the one place that decides it, for the scanner (dataclasses), the nightly job and
every report writer (the report read back, :mod:`vmscan.document`), so that they can never disagree.

A plugin says what it could not do with plain notes (``ctx.notes.append("...")``): any
plain note makes it ``partial``. A note that only explains how something was read (a
licence exception that is not SPDX-listed, a fallback reader that worked) is wrapped in
:class:`Info`: it is kept in the reason but leaves the plugin ``succeeded``. The default
is the safe one: an unmarked note is a gap.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmscan.document import ImageDoc, ReportDoc
from vmscan.model import (
    ImageResult,
    ImageStatus,
    PluginStatus,
    RootResult,
    Severity,
    to_jsonable,
)

#: Longest reason string (plugin reasons, ``errors[]`` lines) in characters.
REASON_LIMIT = 1000
#: ``errors[]`` lines kept per image; the rest are counted in one last line.
ERRORS_MAX = 100

EXIT_OK, EXIT_FINDINGS, EXIT_IMAGE_ERROR, EXIT_USAGE = 0, 1, 2, 3

#: Rule id of the rows/notifications that stand for a check that did not complete.
INCOMPLETE_RULE = "VMSCAN-CHECK-INCOMPLETE"
#: Rule id of the rows/notifications that stand for an image that could not be scanned.
IMAGE_ERROR_RULE = "VMSCAN-IMAGE-ERROR"


class PluginState(enum.StrEnum):
    """How a cataloger or check ran on one root."""

    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    SKIPPED = "skipped"


#: States that mean "this plugin did not complete".
NOT_COMPLETE = frozenset({PluginState.PARTIAL.value, PluginState.FAILED.value})


class Info(str):
    """A plugin note that explains a reading but is no gap (the plugin stays succeeded)."""

    __slots__ = ()


def info(text: str) -> Info:
    """Mark *text* as an informational note."""
    return Info(text)


def relabel(note: str, text: str) -> str:
    """*text* (usually *note* with a prefix) keeping *note*'s kind (gap or :class:`Info`)."""
    return Info(text) if isinstance(note, Info) else text


def bound(text: str, limit: int = REASON_LIMIT) -> str:
    """*text* cut to at most *limit* characters (``limit >= 80``), saying how much was cut."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = limit - 40  # room for the suffix, whose number has at most 30 digits here
    return text[:keep] + f"… [{len(text) - keep} more characters]"


def join_notes(notes: Sequence[str], limit: int = REASON_LIMIT) -> str:
    """Notes joined with "; " until *limit*, then how many more there were.

    The first note (the error, or the most important gap) may take two thirds of the
    limit; each other one a quarter, so that one long note cannot hide all the rest.
    """
    if len(notes) == 1:
        return bound(notes[0], limit)
    out: list[str] = []
    used = 0
    for n, note in enumerate(notes):
        tail = f" (+{len(notes) - n} more notes)"
        piece = bound(note, max(80, limit * 2 // 3 if n == 0 else limit // 4))
        if used + len(piece) + 2 + len(tail) > limit and out:
            return "; ".join(out) + tail
        out.append(piece)
        used += len(piece) + 2
    return bound("; ".join(out), limit)


def plugin_status(
    name: str, notes: Sequence[str], error: BaseException | None = None, version: str = ""
) -> PluginStatus:
    """The status of one plugin run: failed on *error*, partial on a gap note, else succeeded.

    Gap notes come first in the reason: they are what a reader must see.
    """
    gaps = [n for n in notes if not isinstance(n, Info)]
    infos = [n for n in notes if isinstance(n, Info)]
    if error is not None:
        why = str(error) or type(error).__name__
        # A note the error message already carries is said once.
        rest = [n for n in (*gaps, *infos) if n not in why]
        return PluginStatus(name, PluginState.FAILED.value, join_notes([why, *rest]), version)
    state = PluginState.PARTIAL if gaps else PluginState.SUCCEEDED
    return PluginStatus(name, state.value, join_notes([*gaps, *infos]), version)


def skipped(name: str, why: str, version: str = "") -> PluginStatus:
    """A plugin that did not run on a root, and why (not applicable, not selected)."""
    return PluginStatus(name, PluginState.SKIPPED.value, bound(why), version)


# --------------------------------------------------------------------------------------
# Reading a result: which plugins did not complete


@dataclass(frozen=True)
class Incomplete:
    """One cataloger or check that did not complete on one root of an image."""

    root: str
    plugin: str
    status: str  # "failed" | "partial"
    reason: str

    def message(self) -> str:
        """The ``errors[]`` line, the notification text, the banner line."""
        why = f": {self.reason}" if self.reason else ""
        return bound(f"{self.root}: {self.plugin} did not complete ({self.status}){why}")


def incomplete_plugins(image: ImageDoc | Mapping[str, Any]) -> list[Incomplete]:
    """Every plugin of an image that failed or is partial, in report order.

    An image-level antivirus section that says ``incomplete`` counts too, even when no
    plugin status says so (results written by other tools or older versions).
    """
    img = image if isinstance(image, ImageDoc) else ImageDoc.from_json(image)
    if img.status is ImageStatus.ERROR:
        return []
    out = [
        Incomplete(root.device, p.name, p.status, p.reason)
        for root in img.roots()
        for p in root.plugins
        if p.status in NOT_COMPLETE
    ]
    av = img.antivirus
    if (
        av is not None
        and av.status == "incomplete"
        and not any(i.plugin == "antivirus" for i in out)
    ):
        reasons = ", ".join(av.incomplete_reasons)
        roots = ", ".join(av.roots) or "image"
        status = "partial" if av.files_scanned else "failed"
        why = av.detail or f"antivirus incomplete ({reasons})"
        out.append(Incomplete(roots, "antivirus", status, why))
    return out


def incomplete_messages(image: ImageDoc | Mapping[str, Any]) -> set[str]:
    """The ``errors[]`` lines that :func:`finalize_image` derived (writers list them apart)."""
    return {i.message() for i in incomplete_plugins(image)}


# --------------------------------------------------------------------------------------
# Writing a result: image status and errors


def _root_mounted(result: ImageResult, root: RootResult) -> bool:
    dev = root.mountpoints.get("/", root.device)
    return any(f.mounted for f in result.filesystems if f.device == dev)


def _not_run(result: ImageResult, checks: tuple[str, ...]) -> None:
    """Roots whose filesystem could not be mounted: nothing ran there, say so per plugin."""
    for root in result.roots:
        if root.plugins or _root_mounted(result, root):
            continue
        why = f"not run: the root filesystem of {root.device} could not be mounted"
        # The inventory of that root is unknown, not empty; and each selected check.
        for name in ("inventory", *checks):
            root.plugins.append(PluginStatus(name, PluginState.FAILED.value, why))
    if "antivirus" in checks and "antivirus" not in result.sections:
        # The section is always there when antivirus was selected: here it never ran.
        result.sections["antivirus"] = not_run_section(
            "not_run", detail="antivirus did not run on any filesystem of this image"
        )


def not_run_section(reason: str, files: int = 0, detail: str = "") -> dict[str, Any]:
    """An antivirus section for a scan that never reached the engine."""
    counts = {reason: files} if files else {}
    return {
        "files_total": files,
        "files_scanned": 0,
        "files_from_cache": 0,
        "files_hash_matched": 0,
        "files_out_of_scope": 0,
        "files_streamed": 0,
        "bytes_streamed": 0,
        "bytes_read": 0,
        "detections": 0,
        "not_scanned": {"counts": counts, "paths": [], "more": files},
        "status": "incomplete",
        "incomplete_reasons": [reason],
        **({"detail": bound(detail)} if detail else {}),
    }


def _bound_errors(errors: list[str]) -> list[str]:
    out = [bound(e) for e in errors[:ERRORS_MAX]]
    if len(errors) > ERRORS_MAX:
        out.append(f"... and {len(errors) - ERRORS_MAX} more problems")
    return out


def _statuses(root: RootResult) -> dict[str, Any]:
    return {"device": root.device, "plugins": [to_jsonable(p) for p in root.plugins]}


def finalize_image(result: ImageResult, checks: Iterable[str] = ()) -> None:
    """Image status and ``errors[]`` from its plugins' statuses (after the scan, in place).

    ``ok`` becomes ``partial`` when a plugin did not complete; ``no_os`` stays (its data
    volumes were walked; ``errors[]`` and the exit code tell what did not complete);
    ``error`` stays. Every error line is bounded.
    """
    if result.status != ImageStatus.ERROR:
        _not_run(result, tuple(checks))
        # Only what incomplete_plugins reads (packages and findings may be thousands).
        doc: dict[str, Any] = {
            "status": result.status.value,
            "roots": [_statuses(r) for r in result.roots],
            "sections": {
                "data_volumes": [_statuses(v) for v in result.sections.get("data_volumes") or []],
                "antivirus": result.sections.get("antivirus"),
            },
        }
        _apply(result.errors, doc)
        if doc["status"] != result.status.value:
            result.status = ImageStatus(str(doc["status"]))
    result.errors[:] = _bound_errors(result.errors)
    for fs in result.filesystems:
        if fs.error:
            fs.error = bound(fs.error)
    for entry in result.not_scanned:
        for key, value in entry.items():
            entry[key] = bound(value)


def finalize_image_dict(image: dict[str, Any]) -> None:
    """:func:`finalize_image` for a stored, JSON-able image (the nightly's offline re-check)."""
    errors = [str(e) for e in image.get("errors") or []]
    _apply(errors, image)
    image["errors"] = _bound_errors(errors)


def _apply(errors: list[str], image: dict[str, Any]) -> None:
    incomplete = incomplete_plugins(image)
    for inc in incomplete:
        line = inc.message()
        if line not in errors:
            errors.append(line)
    if incomplete and image.get("status") == ImageStatus.OK.value:
        image["status"] = ImageStatus.PARTIAL.value


# --------------------------------------------------------------------------------------
# The exit code of a run (``vmscan scan`` and ``vmscan nightly`` alike)


def exit_code(doc: ReportDoc | Mapping[str, Any], fail_on: str | None) -> int:
    """2: an image could not be scanned, or a selected check did not complete on one;
    else 1: a finding at or above *fail_on*; else 0."""
    report = ReportDoc.of(doc)
    if any(i.status is ImageStatus.ERROR or incomplete_plugins(i) for i in report.images):
        return EXIT_IMAGE_ERROR
    if fail_on:
        limit = Severity(fail_on).rank
        for img in report.images:
            if any(f.rank >= limit for _, f in img.findings()):
                return EXIT_FINDINGS
    return EXIT_OK


__all__ = [
    "ERRORS_MAX",
    "EXIT_FINDINGS",
    "EXIT_IMAGE_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "IMAGE_ERROR_RULE",
    "INCOMPLETE_RULE",
    "REASON_LIMIT",
    "Incomplete",
    "Info",
    "PluginState",
    "bound",
    "exit_code",
    "finalize_image",
    "finalize_image_dict",
    "incomplete_messages",
    "incomplete_plugins",
    "info",
    "join_notes",
    "not_run_section",
    "plugin_status",
    "relabel",
]
