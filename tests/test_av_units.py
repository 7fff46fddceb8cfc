"""Pure parts of vmscan.av: replies, tar excludes, magic bytes, verdict cache, sections."""

from __future__ import annotations

import gzip
import io
import multiprocessing
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from vmscan.av.archive_limits import exceeds_limits
from vmscan.av.cache import VerdictCache
from vmscan.av.clamd_client import ClamdClient, ClamdUnavailable, Verdict, parse_reply
from vmscan.av.clamd_manager import ClamdLimits
from vmscan.av.engine import severity_of
from vmscan.av.magic import classify, in_scope, parse_scope
from vmscan.av.paths import decode_path, encode_path, tar_exclude_pattern
from vmscan.checks.antivirus import NOT_SCANNED_CAP, fingerprint, merge_sections
from vmscan.model import FileEntry
from vmscan.stream import build_excludes


@pytest.mark.parametrize(
    ("raw", "verdict", "sig"),
    [
        ("stream: OK\0", Verdict.CLEAN, ""),
        (
            "stream: Vmscan.Test.EICAR.UNOFFICIAL FOUND\0",
            Verdict.FOUND,
            "Vmscan.Test.EICAR.UNOFFICIAL",
        ),
        (
            "stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND",
            Verdict.TOO_LARGE,
            "Heuristics.Limits.Exceeded.MaxFileSize",
        ),
        ("INSTREAM size limit exceeded. ERROR", Verdict.TOO_LARGE, ""),
        ("stream: Can't allocate memory ERROR", Verdict.ERROR, ""),
        ("", Verdict.ERROR, ""),
    ],
)
def test_parse_reply(raw: str, verdict: Verdict, sig: str) -> None:
    r = parse_reply(raw)
    assert r.verdict is verdict
    assert r.signature == sig


def test_bad_addresses() -> None:
    for addr in ("clamd.sock", "tcp:nohost", "tcp::99", "udp:1.2.3.4:5"):
        with pytest.raises(ClamdUnavailable):
            ClamdClient(addr)
    assert ClamdClient("tcp:127.0.0.1:3310").target == ("127.0.0.1", 3310)
    assert ClamdClient("tcp:[::1]:3310").target == ("::1", 3310)


def test_ping_nothing_listening(tmp_path: Path) -> None:
    assert not ClamdClient(f"unix:{tmp_path}/none.sock", connect_timeout=1).ping()


def test_severity() -> None:
    assert severity_of("Win.Trojan.Agent-1") == "critical"
    assert severity_of("Vmscan.Test.EICAR") == "critical"
    assert severity_of("PUA.Win.Tool.Nmap") == "high"
    assert severity_of("Heuristics.Encrypted.Zip") == "high"


def test_path_roundtrip() -> None:
    for raw in (b"/etc/caf\xe9", b"/a\\b", b"/plain", b"/\xff\xfe\\x41", "/é".encode()):
        assert decode_path(encode_path(raw)) == raw
    assert encode_path(b"/caf\xe9") == "/caf\\xe9"


def test_tar_exclude_pattern() -> None:
    assert tar_exclude_pattern(b"usr/lib/a*b?[c]\\d") == "./usr/lib/a\\*b\\?\\[c]\\\\d"
    assert tar_exclude_pattern(b"new\nline") is None
    assert tar_exclude_pattern(b"caf\xe9") is None


def _entry(path: str, size: int = 10, sha: str | None = "0" * 64) -> FileEntry:
    return FileEntry("/dev/sda1", path, size, 0o100644, 0, 0, 0, sha)


def test_build_excludes_folds_folders() -> None:
    entries = [
        _entry("/usr/bin/a"),
        _entry("/usr/bin/b"),
        _entry("/usr/lib/c"),
        _entry("/etc/keep"),
        _entry("/etc/skip"),
        _entry("/etc/sub/x"),
        _entry("/odd*name/f"),
    ]
    ex = build_excludes(entries, {"/etc/keep"})
    assert ex == ["./etc/skip", "./etc/sub", "./odd\\*name", "./usr"]


