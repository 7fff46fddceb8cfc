"""OSV advisories: validate, import (zip or folder), load, and match installed packages."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmscan.errors import VmscanError
from vmscan.model import OSInfo, Package
from vmscan.versions import COMPARATORS, scheme_for_ecosystem

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
#: One OSV record larger than this is refused (real ones are a few KiB).
RECORD_LIMIT = 4 * 1024 * 1024
#: Caps on an imported zip: member count and total uncompressed size.
ZIP_MAX_MEMBERS = 500_000
ZIP_MAX_TOTAL = 4 * 1024 * 1024 * 1024

_TIMESTAMP_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$")
_SEVERITY_TYPES = {"CVSS_V2", "CVSS_V3", "CVSS_V4", "Ubuntu"}
_RANGE_TYPES = {"GIT", "SEMVER", "ECOSYSTEM"}
_EVENT_KEYS = {"introduced", "fixed", "last_affected", "limit"}
_REFERENCE_TYPES = {
    "ADVISORY",
    "ARTICLE",
    "DETECTION",
    "DISCUSSION",
    "REPORT",
    "FIX",
    "INTRODUCED",
    "GIT",
    "PACKAGE",
    "EVIDENCE",
    "WEB",
}
_GIT_HASH_RE = re.compile(r"^(0|[a-f0-9]{40}|[a-f0-9]{64})$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class AdvisoryError(VmscanError):
    """An advisory feed cannot be imported at all."""


# ---------------------------------------------------------------------------
# Validation (the OSV schema's required fields and types)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _check_severity(sev: Any, where: str, problems: list[str]) -> None:
    if sev is None:
        return
    if not isinstance(sev, list):
        problems.append(f"{where}: must be an array")
        return
    for k, s in enumerate(sev):
        if not isinstance(s, dict):
            problems.append(f"{where}[{k}]: must be an object")
            continue
        if s.get("type") not in _SEVERITY_TYPES:
            problems.append(f"{where}[{k}].type: must be one of {sorted(_SEVERITY_TYPES)}")
        if not isinstance(s.get("score"), str):
            problems.append(f"{where}[{k}].score: required string")


def validate_record(rec: Any) -> list[str]:
    """Problems of one OSV record (empty when valid), per the OSV schema's rules."""
    problems: list[str] = []
    if not isinstance(rec, dict):
        return ["record is not a JSON object"]
    if not isinstance(rec.get("id"), str) or not rec.get("id"):
        problems.append("id: required non-empty string")
    for key in ("modified",):
        if key not in rec:
            problems.append(f"{key}: required")
    for key in ("modified", "published", "withdrawn"):
        if key in rec and (not isinstance(rec[key], str) or not _TIMESTAMP_RE.match(rec[key])):
            problems.append(f"{key}: must be an RFC 3339 UTC timestamp")
    for key in ("schema_version", "summary", "details"):
        if key in rec and not isinstance(rec[key], str):
            problems.append(f"{key}: must be a string")
    for key in ("aliases", "related", "upstream"):
        if key in rec and rec[key] is not None and not _is_str_list(rec[key]):
            problems.append(f"{key}: must be an array of strings")
    _check_severity(rec.get("severity"), "severity", problems)
    if "database_specific" in rec and not isinstance(rec["database_specific"], dict):
        problems.append("database_specific: must be an object")
    refs = rec.get("references")
    if refs is not None:
        if not isinstance(refs, list):
            problems.append("references: must be an array")
        else:
            for k, r in enumerate(refs):
                if (
                    not isinstance(r, dict)
                    or r.get("type") not in _REFERENCE_TYPES
                    or not isinstance(r.get("url"), str)
                ):
                    problems.append(f"references[{k}]: needs a known type and a url")
    credits = rec.get("credits")
    if credits is not None and (
        not isinstance(credits, list)
        or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in credits)
    ):
        problems.append("credits: must be an array of objects with a name")
    affected = rec.get("affected")
    if affected is None:
        return problems
    if not isinstance(affected, list):
        problems.append("affected: must be an array")
        return problems
    for a_k, aff in enumerate(affected):
        where = f"affected[{a_k}]"
        if not isinstance(aff, dict):
            problems.append(f"{where}: must be an object")
            continue
        pkg = aff.get("package")
        if pkg is not None:
            if not isinstance(pkg, dict):
                problems.append(f"{where}.package: must be an object")
            else:
                for key in ("ecosystem", "name"):
                    if not isinstance(pkg.get(key), str):
                        problems.append(f"{where}.package.{key}: required string")
                if "purl" in pkg and not isinstance(pkg["purl"], str):
                    problems.append(f"{where}.package.purl: must be a string")
        _check_severity(aff.get("severity"), f"{where}.severity", problems)
        if "versions" in aff and not _is_str_list(aff["versions"]):
            problems.append(f"{where}.versions: must be an array of strings")
        for key in ("ecosystem_specific", "database_specific"):
            if key in aff and not isinstance(aff[key], dict):
                problems.append(f"{where}.{key}: must be an object")
        ranges = aff.get("ranges")
        if ranges is None:
            continue
        if not isinstance(ranges, list):
            problems.append(f"{where}.ranges: must be an array")
            continue
        for r_k, rng in enumerate(ranges):
            rwhere = f"{where}.ranges[{r_k}]"
            if not isinstance(rng, dict):
                problems.append(f"{rwhere}: must be an object")
                continue
            rtype = rng.get("type")
            if rtype not in _RANGE_TYPES:
                problems.append(f"{rwhere}.type: must be one of {sorted(_RANGE_TYPES)}")
            if rtype == "GIT" and not isinstance(rng.get("repo"), str):
                problems.append(f"{rwhere}.repo: required for GIT ranges")
            events = rng.get("events")
            if not isinstance(events, list) or not events:
                problems.append(f"{rwhere}.events: required non-empty array")
                continue
            kinds: set[str] = set()
            for e_k, ev in enumerate(events):
                if (
                    not isinstance(ev, dict)
                    or len(ev) != 1
                    or next(iter(ev)) not in _EVENT_KEYS
                    or not isinstance(next(iter(ev.values())), str)
                ):
                    problems.append(
                        f"{rwhere}.events[{e_k}]: must be one of "
                        "{introduced|fixed|last_affected|limit: string}"
                    )
                    continue
                kind, value = next(iter(ev.items()))
                kinds.add(kind)
                if rtype == "GIT" and not _GIT_HASH_RE.match(value):
                    problems.append(f"{rwhere}.events[{e_k}]: GIT events need full hashes")
            if "introduced" not in kinds:
                problems.append(f"{rwhere}.events: must contain an introduced event")
            if "fixed" in kinds and "last_affected" in kinds:
                problems.append(f"{rwhere}.events: fixed and last_affected are exclusive")
    return problems


