"""A check that could not run never makes an image "ok": real plugins on crafted host trees.

Every case runs the real catalogers and checks through the scanner's own plugin loop
(:func:`vmscan.plugins.run_plugins`) over a :class:`HostDirFS` tree, then derives the image
status, the exit code and every writer's output from the result, as a scan does. No appliance: the
appliance runs of the same cases are in ``test_completeness_guest.py``.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from nightly_samples import FakeScanner, write_config, write_guest

from fixtures.specs.windows_phony import _write_hive, software_tree, system_tree
from vmscan import SCHEMA_VERSION, __version__
from vmscan.catalog.common import BROKEN_DB_RULE
from vmscan.completeness import (
    INCOMPLETE_RULE,
    REASON_LIMIT,
    Info,
    bound,
    exit_code,
    finalize_image,
    incomplete_plugins,
    join_notes,
    plugin_status,
)
from vmscan.guestfs_view import HostDirFS
from vmscan.manifest import sha256_file
from vmscan.model import (
    FileEntry,
    Filesystem,
    ImageResult,
    ImageStatus,
    OSInfo,
    RootResult,
    ScanResult,
    to_jsonable,
)
from vmscan.nightly import dry_run, format_metrics, load_config, run_nightly
from vmscan.plugins import ScanContext
from vmscan.report.csv_out import finding_rows
from vmscan.report.html import render_html
from vmscan.report.junit import build_junit
from vmscan.report.sarif import to_sarif
from vmscan.scanner import ScanOptions, _run_plugins

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
SARIF_SCHEMA = REPO.parent / "shared" / "schemas" / "sarif-schema-2.1.0.json"
REPORT_SCHEMA = REPO / "vmscan" / "schema" / "report.schema.json"
DEBIAN = OSInfo(type="linux", distro="debian", os_release_id="debian", version_id="12")
GOOD_STATUS = (
    "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\n"
    "Package: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1-10\n\n"
)
DEAD_CLAMD = "unix:/nonexistent/vmscan-test/clamd.sock"


def _manifest(root: Path, device: str = "/dev/sda1") -> list[FileEntry]:
    out = []
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            st = p.lstat()
            if p.is_file() and not p.is_symlink():
                rel = "/" + str(p.relative_to(root))
                out.append(FileEntry(device, rel, st.st_size, st.st_mode, 0, 0, 0, sha256_file(p)))
    return sorted(out, key=lambda e: e.path)


def scan_tree(
    tree: Path,
    os_info: OSInfo,
    checks: tuple[str, ...] = (),
    source: str = "/img/guest.qcow2",
    fs: HostDirFS | None = None,
    **options: Any,
) -> ImageResult:
    """What the scanner makes of *tree* (seen through *fs*) as the one root of an image."""
    device = "/dev/sda1"
    image = ImageResult(source=source, filesystems=[Filesystem(device, "ext4", "/", True)])
    root = RootResult(device=device, os=os_info, mountpoints={"/": device})
    ctx = ScanContext(
        root=root, manifest=_manifest(tree, device), options=dict(options), image=image
    )
    # A host tree has no appliance to die: always alive.
    _run_plugins(fs or HostDirFS(tree), ctx, ScanOptions(checks=checks))
    image.roots.append(root)
    finalize_image(image, checks)
    return image


def _doc(*images: ImageResult) -> dict[str, Any]:
    run = ScanResult(SCHEMA_VERSION, __version__, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
    run.images = list(images)
    data: dict[str, Any] = to_jsonable(run)
    return data


def _plugin(img: ImageResult, name: str) -> Any:
    (st,) = [p for p in img.roots[0].plugins if p.name == name]
    return st


def _dpkg_tree(tmp: Path, status: bytes) -> Path:
    (tmp / "var/lib/dpkg").mkdir(parents=True)
    (tmp / "var/lib/dpkg/status").write_bytes(status)
    (tmp / "etc").mkdir()
    (tmp / "etc/hostname").write_text("guest\n")
    return tmp


# ---- reasons and statuses ---------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 79, 1000, 1001, 5000, 10**6])
def test_bound_never_exceeds_its_limit(n: int) -> None:
    text = "x" * n
    out = bound(text)
    assert len(out) <= REASON_LIMIT
    assert out == text if n <= REASON_LIMIT else f"{n - (REASON_LIMIT - 40)} more characters" in out


def test_join_notes_counts_what_it_leaves_out() -> None:
    notes = [f"paragraph at line {i} has no Package field" for i in range(5000)]
    out = join_notes(notes)
    assert len(out) <= REASON_LIMIT and out.startswith(notes[0])
    kept = out.count("has no Package field")
    assert f"(+{5000 - kept} more notes)" in out


def test_gap_notes_make_a_plugin_partial_info_notes_do_not() -> None:
    assert plugin_status("license", [Info("exception dropped")]).status == "succeeded"
    st = plugin_status("license", [Info("exception dropped"), "copyright not read: EIO"])
    assert st.status == "partial" and st.reason.startswith("copyright not read")
    failed = plugin_status("os/rpm", ["a note"], RuntimeError("boom"))
    assert (failed.status, failed.reason) == ("failed", "boom; a note")


# ---- package databases ------------------------------------------------------------------


def test_garbage_dpkg_status_is_a_failed_cataloger_and_a_finding(tmp_path: Path) -> None:
    """50 MB of random bytes as /var/lib/dpkg/status (issue 18): today a 204 KB reason
    and "0 vulnerable"; now a failed cataloger, a short reason, a finding, exit 2."""
    rnd = os.urandom(50 * 1024 * 1024)
    tree = _dpkg_tree(tmp_path / "g", rnd)
    img = scan_tree(tree, DEBIAN)
    st = _plugin(img, "os/dpkg")
    assert st.status == "failed" and len(st.reason) <= REASON_LIMIT
    assert "malformed line(s)" in st.reason and "0 installed package(s) read" in st.reason
    assert img.roots[0].packages == []
    (f,) = [f for f in img.roots[0].findings if f.rule_id == BROKEN_DB_RULE]
    assert (f.check, f.severity, f.target) == ("inventory", "high", "/var/lib/dpkg/status")
    assert img.status == ImageStatus.PARTIAL
    assert any("os/dpkg did not complete (failed)" in e for e in img.errors)
    assert all(len(e) <= REASON_LIMIT for e in img.errors)
    doc = _doc(img)
    jsonschema.validate(doc, json.loads(REPORT_SCHEMA.read_text()))
    assert exit_code(doc, None) == 2


def test_damaged_dpkg_status_keeps_what_it_read(tmp_path: Path) -> None:
    cut = GOOD_STATUS + "Package: zlib1g\nStatus: install ok inst\xff\x00garbage\n" + "x" * 50
    tree = _dpkg_tree(tmp_path / "g", cut.encode("utf-8", "surrogateescape"))
    img = scan_tree(tree, DEBIAN)
    st = _plugin(img, "os/dpkg")
    assert st.status == "partial"
    assert (
        "cut-off last line (file truncated?)" in st.reason
        and "2 installed package(s) read" in st.reason
    )
    assert [p.name for p in img.roots[0].packages] == ["bash", "curl"]
    (f,) = img.roots[0].findings
    assert f.severity == "medium" and f.details["state"] == "partly readable"
    assert img.status == ImageStatus.PARTIAL


def test_empty_dpkg_status_on_a_debian_root_is_broken(tmp_path: Path) -> None:
    tree = _dpkg_tree(tmp_path / "g", b"")
    assert _plugin(scan_tree(tree, DEBIAN), "os/dpkg").status == "failed"
    # Other systems may carry an empty dpkg database (Fedora's dpkg package does).
    fedora = OSInfo(type="linux", distro="fedora", package_format="rpm")
    img = scan_tree(tree, fedora)
    assert _plugin(img, "os/dpkg").status == "succeeded" and img.status == ImageStatus.OK


def test_zero_packages_where_the_os_says_there_must_be_some(tmp_path: Path) -> None:
    apk = tmp_path / "apk"
    (apk / "lib/apk/db").mkdir(parents=True)
    (apk / "lib/apk/db/installed").write_text("")
    alpine = OSInfo(type="linux", distro="alpine", os_release_id="alpine", package_format="apk")
    st = _plugin(scan_tree(apk, alpine), "os/apk")
    assert st.status == "failed" and "lists no package" in st.reason
    rpm = tmp_path / "rpm"
    (rpm / "var/lib/rpm").mkdir(parents=True)
    con = sqlite3.connect(rpm / "var/lib/rpm/rpmdb.sqlite")
    con.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB)")
    con.commit()
    con.close()
    rocky = OSInfo(type="linux", distro="rocky", package_format="rpm")
    img = scan_tree(rpm, rocky)
    st = _plugin(img, "os/rpm")
    assert st.status == "failed" and "holds no package" in st.reason
    assert [f.severity for f in img.roots[0].findings] == ["high"]
    # The same empty rpm database on a Debian host (rpm installed as a tool) is no damage.
    assert _plugin(scan_tree(rpm, DEBIAN), "os/rpm").status == "succeeded"


def test_errors_are_bounded_in_size_and_number() -> None:
    img = ImageResult(source="/img/x", errors=[f"problem {i}: " + "x" * 5000 for i in range(150)])
    finalize_image(img)
    assert len(img.errors) == 101 and img.errors[-1] == "... and 50 more problems"
    assert all(len(e) <= REASON_LIMIT for e in img.errors)


def test_good_dpkg_status_stays_ok(tmp_path: Path) -> None:
    img = scan_tree(_dpkg_tree(tmp_path / "g", GOOD_STATUS.encode()), DEBIAN)
    assert _plugin(img, "os/dpkg").status == "succeeded"
    assert img.status == ImageStatus.OK and img.errors == [] and img.roots[0].findings == []
    assert exit_code(_doc(img), None) == 0


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")
@pytest.mark.parametrize(
    ("name", "keep", "status"),
    [
        # SQLite refuses a cut file whole (its schema points past the end): failed, and
        # the reason says it was cut.
        ("fedora36-sqlite", 0.5, "failed"),
        ("sle15-bci-ndb", 0.5, "partial"),
        ("centos8-libuuid-bdb", 0.01, "failed"),
    ],
)
def test_truncated_rpmdb(tmp_path: Path, name: str, keep: float, status: str) -> None:
    db = tmp_path / "db"
    db.parent.mkdir(exist_ok=True)
    src = CORPUS / "rpm" / name
    if name.endswith("sqlite"):
        whole = tmp_path / "whole.sqlite"
        con = sqlite3.connect(whole)
        con.executescript(lzma.decompress((src / "rpmdb.sql.xz").read_bytes()).decode())
        con.commit()
        con.close()
        data, fname = whole.read_bytes(), "rpmdb.sqlite"
    else:
        fname = "Packages.db" if "ndb" in name else "Packages"
        data = (src / fname).read_bytes()
    tree = tmp_path / "g"
    (tree / "var/lib/rpm").mkdir(parents=True)
    (tree / "var/lib/rpm" / fname).write_bytes(data[: int(len(data) * keep)])
    img = scan_tree(tree, OSInfo(type="linux", distro="fedora", package_format="rpm"))
    st = _plugin(img, "os/rpm")
    assert st.status == status, st
    assert len(st.reason) <= REASON_LIMIT and st.reason
    if name.endswith("sqlite"):
        assert "database truncated: 1303 of 2606 pages present" in st.reason
    assert (status == "partial") == bool(img.roots[0].packages)
    (f,) = [f for f in img.roots[0].findings if f.rule_id == BROKEN_DB_RULE]
    assert f.severity == ("medium" if status == "partial" else "high")
    assert img.status == ImageStatus.PARTIAL and exit_code(_doc(img), None) == 2


# ---- a Windows tree whose SOFTWARE hive is damaged --------------------------------------


def _windows_tree(tmp: Path, software: bytes) -> Path:
    config = tmp / "g" / "Windows" / "System32" / "config"
    config.mkdir(parents=True)
    (config / "SOFTWARE").write_bytes(software)
    _write_hive(config / "SYSTEM", system_tree())
    (tmp / "g" / "Users" / "u").mkdir(parents=True)
    (tmp / "g" / "Users" / "u" / "notes.txt").write_text("hello\n")
    return tmp / "g"


def _hive_bytes(tmp: Path) -> bytes:
    return _write_hive(tmp / "whole-SOFTWARE", software_tree())


@pytest.mark.parametrize("kind", ["unopenable", "cut-in-half", "regipy-corrupted"])
def test_damaged_software_hive(tmp_path: Path, kind: str) -> None:
    whole = _hive_bytes(tmp_path)
    if kind == "unopenable":
        data = whole[:4608]
    elif kind == "cut-in-half":
        data = whole[: len(whole) // 2]
    else:
        corrupted = CORPUS / "registry" / "regipy-corrupted_system_hive.xz"
        if not corrupted.is_file():
            pytest.skip(f"{corrupted} not present")
        data = lzma.decompress(corrupted.read_bytes())
    tree = _windows_tree(tmp_path, data)
    win = OSInfo(type="windows", distro="windows", arch="x86_64")
    img = scan_tree(tree, win, ("license", "migration"))
    st = _plugin(img, "os/windows")
    assert st.status in ("failed", "partial")
    assert st.reason.startswith("Windows installation found, its SOFTWARE hive is damaged (")
    assert "inventory incomplete" in st.reason and len(st.reason) <= REASON_LIMIT
    assert img.status == ImageStatus.PARTIAL
    # The rest of the tree is still looked at: the other checks ran.
    assert {p.name for p in img.roots[0].plugins} >= {"os/windows", "license", "migration"}
    assert "migration" in img.roots[0].sections
    assert any(f.rule_id == BROKEN_DB_RULE for f in img.roots[0].findings)


def test_windows_tree_on_a_data_volume_is_inventoried(tmp_path: Path) -> None:
    """Inspection may give up on a tree with a damaged hive (status no_os): the cataloger
    still says what it found there."""
    tree = _windows_tree(tmp_path, _hive_bytes(tmp_path)[:4608])
    img = scan_tree(tree, OSInfo(type="none"))
    assert _plugin(img, "os/windows").reason.startswith("Windows installation found")
    assert img.roots[0].os.type == "none"


# ---- checks ---------------------------------------------------------------------------------


def test_corrupt_advisory_data_makes_the_patch_check_incomplete(tmp_path: Path) -> None:
    """Every file of a copy of the bundled advisory data cut in half: whatever its form
    (OSV files today, a compiled index tomorrow), the patch check may not say "0
    vulnerable" as if it had matched everything."""
    adv = tmp_path / "advisories"
    shutil.copytree(REPO / "signatures" / "advisories", adv)
    for p in adv.rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    tree = _dpkg_tree(tmp_path / "g", GOOD_STATUS.encode())
    img = scan_tree(tree, DEBIAN, ("patch",), advisories_dir=str(adv))
    st = _plugin(img, "patch")
    assert st.status in ("partial", "failed") and st.reason
    assert img.status == ImageStatus.PARTIAL and exit_code(_doc(img), None) == 2
    # The same tree with the intact data: complete.
    good = scan_tree(tree, DEBIAN, ("patch",))
    assert _plugin(good, "patch").status == "succeeded" and good.status == ImageStatus.OK


