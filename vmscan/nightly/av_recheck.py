"""Antivirus after a signature update: when every file was last scanned, what a bounded
re-check keeps, and pruning of verdicts of old databases."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from vmscan.diff import iter_roots
from vmscan.model import to_jsonable
from vmscan.nightly.plan import PlanItem
from vmscan.state import StateDB, utcnow

log = logging.getLogger(__name__)


def _av_engine(result: dict[str, Any]) -> str:
    """The clamd VERSION reply recorded with a result's antivirus section ('' if none)."""
    section = (result.get("sections") or {}).get("antivirus") or {}
    engine = section.get("engine") if isinstance(section, dict) else ""
    if not engine:
        for root in iter_roots(result):
            engine = ((root.get("sections") or {}).get("antivirus") or {}).get("engine") or ""
            if engine:
                break
    return str(engine or "")


def _av_complete(result: dict[str, Any]) -> bool:
    roots = list(iter_roots(result))
    return bool(roots) and all(
        ((r.get("sections") or {}).get("antivirus") or {}).get("status") == "complete"
        for r in roots
    )


def _av_full_scan(
    db: StateDB, item: PlanItem, result: dict[str, Any], *, carried: bool, offline: bool
) -> dict[str, Any]:
    """When and under which database every file of the image was last content-scanned."""
    fresh = (
        not carried
        and not offline
        and not item.av_scope
        and "antivirus" in item.checks
        and _av_complete(result)
    )
    if fresh:
        return {"engine": _av_engine(result), "date": result.get("finished_at") or utcnow()}
    prev = db.latest_image_row(item.source.path)
    full = ((prev.identity or {}).get("av_full_scan") if prev is not None else None) or {}
    return dict(full) if isinstance(full, dict) else {}


def _keep_unstreamed_av_findings(
    base: dict[str, Any], merged: dict[str, Any], scope: str, state_db: str
) -> None:
    """A bounded re-check streamed only files of *scope*: earlier antivirus findings on
    other files stand (their files were not looked at again), found by their content's
    kinds in the antivirus file-kind cache (unknown kinds: kept too)."""
    from vmscan.av.cache import VerdictCache

    kinds_wanted = set(scope.split(","))
    sha_of = {
        (str(e.get("device")), str(e.get("path"))): str(e.get("sha256") or "").lower()
        for e in base.get("manifest") or []
    }
    try:
        cache = VerdictCache(state_db, "", "")
        try:
            kinds = cache.kinds(s for s in sha_of.values() if s)
        finally:
            cache.close()
    except Exception as exc:  # no cache: keep every earlier finding (never lose one)
        log.info("file kinds unavailable (%s): earlier antivirus findings kept", exc)
        kinds = {}
    fresh_roots = {str(r.get("device")): r for r in iter_roots(merged)}
    for old_root in iter_roots(base):
        root = fresh_roots.get(str(old_root.get("device")))
        if root is None:
            continue
        have = {(f.get("check"), f.get("fingerprint")) for f in root.get("findings") or []}
        for f in old_root.get("findings") or []:
            if f.get("check") != "antivirus" or (f.get("check"), f.get("fingerprint")) in have:
                continue
            sha = sha_of.get((str(old_root.get("device")), str(f.get("target"))), "")
            if sha in kinds and kinds[sha] & kinds_wanted:
                continue  # re-streamed under the new database: its new verdict counts
            root.setdefault("findings", []).append(f)


def prune_verdicts(db: StateDB, doc: dict[str, Any], *, keep_days: float) -> int:
    """Delete cached antivirus verdicts of signature databases no result of this run was
    scanned under, once older than ``keep_days``. Returns how many rows went."""
    keep = {
        str(((r.get("sections") or {}).get("antivirus") or {}).get("database_digest") or "")
        for img in doc.get("images") or []
        for r in iter_roots(img)
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

    manifest = [e for e in old.get("manifest") or [] if isinstance(e, dict)]
    if not manifest:
        return None
    table = load_sha256_signatures(sig_dir / "clamav")
    merged = copy.deepcopy(old)
    roots = iter_roots(merged)
    root_of: dict[str, dict[str, Any]] = {}
    for root in roots:
        for dev in (root.get("mountpoints") or {}).values():
            root_of.setdefault(str(dev), root)
        root_of.setdefault(str(root.get("device")), root)
    for root in roots:
        for f in root.get("findings") or []:
            det = f.get("details") or {}
            if f.get("check") != "antivirus" or det.get("detected_by") != "hash":
                continue
            sig = match_hash(table, str(det.get("sha256") or ""), int(det.get("size") or 0))
            if sig is None or normalize_name(sig.name) != f.get("rule_id"):
                log.info("%s: its hash finding is gone; a content scan decides", f.get("target"))
                return None
    matched = 0
    for e in manifest:
        sig = match_hash(table, e.get("sha256"), int(e.get("size") or 0))
        owner = root_of.get(str(e.get("device")))
        if sig is None or owner is None:
            continue
        matched += 1
        path = str(e.get("path"))
        findings = owner.setdefault("findings", [])
        if any(f.get("check") == "antivirus" and f.get("target") == path for f in findings):
            continue  # already found (by clamd, or by this same list)
        name = normalize_name(sig.name)
        fresh = av_finding(path, str(e["sha256"]), int(e.get("size") or 0),
                           int(e.get("mtime") or 0), name, "hash")  # fmt: skip
        findings.append(to_jsonable(fresh))
    stamp = {"at": utcnow(), "hash_signatures": sum(len(v) for v in table.values()),
             "files_matched": matched, "files_checked": len(manifest)}  # fmt: skip
    for root in roots:
        section = (root.setdefault("sections", {})).setdefault("antivirus", {})
        if isinstance(section, dict):
            section["hash_rechecked"] = stamp
    return merged
