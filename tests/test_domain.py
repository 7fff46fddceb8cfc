"""libvirt sources without a daemon: libvirt's built-in test driver (``test:///default``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmscan.errors import ImageError
from vmscan.proc import Budget
from vmscan.source.domain import discover_domains, open_domain

pytest.importorskip("libvirt", reason="python3-libvirt is not installed")
TEST_URI = "test:///default"  # one running domain named "test", in the client library


def test_unknown_domain_names_the_connection() -> None:
    with (
        pytest.raises(ImageError, match=r"^libvirt:nosuch: no domain named 'nosuch' on test:///"),
        open_domain("libvirt:nosuch", TEST_URI, None, (), Budget(30)),
    ):
        pass


def test_empty_name_and_bad_uri() -> None:
    with (
        pytest.raises(ImageError, match="no domain name"),
        open_domain("libvirt:", TEST_URI, None, (), Budget(30)),
    ):
        pass
    with (
        pytest.raises(ImageError, match=r"cannot connect to bogus\+x:///"),
        open_domain("libvirt:x", "bogus+x:///", None, (), Budget(30)),
    ):
        pass


def test_discover_on_the_test_driver() -> None:
    found, warnings = discover_domains([TEST_URI])
    assert [(d.uri, d.name, d.running, d.label) for d in found] == [
        (TEST_URI, "test", True, "libvirt:test")
    ]
    assert warnings == []


def test_labels_carry_their_connection() -> None:
    from vmscan.source.domain import domain_label, split_label

    assert split_label("libvirt:web1", "qemu:///system") == ("qemu:///system", "web1")
    label = domain_label("qemu+ssh://hv2/system", "web1")
    assert label == "libvirt:qemu+ssh://hv2/system/web1"
    assert split_label(label, "qemu:///system") == ("qemu+ssh://hv2/system", "web1")
    # A label that names its connection needs no --connect.
    with (
        pytest.raises(ImageError, match=r"no domain named 'nosuch' on test:///default"),
        open_domain(domain_label(TEST_URI, "nosuch"), "qemu:///system", None, (), Budget(30)),
    ):
        pass


def test_nightly_discovers_the_domains_of_a_connection(tmp_path: Path) -> None:
    """``[images] libvirt = [URI]``: each domain is a source labelled with its connection;
    a running one is never "unchanged" (scanned every night); a bad URI is a warning."""
    from vmscan.nightly import load_config
    from vmscan.nightly.discovery import discover
    from vmscan.nightly.identity import source_identity

    cfg_path = tmp_path / "vmscan.toml"
    cfg_path.write_text(f'[images]\nlibvirt = ["{TEST_URI}", "bogus+x:///"]\n')
    found = discover(load_config(cfg_path))
    (src,) = found.sources
    assert (src.path, src.kind) == (f"libvirt:{TEST_URI}/test", "libvirt-running")
    assert any(w.startswith("bogus+x:///: cannot connect") for w in found.warnings)
    first, second = source_identity(src), source_identity(src)
    assert first["kind"] == "libvirt-running" and first != second