# ---------------------------------------------------------------------------
# Severity


def _roundup(x: float) -> float:
    """CVSS 3.1 Roundup: the smallest number with one decimal >= x."""
    i = round(x * 100000)
    if i % 10000 == 0:
        return i / 100000.0
    return (math.floor(i / 10000) + 1) / 10.0


_CVSS3_W = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
}


def cvss3_base_score(vector: str) -> float | None:
    """Base score of a CVSS v3.0/v3.1 vector, None if it is not one."""
    parts = vector.split("/")
    if not parts or not parts[0].startswith("CVSS:3"):
        return None
    m: dict[str, str] = {}
    for p in parts[1:]:
        k, _, v = p.partition(":")
        m[k] = v
    try:
        scope_changed = m["S"] == "C"
        if m["S"] not in ("U", "C"):
            return None
        pr = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}[
            m["PR"]
        ]
        av, ac, ui = _CVSS3_W["AV"][m["AV"]], _CVSS3_W["AC"][m["AC"]], _CVSS3_W["UI"][m["UI"]]
        c, i, a = (_CVSS3_W["C"][m[k]] for k in ("C", "I", "A"))
    except KeyError:
        return None
    iss = 1 - (1 - c) * (1 - i) * (1 - a)
    impact = (7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15) if scope_changed else 6.42 * iss
    exploit = 8.22 * av * ac * pr * ui
    if impact <= 0:
        return 0.0
    if scope_changed:
        return _roundup(min(1.08 * (impact + exploit), 10))
    return _roundup(min(impact + exploit, 10))


def rating_from_score(score: float) -> str:
    """CVSS v3 qualitative rating."""
    if score == 0:
        return "info"
    if score < 4.0:
        return "low"
    if score < 7.0:
        return "medium"
    if score < 9.0:
        return "high"
    return "critical"


_WORDS = {
    "critical": "critical",
    "important": "high",
    "high": "high",
    "moderate": "medium",
    "medium": "medium",
    "low": "low",
    "negligible": "low",
    "unimportant": "low",
    "info": "info",
}


