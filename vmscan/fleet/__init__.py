"""The nightly across many hypervisors on Dask distributed (issue 13): names shared by both sides.

Nothing here imports Dask: ``vmscan.fleet.coordinator`` (the nightly's side) and
``vmscan.fleet.worker`` (the worker plugin and the task) do, and are imported only when a
scheduler is configured, so a single host without the ``fleet`` extra works as before.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: Prefix of the Dask resource that stands for "can read storage NAME" (its quantity on a
#: worker is how many images of that storage the worker scans at once).
RESOURCE_PREFIX = "vmscan-storage-"
#: The worker plugin's name (``worker.plugins[PLUGIN_NAME]``).
PLUGIN_NAME = "vmscan"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class FleetError(ValueError):
    """A bad --storage / --storage-limit / --scheduler value (a usage error)."""


def check_scheduler(value: str) -> str:
    """``tcp://HOST:PORT``, ``tls://HOST:PORT`` (or another Dask protocol), or ``local:N``."""
    if value.startswith("local:"):
        num = value.partition(":")[2]
        if not num.isdigit() or int(num) < 1:
            raise FleetError(f"scheduler local:N wants N >= 1, got {value[:100]!r}")
        return value
    scheme, sep, rest = value.partition("://")
    if not sep or not rest or scheme not in ("tcp", "tls", "ws", "wss", "ucx", "inproc"):
        raise FleetError(
            f"scheduler must be tcp://HOST:PORT, tls://HOST:PORT or local:N, got {value[:100]!r}"
        )
    return value


def resource_name(storage: str) -> str:
    """The Dask resource for one storage name."""
    return RESOURCE_PREFIX + storage


def check_storage_name(name: str) -> str:
    """A storage name: letters, digits, ``_.-``, at most 64 characters."""
    if not _NAME_RE.match(name):
        raise FleetError(
            f"bad storage name {name[:80]!r}: letters, digits, '_', '.', '-' (at most 64)"
        )
    return name


def parse_storage(value: str) -> tuple[str, str]:
    """``NAME=PATH`` (an absolute folder) -> (name, real path)."""
    name, sep, path = value.partition("=")
    if not sep or not path:
        raise FleetError(f"--storage wants NAME=PATH, got {value[:200]!r}")
    if not os.path.isabs(path):
        raise FleetError(f"--storage {name}: the path must be absolute, got {path[:200]!r}")
    return check_storage_name(name), os.path.realpath(path)


def parse_limit(value: str) -> tuple[str, int]:
    """``NAME=N`` (N >= 1) -> (name, N)."""
    name, sep, num = value.partition("=")
    try:
        n = int(num) if sep else 0
    except ValueError:
        n = 0
    if n < 1:
        raise FleetError(f"--storage-limit wants NAME=N with N >= 1, got {value[:200]!r}")
    return check_storage_name(name), n


def under(path: str, root: str) -> bool:
    """Whether the real path of *path* lies inside folder *root* (itself a real path)."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class FleetJob:
    """One image to scan on the fleet: its label (the nightly's source), disks, checks."""

    source: str
    disks: tuple[str, ...]
    checks: tuple[str, ...]