class _FaultyDiskFS(HostDirFS):
    """A host tree whose package database cannot be read: the read raises what a broken
    disk or a bug would (an error vmscan does not expect), not a VmscanError."""

    def __init__(self, root: Path, bad: str, exc: Exception) -> None:
        super().__init__(root)
        self._bad, self._exc = bad, exc

    def read_bytes(self, path: str, limit: int = 16 * 1024 * 1024) -> bytes:
        if path == self._bad:
            raise self._exc
        return super().read_bytes(path, limit)


@pytest.mark.parametrize(
    "exc", [OSError(5, "Input/output error"), ValueError("parser bug")], ids=repr
)
def test_a_cataloger_that_raises_fails_and_the_image_is_partial(
    tmp_path: Path, exc: Exception
) -> None:
    """The dpkg cataloger raising mid-read: it is ``failed`` with the reason, the patch
    check does not report "0 vulnerable" for the root, the image is partial, exit 2."""
    tree = _dpkg_tree(tmp_path / "g", GOOD_STATUS.encode())
    fs = _FaultyDiskFS(tree, "/var/lib/dpkg/status", exc)
    img = scan_tree(tree, DEBIAN, ("patch",), fs=fs)
    dpkg = _plugin(img, "os/dpkg")
    assert dpkg.status == "failed" and str(exc.args[-1]) in dpkg.reason
    assert _plugin(img, "patch").status in ("partial", "failed")
    assert img.status == ImageStatus.PARTIAL and exit_code(_doc(img), None) == 2
    assert any("dpkg" in e for e in img.errors)


