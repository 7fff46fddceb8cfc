"""Antivirus after a signature update: when every file was last scanned, what a bounded
re-check keeps, and pruning of verdicts of old databases."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmscan.document import FindingDoc, ImageDoc, ReportDoc, RootDoc
from vmscan.model import to_jsonable
from vmscan.nightly.merge import _with_roots
from vmscan.nightly.plan import PlanItem
from vmscan.state import StateDB, utcnow

log = logging.getLogger(__name__)


def _image(result: ImageDoc | Mapping[str, Any]) -> ImageDoc:
    return result if isinstance(result, ImageDoc) else ImageDoc.from_json(result)


def _av_engine(result: ImageDoc | Mapping[str, Any]) -> str:
    """The clamd VERSION reply recorded with a result's antivirus section ('' if none)."""
    image = _image(result)
    if image.antivirus is not None and image.antivirus.engine:
        return image.antivirus.engine
    return next(
        (r.antivirus.engine for r in image.roots() if r.antivirus and r.antivirus.engine), ""
    )


def _av_complete(image: ImageDoc) -> bool:
    roots = image.roots()
    return bool(roots) and all(r.antivirus and r.antivirus.status == "complete" for r in roots)


def _av_full_scan(
    db: StateDB, item: PlanItem, result: dict[str, Any], *, carried: bool, offline: bool
) -> dict[str, Any]:
    """When and under which database every file of the image was last content-scanned."""
    image = _image(result)
    fresh = (
        not carried
        and not offline
        and not item.av_scope
        and "antivirus" in item.checks
        and _av_complete(image)
    )
    if fresh:
        return {"engine": _av_engine(image), "date": image.finished_at or utcnow()}
    prev = db.latest_image_row(item.source.path)
    full = ((prev.identity or {}).get("av_full_scan") if prev is not None else None) or {}
    return dict(full) if isinstance(full, dict) else {}


def keep_unstreamed_av_findings(
    base: dict[str, Any], merged: dict[str, Any], scope: str, state_db: str
) -> dict[str, Any]:
    """*merged* with the earlier antivirus findings that still stand added back.

    A bounded re-check streamed only files of *scope*: earlier antivirus findings on
    other files stand (their files were not looked at again), found by their content's
    kinds in the antivirus file-kind cache (unknown kinds: kept too)."""
    from vmscan.av.cache import VerdictCache

    old, new = ImageDoc.from_json(base), ImageDoc.from_json(merged)
    kinds_wanted = set(scope.split(","))
    sha_of = {(e.device, e.path): (e.sha256 or "").lower() for e in old.manifest}
    try:
        cache = VerdictCache(state_db, "", "")
        try:
            kinds = cache.kinds(s for s in sha_of.values() if s)
        finally:
            cache.close()
    except Exception as exc:  # no cache: keep every earlier finding (never lose one)
        log.info("file kinds unavailable (%s): earlier antivirus findings kept", exc)
        kinds = {}
    old_roots = {r.device: r for r in old.roots()}
    roots: list[RootDoc] = []
    for root in new.roots():
        old_root = old_roots.get(root.device)
        if old_root is None:
            roots.append(root)
            continue
        have = {(f.check, f.fingerprint) for f in root.findings}
        kept: list[FindingDoc] = []
        for f in old_root.findings:
            if f.check != "antivirus" or (f.check, f.fingerprint) in have:
                continue
            sha = sha_of.get((old_root.device, f.target), "")
            if sha in kinds and kinds[sha] & kinds_wanted:
                continue  # re-streamed under the new database: its new verdict counts
            kept.append(f)
        roots.append(dataclasses.replace(root, findings=root.findings + tuple(kept)))
    return _with_roots(new, roots).to_json()


def prune_verdicts(db: StateDB, doc: ReportDoc | Mapping[str, Any], *, keep_days: float) -> int:
    """Delete cached antivirus verdicts of signature databases no result of this run was
    scanned under, once older than ``keep_days``. Returns how many rows went."""
    keep = {
        r.antivirus.database_digest
        for img in ReportDoc.of(doc).images
        for r in img.roots()
        if r.antivirus is not None
    } - {""}
    cutoff = int(time.time() - keep_days * 86400)
    with db.transaction() as conn:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'av_verdicts'"
        ).fetchone():
            return 0
        marks = ",".join("?" * len(keep)) or "''"
        cur = conn.execute(
            f"DELETE FROM av_verdicts WHERE scanned_at < ? AND db_digest NOT IN ({marks})",
            (cutoff, *sorted(keep)),
        )
        return int(cur.rowcount or 0)


def hash_recheck(old: dict[str, Any], sig_dir: Path) -> dict[str, Any] | None:
    """*old* re-matched against the current SHA-256 hash lists, reading no guest.

    Only the hash lists changed (the plan says so): every stored manifest hash is matched
    again; findings the lists made ("detected_by": "hash") are replaced by the new
    matches, clamd's stand. None (scan instead) when the result has no manifest to match,
    or when an earlier hash finding no longer matches: that file was never streamed to
    clamd (a hash match spares it), so only a content scan can call it clean.
    """
    from vmscan.av.signatures import load_sha256_signatures, match_hash, normalize_name
    from vmscan.checks.antivirus import av_finding

    image = ImageDoc.from_json(old)
    manifest = image.manifest
    if not manifest:
        return None
    table = load_sha256_signatures(sig_dir / "clamav")
    roots = image.roots()
    # Each root's findings, to which new matches are added (the file's device names it).
    findings: list[list[FindingDoc]] = [list(r.findings) for r in roots]
    root_of: dict[str, int] = {}
    for i, root in enumerate(roots):
        for dev in root.mountpoints.values():
            root_of.setdefault(dev, i)
        root_of.setdefault(root.device, i)
    for _, f in image.findings():
        if f.check != "antivirus" or f.antivirus.detected_by != "hash":
            continue
        sig = match_hash(table, f.antivirus.sha256, f.antivirus.size)
        if sig is None or normalize_name(sig.name) != f.rule_id:
            log.info("%s: its hash finding is gone; a content scan decides", f.target)
            return None
    matched = 0
    for e in manifest:
        sig = match_hash(table, e.sha256, e.size)
        owner = root_of.get(e.device)
        if sig is None or owner is None or e.sha256 is None:
            continue
        matched += 1
        if any(f.check == "antivirus" and f.target == e.path for f in findings[owner]):
            continue  # already found (by clamd, or by this same list)
        fresh = av_finding(e.path, e.sha256, e.size, e.mtime, normalize_name(sig.name), "hash")
        findings[owner].append(FindingDoc.from_json(to_jsonable(fresh)))
    stamp = {"at": utcnow(), "hash_signatures": sum(len(v) for v in table.values()),
             "files_matched": matched, "files_checked": len(manifest)}  # fmt: skip
    stamped: list[RootDoc] = []
    for root, root_findings in zip(roots, findings, strict=True):
        sections = dict(root.sections)
        section = sections.get("antivirus", {})
        if isinstance(section, Mapping):
            sections["antivirus"] = {**section, "hash_rechecked": stamp}
        stamped.append(dataclasses.replace(root, findings=tuple(root_findings), sections=sections))
    return _with_roots(image, stamped).to_json()
