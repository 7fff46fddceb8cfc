"""Signature updates without re-reading the fleet: bounded antivirus re-checks, "clean as of".

Stand-in scanner (nightly_samples); the plan, the merge, the state database and its
antivirus file-kind and verdict tables are the real ones.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from nightly_samples import FakeScanner, finding, write_config, write_guest

from vmscan.av.cache import VerdictCache
from vmscan.nightly import NightlyConfig, load_config, run_nightly
from vmscan.state import utcnow

OLD_ENGINE = "ClamAV 1.0.7/27400/Mon Nov 30 08:00:00 2026"


def _fleet(tmp: Path, *, days: float | None = None, when: str | None = None) -> NightlyConfig:
    for n in range(2):
        write_guest(
            tmp / "imgs" / f"vm{n}.img",
            hostname=f"vm{n}",
            av_engine=OLD_ENGINE,
            finished_at=when or utcnow(),
            findings=[
                finding("antivirus", "Doc.Old", "high", "/srv/report.txt"),
                finding("antivirus", "Exe.Old", "high", "/usr/bin/tool"),
            ],
            exec=[
                ["/usr/bin/tool", "aa" * 32],
                ["/srv/report.txt", "bb" * 32],
                ["/usr/bin/clean", "ee" * 32],
            ],
            migration="ready",
        )
    extra = f"av_recheck_days = {days}\n" if days is not None else ""
    path = write_config(tmp, str(tmp / "imgs" / "*.img"))
    path.write_text(path.read_text().replace("[scan]\n", "[scan]\n" + extra))
    return load_config(path)


def _signature_update(tmp: Path) -> None:
    (tmp / "sigs" / "clamav" / "local.hdb").write_text("cc:1:New-Sig\n")


def _images(cfg: NightlyConfig) -> dict[str, dict[str, Any]]:
    rep = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    return {Path(i["source"]).stem: i for i in rep["images"]}


class _NewDatabaseScanner(FakeScanner):
    """What a real scan under the new database reports: nothing on a file outside the
    scope it was given (not streamed), and no more Exe.Old (a false positive, fixed)."""

    def __call__(self, sources: list[str], opts: Any, on_image_done: Any = None) -> Any:
        scope = str(opts.plugin_options.get("av_scope") or "all")

        def done(img: Any) -> None:
            # /srv/report.txt is plain text: streamed only by a full-scope scan.
            text_streamed = scope == "all"
            for root in img.roots:
                root.findings = [
                    f
                    for f in root.findings
                    if f.check != "antivirus"
                    or (f.rule_id != "Exe.Old" and (text_streamed or f.target != "/srv/report.txt"))
                ]
            if on_image_done:
                on_image_done(img)

        return super().__call__(sources, opts, done)


def test_signature_update_within_the_window_is_bounded(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    cache = VerdictCache(str(cfg.state_db), "", "")
    cache.store_kinds([("aa" * 32, frozenset({"executables"})), ("bb" * 32, frozenset())])
    cache.close()
    _signature_update(tmp_path)
    scanner = _NewDatabaseScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert {p.action for p in out.plan} == {"partial"}
    assert scanner.calls and all(c[1] == ("antivirus",) for c in scanner.calls)
    assert set(scanner.scopes) == {"archives,documents,executables"}
    assert all("full re-check due" in p.reason for p in out.plan)
    img = _images(cfg)["vm0"]
    state = img["sections"]["state"]
    assert state["antivirus_as_of"]["engine"] == OLD_ENGINE
    assert state["antivirus_as_of"]["kinds_rechecked"] == ["archives", "documents", "executables"]
    # The executable was streamed again (the new database clears it); the text file was
    # not: its earlier detection stands, under the database it was found with.
    rules = sorted(f["rule_id"] for f in img["roots"][0]["findings"] if f["check"] == "antivirus")
    assert rules == ["Doc.Old"]
    # Next night: nothing changed, carried; "clean as of" still names the full scan.
    again = FakeScanner()
    assert run_nightly(cfg, scan_fn=again).skipped == 2 and again.calls == []
    assert _images(cfg)["vm1"]["sections"]["state"]["antivirus_as_of"]["engine"] == OLD_ENGINE


def _hash_list(tmp: Path, text: str) -> None:
    """vmscan's own SHA-256 hash list (HASH:SIZE:NAME), as `signatures import` writes it."""
    (tmp / "sigs" / "clamav" / "local.hsb").write_text(text)


