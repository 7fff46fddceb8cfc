"""The nightly's identity covers every file of a disk: images built with real ``qemu-img``.

Each case changes one byte of data in a file the top image only names (a monolithicFlat
VMDK's flat extent, a qcow2 external data file, a backing file two levels down) and keeps
the file's size and mtime: the next run must open the image again; with nothing changed it
must open nothing. The scan itself is a stand-in (what is tested is the plan, not the
appliance); the chain walk and the identity are the real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nightly_samples import image_from_spec, write_config

from vmscan import SCHEMA_VERSION, __version__
from vmscan.model import ImageResult, ScanResult
from vmscan.nightly import file_identity, load_config, run_nightly

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def _poke(path: Path, offset: int) -> None:
    """Change one byte in place; size and mtime as before (only ctime and content move)."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(1) or b"\0"
        fh.seek(offset)
        fh.write(bytes([old[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


@dataclass
class _Opener:
    """scan_fn stand-in that records what it opens and gives each image an empty, ok result."""

    opened: list[str] = field(default_factory=list)

    def __call__(
        self,
        sources: list[str],
        opts: Any,
        on_image_done: Callable[[ImageResult], None] | None = None,
    ) -> ScanResult:
        result = ScanResult(
            schema_version=SCHEMA_VERSION, vmscan_version=__version__, started_at="2026-01-01"
        )
        for src in sources:
            self.opened.append(src)
            img = image_from_spec(src, {"hostname": Path(src).stem}, tuple(opts.checks))
            result.images.append(img)
            if on_image_done:
                on_image_done(img)
        return result


def _fill(path: Path) -> None:
    """Write every byte of a raw file (no holes: a later one-byte write allocates nothing,
    so qemu-img's "actual-size" cannot give the change away)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(b"\x11" * size)


def _config_for(tmp: Path, images: list[Path]) -> Any:
    """A nightly config naming exactly these images (not the files they are made of)."""
    path = write_config(tmp, "PLACEHOLDER")
    listed = ", ".join(f'"{i}"' for i in images)
    path.write_text(path.read_text().replace('paths = ["PLACEHOLDER"]', f"paths = [{listed}]"))
    return load_config(path)


def _flat_vmdk(folder: Path) -> tuple[Path, Path]:
    top = folder / "flat.vmdk"
    _qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(top), "1M")
    _fill(folder / "flat-flat.vmdk")
    return top, folder / "flat-flat.vmdk"


def _qcow2_data_file(folder: Path) -> tuple[Path, Path]:
    top, data = folder / "data.qcow2", folder / "data.raw"
    opts = f"data_file={data},data_file_raw=on"
    _qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(top), "1M")
    _fill(data)
    return top, data


def _deep_chain(folder: Path) -> tuple[Path, Path]:
    base, mid, top = folder / "base.raw", folder / "mid.qcow2", folder / "top.qcow2"
    _qemu_img("create", "-q", "-f", "raw", str(base), "1M")
    _fill(base)
    _qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", str(mid))
    _qemu_img("create", "-q", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", str(top))
    return top, base


LAYOUTS = {
    "monolithicFlat VMDK extent": (_flat_vmdk, 512 * 1024 + 7),
    "qcow2 external data_file": (_qcow2_data_file, 300 * 1024 + 3),
    "backing file two levels down": (_deep_chain, 200 * 1024 + 1),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_one_byte_in_a_named_file_rescans_and_nothing_skips(tmp_path: Path, layout: str) -> None:
    build, offset = LAYOUTS[layout]
    folder = tmp_path / "imgs"
    folder.mkdir()
    top, inner = build(folder)
    # A second, untouched image beside it: carried every night.
    other = folder / "other.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(other), "1M")
    cfg = _config_for(tmp_path, [top, other])
    first = _Opener()
    run_nightly(cfg, scan_fn=first)
    assert sorted(first.opened) == sorted([str(top), str(other)])
    unchanged = _Opener()
    out = run_nightly(cfg, scan_fn=unchanged)
    why = [(p.source.path, p.reason) for p in out.plan]
    assert unchanged.opened == [] and out.scanned == 0, why
    _poke(inner, offset)
    after = _Opener()
    out = run_nightly(cfg, scan_fn=after)
    assert after.opened == [str(top)], [(p.source.path, p.reason) for p in out.plan]
    again = _Opener()
    assert run_nightly(cfg, scan_fn=again).scanned == 0 and again.opened == []


def test_identity_lists_every_file_with_times_inode_and_device(tmp_path: Path) -> None:
    top, _base = _deep_chain(tmp_path)
    ident = file_identity(str(top))
    files = ident["files"]
    assert [(f["layer"], f["role"], Path(f["path"]).name) for f in files] == [
        (0, "layer", "top.qcow2"),
        (1, "layer", "mid.qcow2"),
        (2, "layer", "base.raw"),
    ]
    for f in files:
        st = os.stat(f["path"])
        assert (f["size"], f["mtime_ns"], f["ctime_ns"], f["inode"], f["dev"]) == (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_dev,
        )
        assert len(f["meta_sha256"]) == 64
    assert "chain_error" not in ident
    assert file_identity(str(top)) == ident  # reading changes nothing


def test_qcow2_metadata_hash_sees_a_new_allocation_with_times_restored(tmp_path: Path) -> None:
    top, _base = _deep_chain(tmp_path)
    mid = tmp_path / "mid.qcow2"
    before = file_identity(str(top))["files"][1]["meta_sha256"]
    st = mid.stat()
    # A write through qemu allocates a cluster in the middle layer (L1/L2 tables change).
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(mid)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    os.utime(mid, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_identity(str(top))["files"][1]["meta_sha256"] != before


def test_refused_chain_is_never_carried(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _qemu_img("create", "-q", "-f", "raw", str(outside / "base.raw"), "1M")
    top = folder / "top.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(outside / "base.raw"), "-F", "raw", str(top))
    ident = file_identity(str(top))
    assert "outside" in ident["chain_error"]
    cfg = _config_for(tmp_path, [top])
    run_nightly(cfg, scan_fn=_Opener())
    second = _Opener()
    out = run_nightly(cfg, scan_fn=second)
    assert second.opened == [str(top)]
    assert "could not be walked" in out.plan[0].reason
