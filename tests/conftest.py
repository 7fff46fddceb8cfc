"""Shared test set-up: libguestfs under TCG, paths to the shared corpus, session fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# KVM is broken on our build and CI machines (qemu aborts on MSR 0x10a).
os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

# `vmscan scan` keeps a per-user cache by default: never the user's own in tests.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="vmscan-test-cache-")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
SCHEMAS = SHARED / "schemas"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared real-world corpus, or a skip with the reason."""
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} not present (the shared corpus lies beside the checkout)")
    return CORPUS


@pytest.fixture(scope="session")
def schemas() -> Path:
    """The shared published schemas, or a skip with the reason."""
    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS} not present (the shared schemas lie beside the checkout)")
    return SCHEMAS


# Run under pytest-xdist with one file per worker: the files that launch the most
# appliances go first, so that no long guest file starts last and leaves the other
# worker idle at the end (the non-guest files fill the gaps). Order inside a file is kept.
_LONGEST_FIRST = (
    "test_real_debian.py",
    "test_inspect_guest.py",
    "test_domain_guest.py",
    "test_points_guest.py",
    "test_filecache.py",
    "test_fleet_interrupt.py",
    "test_nightly_guest.py",
    "test_completeness_guest.py",
    "test_fleet.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first, then the other files with guest tests, then the rest."""
    guest_files = {i.path.name for i in items if i.get_closest_marker("guest")}

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in _LONGEST_FIRST:
            return _LONGEST_FIRST.index(name)
        return len(_LONGEST_FIRST) + (0 if name in guest_files else 1)

    items.sort(key=rank)  # stable: a file's own order is kept