def test_dead_clamd_address_counts_every_file_as_not_scanned(tmp_path: Path) -> None:
    tree = _dpkg_tree(tmp_path / "g", GOOD_STATUS.encode())
    for i in range(150):
        (tree / "srv" / f"{i:03d}.dat").parent.mkdir(exist_ok=True)
        (tree / "srv" / f"{i:03d}.dat").write_bytes(os.urandom(100))
    img = scan_tree(tree, DEBIAN, ("antivirus",), clamd=DEAD_CLAMD)
    files = len(_manifest(tree))
    st = _plugin(img, "antivirus")
    assert st.status == "failed" and DEAD_CLAMD in st.reason
    for sec in (img.sections["antivirus"], img.roots[0].sections["antivirus"]):
        assert sec["status"] == "incomplete"
        assert sec["incomplete_reasons"] == ["engine_unavailable"]
        assert sec["files_total"] == files and sec["files_scanned"] == 0
        assert sec["not_scanned"]["counts"] == {"engine_unavailable": files}
        assert len(sec["not_scanned"]["paths"]) + sec["not_scanned"]["more"] == files
        assert sec["detail"].startswith("engine unavailable: ")
    assert img.status == ImageStatus.PARTIAL and exit_code(_doc(img), None) == 2


def test_managed_clamd_killed_mid_scan_leaves_the_image_partial(tmp_path: Path) -> None:
    """A real clamd, SIGKILLed in the middle of the scan: vmscan restarts it and goes on,
    every file is accounted for, and the image still says the scan was disturbed."""
    from test_av_clamd import LIMITS, KillingFS, _many_files, pid_of

    from vmscan.av.clamd_client import ClamdUnavailable
    from vmscan.av.clamd_manager import ManagedClamd

    tree = tmp_path / "g"
    eicar = _many_files(tree, 120)
    try:
        clamd = ManagedClamd(system_db_dir=None, limits=LIMITS)
        clamd.__enter__()
    except ClamdUnavailable as e:
        pytest.skip(f"clamd unavailable: {e}")
    try:
        fs = KillingFS(tree, pid_of(clamd), after=50)
        img = scan_tree(
            tree,
            DEBIAN,
            ("antivirus",),
            fs=fs,
            clamd=clamd.address,
            clamd_descriptor=clamd.descriptor,
        )
    finally:
        clamd.__exit__(None, None, None)
    sec = img.sections["antivirus"]
    assert sec["status"] == "incomplete" and "clamd_died" in sec["incomplete_reasons"]
    assert sec["clamd"]["restarts"] >= 1
    files = len(_manifest(tree))
    not_scanned = sum(sec["not_scanned"]["counts"].values())
    assert sec["files_total"] == files
    assert sec["files_scanned"] + sec["files_hash_matched"] + not_scanned == files
    found = {f.target for f in img.roots[0].findings}
    assert eicar <= found | {p["path"] for p in sec["not_scanned"]["paths"]}
    assert _plugin(img, "antivirus").status == "partial"
    assert img.status == ImageStatus.PARTIAL and exit_code(_doc(img), None) == 2


