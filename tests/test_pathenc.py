"""Reversible escaping of non-UTF-8 guest file names."""

from __future__ import annotations

import json

import pytest

from vmscan.pathenc import decode_path, encode_path, needs_escape

CASES = [
    b"/etc/passwd",
    b"/home/user/caf\xe9.txt",
    b"/a\\x41/b",  # a literal backslash-x sequence must not be confused with an escape
    b"/\xff\xfe\\\\",
    "/ünïcödé/日本".encode(),
    b"/tab\there/newline\nhere",
    bytes(range(1, 256)),
]


@pytest.mark.parametrize("raw", CASES)
def test_round_trip(raw: bytes) -> None:
    text = encode_path(raw)
    # JSON-safe: survives a strict UTF-8 JSON round trip.
    assert json.loads(json.dumps(text, ensure_ascii=False).encode("utf-8")) == text
    assert decode_path(text) == raw


def test_escape_is_visible() -> None:
    assert encode_path(b"/caf\xe9") == "/caf\\xe9"
    assert needs_escape(b"/caf\xe9")
    assert not needs_escape("/café".encode())
