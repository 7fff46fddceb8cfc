"""Security advisories: feeds (OSV, Debian tracker, Alpine secdb, Windows tables), one index.

Modules: :mod:`~vmscan.advisories.model` (records), :mod:`~vmscan.advisories.osv`,
:mod:`~vmscan.advisories.debian_tracker`, :mod:`~vmscan.advisories.alpine_secdb` and
:mod:`~vmscan.advisories.windows` (parsers), :mod:`~vmscan.advisories.severity` (CVSS and
vendor ratings), :mod:`~vmscan.advisories.feeds` (import), :mod:`~vmscan.advisories.index`
(the compiled SQLite index) and :mod:`~vmscan.advisories.match` (matching rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmscan.advisories.feeds import ImportReport, import_feed
from vmscan.advisories.index import Index, ensure_index, open_index
from vmscan.advisories.match import Ecosystem, guest_ecosystem, match_packages
from vmscan.advisories.model import Advisory, AdvisoryError, Affected, FeedKind, Rating
from vmscan.sigdir import signatures_dir

__all__ = [
    "Advisory",
    "AdvisoryError",
    "Affected",
    "Ecosystem",
    "FeedKind",
    "ImportReport",
    "Index",
    "Rating",
    "default_advisories_dir",
    "ensure_index",
    "guest_ecosystem",
    "import_feed",
    "index_digest",
    "match_packages",
    "open_index",
]


def default_advisories_dir(options: dict[str, Any] | None = None) -> Path:
    """``options["advisories_dir"]``, else ``$VMSCAN_SIGNATURES/advisories``, else the
    ``signatures_dir`` option's, else the repository's ``signatures/advisories``."""
    options = options or {}
    if options.get("advisories_dir"):
        return Path(options["advisories_dir"])
    return signatures_dir(options) / "advisories"


def index_digest(adv_dir: Path) -> str:
    """Digest of the compiled index of *adv_dir* (compiled first when stale)."""
    idx = open_index(ensure_index(adv_dir))
    try:
        return idx.digest
    finally:
        idx.close()


def prepare(options: dict[str, Any]) -> dict[str, Any]:
    """Compile the index once in the parent and hand its path to workers in *options*."""
    path = ensure_index(default_advisories_dir(options))
    options["advisory_index"] = str(path)
    return options