def test_a_root_that_was_not_mounted_ran_nothing(tmp_path: Path) -> None:
    root = RootResult(device="/dev/vg0/root", os=DEBIAN, mountpoints={"/": "/dev/vg0/root"})
    img = ImageResult(
        source="/img/x.qcow2",
        filesystems=[Filesystem("/dev/vg0/root", "ext4", error="bad superblock")],
        roots=[root],
    )
    finalize_image(img, ("antivirus", "patch"))
    assert {p.name: p.status for p in root.plugins} == {
        "inventory": "failed",
        "antivirus": "failed",
        "patch": "failed",
    }
    assert img.sections["antivirus"]["status"] == "incomplete"
    assert img.status == ImageStatus.PARTIAL and exit_code(_doc(img), None) == 2


# ---- every writer shows it ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three images: a dead clamd, a garbage dpkg database, and one that is fine."""
    tmp = tmp_path_factory.mktemp("mixed")
    dead = scan_tree(
        _dpkg_tree(tmp / "a", GOOD_STATUS.encode()),
        DEBIAN,
        ("antivirus",),
        "/img/dead-clamd.qcow2",
        clamd=DEAD_CLAMD,
    )
    garbage = scan_tree(
        _dpkg_tree(tmp / "b", os.urandom(200_000)), DEBIAN, (), "/img/garbage.qcow2"
    )
    fine = scan_tree(_dpkg_tree(tmp / "c", GOOD_STATUS.encode()), DEBIAN, (), "/img/fine.qcow2")
    return _doc(dead, garbage, fine)


