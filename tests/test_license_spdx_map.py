"""Licence names in the wild → SPDX: the mapping table and the expression normaliser."""

from __future__ import annotations

import json

import pytest

from vmscan.license.spdx_map import DEFAULT_TABLE, default_map, is_listed, licence_ref, licensing


def test_table_values_are_spdx_or_licenseref() -> None:
    raw = json.loads(DEFAULT_TABLE.read_text())
    for name, value in raw["names"].items():
        parsed = licensing().parse(value, validate=False)
        for key in licensing().license_keys(parsed):
            assert key.startswith("LicenseRef-") or is_listed(key), (name, key)
    for name, by_ver in raw["exceptions"].items():
        for exc in by_ver.values():
            sym = licensing().known_symbols.get(exc)
            assert sym is not None and sym.is_exception, (name, exc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Debian DEP-5 short names
        ("GPL-2+", "GPL-2.0-or-later"),
        ("GPL-3+", "GPL-3.0-or-later"),
        ("GPL-2", "GPL-2.0-only"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("Expat", "MIT"),
        ("BSD-3-clause", "BSD-3-Clause"),
        ("GPL-1+ or Artistic", "GPL-1.0-or-later OR Artistic-1.0-Perl"),
        (
            "GPL-2+ or Artistic-2.0, and BSD-3-clause",
            "(GPL-2.0-or-later OR Artistic-2.0) AND BSD-3-Clause",
        ),
        ("GPL-3+ with Bison exception", "GPL-3.0-or-later WITH Bison-exception-2.2"),
        ("GPL-2+ with Autoconf exception", "GPL-2.0-or-later WITH Autoconf-exception-2.0"),
        ("GPL-2 with Linux-syscall-note exception", "GPL-2.0-only WITH Linux-syscall-note"),
        ("Apache-2.0 with LLVM exception", "Apache-2.0 WITH LLVM-exception"),
        ("GFDL-NIV-1.3+", "GFDL-1.3-no-invariants-or-later"),
        ("public-domain", "LicenseRef-public-domain"),
        ("curl", "curl"),
        # Fedora / RHEL rpm LICENSE tags (legacy short names)
        ("GPLv2+", "GPL-2.0-or-later"),
        ("GPLv2+ and LGPLv2+", "GPL-2.0-or-later AND LGPL-2.0-or-later"),
        ("ASL 2.0", "Apache-2.0"),
        ("GPL+ or Artistic", "GPL-1.0-or-later OR Artistic-1.0-Perl"),
        ("LGPLv2", "LGPL-2.0-only"),
        ("GPLv2 or later", "GPL-2.0-or-later"),
        ("MIT and (BSD or ASL 2.0)", "MIT AND (LicenseRef-BSD OR Apache-2.0)"),
        # SPDX expressions as written by Fedora 38+ and Alpine
        ("GPL-2.0-or-later AND LGPL-2.1-or-later", "GPL-2.0-or-later AND LGPL-2.1-or-later"),
        ("MIT OR Apache-2.0", "MIT OR Apache-2.0"),
        ("GPL-2.0+", "GPL-2.0-or-later"),
        ("mit", "MIT"),
        # Stated, but not on the SPDX list: kept as such
        ("TinySCHEME", "LicenseRef-TinySCHEME"),
        ("custom", "LicenseRef-custom"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    norm = default_map().normalize(text)
    assert norm is not None
    assert norm.expression == expected


def test_unlisted_exception_is_dropped_with_a_note() -> None:
    norm = default_map().normalize("GPL-3+ with special exception")
    assert norm is not None
    assert norm.expression == "GPL-3.0-or-later"
    assert norm.notes


@pytest.mark.parametrize(
    "text",
    [
        "",
        "permission to use, copy, modify, and distribute this software and its",
        "This software is provided 'as-is', without any express or implied",
        "((((",
    ],
)
def test_prose_and_garbage_are_not_names(text: str) -> None:
    assert default_map().normalize(text) is None


def test_licence_ref_is_spdx_safe() -> None:
    assert licence_ref("BSD (3 clause) / Böse") == "LicenseRef-BSD-3-clause-B-se"
    assert licence_ref("???") == "LicenseRef-unnamed"
