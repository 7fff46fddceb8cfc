"""The explicit list of catalogers and checks (no registration by import side effects)."""

from __future__ import annotations

from vmscan.plugins import Cataloger, Check


def all_catalogers() -> tuple[Cataloger, ...]:
    """Every package cataloger, in the order they run."""
    from vmscan.catalog import ALL_CATALOGERS

    return ALL_CATALOGERS


def all_checks() -> tuple[Check, ...]:
    """Every check, in the order they run.

    The licence check runs before the patch check so that exports see licences;
    the migration check last, as it reads the inventory and PE data of the others.
    """
    from vmscan.checks.antivirus import AntivirusCheck
    from vmscan.checks.license import LicenseCheck
    from vmscan.checks.migration import MigrationCheck
    from vmscan.checks.patch import PatchCheck

    return (AntivirusCheck(), LicenseCheck(), PatchCheck(), MigrationCheck())


def catalogers_for(checks: tuple[str, ...]) -> tuple[Cataloger, ...]:
    """Catalogers always run: the inventory is part of every report."""
    return all_catalogers()


def checks_for(checks: tuple[str, ...]) -> tuple[Check, ...]:
    """The checks the user asked for."""
    return tuple(c for c in all_checks() if c.NAME in checks)
