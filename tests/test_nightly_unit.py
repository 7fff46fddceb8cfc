"""The per-image unit (``scan_planned_image``): one planned image in, the result to store out."""

from __future__ import annotations

from pathlib import Path

from nightly_samples import FakeScanner, finding, write_config, write_guest

from vmscan.nightly import discover, load_config, plan, run_nightly, scan_planned_image
from vmscan.state import StateDB


def test_scan_planned_image_returns_result_and_identity_and_stores_nothing(
    tmp_path: Path,
) -> None:
    write_guest(
        tmp_path / "imgs" / "a.img",
        hostname="a",
        findings=[finding("patch", "CVE-1", "medium", "openssl")],
    )
    cfg = load_config(write_config(tmp_path, str(tmp_path / "imgs" / "*.img")))
    (item,) = plan(cfg, discover(cfg).sources, None, {})
    scanner = FakeScanner()
    result, ident = scan_planned_image(cfg, item, scan_fn=scanner)
    assert scanner.opened == [str(tmp_path / "imgs" / "a.img")]
    assert result["source"] == item.source.path and result["status"] == "ok"
    assert ident == item.identity  # complete and unchanged: may be carried forward
    assert not cfg.state_db.exists()  # nothing stored
    # The image changes under the scan: no identity (never carried), said in the result.
    write_guest(tmp_path / "imgs" / "a.img", hostname="a2")
    result, ident = scan_planned_image(cfg, item, scan_fn=FakeScanner())
    assert ident is None and any("changed while it was scanned" in e for e in result["errors"])


def test_partial_unit_merges_into_the_stored_result(tmp_path: Path) -> None:
    write_guest(
        tmp_path / "imgs" / "a.img",
        hostname="a",
        findings=[
            finding("patch", "CVE-1", "medium", "openssl"),
            finding("antivirus", "OLD", "low", "/x"),
        ],
    )
    cfg = load_config(write_config(tmp_path, str(tmp_path / "imgs" / "*.img")))
    run_nightly(cfg, scan_fn=FakeScanner())
    (tmp_path / "sigs" / "clamav" / "local.hdb").write_text("ee:1:Changed\n")
    from vmscan.nightly import data_digests

    with StateDB(cfg.state_db) as db:
        (item,) = plan(cfg, discover(cfg).sources, db, data_digests(cfg))
        base = db.load_result(item.previous_digest)
    assert item.action == "partial" and item.checks == ("antivirus",)
    scanner = FakeScanner()
    result, _ident = scan_planned_image(cfg, item, scan_fn=scanner, base=base)
    assert scanner.calls[0][1] == ("antivirus",)
    checks = sorted(f["check"] for f in result["roots"][0]["findings"])
    assert checks == ["antivirus", "patch"]  # patch kept from the stored result
