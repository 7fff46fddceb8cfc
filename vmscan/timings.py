"""Per-phase wall times of one image scan, for ``sections.timings`` in the JSON report.

The numbers say where an image's time went (appliance launch, inspection, the walk,
hashing/streaming, each plugin) so that users and ``make bench`` can see it; nothing
compares them against a limit. Phases that run more than once (one walk per root) add up
in the image totals and are also kept per root.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class Timings:
    """Accumulates seconds per phase for one image; ``to_dict`` gives the report section."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.phases: dict[str, float] = {}
        self.plugins: dict[str, float] = {}
        self.roots: list[dict[str, Any]] = []
        #: Byte counters (``streamed``: tar stream bytes that reached the host;
        #: ``hashed_in_appliance``: file bytes hashed by sha256sum in the appliance).
        self.bytes: dict[str, int] = {}
        self._root: dict[str, Any] | None = None

    def add(self, phase: str, seconds: float) -> None:
        """Add *seconds* to *phase* (image total, and the current root's when there is one)."""
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        if self._root is not None:
            ph = self._root["phases"]
            ph[phase] = ph.get(phase, 0.0) + seconds

    def count(self, what: str, n: int) -> None:
        """Add *n* bytes to the counter *what*."""
        self.bytes[what] = self.bytes.get(what, 0) + n

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as *name*, whether it returns or raises."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - t0)

    @contextlib.contextmanager
    def plugin(self, name: str) -> Iterator[None]:
        """Time one cataloger or check (summed over roots, and kept per root)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            self.plugins[name] = self.plugins.get(name, 0.0) + dt
            if self._root is not None:
                pl = self._root["plugins"]
                pl[name] = pl.get(name, 0.0) + dt

    def start_root(self, device: str) -> None:
        """Following phases and plugins also count for the root on *device*."""
        self._root = {"device": device, "phases": {}, "plugins": {}}
        self.roots.append(self._root)

    def end_root(self) -> None:
        self._root = None

    def to_dict(self) -> dict[str, Any]:
        """``{"total_s", "phases": {name: s}, "plugins": {name: s}, "roots": [...]}``."""

        def rounded(d: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 3) for k, v in d.items()}

        return {
            "total_s": round(time.monotonic() - self._t0, 3),
            "phases": rounded(self.phases),
            "plugins": rounded(self.plugins),
            "bytes": dict(self.bytes),
            "roots": [
                {
                    "device": r["device"],
                    "phases": rounded(r["phases"]),
                    "plugins": rounded(r["plugins"]),
                }
                for r in self.roots
            ],
        }
