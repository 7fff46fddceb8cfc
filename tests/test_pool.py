"""The image pool (vmscan.pool): real forked workers, a semaphore per storage.

The worker here waits instead of scanning (the pool does not care what a worker does);
each writes when it started and ended, and the intervals are checked: never more than
``per_storage`` of one storage at once, and the other storages' images use the free slots
meanwhile (no waiting for a wave's slowest image: shown by cause, not by a clock).
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from vmscan import pool, runctl
from vmscan.model import ImageResult, ImageStatus, ScanResult


def _sleeper(label: str, log_dir: str, conn: Connection, run: Any, wdir: Path) -> None:
    start = time.monotonic()
    if label.endswith("slow"):
        # Runs until B/1 has finished: a pool that waited for this image before giving its
        # storage's neighbours the free slot would never get there (30 s, then it fails).
        waited = Path(log_dir, "B_1")
        while not waited.exists() and time.monotonic() - start < 30:
            time.sleep(0.05)
    else:
        time.sleep(0.2)
    Path(log_dir, label.replace("/", "_")).write_text(f"{start} {time.monotonic()}")
    conn.send(ImageResult(source=label, status=ImageStatus.OK))
    conn.close()


def _run(
    tmp_path: Path, sources: list[str], storage: list[str], jobs: int, per: int
) -> dict[str, tuple[float, float]]:
    result = ScanResult(schema_version="1", vmscan_version="t", started_at="")
    with runctl.run_scope() as run:
        pool.run_images(
            run, result, sources, worker=_sleeper, worker_args=(str(tmp_path),), jobs=jobs,
            timeout=60, clock=lambda: "", storage=storage, per_storage=per,
        )  # fmt: skip
    assert [i.source for i in result.images] == sources
    out = {}
    for s in sources:
        a, b = Path(tmp_path, s.replace("/", "_")).read_text().split()
        out[s] = (float(a), float(b))
    return out


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = most = 0
    for _t, d in events:
        now += d
        most = max(most, now)
    return most


def test_one_image_per_storage_at_a_time_and_the_free_slot_goes_to_another(tmp_path: Path) -> None:
    # Storage A: one slow image then two quick ones; storage B: three quick ones.
    sources = ["A/0-slow", "A/1", "A/2", "B/0", "B/1", "B/2"]
    storage = [s.split("/")[0] for s in sources]
    spans = _run(tmp_path, sources, storage, jobs=3, per=1)
    for key in ("A", "B"):
        assert _most_at_once([v for k, v in spans.items() if k.startswith(key)]) == 1
    # While A's slow image ran, B's ran one after the other in the other slot.
    slow = spans["A/0-slow"]
    assert all(slow[0] < spans[f"B/{i}"][1] < slow[1] for i in range(2))


def test_without_a_limit_the_jobs_bound_alone(tmp_path: Path) -> None:
    sources = [f"A/{i}" for i in range(4)]
    spans = _run(tmp_path, sources, ["A"] * 4, jobs=2, per=0)
    assert _most_at_once(list(spans.values())) == 2


def _hanger(label: str, log_dir: str, conn: Connection, run: Any, wdir: Path) -> None:
    os.setpgrp()  # as the scan worker does: the pool kills the group
    Path(log_dir, label).write_text(str(os.getpid()))
    time.sleep(120)


def test_cancelled_kills_the_running_and_reports_the_rest_not_scanned(tmp_path: Path) -> None:
    # A fleet task whose coordinator cancelled it: the pool asks ``cancelled`` while its
    # worker runs; once it says so, the worker is killed and nothing is reported scanned.
    sources = ["A/0", "A/1"]
    asked: list[bool] = []

    def cancelled() -> bool:
        started = Path(tmp_path, "A/0").exists()
        asked.append(started)
        return started

    Path(tmp_path, "A").mkdir()
    result = ScanResult(schema_version="1", vmscan_version="t", started_at="")
    with runctl.run_scope() as run:
        pool.run_images(
            run, result, sources, worker=_hanger, worker_args=(str(tmp_path),), jobs=1,
            timeout=60, clock=lambda: "", cancelled=cancelled,
        )  # fmt: skip
        assert not any(run.path.iterdir())  # the worker's folder went with it
    assert [i.source for i in result.images] == sources
    assert all(i.status == ImageStatus.ERROR for i in result.images)
    assert all("cancelled" in i.errors[0] for i in result.images), result.images
    assert asked[-1] is True and not Path(tmp_path, "A/1").exists()  # A/1 never started
    pid = int(Path(tmp_path, "A/0").read_text())
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        alive = False
    assert not alive


def test_deferred_interrupts_deliver_the_signal_after_the_block() -> None:
    steps: list[str] = []
    with runctl.interruptible(), pytest.raises(runctl.Interrupted) as info:
        with runctl.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler would have run by now
            steps.append("block finished")
        steps.append("not reached")
    assert steps == ["block finished"] and info.value.signum == signal.SIGTERM


def test_a_source_waits_for_the_one_it_comes_after(tmp_path: Path) -> None:
    """``after``: img@1 and img@2 start only once img has finished (they take its files
    from the hash cache); another image takes the free slot meanwhile (img runs until it
    has finished)."""
    sources = ["img-slow", "img@1", "img@2", "B/1"]
    result = ScanResult(schema_version="1", vmscan_version="t", started_at="")
    with runctl.run_scope() as run:
        pool.run_images(
            run, result, sources, worker=_sleeper, worker_args=(str(tmp_path),), jobs=2,
            timeout=60, clock=lambda: "", after=[None, 0, 0, None],
        )  # fmt: skip
    assert [i.source for i in result.images] == sources
    spans = {s: Path(tmp_path, s.replace("/", "_")).read_text().split() for s in sources}
    base_end = float(spans["img-slow"][1])
    assert float(spans["img@1"][0]) >= base_end and float(spans["img@2"][0]) >= base_end
    assert float(spans["B/1"][1]) <= base_end  # it ran in the free slot, beside img
