"""Nightly runs with a stand-in scanner: skip unchanged, resume, partial rescans, faults."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nightly_samples import FakeScanner, finding, write_config, write_guest

from vmscan import nightly
from vmscan.cli import main as cli_main
from vmscan.nightly import NightlyConfig, load_config, run_nightly
from vmscan.state import RUN_COMPLETE, RUN_FAILED, RUN_INTERRUPTED, StateDB

TESTS = Path(__file__).resolve().parent


def _fleet(tmp: Path, n: int = 3) -> NightlyConfig:
    for i in range(n):
        write_guest(
            tmp / "imgs" / f"vm{i}.img",
            hostname=f"vm{i}",
            packages=[["bash", "5.2-1"], ["openssl", "3.0.9-1"]],
            findings=[
                finding("patch", "CVE-1", "medium", "openssl"),
                finding("antivirus", "OLD-SIG", "low", "/x"),
            ],
            exec=[["/usr/bin/bash", "aa"]],
            migration="ready",
        )
    return load_config(write_config(tmp, str(tmp / "imgs" / "*.img")))


def _report(cfg: NightlyConfig, run: int | str = "latest") -> dict:  # type: ignore[type-arg]
    data: dict = json.loads((cfg.reports_dir / str(run) / "report.json").read_text())  # type: ignore[type-arg]
    return data


def test_second_run_over_unchanged_images_opens_nothing(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    first = FakeScanner()
    out1 = run_nightly(cfg, scan_fn=first)
    assert len(first.opened) == 3 and out1.scanned == 3 and out1.exit_code == 0
    second = FakeScanner()
    out2 = run_nightly(cfg, scan_fn=second)
    assert second.opened == [] and second.calls == []
    assert out2.skipped == 3 and out2.scanned == 0 and out2.exit_code == 0
    rep = _report(cfg)
    assert rep["sections"]["run"]["id"] == out2.run_id
    assert all(i["sections"]["state"]["carried_forward"] for i in rep["images"])
    assert rep["sections"]["changes"]["summary"]["images_changed"] == 0
    assert os.readlink(cfg.reports_dir / "latest") == str(out2.run_id)
    for fmt in ("json", "html", "sarif"):
        assert (cfg.reports_dir / str(out2.run_id) / f"report.{fmt}").is_file()


def test_changed_image_alone_is_rescanned_and_diff_names_the_change(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    run_nightly(cfg, scan_fn=FakeScanner())
    write_guest(
        tmp_path / "imgs" / "vm1.img",
        hostname="vm1",
        packages=[["bash", "5.2-1"], ["openssl", "3.0.10-1"], ["nc", "1.2"]],
        findings=[finding("antivirus", "EICAR", "critical", "/tmp/eicar")],
        exec=[["/usr/bin/bash", "aa"], ["/tmp/nc", "ff"]],
    )
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert scanner.opened == [str(tmp_path / "imgs" / "vm1.img")]
    assert out.skipped == 2 and out.exit_code == 1  # critical >= fail_on high
    changes = _report(cfg)["sections"]["changes"]
    (changed,) = [i for i in changes["images"] if i["changed"]]
    assert changed["source"].endswith("vm1.img")
    assert [f["rule_id"] for f in changed["new_findings"]] == ["EICAR"]
    assert {f["rule_id"] for f in changed["resolved_findings"]} == {"CVE-1", "OLD-SIG"}
    assert [p["name"] for p in changed["packages_added"]] == ["nc"]
    assert [p["to"] for p in changed["packages_upgraded"]] == ["3.0.10-1"]
    assert [e["path"] for e in changed["new_executables"]] == ["/tmp/nc"]
    # The CLI diff over the same two runs says the same.
    rc = cli_main(
        ["diff", "--state-db", str(cfg.state_db), "previous", "latest", "--format", "json"]
    )
    assert rc == 0


def test_signature_change_rechecks_only_antivirus(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=2)
    run_nightly(cfg, scan_fn=FakeScanner())
    (tmp_path / "sigs" / "clamav" / "local.hdb").write_text("aa:1:New-Sig\n")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert [c[1] for c in scanner.calls] == [("antivirus",)]
    assert out.partial_rescans == 2 and out.skipped == 0
    img = _report(cfg)["images"][0]
    checks = sorted(f["check"] for f in img["roots"][0]["findings"])
    assert checks == ["antivirus", "patch"]  # patch findings kept from the earlier scan
    assert img["sections"]["state"]["rescanned_checks"] == ["antivirus"]
    # Next night nothing changed: carried forward again.
    again = FakeScanner()
    assert run_nightly(cfg, scan_fn=again).skipped == 2 and again.calls == []


def test_advisory_change_rechecks_patch_offline_without_appliance(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=2)
    run_nightly(cfg, scan_fn=FakeScanner())
    advisory = {
        "id": "DSA-9999-1",
        "summary": "openssl - security update",
        "modified": "2026-01-01T00:00:00Z",
        "affected": [
            {
                "package": {"ecosystem": "Debian:12", "name": "openssl"},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.10-1"}]}
                ],
            }
        ],
    }
    feed = tmp_path / "sigs" / "advisories" / "local"  # a feed is a folder of records
    feed.mkdir(parents=True, exist_ok=True)
    (feed / "DSA-9999-1.json").write_text(json.dumps(advisory))
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert scanner.calls == []  # the stored packages were matched again: no appliance
    assert out.partial_rescans == 2 and out.scanned == 0
    rep = _report(cfg)
    img = rep["images"][0]
    by_check = {(f["check"], f["rule_id"]) for f in img["roots"][0]["findings"]}
    assert ("patch", "DSA-9999-1") in by_check and ("antivirus", "OLD-SIG") in by_check
    assert img["sections"]["state"]["rechecked_offline"] is True
    assert img["roots"][0]["sections"]["patch"]["summary"]["vulnerable_packages"] == 1
    changed = [i for i in rep["sections"]["changes"]["images"] if i["changed"]]
    assert len(changed) == 2
    assert "DSA-9999-1" in {f["rule_id"] for f in changed[0]["new_findings"]}
    # The next night nothing changed: carried forward, still no appliance.
    again = FakeScanner()
    assert run_nightly(cfg, scan_fn=again).skipped == 2 and again.calls == []


def test_interrupted_run_is_marked_and_next_run_finishes_the_rest(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)

    def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_nightly(cfg, scan_fn=FakeScanner(after_first=stop))
    with StateDB(cfg.state_db) as db:
        (run,) = db.list_runs()
        assert run.status == RUN_INTERRUPTED
        assert len(db.image_rows(run.id)) == 1
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert len(scanner.opened) == 2 and out.skipped == 1
    with StateDB(cfg.state_db) as db:
        assert db.get_run(out.run_id).status == RUN_COMPLETE  # type: ignore[arg-type, union-attr]
        assert len(db.image_rows(out.run_id)) == 3  # type: ignore[arg-type]


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from nightly_samples import FakeScanner
from vmscan.nightly import load_config, run_nightly
ready = Path({ready!r})
def hang():
    ready.write_text("x")
    time.sleep(120)
run_nightly(load_config({cfg!r}), scan_fn=FakeScanner(after_first=hang))
"""


