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
import threading
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


class _Lender:
    """Appliance slots the pool has no image for, lent to its workers' helper appliances.

    Shared with the forked workers: ``offered`` (set by the pool: free slots while no
    pending source can start), ``borrowed`` per source (zeroed when its worker ends, so a
    killed worker's loan is never lost), and for a per-storage limit each source's storage
    group and whether it runs: a helper reads the same storage, so it counts against the
    limit like an image does.
    """

    def __init__(self, ctx: Any, n_sources: int, groups: list[int], per_storage: int) -> None:
        n = max(1, n_sources)
        self.lock = ctx.Lock()
        self.offered = ctx.Value("i", 0, lock=False)
        self.borrowed = ctx.Array("i", n, lock=False)
        self.active = ctx.Array("i", n, lock=False)
        self.group = ctx.Array("i", groups or [0] * n, lock=False)
        self.per_storage = per_storage

    def total(self) -> int:
        return sum(self.borrowed)

    def storage_room(self, idx: int) -> bool:
        if self.per_storage <= 0:
            return True
        g = self.group[idx]
        used = sum(
            self.active[j] + self.borrowed[j] for j in range(len(self.group)) if self.group[j] == g
        )
        return bool(used < self.per_storage)


#: In a worker: the lender of its pool and the index of its source (set before the fork).
_lender: _Lender | None = None
_index = 0
_fork_lock = threading.Lock()


def borrow_slot() -> bool:
    """In a scan worker: take one slot of the pool for a helper appliance, if one is free."""
    lender = _lender
    if lender is None:
        return False
    with lender.lock:
        if lender.total() >= lender.offered.value or not lender.storage_room(_index):
            return False
        lender.borrowed[_index] += 1
        return True


def return_slot() -> None:
    lender = _lender
    if lender is None:
        return
    with lender.lock:
        if lender.borrowed[_index] > 0:
            lender.borrowed[_index] -= 1


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


def _end_worker(r: _Running, lender: _Lender | None = None) -> None:
    """Kill what is left of a worker's group and remove its folders (and its loans)."""
    _kill_group(r.proc)
    if lender is not None:
        with lender.lock:
            lender.borrowed[r.index] = 0
            lender.active[r.index] = 0
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
    global _lender, _index
    results: list[ImageResult | None] = [None] * len(sources)
    ctx = mp.get_context("fork")
    keys = storage if storage is not None and len(storage) == len(sources) else None
    group_of = {k: i for i, k in enumerate(dict.fromkeys(keys or []))}
    lender = _Lender(
        ctx,
        len(sources),
        [group_of[k] for k in keys] if keys else [],
        per_storage if keys else 0,
    )
    pending = list(enumerate(sources))
    running: list[_Running] = []
    busy: dict[str, int] = {}
    waits = after if after is not None and len(after) == len(sources) else None
    if waits is not None:
        # Only an earlier source can be waited for: no cycle, and the first one always starts.
        waits = [w if w is not None and 0 <= w < i else None for i, w in enumerate(waits)]

    def storage_used(idx: int) -> int:
        """Appliances on the storage of source *idx*: its images' and their helpers'."""
        assert keys is not None
        g = lender.group[idx]
        loans = sum(lender.borrowed[j] for j in range(len(sources)) if lender.group[j] == g)
        return busy.get(keys[idx], 0) + int(loans)

    def next_pending() -> tuple[int, str] | None:
        """The first pending source whose storage has a free slot and whose wait is over."""
        for pos, (idx, label) in enumerate(pending):
            first = waits[idx] if waits is not None else None
            if first is not None and results[first] is None:
                continue
            if keys is None or per_storage <= 0 or storage_used(idx) < per_storage:
                del pending[pos]
                if keys is not None:
                    busy[keys[idx]] = busy.get(keys[idx], 0) + 1
                return idx, label
        return None

    def next_startable() -> int | None:
        """The first pending source that could start (storage room, wait over), unmoved."""
        for idx, _label in pending:
            first = waits[idx] if waits is not None else None
            if first is not None and results[first] is None:
                continue
            if keys is None or per_storage <= 0 or storage_used(idx) < per_storage:
                return idx
        return None

    def finish(idx: int, res: ImageResult) -> None:
        results[idx] = res
        if on_image_done:
            on_image_done(res)
        if progress:
            progress(res)

    try:
        while pending or running:
            while pending and len(running) + lender.total() < jobs:
                nxt = next_pending()
                if nxt is None:
                    break  # every pending source waits for its storage or another source
                idx, label = nxt
                wdir = run.worker_dir(idx)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=worker, args=(label, *worker_args, child, run, wdir), daemon=False
                )
                # The fork inherits them: the worker's helpers borrow from this pool.
                with lender.lock:
                    lender.active[idx] = 1
                with _fork_lock:  # pools in threads (a fleet worker) fork one at a time
                    saved = (_lender, _index)
                    _lender, _index = lender, idx
                    try:
                        proc.start()
                    finally:
                        _lender, _index = saved
                child.close()
                assert proc.pid is not None
                run.track_process(proc.pid)
                running.append(_Running(label, idx, proc, parent, time.monotonic() + timeout, wdir))
            with lender.lock:
                # Slots no pending source can take now (none left, or all wait): lent.
                startable = bool(pending) and next_startable() is not None
                lender.offered.value = 0 if startable else max(0, jobs - len(running))
            if not running:
                # Every slot is lent out or every pending source waits: a helper will end.
                time.sleep(0.1)
                continue
            wait_s = max(0.1, min(r.deadline for r in running) - time.monotonic())
            if cancelled is not None or (startable and lender.total()):
                # (A source waits for a slot a helper holds: returned without a message.)
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
                    _end_worker(r, lender)  # stray qemu, if any, and the worker's folders
                elif now >= r.deadline:
                    _end_worker(r, lender)
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
                    _end_worker(r, lender)
                    r.conn.close()
                for idx, label in [(r.index, r.label) for r in running] + pending:
                    results[idx] = _not_finished(label, CANCELLED)
                running, pending = [], []
    except runctl.Interrupted as exc:
        for r in running:
            _end_worker(r, lender)
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
            _end_worker(r, lender)
    result.images = [r for r in results if r is not None]
    result.finished_at = clock()
