"""Benchmarks: parallel images (--jobs 1 vs 2) and where to hash (appliance vs host).

Run with ``make bench``. Prints wall times and ratios against a baseline measured in
the same run; nothing here asserts a time.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import guestfs

import fixtures

VMSCAN = str(Path(sys.executable).with_name("vmscan"))


def timed_scan(images: list[Path], jobs: int) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            VMSCAN,
            "scan",
            "-q",
            "--checks",
            "none",
            "--manifest",
            "-j",
            str(jobs),
            *map(str, images),
        ],
        capture_output=True,
        check=False,
    )
    if proc.returncode not in (0, 1):
        print(proc.stderr.decode()[-2000:], file=sys.stderr)
    return time.monotonic() - t0


def bench_jobs() -> None:
    images = [fixtures.build("debian-lvm", fmt) for fmt in ("qcow2", "vmdk", "vpc", "vhdx")]
    t1 = timed_scan(images, 1)
    t2 = timed_scan(images, 2)
    print(
        f"jobs: 4 images --jobs 1: {t1:6.1f} s   --jobs 2: {t2:6.1f} s   "
        f"ratio jobs2/jobs1 = {t2 / t1:.2f}"
    )


def make_data_image(path: Path, files: int, size: int, small: int) -> None:
    """Big random files at /fNNN.bin and *small* 4 KiB files under /small/."""
    g = guestfs.GuestFS(python_return_dict=True)
    g.disk_create(str(path), "raw", files * size + small * 8192 + 64 * 1024 * 1024)
    g.add_drive_opts(str(path), format="raw", readonly=0)
    g.launch()
    g.mkfs("ext4", "/dev/sda")
    g.mount("/dev/sda", "/")
    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "blob"
        for i in range(files):
            blob.write_bytes(os.urandom(size))
            g.upload(str(blob), f"/f{i:03d}.bin")
        tree = Path(tmp) / "small"
        tree.mkdir()
        for i in range(small):
            (tree / f"s{i:05d}").write_bytes(os.urandom(4096))
        tar = Path(tmp) / "small.tar"
        with tarfile.open(tar, "w") as tf:
            tf.add(tree, "small")
        g.tar_in(str(tar), "/")
    g.shutdown()
    g.close()


def _tar_hash(g: guestfs.GuestFS, directory: str) -> None:
    rfd, wfd = os.pipe()

    def produce() -> None:
        try:
            g.tar_out(directory, f"/dev/fd/{wfd}")
        finally:
            os.close(wfd)

    th = threading.Thread(target=produce)
    th.start()
    with os.fdopen(rfd, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
        for ti in tf:
            src = tf.extractfile(ti)
            if src is not None:
                h = hashlib.sha256()
                while chunk := src.read(1 << 20):
                    h.update(chunk)
    th.join()


def bench_hashing() -> None:
    files, size, small = 16, 8 * 1024 * 1024, 2000
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "data.raw"
        make_data_image(img, files, size, small)
        g = guestfs.GuestFS(python_return_dict=True)
        g.add_drive_opts(str(img), format="raw", readonly=1)
        g.launch()
        g.mount_ro("/dev/sda", "/")
        out = Path(tmp) / "sums"
        cases = {
            "big": (files * size / 1e6, [f"/f{i:03d}.bin" for i in range(files)]),
            "small": (small * 4096 / 1e6, [f"/small/s{i:05d}" for i in range(small)]),
        }
        for label, (mb, paths) in cases.items():
            where = "/" if label == "big" else "/small"
            times = {}
            # Each strategy starts with the appliance's page cache dropped.
            g.drop_caches(3)
            t0 = time.monotonic()
            g.checksums_out("sha256", where, str(out))
            times["checksums_out (in appliance, one call)"] = time.monotonic() - t0
            g.drop_caches(3)
            t0 = time.monotonic()
            _tar_hash(g, where)
            times["tar_out + host sha256 (streamed)"] = time.monotonic() - t0
            g.drop_caches(3)
            t0 = time.monotonic()
            for p in paths:
                g.checksum("sha256", p)
            times["checksum per file (one call each)"] = time.monotonic() - t0
            base = next(iter(times.values()))
            print(f"hashing {label} files: {len(paths)} files, {mb:.0f} MB")
            for name, t in times.items():
                print(f"  {name:40s} {t:6.2f} s {mb / t:6.1f} MB/s  ratio {t / base:.2f}")
        g.close()


def main() -> None:
    bench_hashing()
    bench_jobs()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of a child process (vmscan or qemu): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
