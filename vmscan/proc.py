"""Host-side subprocesses with a deadline: own process group, die with vmscan, always reaped.

``subprocess.run(timeout=...)`` kills only the direct child and leaves its children
running; a hostile image can make ``qemu-img`` block forever (a backing loop, a FIFO). Every
program vmscan runs goes through :func:`run_bounded` (or :func:`spawn` for long-lived
ones such as clamd): the child gets its own process group, which is killed with SIGKILL
and reaped on expiry, and ``PR_SET_PDEATHSIG`` so that it dies when the vmscan process
(strictly: the thread) that started it dies, even by SIGKILL. Output is read with a size
limit. The names of live children are kept so that a signal handler can kill them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vmscan.errors import VmscanError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: Output of one helper program beyond this is a failure (qemu-img info is a few KiB).
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024

try:
    # Resolved once, before any fork: the preexec function must not load libraries.
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None

#: Process groups of children started here and not yet reaped (pgid == child pid).
_live: set[int] = set()


class SubprocessError(VmscanError):
    """A helper program could not be run, ran out of time or said too much."""


class SubprocessTimeout(SubprocessError):
    """A helper program did not finish before its deadline (it was killed)."""


@dataclass(frozen=True)
class Completed:
    """What a finished helper program left: exit code and bounded output."""

    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send *sig* to this process when its parent thread exits."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def die_with_parent_preexec() -> Callable[[], None]:
    """A ``preexec_fn``: PDEATHSIG SIGKILL, and exit at once if the parent is already gone."""
    parent = os.getpid()

    def _preexec() -> None:
        set_pdeathsig(signal.SIGKILL)
        # The parent may have died between fork and prctl: then nobody would kill us.
        if os.getppid() != parent:
            os._exit(127)

    return _preexec


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a whole process group; a group that is gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_live() -> None:
    """SIGKILL every helper process group still running (from a signal handler or cleanup)."""
    for pgid in list(_live):
        kill_group(pgid)


def spawn(
    argv: Sequence[str],
    *,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own process group that dies with this thread.

    *new_session* also detaches it from the terminal (a Ctrl-C meant for vmscan must not
    reach clamd mid-stream; vmscan stops it itself).
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            close_fds=True,
            start_new_session=new_session,
            process_group=None if new_session else 0,
            preexec_fn=die_with_parent_preexec(),
        )
    except OSError as e:
        raise SubprocessError(f"cannot run {argv[0]}: {e.strerror or e}") from e
    _live.add(proc.pid)
    return proc


def reap(proc: subprocess.Popen[bytes], grace: float = 0.0) -> int:
    """Kill *proc*'s process group (after *grace* seconds for a clean exit) and reap it."""
    if proc.poll() is None and grace > 0:
        kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # Even when the leader has exited, children it left in its group are killed too.
    kill_group(proc.pid)
    # SIGKILL cannot be ignored, but a process holding gigabytes takes a while to free them.
    while True:
        try:
            rc = proc.wait(30)
            break
        except subprocess.TimeoutExpired:  # pragma: no cover - depends on the kernel
            log.warning("process %d is slow to die after SIGKILL; still waiting", proc.pid)
    _live.discard(proc.pid)
    return rc


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    max_output: int = DEFAULT_MAX_OUTPUT,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run *argv* to completion within *timeout* seconds, stdin closed, output bounded.

    Raises :class:`SubprocessTimeout` when the deadline passes (the whole process group is
    killed and reaped first) and :class:`SubprocessError` when the program cannot be
    started or writes more than *max_output* bytes. Any exception (a signal handler's too)
    kills and reaps the child before it propagates.
    """
    name = " ".join(os.path.basename(a) for a in argv[:2])
    if timeout <= 0:
        raise SubprocessTimeout(f"{name}: no time left in the budget")
    t0 = time.monotonic()
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out: dict[int, bytearray] = {}
    assert proc.stdout is not None and proc.stderr is not None
    pipes = (proc.stdout, proc.stderr)
    try:
        with selectors.DefaultSelector() as sel:
            for stream in pipes:
                sel.register(stream, selectors.EVENT_READ)
                out[stream.fileno()] = bytearray()
            total = 0
            open_streams = 2
            deadline = t0 + timeout
            while open_streams:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SubprocessTimeout(f"{name} did not finish within {timeout:.0f} s; killed")
                for key, _ in sel.select(min(left, 1.0)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    out[key.fd] += chunk
                    total += len(chunk)
                    if total > max_output:
                        raise SubprocessError(f"{name} wrote more than {max_output} bytes")
            left = max(0.0, deadline - time.monotonic())
            try:
                rc = proc.wait(left)
            except subprocess.TimeoutExpired as e:
                raise SubprocessTimeout(
                    f"{name} did not finish within {timeout:.0f} s; killed"
                ) from e
        stdout = bytes(out[proc.stdout.fileno()])
        stderr = bytes(out[proc.stderr.fileno()])
    finally:
        rc = reap(proc)
        for stream in pipes:
            stream.close()
    return Completed(rc, stdout, stderr, time.monotonic() - t0)


class Budget:
    """The time left for one image: every helper's timeout is cut to what remains."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left (infinite when unbounded)."""
        if self.deadline is None:
            return float("inf")
        return self.deadline - time.monotonic()

    def cap(self, seconds: float) -> float:
        """*seconds*, or what remains of the budget when that is less."""
        return min(seconds, self.remaining())
