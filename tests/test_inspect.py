"""vmscan's own bounded inspection, without an appliance: partition tables read from real
sgdisk/sfdisk output, fstab budgets, spec resolution, Linux/Windows detection on host trees."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fixtures.inspection import FSTAB_LINES, TINY_PARTITIONS, build_inspection
from fixtures.specs.debian_lvm import OS_RELEASE
from vmscan import inspect
from vmscan.guestfs_view import HostDirFS


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    built = build_inspection(tmp_path_factory.mktemp("inspection"))
    return {c.name: c.path for c in built}


def _file_reader(path: Path) -> inspect.Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    return read


def test_gpt_sizes_read_from_the_table(cases: dict[str, Path]) -> None:
    sizes = inspect.partition_sizes(_file_reader(cases["gpt128-empty"]), "/dev/sda")
    assert len(sizes) == 128
    assert set(sizes.values()) == {1024 * 1024}
    assert "/dev/sda128" in sizes


def test_gpt_with_a_larger_table(cases: dict[str, Path]) -> None:
    sizes = inspect.partition_sizes(_file_reader(cases["tiny-partitions"]), "/dev/sda")
    assert len(sizes) == TINY_PARTITIONS + 1
    assert sizes["/dev/sda1"] == 64 * 512
    assert sizes[f"/dev/sda{TINY_PARTITIONS + 1}"] == 16 * 1024 * 1024


def test_mbr_with_logical_partitions(tmp_path: Path) -> None:
    disk = tmp_path / "mbr.raw"
    with open(disk, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    layout = "label: dos\n,8M,L\n,8M,L\n,,E\n,4M,L\n,4M,L\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=layout.encode(), check=True)
    sizes = inspect.partition_sizes(_file_reader(disk), "/dev/sda")
    # What Linux shows: 1, 2, the extended 3 (1 KiB), logical 5 and 6.
    assert sorted(sizes) == ["/dev/sda1", "/dev/sda2", "/dev/sda3", "/dev/sda5", "/dev/sda6"]
    assert sizes["/dev/sda1"] == 8 * 1024 * 1024 and sizes["/dev/sda3"] == 1024
    assert sizes["/dev/sda5"] == 4 * 1024 * 1024
    table = inspect.partition_table(_file_reader(disk), "/dev/sda")
    assert table["/dev/sda1"][0] == 1024 * 1024  # sfdisk aligns to 1 MiB
    assert table["/dev/sda5"][0] > table["/dev/sda3"][0]
    head = _file_reader(disk)(0, 8192)
    assert inspect.ptable_type(head) == "msdos"


def test_gpt_beyond_what_linux_shows(cases: dict[str, Path]) -> None:
    table = inspect.partition_table(_file_reader(cases["gpt300-unseen"]), "/dev/sda")
    assert len(table) == 300
    off, size = table["/dev/sda300"]
    with open(cases["gpt300-unseen"], "rb") as fh:
        fh.seek(off + 1080)
        assert fh.read(2) == b"\x53\xef"  # the ext4 magic where the table says it starts
    assert size == 16 * 1024 * 1024


def test_whole_disk_luks_refused_on_the_host_even_as_raw(cases: dict[str, Path]) -> None:
    from vmscan.disk import resolve_source
    from vmscan.errors import ImageError

    for fmt in (None, "raw"):
        with pytest.raises(ImageError, match="whole-disk LUKS encrypted volume: encrypted, no"):
            resolve_source(str(cases["luks-whole-disk"]), fmt, (), None)


def test_ptable_types(cases: dict[str, Path]) -> None:
    assert inspect.ptable_type(_file_reader(cases["gpt128-empty"])(0, 8192)) == "gpt"
    assert inspect.ptable_type(_file_reader(cases["luks-whole-disk"])(0, 8192)) is None
    assert inspect.ptable_type(b"\0" * 8192) is None


def test_fstab_bounded() -> None:
    lines = ["UUID=abc / ext4 defaults 0 1"]
    lines += [f"/dev/sdz{i} /mnt/m{i} ext4 defaults 0 2" for i in range(1, FSTAB_LINES)]
    tab = inspect.parse_fstab("\n".join(lines))
    limits = inspect.DEFAULT_LIMITS
    assert len(tab.entries) == limits.max_mountpoints
    assert tab.lines == FSTAB_LINES
    assert any(f"has {FSTAB_LINES} lines" in c for c in tab.cut)
    assert any("more mountpoints than the" in c for c in tab.cut)
    assert tab.entries["/"] == ("UUID=abc", 1)


def test_fstab_skips_pseudo_and_bind() -> None:
    text = "proc /proc proc defaults 0 0\n/a /b none bind 0 0\n# c\nLABEL=x /srv xfs defaults\n"
    tab = inspect.parse_fstab(text)
    assert tab.entries == {"/srv": ("LABEL=x", 4)} and tab.cut == []


def test_resolve_spec() -> None:
    facts = {
        "filesystems": [
            {"device": "/dev/sda1", "type": "ext4", "uuid": "u-1", "label": "boot"},
            {"device": "/dev/vg-0/root", "type": "ext4", "uuid": "u-2", "label": ""},
        ]
    }
    assert inspect.resolve_spec("UUID=u-1", facts) == "/dev/sda1"
    assert inspect.resolve_spec('LABEL="boot"', facts) == "/dev/sda1"
    assert inspect.resolve_spec("/dev/mapper/vg--0-root", facts) == "/dev/vg-0/root"
    assert inspect.resolve_spec("/dev/sdb1", facts) is None
    assert inspect.resolve_spec("PARTUUID=x", facts) is None


def test_look_linux_on_a_host_tree(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "etc" / "os-release").write_text(OS_RELEASE)
    (tmp_path / "etc" / "hostname").write_text("h1\n")
    (tmp_path / "etc" / "fstab").write_text("x")
    (tmp_path / "var" / "lib" / "dpkg").mkdir(parents=True)
    (tmp_path / "var" / "lib" / "dpkg" / "status").write_text("")
    (tmp_path / "bin" / "ls").write_bytes(Path("/bin/ls").read_bytes())
    root = inspect.look_linux(HostDirFS(tmp_path), "/dev/sda1")
    assert root is not None
    assert (root.os.type, root.os.distro, root.os.major_version) == ("linux", "debian", 12)
    assert (root.os.hostname, root.os.package_format, root.os.arch) == ("h1", "deb", "x86_64")
    assert root.evidence["fstab_bytes"] == 1
    assert inspect.look_windows(HostDirFS(tmp_path), "/dev/sda1") is None


def test_look_windows_by_its_hive_even_when_damaged(tmp_path: Path) -> None:
    cfg = tmp_path / "WINDOWS" / "system32" / "Config"
    cfg.mkdir(parents=True)
    (cfg / "SOFTWARE").write_bytes(b"regf" + b"\0" * 100)  # truncated: not a usable hive
    (tmp_path / "WINDOWS" / "SysWOW64").mkdir()
    root = inspect.look_windows(HostDirFS(tmp_path), "/dev/sda2")
    assert root is not None
    assert (root.os.type, root.os.arch) == ("windows", "x86_64")
    assert root.evidence["software_hive"] == "/WINDOWS/system32/Config/SOFTWARE"
    assert inspect.look_linux(HostDirFS(tmp_path), "/dev/sda2") is None


def test_messages_name_what_was_not_looked_at() -> None:
    facts = {
        "probe": {"candidates": 100, "not_probed": 36, "not_probed_first": ["/dev/sda65"]},
        "encrypted": [{"device": "/dev/sda1", "kind": "LUKS"}],
    }
    msgs = inspect.probe_messages(facts)
    assert len(msgs) == 2
    assert msgs[0].startswith("36 of 100 partitions/volumes were not probed")
    assert "/dev/sda65" in msgs[0] and "not scanned" in msgs[0]
    assert msgs[1] == "/dev/sda1: LUKS encrypted volume: encrypted, no key given: not scanned"
    assert inspect.nothing_found(facts) == msgs[1]
    facts = {"probe": {"empty": 128}, "partition_tables": {"/dev/sda": "gpt"}}
    assert inspect.nothing_found(facts).endswith("found (128 empty partitions)")
    assert inspect.nothing_found({"partition_tables": {"/dev/sda": None}}).endswith(
        "(no partition table either: not a disk?)"
    )
