"""One managed clamd per night, shared by every wave, gone when the night ends (real clamd).

The scanner is a stand-in that talks to the clamd it is handed (PING and VERSION over its
socket): what is tested is the nightly's service lifecycle, not the appliance.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nightly_samples import FakeScanner, write_config, write_guest

from vmscan.av.clamd_client import ClamdClient
from vmscan.model import ImageResult, ScanResult
from vmscan.nightly import load_config, run_nightly

pytestmark = pytest.mark.skipif(shutil.which("clamd") is None, reason="clamd not installed")


class _ClamdUser(FakeScanner):
    """FakeScanner that records which clamd each wave got, and checks it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.clamds: list[tuple[str, int]] = []

    def __call__(
        self,
        sources: list[str],
        opts: Any,
        on_image_done: Callable[[ImageResult], None] | None = None,
    ) -> ScanResult:
        desc = opts.plugin_options.get("clamd_descriptor")
        assert desc is not None, opts.plugin_options.get("clamd_error")
        client = ClamdClient(opts.plugin_options["clamd"], timeout=30)
        assert client.version() == desc.version
        assert _processes_naming(desc.runtime_dir), "the clamd is not named by its folder"
        self.clamds.append((desc.address, desc.runtime_dir))
        return super().__call__(sources, opts, on_image_done)


def test_one_clamd_for_the_night_and_none_after(tmp_path: Path) -> None:
    # Three storage folders, at most one image per storage at a time, two jobs.
    for folder in ("a", "b", "c"):
        for n in range(2):
            write_guest(tmp_path / "imgs" / folder / f"vm{n}.img", hostname=f"{folder}{n}")
    path = write_config(tmp_path, str(tmp_path / "imgs" / "*" / "*.img"))
    text = path.read_text().replace("max_per_storage = 2", "max_per_storage = 1")
    path.write_text(text.replace("[limits]\n", '[limits]\nstorage_group = "folder"\n'))
    cfg = load_config(path)
    scanner = _ClamdUser()
    out = run_nightly(cfg, scan_fn=scanner, manage_services=True)
    assert out.scanned == 6
    assert len(scanner.calls) == 1  # one pool, a semaphore per storage in it
    assert len(set(scanner.clamds)) == 1
    runtime = scanner.clamds[0][1]
    assert _processes_naming(runtime) == [], "clamd outlived the night"
    assert not Path(runtime).exists()


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line mentions *text* (our clamd names its folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in cmd and state != "Z":
            found.append(int(pid))
    return found
