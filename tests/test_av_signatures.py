"""vmscan's ClamAV signature folder: manifest, verify(), local hash matching."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from vmscan.av import signatures as sigs

# The EICAR test string, in two halves so that no file of the repository holds it whole.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@pytest.fixture()
def sig_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "clamav"
    shutil.copytree(sigs.DEFAULT_SIG_DIR, dest)
    return dest


def test_shipped_signatures_verify() -> None:
    assert sigs.verify(sigs.DEFAULT_SIG_DIR) == []


def test_manifest_lists_every_database() -> None:
    manifest = json.loads((sigs.DEFAULT_SIG_DIR / sigs.MANIFEST_NAME).read_text())
    names = {f["name"] for f in manifest["files"]}
    assert {"vmscan.hsb", "vmscan.ndb", "vmscan.ldb"} <= names
    for f in manifest["files"]:
        assert f["version"] and len(f["sha256"]) == 64 and f["signatures"] >= 1


def test_tampered_file_is_reported(sig_copy: Path) -> None:
    with open(sig_copy / "vmscan.ndb", "a") as fh:
        fh.write("Extra.Sig:0:*:41424344\n")
    problems = sigs.verify(sig_copy, use_clamscan=False)
    assert any("vmscan.ndb: sha256 differs" in p for p in problems)


def test_unlisted_and_missing(sig_copy: Path) -> None:
    (sig_copy / "extra.hsb").write_text("")
    (sig_copy / "vmscan.ldb").unlink()
    problems = sigs.verify(sig_copy, use_clamscan=False)
    assert any("extra.hsb: not listed" in p for p in problems)
    assert any("vmscan.ldb: listed" in p and "missing" in p for p in problems)


def test_bad_lines_are_reported(sig_copy: Path) -> None:
    (sig_copy / "vmscan.hsb").write_text("nothex:12:Name:73\n" + "a" * 64 + ":*:Name\n")
    (sig_copy / "vmscan.ndb").write_text("Bad Name:0:*:4142\n")
    sigs.write_manifest(sig_copy, "test")
    problems = sigs.verify(sig_copy, use_clamscan=False)
    assert any(p.startswith("vmscan.hsb:1:") for p in problems)
    assert any(p.startswith("vmscan.hsb:2:") and "73" in p for p in problems)
    assert any(p.startswith("vmscan.ndb:1:") for p in problems)


def test_unreadable_manifest(tmp_path: Path) -> None:
    assert sigs.verify(tmp_path)[0].endswith(
        "unreadable manifest: [Errno 2] No such file or directory: "
        f"'{tmp_path / sigs.MANIFEST_NAME}'"
    )


def test_clamscan_rejects_broken_database(sig_copy: Path) -> None:
    if shutil.which("clamscan") is None:
        pytest.skip("clamscan is not installed")
    (sig_copy / "broken.ndb").write_text("Broken.Sig:0:*:41424x4344454647\n")
    sigs.write_manifest(sig_copy, "test")
    # The line check lets it through; ClamAV itself refuses to load it.
    assert sigs.verify(sig_copy, use_clamscan=False) == []
    problems = sigs.verify(sig_copy)
    assert len(problems) == 1 and "Malformed database" in problems[0]


def test_eicar_hash_first() -> None:
    table = sigs.load_sha256_signatures(sigs.DEFAULT_SIG_DIR)
    for data in (EICAR, EICAR + b"\n", EICAR + b"\r\n"):
        hit = sigs.match_hash(table, hashlib.sha256(data).hexdigest(), len(data))
        assert hit is not None and hit.name == "Vmscan.Test.EICAR"
    # Same digest with a different size is not a match (hash lists carry the size).
    assert sigs.match_hash(table, hashlib.sha256(EICAR).hexdigest(), 1) is None
    assert sigs.match_hash(table, None, 0) is None


def test_marker_hash() -> None:
    table = sigs.load_sha256_signatures(sigs.DEFAULT_SIG_DIR)
    data = sigs.TEST_MARKER + b"\n"
    hit = sigs.match_hash(table, hashlib.sha256(data).hexdigest(), len(data))
    assert hit is not None and hit.name == "Vmscan.Test.Marker-7d1c0b5e"


def test_wildcard_size(tmp_path: Path) -> None:
    digest = "ab" * 32
    (tmp_path / "x.hsb").write_text(f"{digest}:*:Any.Size:73\n")
    table = sigs.load_sha256_signatures(tmp_path)
    assert sigs.match_hash(table, digest.upper(), 12345) is not None


def test_normalize_name() -> None:
    assert sigs.normalize_name("Vmscan.Test.EICAR.UNOFFICIAL") == "Vmscan.Test.EICAR"
    assert sigs.normalize_name("Win.Test.EICAR_HDB-1") == "Win.Test.EICAR_HDB-1"


def test_database_digest_changes_with_content(sig_copy: Path) -> None:
    before = sigs.database_digest(sig_copy)
    assert before == sigs.database_digest(sig_copy)
    with open(sig_copy / "vmscan.ndb", "a") as fh:
        fh.write("\n")
    assert sigs.database_digest(sig_copy) != before