def test_killed_run_leaves_consistent_db_and_is_resumed(tmp_path: Path) -> None:
    _fleet(tmp_path)
    cfg_path = tmp_path / "vmscan.toml"
    ready = tmp_path / "ready"
    script = _KILL_SCRIPT.format(tests=str(TESTS), ready=str(ready), cfg=str(cfg_path))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the child nightly never reached its first image"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cfg = load_config(cfg_path)
    with StateDB(cfg.state_db) as db:
        assert db.integrity_ok()
        (run,) = db.list_runs()
        assert run.status == RUN_INTERRUPTED and db.recovered == [run.id]
        assert len(db.image_rows(run.id)) == 1
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert len(scanner.opened) == 2 and out.skipped == 1 and out.exit_code == 0


def test_vanishing_and_changing_images_are_reported_and_others_go_on(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=3)
    imgs = tmp_path / "imgs"

    def fault(src: str) -> None:
        if src.endswith("vm0.img"):
            os.unlink(src)
        elif src.endswith("vm1.img"):
            with open(src, "a") as fh:
                fh.write(" " * 512)  # the running VM writes on

    out = run_nightly(cfg, scan_fn=FakeScanner(before_each=fault))
    assert out.exit_code == 2 and out.failed == 1 and out.scanned == 2
    by_src = {i["source"]: i for i in _report(cfg)["images"]}
    assert by_src[str(imgs / "vm0.img")]["status"] == "error"
    assert any("vanished" in e for e in by_src[str(imgs / "vm0.img")]["errors"])
    assert by_src[str(imgs / "vm1.img")]["status"] == "partial"
    assert any("changed while it was scanned" in e for e in by_src[str(imgs / "vm1.img")]["errors"])
    assert by_src[str(imgs / "vm2.img")]["status"] == "ok"
    # Next night: vm0 is gone from the glob, vm1 is rescanned, vm2 carried forward.
    scanner = FakeScanner()
    out2 = run_nightly(cfg, scan_fn=scanner)
    assert scanner.opened == [str(imgs / "vm1.img")] and out2.exit_code == 0
    assert _report(cfg)["sections"]["changes"]["images_gone"] == [str(imgs / "vm0.img")]


