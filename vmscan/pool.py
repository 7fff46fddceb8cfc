"""Many images in parallel: one forked worker per image, each in its own process group.

A hung appliance (qemu is a child of the worker) is killed with its whole group on the
per-image timeout without touching the others; a finished, dead or killed worker's
folders (its ``TMPDIR`` in the run folder, the libguestfs socket folders it reported) are
removed at once; on SIGTERM/SIGINT every worker is stopped the same way and the images
finished so far are kept.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from vmscan import runctl
from vmscan.model import ImageResult, ImageStatus, ScanResult


@dataclass
class _Running:
    label: str
    index: int
    proc: mp.process.BaseProcess
    conn: Connection
    deadline: float
    wdir: Path
    sockdirs: set[str] = field(default_factory=set)


#: How often (s) a pool with a ``cancelled`` callable asks it.
_CANCEL_POLL = 1.0
#: The reason of a source whose scan was cancelled (``run_images(cancelled=...)``).
CANCELLED = "not scanned: the scan was cancelled (its coordinator stopped or gave it up)"


def _kill_group(proc: mp.process.BaseProcess) -> None:
    if proc.pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.join(5)
    # qemu and libguestfs' recovery process are in the group: wait until they are gone
    # before their folders are removed.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except OSError:
            return
        time.sleep(0.05)


def _end_worker(r: _Running) -> None:
    """Kill what is left of a worker's group and remove its folders."""
    _kill_group(r.proc)
    shutil.rmtree(r.wdir, ignore_errors=True)
    for d in r.sockdirs:
        shutil.rmtree(d, ignore_errors=True)


def _drain(r: _Running) -> ImageResult | None:
    """A result already waiting in a worker's pipe (read without blocking), if any."""
    for _ in range(1000):
        try:
            if not r.conn.poll(0):
                return None
            msg = r.conn.recv()
        except (EOFError, OSError):
            return None
        if isinstance(msg, ImageResult):
            return msg
    return None


def _not_finished(label: str, why: str) -> ImageResult:
    return ImageResult(source=label, status=ImageStatus.ERROR, errors=[why])


