"""Runs vmscan's own clamd: private config, socket and database folder; start, restart, stop.

The parent process of a scan run owns one :class:`ManagedClamd`. Worker processes only get
its ``address``; the runtime folder beside the socket holds ``vmscan-clamd.json`` so a
worker that finds clamd dead can restart it (:func:`restart_managed`), serialised by a
file lock, and the owner stops whichever clamd is current when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vmscan.av.clamd_client import ClamdClient, ClamdUnavailable
from vmscan.av.signatures import DEFAULT_SIG_DIR, database_digest
from vmscan.errors import VmscanError

__all__ = [
    "ClamdLimits",
    "ClamdUnavailable",
    "ManagedClamd",
    "managed_info",
    "restart_managed",
]

log = logging.getLogger(__name__)

SYSTEM_DB_DIR = Path("/var/lib/clamav")
MARKER = "vmscan-clamd.json"
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
        "PidFile": str(rt / "clamd.pid"),
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_clamd(pid: int, conf: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"clamd" in cmdline and conf.encode() in cmdline


def _log_tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in lines[-n:] if ln.strip())


def _spawn(info: dict[str, Any]) -> subprocess.Popen[bytes]:
    rt = Path(info["runtime_dir"])
    out = open(rt / "clamd.stderr", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [info["binary"], "--config-file", info["config"], "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            # Own session: a Ctrl-C meant for vmscan must not kill clamd mid-stream; the
            # owner stops it explicitly.
            start_new_session=True,
            close_fds=True,
        )
    finally:
        out.close()


def _wait_pong(info: dict[str, Any], proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    client = ClamdClient(info["address"], timeout=10, connect_timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.ping():
            return
        if proc is not None and proc.poll() is not None:
            rt = Path(info["runtime_dir"])
            tail = _log_tail(rt / "clamd.stderr") or _log_tail(rt / "clamd.log")
            raise ClamdUnavailable(f"clamd exited with code {proc.returncode}: {tail}")
        time.sleep(0.1)
    raise ClamdUnavailable(f"clamd did not answer PING within {timeout:.0f} s")


def _kill_current(info: dict[str, Any], grace: float = 10.0) -> None:
    """Stop the clamd named by the pid file, if it is still ours and alive."""
    try:
        pid = int((Path(info["runtime_dir"]) / "clamd.pid").read_text().strip())
    except (OSError, ValueError):
        return
    if not _is_our_clamd(pid, info["config"]):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, info["config"], grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, info["config"], grace)


def _wait_gone(pid: int, conf: str, timeout: float) -> bool:
    """Wait for a clamd to exit, reaping it when it is our child (no zombie left)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass  # started by another process of the run: its parent reaps it
        if not _pid_alive(pid) or not _is_our_clamd(pid, conf):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def managed_info(address: str) -> dict[str, Any] | None:
    """The marker a :class:`ManagedClamd` left beside its socket; None for other clamds."""
    if not address.startswith("unix:"):
        return None
    marker = Path(address[len("unix:") :]).parent / MARKER
    try:
        info: dict[str, Any] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("address") == address else None


def restart_managed(address: str, timeout: float = 180.0) -> bool:
    """Bring a managed clamd back after it died (any process of the run may call this).

    Returns False when *address* is not a managed clamd or it could not be restarted.
    """
    info = managed_info(address)
    if info is None:
        return False
    lock_path = Path(info["runtime_dir"]) / "restart.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Another worker may have restarted it while we waited for the lock.
            if ClamdClient(address, timeout=10, connect_timeout=2).ping():
                return True
            log.warning("clamd at %s does not answer: restarting it", address)
            _kill_current(info, grace=3.0)
            proc = _spawn(info)
            try:
                _wait_pong(info, proc, timeout)
            except ClamdUnavailable as e:
                log.error("clamd restart failed: %s", e)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return False
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    ) -> None:
        self.signatures_dir = Path(signatures_dir)
        self.system_db_dir = Path(system_db_dir) if system_db_dir else None
        self.limits = limits or ClamdLimits()
        self.threads = threads
        self.start_timeout = start_timeout
        self.clamd_binary = clamd_binary
        self.runtime_parent = runtime_parent
        self.runtime_dir: Path | None = None
        self.address = ""
        self.version = ""
        self.database_digest = ""
        self.start_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: dict[str, Any] = {}

    def _prepare(self, binary: str) -> None:
        # Unix socket paths are limited to 108 bytes: keep the runtime folder short.
        parent = self.runtime_parent or os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
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
        conf = rt / "clamd.conf"
        conf.write_text(_config_text(rt, self.limits, self.threads))
        self.address = f"unix:{rt / 'clamd.sock'}"
        self.database_digest = database_digest(db)
        self._info = {
            "address": self.address,
            "runtime_dir": str(rt),
            "config": str(conf),
            "binary": binary,
            "database_digest": self.database_digest,
            "limits": asdict(self.limits),
            "owner_pid": os.getpid(),
        }
        (rt / MARKER).write_text(json.dumps(self._info, indent=1))

    def start(self) -> ManagedClamd:
        binary = self.clamd_binary or find_clamd()
        if not binary or not os.access(binary, os.X_OK):
            raise ClamdUnavailable(
                "clamd was not found (install Debian's clamav-daemon) or pass --clamd ADDRESS"
            )
        t0 = time.monotonic()
        try:
            self._prepare(binary)
            self._proc = _spawn(self._info)
            _wait_pong(self._info, self._proc, self.start_timeout)
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
        return self

    def restart(self) -> None:
        """Start clamd again (after it died); ClamdUnavailable when it will not come back."""
        if not self._info:
            raise ClamdUnavailable("clamd was never started")
        if not restart_managed(self.address, self.start_timeout):
            raise ClamdUnavailable("clamd could not be restarted")

    @property
    def pid(self) -> int | None:
        if self.runtime_dir is None:
            return None
        try:
            return int((self.runtime_dir / "clamd.pid").read_text().strip())
        except (OSError, ValueError):
            return self._proc.pid if self._proc else None

    def stop(self) -> None:
        if self._info:
            _kill_current(self._info)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            self._proc = None
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
        self._info = {}

    def __enter__(self) -> ManagedClamd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