def test_incomplete_plugins_of_the_mixed_run(mixed_doc: dict[str, Any]) -> None:
    got = [[(i.plugin, i.status) for i in incomplete_plugins(img)] for img in mixed_doc["images"]]
    assert got == [[("antivirus", "failed")], [("os/dpkg", "failed")], []]
    assert [img["status"] for img in mixed_doc["images"]] == ["partial", "partial", "ok"]


def test_html_banner_per_image(mixed_doc: dict[str, Any]) -> None:
    html = render_html(mixed_doc)
    head, _, _rest = html.partition('<section id="fleet-overview">')
    assert head.count('<div class="banner" role="alert"') == 2
    assert 'data-source="/img/dead-clamd.qcow2"' in head and "<b>antivirus</b>" in head
    assert 'data-source="/img/garbage.qcow2"' in head and "<b>os/dpkg</b>" in head
    assert "fine.qcow2" not in head


def test_sarif_notifications(mixed_doc: dict[str, Any]) -> None:
    log = to_sarif(mixed_doc)
    if SARIF_SCHEMA.is_file():
        jsonschema.validate(log, json.loads(SARIF_SCHEMA.read_text()))
    inv = log["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False
    notes = [n for n in inv["toolExecutionNotifications"] if n.get("descriptor")]
    assert [(n["level"], n["properties"]["image"], n["properties"]["check"]) for n in notes] == [
        ("error", "/img/dead-clamd.qcow2", "antivirus"),
        ("error", "/img/garbage.qcow2", "os/dpkg"),
    ]
    assert all(n["descriptor"]["id"] == INCOMPLETE_RULE for n in notes)
    texts = [n["message"]["text"] for n in inv["toolExecutionNotifications"]]
    assert len(texts) == len(set(texts))  # the derived errors[] lines are not said twice
    # The broken database is a result too (an inventory finding).
    assert any(r["ruleId"] == BROKEN_DB_RULE for r in log["runs"][0]["results"])


def test_junit_error_case(mixed_doc: dict[str, Any]) -> None:
    top = build_junit(mixed_doc)
    by_suite = {s.get("name"): s for s in top.iter("testsuite")}
    for source, plugin in (
        ("/img/dead-clamd.qcow2", "antivirus"),
        ("/img/garbage.qcow2", "os/dpkg"),
    ):
        suite = by_suite[source]
        (case,) = [c for c in suite.iter("testcase") if c.get("name") == f"{plugin} completed"]
        err = case.find("error")
        assert err is not None and err.get("type") == "check-failed"
        assert int(suite.get("errors") or 0) >= 1
    assert not [c for c in by_suite["/img/fine.qcow2"].iter("testcase") if c.find("error")]
    ET.fromstring(ET.tostring(top))  # well-formed


def test_csv_row(mixed_doc: dict[str, Any]) -> None:
    rows = [r for r in finding_rows(mixed_doc) if r[3] == INCOMPLETE_RULE]
    assert [(r[0], r[2]) for r in rows] == [
        ("/img/dead-clamd.qcow2", "antivirus"),
        ("/img/garbage.qcow2", "os/dpkg"),
    ]
    assert json.loads(rows[0][7])["status"] == "failed"


def test_exit_code_of_the_mixed_run(mixed_doc: dict[str, Any]) -> None:
    assert exit_code(mixed_doc, "critical") == 2
    fine = {**mixed_doc, "images": mixed_doc["images"][2:]}
    assert exit_code(fine, None) == 0


# ---- the nightly retries, and counts it ------------------------------------------------


def test_nightly_retries_an_image_whose_check_failed(tmp_path: Path) -> None:
    for i in range(2):
        write_guest(tmp_path / "imgs" / f"vm{i}.img", hostname=f"vm{i}", packages=[["bash", "5"]])
    cfg = load_config(write_config(tmp_path, str(tmp_path / "imgs" / "*.img")))
    first = FakeScanner(failing=("antivirus",))
    out = run_nightly(cfg, scan_fn=first, metrics_path=tmp_path / "m.prom")
    assert out.exit_code == 2 and out.images_incomplete == 2
    assert out.checks_incomplete == {"antivirus": 2}
    metrics = (tmp_path / "m.prom").read_text()
    assert 'vmscan_nightly_checks_incomplete{check="antivirus"} 2' in metrics
    assert 'vmscan_nightly_checks_incomplete{check="patch"} 0' in metrics
    assert "vmscan_nightly_images_incomplete 2" in metrics
    report = json.loads((cfg.reports_dir / "latest" / "report.json").read_text())
    assert {i["status"] for i in report["images"]} == {"partial"}
    html = (cfg.reports_dir / "latest" / "report.html").read_text()
    assert html.count('<div class="banner" role="alert"') == 2
    # Next night, same images: both are opened again, nothing carried forward.
    plan = dry_run(cfg)
    assert [(p.action, p.reason) for p in plan] == [
        (
            "scan",
            f"the scan of run {out.run_id} did not complete (or the image changed under "
            "it): retried",
        )
    ] * 2
    second = FakeScanner()
    out2 = run_nightly(cfg, scan_fn=second)
    assert sorted(second.opened) == sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    assert out2.skipped == 0 and out2.exit_code == 0
    # Complete now: the night after carries them forward.
    third = FakeScanner()
    assert run_nightly(cfg, scan_fn=third).skipped == 2 and third.opened == []
    assert "vmscan_nightly_checks_incomplete" in format_metrics(out2)


def test_every_registered_plugin_reports_on_every_root(tmp_path: Path) -> None:
    """Not applicable and not selected are ``skipped`` with the reason, each with its
    VERSION; a skipped plugin never makes the image incomplete."""
    from vmscan.registry import all_catalogers, all_checks

    tree = _dpkg_tree(tmp_path / "g", GOOD_STATUS.encode())
    img = scan_tree(tree, DEBIAN, ("patch",))
    by_name = {p.name: p for p in img.roots[0].plugins}
    assert set(by_name) == {c.NAME for c in (*all_catalogers(), *all_checks())}
    assert by_name["os/dpkg"].status == "succeeded" and by_name["patch"].status == "succeeded"
    assert by_name["antivirus"].status == "skipped"
    assert by_name["antivirus"].reason == "not selected (--checks)"
    others = [c.NAME for c in all_catalogers() if c.NAME != "os/dpkg"]
    assert others and all(by_name[n].status == "skipped" for n in others)
    assert all("not applicable" in by_name[n].reason for n in others)
    assert all(p.version for p in img.roots[0].plugins)
    assert img.status == ImageStatus.OK and exit_code(_doc(img), None) == 0