def _word_rating(word: Any) -> str | None:
    if not isinstance(word, str):
        return None
    return _WORDS.get(word.strip().lower())


def severity_of(
    rec: dict[str, Any], affected: dict[str, Any] | None = None
) -> tuple[str, float | None]:
    """(rating, CVSS score or None) from the record: CVSS, Ubuntu rating, distro rating."""
    best: tuple[str, float | None] | None = None
    for sev in ((affected or {}).get("severity") or []) + (rec.get("severity") or []):
        if not isinstance(sev, dict):
            continue
        score_s = sev.get("score")
        if not isinstance(score_s, str):
            continue
        if sev.get("type") == "CVSS_V3":
            score = cvss3_base_score(score_s)
            if score is not None and (best is None or best[1] is None or score > best[1]):
                best = (rating_from_score(score), score)
        elif sev.get("type") == "Ubuntu" and best is None:
            w = _word_rating(score_s)
            if w:
                best = (w, None)
    if best:
        return best
    for holder in (
        (affected or {}).get("ecosystem_specific"),
        (affected or {}).get("database_specific"),
        rec.get("database_specific"),
    ):
        if isinstance(holder, dict):
            for key in ("severity", "urgency"):
                w = _word_rating(holder.get(key))
                if w:
                    return w, None
    return "unknown", None


# ---------------------------------------------------------------------------
# Loaded advisories


@dataclass(frozen=True)
class AffectedPackage:
    """One ``affected`` entry reduced to what matching needs (ECOSYSTEM ranges)."""

    ecosystem: str
    name: str
    ranges: tuple[tuple[tuple[str, str], ...], ...]
    versions: tuple[str, ...]
    severity: str
    score: float | None


@dataclass(frozen=True)
class Advisory:
    """One OSV record."""

    id: str
    summary: str
    aliases: tuple[str, ...]
    severity: str
    score: float | None
    published: str
    modified: str
    withdrawn: str
    references: tuple[str, ...]
    affected: tuple[AffectedPackage, ...]
    source: str = ""


def parse_record(rec: dict[str, Any], source: str = "") -> Advisory:
    """An :class:`Advisory` from a record that passed :func:`validate_record`."""
    sev, score = severity_of(rec)
    affected: list[AffectedPackage] = []
    for aff in rec.get("affected") or []:
        pkg = aff.get("package")
        if not isinstance(pkg, dict):
            continue
        ranges = tuple(
            tuple(next(iter(ev.items())) for ev in rng["events"])
            for rng in aff.get("ranges") or []
            if rng.get("type") == "ECOSYSTEM"
        )
        a_sev, a_score = severity_of(rec, aff)
        affected.append(
            AffectedPackage(
                ecosystem=pkg["ecosystem"],
                name=pkg["name"],
                ranges=ranges,
                versions=tuple(aff.get("versions") or ()),
                severity=a_sev,
                score=a_score,
            )
        )
    summary = rec.get("summary") or (rec.get("details") or "").strip().split("\n", 1)[0]
    return Advisory(
        id=rec["id"],
        summary=summary[:300],
        aliases=tuple(rec.get("aliases") or ()),
        severity=sev,
        score=score,
        published=rec.get("published", ""),
        modified=rec.get("modified", ""),
        withdrawn=rec.get("withdrawn", ""),
        references=tuple(
            r["url"] for r in rec.get("references") or [] if isinstance(r, dict) and "url" in r
        ),
        affected=tuple(affected),
        source=source,
    )


def _iter_json_files(base: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".json") and name != MANIFEST:
                yield Path(dirpath) / name


def feed_digest(directory: Path) -> str:
    """sha256 over the relative paths and contents of every record file, in a stable order."""
    h = hashlib.sha256()
    directory = Path(directory)
    for path in _iter_json_files(directory):
        rel = path.relative_to(directory).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Ecosystems


