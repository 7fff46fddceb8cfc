"""Subprocesses with deadlines: the whole process group dies, output is bounded."""

from __future__ import annotations

import os
import uuid

import pytest
from procwatch import processes_with, wait_until

from vmscan.proc import SubprocessError, SubprocessTimeout, run_bounded


def test_deadline_kills_the_whole_group() -> None:
    """A grandchild (what subprocess.run(timeout=...) leaves running) dies too."""
    tag = f"VMSCAN_TEST_{uuid.uuid4().hex}"
    os.environ[tag] = "1"
    try:
        with pytest.raises(SubprocessTimeout, match="did not finish within 1 s"):
            run_bounded(["sh", "-c", "sleep 300 & sleep 300"], timeout=1)
    finally:
        del os.environ[tag]
    assert wait_until(lambda: not processes_with(tag), 5), processes_with(tag)


def test_output_is_bounded_and_exit_codes_are_kept() -> None:
    with pytest.raises(SubprocessError, match="more than 1000 bytes"):
        run_bounded(["sh", "-c", "yes | head -c 100000"], timeout=10, max_output=1000)
    done = run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_missing_program_is_a_clear_error() -> None:
    with pytest.raises(SubprocessError, match="cannot run"):
        run_bounded(["/nonexistent/qemu-img", "info"], timeout=5)
