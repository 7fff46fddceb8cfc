"""Pre-migration audit: what would break when a VM moves to another hypervisor or cloud.

One :class:`Rule` per thing that can break (declared in :data:`ALL_RULES`, module
:mod:`.rules`); a :class:`~vmscan.model.Finding` is one rule on one target. Each rule
family gathers its facts in its own module (:mod:`.arch`, :mod:`.boot`, :mod:`.drivers`,
:mod:`.tools`, :mod:`.network`, :mod:`.storage`, :mod:`.capacity`, :mod:`.lifecycle`),
over the per-root :class:`~.common.Run`; pure parsers of guest files live in
:mod:`.parse`. :mod:`.check` says which steps run for which OS and which rules each
decides. The facts go into ``root.sections["migration"]`` with a verdict per root.
"""

from vmscan.checks.migration.check import MigrationCheck
from vmscan.checks.migration.rules import (
    ALL_RULES,
    DATA_RULES,
    LINUX_RULES,
    RULES_BY_ID,
    WINDOWS_RULES,
    Rule,
    arch_bits,
    verdict_for,
)

__all__ = [
    "ALL_RULES",
    "DATA_RULES",
    "LINUX_RULES",
    "RULES_BY_ID",
    "WINDOWS_RULES",
    "MigrationCheck",
    "Rule",
    "arch_bits",
    "verdict_for",
]
