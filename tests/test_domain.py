"""libvirt sources without a daemon: libvirt's built-in test driver (``test:///default``)."""

from __future__ import annotations

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
