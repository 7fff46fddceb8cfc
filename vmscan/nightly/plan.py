"""The night's plan: per source, carry the stored result, re-check some checks, or scan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vmscan.nightly.config import NightlyConfig
from vmscan.nightly.digests import (
    COMPONENT_CHECK,
    changed_checks,
    changed_components,
    keys_for,
    relevant_digests,
)
from vmscan.nightly.discovery import Source
from vmscan.nightly.identity import chain_problems, source_identity
from vmscan.state import StateDB

# Which check's results depend on which data digest: a change of only that digest
# re-runs only that check on an otherwise unchanged image.
DIGEST_CHECKS: dict[str, str] = COMPONENT_CHECK


# --------------------------------------------------------------------------------------
# Planning


@dataclass
class PlanItem:
    """What the night does with one source."""

    source: Source
    action: str  # "scan" | "partial" | "carry" | "error"
    reason: str
    identity: dict[str, Any] | None = None
    base_key: str = ""
    scan_key: str = ""
    checks: tuple[str, ...] = ()
    previous_run: int | None = None
    previous_digest: str = ""
    storage: str = ""
    #: A bounded antivirus re-check after a signature update: the kinds re-streamed
    #: ("" = the configured scope, every file).
    av_scope: str = ""
    #: Only the SHA-256 hash lists changed: antivirus is re-matched against the stored
    #: manifest hashes (vmscan.nightly.av_recheck.hash_recheck), the image is not opened.
    av_hashes_only: bool = False


def _storage_of(src: Source, how: str) -> str:
    first = src.disks[0] if src.disks else src.path
    if how == "folder":
        return os.path.dirname(os.path.realpath(first))
    try:
        return f"dev:{os.stat(first).st_dev}"
    except OSError:
        return os.path.dirname(os.path.realpath(first))


def plan(
    cfg: NightlyConfig, sources: list[Source], db: StateDB | None, digests: dict[str, str]
) -> list[PlanItem]:
    """Decide, per source: carry the stored result forward, rescan some checks, or scan."""
    items: list[PlanItem] = []
    for src in sources:
        storage = _storage_of(src, cfg.storage_group)
        if src.error:
            items.append(PlanItem(src, "error", src.error, storage=storage))
            continue
        try:
            identity = source_identity(src, fmt=cfg.disk_format, allow_backing=cfg.allow_backing)
        except OSError as exc:
            why = "image vanished" if isinstance(exc, FileNotFoundError) else "cannot read image"
            items.append(PlanItem(src, "error", f"{why}: {exc}", storage=storage))
            continue
        prev = db.latest_image_row(src.path) if db is not None else None
        # The OS types of the stored result say which digests it depends on (a Linux
        # image does not depend on the Windows cumulative-update table).
        os_types = (prev.identity or {}).get("os_types") if prev is not None else None
        base_key, scan_key = keys_for(identity, cfg, digests, os_types)
        item = PlanItem(
            src,
            "scan",
            "new image",
            identity,
            base_key,
            scan_key,
            tuple(cfg.checks),
            storage=storage,
        )
        if prev is not None:
            item.previous_run = prev.run_id
            item.previous_digest = prev.result_digest
            prev_meta = prev.identity or {}
            problems = chain_problems(identity)
            if problems:
                # Not knowing what the disk is made of is not "unchanged": scanned again
                # (the scan reports the refusal or the damage itself).
                item.reason = f"its chain could not be walked ({problems[0]}): scanned"
            elif not prev.scan_key and prev.status != "error":
                # Stored without a key: a check did not complete (or the image changed
                # under the scan). Never carried forward: scanned again.
                item.reason = (
                    f"the scan of run {prev.run_id} did not complete (or the image changed "
                    "under it): retried"
                )
            elif prev.scan_key == scan_key:
                item.action, item.reason = "carry", f"unchanged since run {prev.origin_run_id}"
            elif prev_meta.get("base_key") == base_key:
                old = relevant_digests(prev_meta.get("digests") or {}, os_types)
                changed = changed_checks(old, relevant_digests(digests, os_types), cfg.checks)
                if changed:
                    item.action, item.checks = "partial", tuple(changed)
                    item.reason = f"image unchanged; data changed for {', '.join(changed)}"
                    av_parts = {
                        k
                        for k in changed_components(old, relevant_digests(digests, os_types))
                        if COMPONENT_CHECK.get(k) == "antivirus"
                    }
                    if av_parts == {"antivirus:hashes"} and cfg.manifest:
                        item.av_hashes_only = True
                        item.reason += (
                            "; only hash signatures changed: matched against the stored file hashes"
                        )
                    elif "antivirus" in changed:
                        bounded_av_recheck(cfg, item, prev_meta)
                else:
                    item.reason = "scan settings changed"
            else:
                item.reason = "image or settings changed"
        items.append(item)
    return items


def _age_days(iso: str) -> float | None:
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds() / 86400


def bounded_av_recheck(cfg: NightlyConfig, item: PlanItem, prev_meta: dict[str, Any]) -> None:
    """After a signature update, re-stream only ``av_recheck_kinds`` while the image's last
    full content scan is younger than ``av_recheck_days`` (hash signatures are matched
    against every file's stored hash in any case; the other files stay "clean as of" the
    database version of that full scan)."""
    full = prev_meta.get("av_full_scan") or {}
    age = _age_days(str(full.get("date") or ""))
    if (
        age is None
        or age >= cfg.av_recheck_days
        or not cfg.av_recheck_kinds
        or cfg.av_scope.strip() not in ("", "all")
        or not cfg.manifest
    ):
        if age is not None:
            item.reason += f"; full antivirus re-check (last one {age:.1f} days ago)"
        return
    item.av_scope = ",".join(sorted(cfg.av_recheck_kinds))
    due = datetime.fromisoformat(str(full["date"]).replace("Z", "+00:00")) + timedelta(
        days=cfg.av_recheck_days
    )
    item.reason += (
        f"; antivirus re-streams {item.av_scope} only, other files clean as of "
        f"{full.get('engine') or 'the earlier database'} ({full.get('date')}); "
        f"full re-check due {due.date().isoformat()}"
    )
