"""Stress the content stream's early stop (``TarStream.close(cancel=True)``).

A scan stops reading a ``tar_out`` as soon as it has every file it wanted (a rescan wants
one or two). Stopping it with ``user_cancel`` crashed the process inside libguestfs 1.48
about once in 20 tries when the stream had excludes and was nearly over; this script
repeats that stop N times on the ``debian-lvm`` fixture and says whether the process
survived. Usage: ``python scripts/stress_stream_cancel.py [N]`` (exit 0: survived).
"""

from __future__ import annotations

import faulthandler
import sys
import time

import guestfs

import fixtures
from vmscan.guestcall import GuestHandle
from vmscan.stream import TarStream


def main(n: int) -> int:
    faulthandler.enable()
    image = fixtures.build("debian-lvm", "qcow2")
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), readonly=1, format="qcow2")
    g.launch()
    root = g.inspect_os()[0]
    mps = g.inspect_get_mountpoints(root)
    for mp in sorted(mps, key=len):
        try:
            g.mount_ro(mps[mp], mp)
        except RuntimeError:
            continue  # a device the image lacks (the fixture's fstab names one)
    h = GuestHandle(g)
    # Everything but /etc/hostname excluded, as a rescan with one changed file does.
    excludes = ["./" + x for x in g.ls("/") if x != "etc"]
    excludes += ["./etc/" + x for x in g.ls("/etc") if x != "hostname"]
    t0 = time.monotonic()
    for _ in range(n):
        src = TarStream(h, excludes)
        for raw, _m, _tf in src.members():
            if raw == b"/etc/hostname":
                break
        src.close(cancel=True)
        h.ping_daemon()
    g.shutdown()
    g.close()
    print(f"{n} early stops survived in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60))
