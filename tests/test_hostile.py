"""Hostile inputs refused on the host: one real ``vmscan scan -j 2`` over every case, no appliance.

The cases are built by code (``fixtures/hostile.py``); the file every attack targets holds a
unique marker. Each case must end ``error`` with a message naming the problem, the layer
and the name; the marker must appear nowhere in the report; every file must be unchanged;
no process or temp folder of the run may be left.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from procwatch import processes_with

from fixtures.hostile import CASE_NAMES, HostileSet, build_hostile

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "vmscan" / "schema" / "report.schema.json"


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under *root* (FIFOs, sockets and devices skipped)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def vmscan_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmscan", *args]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileSet]:
    root = tmp_path_factory.mktemp("hostile")
    hs = build_hostile(root, f"VMSCAN-HOSTILE-{uuid.uuid4().hex}")
    try:
        yield hs
    finally:
        hs.close()


@pytest.fixture(scope="module")
def run(hostile: HostileSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tmpdir")
    out = tmp_path_factory.mktemp("out") / "report.json"
    before = tree_hashes(hostile.root)
    env = {**os.environ, "TMPDIR": str(tmp)}
    sources = [c.source for c in hostile.cases]
    proc = subprocess.run(
        vmscan_cmd(
            "scan", "-q", "-j", "2", "--manifest", "--checks", "none", "-o", str(out), *sources
        ),
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    text = out.read_text()
    report = json.loads(text)
    return {
        "rc": proc.returncode,
        "stderr": proc.stderr.decode("utf-8", "replace"),
        "text": text,
        "report": report,
        "by_source": {img["source"]: img for img in report["images"]},
        "before": before,
        "after": tree_hashes(hostile.root),
        "tmp": tmp,
        "left": list(processes_with(str(tmp)).values()),
    }


def test_every_case_is_an_error_and_the_run_exits_2(
    run: dict[str, Any], hostile: HostileSet
) -> None:
    assert run["rc"] == 2, run["stderr"]
    jsonschema.validate(run["report"], json.loads(SCHEMA.read_text()))
    assert run["report"]["interrupted"] is False
    assert len(run["report"]["images"]) == len(hostile.cases)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_refused_with_a_clear_message(
    run: dict[str, Any], hostile: HostileSet, name: str
) -> None:
    case = next(c for c in hostile.cases if c.name == name)
    img = run["by_source"][case.source]
    assert img["status"] == "error", case.name
    assert img["roots"] == [] and img["filesystems"] == [], case.name
    msg = img["errors"][0]
    for words in case.expect:
        assert words in msg, f"{case.name}: {words!r} not in {msg!r}"
    assert len(msg) < 1000 and "Traceback" not in run["text"]


def test_no_marker_anywhere_in_the_report(run: dict[str, Any], hostile: HostileSet) -> None:
    assert hostile.marker not in run["text"]
    assert hostile.marker not in run["stderr"]


def test_files_unchanged(run: dict[str, Any]) -> None:
    assert run["before"] == run["after"]


def test_nothing_left_running_or_on_disk(run: dict[str, Any]) -> None:
    assert run["left"] == []
    assert list(Path(run["tmp"]).iterdir()) == []


def test_refused_before_any_qemu_img_runs_on_a_loop(hostile: HostileSet, tmp_path: Path) -> None:
    """A backing loop is refused by the host-side vetting: qemu-img never sees it (it would
    recurse until memory runs out)."""
    from vmscan.disk import check_disk
    from vmscan.errors import UnsafeImageError

    loop = next(c for c in hostile.cases if c.name.startswith("backing loop"))
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    log = tmp_path / "qemu-img.log"
    (wrapper / "qemu-img").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\nexec /usr/bin/qemu-img "$@"\n'
    )
    (wrapper / "qemu-img").chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{wrapper}:{old}"
    try:
        with pytest.raises(UnsafeImageError, match="backing loop"):
            check_disk(loop.source)
    finally:
        os.environ["PATH"] = old
    ran = log.read_text().splitlines() if log.exists() else []
    # Only qemu-img info of the two layers (it opens no backing file), never check.
    assert all(line.startswith("info ") for line in ran), ran


def test_relative_source_names_still_resolve(hostile: HostileSet, tmp_path: Path) -> None:
    """Workers keep the caller's working directory: a relative source is the caller's file."""
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [*vmscan_cmd("scan", "-q", "--checks", "none", "-o", str(out)), "proto-file.qcow2"],
        cwd=hostile.images,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (img,) = json.loads(out.read_text())["images"]
    assert img["source"] == "proto-file.qcow2"
    assert "protocol prefix 'file:'" in img["errors"][0]