def test_build_excludes_never_excludes_a_folder_entry_holding_kept_files() -> None:
    # A folder the walk cut short is a manifest entry of its own (vmscan.walk).
    cut = FileEntry("/dev/sda1", "/wide", 0, 0, 0, 0, 0, None, error="not walked")
    entries = [cut, _entry("/wide/a"), _entry("/wide/b"), _entry("/deep/x")]
    assert build_excludes(entries, {"/wide/a"}) == ["./deep", "./wide/b"]


def test_build_excludes_budget_prefers_big_files() -> None:
    entries = [_entry(f"/k/small{i}", size=1) for i in range(50)] + [
        _entry("/k/big", size=10**9),
        _entry("/k/keep"),
    ]
    ex = build_excludes(entries, {"/k/keep"}, budget=40)
    assert ex == ["./k/big"]


def test_excludes_really_exclude_with_gnu_tar(tmp_path: Path) -> None:
    """Our patterns give GNU tar (what the libguestfs daemon runs) exactly what we want."""
    root = tmp_path / "root"
    names = ["usr/bin/a", "x/usr/b", "usr2/c", "we*ird/d", "we*ird/e", "brack[1]/f", "b\\s/g"]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_text(n)
    entries = [_entry("/" + encode_path(n.encode())) for n in names]
    keep = {"/x/usr/b", "/we*ird/e", "/b\\\\s/g"}
    ex = build_excludes(entries, keep)
    (tmp_path / "ex").write_text("".join(p + "\n" for p in ex))
    out = subprocess.run(
        ["tar", "-C", str(root), "-cf", "-", "-X", str(tmp_path / "ex"), "."],
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "t.tar").write_bytes(out)
    with tarfile.open(tmp_path / "t.tar") as tf:
        files = sorted(m.name for m in tf if m.isreg())
    assert files == ["./b\\s/g", "./we*ird/e", "./x/usr/b"]


def test_classify() -> None:
    assert classify(b"\x7fELF\x02\x01") == {"executables"}
    assert classify(b"#!/bin/sh\n") == {"executables"}
    assert classify(b"MZ\x90\x00") == {"executables"}
    assert classify(b"%PDF-1.7") == {"documents"}
    assert classify(b"PK\x03\x04" + b"\0" * 26 + b"[Content_Types].xml") == {
        "archives",
        "documents",
    }
    assert classify(b"PK\x03\x04" + b"\0" * 40) == {"archives"}
    assert classify(b"\x1f\x8b\x08") == {"archives"}
    assert classify(b"\0" * 257 + b"ustar\x0000") == {"archives"}
    assert classify(b"hello world") == frozenset()
    assert classify(b"") == frozenset()


def test_scope() -> None:
    assert parse_scope(None) is None
    assert parse_scope("all") is None
    assert parse_scope("executables, archives") == frozenset({"executables", "archives"})
    with pytest.raises(ValueError, match="bogus"):
        parse_scope("executables,bogus")
    assert in_scope(frozenset(), None)
    assert not in_scope(frozenset(), frozenset({"documents"}))
    assert in_scope(frozenset({"documents"}), frozenset({"documents"}))


