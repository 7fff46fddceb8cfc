"""Helpers for tests that watch a vmscan run from outside: its processes and folders."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path


def processes_with(needle: str) -> dict[int, str]:
    """pid -> command line of processes whose environment mentions *needle*.

    Every process of a run (workers, qemu, clamd, the janitor) inherits ``TMPDIR``: a
    test that gives the run its own ``TMPDIR`` finds all of them, and only them.
    """
    found: dict[int, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle.encode() in env and state != "Z":
            found[int(pid)] = cmd.decode("utf-8", "replace")[:65536]
    return found


def sockdirs_of(cmdline: str) -> set[str]:
    """libguestfs socket folders named on a qemu command line."""
    return set(re.findall(r"path=(/tmp/libguestfs[A-Za-z0-9]{6})/", cmdline))


def wait_until(cond: Callable[[], bool], seconds: float, step: float = 0.2) -> bool:
    """Poll *cond* until it holds or *seconds* pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def leftovers(tmp: Path, sockdirs: set[str]) -> list[str]:
    """What a finished or killed run left: processes, files in its TMPDIR, socket folders."""
    out = [f"process {pid}: {cmd[:200]}" for pid, cmd in processes_with(str(tmp)).items()]
    out += [f"file {p}" for p in tmp.iterdir()]
    out += [f"socket folder {d}" for d in sorted(sockdirs) if os.path.exists(d)]
    return out