def test_a_hash_list_update_is_matched_against_stored_hashes_without_opening_images(
    tmp_path: Path,
) -> None:
    cfg = _fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    _hash_list(tmp_path, f"{'ee' * 32}:10:Exe.Hash.New\n")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert scanner.opened == []  # no guest read at all
    assert all(p.av_hashes_only and "only hash signatures" in p.reason for p in out.plan)
    assert out.partial_rescans == 2
    img = _images(cfg)["vm0"]
    (new,) = [f for f in img["roots"][0]["findings"] if f["rule_id"] == "Exe.Hash.New"]
    assert new["target"] == "/usr/bin/clean" and new["details"]["detected_by"] == "hash"
    # The earlier findings stand; the result says it was re-matched, and when.
    rules = sorted(f["rule_id"] for f in img["roots"][0]["findings"] if f["check"] == "antivirus")
    assert rules == ["Doc.Old", "Exe.Hash.New", "Exe.Old"]
    stamp = img["roots"][0]["sections"]["antivirus"]["hash_rechecked"]
    assert stamp["files_checked"] == 3 and stamp["files_matched"] == 1
    assert img["sections"]["state"]["rechecked_offline"] is True
    # The HTML report says what "clean" means for the files without a finding.
    html = (cfg.reports_dir / "latest" / "report.html").read_text()
    assert "clean as of" in html and OLD_ENGINE in html and "hash signatures re-matched" in html
    # Next night nothing changed: carried, still nothing opened.
    again = FakeScanner()
    assert run_nightly(cfg, scan_fn=again).skipped == 2 and again.opened == []


def test_a_hash_finding_whose_signature_went_needs_a_content_scan(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    _hash_list(tmp_path, f"{'ee' * 32}:10:Exe.Hash.New\n")
    run_nightly(cfg, scan_fn=FakeScanner())
    # The entry is withdrawn: /usr/bin/clean was matched by hash, never streamed to clamd,
    # so only a content scan can call it clean now.
    _hash_list(tmp_path, "")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert len(scanner.opened) == 2
    assert all(c[1] == ("antivirus",) for c in scanner.calls)
    assert all(p.av_hashes_only for p in out.plan)


def test_old_full_scan_or_zero_days_restreams_everything(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, when="2026-01-01T00:00:00Z")  # the last full scan: months ago
    run_nightly(cfg, scan_fn=FakeScanner())
    _signature_update(tmp_path)
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert set(scanner.scopes) == {"all"} and all("full antivirus" in p.reason for p in out.plan)
    zero = _fleet(tmp_path / "zero", days=0)
    run_nightly(zero, scan_fn=FakeScanner())
    (tmp_path / "zero" / "sigs" / "clamav" / "local.hdb").write_text("dd:1:Newer\n")
    scanner = FakeScanner()
    run_nightly(zero, scan_fn=scanner)
    assert set(scanner.scopes) == {"all"}


def test_verdicts_of_old_databases_are_pruned(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    old = int(time.time()) - 30 * 86400
    with sqlite3.connect(cfg.state_db) as conn:
        VerdictCache(str(cfg.state_db), "", "").close()
        conn.executemany(
            "INSERT INTO av_verdicts VALUES (?, ?, 'e', 'clean', '', ?)",
            [
                ("11" * 32, "gone-db", old),  # old database, old: pruned
                ("22" * 32, "gone-db", int(time.time())),  # old database, recent: kept
                ("33" * 32, "d1", old),  # the database results were scanned under: kept
            ],
        )
    run_nightly(cfg, scan_fn=FakeScanner())
    with sqlite3.connect(cfg.state_db) as conn:
        left = sorted(r[0][:2] for r in conn.execute("SELECT sha256 FROM av_verdicts"))
    assert left == ["22", "33"]
