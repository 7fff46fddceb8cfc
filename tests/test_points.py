"""Points in time on the host, no appliance: snapshot tables, chain layers, selectors, errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vmscan.disk import resolve_source
from vmscan.errors import ImageError
from vmscan.manifest import sha256_file
from vmscan.source.points import cache_order, expand_snapshots, split_point
from vmscan.source.snapshots import read_snapshots


def qemu_img(*args: str | Path) -> str:
    res = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True, check=True)
    return res.stdout


def snapshot_list(img: Path) -> str:
    return qemu_img("snapshot", "-l", img)


@pytest.fixture
def snapped(tmp_path: Path) -> Path:
    """An empty 16 MiB qcow2 with three internal snapshots, one with a hostile-looking name."""
    img = tmp_path / "vm.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "16M")
    for name in ("before-upgrade", "<b>x</b>&'\"", "2"):
        qemu_img("snapshot", "-c", name, img)
    return img


def test_snapshot_table_matches_qemu(snapped: Path) -> None:
    snaps = read_snapshots(str(snapped))
    info = json.loads(qemu_img("info", "--output=json", snapped))
    assert [(s.id, s.name) for s in snaps] == [(s["id"], s["name"]) for s in info["snapshots"]]
    assert [s.name for s in snaps] == ["before-upgrade", "<b>x</b>&'\"", "2"]
    for ours, theirs in zip(snaps, info["snapshots"], strict=True):
        assert ours.vm_state_size == theirs["vm-state-size"]
        assert ours.vm_clock_ns == theirs["vm-clock-sec"] * 10**9 + theirs["vm-clock-nsec"]
        assert ours.date.startswith("20")
        assert ours.disk_size == 16 * 1024 * 1024


def test_report_lists_snapshots_and_image_unchanged(snapped: Path) -> None:
    before = (sha256_file(snapped), snapshot_list(snapped))
    src = resolve_source(str(snapped))
    (disk,) = src.disks
    assert [s.name for s in disk.snapshots] == ["before-upgrade", "<b>x</b>&'\"", "2"]
    assert disk.point == {}
    assert (sha256_file(snapped), snapshot_list(snapped)) == before


def test_snapshot_selectors(snapped: Path) -> None:
    by_name = resolve_source(f"{snapped}@before-upgrade").disks[0]
    assert by_name.point["id"] == "1" and by_name.point["kind"] == "snapshot"
    # A name wins over an id ("2" is the third snapshot's name); id:N names an id.
    assert resolve_source(f"{snapped}@2").disks[0].point["id"] == "3"
    assert resolve_source(f"{snapped}@id:2").disks[0].point["name"] == "<b>x</b>&'\""
    assert resolve_source(f"{snapped}@1").disks[0].point["name"] == "before-upgrade"


def test_unknown_snapshot_is_a_clear_error(snapped: Path) -> None:
    with pytest.raises(ImageError, match=r"no internal snapshot named or numbered 'nosuch'"):
        resolve_source(f"{snapped}@nosuch")
    with pytest.raises(ImageError, match=r"no internal snapshot .* 'id:9'"):
        resolve_source(f"{snapped}@id:9")


def test_snapshots_all_expansion(snapped: Path, tmp_path: Path) -> None:
    raw = tmp_path / "plain.img"
    raw.write_bytes(b"\0" * 4096)
    got = expand_snapshots([str(snapped), str(raw)])
    # The odd name and the name that is another snapshot's id are named by id.
    assert got == [
        str(snapped),
        f"{snapped}@before-upgrade",
        f"{snapped}@id:2",
        f"{snapped}@id:3",
        str(raw),
    ]


def test_points_wait_for_their_image(snapped: Path) -> None:
    """A point waits for its image's scan when that comes first (the hash cache is full
    then); a point listed before its image, or without it, waits for nothing."""
    img = str(snapped)
    got = cache_order([img, f"{img}@before-upgrade", f"{img}@id:2", "other.qcow2@x"])
    assert got == {f"{img}@before-upgrade": img, f"{img}@id:2": img}
    assert cache_order([f"{img}@layer:0", img]) == {}


def test_split_point(tmp_path: Path) -> None:
    odd = tmp_path / "a@b.qcow2"
    odd.write_bytes(b"x")
    assert split_point(str(odd)) == (str(odd), None)  # an existing file wins
    assert split_point("/x/vm.qcow2@snap") == ("/x/vm.qcow2", "snap")
    assert split_point("/x/vm.qcow2@layer:1") == ("/x/vm.qcow2", "layer:1")
    assert split_point("/x@y/vm.qcow2") == ("/x@y/vm.qcow2", None)


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """base.qcow2 <- mid.qcow2 <- top.qcow2, relative backing names, formats recorded."""
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "base.qcow2", "16M")
    qemu_img(
        "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", tmp_path / "mid.qcow2"
    )
    qemu_img(
        "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "mid.qcow2", tmp_path / "top.qcow2"
    )
    return tmp_path / "top.qcow2"


def test_chain_layers_reported_base_first(chain: Path) -> None:
    (disk,) = resolve_source(str(chain)).disks
    assert [Path(la.path).name for la in disk.layers] == ["base.qcow2", "mid.qcow2", "top.qcow2"]
    assert [la.index for la in disk.layers] == [0, 1, 2]
    assert all(la.format == "qcow2" and la.size > 0 for la in disk.layers)
    assert all(la.virtual_size == 16 * 1024 * 1024 for la in disk.layers)
    assert all(la.mtime.endswith("Z") for la in disk.layers)


def test_layer_selector(chain: Path) -> None:
    before = qemu_img("info", "--backing-chain", chain)
    low = resolve_source(f"{chain}@layer:0").disks[0]
    assert Path(low.path).name == "base.qcow2" and low.backing == ()
    assert low.point == {"kind": "layer", "index": 0, "of": 3, "image": str(chain)}
    mid = resolve_source(f"{chain}@layer:1").disks[0]
    assert Path(mid.path).name == "mid.qcow2"
    assert [Path(b).name for b in mid.backing] == ["base.qcow2"]
    top = resolve_source(f"{chain}@layer:2").disks[0]
    assert top.path == str(chain) and len(top.backing) == 2
    assert qemu_img("info", "--backing-chain", chain) == before


def test_layer_out_of_range(chain: Path) -> None:
    with pytest.raises(ImageError, match=r"layer 3 is out of range: .* 3 layer\(s\).*layer:0 is"):
        resolve_source(f"{chain}@layer:3")
    with pytest.raises(ImageError, match=r"out of range"):
        resolve_source(f"{chain}@layer:-1")
    with pytest.raises(ImageError, match=r"'x' is not a layer number"):
        resolve_source(f"{chain}@layer:x")


def test_snapshot_of_a_non_qcow2_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "d.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", img, "16M")
    with pytest.raises(ImageError, match=r"only qcow2 images hold internal snapshots"):
        resolve_source(f"{img}@snap")


def test_vmdk_delta_chain(tmp_path: Path) -> None:
    """A VMware delta (parentFileNameHint) is a layer like a qcow2 overlay, same rules."""
    qemu_img("create", "-q", "-f", "vmdk", tmp_path / "base.vmdk", "16M")
    qemu_img(
        "create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", "base.vmdk", tmp_path / "base-000001.vmdk"
    )
    delta = tmp_path / "base-000001.vmdk"
    (disk,) = resolve_source(str(delta)).disks
    assert [Path(la.path).name for la in disk.layers] == ["base.vmdk", "base-000001.vmdk"]
    low = resolve_source(f"{delta}@layer:0").disks[0]
    assert Path(low.path).name == "base.vmdk" and low.format == "vmdk"


def test_layer_of_a_chain_keeps_allowed_folders(tmp_path: Path) -> None:
    """A base in an --allow-backing folder stays allowed when a middle layer is opened."""
    shared = tmp_path / "shared"
    vm = tmp_path / "vm"
    shared.mkdir()
    vm.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", shared / "base.qcow2", "16M")
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        str(shared / "base.qcow2"),
        vm / "mid.qcow2",
    )
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "mid.qcow2", vm / "top.qcow2")
    with pytest.raises(ImageError, match="outside"):
        resolve_source(str(vm / "top.qcow2"))
    mid = resolve_source(f"{vm / 'top.qcow2'}@layer:1", allow_backing=(str(shared),)).disks[0]
    assert Path(mid.path).name == "mid.qcow2"


def test_avhdx_says_merge_or_export(tmp_path: Path) -> None:
    """A Hyper-V differencing disk: refused with what to do instead."""
    import struct

    from vmscan.errors import UnsafeImageError
    from vmscan.source import headers

    img = tmp_path / "vm_3F2A.avhdx"
    qemu_img("create", "-q", "-f", "vhdx", img, "8M")
    data = bytearray(img.read_bytes())
    table = data[192 * 1024 : 256 * 1024]
    meta_off = 0
    for i in range(struct.unpack("<I", table[8:12])[0]):
        e = table[16 + 32 * i : 48 + 32 * i]
        if headers._guid(e[:16]) == headers._VHDX_METADATA_REGION:
            meta_off = struct.unpack("<Q", e[16:24])[0]
    meta = data[meta_off : meta_off + 65536]
    for i in range(struct.unpack("<H", meta[10:12])[0]):
        e = meta[32 + 32 * i : 64 + 32 * i]
        if headers._guid(e[:16]) == headers._VHDX_FILE_PARAMETERS:
            data[meta_off + struct.unpack("<I", e[16:20])[0] + 4] |= headers._VHDX_HAS_PARENT
    img.write_bytes(bytes(data))
    with pytest.raises(UnsafeImageError, match=r"differencing.*Merge-VHD.*Export-VM"):
        resolve_source(str(img))
    with pytest.raises(UnsafeImageError, match=r"Merge-VHD"):
        resolve_source(f"{img}@layer:0")


def test_snapshot_names_escaped_in_html(snapped: Path) -> None:
    """Snapshot names are untrusted text: the HTML report escapes them."""
    from vmscan.model import ImageResult, ImageStatus, to_jsonable
    from vmscan.report.html import render_html

    (disk,) = resolve_source(f"{snapped}@id:2").disks
    img = ImageResult(source=f"{snapped}@id:2", disks=[disk], status=ImageStatus.NO_OS)
    doc = {
        "images": [to_jsonable(img)],
        "sections": {},
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "vmscan_version": "test",
        "schema_version": "1",
    }
    html = render_html(doc)
    assert "<b>x</b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt;&amp;" in html
    assert html.count('class="snapname"') == 4  # the point and three table rows


def _img(source: str, files: dict[str, str | None], pkgs: dict[str, str]) -> dict[str, object]:
    return {
        "source": source,
        "status": "ok",
        "manifest": [
            {"device": "/dev/sda1", "path": p, "sha256": h, "size": 1, "mode": 0o100644}
            for p, h in files.items()
        ],
        "roots": [
            {
                "device": "/dev/sda1",
                "os": {"package_format": "deb"},
                "packages": [{"name": n, "version": v, "arch": "amd64"} for n, v in pkgs.items()],
                "findings": [],
            }
        ],
    }


def test_diff_points_files_by_hash_and_text() -> None:
    from vmscan.diff import diff_points, format_text

    a = _img("vm@a", {"/same": "1", "/gone": "2", "/edited": "3", "/unread": "4"}, {"x": "1.0"})
    b = _img("vm@b", {"/same": "1", "/new": "5", "/edited": "6", "/unread": None}, {"x": "1.1"})
    d = diff_points(a, b)
    (img,) = d["images"]
    assert [e["path"] for e in img["files_added"]] == ["/new"]
    assert [e["path"] for e in img["files_removed"]] == ["/gone"]
    assert [(e["path"], e["from_sha256"]) for e in img["files_changed"]] == [("/edited", "3")]
    # Not readable on one side: listed apart, never reported as unchanged.
    assert [e["path"] for e in img["files_unreadable"]] == ["/unread"]
    assert d["summary"]["files_changed"] == 1 and d["summary"]["packages_upgraded"] == 1
    text = format_text(d)
    assert text.startswith("vm@a -> vm@b:") and "files +1 -1 ~1" in text
    assert "+ file /dev/sda1:/new" in text and "? file (not readable on one side)" in text


def test_diff_tells_points_from_reports(tmp_path: Path, snapped: Path) -> None:
    from vmscan.commands.diff import is_point

    report = tmp_path / "r.json"
    report.write_text('{"images": []}')
    assert not is_point(str(report))
    assert is_point(str(snapped)) and is_point(f"{snapped}@before-upgrade")
    assert not is_point("latest") and not is_point("12")
