"""The antivirus check against a real clamd: HostDirFS trees and one small libguestfs guest.

clamd loads only vmscan's own signatures here (no freshclam databases: no network), so it
starts in a fraction of a second. The EICAR string is built from two halves so that no
file of the repository holds it whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmscan.av.clamd_client import ClamdClient, ClamdUnavailable, Verdict
from vmscan.av.clamd_manager import ClamdLimits, ManagedClamd, clamd_threads
from vmscan.av.signatures import DEFAULT_SIG_DIR, TEST_MARKER
from vmscan.checks.antivirus import AntivirusCheck
from vmscan.guestfs_view import GuestFS, HostDirFS
from vmscan.model import FileEntry, Finding, ImageResult, OSInfo, RootResult
from vmscan.pathenc import encode_path
from vmscan.plugins import ScanContext, prefetch

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
MiB = 1024 * 1024
#: Small limits so that "too large" needs only a few MiB of test data.
LIMITS = ClamdLimits(
    stream_max_length=3 * MiB, max_file_size=2 * MiB, max_scan_size=4 * MiB, max_files=50
)
BIG_SHA = "f" * 64
PUTTY = (
    Path(__file__).resolve().parents[2] / "shared" / "corpus" / "pe" / "putty.exe"
)  # manifest digest for files too big to hash in a unit test


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def managed(clamd: ManagedClamd) -> dict[str, Any]:
    """Options naming vmscan's own clamd: its address and its descriptor, in memory."""
    return {"clamd": clamd.address, "clamd_descriptor": clamd.descriptor}


def pid_of(clamd: ManagedClamd) -> int:
    pid = clamd.pid
    assert pid is not None
    return pid


@pytest.fixture(scope="session")
def clamd() -> Iterator[ManagedClamd]:
    try:
        with ManagedClamd(DEFAULT_SIG_DIR, system_db_dir=None, limits=LIMITS) as c:
            yield c
    except ClamdUnavailable as e:
        pytest.skip(f"clamd unavailable: {e}")


