"""The one place that says where the signatures folder is (ClamAV, advisories, tables).

Precedence, everywhere (scan, nightly, the checks, ``vmscan signatures``): the folder
named explicitly (the ``signatures_dir`` option, set from ``--dir`` or the nightly's
``signatures_dir`` setting), else ``$VMSCAN_SIGNATURES``, else the folder shipped in the
repository (:data:`BUNDLED`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The repository's own ``signatures/`` folder (defaults that ship with vmscan).
BUNDLED = Path(__file__).resolve().parent.parent / "signatures"
#: The environment variable that moves the whole folder.
ENV = "VMSCAN_SIGNATURES"


def signatures_dir(options: Mapping[str, Any] | None = None, explicit: str | None = None) -> Path:
    """The signatures folder for *options* (or an *explicit* folder, when given)."""
    chosen = explicit or (options or {}).get("signatures_dir")
    if chosen:
        return Path(chosen)
    env = os.environ.get(ENV)
    return Path(env) if env else BUNDLED