@dataclass(frozen=True)
class Ecosystem:
    """A distro release as OSV names it: base (``Debian``) and release (``12``)."""

    base: str
    release: str

    def matches(self, osv_ecosystem: str) -> bool:
        """True when an advisory's ecosystem string covers this release."""
        base, _, rest = osv_ecosystem.partition(":")
        if base.strip().lower() != self.base.lower():
            return False
        if not self.release:
            return False
        if self.base in ("Debian", "Mariner", "Azure Linux"):
            return rest.strip() == self.release
        if self.base == "Alpine":
            return rest.strip().lstrip("v") == self.release
        if self.base == "Ubuntu":
            # Ubuntu:22.04:LTS, Ubuntu:Pro:18.04:LTS, Ubuntu:Pro:FIPS:20.04:LTS
            return self.release in rest.split(":")
        if self.base in ("AlmaLinux", "Rocky Linux"):
            return rest.strip().split(".")[0] == self.release.split(".")[0]
        if self.base == "Red Hat":
            # Red Hat:enterprise_linux:9::appstream, Red Hat:rhel_eus:9.2::baseos
            fields = rest.split(":")
            rel = fields[1] if len(fields) > 1 else ""
            if "." in rel:
                return rel == self.release
            return rel == self.release.split(".")[0]
        if self.base in ("SUSE", "openSUSE"):
            m = re.search(r"(\d+)(?:\s*SP(\d+)|\.(\d+))?", rest)
            if not m:
                return False
            major, minor = m.group(1), m.group(2) or m.group(3)
            g_major, _, g_minor = self.release.partition(".")
            return major == g_major and (minor is None or minor == (g_minor or "0"))
        return rest.strip() == self.release


_BASES = {
    "debian": "Debian",
    "ubuntu": "Ubuntu",
    "alpine": "Alpine",
    "alpinelinux": "Alpine",  # libguestfs' distro name
    "rhel": "Red Hat",
    "redhat-based": "Red Hat",
    "almalinux": "AlmaLinux",
    "rocky": "Rocky Linux",
    "mariner": "Mariner",
    "azurelinux": "Azure Linux",
    "sles": "SUSE",
    "sled": "SUSE",
    "sles_sap": "SUSE",
    "opensuse-leap": "openSUSE",
    "opensuse": "openSUSE",
}


def guest_ecosystem(os_info: OSInfo) -> Ecosystem | None:
    """The OSV ecosystem of a Linux guest, None when OSV has none for it."""
    ident = (os_info.os_release_id or os_info.distro or "").lower()
    base = _BASES.get(ident)
    if base is None:
        return None
    ver = os_info.version_id or (
        f"{os_info.major_version}.{os_info.minor_version}" if os_info.major_version else ""
    )
    if base == "Debian":
        ver = ver.split(".")[0]
    elif base == "Alpine":
        ver = ".".join(ver.split(".")[:2])
    elif base == "Mariner" and ver and "." not in ver:
        ver = f"{ver}.0"
    return Ecosystem(base, ver)


def package_names_for(eco: Ecosystem, pkg: Package) -> list[tuple[str, str]]:
    """(advisory package name, version to compare) candidates for one installed package.

    Debian, Ubuntu and Alpine advisories name source packages; rpm-based feeds name
    binary packages (and sometimes source ones), so both are tried.
    """
    if eco.base in ("Debian", "Ubuntu"):
        return [(pkg.source_name or pkg.name, pkg.source_version or pkg.version)]
    if eco.base == "Alpine":
        return [(pkg.source_name or pkg.name, pkg.version)]
    out = [(pkg.name, pkg.version)]
    if pkg.source_name and pkg.source_name != pkg.name:
        out.append((pkg.source_name, pkg.version))
    return out


# ---------------------------------------------------------------------------
# Matching


@dataclass(frozen=True)
class Match:
    """One advisory that applies to one installed package."""

    advisory: Advisory
    affected: AffectedPackage
    package: Package
    compared_version: str
    fixed_version: str | None

    @property
    def status(self) -> str:
        return "fixable" if self.fixed_version else "unfixed"


def _affected_by_range(
    version: str, events: tuple[tuple[str, str], ...], cmp: Callable[[str, str], int]
) -> tuple[bool, str | None]:
    """(affected?, the fixed version that ends the range holding *version*)."""

    def key(ev: tuple[str, str]) -> tuple[int, str]:
        return (0, "") if ev == ("introduced", "0") else (1, ev[1])

    def cmp_ev(a: tuple[str, str], b: tuple[str, str]) -> int:
        ka, kb = key(a), key(b)
        if ka[0] != kb[0]:
            return ka[0] - kb[0]
        return cmp(ka[1], kb[1]) if ka[0] else 0

    ordered = sorted(events, key=functools.cmp_to_key(cmp_ev))
    affected = False
    for n, (kind, value) in enumerate(ordered):
        if kind == "introduced":
            if value == "0" or cmp(version, value) >= 0:
                affected = True
        elif kind == "fixed":
            if cmp(version, value) >= 0:
                affected = False
        elif kind == "last_affected":
            if cmp(version, value) > 0:
                affected = False
        elif kind == "limit" and cmp(version, value) >= 0:
            affected = False
        if affected and n + 1 < len(ordered):
            nxt_kind, nxt_value = ordered[n + 1]
            if nxt_kind == "fixed" and cmp(version, nxt_value) < 0:
                return True, nxt_value
    if affected:
        return True, None
    return False, None


