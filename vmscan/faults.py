"""Test-only stop points: ``VMSCAN_TEST_STOP_AT=POINT`` parks the process there to be killed.

Tests of the nightly's fault handling kill it with SIGKILL at exact places (during
discovery, while images are scanning, while a result is being stored, while reports are
written, while the metrics file is written). A process started with
``VMSCAN_TEST_STOP_AT=<point>`` and ``VMSCAN_TEST_STOP_FILE=<path>`` creates that file when
it reaches the point and then sleeps until it is killed. Nothing else reads these variables
and nothing in vmscan sets them: they are a test seam, never a setting.
"""

from __future__ import annotations

import os
import time

#: The points, in the order a night reaches them.
POINTS = ("discovery", "scanning", "storing", "reports", "metrics")
_ENV_POINT = "VMSCAN_TEST_STOP_AT"
_ENV_FILE = "VMSCAN_TEST_STOP_FILE"
_PARK_SECONDS = 600.0


def stop_point(name: str) -> None:
    """Park here (announced by creating the stop file) when a test asked for this point."""
    if os.environ.get(_ENV_POINT) != name:
        return
    marker = os.environ.get(_ENV_FILE)
    if marker:
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(f"{name} {os.getpid()}\n")
    time.sleep(_PARK_SECONDS)
