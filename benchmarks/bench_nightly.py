"""Benchmark: a nightly over 8 fixture images (jobs = 2), 1 image changed vs all 8 changed.

Run with ``make bench`` (or ``python benchmarks/bench_nightly.py``). The images are copies
of the small ``data-disk`` fixture (64 MiB, ext4, no OS: cheap appliances, and a result
that completes, so unchanged images are carried); "changed" is a 4 KiB write into the
last, unused block of the disk with ``qemu-io``. Prints wall times, their ratio (target
<= 0.25) and how many times a managed clamd was started per night (must be 1). Real
scanner, appliances, clamd and state database; nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fixtures
from vmscan.av import clamd_manager
from vmscan.nightly import load_config, run_nightly

IMAGES = 8
CHECKS = '["antivirus", "migration"]'


def _change(image: Path, n: int) -> None:
    """Write 4 KiB at the end of the virtual disk (a free block): new content."""
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "qcow2", str(image)],
            capture_output=True,
            check=True,
        ).stdout
    )
    offset = int(info["virtual-size"]) - 4096
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {n % 250 + 1} {offset} 4k", str(image)],
        capture_output=True,
        check=True,
    )


class _StartCounter:
    """Counts ManagedClamd.start calls (clamd is started in this process, the owner)."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = clamd_manager.ManagedClamd.start

    def __enter__(self) -> _StartCounter:
        orig = self._orig

        def start(inner: clamd_manager.ManagedClamd) -> clamd_manager.ManagedClamd:
            self.count += 1
            return orig(inner)

        clamd_manager.ManagedClamd.start = start  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        clamd_manager.ManagedClamd.start = self._orig  # type: ignore[method-assign]


def _night(cfg_path: Path) -> tuple[float, int, int, int]:
    """(wall seconds, images scanned, images carried, clamd starts) of one night."""
    cfg = load_config(cfg_path)
    with _StartCounter() as starts:
        t0 = time.monotonic()
        out = run_nightly(cfg)
        wall = time.monotonic() - t0
    if out.error or out.failed:
        print(f"  run {out.run_id}: error={out.error!r} failed={out.failed}", file=sys.stderr)
    return wall, out.scanned, out.skipped, starts.count


def _show(label: str, night: tuple[float, int, int, int]) -> tuple[float, int, int, int]:
    wall, scanned, carried, starts = night
    print(
        f"nightly: {label:22s} {wall:6.1f} s  scanned {scanned}  carried {carried}  "
        f"clamd starts {starts}",
        flush=True,
    )
    return night


def bench_nightly() -> None:
    base = fixtures.build("data-disk", "qcow2")
    with tempfile.TemporaryDirectory(prefix="vmscan-bench-nightly-") as tmp_:
        tmp = Path(tmp_)
        imgs = tmp / "imgs"
        imgs.mkdir()
        images = []
        for i in range(IMAGES):
            dest = imgs / f"vm{i}.qcow2"
            shutil.copyfile(base, dest)
            images.append(dest)
        cfg_path = tmp / "vmscan.toml"
        cfg_path.write_text(
            "\n".join(
                [
                    'fail_on = "none"',
                    "[images]",
                    f'paths = ["{imgs}/*.qcow2"]',
                    "[scan]",
                    f"checks = {CHECKS}",
                    "[limits]",
                    "jobs = 2",
                    "max_per_storage = 2",
                    "[state]",
                    f'database = "{tmp / "state.db"}"',
                    "[reports]",
                    f'dir = "{tmp / "reports"}"',
                    'formats = ["json"]',
                ]
            )
            + "\n"
        )
        first = _show("first night (all new)", _night(cfg_path))  # fills the state DB
        del first
        _change(images[3], 1)
        one = _show("1 of 8 changed", _night(cfg_path))
        for n, img in enumerate(images):
            _change(img, n + 2)
        every = _show("8 of 8 changed", _night(cfg_path))
        _show("nothing changed", _night(cfg_path))
    print(
        f"nightly: ratio 1-changed / all-changed = {one[0] / every[0]:.2f} (target <= 0.25); "
        f"clamd starts per night with images to scan: {one[3]}, {every[3]} (must be 1)"
    )


if __name__ == "__main__":
    bench_nightly()
