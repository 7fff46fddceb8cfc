"""OSV records: validation with ``jsonschema`` against vmscan's OSV schema, and parsing.

The schema is ``vmscan/schema/osv-record.schema.json``: vmscan's own JSON Schema (2020-12)
description of the OSV specification (https://ossf.github.io/osv-schema/), written by the
vmscan authors for the fields vmscan reads and the constraints the specification puts on
them. It is not a copy of the OpenSSF ``validation/schema.json``; tests/test_osv_schema.py
shows that both agree on every real record of the test corpus and on a set of broken ones,
except for the deliberate differences in :data:`SCHEMA_DIFFERENCES`.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

import jsonschema

from vmscan.advisories.model import (
    REFERENCES_LIMIT,
    Advisory,
    Affected,
    FeedKind,
    bounded,
)
from vmscan.advisories.severity import osv_rating

#: One OSV record larger than this is refused (real ones are a few KiB, big RHSAs ~1 MiB).
RECORD_LIMIT = 8 * 1024 * 1024
#: Problems reported per rejected record.
PROBLEMS_LIMIT = 3


#: Where vmscan's schema knowingly differs from the published one, and why.
SCHEMA_DIFFERENCES = {
    "timestamp calendar": (
        "modified/published/withdrawn must have a real month, day, hour, minute and second "
        "(2024-13-01T00:00:00Z is refused). The published schema leaves that to "
        '"format": "date-time", which jsonschema checks only when the optional '
        "rfc3339-validator package is installed; vmscan's check does not depend on it."
    ),
    "ecosystem names": (
        "affected[].package.ecosystem is any non-empty string. The published schema lists "
        "the known ecosystems; vmscan matches only ecosystems it knows anyway, and refusing "
        "a whole record because a feed names an ecosystem newer than the schema would lose "
        "the record's other entries."
    ),
}


@functools.cache
def schema() -> dict[str, Any]:
    """vmscan's OSV record schema (JSON Schema draft 2020-12)."""
    text = resources.files("vmscan").joinpath("schema/osv-record.schema.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER)


def validate_record(rec: Any) -> list[str]:
    """Problems of one record against the OSV schema (empty when valid), bounded."""
    problems = []
    for err in sorted(_validator().iter_errors(rec), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "record"
        problems.append(bounded(f"{where}: {err.message}", 200))
        if len(problems) >= PROBLEMS_LIMIT:
            break
    return problems


def cve_ids(rec: dict[str, Any]) -> tuple[str, ...]:
    """Aliases of a record: its ``aliases`` and ``upstream``, and CVE ids in ``related``.

    AlmaLinux names the CVEs of an ALSA in ``related``, Debian's DLAs in ``upstream``.
    """
    out: list[str] = []
    for key in ("aliases", "upstream"):
        for a in rec.get(key) or []:
            if isinstance(a, str) and a not in out:
                out.append(a)
    for a in rec.get("related") or []:
        if isinstance(a, str) and a.startswith("CVE-") and a not in out:
            out.append(a)
    return tuple(out[:200])


#: ``perl:5.32`` in "Moderate: perl:5.32 security update" (AlmaLinux, Rocky, Red Hat name
#: the module streams an advisory is for in its summary; the NEVRA of a module build does
#: not carry the stream).
_STREAM_RE = re.compile(r"(?<![\w.+:-])([a-z][a-z0-9_.+-]*):([A-Za-z0-9_.+-]*[A-Za-z0-9])(?![\w:])")
_MODULE_BUILD_RE = re.compile(r"\.module[_+]el\d")


def module_streams(summary: str) -> tuple[str, ...]:
    """The ``module:stream`` names in an advisory summary (at most 8)."""
    return tuple(dict.fromkeys(f"{m}:{st}" for m, st in _STREAM_RE.findall(summary[:300])))[:8]


def _name_kind(ecosystem: str, purl: str) -> str:
    base = ecosystem.split(":", 1)[0].strip().lower()
    if base in ("debian", "ubuntu", "alpine") or "arch=source" in purl:
        return "source"
    return "any"


def parse_record(rec: dict[str, Any], feed: str) -> Advisory:
    """An :class:`Advisory` from a record that passed :func:`validate_record`."""
    affected: list[Affected] = []
    streams = module_streams(str(rec.get("summary") or ""))
    for aff in rec.get("affected") or []:
        pkg = aff.get("package")
        if not isinstance(pkg, dict):
            continue
        ranges = tuple(
            tuple(next(iter(ev.items())) for ev in rng["events"])
            for rng in aff.get("ranges") or []
            if rng.get("type") == "ECOSYSTEM"
        )
        fixes = [v for events in ranges for k, v in events if k == "fixed"]
        extra: dict[str, Any] = {}
        if streams and any(_MODULE_BUILD_RE.search(v) for v in fixes):
            # Only module builds are tied to a stream; non-module entries stay free.
            extra["module_streams"] = list(streams)
        affected.append(
            Affected(
                ecosystem=pkg["ecosystem"],
                name=pkg["name"],
                ranges=ranges,
                versions=tuple(aff.get("versions") or ()),
                name_kind=_name_kind(pkg["ecosystem"], str(pkg.get("purl", ""))),
                rating=osv_rating(rec, aff),
                extra=extra,
            )
        )
    summary = rec.get("summary") or (rec.get("details") or "").strip().split("\n", 1)[0]
    refs = tuple(
        str(r["url"])[:500]
        for r in (rec.get("references") or [])[:REFERENCES_LIMIT]
        if isinstance(r, dict) and "url" in r
    )
    return Advisory(
        id=rec["id"],
        feed=feed,
        kind=FeedKind.OSV,
        summary=bounded(summary),
        aliases=cve_ids(rec),
        published=rec.get("published", ""),
        modified=rec.get("modified", ""),
        withdrawn=rec.get("withdrawn", ""),
        references=refs,
        rating=osv_rating(rec),
        affected=tuple(affected),
    )


def looks_like_osv(data: Any) -> bool:
    """True for a JSON object shaped like an OSV record (``id`` and ``modified``)."""
    return isinstance(data, dict) and "id" in data and "modified" in data
