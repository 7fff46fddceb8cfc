"""Benchmark of the data path on a real debootstrap Debian guest (issue 10).

Run with ``make bench`` (or ``python benchmarks/bench_datapath.py``). On the fixture
``migration-debian-real`` (debootstrap bookworm on LVM, built by ``fixtures/``), in one run
and against the same clamd, it measures:

- a cold full scan (every check, no cache), with one appliance and with the root's
  stream shared by two (``--stream-appliances 2``), against the hand-chained pipeline a sysadmin
  would write: ``virt-inspector``, ``guestmount --ro``, ``sha256sum`` over the mount,
  ``clamdscan --multiscan --fdpass`` over the mount (FUSE);
- the bytes of file content moved out of guest files, divided by the bytes of regular
  files in the manifest: what vmscan's tar streams brought to the host plus what
  ``sha256sum`` read inside the appliance (``sections.timings.bytes``; on code without
  those counters: the manifest's bytes, hashed in the appliance, plus the antivirus
  stream's). Single reads of small files (licence and migration checks) are not counted;
- a rescan after 1% of the files changed (an overlay with those files rewritten, same
  state database): its time against the cold scan, bytes streamed against the changed
  files' bytes; and a clone (an overlay with nothing changed): bytes streamed;
- the peak RSS (``VmHWM``) of the vmscan worker process and of qemu, sampled from
  ``/proc`` while the scan runs;
- each phase of ``sections.timings``.

Only ratios measured in the same run mean something here (other contributors share the
cores); nothing asserts a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fixtures
from vmscan.av.clamd_manager import ManagedClamd

VMSCAN = str(Path(sys.executable).with_name("vmscan"))
NAME = "migration-debian-real"


@dataclass
class ProcStats:
    """Peaks and I/O counters of a process tree, sampled from /proc."""

    hwm_kib: dict[str, int] = field(default_factory=dict)
    io: dict[str, dict[str, int]] = field(default_factory=dict)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _kind(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            comm = fh.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except OSError:
        return None
    if comm.startswith("qemu"):
        return "qemu"
    if comm.startswith("python") or any(b"vmscan" in c for c in cmd[:2]):
        return "python"
    if comm in ("clamdscan", "sha256sum", "guestmount", "virt-inspector"):
        return comm
    return None


def _sample(pid: int, stats: ProcStats) -> None:
    for p in _tree(pid):
        kind = _kind(p)
        if kind is None:
            continue
        key = f"{kind}:{p}"
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        stats.hwm_kib[key] = max(stats.hwm_kib.get(key, 0), int(line.split()[1]))
            with open(f"/proc/{p}/io") as fh:
                stats.io[key] = {k: int(v) for k, v in (ln.split(": ") for ln in fh)}
        except (OSError, ValueError):
            continue


def run_watched(
    cmd: list[str], **kw: Any
) -> tuple[subprocess.CompletedProcess[bytes], float, ProcStats]:
    """Run *cmd*, sampling its process tree every 0.2 s; (result, seconds, stats)."""
    stats = ProcStats()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            _sample(proc.pid, stats)
            stop.wait(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    dt = time.monotonic() - t0
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), dt, stats


def _peak(stats: ProcStats, kind: str, skip_first: bool = False) -> int:
    """Largest VmHWM (MiB) of processes of *kind* (the worker: not the parent vmscan)."""
    vals = [(int(k.split(":")[1]), v) for k, v in stats.hwm_kib.items() if k.startswith(kind)]
    vals.sort()
    if skip_first and len(vals) > 1:
        vals = vals[1:]
    return max((v for _, v in vals), default=0) // 1024


def _io_sum(stats: ProcStats, kind: str, key: str) -> int:
    return sum(v.get(key, 0) for k, v in stats.io.items() if k.startswith(kind))


def vmscan_scan(
    image: Path, clamd: str, out: Path, extra: list[str] | None = None
) -> tuple[float, dict[str, Any], ProcStats]:
    cmd = [VMSCAN, "scan", "-q", "--manifest", "--clamd", clamd, "-o", str(out)]
    cmd += [*(extra or []), str(image)]
    res, dt, stats = run_watched(cmd)
    if res.returncode not in (0, 1, 2):
        print(res.stderr.decode()[-2000:], file=sys.stderr)
    report = json.loads(out.read_text())
    return dt, report["images"][0], stats


def hand_pipeline(image: Path, clamd_conf: Path, tmp: Path) -> tuple[float, dict[str, float]]:
    """virt-inspector, guestmount, sha256sum over the mount, clamdscan over the mount."""
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    subprocess.run(
        ["virt-inspector", "--format=qcow2", "-a", str(image)],
        capture_output=True,
        check=True,
    )
    phases["virt-inspector"] = time.monotonic() - t0
    mnt = tmp / "mnt"
    mnt.mkdir()
    pidfile = tmp / "guestmount.pid"
    t = time.monotonic()
    subprocess.run(
        [
            "guestmount",
            "--format=qcow2",
            "-a",
            str(image),
            "-i",
            "--ro",
            "--pid-file",
            str(pidfile),
            str(mnt),
        ],
        capture_output=True,
        check=True,
    )
    phases["guestmount"] = time.monotonic() - t
    try:
        t = time.monotonic()
        find = subprocess.Popen(
            ["find", str(mnt), "-xdev", "-type", "f", "-print0"], stdout=subprocess.PIPE
        )
        subprocess.run(
            ["xargs", "-0", "-r", "sha256sum"],
            stdin=find.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        find.wait()
        phases["sha256sum"] = time.monotonic() - t
        t = time.monotonic()
        subprocess.run(
            [
                "clamdscan",
                f"--config-file={clamd_conf}",
                "--multiscan",
                "--fdpass",
                "--no-summary",
                "--infected",
                str(mnt),
            ],
            capture_output=True,
            check=False,
        )
        phases["clamdscan"] = time.monotonic() - t
    finally:
        subprocess.run(["guestunmount", str(mnt)], capture_output=True, check=False)
        # guestunmount returns before qemu is gone: wait for it (bounded).
        for _ in range(300):
            try:
                os.kill(int(pidfile.read_text()), 0)
            except (OSError, ValueError):
                break
            time.sleep(0.1)
    return time.monotonic() - t0, phases


def regular_bytes(img: dict[str, Any]) -> int:
    return sum(int(m["size"]) for m in img.get("manifest", []))


def moved_bytes(img: dict[str, Any]) -> int:
    """File-content bytes moved out of guest files (see the module docstring)."""
    counters = img.get("sections", {}).get("timings", {}).get("bytes")
    if counters is not None:
        return int(counters.get("streamed", 0)) + int(counters.get("hashed_in_appliance", 0))
    av = img.get("sections", {}).get("antivirus", {})
    return regular_bytes(img) + int(av.get("bytes_read", 0))


def print_scan(label: str, dt: float, img: dict[str, Any], stats: ProcStats, total: int) -> None:
    av = img.get("sections", {}).get("antivirus", {})
    moved = moved_bytes(img)
    print(f"{label}: {dt:6.1f} s  status {img['status']}")
    print(
        f"  file bytes moved out of the guest {moved / 1e6:8.1f} MB = {moved / total:.2f} x "
        f"regular-file bytes (target <= 1.05 cold); counters "
        f"{img.get('sections', {}).get('timings', {}).get('bytes')}"
    )
    hc = img.get("sections", {}).get("hash_cache")
    if hc:
        print(f"  hash cache: {hc}")
    print(
        f"  antivirus: bytes_streamed {av.get('bytes_streamed', 0) / 1e6:.1f} MB, "
        f"files_from_cache {av.get('files_from_cache', 0)}, status {av.get('status')}"
    )
    print(
        f"  peak RSS: worker {_peak(stats, 'python', skip_first=True)} MiB, "
        f"qemu {_peak(stats, 'qemu')} MiB"
    )
    tm = img.get("sections", {}).get("timings", {})
    phases = ", ".join(f"{k} {v:.1f}" for k, v in tm.get("phases", {}).items())
    plugins = ", ".join(f"{k} {v:.1f}" for k, v in tm.get("plugins", {}).items())
    print(f"  phases (s): {phases}\n  plugins (s): {plugins}")
    for root in img.get("roots", []):
        st = root.get("sections", {}).get("stream", {})
        shares = ", ".join(
            f"appliance {s['appliance']}: {s['delivered']} files {s['bytes'] / 1e6:.1f} MB "
            f"{s['seconds']:.1f} s" + (f" ({s['error']})" if s.get("error") else "")
            for s in st.get("shares", [])
        )
        print(
            f"  stream of {root.get('device')}: {st.get('files_wanted', 0)} files wanted, "
            f"{st.get('bytes_received', 0) / 1e6:.2f} MB received, "
            f"{st.get('blobs_kept', 0)} blobs ({st.get('blob_bytes', 0) / 1e6:.2f} MB)"
            + (f"; shares: {shares}" if shares else "")
        )


def main() -> None:
    try:
        image = fixtures.build(NAME, "qcow2")
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        print(f"bench_datapath skipped: cannot build {NAME}: {e}")
        return
    with tempfile.TemporaryDirectory(prefix="vmscan-bench-") as tmp_s:
        tmp = Path(tmp_s)
        # Nothing of the user's cache is used or touched.
        env_home = tmp / "home"
        env_home.mkdir()
        os.environ["XDG_CACHE_HOME"] = str(env_home / ".cache")
        with ManagedClamd(supervise=False, threads=2) as clamd:
            assert clamd.runtime_dir is not None
            conf = clamd.runtime_dir / "clamd.conf"
            state = ["--state-db", str(tmp / "state.db")]
            # One appliance, then the stream shared by two (vmscan.split), each from an
            # empty state database.
            one = ["--stream-appliances", "1"]
            cold_t, cold, cold_stats = vmscan_scan(
                image, clamd.address, tmp / "cold.json", [*state, *one]
            )
            total = regular_bytes(cold)
            files = len(cold.get("manifest", []))
            print(f"guest {NAME}: {files} regular files, {total / 1e6:.1f} MB")
            print_scan("vmscan cold full scan, one appliance", cold_t, cold, cold_stats, total)
            two = ["--state-db", str(tmp / "state2.db"), "--stream-appliances", "2"]
            cold2_t, cold2, cold2_stats = vmscan_scan(image, clamd.address, tmp / "cold2.json", two)
            print_scan("vmscan cold full scan, two appliances", cold2_t, cold2, cold2_stats, total)
            print(f"ratio two appliances / one = {cold2_t / cold_t:.2f}")
            if (
                shutil.which("guestmount")
                and shutil.which("clamdscan")
                and Path("/dev/fuse").exists()
            ):
                hand_t, hand_ph = hand_pipeline(image, conf, tmp)
                print(
                    f"hand-chained pipeline: {hand_t:6.1f} s ("
                    + ", ".join(f"{k} {v:.1f}" for k, v in hand_ph.items())
                    + ")"
                )
                print(
                    f"ratio vmscan cold / hand-chained = {cold_t / hand_t:.2f} one appliance, "
                    f"{cold2_t / hand_t:.2f} two  (target <= 0.45)"
                )
            else:
                print("hand-chained pipeline not run: guestmount, clamdscan or /dev/fuse missing")
            bench_incremental(image, clamd.address, tmp, state, cold_t, cold)
            keep = os.environ.get("VMSCAN_BENCH_KEEP")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                for f in tmp.glob("*.json"):
                    shutil.copy(f, keep)


def _overlay(base: Path, path: Path) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
        check=True,
    )
    return path


def _rewrite(image: Path, paths: list[str]) -> None:
    """Rewrite *paths* (escaped manifest paths, UTF-8 only) with new bytes of the same size."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), format="qcow2", readonly=0)
    g.launch()
    try:
        root = next(iter(g.inspect_os()))
        for mp, dev in sorted(g.inspect_get_mountpoints(root).items(), key=lambda m: len(m[0])):
            try:
                g.mount(dev, mp)
            except RuntimeError:
                continue  # a device the fixture's fstab names but the image lacks
        with tempfile.TemporaryDirectory() as tmp:
            blob = Path(tmp) / "blob"
            for p in paths:
                size = int(g.filesize(p))
                blob.write_bytes(os.urandom(size))
                g.upload(str(blob), p)
    finally:
        g.shutdown()
        g.close()


