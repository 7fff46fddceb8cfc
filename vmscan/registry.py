"""The explicit list of catalogers and checks (no registration by import side effects)."""

from __future__ import annotations

from vmscan.plugins import Cataloger, Check


def all_catalogers() -> tuple[Cataloger, ...]:
    """Every package cataloger, in the order they run."""
    return ()


def all_checks() -> tuple[Check, ...]:
    """Every check, in the order they run (inventory-dependent checks last)."""
    return ()


def catalogers_for(checks: tuple[str, ...]) -> tuple[Cataloger, ...]:
    """Catalogers always run: the inventory is part of every report."""
    return all_catalogers()


def checks_for(checks: tuple[str, ...]) -> tuple[Check, ...]:
    """The checks the user asked for."""
    return tuple(c for c in all_checks() if c.NAME in checks)
