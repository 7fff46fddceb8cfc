"""Nightly discovery of hostile sources: symlinks out of the configured paths, FIFOs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vmscan.nightly import config_from_dict, discover


def _img(path: Path) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "8M"], check=True, capture_output=True
    )
    return path


def test_symlinks_followed_only_into_configured_paths(tmp_path: Path) -> None:
    vms, other, golden = tmp_path / "vms", tmp_path / "other", tmp_path / "golden"
    for d in (vms, other, golden):
        d.mkdir()
    _img(vms / "a.qcow2")
    os.symlink(_img(other / "secret.qcow2"), vms / "out.qcow2")
    os.symlink(_img(golden / "g.qcow2"), vms / "gold.qcow2")
    os.symlink(vms / "a.qcow2", vms / "in.qcow2")
    os.mkfifo(vms / "pipe.qcow2")

    def errors(extra: dict[str, list[str]]) -> dict[str, str]:
        cfg = config_from_dict({"images": {"paths": [str(vms)], **extra}}, tmp_path / "v.toml")
        return {Path(s.path).name: s.error for s in discover(cfg).sources}

    got = errors({})
    assert got["a.qcow2"] == ""
    assert "in.qcow2" not in got  # the same file as a.qcow2, inside the folder: once
    assert (
        f"a symlink to {other / 'secret.qcow2'}, outside the configured paths" in (got["out.qcow2"])
    )
    assert "outside the configured paths" in got["gold.qcow2"]
    assert "is a FIFO" in got["pipe.qcow2"]
    # A setting allows one more folder: its symlinks are followed, the others still not.
    got = errors({"symlink_targets": [str(golden)]})
    assert got["gold.qcow2"] == ""
    assert "outside the configured paths" in got["out.qcow2"]
