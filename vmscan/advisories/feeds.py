"""``vmscan signatures import``: detect a feed's format, validate it, store it, compile.

Accepted: an OSV dump (``all.zip`` of osv.dev, or a folder of OSV JSON records), one OSV
record, the Debian Security Tracker JSON, an Alpine secdb JSON, a Windows build table
(vmscan's, or a ``windows-versions.json`` snapshot), a Windows per-CVE table (MSRC CVRF
XML or a CVE/KB/FixedBuild CSV); ``.xz`` and ``.gz`` files are read decompressed. Broken
records are rejected with a reason and the rest is kept. Import is incremental: a file
whose bytes (a folder: whose records) were already imported is skipped by digest.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
import lzma
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmscan.advisories import alpine_secdb, csaf, debian_tracker, osv, wesng, windows
from vmscan.advisories.index import (
    DATA_FILE,
    DATA_LIMIT,
    FEED_META,
    MANIFEST,
    content_digest,
    ensure_index,
    feed_dirs,
    read_meta,
)
from vmscan.advisories.model import AdvisoryError, FeedKind, ParseResult

log = logging.getLogger(__name__)

ZIP_MAX_MEMBERS = 2_000_000
ZIP_MAX_TOTAL = 8 * 1024 * 1024 * 1024
REJECTED_KEPT = 50
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ImportReport:
    """What one import did."""

    source: str
    feed: str = ""
    kind: str = ""
    dest: str = ""
    imported: int = 0
    rejected: list[str] = field(default_factory=list)
    rejected_count: int = 0
    skipped: bool = False
    reason: str = ""
    digest: str = ""
    date: str = ""
    index: str = ""
    index_digest: str = ""


def safe_name(text: str) -> str:
    """A file-system-safe feed name."""
    return _SAFE_NAME_RE.sub("_", text).strip("._")[:80] or "feed"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _opener(path: Path) -> Any:
    if path.suffix == ".xz":
        return lzma.open
    if path.suffix == ".gz":
        return gzip.open
    return open


def _read_limited(path: Path, limit: int = DATA_LIMIT) -> bytes:
    """File bytes, decompressed for .xz/.gz, never more than *limit*."""
    opener = _opener(path)
    try:
        with opener(path, "rb") as fh:
            data: bytes = fh.read(limit + 1)
    except (OSError, lzma.LZMAError, EOFError) as e:
        raise AdvisoryError(f"{path}: cannot be read: {e}") from e
    if len(data) > limit:
        raise AdvisoryError(f"{path}: more than {limit} bytes")
    return data


def _source_digest(src: Path) -> str:
    h = hashlib.sha256()
    if src.is_dir():
        h.update(b"dir\0" + content_digest(src).encode())
    else:
        with open(src, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _osv_from_dir(src: Path) -> Iterator[tuple[str, bytes | None, str]]:
    for path in sorted(src.rglob("*.json")):
        rel = path.relative_to(src).as_posix()
        if path.name in (MANIFEST, FEED_META):
            continue
        try:
            if path.stat().st_size > osv.RECORD_LIMIT:
                yield rel, None, f"larger than {osv.RECORD_LIMIT} bytes"
                continue
            yield rel, path.read_bytes(), ""
        except OSError as e:
            yield rel, None, str(e)


def _osv_from_zip(src: Path) -> Iterator[tuple[str, bytes | None, str]]:
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
            if info.file_size > osv.RECORD_LIMIT:
                yield info.filename, None, f"larger than {osv.RECORD_LIMIT} bytes"
                continue
            total += info.file_size
            if total > ZIP_MAX_TOTAL:
                raise AdvisoryError(f"{src}: uncompressed size over {ZIP_MAX_TOTAL} bytes")
            try:
                with zf.open(info) as fh:
                    # Never trust the declared size: read at most the limit plus one byte.
                    data = fh.read(osv.RECORD_LIMIT + 1)
            except (OSError, zipfile.BadZipFile, ValueError) as e:
                yield info.filename, None, f"cannot extract: {e}"
                continue
            if len(data) > osv.RECORD_LIMIT:
                yield info.filename, None, f"larger than {osv.RECORD_LIMIT} bytes"
                continue
            yield info.filename, data, ""


def _lines(src: Path) -> Iterator[str]:
    """Text lines of a (possibly compressed) CSV, streamed, at most DATA_LIMIT bytes."""
    total = 0
    try:
        with _opener(src)(src, "rt", encoding="utf-8", errors="replace", newline="") as fh:
            for line in fh:
                total += len(line)
                if total > DATA_LIMIT:
                    raise AdvisoryError(f"{src}: more than {DATA_LIMIT} bytes")
                yield line
    except (OSError, lzma.LZMAError, EOFError) as e:
        raise AdvisoryError(f"{src}: cannot be read: {e}") from e


def _head(src: Path, size: int = 8192) -> bytes:
    try:
        with _opener(src)(src, "rb") as fh:
            data: bytes = fh.read(size)
    except (OSError, lzma.LZMAError, EOFError) as e:
        raise AdvisoryError(f"{src}: cannot be read: {e}") from e
    return data


def detect(src: Path) -> tuple[FeedKind, Any]:
    """(feed kind, parsed document or None for streamed sources) of an import source."""
    if src.is_dir() or zipfile.is_zipfile(src):
        return FeedKind.OSV, None
    head = _head(src)
    # CSV tables can be large (WES-NG: 136 MB): recognised by their header, streamed later.
    if wesng.looks_like_wesng(head):
        return FeedKind.WESNG, None
    if windows.looks_like_cve_csv(head):
        return FeedKind.WINDOWS_CVES, None
    raw = _read_limited(src)
    if windows.looks_like_cvrf(head):
        return FeedKind.WINDOWS_CVES, raw
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise AdvisoryError(
            f"{src}: not a feed vmscan knows (not JSON, CVRF XML or a CVE/KB CSV): {e}"
        ) from e
    if windows.looks_like_builds(data):
        return FeedKind.WINDOWS_BUILDS, data
    if alpine_secdb.looks_like_secdb(data):
        return FeedKind.ALPINE_SECDB, data
    if csaf.looks_like_csaf(data):
        return FeedKind.CSAF, data
    if osv.looks_like_osv(data):
        return FeedKind.OSV, data
    if debian_tracker.looks_like_tracker(data):
        return FeedKind.DEBIAN_TRACKER, data
    raise AdvisoryError(
        f"{src}: JSON, but none of OSV, Debian tracker, Alpine secdb, CSAF or a Windows build table"
    )


def _manifest(adv_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((adv_dir / MANIFEST).read_text())
        if isinstance(data, dict) and isinstance(data.get("feeds"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"feeds": {}}


def write_manifest(adv_dir: Path) -> None:
    """``MANIFEST.json``: a readable summary of the feed folders (the index is the truth)."""
    manifest: dict[str, Any] = {"feeds": {}}
    for feed in feed_dirs(adv_dir):
        meta = read_meta(feed)
        manifest["feeds"][feed.name] = {
            k: meta[k]
            for k in ("kind", "source", "source_sha256", "date", "imported_at", "count", "rejected")
            if k in meta
        } or {"kind": "osv", "source": "bundled folder"}
        manifest["feeds"][feed.name]["sha256"] = content_digest(feed)
    tmp = adv_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(adv_dir / MANIFEST)


def import_feed(
    src: Path, adv_dir: Path, *, name: str | None = None, date: str | None = None
) -> ImportReport:
    """Validate *src*, store it as feed ``<adv_dir>/<name>/`` and recompile the index."""
    src, adv_dir = Path(src), Path(adv_dir)
    if not src.exists():
        raise AdvisoryError(f"{src}: no such file or folder")
    stem = src.name
    for suffix in (".xz", ".gz", ".zip", ".json", ".xml", ".csv"):
        stem = stem.removesuffix(suffix)
    feed = safe_name(name or stem)
    report = ImportReport(source=str(src), feed=feed, dest=str(adv_dir / feed))
    digest = _source_digest(src)
    adv_dir.mkdir(parents=True, exist_ok=True)
    for existing in feed_dirs(adv_dir):
        if read_meta(existing).get("source_sha256") == digest:
            report.skipped = True
            report.feed = existing.name
            report.reason = f"already imported as feed {existing.name} (same sha256)"
            report.index = str(ensure_index(adv_dir))
            return report
    kind, doc = detect(src)
    report.kind = str(kind)
    tmp = Path(tempfile.mkdtemp(prefix=f".{feed}-", dir=adv_dir))
    try:
        res = _store(kind, src, doc, feed, tmp)
        report.imported = len(res.advisories) + len(res.rows)
        report.rejected_count = len(res.rejected)
        report.rejected = res.rejected[:REJECTED_KEPT]
        report.date = date or res.date or _mtime_date(src)
        if report.imported == 0:
            raise AdvisoryError(
                f"{src}: nothing importable ({len(res.rejected)} rejected; first: "
                f"{res.rejected[0] if res.rejected else 'no records'})"
            )
        report.digest = content_digest(tmp)
        meta = {
            "kind": str(kind),
            "source": str(src),
            "source_sha256": digest,
            "digest": report.digest,
            "validated": True,
            "date": report.date,
            "date_from": "given" if date else "data" if res.date else "file mtime",
            "imported_at": _now(),
            "count": report.imported,
            "rejected": report.rejected_count,
            "rejected_examples": res.rejected[:20],
        }
        (tmp / FEED_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        final = adv_dir / feed
        old = adv_dir / f".{feed}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_manifest(adv_dir)
    path = ensure_index(adv_dir)
    report.index = str(path)
    for msg in report.rejected[:10]:
        log.warning("rejected from %s: %s", src, msg)
    return report


def _mtime_date(src: Path) -> str:
    return dt.datetime.fromtimestamp(src.stat().st_mtime, dt.UTC).date().isoformat()


def _store(kind: FeedKind, src: Path, doc: Any, feed: str, tmp: Path) -> ParseResult:
    """Validate *src* and write the feed's data files into *tmp*."""
    if kind == FeedKind.OSV:
        res = ParseResult()
        if doc is not None:
            records: Iterator[tuple[str, bytes | None, str]] = iter(
                [(src.name, json.dumps(doc).encode(), "")]
            )
        elif src.is_dir():
            records = _osv_from_dir(src)
        else:
            records = _osv_from_zip(src)
        used: set[str] = set()
        for rel, data, err in records:
            if data is None:
                res.rejected.append(f"{rel}: {err}")
                continue
            try:
                rec = json.loads(data)
            except ValueError as e:
                res.rejected.append(f"{rel}: not JSON: {str(e)[:100]}")
                continue
            problems = osv.validate_record(rec)
            if problems:
                res.rejected.append(f"{rel}: {'; '.join(problems)}")
                continue
            fname = safe_name(str(rec["id"]))
            while fname in used:
                fname += "_"
            used.add(fname)
            (tmp / f"{fname}.json").write_bytes(data)
            adv = osv.parse_record(rec, feed)
            res.advisories.append(adv)
            res.date = max(res.date, adv.modified[:10])
        return res
    if kind == FeedKind.DEBIAN_TRACKER:
        res = debian_tracker.parse(doc, feed)
    elif kind == FeedKind.ALPINE_SECDB:
        res = alpine_secdb.parse(doc, feed)
    elif kind == FeedKind.CSAF:
        res = csaf.parse(doc, feed)
    elif kind == FeedKind.WINDOWS_BUILDS:
        res = windows.parse_builds(doc, source=src.name)
    elif kind == FeedKind.WESNG:
        res, defs = wesng.parse(_lines(src))
        res.data = wesng.payload(res, defs)
    elif isinstance(doc, bytes):
        res = windows.parse_cvrf(doc)
    else:
        res = windows.parse_cve_csv(_lines(src))
    if kind in (FeedKind.DEBIAN_TRACKER, FeedKind.ALPINE_SECDB, FeedKind.CSAF):
        payload: Any = doc
    elif kind == FeedKind.WESNG:
        payload = res.data
    else:
        payload = {"date": res.date, "rows": res.rows}
    (tmp / DATA_FILE[kind]).write_text(json.dumps(payload, sort_keys=True) + "\n")
    return res
