"""vmscan.pe over real PE files of the shared corpus (oracles in its README) and junk."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmscan.pe import is_pe, pe_info


def test_putty(corpus: Path) -> None:
    info = pe_info((corpus / "pe" / "putty.exe").read_bytes())
    assert info is not None
    assert info.machine == "AMD64"
    assert info.product_name == "PuTTY suite"
    assert info.product_version == "Release 0.73"
    assert info.company_name == "Simon Tatham"
    assert info.is_64bit and not info.is_dll
    assert len(info.imphash) == 32


def test_pwsh(corpus: Path) -> None:
    info = pe_info((corpus / "pe" / "pwsh.exe").read_bytes())
    assert info is not None
    assert info.machine == "AMD64"
    assert info.product_name == "PowerShell"
    assert info.file_version == "7.3.4.500"
    assert info.fixed_file_version == "7.3.4.500"
    assert info.company_name == "Microsoft Corporation"
    # Microsoft ships it Authenticode-signed: the security directory is present.
    assert info.signed


def test_i386_without_version_resource(corpus: Path) -> None:
    info = pe_info((corpus / "pe" / "impbyord-noversion.exe").read_bytes())
    assert info is not None
    assert info.machine == "i386"
    assert info.product_name is None and info.file_version is None
    assert not info.signed
    assert info.to_dict()["machine"] == "i386"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MZ",
        b"MZ" + b"\0" * 100,
        b"\x7fELF" + b"\0" * 100,
        b"MZ" + b"\0" * 58 + b"\x40\0\0\0PE\0\0" + b"\xff" * 64,
        b"MZ" + b"\xff" * 4096,
    ],
)
def test_junk_is_none_or_harmless(data: bytes) -> None:
    info = pe_info(data)
    assert info is None or isinstance(info.machine, str)


def test_truncated_real_pe(corpus: Path) -> None:
    data = (corpus / "pe" / "putty.exe").read_bytes()
    for cut in (64, 512, 4096, len(data) // 2):
        info = pe_info(data[:cut])
        assert info is None or info.machine == "AMD64"


def test_is_pe(corpus: Path) -> None:
    head = (corpus / "pe" / "putty.exe").read_bytes()[:512]
    assert is_pe(head)
    assert not is_pe(b"#!/bin/sh\n" + b" " * 100)
    assert not is_pe(b"MZ" + b"\0" * 58 + b"\x40\0\0\0XX\0\0" + b"\0" * 64)