def bench_incremental(
    base: Path, clamd: str, tmp: Path, state: list[str], cold_t: float, cold: dict[str, Any]
) -> None:
    allow = ["--allow-backing", str(base.parent)]
    files = sorted(
        (m for m in cold.get("manifest", []) if "\\" not in m["path"] and m["size"] > 0),
        key=lambda m: m["path"],
    )
    # Every 100th file: 1% of the files, spread over the tree.
    picked = files[::100]
    changed_bytes = sum(int(m["size"]) for m in picked)
    changed = _overlay(base, tmp / "changed.qcow2")
    _rewrite(changed, [m["path"] for m in picked])
    t, img, stats = vmscan_scan(changed, clamd, tmp / "changed.json", [*state, *allow])
    streamed = int(img["sections"]["timings"].get("bytes", {}).get("streamed", 0))
    print_scan(f"rescan after {len(picked)} files changed (1%)", t, img, stats, regular_bytes(img))
    print(
        f"  ratio rescan / cold = {t / cold_t:.2f} (target <= 0.40); bytes streamed "
        f"{streamed} / changed files' bytes {changed_bytes} = "
        f"{streamed / max(changed_bytes, 1):.2f} (target <= 1.2)"
    )
    clone = _overlay(base, tmp / "clone.qcow2")
    t, img, stats = vmscan_scan(clone, clamd, tmp / "clone.json", [*state, *allow])
    streamed = int(img["sections"]["timings"].get("bytes", {}).get("streamed", 0))
    print_scan("clone (overlay, nothing changed)", t, img, stats, regular_bytes(img))
    print(f"  ratio clone / cold = {t / cold_t:.2f}; bytes streamed {streamed} (target 0)")


if __name__ == "__main__":
    main()