def test_missing_named_image_is_an_error_not_a_crash(tmp_path: Path) -> None:
    write_guest(tmp_path / "imgs" / "a.img")
    text = write_config(tmp_path, str(tmp_path / "imgs" / "*.img")).read_text()
    cfg_path = tmp_path / "vmscan.toml"
    cfg_path.write_text(text.replace('paths = ["', f'paths = ["{tmp_path}/nope.qcow2", "'))
    cfg = load_config(cfg_path)
    out = run_nightly(cfg, scan_fn=FakeScanner())
    assert out.exit_code == 2 and out.failed == 1 and out.scanned == 1
    assert nightly.dry_run(cfg)[0].action == "error"


def test_fail_on_thresholds(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=1)
    assert run_nightly(cfg, scan_fn=FakeScanner()).exit_code == 0  # medium < high
    low = NightlyConfig(**{**cfg.__dict__, "fail_on": "low"})
    assert run_nightly(low, scan_fn=FakeScanner()).exit_code == 1
    never = NightlyConfig(**{**cfg.__dict__, "fail_on": None})
    assert run_nightly(never, scan_fn=FakeScanner()).exit_code == 0


def test_retention_removes_old_runs_and_their_reports(tmp_path: Path) -> None:
    base = _fleet(tmp_path, n=1)
    cfg = NightlyConfig(**{**base.__dict__, "keep_runs": 2})
    ids = [run_nightly(cfg, scan_fn=FakeScanner()).run_id for _ in range(4)]
    assert not (cfg.reports_dir / str(ids[0])).exists()
    assert not (cfg.reports_dir / str(ids[1])).exists()
    assert (cfg.reports_dir / str(ids[3]) / "report.html").is_file()
    with StateDB(cfg.state_db) as db:
        assert [r.id for r in db.list_runs()] == [ids[3], ids[2]]
    # Carried-forward results survive the deletion of the run that scanned them.
    scanner = FakeScanner()
    assert run_nightly(cfg, scan_fn=scanner).skipped == 1 and not scanner.opened


def test_metrics_textfile(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=2)
    metrics = tmp_path / "node" / "vmscan.prom"
    run_nightly(cfg, scan_fn=FakeScanner())
    run_nightly(cfg, scan_fn=FakeScanner(), metrics_path=metrics)
    text = metrics.read_text()
    assert "vmscan_nightly_images_skipped_unchanged 2\n" in text
    assert "vmscan_nightly_images_scanned 0\n" in text
    assert 'vmscan_nightly_findings{severity="medium"} 2\n' in text
    assert "# TYPE vmscan_nightly_run_duration_seconds gauge" in text
    assert not list(metrics.parent.glob(".*tmp"))


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=2)
    items = nightly.dry_run(cfg)
    assert [i.action for i in items] == ["scan", "scan"] and not cfg.state_db.exists()
    run_nightly(cfg, scan_fn=FakeScanner())
    assert [i.action for i in nightly.dry_run(cfg)] == ["carry", "carry"]
    assert cli_main(["nightly", "--config", str(cfg.path), "--dry-run"]) == 0


def test_cli_usage_errors_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[images]\npaths = ["/x"]\n[limits]\njobs = "2"\n')
    assert cli_main(["nightly", "--config", str(bad)]) == 3
    assert cli_main(["report", "--state-db", str(tmp_path / "none.db")]) == 3


def test_report_command_reexports_a_stored_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _fleet(tmp_path, n=2)
    out = run_nightly(cfg, scan_fn=FakeScanner())
    capsys.readouterr()
    assert cli_main(["report", "--config", str(cfg.path), "--run", "latest"]) == 0
    doc = json.loads(capsys.readouterr().out)
    stored = _report(cfg, out.run_id)  # type: ignore[arg-type]
    assert doc == stored
    dest = tmp_path / "x.sarif"
    assert (
        cli_main(
            [
                "report",
                "--state-db",
                str(cfg.state_db),
                "--run",
                str(out.run_id),
                "--format",
                "sarif",
                "-o",
                str(dest),
            ]
        )
        == 0
    )
    assert json.loads(dest.read_text())["version"] == "2.1.0"
    assert cli_main(["report", "--state-db", str(cfg.state_db), "--run", "99"]) == 3


def test_second_nightly_on_same_db_is_refused(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path, n=1)
    with nightly.run_lock(cfg.state_db), pytest.raises(nightly.BusyError):
        run_nightly(cfg, scan_fn=FakeScanner())


