"""Nightly config: strict validation (key and line named), defaults, discovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nightly_samples import write_config, write_guest

from vmscan import nightly
from vmscan.nightly import ConfigError, key_line, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "vmscan.example.toml"


def _cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vmscan.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.checks and cfg.jobs >= 1 and cfg.max_per_storage >= 1
    assert cfg.state_db.is_absolute() and cfg.reports_dir.is_absolute()


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    path = _cfg(tmp_path, '[images]\npaths = ["/x/*.qcow2"]\n\n[limits]\njobs = 2\njbos = 3\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"{path}:6:" in msg and "'jbos'" in msg and "[limits]" in msg
    assert "did you mean 'jobs'" in msg


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    path = _cfg(tmp_path, '[images]\npaths = ["/x"]\n[limits]\n# comment\njobs = "two"\n')
    with pytest.raises(ConfigError, match=r":5: 'limits.jobs' must be an integer, not a string"):
        load_config(path)


def test_bool_is_not_an_int_and_minimums(tmp_path: Path) -> None:
    path = _cfg(tmp_path, '[images]\npaths = ["/x"]\n[limits]\njobs = true\nmemsize = 16\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert ":4: 'limits.jobs' must be an integer" in str(exc.value)
    assert ":5: 'limits.memsize' must be at least 256" in str(exc.value)


def test_unknown_section_and_bad_choice(tmp_path: Path) -> None:
    text = '[images]\npaths = ["/x"]\n[scan]\nchecks = ["patch", "virus"]\n[limitz]\njobs = 1\n'
    with pytest.raises(ConfigError) as exc:
        load_config(_cfg(tmp_path, text))
    msg = str(exc.value)
    assert ":4: 'scan.checks' has unknown value(s) 'virus'" in msg
    assert ":5: unknown section [limitz] (did you mean [limits]?)" in msg


def test_top_level_key_and_fail_on(tmp_path: Path) -> None:
    path = _cfg(tmp_path, 'fail_on = "severe"\n[images]\npaths = ["/x"]\n')
    with pytest.raises(ConfigError, match=r":1: 'fail_on' has unknown value"):
        load_config(path)
    cfg = load_config(_cfg(tmp_path, 'fail_on = "none"\n[images]\npaths = ["/x"]\n'))
    assert cfg.fail_on is None


def test_invalid_toml_and_nothing_to_scan(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(_cfg(tmp_path, "[images]\npaths = 3 3\n"))
    with pytest.raises(ConfigError, match="nothing to scan"):
        load_config(_cfg(tmp_path, "[limits]\njobs = 1\n"))


def test_unknown_report_format(tmp_path: Path) -> None:
    path = _cfg(tmp_path, '[images]\npaths = ["/x"]\n[reports]\nformats = ["json", "pdf"]\n')
    with pytest.raises(ConfigError, match=r":4: unknown report format\(s\) 'pdf'"):
        load_config(path)


def test_relative_paths_are_relative_to_config(tmp_path: Path) -> None:
    text = '[images]\npaths = ["imgs/*.qcow2"]\n[state]\ndatabase = "st/v.db"\n'
    cfg = load_config(_cfg(tmp_path, text))
    assert cfg.image_paths == (str(tmp_path / "imgs/*.qcow2"),)
    assert cfg.state_db == tmp_path / "st/v.db"
    assert cfg.reports_dir == tmp_path / "reports"


def test_key_line_finds_dotted_and_quoted_keys() -> None:
    text = '# c\nlimits.jobs = 1\n[reports]\n"dir" = "x"\n[ images ]\npaths = []\n'
    assert key_line(text, "limits", "jobs") == 2
    assert key_line(text, "reports", "dir") == 4
    assert key_line(text, "images", None) == 5
    assert key_line(text, "images", "paths") == 6


def test_discovery_globs_folders_domains_and_missing(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    for name in ("a.qcow2", "b.img", "notes.txt", "skip-me.qcow2"):
        write_guest(imgs / name)
    write_guest(tmp_path / "dom" / "disk0.qcow2")
    write_guest(tmp_path / "folder" / "sub" / "deep.vmdk")
    xml_dir = tmp_path / "qemu"
    xml_dir.mkdir()
    (xml_dir / "web.xml").write_text(
        "<domain type='kvm'><name>web</name><devices>"
        f"<disk type='file' device='disk'><source file='{tmp_path}/dom/disk0.qcow2'/></disk>"
        "<disk type='file' device='cdrom'><source file='/iso/x.iso'/></disk>"
        "</devices></domain>"
    )
    (xml_dir / "network.xml").write_text("<network><name>default</name></network>")
    extra = (
        f'[images]\npaths = ["{imgs}", "{tmp_path}/dom/*.qcow2", "{tmp_path}/gone.qcow2",'
        f' "{tmp_path}/folder"]\n'
        f'libvirt_xml_dirs = ["{xml_dir}"]\nexclude = ["skip-*"]\nrecursive = true\n'
    )
    cfg = load_config(_cfg(tmp_path, extra))
    found = nightly.discover(cfg)
    by_path = {s.path: s for s in found.sources}
    assert set(by_path) == {
        str(xml_dir / "web.xml"),
        str(imgs / "a.qcow2"),
        str(imgs / "b.img"),
        f"{tmp_path}/gone.qcow2",
        str(tmp_path / "folder/sub/deep.vmdk"),
    }
    assert by_path[str(xml_dir / "web.xml")].kind == "domain"
    assert by_path[str(xml_dir / "web.xml")].disks == (f"{tmp_path}/dom/disk0.qcow2",)
    assert by_path[f"{tmp_path}/gone.qcow2"].error == "image not found"


def test_identity_changes_with_content_not_with_reading(tmp_path: Path) -> None:
    img = write_guest(tmp_path / "a.img", hostname="a")
    one = nightly.file_identity(str(img))
    assert set(one) >= {"size", "mtime_ns", "inode", "head_sha256", "info_sha256"}
    assert not one["info_sha256"].startswith("error")  # qemu-img read it as raw
    assert nightly.file_identity(str(img)) == one
    st = img.stat()
    write_guest(img, hostname="b")
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: the hash still tells
    assert nightly.file_identity(str(img))["head_sha256"] != one["head_sha256"]


def test_write_config_helper_is_valid(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, str(tmp_path / "*.img")))
    assert cfg.jobs == 2 and cfg.fail_on == "high"
