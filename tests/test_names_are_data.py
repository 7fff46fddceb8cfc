"""Names are data (issue 18 item 1): file names from every byte value 1-255 (minus ``/``),
in nested folders, never hide a planted EICAR and never drop a manifest entry.

Hypothesis draws the trees; each one becomes an ext4 image built on the host with
``mke2fs -d`` (no appliance, any byte in a name) and is scanned for real: libguestfs,
the content stream, the managed clamd. Every planted EICAR must be a finding or be named
in ``not_scanned``; every regular file must be in the manifest, its name reversibly
encoded (:func:`vmscan.pathenc.decode_path` gives the bytes back), hashed or with the
reason it is not. Few examples (each is a real scan under TCG), no deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fixtures.specs.debian_lvm import EICAR
from vmscan.cli import main
from vmscan.pathenc import decode_path

pytestmark = pytest.mark.guest

#: One name: 1-12 bytes, any value but NUL and "/"; "." and ".." are not names.
NAME = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)
NAME = NAME.filter(lambda b: b not in (b".", b".."))
#: A tree: up to 12 files, each under 0-3 folders, some of them EICAR.
TREE = st.lists(
    st.tuples(st.lists(NAME, min_size=0, max_size=3), NAME, st.booleans()),
    min_size=1,
    max_size=12,
)
#: Names a scanner is most likely to mishandle, always in the tree beside the drawn ones.
NASTY = (b"new\nline", b"tab\tname", b"\x1b[31mred", b"\xff\xfe", b"*", b"[x]y", b"-rf", b"\\")


def _plant(root: Path, tree: list[tuple[list[bytes], bytes, bool]]) -> dict[bytes, bool]:
    """Write the tree under *root*; guest path bytes -> is it EICAR."""
    planted: dict[bytes, bool] = {}
    items = [*tree, *(([b"nasty"], n, i % 2 == 0) for i, n in enumerate(NASTY))]
    for i, (dirs, name, eicar) in enumerate(items):
        rel = b"/".join([*dirs, name])
        target = os.path.join(os.fsencode(root), rel)
        guest = b"/" + rel
        # A name drawn twice, or a file where a folder is wanted: keep the first.
        if guest in planted or any(p.startswith(guest + b"/") for p in planted):
            continue
        parent = os.path.dirname(target)
        try:
            os.makedirs(parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue
        if os.path.isdir(target):
            continue
        with open(target, "wb") as fh:
            fh.write(EICAR if eicar else f"plain file {i}\n".encode())
        planted[guest] = eicar
    return planted


def _scan(image: Path, out: Path) -> dict[str, Any]:
    args = [
        "scan",
        "-q",
        "--no-cache",
        "--manifest",
        "--checks",
        "antivirus",
        "--fail-on",
        "critical",
    ]
    rc = main([*args, "-o", str(out), str(image)])
    # Some EICAR is always planted (critical: 1); 2 when something was not scanned.
    assert rc in (1, 2), rc
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
    database=None,
    # Each example is a real scan (a minute under TCG): report the failing tree as drawn.
    phases=[Phase.explicit, Phase.generate],
)
@given(tree=TREE)
def test_no_name_hides_eicar_or_a_manifest_entry(
    tree: list[tuple[list[bytes], bytes, bool]], tmp_path: Path
) -> None:
    if not shutil.which("mke2fs"):
        pytest.skip("mke2fs (e2fsprogs) is not installed")
    # One folder per example (the function-scoped tmp_path is shared between examples).
    work = Path(tempfile.mkdtemp(prefix="names-", dir=tmp_path))
    root = work / "tree"
    root.mkdir()
    planted = _plant(root, tree)
    image = work / "names.raw"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(image), "32M"],
        check=True,
        capture_output=True,
    )
    (img,) = _scan(image, work / "report.json")["images"]
    assert img["status"] in ("no_os", "partial"), img["errors"]
    manifest = {decode_path(m["path"]): m for m in img["manifest"]}
    for guest in planted:
        entry = manifest.get(guest)
        assert entry is not None, f"{guest!r} missing from the manifest"
        assert entry["sha256"] or entry.get("error"), entry
    vols = img["sections"].get("data_volumes") or []
    found = {
        decode_path(f["target"])
        for v in vols
        for f in v.get("findings") or []
        if f["check"] == "antivirus"
    }
    av = img["sections"]["antivirus"]
    not_scanned = {decode_path(p["path"]) for p in (av.get("not_scanned") or {}).get("paths", [])}
    for guest, eicar in planted.items():
        if eicar:
            assert guest in found or guest in not_scanned, f"EICAR at {guest!r} missed"
        else:
            assert guest not in found, f"{guest!r} is not EICAR"
    if not_scanned:
        # Something the scan meant to read was not read: never "complete".
        assert av["status"] == "incomplete" and img["status"] == "partial"
