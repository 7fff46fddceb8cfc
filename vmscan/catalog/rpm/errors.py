"""Errors of the rpm database readers."""

from __future__ import annotations

from vmscan.errors import VmscanError


class RpmDbError(VmscanError):
    """An rpm database file cannot be read at all (wrong format or destroyed)."""