@contextlib.contextmanager
def _tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    rc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if rc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {rc.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_reports_disk_is_clear_and_database_stays_whole(tmp_path: Path) -> None:
    base = _fleet(tmp_path, n=2)
    with _tiny_tmpfs(tmp_path / "full", "64k") as full:
        cfg = NightlyConfig(**{**base.__dict__, "reports_dir": full})
        ok = run_nightly(
            NightlyConfig(**{**base.__dict__, "reports_dir": full, "formats": ("json",)}),
            scan_fn=FakeScanner(),
        )
        assert ok.error == ""
        first = (full / str(ok.run_id) / "report.json").read_text()
        (full / "filler").write_bytes(b"\0" * (64 * 1024 - len(first) - 8192))
        out = run_nightly(cfg, scan_fn=FakeScanner())
        assert out.exit_code == 2 and "no space left" in out.error
        assert os.readlink(full / "latest") == str(ok.run_id)
        assert (full / str(ok.run_id) / "report.json").read_text() == first
        assert not [p for p in full.rglob(".*.tmp")]
        with StateDB(cfg.state_db) as db:
            assert db.integrity_ok()
            run = db.get_run(out.run_id)  # type: ignore[arg-type]
            assert run is not None and run.status == RUN_FAILED and "no space" in run.error
            assert len(db.image_rows(run.id)) == 2
        # Once there is room again, `vmscan report` redoes the missing report.
        (full / "filler").unlink()
        dest = full / str(out.run_id) / "report.html"
        assert (
            cli_main(
                [
                    "report",
                    "--state-db",
                    str(cfg.state_db),
                    "--run",
                    str(out.run_id),
                    "--format",
                    "html",
                    "-o",
                    str(dest),
                ]
            )
            == 0
        )
        assert dest.stat().st_size > 0


_TERM_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from nightly_samples import FakeScanner
import vmscan.nightly
from vmscan.cli import main
ready = Path({ready!r})
def hang():
    ready.write_text("x")
    time.sleep(120)
vmscan.nightly._default_scan_fn = lambda: FakeScanner(after_first=hang)
sys.exit(main(["nightly", "--config", {cfg!r}, "--metrics", {metrics!r}]))
"""


def test_sigterm_marks_run_interrupted_and_exits_143(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    ready = tmp_path / "ready"
    metrics = tmp_path / "vmscan.prom"
    script = _TERM_SCRIPT.format(
        tests=str(TESTS), ready=str(ready), cfg=str(cfg.path), metrics=str(metrics)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    for _ in range(600):
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert b"marked interrupted" in err
    with StateDB(cfg.state_db) as db:
        assert db.recovered == []  # the process marked it itself
        (run,) = db.list_runs()
        assert run.status == RUN_INTERRUPTED and len(db.image_rows(run.id)) == 1
    assert "vmscan_nightly_images_scanned 1" in metrics.read_text()
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert len(scanner.opened) == 2 and out.skipped == 1


def test_appliances_per_storage_are_limited(tmp_path: Path) -> None:
    for folder in ("store-a", "store-b"):
        for i in range(3):
            write_guest(tmp_path / folder / f"vm{i}.img", hostname=f"{folder}-{i}")
    text = write_config(tmp_path, str(tmp_path / "store-*" / "*.img")).read_text()
    text = text.replace("max_per_storage = 2", 'max_per_storage = 1\nstorage_group = "folder"')
    (tmp_path / "vmscan.toml").write_text(text)
    cfg = load_config(tmp_path / "vmscan.toml")
    scanner = FakeScanner()
    out = run_nightly(cfg, scan_fn=scanner)
    assert out.scanned == 6
    # One pool for the night; the scanner's pool keeps one image per storage at a time
    # (tests/test_pool.py shows it does), told which image is on which storage.
    ((sources, _checks, jobs),) = scanner.calls
    ((storage, per),) = scanner.storage
    assert per == 1 and jobs == 2 and len(sources) == 6
    folders_of: dict[str, set[str]] = {}
    for src in sources:
        folders_of.setdefault(storage[src], set()).add(Path(src).parent.name)
    assert sorted(map(sorted, folders_of.values())) == [["store-a"], ["store-b"]]
    # One storage only: the same single pool, at most max_per_storage at a time.
    one = NightlyConfig(**{**cfg.__dict__, "image_paths": (str(tmp_path / "store-a" / "*"),)})
    one_scanner = FakeScanner()
    run_nightly(
        NightlyConfig(**{**one.__dict__, "state_db": tmp_path / "o.db"}), scan_fn=one_scanner
    )
    assert [len(s) for s, _c, _j in one_scanner.calls] == [3]
    assert [per for _st, per in one_scanner.storage] == [1]
