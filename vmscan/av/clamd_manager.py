"""Runs vmscan's own clamd: private config, socket and database folder; start, supervise, stop.

The process that starts a :class:`ManagedClamd` owns it: clamd is its child, in its own
session, with ``PR_SET_PDEATHSIG`` so that it dies with the owner even when the owner is
SIGKILLed. Workers (forked) get a :class:`ClamdDescriptor` in memory (address, limits,
database digest): they never look for clamd on disk, and no file on disk ever names a
program vmscan runs. The owner supervises its clamd in a thread and restarts it when it
dies; a worker whose stream breaks only waits, for a bounded time, for clamd to answer
again, and otherwise reports the files ``not_scanned``.

Linux sends the death signal when the *thread* that started the child exits: the first
clamd is started by the thread calling :meth:`ManagedClamd.start` (keep it alive for the
run, as the CLI's main thread is), restarted ones by the supervisor thread, which lives
until :meth:`ManagedClamd.stop`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vmscan.av.clamd_client import ClamdClient, ClamdUnavailable
from vmscan.av.signatures import DEFAULT_SIG_DIR, database_digest
from vmscan.errors import VmscanError
from vmscan.proc import SubprocessError, reap, spawn

__all__ = [
    "ClamdDescriptor",
    "ClamdLimits",
    "ClamdUnavailable",
    "ManagedClamd",
    "clamd_threads",
]

log = logging.getLogger(__name__)

SYSTEM_DB_DIR = Path("/var/lib/clamav")
#: Unix socket paths are limited to 108 bytes.
_MAX_SOCKET_PATH = 100
_SYSTEM_DB_SUFFIXES = (".cvd", ".cld", ".cud")
_OWN_DB_SUFFIXES = (".hsb", ".hdb", ".ndb", ".ldb", ".yar", ".yara", ".fp", ".sfp", ".ign2")
MiB = 1024 * 1024


@dataclass(frozen=True)
class ClamdLimits:
    """Scan limits written explicitly into the generated clamd.conf."""

    stream_max_length: int = 100 * MiB
    max_file_size: int = 100 * MiB
    max_scan_size: int = 400 * MiB
    max_files: int = 10000
    max_recursion: int = 17

    @property
    def largest_file(self) -> int:
        """Larger files cannot be scanned whole: they are reported ``too_large``."""
        return min(self.stream_max_length, self.max_file_size)


def find_clamd() -> str | None:
    """Path of the clamd binary (PATH, then Debian's /usr/sbin)."""
    return shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")


def _config_text(rt: Path, limits: ClamdLimits, threads: int) -> str:
    lines = {
        "LocalSocket": str(rt / "clamd.sock"),
        "LocalSocketMode": "600",
        "FixStaleSocket": "yes",
        "Foreground": "yes",
        "DatabaseDirectory": str(rt / "db"),
        "TemporaryDirectory": str(rt / "tmp"),
        "LogFile": str(rt / "clamd.log"),
        "LogTime": "yes",
        "LogFileMaxSize": "10M",
        "OfficialDatabaseOnly": "no",
        "StreamMaxLength": str(limits.stream_max_length),
        "MaxFileSize": str(limits.max_file_size),
        "MaxScanSize": str(limits.max_scan_size),
        "MaxFiles": str(limits.max_files),
        "MaxRecursion": str(limits.max_recursion),
        # A file clamd could only scan in part must never come back "OK".
        "AlertExceedsMax": "yes",
        "ScanArchive": "yes",
        "MaxThreads": str(threads),
        "MaxConnectionQueueLength": str(max(100, threads * 8)),
        "ReadTimeout": "300",
        "CommandReadTimeout": "30",
        "IdleTimeout": "60",
        # The database never changes under a running scan; no reload checks.
        "SelfCheck": "0",
        "ExtendedDetectionInfo": "no",
    }
    return "".join(f"{k} {v}\n" for k, v in lines.items())


def clamd_threads(jobs: int, streams: int, cores: int | None = None) -> int:
    """MaxThreads for one run: every stream of every job at once, capped by the cores.

    Never below 2, so that a PING (clamd serves it on a worker thread too) is not queued
    behind a long stream and taken for a dead clamd.
    """
    cores = cores or os.cpu_count() or 1
    return max(2, min(jobs * streams, cores))


@dataclass(frozen=True)
class ClamdDescriptor:
    """What a worker needs to use the managed clamd; handed over in memory, never a file."""

    address: str
    runtime_dir: str
    database_digest: str
    limits: ClamdLimits
    version: str
    owner_pid: int
    #: How long a client waits for the owner to bring a dead clamd back.
    restart_wait: float = 120.0


def _log_tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(ln.strip()[:300] for ln in lines[-n:] if ln.strip())


class ManagedClamd:
    """vmscan's own clamd for one scan run (a context manager)."""

    def __init__(
        self,
        signatures_dir: str | Path = DEFAULT_SIG_DIR,
        *,
        system_db_dir: str | Path | None = SYSTEM_DB_DIR,
        limits: ClamdLimits | None = None,
        threads: int = 4,
        start_timeout: float = 300.0,
        clamd_binary: str | None = None,
        runtime_parent: str | Path | None = None,
        supervise: bool = True,
        max_restarts: int = 5,
    ) -> None:
        self.signatures_dir = Path(signatures_dir)
        self.system_db_dir = Path(system_db_dir) if system_db_dir else None
        self.limits = limits or ClamdLimits()
        self.threads = threads
        self.start_timeout = start_timeout
        self.clamd_binary = clamd_binary
        self.runtime_parent = runtime_parent
        self.supervise = supervise
        self.max_restarts = max_restarts
        self.runtime_dir: Path | None = None
        self.address = ""
        self.version = ""
        self.database_digest = ""
        self.start_seconds = 0.0
        #: Times the supervisor (or :meth:`restart`) brought clamd back.
        self.restarts = 0
        self._binary = ""
        self._conf: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._supervisor: threading.Thread | None = None
        #: Called with the pid of every clamd started (the run's janitor registers it).
        self.on_spawn: list[Callable[[int], None]] = []

    def _prepare(self) -> None:
        parent = str(self.runtime_parent or os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
        if len(parent) > _MAX_SOCKET_PATH - 30:
            parent = "/tmp"  # the socket path must stay under 108 bytes
        rt = Path(tempfile.mkdtemp(prefix="vmscan-clamd-", dir=parent))
        os.chmod(rt, 0o700)
        self.runtime_dir = rt
        db = rt / "db"
        db.mkdir()
        (rt / "tmp").mkdir()
        if not self.signatures_dir.is_dir():
            raise ClamdUnavailable(f"signature folder {self.signatures_dir} does not exist")
        for p in sorted(self.signatures_dir.iterdir()):
            if p.is_file() and p.suffix in _OWN_DB_SUFFIXES:
                shutil.copyfile(p, db / p.name)
        if self.system_db_dir and self.system_db_dir.is_dir():
            for p in sorted(self.system_db_dir.iterdir()):
                if p.is_file() and p.suffix in _SYSTEM_DB_SUFFIXES:
                    # Link rather than copy: the official databases are hundreds of MB.
                    try:
                        os.link(p, db / p.name)
                    except OSError:
                        os.symlink(p, db / p.name)
        self._conf = rt / "clamd.conf"
        self._conf.write_text(_config_text(rt, self.limits, self.threads))
        self.address = f"unix:{rt / 'clamd.sock'}"
        self.database_digest = database_digest(db)

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.runtime_dir is not None and self._conf is not None
        with open(self.runtime_dir / "clamd.stderr", "ab") as out:
            try:
                proc = spawn(
                    [self._binary, "--config-file", str(self._conf), "--foreground"],
                    stdout=out.fileno(),
                    stderr=out.fileno(),
                    # Own session: a Ctrl-C meant for vmscan must not kill clamd mid-stream.
                    new_session=True,
                )
            except SubprocessError as e:
                raise ClamdUnavailable(f"clamd could not be started: {e}") from e
        for hook in self.on_spawn:
            with contextlib.suppress(Exception):
                hook(proc.pid)
        return proc

    def _wait_pong(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        client = ClamdClient(self.address, timeout=10, connect_timeout=2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.ping():
                return
            if proc.poll() is not None:
                assert self.runtime_dir is not None
                tail = _log_tail(self.runtime_dir / "clamd.stderr") or _log_tail(
                    self.runtime_dir / "clamd.log"
                )
                raise ClamdUnavailable(f"clamd exited with code {proc.returncode}: {tail}")
            if self._stopping.is_set():
                raise ClamdUnavailable("clamd start abandoned: vmscan is stopping")
            time.sleep(0.1)
        raise ClamdUnavailable(f"clamd did not answer PING within {timeout:.0f} s")

    def start(self) -> ManagedClamd:
        binary = self.clamd_binary or find_clamd()
        if not binary or not os.access(binary, os.X_OK):
            raise ClamdUnavailable(
                "clamd was not found (install Debian's clamav-daemon) or pass --clamd ADDRESS"
            )
        self._binary = binary
        t0 = time.monotonic()
        try:
            self._prepare()
            self._proc = self._spawn()
            self._wait_pong(self._proc, self.start_timeout)
            self.version = ClamdClient(self.address, timeout=30).version()
        except (OSError, VmscanError) as e:
            self.stop()
            if isinstance(e, ClamdUnavailable):
                raise
            raise ClamdUnavailable(f"clamd could not be started: {e}") from e
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info("clamd %s ready at %s in %.2f s", self.version, self.address, self.start_seconds)
        if self.supervise:
            self._wake_r, self._wake_w = os.pipe()
            self._supervisor = threading.Thread(
                target=self._supervise, name="clamd-supervisor", daemon=True
            )
            self._supervisor.start()
        return self

    @property
    def descriptor(self) -> ClamdDescriptor:
        """What workers get (in memory) to talk to this clamd."""
        if self.runtime_dir is None:
            raise ClamdUnavailable("clamd was never started")
        return ClamdDescriptor(
            address=self.address,
            runtime_dir=str(self.runtime_dir),
            database_digest=self.database_digest,
            limits=self.limits,
            version=self.version,
            owner_pid=os.getpid(),
            restart_wait=min(self.start_timeout, 120.0) if self.supervise else 0.0,
        )

    @property
    def pid(self) -> int | None:
        """The running clamd's pid (from our own child handle, not a pid file)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def _supervise(self) -> None:
        """Wait for clamd to die; start it again unless vmscan is stopping (bounded)."""
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:
                pidfd = -1  # already gone (or no pidfd): poll below sees it
            try:
                while proc.poll() is None and not self._stopping.is_set():
                    fds = [self._wake_r] + ([pidfd] if pidfd >= 0 else [])
                    select.select(fds, [], [], 1.0)
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
            if self._stopping.is_set():
                return
            log.warning("clamd (pid %d) exited with code %s", proc.pid, proc.returncode)
            if self.restarts >= self.max_restarts:
                log.error("clamd died %d times: not restarting it again", self.restarts + 1)
                return
            try:
                self.restart()
            except ClamdUnavailable as e:
                log.error("clamd restart failed: %s", e)
                return

    def restart(self) -> None:
        """Start clamd again (after it died); ClamdUnavailable when it will not come back."""
        with self._lock:
            if not self._binary or self.runtime_dir is None:
                raise ClamdUnavailable("clamd was never started")
            old = self._proc
            if old is not None and old.poll() is None:
                if ClamdClient(self.address, timeout=10, connect_timeout=2).ping():
                    return
                reap(old, grace=3.0)
            log.warning("clamd at %s does not answer: restarting it", self.address)
            proc = self._spawn()
            self._proc = proc
            self.restarts += 1  # counted when started: a client may see it answer at once
            try:
                self._wait_pong(proc, self.start_timeout)
            except ClamdUnavailable:
                reap(proc)
                raise

    def stop(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._supervisor is not None:
            self._supervisor.join(30)
            self._supervisor = None
        with self._lock:
            if self._proc is not None:
                reap(self._proc, grace=10.0)
                self._proc = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None

    def __enter__(self) -> ManagedClamd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
