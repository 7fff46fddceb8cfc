"""Severities from feeds: CVSS v2/v3/v4 vectors (PyPI ``cvss``), vendor words, Debian urgency.

Ratings use vmscan's scale (``unknown`` < ``info`` < ``low`` < ``medium`` < ``high`` <
``critical``). A CVSS vector is scored with the ``cvss`` package and rated with the
qualitative scale of its own version (v2 has no ``critical``; a 0.0 score is ``info``).
Debian's urgency mapping is documented in README.md ("Severities").
"""

from __future__ import annotations

import logging
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4

from vmscan.advisories.model import Rating

log = logging.getLogger(__name__)

_QUALITATIVE = {
    "none": "info",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}

#: Vendor words (Red Hat, Ubuntu, SUSE, Microsoft, AlmaLinux) to vmscan's scale.
WORDS = {
    "critical": "critical",
    "important": "high",
    "high": "high",
    "moderate": "medium",
    "medium": "medium",
    "low": "low",
    "negligible": "info",
    "unimportant": "info",
    "info": "info",
    "none": "info",
}

#: Debian Security Tracker ``urgency`` to vmscan's scale. ``unimportant`` is Debian's
#: "no security impact on Debian in practice"; ``not yet assigned`` and ``end-of-life``
#: (the release no longer gets fixes for it) carry no rating.
DEBIAN_URGENCY = {
    "high": "high",
    "medium": "medium",
    "low": "low",
    "unimportant": "info",
    "not yet assigned": "unknown",
    "end-of-life": "unknown",
}


def score_vector(kind: str, vector: str) -> tuple[float, str] | None:
    """(base score, rating) of one CVSS vector; None when it is not a valid one."""
    vector = vector.strip()
    try:
        if kind == "CVSS_V4" or vector.startswith("CVSS:4"):
            v4 = CVSS4(vector)
            return float(v4.base_score), _QUALITATIVE.get(str(v4.severity).lower(), "unknown")
        if kind == "CVSS_V3" or vector.startswith("CVSS:3"):
            v3 = CVSS3(vector)
            score = float(v3.scores()[0])
            return score, _QUALITATIVE.get(str(v3.severities()[0]).lower(), "unknown")
        if kind == "CVSS_V2":
            v2 = CVSS2(vector)
            score = float(v2.scores()[0])
            return score, _QUALITATIVE.get(str(v2.severities()[0]).lower(), "unknown")
    except Exception as e:  # the cvss package raises its own errors and KeyError/ValueError
        log.debug("bad CVSS vector %r: %s", vector[:100], e)
    return None


def word_rating(word: Any) -> str | None:
    """vmscan severity of a vendor word (``Important`` -> ``high``), None if unknown."""
    if not isinstance(word, str):
        return None
    return WORDS.get(word.strip().lower())


def debian_urgency(urgency: Any) -> Rating:
    """Rating of a Debian tracker urgency; a trailing ``**`` is ignored for the mapping."""
    if not isinstance(urgency, str) or not urgency.strip():
        return Rating()
    raw = urgency.strip()
    word = raw.rstrip("*").strip().lower()
    sev = DEBIAN_URGENCY.get(word, "unknown")
    return Rating(sev, None, f"debian urgency {raw[:40]}")


def osv_rating(rec: dict[str, Any], affected: dict[str, Any] | None = None) -> Rating:
    """Rating of an OSV record (or one of its ``affected`` entries).

    The highest-scoring valid CVSS vector wins (the affected entry's own ``severity``
    first); then an ``Ubuntu`` severity; then a ``severity`` word in the entry's or the
    record's ``ecosystem_specific``/``database_specific`` (AlmaLinux, Red Hat, SUSE).
    """
    best: Rating | None = None
    sources = list((affected or {}).get("severity") or []) + list(rec.get("severity") or [])
    for sev in sources:
        if not isinstance(sev, dict) or not isinstance(sev.get("score"), str):
            continue
        kind = str(sev.get("type", ""))
        if kind.startswith("CVSS_"):
            scored = score_vector(kind, sev["score"])
            if scored and (best is None or best.score is None or scored[0] > best.score):
                best = Rating(scored[1], scored[0], f"{kind} {scored[0]}")
        elif kind == "Ubuntu" and best is None:
            w = word_rating(sev["score"])
            if w:
                best = Rating(w, None, f"Ubuntu {sev['score'][:20]}")
    if best:
        return best
    for holder in (
        (affected or {}).get("ecosystem_specific"),
        (affected or {}).get("database_specific"),
        rec.get("ecosystem_specific"),
        rec.get("database_specific"),
    ):
        if isinstance(holder, dict):
            for key in ("severity", "urgency"):
                w = word_rating(holder.get(key))
                if w:
                    return Rating(w, None, f"{key} {str(holder.get(key))[:20]}")
    summary = rec.get("summary")
    if isinstance(summary, str) and ":" in summary[:12]:
        # AlmaLinux/Rocky/Red Hat summaries start with the vendor rating: "Important: ...".
        w = word_rating(summary.split(":", 1)[0])
        if w:
            return Rating(w, None, f"vendor rating {summary.split(':', 1)[0][:12]}")
    return Rating()


def worst(ratings: list[Rating]) -> Rating:
    """The most severe rating (by severity, then score); ``unknown`` when none is known."""
    from vmscan.model import SEVERITY_ORDER

    known = [r for r in ratings if r.severity != "unknown"]
    if not known:
        return Rating()
    return max(known, key=lambda r: (SEVERITY_ORDER.get(r.severity, 0), r.score or 0.0))