def test_cache_roundtrip(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    c = VerdictCache(db, "digest1", "ClamAV 1.4.6")
    c.store([("a" * 64, "clean", ""), ("b" * 64, "found", "Sig.X"), ("c" * 64, "error", "")])
    got = c.lookup(["a" * 64, "b" * 64, "c" * 64, "d" * 64])
    assert got["a" * 64].verdict == "clean"
    assert got["b" * 64].signature == "Sig.X"
    assert "c" * 64 not in got  # errors are never cached
    c.store_kinds([("a" * 64, frozenset({"executables", "pe"}))])
    assert c.kinds(["a" * 64]) == {"a" * 64: {"executables", "pe"}}
    c.store_pe_infos([("a" * 64, {"machine": "AMD64"})])
    assert c.pe_infos(["a" * 64, "b" * 64]) == {"a" * 64: {"machine": "AMD64"}}
    c.close()
    # Other databases or another engine: nothing cached.
    assert VerdictCache(db, "digest2", "ClamAV 1.4.6").lookup(["a" * 64]) == {}
    assert VerdictCache(db, "digest1", "ClamAV 1.5.0").lookup(["a" * 64]) == {}
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _writer(db: str, n: int) -> None:
    c = VerdictCache(db, "d", "e")
    for i in range(20):
        c.store([(f"{n:02d}{i:02d}" + "0" * 60, "clean", "")])
    c.close()


def test_cache_concurrent_processes(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM av_verdicts").fetchone()[0]
    assert rows == 80


def _section(counts: dict[str, int], paths: int, reasons: list[str]) -> dict[str, object]:
    return {
        "engine": "ClamAV",
        "database_digest": "d",
        "clamd": {"mode": "managed", "address": "unix:/x", "restarts": 0},
        "scope": "all",
        "files_total": 3,
        "files_scanned": 2,
        "files_from_cache": 0,
        "files_hash_matched": 0,
        "files_out_of_scope": 0,
        "files_streamed": 2,
        "bytes_streamed": 10,
        "bytes_read": 10,
        "detections": 1,
        "transfer": {"method": "tar_out", "seconds": 1.0, "mb_per_s": 0.0},
        "not_scanned": {
            "counts": counts,
            "paths": [
                {"path": f"/p{i}", "reason": "too_large", "detail": ""} for i in range(paths)
            ],
            "more": 0,
        },
        "status": "incomplete" if reasons else "complete",
        "incomplete_reasons": reasons,
    }


def test_merge_sections() -> None:
    a = merge_sections(None, _section({}, 0, []), "/dev/sda1")
    assert a["status"] == "complete" and a["roots"] == ["/dev/sda1"]
    b = merge_sections(a, _section({"too_large": 120}, NOT_SCANNED_CAP, ["too_large"]), "/dev/sda2")
    assert b["status"] == "incomplete"
    assert b["files_total"] == 6 and b["bytes_streamed"] == 20 and b["detections"] == 2
    assert b["not_scanned"]["counts"] == {"too_large": 120}
    assert len(b["not_scanned"]["paths"]) == NOT_SCANNED_CAP
    assert b["roots"] == ["/dev/sda1", "/dev/sda2"]


def test_fingerprint_is_stable() -> None:
    assert fingerprint("S", "/p", "ab") == fingerprint("S", "/p", "ab")
    assert fingerprint("S", "/p", "ab") != fingerprint("S", "/q", "ab")


def _zip(members: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in members.items():
            z.writestr(n, d)
    return buf


def test_archive_limits() -> None:
    lim = ClamdLimits(
        stream_max_length=1000, max_file_size=1000, max_scan_size=2500, max_files=5, max_recursion=3
    )
    assert exceeds_limits(_zip({"a": b"x" * 900}), lim) is None
    assert exceeds_limits(_zip({"a": b"\0" * 1001}), lim) == "MaxFileSize"
    assert exceeds_limits(_zip({f"m{i}": b"\0" * 900 for i in range(3)}), lim) == "MaxScanSize"
    assert exceeds_limits(_zip({f"m{i}": b"" for i in range(6)}), lim) == "MaxFiles"
    inner = _zip({"deep": b"\0" * 1001}).getvalue()
    assert len(inner) < 1000
    assert exceeds_limits(_zip({"inner.zip": inner}), lim) == "MaxFileSize"
    nested = b"\0" * 10
    for _ in range(5):
        nested = _zip({"n.zip" if nested.startswith(b"PK") else "leaf": nested}).getvalue()
    assert exceeds_limits(io.BytesIO(nested), lim) == "MaxRecursion"
    gz = io.BytesIO(gzip.compress(b"\0" * 5000))
    assert exceeds_limits(gz, lim) == "MaxFileSize"
    assert exceeds_limits(io.BytesIO(gzip.compress(b"ok")), lim) is None
    assert exceeds_limits(io.BytesIO(b"PK\x03\x04 broken"), lim) is None
    assert exceeds_limits(io.BytesIO(b""), lim) is None
