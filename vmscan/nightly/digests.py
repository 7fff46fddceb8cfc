"""Digests of the data and settings a result depends on (signatures, advisories, options)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from vmscan import __version__
from vmscan.errors import VmscanError
from vmscan.nightly.config import NightlyConfig

log = logging.getLogger(__name__)


def _hash_tree(folder: Path, *, exclude: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    if not folder.is_dir():
        return "absent"
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(rel == e or rel.startswith(e + "/") for e in exclude):
            continue
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\n")
    return h.hexdigest()


def default_signatures_dir() -> Path:
    """$VMSCAN_SIGNATURES or the repository's ``signatures/``."""
    env = os.environ.get("VMSCAN_SIGNATURES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "signatures"


def data_digests(cfg: NightlyConfig) -> dict[str, str]:
    """Digests of the antivirus signatures and the advisory feed in use."""
    sig_dir = Path(cfg.signatures_dir) if cfg.signatures_dir else default_signatures_dir()
    out: dict[str, str] = {}
    if "antivirus" in cfg.checks:
        digest = ""
        try:
            from vmscan.av.signatures import database_digest

            digest = database_digest(sig_dir / "clamav")
        except (ImportError, OSError, TypeError) as exc:
            log.debug("signature digest from vmscan.av failed (%s); hashing files", exc)
        if not digest:
            digest = _hash_tree(sig_dir, exclude=("advisories",))
        # clamd's own databases (freshclam updates them) change verdicts too.
        out["signatures"] = hashlib.sha256((digest + _clamav_system_stamp()).encode()).hexdigest()
    if "patch" in cfg.checks:
        # The compiled advisory index's digest (over every feed) plus the shipped tables
        # the patch check reads (end of life, Windows cumulative updates).
        digest = ""
        try:
            from vmscan.advisories import index_digest

            digest = index_digest(sig_dir / "advisories")
        except (ImportError, OSError, ValueError, VmscanError) as exc:
            log.warning("advisory index digest failed (%s); hashing files", exc)
        h = hashlib.sha256((digest or _hash_tree(sig_dir / "advisories")).encode())
        for table in ("eol.json", "windows-builds.json"):
            with contextlib.suppress(OSError):
                h.update(table.encode() + b"\0" + (sig_dir / table).read_bytes())
        out["advisories"] = h.hexdigest()
    return out


def _clamav_system_stamp() -> str:
    folder = Path("/var/lib/clamav")
    parts = []
    with contextlib.suppress(OSError):
        for p in sorted(folder.iterdir()):
            if p.suffix in (".cvd", ".cld", ".cud") and p.is_file():
                st = p.stat()
                parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def scan_settings(cfg: NightlyConfig) -> dict[str, Any]:
    """Options that change a result (not limits or report settings)."""
    return {
        "vmscan_version": __version__,
        "checks": sorted(cfg.checks),
        "manifest": cfg.manifest,
        "disk_format": cfg.disk_format,
        "allow_backing": sorted(cfg.allow_backing),
        "av_scope": cfg.av_scope,
        "license_policy": cfg.license_policy,
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def keys_for(
    identity: dict[str, Any], cfg: NightlyConfig, digests: dict[str, str]
) -> tuple[str, str]:
    """(base key: identity + settings, full key: base + data digests)."""
    base = _digest({"identity": identity, "settings": scan_settings(cfg)})
    return base, _digest({"base": base, "digests": digests})