@dataclass
class AdvisoryDB:
    """Advisories indexed by (lower-case ecosystem base, package name)."""

    advisories: list[Advisory] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digest: str = ""
    _index: dict[tuple[str, str], list[tuple[Advisory, AffectedPackage]]] = field(
        default_factory=dict
    )

    def add(self, adv: Advisory) -> None:
        self.advisories.append(adv)
        for aff in adv.affected:
            base = aff.ecosystem.split(":", 1)[0].strip().lower()
            self._index.setdefault((base, aff.name), []).append((adv, aff))

    def match(self, eco: Ecosystem, packages: Iterable[Package]) -> tuple[list[Match], list[str]]:
        """Matches for installed packages in the guest's ecosystem, plus notes."""
        notes: list[str] = []
        out: list[Match] = []
        for pkg in packages:
            seen: set[str] = set()
            for name, version in package_names_for(eco, pkg):
                for adv, aff in self._index.get((eco.base.lower(), name), []):
                    if adv.id in seen or adv.withdrawn or not eco.matches(aff.ecosystem):
                        continue
                    scheme = scheme_for_ecosystem(aff.ecosystem)
                    if scheme is None:
                        continue
                    cmp = COMPARATORS[scheme]
                    hit, fixed = False, None
                    try:
                        if version in aff.versions:
                            hit = True
                        for events in aff.ranges:
                            r_hit, r_fixed = _affected_by_range(version, events, cmp)
                            if r_hit:
                                hit = True
                                fixed = r_fixed or fixed
                    except (ValueError, TypeError) as e:
                        notes.append(f"{adv.id}: cannot compare {version!r}: {e}")
                        continue
                    if hit:
                        seen.add(adv.id)
                        out.append(Match(adv, aff, pkg, version, fixed))
        return out, notes


def load_db(directory: Path) -> AdvisoryDB:
    """Every valid OSV record under *directory*; broken ones become notes."""
    db = AdvisoryDB()
    directory = Path(directory)
    if not directory.is_dir():
        db.notes.append(f"advisory folder {directory} does not exist")
        return db
    for path in _iter_json_files(directory):
        rel = path.relative_to(directory).as_posix()
        try:
            if path.stat().st_size > RECORD_LIMIT:
                db.notes.append(f"{rel}: larger than {RECORD_LIMIT} bytes, skipped")
                continue
            rec = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            db.notes.append(f"{rel}: not JSON: {e}")
            continue
        problems = validate_record(rec)
        if problems:
            db.notes.append(f"{rel}: invalid OSV record: {'; '.join(problems[:3])}")
            continue
        db.add(parse_record(rec, rel))
    db.digest = feed_digest(directory)
    return db


_CACHE: dict[tuple[str, str], AdvisoryDB] = {}


def _stat_digest(directory: Path) -> str:
    """Cheap change detector: names, sizes and mtimes of the record files."""
    h = hashlib.sha256()
    for path in _iter_json_files(directory):
        try:
            st = path.stat()
        except OSError:
            continue
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_db(directory: Path) -> AdvisoryDB:
    """:func:`load_db` memoised per folder until a record file changes (one load per process)."""
    directory = Path(directory).resolve()
    key = (str(directory), _stat_digest(directory) if directory.is_dir() else "")
    db = _CACHE.get(key)
    if db is None:
        db = load_db(directory)
        _CACHE.clear()
        _CACHE[key] = db
    return db


# ---------------------------------------------------------------------------
# Import


@dataclass
class ImportReport:
    """What :func:`import_feed` did."""

    source: str
    dest: str
    imported: int = 0
    rejected: list[str] = field(default_factory=list)
    digest: str = ""
    feed: str = ""


def _records_from_dir(src: Path) -> Iterator[tuple[str, bytes | None, str]]:
    for path in _iter_json_files(src):
        rel = path.relative_to(src).as_posix()
        try:
            if path.stat().st_size > RECORD_LIMIT:
                yield rel, None, f"larger than {RECORD_LIMIT} bytes"
                continue
            yield rel, path.read_bytes(), ""
        except OSError as e:
            yield rel, None, str(e)