def make_tree(root: Path) -> dict[str, bytes]:
    """A guest-like tree with every awkward case; returns {escaped path: role}."""
    roles: dict[str, bytes] = {}

    def put(rel: bytes, data: bytes, role: bytes = b"") -> None:
        p = os.path.join(bytes(root), rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(data)
        if role:
            roles["/" + encode_path(rel)] = role

    put(b"etc/hostname", b"guest\n")
    put(b"usr/lib/x86_64-linux-gnu/libfoo.so.3", EICAR, b"eicar-hash")
    put(b"var/cache/app/blob.bin", EICAR + b" trailing", b"eicar-body")
    put(b"srv/data/report.dat", zipped("inner.txt", EICAR + b" zipped"), b"eicar-zip")
    put(b"home/u/caf\xe9-\xff.dat", EICAR + b"  non-utf8", b"eicar-nonutf8")
    put(b"opt/m.txt", b"x " + TEST_MARKER + b" y", b"marker")
    put(b"opt/l.txt", b"VMSCAN-TEST-LDB-PART-B ... VMSCAN-TEST-LDB-PART-A", b"logical")
    put(b"opt/empty", b"", b"empty")
    put(b"opt/bin/tool", b"\x7fELF\x02\x01\x01" + b"\0" * 200, b"elf")
    put(b"opt/bin/run.sh", b"#!/bin/sh\n# " + TEST_MARKER + b"\n", b"script-marker")
    put(b"opt/bomb.zip", zipped("zeros", b"\0" * (8 * MiB)), b"bomb")
    put(b"opt/big.bin", os.urandom(3 * MiB), b"big")
    put(b"opt/dup-a", b"same content", b"dup")
    put(b"opt/dup-b", b"same content", b"dup")
    deep = b"/".join([b"d%02d" % i for i in range(60)])
    put(deep + b"/deep.bin", EICAR + b" deep", b"eicar-deep")
    sparse = root / "opt" / "sparse.img"
    with open(sparse, "wb") as fh:
        fh.truncate(2 * 1024 * MiB)
    roles["/opt/sparse.img"] = b"sparse"
    os.symlink("loop", root / "opt" / "loop")
    os.symlink("../opt", root / "opt" / "up")
    return roles


def manifest_of(root: Path, device: str = "/dev/sda1") -> list[FileEntry]:
    out = []
    for d, _dirs, files in os.walk(bytes(root)):
        for f in files:
            p = os.path.join(d, f)
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_size > 64 * MiB:
                sha = BIG_SHA
            else:
                with open(p, "rb") as fh:
                    sha = hashlib.sha256(fh.read()).hexdigest()
            rel = os.path.relpath(p, bytes(root))
            out.append(
                FileEntry(
                    device,
                    "/" + encode_path(rel),
                    st.st_size,
                    st.st_mode,
                    0,
                    0,
                    int(st.st_mtime),
                    sha,
                )
            )
    return sorted(out, key=lambda e: e.path)


def run_check(
    fs: GuestFS,
    manifest: list[FileEntry],
    options: dict[str, Any],
    handle: Any = None,
    image: ImageResult | None = None,
    device: str = "/dev/sda1",
) -> tuple[list[Finding], dict[str, Any], ScanContext]:
    image = image or ImageResult(source="test")
    root = RootResult(device=device, os=OSInfo())
    ctx = ScanContext(root=root, manifest=manifest, options=options, image=image)
    check = AntivirusCheck()
    if handle is not None:
        # The scanner's way: the root's one stream first, then the check.
        prefetch(handle, fs, ctx, [check])
    findings = check.run(fs, ctx)
    return findings, image.sections["antivirus"], ctx


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("guest")
    return root, make_tree(root)


# ---- clamd itself ---------------------------------------------------------------------------


def test_managed_clamd_is_private(clamd: ManagedClamd) -> None:
    assert clamd.address.startswith("unix:/")
    assert clamd.version.startswith("ClamAV ")
    assert clamd.runtime_dir is not None
    conf = (clamd.runtime_dir / "clamd.conf").read_text()
    for line in (
        "StreamMaxLength 3145728",
        "MaxFileSize 2097152",
        "MaxScanSize 4194304",
        "MaxFiles 50",
        "MaxRecursion 17",
        "AlertExceedsMax yes",
        "Foreground yes",
    ):
        assert line in conf.splitlines()
    assert sorted(p.name for p in (clamd.runtime_dir / "db").iterdir()) == [
        "vmscan.hsb",
        "vmscan.ldb",
        "vmscan.ndb",
    ]
    desc = clamd.descriptor
    assert desc.address == clamd.address and desc.database_digest == clamd.database_digest
    assert desc.limits == LIMITS and desc.owner_pid == os.getpid()
    # Nothing on disk describes this clamd for others to trust (issue 11: no marker file).
    assert not list(clamd.runtime_dir.glob("*.json"))
    assert ClamdClient(clamd.address).ping()


def test_max_threads_from_jobs_and_streams(tmp_path: Path) -> None:
    assert clamd_threads(jobs=2, streams=4, cores=16) == 8
    assert clamd_threads(jobs=8, streams=4, cores=2) == 2
    assert clamd_threads(jobs=1, streams=1, cores=8) == 2  # a PING never waits behind a stream
    with ManagedClamd(system_db_dir=None, limits=LIMITS, threads=3) as c:
        assert c.runtime_dir is not None
        assert "MaxThreads 3" in (c.runtime_dir / "clamd.conf").read_text().splitlines()


@pytest.mark.parametrize(
    ("data", "verdict", "sig"),
    [
        (EICAR, Verdict.FOUND, "Vmscan.Test.EICAR.UNOFFICIAL"),
        (zipped("a/b/c.txt", EICAR), Verdict.FOUND, "Vmscan.Test.EICAR.UNOFFICIAL"),
        (b"..." + TEST_MARKER + b"...", Verdict.FOUND, "Vmscan.Test.Marker-7d1c0b5e.UNOFFICIAL"),
        (b"hello", Verdict.CLEAN, ""),
        (b"", Verdict.CLEAN, ""),
        # A stored (incompressible) member over MaxFileSize: AlertExceedsMax says so.
        (zipped("r", os.urandom(5 * MiB // 2)), Verdict.TOO_LARGE, None),
        # A deflated member over MaxFileSize is trimmed and scanned in part, and clamd
        # says OK: why vmscan checks archive directories itself (vmscan.av.archive_limits).
        (zipped("zeros", b"\0" * (8 * MiB)), Verdict.CLEAN, ""),
    ],
)
def test_instream_verdicts(
    clamd: ManagedClamd, data: bytes, verdict: Verdict, sig: str | None
) -> None:
    reply = ClamdClient(clamd.address).scan_bytes(data)
    assert reply.verdict is verdict, reply
    if sig is not None:
        assert reply.signature == sig
    else:
        assert reply.signature.startswith("Heuristics.Limits.Exceeded")


def test_stream_over_limit_is_too_large(clamd: ManagedClamd) -> None:
    reply = ClamdClient(clamd.address).scan_bytes(b"a" * (4 * MiB))
    assert reply.verdict is Verdict.TOO_LARGE


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClamdUnavailable, match="clamd was not found"):
        ManagedClamd(clamd_binary=str(tmp_path / "no-clamd")).start()


def test_clamd_that_will_not_start(tmp_path: Path) -> None:
    sig = tmp_path / "sigs"
    sig.mkdir()
    (sig / "broken.ndb").write_text("Broken.Sig:0:*:41424x4344454647\n")
    m = ManagedClamd(sig, system_db_dir=None, start_timeout=60)
    with pytest.raises(ClamdUnavailable, match="clamd exited"):
        m.start()
    assert m.runtime_dir is None  # cleaned up


def _wait_for(cond: Any, seconds: float = 60.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_owner_restarts_clamd_after_kill() -> None:
    with ManagedClamd(system_db_dir=None, limits=LIMITS) as c:
        first = pid_of(c)
        os.kill(first, signal.SIGKILL)
        # The owner's supervisor notices and starts a new clamd at the same address.
        assert _wait_for(lambda: c.restarts == 1 and ClamdClient(c.address).ping())
        assert c.pid != first
        second = pid_of(c)
        c.restart()  # clamd answers: an explicit restart changes nothing
        assert pid_of(c) == second
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


def test_restart_after_kill_unsupervised() -> None:
    with ManagedClamd(system_db_dir=None, limits=LIMITS, supervise=False) as c:
        first = pid_of(c)
        os.kill(first, signal.SIGKILL)
        assert _wait_for(lambda: not ClamdClient(c.address, connect_timeout=1).ping())
        assert c.descriptor.restart_wait == 0  # no supervisor: clients do not wait for one
        c.restart()
        assert ClamdClient(c.address).ping()
        assert pid_of(c) != first
        second = pid_of(c)
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


_OWNER_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
from vmscan.av.clamd_manager import ManagedClamd, ClamdLimits
c = ManagedClamd(system_db_dir=None, limits=ClamdLimits(stream_max_length=3 << 20))
c.start()
print(c.pid, c.runtime_dir, flush=True)
time.sleep(600)
"""


def test_clamd_dies_with_its_owner_on_sigkill() -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed owner (no cleanup code runs) takes clamd with it."""
    import sys

    repo = str(Path(__file__).resolve().parent.parent)
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT.format(repo=repo)], stdout=subprocess.PIPE
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().decode()
        pid = int(line.split()[0])
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/sbin/clamd") or (
            b"clamd" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        owner.kill()
        owner.wait(10)

        def gone() -> bool:
            try:
                return b"clamd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return True

        assert _wait_for(gone, 10), "clamd outlived its SIGKILLed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    # Its folder is left (no code of the owner ran): the run's janitor removes it in a
    # real run (tests/test_hostile_kill.py); remove it here.
    import shutil

    shutil.rmtree(line.split()[1], ignore_errors=True)


def test_check_without_clamd_raises() -> None:
    ctx = ScanContext(
        root=RootResult(device="/dev/sda1", os=OSInfo()),
        manifest=[],
        options={"clamd": None, "clamd_error": "clamd exited with code 1"},
    )
    with pytest.raises(ClamdUnavailable, match="exited"):
        AntivirusCheck().run(HostDirFS("/nonexistent"), ctx)


# ---- the check over a host folder ----------------------------------------------------------


def _by_role(roles: dict[str, bytes], role: bytes) -> list[str]:
    return sorted(p for p, r in roles.items() if r == role)


def test_check_over_host_tree(
    clamd: ManagedClamd, tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, roles = tree
    manifest = manifest_of(root)
    opts = {**managed(clamd), "state_db": str(tmp_path / "state.db")}
    findings, sec, ctx = run_check(HostDirFS(root), manifest, opts)
    found = {f.target: f for f in findings}
    for role in (b"eicar-hash", b"eicar-body", b"eicar-zip", b"eicar-nonutf8", b"eicar-deep"):
        for path in _by_role(roles, role):
            assert found[path].rule_id == "Vmscan.Test.EICAR", (role, path)
    assert "/home/u/caf\\xe9-\\xff.dat" in found
    assert found[_by_role(roles, b"marker")[0]].rule_id == "Vmscan.Test.Marker-7d1c0b5e"
    assert found[_by_role(roles, b"logical")[0]].rule_id == "Vmscan.Test.Logical-7d1c0b5e"
    f = found["/usr/lib/x86_64-linux-gnu/libfoo.so.3"]
    entry = next(e for e in manifest if e.path == f.target)
    assert f.check == "antivirus" and f.severity == "critical"
    assert f.details == {
        "path": entry.path,
        "sha256": entry.sha256,
        "size": entry.size,
        "mtime": entry.mtime,
        "detected_by": "hash",
    }
    assert len(f.fingerprint) == 32
    assert found["/var/cache/app/blob.bin"].details["detected_by"] == "clamd"

    ns = {p["path"]: p["reason"] for p in sec["not_scanned"]["paths"]}
    assert ns == {
        "/opt/big.bin": "too_large",
        "/opt/bomb.zip": "too_large",
        "/opt/sparse.img": "too_large",
    }
    assert sec["not_scanned"]["counts"] == {"too_large": 3}
    assert sec["status"] == "incomplete" and sec["incomplete_reasons"] == ["too_large"]
    assert sec["files_total"] == len(manifest)
    assert sec["files_hash_matched"] == 1
    # Every file has exactly one fate; the two identical files are streamed once; the zip
    # bomb is streamed (clamd says OK) but vmscan's archive check makes it too_large.
    assert sec["files_scanned"] + sec["files_hash_matched"] + 3 == len(manifest)
    assert sec["files_streamed"] == len(manifest) - 2 - 1 - 1
    assert sec["bytes_streamed"] > 0
    assert sec["engine"] == clamd.version and sec["database_digest"] == clamd.database_digest
    assert ctx.root.sections["antivirus"]["files_total"] == len(manifest)

    # Same content, same databases: nothing is streamed again, same detections.
    findings2, sec2, _ = run_check(HostDirFS(root), manifest, opts)
    assert sec2["bytes_streamed"] == 0 and sec2["files_streamed"] == 0
    assert sec2["files_from_cache"] == sec["files_scanned"] + 1  # + the bomb (too_large)
    assert [(x.target, x.rule_id, x.fingerprint) for x in findings2] == [
        (x.target, x.rule_id, x.fingerprint) for x in findings
    ]
    assert sec2["not_scanned"] == sec["not_scanned"]


def test_scope_executables(
    clamd: ManagedClamd, tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, _roles = tree
    manifest = manifest_of(root)
    opts = {**managed(clamd), "state_db": str(tmp_path / "s.db"), "av_scope": "executables"}
    findings, sec, _ = run_check(HostDirFS(root), manifest, opts)
    targets = {f.target for f in findings}
    # Hash hits need no content: always reported. A marker in a shell script is in scope;
    # the same marker in a text file and EICAR in a zip are not.
    assert "/usr/lib/x86_64-linux-gnu/libfoo.so.3" in targets
    assert "/opt/bin/run.sh" in targets
    assert "/opt/m.txt" not in targets and "/srv/data/report.dat" not in targets
    assert sec["scope"] == "executables"
    assert sec["files_out_of_scope"] > 0
    assert sec["files_streamed"] == 2  # the ELF and the script
    # The kinds are remembered: a second run needs no read at all.
    _, sec2, _ = run_check(HostDirFS(root), manifest, opts)
    assert sec2["bytes_read"] == 0 and sec2["files_out_of_scope"] == sec["files_out_of_scope"]


class KillingFS(HostDirFS):
    """Kills clamd just before the n-th file is read (a crash in the middle of a scan)."""

    def __init__(self, root: Path, pid: int, after: int) -> None:
        super().__init__(root)
        self.pid, self.after, self.reads = pid, after, 0

    def read_bytes(self, path: str, limit: int = 1 << 24) -> bytes:
        self.reads += 1
        if self.reads == self.after:
            os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        return super().read_bytes(path, limit)


def _many_files(root: Path, n: int) -> set[str]:
    eicar = set()
    for i in range(n):
        name = f"f/{i:04d}.dat"
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if i % 5 == 0:
            p.write_bytes(zipped("x", EICAR + str(i).encode()))
            eicar.add("/" + name)
        else:
            p.write_bytes(os.urandom(2000))
    return eicar


def _never_clean_unless_scanned(
    findings: list[Finding], sec: dict[str, Any], eicar: set[str]
) -> None:
    found = {f.target for f in findings}
    not_scanned = {p["path"] for p in sec["not_scanned"]["paths"]}
    assert sec["not_scanned"]["more"] == 0
    assert eicar <= found | not_scanned


def test_clamd_killed_mid_scan_managed(tmp_path: Path) -> None:
    root = tmp_path / "g"
    eicar = _many_files(root, 150)
    manifest = manifest_of(root)
    with ManagedClamd(system_db_dir=None, limits=LIMITS) as c:
        fs = KillingFS(root, pid_of(c), after=60)
        opts = {
            "clamd": c.address,
            "clamd_descriptor": c.descriptor,
            "state_db": str(tmp_path / "s.db"),
        }
        findings, sec, _ = run_check(fs, manifest, opts)
        assert sec["clamd"]["restarts"] >= 1
        assert ClamdClient(c.address).ping()
    assert sec["status"] == "incomplete" and "clamd_died" in sec["incomplete_reasons"]
    _never_clean_unless_scanned(findings, sec, eicar)


def test_clamd_killed_mid_scan_external(tmp_path: Path) -> None:
    root = tmp_path / "g"
    eicar = _many_files(root, 100)
    manifest = manifest_of(root)
    with ManagedClamd(system_db_dir=None, limits=LIMITS, supervise=False) as c:
        # Reached through a link elsewhere, clamd is "external": vmscan may not restart it.
        ext = tmp_path / "ext"
        ext.mkdir()
        assert c.runtime_dir is not None
        os.symlink(c.runtime_dir / "clamd.sock", ext / "clamd.sock")
        fs = KillingFS(root, pid_of(c), after=40)
        opts = {"clamd": f"unix:{ext}/clamd.sock", "state_db": str(tmp_path / "s.db")}
        findings, sec, _ = run_check(fs, manifest, opts)
        assert sec["clamd"] == {"mode": "external", "address": opts["clamd"], "restarts": 0}
        assert sec["status"] == "incomplete"
        assert sec["not_scanned"]["counts"]["scan_error"] >= 100 - 40 - 8
        _never_clean_unless_scanned(findings, sec, eicar)
        # Nothing unscanned was cached: with clamd back, exactly those files are streamed.
        c.restart()
        findings2, sec2, _ = run_check(HostDirFS(root), manifest, opts)
        assert sec2["status"] == "complete"
        assert sec2["files_streamed"] == sec["not_scanned"]["counts"]["scan_error"]
        assert {f.target for f in findings2} == eicar


# ---- one small libguestfs guest ------------------------------------------------------------


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, list[str]]]:
    """ext4 (made with mke2fs -d, no mount) and NTFS (mkntfs + ntfscp) disks, one appliance."""
    guestfs = pytest.importorskip("guestfs")
    work = tmp_path_factory.mktemp("img")
    tree = work / "tree"
    tree.mkdir()
    for rel, data in [
        (b"etc/hostname", b"deb\n"),
        (b"usr/share/doc/readme.gz", EICAR + b"\n"),
        (b"var/lib/misc/state.bin", EICAR + b" body"),
        (b"srv/archive.dat", zipped("inner.bin", EICAR)),
        (b"home/u/na\xefve-\xff.txt", EICAR + b" latin1 name"),
        (b"opt/big.bin", os.urandom(3 * MiB)),
        (b"opt/w*ld[1]?.txt", b"clean but awkward"),
        (b"opt/empty", b""),
        *([(b"opt/win/putty.exe", PUTTY.read_bytes())] if PUTTY.is_file() else []),
    ]:
        p = os.path.join(bytes(tree), rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(data)
    for tool in ("mke2fs", "mkntfs", "ntfscp"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            pytest.skip(f"{tool} not installed")
    ext4 = work / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(ext4), "32M"], check=True)
    ntfs = work / "ntfs.img"
    with open(ntfs, "wb") as fh:
        fh.truncate(16 * MiB)
    subprocess.run(["mkntfs", "-q", "-F", "-Q", str(ntfs)], check=True, capture_output=True)
    (work / "report.pdf").write_bytes(EICAR + b"  ntfs")
    subprocess.run(
        ["ntfscp", "-q", str(ntfs), str(work / "report.pdf"), "/Report 2024.pdf"],
        check=True,
        capture_output=True,
    )
    g = guestfs.GuestFS(python_return_dict=True)
    for img in (ext4, ntfs):
        g.add_drive_opts(str(img), format="raw", readonly=1)
    g.launch()
    try:
        yield g, tree, ["/dev/sda", "/dev/sdb"]
    finally:
        g.close()


def _mounted(g: Any, dev: str) -> list[FileEntry]:
    from vmscan.manifest import build_manifest

    g.umount_all()
    g.mount_ro(dev, "/")
    entries, problems = build_manifest(g, [("/", dev)])
    assert problems == []
    return entries


@pytest.mark.guest
def test_guest_ext4(
    clamd: ManagedClamd,
    guest: tuple[Any, Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vmscan.guestfs_view import LibguestfsFS

    g, _tree, devs = guest
    manifest = _mounted(g, devs[0])
    opts = {**managed(clamd), "state_db": str(tmp_path / "s.db")}
    findings, sec, ctx = run_check(LibguestfsFS(g), manifest, opts, handle=g, device=devs[0])
    found = {f.target: f for f in findings}
    assert set(found) == {
        "/usr/share/doc/readme.gz",
        "/var/lib/misc/state.bin",
        "/srv/archive.dat",
        "/home/u/na\\xefve-\\xff.txt",
    }
    for f in found.values():
        e = next(x for x in manifest if x.path == f.target)
        assert f.rule_id == "Vmscan.Test.EICAR" and f.details["sha256"] == e.sha256
    assert sec["transfer"]["method"] == "tar_out"
    assert {p["path"]: p["reason"] for p in sec["not_scanned"]["paths"]} == {
        "/opt/big.bin": "too_large"
    }
    assert sec["status"] == "incomplete"
    findings2, sec2, ctx2 = run_check(LibguestfsFS(g), manifest, opts, handle=g, device=devs[0])
    assert sec2["bytes_streamed"] == 0
    assert [f.fingerprint for f in findings2] == [f.fingerprint for f in findings]
    if PUTTY.is_file():
        # PE facts: from the stream on the first run, from the cache on the second.
        for c in (ctx, ctx2):
            (row,) = c.root.sections["pe"]
            assert row["path"] == "/opt/win/putty.exe" and row["machine"] == "AMD64"


@pytest.mark.guest
def test_guest_ntfs(clamd: ManagedClamd, guest: tuple[Any, Path, list[str]]) -> None:
    from vmscan.guestfs_view import LibguestfsFS

    g, _tree, devs = guest
    manifest = _mounted(g, devs[1])
    findings, sec, _ = run_check(
        LibguestfsFS(g), manifest, managed(clamd), handle=g, device=devs[1]
    )
    assert [(f.target, f.rule_id) for f in findings] == [("/Report 2024.pdf", "Vmscan.Test.EICAR")]
    assert sec["status"] == "complete"


def test_large_members_are_streamed_while_read(
    clamd: ManagedClamd, tree: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contents over the in-memory threshold go through the piecewise path: same verdicts."""
    from vmscan.av import engine

    root, _roles = tree
    manifest = manifest_of(root)
    ref, ref_sec, _ = run_check(HostDirFS(root), manifest, managed(clamd))
    monkeypatch.setattr(engine, "BUFFER_MAX", 64)
    got, sec, _ = run_check(HostDirFS(root), manifest, managed(clamd))
    assert [(f.target, f.rule_id) for f in got] == [(f.target, f.rule_id) for f in ref]
    assert sec["not_scanned"] == ref_sec["not_scanned"]
    assert sec["bytes_streamed"] == ref_sec["bytes_streamed"]


def _kill_and_wait(desc: Any, pid: int) -> bool:
    """In a worker process: clamd dies; the worker only waits for the owner to restart it."""
    from vmscan.av.engine import ClamdLink

    os.kill(pid, signal.SIGKILL)
    link = ClamdLink(
        ClamdClient(desc.address, connect_timeout=1), managed=True, restart_wait=desc.restart_wait
    )
    return link.recover() and link.restarts == 1


def test_worker_waits_and_owner_restarts_and_stops() -> None:
    import multiprocessing

    with ManagedClamd(system_db_dir=None, limits=LIMITS) as c:
        first = pid_of(c)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(_kill_and_wait, (c.descriptor, first))
        assert ClamdClient(c.address).ping()
        second = pid_of(c)
        assert second != first and c.restarts == 1
    # The owner stopped the clamd it restarted.
    assert (
        not Path(f"/proc/{second}/cmdline").exists()
        or not Path(f"/proc/{second}/cmdline").read_bytes()
    )


def test_marker_beside_external_socket_is_never_executed(tmp_path: Path) -> None:
    """A vmscan-clamd.json beside a --clamd socket naming a 'binary' is ignored (issue 11)."""
    root = tmp_path / "g"
    eicar = _many_files(root, 30)
    manifest = manifest_of(root)
    pwned = tmp_path / "pwned"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {pwned}\n")
    evil.chmod(0o755)
    with ManagedClamd(system_db_dir=None, limits=LIMITS, supervise=False) as c:
        assert c.runtime_dir is not None
        ext = tmp_path / "ext"
        ext.mkdir()
        os.symlink(c.runtime_dir / "clamd.sock", ext / "clamd.sock")
        address = f"unix:{ext}/clamd.sock"
        marker = {
            "address": address,
            "binary": str(evil),
            "runtime_dir": str(ext),
            "config": str(c.runtime_dir / "clamd.conf"),
            "database_digest": "x",
            "limits": {},
        }
        (ext / "vmscan-clamd.json").write_text(__import__("json").dumps(marker))
        fs = KillingFS(root, pid_of(c), after=10)
        findings, sec, _ = run_check(fs, manifest, {"clamd": address})
    assert sec["clamd"]["mode"] == "external" and sec["clamd"]["restarts"] == 0
    assert sec["status"] == "incomplete"
    _never_clean_unless_scanned(findings, sec, eicar)
    assert not pwned.exists(), "a binary named in a file beside the socket was executed"


@pytest.mark.guest
@pytest.mark.parametrize("mode", ["managed", "external"])
def test_guest_clamd_killed_mid_scan(
    guest: tuple[Any, Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """clamd dies on the third stream of a tar_out scan: restarted (managed) or every
    remaining file listed as not scanned (external); never a false "clean"."""
    from vmscan.guestfs_view import LibguestfsFS

    g, _tree, devs = guest
    manifest = _mounted(g, devs[0])
    with ManagedClamd(system_db_dir=None, limits=LIMITS, supervise=mode == "managed") as c:
        assert c.runtime_dir is not None
        address = c.address
        options: dict[str, Any] = {"av_streams": 1, "clamd_descriptor": c.descriptor}
        if mode == "external":
            (tmp_path / "ext").mkdir()
            os.symlink(c.runtime_dir / "clamd.sock", tmp_path / "ext" / "clamd.sock")
            address = f"unix:{tmp_path}/ext/clamd.sock"
        real_open = ClamdClient.open_stream
        calls = {"n": 0}

        def open_stream(self: ClamdClient) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:
                pid = pid_of(c)
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            return real_open(self)

        monkeypatch.setattr(ClamdClient, "open_stream", open_stream)
        findings, sec, _ = run_check(
            LibguestfsFS(g), manifest, {**options, "clamd": address}, handle=g
        )
    assert sec["status"] == "incomplete" and "clamd_died" in sec["incomplete_reasons"]
    found = {f.target for f in findings}
    not_scanned = {p["path"]: p["reason"] for p in sec["not_scanned"]["paths"]}
    eicar = {
        "/usr/share/doc/readme.gz",
        "/var/lib/misc/state.bin",
        "/srv/archive.dat",
        "/home/u/na\\xefve-\\xff.txt",
    }
    assert eicar <= found | set(not_scanned)
    if mode == "managed":
        assert sec["clamd"]["restarts"] == 1
        assert eicar <= found
        assert set(not_scanned.values()) == {"too_large"}
    else:
        assert sec["clamd"]["restarts"] == 0
        assert "scan_error" in not_scanned.values()


def test_external_clamd_with_smaller_limits(clamd: ManagedClamd, tmp_path: Path) -> None:
    """vmscan assumes larger limits than this external clamd has: clamd's own refusal
    (StreamMaxLength) or alert (MaxFileSize) still ends as too_large, never clean."""
    root = tmp_path / "g"
    (root / "data").mkdir(parents=True)
    (root / "data" / "over-stream.bin").write_bytes(os.urandom(4 * MiB))
    (root / "data" / "over-file.bin").write_bytes(os.urandom(5 * MiB // 2))
    (root / "data" / "small.bin").write_bytes(b"fine")
    ext = tmp_path / "ext"
    ext.mkdir()
    assert clamd.runtime_dir is not None
    os.symlink(clamd.runtime_dir / "clamd.sock", ext / "clamd.sock")
    opts = {"clamd": f"unix:{ext}/clamd.sock", "av_max_file_size": 64 * MiB}
    _, sec, _ = run_check(HostDirFS(root), manifest_of(root), opts)
    assert sec["clamd"]["mode"] == "external"
    reasons = {p["path"]: p["reason"] for p in sec["not_scanned"]["paths"]}
    assert reasons == {"/data/over-stream.bin": "too_large", "/data/over-file.bin": "too_large"}
    assert sec["files_scanned"] == 1
