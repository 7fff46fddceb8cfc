"""dpkg copyright files → SPDX: the shared corpus oracles, this host's Debian files, bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from vmscan.guestfs_view import HostDirFS
from vmscan.license.copyright import (
    _dep5_entries,
    _lenient_entries,
    match_text,
    parse_copyright,
    read_package_copyright,
    resolve_in_guest,
)
from vmscan.license.spdx_map import default_map, is_listed, license_keys

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
HOST_DOC = Path("/usr/share/doc")
HOST_STATUS = Path("/var/lib/dpkg/status")


_FS = HostDirFS


def _corpus_files() -> list[Path]:
    d = CORPUS / "copyright"
    return sorted(d.glob("*.copyright")) if d.is_dir() else []


# -- the corpus: python-debian's parse against the third party's expected parse ----------


@pytest.mark.skipif(not (CORPUS / "copyright").is_dir(), reason="../shared/corpus not present")
@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_licence_names_match_oracle(path: Path) -> None:
    expected = json.loads(
        (path.parent / (path.name + "-expected-DebianCopyright.json")).read_text()
    )
    want = [
        p["license"].split("\n", 1)[0].strip()
        for p in expected["paragraphs"]
        if "files" in p and p.get("license", "").strip()
    ]
    text = path.read_bytes().decode("utf-8", errors="replace")
    entries, method, _ = _dep5_entries(text)
    # gpgv's file has a stray paragraph python-debian refuses: the lenient reader takes over.
    assert method in ("dep5", "dep5-lenient")
    assert [synopsis for _, synopsis, _ in entries] == want
    # The fast reader used for huge files agrees with the oracle too.
    fast, _, _ = _lenient_entries(text, [])
    assert [synopsis for _, synopsis, _ in fast] == want


@pytest.mark.skipif(not (CORPUS / "copyright").is_dir(), reason="../shared/corpus not present")
@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_licences_are_the_stated_ones(path: Path) -> None:
    expected = json.loads(
        (path.parent / (path.name + "-expected-DebianCopyright.json")).read_text()
    )
    lmap = default_map()
    stated: list[str] = []
    for p in expected["paragraphs"]:
        if "files" not in p or not p.get("license", "").strip():
            continue
        files = p["files"].split()
        if all(f.startswith("debian/") for f in files):
            continue
        norm = lmap.normalize(p["license"].split("\n", 1)[0])
        assert norm is not None
        stated.append(norm.expression)
    res = parse_copyright(path.read_bytes())
    # Exactly the stated licences (as SPDX), the one of "Files: *" first.
    assert set(res.licenses) == set(stated)
    assert res.licenses[0] == stated[0]


@pytest.mark.skipif(not (CORPUS / "copyright").is_dir(), reason="../shared/corpus not present")
def test_corpus_expected_spdx() -> None:
    d = CORPUS / "copyright"
    rpm = parse_copyright((d / "dep5-rpm.copyright").read_bytes())
    assert rpm.licenses == (
        "GPL-2.0-or-later",
        "GPL-2.0-or-later OR LGPL-2.0-or-later",
        "LGPL-2.0-or-later",
        "BSD-3-Clause",
    )
    drop = parse_copyright((d / "dropbear.copyright").read_bytes())
    assert drop.licenses[0] == "MIT"
    assert "LicenseRef-public-domain" in drop.licenses
    assert "LicenseRef-OpenSSH" in drop.licenses  # stated, not SPDX-listed: kept honestly
    gpgv = parse_copyright((d / "debian-slim-gpgv.copyright").read_bytes())
    assert gpgv.licenses[0] == "GPL-3.0-or-later"
    assert "LicenseRef-TinySCHEME" in gpgv.licenses


# -- this build machine is Debian 12: its copyright files are real ones -----------------


def _host_packages() -> list[str]:
    names: list[str] = []
    for para in HOST_STATUS.read_text(errors="replace").split("\n\n"):
        m = re.search(r"^Package:\s*(\S+)", para, re.M)
        st = re.search(r"^Status:.*\binstalled$", para, re.M)
        if m and st:
            names.append(m.group(1))
    return names


needs_host_debian = pytest.mark.skipif(
    not (HOST_DOC.is_dir() and HOST_STATUS.is_file()), reason="not a Debian host"
)


@pytest.fixture(scope="module")
def host_results() -> dict[str, tuple[tuple[str, ...], str, str]]:
    fs = _FS("/")
    lmap = default_map()
    out: dict[str, tuple[tuple[str, ...], str, str]] = {}
    for name in _host_packages():
        res, path = read_package_copyright(fs, name, lmap)
        out[name] = (res.licenses, res.method, path)
    return out


@needs_host_debian
def test_host_share_with_spdx_licence(
    host_results: dict[str, tuple[tuple[str, ...], str, str]],
) -> None:
    total = len(host_results)
    assert total > 50
    with_licence = sum(1 for lics, _, _ in host_results.values() if lics)
    listed = sum(
        1
        for lics, _, _ in host_results.values()
        if lics and any(is_listed(k) for k in license_keys(lics[0]))
    )
    assert with_licence / total >= 0.95, f"{with_licence}/{total}"
    assert listed / total >= 0.90, f"{listed}/{total}"


@needs_host_debian
def test_host_well_known_packages(
    host_results: dict[str, tuple[tuple[str, ...], str, str]],
) -> None:
    for name in ("bash", "coreutils"):
        if name in host_results:
            assert host_results[name][0][0] == "GPL-3.0-or-later", host_results[name]
    if "curl" in host_results:
        assert host_results["curl"][0][0] == "curl"
    if "libc6" in host_results:
        assert "LGPL-2.1-or-later" in host_results["libc6"][0]


# Words a copyright file must contain for a licence family to be reported from it.
_EVIDENCE = {
    "GPL": r"GPL|General\s+Public",
    "LGPL": r"LGPL|Lesser|Library\s+General",
    "AGPL": r"AGPL|Affero",
    "GFDL": r"GFDL|Free\s+Documentation",
    "Apache": r"Apache",
    "MIT": r"MIT|Expat|Permission\s+is\s+hereby\s+granted",
    "BSD": r"BSD|Redistribution\s+and\s+use",
    "MPL": r"MPL|Mozilla",
    "Zlib": r"zlib|plainly\s+marked",
    "ISC": r"ISC|and/or\s+distribute",
    "CC0": r"CC0|Creative\s+Commons",
    "Artistic": r"Artistic",
    "PSF": r"PSF|Python",
    "HPND": r"HPND|without\s+fee",
    "MIT-open-group": r"Open\s+Group",
    "TCL": r"TCL|Tcl|license\s+this\s+software",
    "Info-ZIP": r"Info-ZIP",
    "BSL": r"BSL|Boost",
    "IPL": r"IBM",
    "OLDAP": r"OpenLDAP|OLDAP",
    "FSFULLR": r"FSF|unlimited\s+permission",
    "FSFUL": r"FSF|unlimited\s+permission",
    "FSFAP": r"FSF|permitted\s+in\s+any\s+medium",
}


@needs_host_debian
def test_host_no_licence_not_stated(
    host_results: dict[str, tuple[tuple[str, ...], str, str]],
) -> None:
    """Honesty: every licence reported has its name (or wording) in the file."""
    bad: list[tuple[str, str, str]] = []
    for name, (lics, _method, path) in host_results.items():
        if not lics:
            continue
        text = Path(path).read_bytes()[: 4 * 1024 * 1024].decode("utf-8", errors="replace")
        for expr in lics:
            for key in license_keys(expr):
                if key.startswith("LicenseRef-"):
                    word = key[len("LicenseRef-") :].split("-")[0]
                    assert word.lower() in text.lower(), (name, key)
                    continue
                fam = key if key in _EVIDENCE else re.split(r"[-.\d]", key)[0]
                rx = _EVIDENCE.get(fam, re.escape(fam))
                if not re.search(rx, text, re.I):
                    bad.append((name, key, path))
    assert bad == []


@needs_host_debian
def test_host_doc_dir_symlinks_followed() -> None:
    fs = _FS("/")
    links = [p for p in HOST_DOC.iterdir() if p.is_symlink()][:10]
    for link in links:
        res, path = read_package_copyright(fs, link.name)
        if (link / "copyright").is_file():
            assert path and res.method != "none", link


# -- bad input ------------------------------------------------------------------------

DEP5 = DEP5_HEAD = (
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    "Upstream-Name: x\n\n"
)


def _doc(root: Path, pkg: str, data: bytes) -> None:
    d = root / "usr/share/doc" / pkg
    d.mkdir(parents=True, exist_ok=True)
    (d / "copyright").write_bytes(data)


def test_huge_copyright_file_reads_head(tmp_path: Path) -> None:
    body = DEP5_HEAD + "Files: *\nCopyright: 2020 Someone\nLicense: MIT\n\n"
    filler = "License: Foo\n" + (" " + "x" * 70 + "\n") * 700_000  # ~50 MB
    _doc(tmp_path, "big", (body + filler).encode())
    assert (tmp_path / "usr/share/doc/big/copyright").stat().st_size > 49_000_000
    res, _ = read_package_copyright(_FS(tmp_path), "big")
    assert res.licenses == ("MIT",)
    assert any("only its head" in n for n in res.notes)


def test_large_dep5_uses_fast_reader(tmp_path: Path) -> None:
    paras = "".join(
        f"Files: src/f{i}.c\nCopyright: {i} Someone\nLicense: BSL-1.0\n Boost text {'x' * 60}\n\n"
        for i in range(8000)
    )
    data = (
        DEP5
        + "Files: *\nCopyright: x\nLicense: BSL-1.0\n\n"
        + paras
        + ("Files: a/*\nCopyright: y\nLicense: MIT\n")
    )
    _doc(tmp_path, "boost", data.encode())
    res, _ = read_package_copyright(_FS(tmp_path), "boost")
    assert res.licenses == ("BSL-1.0", "MIT")
    assert res.method == "dep5-lenient"
    assert any("fast reader" in n for n in res.notes)


def test_latin1_copyright_file(tmp_path: Path) -> None:
    text = (
        "Copyright © 2001 Jürgen Müller\n\nThis program is free software; you can "
        "redistribute it under the terms of the GNU General Public License as published by "
        "the Free Software Foundation; either version 2 of the License, or (at your option) "
        "any later version.\n"
    )
    _doc(tmp_path, "latin", text.encode("latin-1"))
    res, _ = read_package_copyright(_FS(tmp_path), "latin")
    assert res.licenses == ("GPL-2.0-or-later",)
    assert any("Latin-1" in n for n in res.notes)


def test_broken_dep5_header(tmp_path: Path) -> None:
    data = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        " a stray continuation\n"
        "Upstream-Name broken header line without colon\n"
        "Files *\n\n"
        "Files: *\nCopyright: 2020 x\nLicense: BSD-3-clause\n\n"
        "Files: debian/*\nCopyright: 2020 y\nLicense: GPL-2+\n"
    )
    _doc(tmp_path, "broken", data.encode())
    res, _ = read_package_copyright(_FS(tmp_path), "broken")
    assert res.licenses == ("BSD-3-Clause",)


def test_unrecognisable_text_is_unknown(tmp_path: Path) -> None:
    _doc(tmp_path, "odd", b"Copyright 2020 Someone. All rights reserved.\nAsk me.\n")
    res, _ = read_package_copyright(_FS(tmp_path), "odd")
    assert res.licenses == ()
    assert res.method == "none"


def test_binary_garbage_never_crashes(tmp_path: Path) -> None:
    _doc(tmp_path, "bin", bytes(range(256)) * 64 + b"\x00Format: x\n")
    res, _ = read_package_copyright(_FS(tmp_path), "bin")
    assert res.licenses == ()


def test_missing_file_and_bad_names(tmp_path: Path) -> None:
    fs = _FS(tmp_path)
    assert read_package_copyright(fs, "absent")[0].method == "none"
    assert read_package_copyright(fs, "../etc")[0].licenses == ()


def test_symlinked_doc_dir_and_loop(tmp_path: Path) -> None:
    _doc(
        tmp_path, "libfoo-common", (DEP5_HEAD + "Files: *\nCopyright: x\nLicense: Zlib\n").encode()
    )
    doc = tmp_path / "usr/share/doc"
    os.symlink("libfoo-common", doc / "libfoo1")
    os.symlink("/usr/share/doc/libfoo-common", doc / "libfoo2")  # absolute: inside guest
    os.symlink("loop-b", doc / "loop-a")
    os.symlink("loop-a", doc / "loop-b")
    fs = _FS(tmp_path)
    assert read_package_copyright(fs, "libfoo1")[0].licenses == ("Zlib",)
    assert read_package_copyright(fs, "libfoo2")[0].licenses == ("Zlib",)
    assert read_package_copyright(fs, "loop-a")[0].licenses == ()
    assert resolve_in_guest(fs, "/usr/share/doc/loop-a/copyright") is None


def test_escape_by_symlink_stays_in_guest(tmp_path: Path) -> None:
    doc = tmp_path / "usr/share/doc/esc"
    doc.mkdir(parents=True)
    os.symlink("../../../../../../../../etc/passwd", doc / "copyright")
    res, path = read_package_copyright(_FS(tmp_path), "esc")
    assert path in ("", "/etc/passwd")
    assert res.licenses == ()


def test_free_text_common_licenses() -> None:
    text = (
        "This package is free software; you can redistribute it and/or modify it under the "
        "terms of the GNU Lesser General Public License as published by the Free Software "
        "Foundation; either version 2.1 of the License, or (at your option) any later "
        "version.\n\nOn Debian systems, the complete text of the GNU Lesser General Public "
        "License can be found in `/usr/share/common-licenses/LGPL-2.1'.\n"
    )
    assert match_text(text) == ["LGPL-2.1-or-later"]
    only = "Licensed under the Apache License, Version 2.0.\n/usr/share/common-licenses/Apache-2.0"
    assert match_text(only) == ["Apache-2.0"]
    # A mention of "the GNU General Public License for more details" names no version.
    assert match_text("See the GNU General Public License for more details.") == []