def _records_from_zip(src: Path) -> Iterator[tuple[str, bytes | None, str]]:
    try:
        zf = zipfile.ZipFile(src)
    except (OSError, zipfile.BadZipFile) as e:
        raise AdvisoryError(f"{src}: not a readable zip file: {e}") from e
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and i.filename.endswith(".json")]
        if len(infos) > ZIP_MAX_MEMBERS:
            raise AdvisoryError(f"{src}: {len(infos)} members is over {ZIP_MAX_MEMBERS}")
        total = 0
        for info in infos:
            if info.file_size > RECORD_LIMIT:
                yield info.filename, None, f"larger than {RECORD_LIMIT} bytes"
                continue
            total += info.file_size
            if total > ZIP_MAX_TOTAL:
                raise AdvisoryError(f"{src}: uncompressed size over {ZIP_MAX_TOTAL} bytes")
            try:
                with zf.open(info) as fh:
                    # Never trust the declared size: read at most the limit plus one byte.
                    data = fh.read(RECORD_LIMIT + 1)
            except (OSError, zipfile.BadZipFile, ValueError) as e:
                yield info.filename, None, f"cannot extract: {e}"
                continue
            if len(data) > RECORD_LIMIT:
                yield info.filename, None, f"larger than {RECORD_LIMIT} bytes"
                continue
            yield info.filename, data, ""


def _read_manifest(dest: Path) -> dict[str, Any]:
    try:
        data = json.loads((dest / MANIFEST).read_text())
        if isinstance(data, dict) and isinstance(data.get("feeds"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"feeds": {}}


def import_feed(src: Path, dest_dir: Path) -> ImportReport:
    """Validate and copy an OSV dump (zip or folder) into ``dest_dir/<feed name>/``.

    Broken records are rejected with a message and the rest is kept. The feed's folder
    is replaced atomically; ``MANIFEST.json`` in *dest_dir* records, per feed, the
    source, the record count, the rejected count and the sha256 digest.
    """
    src, dest_dir = Path(src), Path(dest_dir)
    if src.is_dir():
        records = _records_from_dir(src)
    elif src.is_file():
        records = _records_from_zip(src)
    else:
        raise AdvisoryError(f"{src}: no such file or folder")
    feed = _SAFE_NAME_RE.sub("_", src.name.removesuffix(".zip")).strip("._") or "feed"
    report = ImportReport(source=str(src), dest=str(dest_dir / feed), feed=feed)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{feed}-", dir=dest_dir))
    try:
        used: set[str] = set()
        for name, data, err in records:
            if data is None:
                report.rejected.append(f"{name}: {err}")
                continue
            try:
                rec = json.loads(data)
            except ValueError as e:
                report.rejected.append(f"{name}: not JSON: {e}")
                continue
            problems = validate_record(rec)
            if problems:
                report.rejected.append(f"{name}: {'; '.join(problems[:5])}")
                continue
            fname = _SAFE_NAME_RE.sub("_", rec["id"]).strip("._") or "record"
            while fname in used:
                fname += "_"
            used.add(fname)
            (tmp / f"{fname}.json").write_bytes(data)
            report.imported += 1
        report.digest = feed_digest(tmp)
        final = dest_dir / feed
        old = None
        if final.exists():
            old = dest_dir / f".{feed}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = _read_manifest(dest_dir)
    manifest["feeds"][feed] = {
        "source": str(src),
        "imported_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": report.imported,
        "rejected": len(report.rejected),
        "sha256": report.digest,
    }
    manifest["sha256"] = feed_digest(dest_dir)
    tmp_manifest = dest_dir / f".{MANIFEST}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp_manifest.replace(dest_dir / MANIFEST)
    for msg in report.rejected[:20]:
        log.warning("rejected OSV record %s", msg)
    return report


def default_advisories_dir(options: dict[str, Any] | None = None) -> Path:
    """``options["advisories_dir"]``, else ``$VMSCAN_SIGNATURES/advisories``, else the
    ``signatures_dir`` option's, else the repository's ``signatures/advisories``."""
    options = options or {}
    if options.get("advisories_dir"):
        return Path(options["advisories_dir"])
    env = os.environ.get("VMSCAN_SIGNATURES")
    if env:
        return Path(env) / "advisories"
    if options.get("signatures_dir"):
        return Path(options["signatures_dir"]) / "advisories"
    return Path(__file__).resolve().parent.parent / "signatures" / "advisories"