def run_images(
    run: runctl.RunDir,
    result: ScanResult,
    sources: list[str],
    *,
    worker: Callable[..., None],
    worker_args: tuple[Any, ...],
    jobs: int,
    timeout: float,
    clock: Callable[[], str],
    on_image_done: Callable[[ImageResult], None] | None = None,
    progress: Callable[[ImageResult], None] | None = None,
    file_progress: Callable[[str, int], None] | None = None,
    storage: list[str] | None = None,
    per_storage: int = 0,
    cancelled: Callable[[], bool] | None = None,
    after: list[int | None] | None = None,
) -> None:
    """Run ``worker(label, *worker_args, conn, run, wdir)`` per source, *jobs* at a time.

    With *storage* (a storage key per source) and *per_storage* > 0, at most that many
    sources of one key run at once: a semaphore per storage over one pool, so a free slot
    goes to the next source whose storage has room instead of waiting for a whole wave.
    With *after* (per source: the index of a source it waits for, or None), a source starts
    only once that one has finished: the points of one image after its current state, so
    that they find its files in the hash cache. The others take the free slots meanwhile.

    *cancelled* (polled about once a second): when it returns true, the workers are killed
    like on a timeout and every unfinished source is reported not scanned (a fleet task
    whose coordinator went away: a thread cannot be interrupted, its children can).

    Fills ``result.images`` in the order of *sources*. On :class:`runctl.Interrupted` the
    workers are killed, their folders removed, ``result`` is marked interrupted and set as
    the exception's ``partial``, and the exception propagates.
    """
    results: list[ImageResult | None] = [None] * len(sources)
    ctx = mp.get_context("fork")
    pending = list(enumerate(sources))
    running: list[_Running] = []
    keys = storage if storage is not None and len(storage) == len(sources) else None
    busy: dict[str, int] = {}
    waits = after if after is not None and len(after) == len(sources) else None
    if waits is not None:
        # Only an earlier source can be waited for: no cycle, and the first one always starts.
        waits = [w if w is not None and 0 <= w < i else None for i, w in enumerate(waits)]

    def next_pending() -> tuple[int, str] | None:
        """The first pending source whose storage has a free slot and whose wait is over."""
        for pos, (idx, label) in enumerate(pending):
            first = waits[idx] if waits is not None else None
            if first is not None and results[first] is None:
                continue
            if keys is None or per_storage <= 0 or busy.get(keys[idx], 0) < per_storage:
                del pending[pos]
                if keys is not None:
                    busy[keys[idx]] = busy.get(keys[idx], 0) + 1
                return idx, label
        return None

    def finish(idx: int, res: ImageResult) -> None:
        results[idx] = res
        if on_image_done:
            on_image_done(res)
        if progress:
            progress(res)

    try:
        while pending or running:
            while pending and len(running) < jobs:
                nxt = next_pending()
                if nxt is None:
                    break  # every pending source waits for its storage or another source
                idx, label = nxt
                wdir = run.worker_dir(idx)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=worker, args=(label, *worker_args, child, run, wdir), daemon=False
                )
                proc.start()
                child.close()
                assert proc.pid is not None
                run.track_process(proc.pid)
                running.append(_Running(label, idx, proc, parent, time.monotonic() + timeout, wdir))
            wait_s = max(0.1, min(r.deadline for r in running) - time.monotonic())
            if cancelled is not None:
                wait_s = min(wait_s, _CANCEL_POLL)
            ready = wait([r.conn for r in running], timeout=wait_s)
            now = time.monotonic()
            for r in list(running):
                res: ImageResult | None = None
                if r.conn in ready:
                    try:
                        msg = r.conn.recv()
                        if isinstance(msg, tuple):  # ("files", n) or ("sockdir", path)
                            if msg[0] == "sockdir" and isinstance(msg[1], str):
                                r.sockdirs.add(msg[1])
                                run.track_dir(msg[1])
                            elif msg[0] == "files" and file_progress:
                                file_progress(r.label, int(msg[1]))
                            continue
                        res = msg
                    except (EOFError, OSError):
                        res = _not_finished(r.label, "the scan worker died (killed or crashed)")
                    r.proc.join(30)
                    _end_worker(r)  # stray qemu, if any, and the worker's folders
                elif now >= r.deadline:
                    _end_worker(r)
                    res = _not_finished(
                        r.label, f"timed out after {timeout:g} s (--timeout); scan abandoned"
                    )
                if res is not None:
                    r.conn.close()
                    running.remove(r)
                    if keys is not None:
                        busy[keys[r.index]] -= 1
                    finish(r.index, res)
            if cancelled is not None and (running or pending) and cancelled():
                for r in running:
                    _end_worker(r)
                    r.conn.close()
                for idx, label in [(r.index, r.label) for r in running] + pending:
                    results[idx] = _not_finished(label, CANCELLED)
                running, pending = [], []
    except runctl.Interrupted as exc:
        for r in running:
            _end_worker(r)
        for r in running:
            res = _drain(r)
            if res is not None:
                with contextlib.suppress(Exception):
                    finish(r.index, res)  # it had finished: its result was in the pipe
        # A worker started in the instant the signal came may not be in ``running``.
        for stray in ctx.active_children():
            if stray.pid is not None:
                with contextlib.suppress(OSError):
                    os.killpg(stray.pid, signal.SIGKILL)
        running = [r for r in running if results[r.index] is None]
        why = f"not scanned: vmscan was interrupted by {exc.signal_name} before it finished"
        for r in running:
            results[r.index] = _not_finished(r.label, why)
        for idx, label in pending:
            results[idx] = _not_finished(label, why)
        running = []
        result.images = [r for r in results if r is not None]
        result.finished_at = clock()
        result.interrupted = True
        result.interrupted_by = exc.signal_name
        exc.partial = result
        raise
    finally:
        for r in running:
            _end_worker(r)
    result.images = [r for r in results if r is not None]
    result.finished_at = clock()
