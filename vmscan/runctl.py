"""One run's processes and temp folders: nothing survives vmscan, however it ends.

A run owns a private folder (``$TMPDIR/vmscan-run-XXXX``): each worker's ``TMPDIR`` (where
libguestfs puts its overlays), the managed clamd's socket and databases, vmscan's own temp
files. The parent removes it at the end of the run, and removes a worker's part as soon as
that worker ends, killed or not. A small *janitor* process, forked before anything else,
covers the case where the parent itself is killed (SIGKILL): the parent tells it over a
pipe which process groups and folders exist; when the pipe closes without a final "done",
the janitor kills those groups (workers, their qemu, clamd) and removes the folders.

libguestfs running as root puts its socket folder in ``/tmp`` whatever ``TMPDIR`` says
(``guestfs_get_sockdir``), so each worker reports the socket folders it creates
(:func:`own_sockdirs`) and the parent and janitor remove those as well.

SIGTERM and SIGINT raise :class:`Interrupted` in the parent so that the scan loop unwinds
through its cleanup and the finished images are still reported.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

#: Socket folders libguestfs makes (``mkdtemp("libguestfsXXXXXX")``).
_SOCKDIR = re.compile(r"^(/tmp/libguestfs[A-Za-z0-9]{6})/[^/]+$")
_current: RunDir | None = None


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: stop cleanly, report what finished, exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        #: The partial result of the scan that was running, when there was one.
        self.partial: Any = None

    @property
    def signal_name(self) -> str:
        """SIGTERM, SIGINT."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (143 SIGTERM, 130 SIGINT)."""
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Further signals while cleaning up must not cut the cleanup or the report short.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within this block SIGTERM and SIGINT raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back during the block, then deliver the first one that came.

    For a step that must not be cut half-way (a cluster being started would be left with
    processes nobody owns): the signal is raised again right after the block, to the
    handler that was in place (main thread only; elsewhere a plain block).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = {s: signal.signal(s, hold) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        signal.raise_signal(got[0])


class _Janitor:
    """A forked process that cleans up after the parent if the parent dies without doing so."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, checked by the kill tests
            os.close(w)
            _janitor_main(r)
        os.close(r)
        os.set_inheritable(w, False)
        self.pid = pid
        self._w: int | None = w
        self._lock = threading.Lock()

    def tell(self, kind: str, value: str | int) -> None:
        """Register a process group ("pgid"), a process ("pid") or a folder ("dir")."""
        line = f"{kind} {value}\n".encode()
        if b"\n" in line[:-1] or len(line) > 4000:
            return  # never a path a line protocol could misread (ours have no newline)
        with self._lock:
            if self._w is not None:
                with contextlib.suppress(OSError):
                    os.write(self._w, line)

    def close_in_child(self) -> None:
        """In a forked worker: drop the pipe, so that only the parent's death closes it."""
        if self._w is not None:
            with contextlib.suppress(OSError):
                os.close(self._w)
            self._w = None

    def finish(self) -> None:
        """The parent cleaned up itself: tell the janitor, let it exit, reap it."""
        self.tell("done", 1)
        with self._lock:
            if self._w is not None:
                os.close(self._w)
                self._w = None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _janitor_main(fd: int) -> None:  # pragma: no cover - runs in the forked child
    """Read registrations until EOF; unless told "done", kill and remove everything."""
    try:
        os.setsid()  # a Ctrl-C or a terminal hang-up meant for vmscan must not stop us
        # Hold nothing of the parent's open: a pipe reader waiting for vmscan's output must
        # see EOF when vmscan ends, not when the janitor does.
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.closerange(3, fd)
        os.closerange(fd + 1, 65536)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        pgids: set[int] = set()
        pids: set[int] = set()
        dirs: list[str] = []
        done = False
        buf = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                kind, _, value = raw.decode("utf-8", "replace").partition(" ")
                if kind == "pgid":
                    pgids.add(int(value))
                elif kind == "pid":
                    pids.add(int(value))
                elif kind == "dir":
                    dirs.append(value)
                elif kind == "done":
                    done = True
        if not done:
            for pgid in pgids:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            _wait_groups_gone(pgids | pids, 30.0)
            for d in reversed(dirs):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        os._exit(0)


def _wait_groups_gone(pgids: set[int], timeout: float) -> None:
    """Until no process of these groups is left (qemu may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for pgid in pgids:
            try:
                os.killpg(pgid, 0)
                alive = True
            except OSError:
                pass
        if not alive:
            return
        time.sleep(0.1)


class RunDir:
    """The private folder of one run, its janitor, and what must be removed with it."""

    def __init__(self, parent: str | None = None) -> None:
        # gettempdir() honours TMPDIR when it is usable and falls back otherwise.
        self.path = Path(tempfile.mkdtemp(prefix="vmscan-run-", dir=parent or None))
        os.chmod(self.path, 0o700)
        self.janitor = _Janitor()
        self.janitor.tell("dir", str(self.path))
        #: What libguestfs should keep sharing across workers (the appliance cache).
        self.cachedir = (
            os.environ.get("LIBGUESTFS_CACHEDIR") or os.environ.get("TMPDIR") or "/var/tmp"
        )
        self._extra: list[str] = []
        self._closed = False

    def worker_dir(self, index: int) -> Path:
        """A fresh folder for one worker (created by the parent, removed by it)."""
        d = self.path / f"w{index}"
        d.mkdir()
        return d

    def track_dir(self, path: str) -> None:
        """A folder outside the run folder to remove with the run (a libguestfs sockdir)."""
        if path not in self._extra:
            self._extra.append(path)
            self.janitor.tell("dir", path)

    def track_process(self, pid: int, group: bool = True) -> None:
        """A process (group) the janitor kills if the parent dies first."""
        self.janitor.tell("pgid" if group else "pid", pid)

    def close(self) -> None:
        """Remove everything (the parent is alive and has stopped its children)."""
        if self._closed:
            return
        self._closed = True
        for d in self._extra:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)
        self.janitor.finish()


def current() -> RunDir | None:
    """The run folder of the run in progress in this process, if any."""
    return _current


@contextlib.contextmanager
def run_scope(parent: str | None = None) -> Iterator[RunDir]:
    """Make a run folder (and its janitor) current for the duration of the block.

    Nested scopes reuse the outer run. Open it before starting threads: the janitor is
    forked and must not inherit a lock held by another thread.
    """
    global _current
    if _current is not None:
        yield _current
        return
    run = RunDir(parent)
    _current = run
    try:
        yield run
    finally:
        _current = None
        run.close()


def enter_worker(run: RunDir, wdir: Path) -> None:
    """In a forked worker: private TMPDIR (libguestfs and vmscan temp files), shared cache.

    The working directory is left alone: sources, ``--state-db`` and ``--policy`` may be
    relative to it (qcow2 data-file names, which qemu resolves against it, must be
    absolute: the vetting refuses relative ones).
    """
    global _current
    run.janitor.close_in_child()
    _current = None
    os.environ["TMPDIR"] = str(wdir)
    os.environ["LIBGUESTFS_CACHEDIR"] = run.cachedir
    if os.geteuid() != 0:
        # libguestfs honours XDG_RUNTIME_DIR for its socket folder, except for root.
        os.environ["XDG_RUNTIME_DIR"] = str(wdir)
    tempfile.tempdir = str(wdir)


def own_sockdirs() -> set[str]:
    """libguestfs socket folders in /tmp whose sockets this process holds open."""
    inodes: dict[str, str] = {}
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as fh:
            for line in fh.read(8 << 20).splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 8:
                    m = _SOCKDIR.match(parts[7])
                    if m:
                        inodes[parts[6]] = m.group(1)
    except OSError:
        return set()
    found: set[str] = set()
    if not inodes:
        return found
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                d = inodes.get(target[len("socket:[") : -1])
                if d:
                    found.add(d)
    return found


def qemu_sockdirs(qemu_pid: int) -> set[str]:
    """libguestfs socket folders named on a qemu command line (``path=/tmp/libguestfsX/..``)."""
    try:
        raw = Path(f"/proc/{qemu_pid}/cmdline").read_bytes()[: 1 << 20]
    except OSError:
        return set()
    out = set()
    for m in re.finditer(rb"path=(/tmp/libguestfs[A-Za-z0-9]{6})/", raw):
        out.add(m.group(1).decode())
    return out


class SockdirWatch:
    """A thread that reports each libguestfs socket folder this worker creates, at once.

    Polling from the moment the worker starts catches the folder within a fraction of a
    second of its creation, long before the appliance finishes booting.
    """

    def __init__(self, report: Callable[[str], None], interval: float = 0.2) -> None:
        self._report = report
        self._interval = interval
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockdir-watch", daemon=True)

    def start(self) -> SockdirWatch:
        self._thread.start()
        return self

    def note(self, dirs: set[str]) -> None:
        """Report folders found another way (a qemu command line)."""
        for d in sorted(dirs - self._seen):
            self._seen.add(d)
            self._report(d)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.note(own_sockdirs())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
