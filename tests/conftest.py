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
